"""Checkpoints: safetensors files with genfast's metadata, written atomically.

A checkpoint holds tensors under prefixes -- "model." the weights to sample from (for DDPM the EMA
weights), "train.<name>." the raw networks and optimizer states that `--resume` needs -- and one JSON
metadata entry "genfast": the model kind, its constructor config, the data it was trained on and the
step. Optimizer state dicts are flattened into tensors plus JSON (their param_groups).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from genfast.training.images import write_atomic

FORMAT = "genfast-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not genfast's."""


def save_checkpoint(path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    from safetensors.torch import save

    meta = {"genfast": json.dumps({"format": FORMAT, **metadata})}
    # safetensors refuses shared or non-contiguous storage: give it plain copies
    flat = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    write_atomic(path, save(flat, metadata=meta))


def load_checkpoint(path, what: str = "--checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (tensors on the CPU, metadata). Raises CheckpointError with a one-line reason."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: no such file: {path}")
    try:  # one open: the header gives the metadata, the tensors follow it
        with safe_open(os.fspath(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("genfast")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{what}: {path} is not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    if raw is None:
        raise CheckpointError(f"{what}: {path} is a safetensors file without genfast metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{what}: {path} has corrupt genfast metadata") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{what}: {path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    bad = first_non_finite(tensors)
    if bad is not None:  # a diverged run's weights: sampling or resuming from them gives only NaN
        raise CheckpointError(f"{what}: {path} holds non-finite values (NaN or inf) in {bad}; the run it comes "
                              "from diverged -- resume from an earlier checkpoint or retrain with a lower --lr")
    return tensors, meta


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an inf, or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            return name
    return None


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def flatten_optimizer(prefix: str, state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state_dict -> (tensors named prefix + "<param>.<key>", JSON-able rest)."""
    tensors, scalars = {}, {}
    for pid, st in state_dict["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(prefix: str, tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in unprefixed(prefix, tensors).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for name, value in rest["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    # JSON turned tuples (Adam's betas) into lists; give them back as the optimizer wrote them
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}
