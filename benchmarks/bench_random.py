"""genfast.ops.randn vs torch.randn, per backend.

Bytes: randn writes n * itemsize bytes and reads nothing (2^28 fp32: 1.07 GB).
Operations: one Philox4x32-10 (10 rounds x 2 mul.hi + 2 mul.lo + 4 xor/add ~ 80 integer ops) plus
2 log, 2 sqrt, 2 sin, 2 cos per 4 elements, ~40 ops per element: 2^28 elements ~ 1.1e10 ops, about
0.2 ms of an H100's integer/SFU rate against 0.36 ms to write 1.07 GB at ~3 TB/s: memory-bound,
roofline = bytes / copy bandwidth.

Run: `python benchmarks/bench_random.py [--device cuda] [--sizes 20 28] [--json out.json]`
or the pytest-benchmark form: `pytest benchmarks/bench_random.py --benchmark-only`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import genfast  # noqa: E402
from benchmarks.bandwidth import Row, copy_bandwidth_gbs, machine_header, print_table, time_us  # noqa: E402


def backends_for(device: torch.device) -> list[str]:
    return [name for name, info in genfast.backends().items()
            if info.available and (name == "reference" or device.type in info.devices)]


def run(device: torch.device, log2_sizes: list[int], dtypes: list[torch.dtype]) -> list[Row]:
    rows = []
    copy = copy_bandwidth_gbs(device)
    for log2 in log2_sizes:
        n = 1 << log2
        for dtype in dtypes:
            nbytes = n * torch.tensor([], dtype=dtype).element_size()
            us = time_us(lambda: torch.randn(n, device=device, dtype=dtype), device)
            rows.append(Row("torch.randn", f"2^{log2}", str(dtype).split(".")[-1], us, nbytes, copy))
            for backend in backends_for(device):
                with genfast.use_backend(backend):
                    us = time_us(lambda: genfast.ops.randn(n, seed=1, device=device, dtype=dtype), device)
                rows.append(Row(f"genfast {backend}", f"2^{log2}", str(dtype).split(".")[-1], us, nbytes, copy))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="log2 of the element counts")
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    sizes = args.sizes or ([20, 28] if device.type == "cuda" else [20, 24])
    rows = run(device, sizes, [getattr(torch, d) for d in args.dtypes])
    print(machine_header(device))
    print_table(rows, "randn")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_header(device), "rows": [r.as_dict() for r in rows]}, indent=1))


# ---- pytest-benchmark form -----------------------------------------------------------------
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("backend", ["torch"] + backends_for(DEVICE))
def test_randn_2_20(benchmark, backend):
    n = 1 << 20

    def step():
        if backend == "torch":
            out = torch.randn(n, device=DEVICE)
        else:
            with genfast.use_backend(backend):
                out = genfast.ops.randn(n, seed=1, device=DEVICE)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out

    out = benchmark(step)
    assert out.shape == (n,)


if __name__ == "__main__":
    main()
