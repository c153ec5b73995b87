"""`genfast bench`: genfast's fused ops per backend next to eager PyTorch, in µs, GB/s and % of copy bandwidth.

Every kernel is reported in µs, GB/s (bytes it must move at least: inputs read once, outputs
written once) and % of the device's measured copy bandwidth (a large device-to-device copy,
counting bytes read plus bytes written), the practical ceiling of a memory-bound kernel.
The timing helpers below are also what the scripts in the repository's benchmarks/ use.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from datetime import date
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_us(fn: Callable[[], object], device, warmup: int = 10, rep: int = 50, rotate: int = 1) -> float:
    """Median wall time of `fn()` in µs. CUDA: CUDA events around each call, after warm-up.

    Each call is timed alone (events on the stream), so a launch-bound op shows its per-call latency.
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
        for s, e in zip(starts, ends):
            s.record()
            fn()
            e.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends)]
    else:
        for _ in range(rep):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


def time_graph_us(fn: Callable[[], object], device, replays_per_graph: int = 20, rep: int = 20) -> float:
    """Median µs per call of `fn` captured `replays_per_graph` times in one CUDA graph (launch gaps gone)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("device: CUDA graphs need a CUDA device")
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(replays_per_graph):
            fn()
    return time_us(graph.replay, device, warmup=3, rep=rep) / replays_per_graph


_COPY_CACHE: dict[str, float] = {}


def copy_bandwidth_gbs(device, nbytes: int = 1 << 30) -> float:
    """Measured copy bandwidth in GB/s (bytes read + bytes written), cached per device."""
    device = torch.device(device)
    key = str(device)
    if key not in _COPY_CACHE:
        if device.type == "cpu":
            nbytes = min(nbytes, 1 << 28)
        n = nbytes // 4
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        us = time_us(lambda: dst.copy_(src), device, warmup=3, rep=20)
        _COPY_CACHE[key] = 2 * n * 4 / (us * 1e-6) / 1e9
    return _COPY_CACHE[key]


@dataclass
class Row:
    name: str
    shape: str
    dtype: str
    us: float
    bytes_moved: int
    copy_gbs: float
    note: str = ""

    @property
    def gbs(self) -> float:
        return self.bytes_moved / (self.us * 1e-6) / 1e9 if self.us > 0 else float("nan")

    @property
    def pct_copy(self) -> float:
        return 100.0 * self.gbs / self.copy_gbs

    def as_dict(self) -> dict:
        return {"name": self.name, "shape": self.shape, "dtype": self.dtype, "us": round(self.us, 2),
                "GB/s": round(self.gbs, 1), "pct_of_copy_bw": round(self.pct_copy, 1), "note": self.note}


def machine_header(device) -> str:
    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return (f"{what} | date {date.today().isoformat()} | torch {torch.__version__} | triton {triton_version} | "
            f"copy bandwidth {copy_bandwidth_gbs(device):.0f} GB/s")


def print_table(rows: list[Row], title: str = "") -> None:
    if title:
        print(f"\n## {title}\n")
    print("| op | shape | dtype | µs | GB/s | % of copy BW | note |")
    print("|---|---|---|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.name} | {r.shape} | {r.dtype} | {r.us:.1f} | {r.gbs:.0f} | {r.pct_copy:.0f}% | {r.note} |")
