"""torchrun support: one process per device, torch.distributed initialized from torchrun's environment.

Without torchrun (no WORLD_SIZE in the environment) everything here is a no-op for one process.
Backend: NCCL for CUDA devices, gloo for the CPU (how the tests run two processes on one machine).
"""
from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(device: str) -> torch.device:
    """--device auto|cpu|cuda|cuda:N -> a torch.device (under torchrun, cuda means this rank's GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device: expected auto, cpu or cuda, got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device: cuda was asked for, but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    elif dev.type != "cpu":
        raise ValueError(f"--device: expected auto, cpu or cuda, got {device!r}")
    return dev


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
        """DistributedDataParallel under torchrun, the module itself otherwise. find_unused_parameters: for
        networks that use only some of their layers per step (ProGAN before it has grown)."""
        if not self.active:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                         find_unused_parameters=find_unused_parameters)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on one (so all ranks stop at the same step)."""
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather(self, x: torch.Tensor, total: int) -> torch.Tensor:
        """Concatenate every rank's x (its share of `total` rows, ranks in order) on every rank."""
        if not self.active:
            return x
        per = -(-total // self.world_size)
        padded = torch.zeros((per, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        counts = [len(share(total, r, self.world_size)) for r in range(self.world_size)]
        return torch.cat([p[:c] for p, c in zip(parts, counts)])


def share(total: int, rank: int, world: int) -> range:
    """The rows of a batch of `total` that rank `rank` of `world` handles (contiguous, sizes differ by <= 1)."""
    per = -(-total // world)
    return range(min(rank * per, total), min((rank + 1) * per, total))


def context(device: str = "auto") -> DistContext:
    """This process's rank, world size and device; initializes the process group under torchrun."""
    dev = resolve_device(device)
    if not under_torchrun():
        return DistContext(0, 1, dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        atexit.register(_shutdown_at_exit)  # whoever created the group tears it down, CLI or library caller
    return DistContext(dist.get_rank(), dist.get_world_size(), dev)


def shutdown() -> None:
    """Tear the process group down while the interpreter is whole (no-op without one).

    DistributedDataParallel modules sit in reference cycles and keep the gloo group alive; left to interpreter
    exit, its worker threads are destroyed mid-teardown and the process aborts ("terminate called without an
    active exception") after all the work is done. Collect them first, then destroy the group. context()
    registers this to run at exit when it creates the group; call it earlier to free the group sooner."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.destroy_process_group()


def _shutdown_at_exit() -> None:
    try:
        shutdown()
    except Exception:  # noqa: BLE001 -- a peer that already failed: its error was reported before exit
        pass
