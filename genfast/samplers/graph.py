"""The whole sampling loop (model + step + guidance + noise) as one CUDA graph.

The first call with a given (model, shapes, dtypes, schedule, options) runs the loop eagerly on a side
stream (the warm-up, whose result is returned), then captures it into a CUDA graph reading its input
from static buffers. Later calls copy the new input and cond tensors into those buffers, write the new
seed into a device int64 tensor that every step's noise kernel reads, and replay: fresh noise without
re-capture. Per-step offsets are Python ints fixed at capture, the same as the eager loop's (offset =
step index), so eager and graph runs with the same seed give the same samples.

Requirements: the model must be capturable (no host syncs, no data-dependent control flow, no
allocation-order tricks) and deterministic; its parameters must not be replaced between calls
(in-place updates are seen by the replay). Captured graphs are kept per model object (weakly; a
bound method counts as its instance) and key, so pass the same model object on each call (a lambda
made anew per call re-captures every time); `clear_graphs(model)` drops them.
"""
from __future__ import annotations

import dataclasses
import inspect
import weakref
from dataclasses import dataclass

import torch

from genfast.ops._stream import to_signed64
from genfast.samplers.loop import denoise

_GRAPHS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
_GRAPHS_BY_ID: dict = {}  # models that cannot be weakly referenced (kept alive here until cleared)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    static_x: torch.Tensor
    static_seed: torch.Tensor
    static_cond: dict
    static_uncond: dict
    static_out: torch.Tensor


def _tensor_signature(d: dict) -> tuple:
    return tuple(sorted((k, (tuple(v.shape), v.dtype, str(v.device)) if isinstance(v, torch.Tensor) else repr(v))
                        for k, v in d.items()))


def _static_copy(d: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in d.items()}


def _load(static: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, torch.Tensor):
            static[k].copy_(v, non_blocking=True)


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda":
        raise ValueError(f"graph: graph=True needs CUDA tensors, x is on {x.device}")


def _warm_up(body, device):
    """Run the loop once on a side stream (what capture needs), returning its result."""
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        out = body().clone()
    torch.cuda.current_stream(device).wait_stream(side)
    return out


def _capture(body, device):
    """Capture the loop into a CUDA graph; its output tensor is static (rewritten by each replay)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = body()
    return graph, out


def clear_graphs(model=None) -> None:
    """Drop captured graphs (of one model, or all)."""
    if model is None:
        _GRAPHS.clear()
        _GRAPHS_BY_ID.clear()
    else:
        try:
            _GRAPHS.pop(model, None)
        except TypeError:
            pass
        _GRAPHS_BY_ID.pop(id(model), None)


def run_graphed(model, x: torch.Tensor, plan, seed: int) -> torch.Tensor:
    _check_device(x)
    key = (plan.key(), tuple(x.shape), x.dtype, str(x.device), _tensor_signature(plan.cond),
           _tensor_signature(plan.uncond))
    owner = model
    if inspect.ismethod(model):  # a bound method is a new object on every access: key by its instance
        owner = model.__self__
        key = key + (model.__func__,)
    try:
        per_model = _GRAPHS.setdefault(owner, {})
    except TypeError:  # not weak-referenceable: keyed by id, holding the model so the id stays its own
        per_model = _GRAPHS_BY_ID.setdefault(id(owner), {"_model": owner})
    captured = per_model.get(key)
    seed_value = to_signed64(seed)
    if captured is None:
        static_x = x.clone()
        static_seed = torch.full((), seed_value, dtype=torch.int64, device=x.device)
        static_cond, static_uncond = _static_copy(plan.cond), _static_copy(plan.uncond)
        static_plan = dataclasses.replace(plan, cond=static_cond, uncond=static_uncond)

        def body():
            return denoise(model, static_x, static_plan, static_seed)

        warm = _warm_up(body, x.device)  # the eager loop itself, reading the same seed tensor
        graph, static_out = _capture(body, x.device)
        per_model[key] = _Captured(graph, static_x, static_seed, static_cond, static_uncond, static_out)
        return warm
    captured.static_x.copy_(x, non_blocking=True)
    captured.static_seed.fill_(seed_value)
    _load(captured.static_cond, plan.cond)
    _load(captured.static_uncond, plan.uncond)
    captured.graph.replay()
    return captured.static_out.clone()
