"""Argument checks shared by the ops: each raises TypeError or ValueError naming the argument.

Numbers may be Python or NumPy scalars (numpy.float32(0.5), numpy.int64(3)): whatever PyTorch accepts
where it takes a number.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence

import torch

from genfast import _ext

FLOAT_DTYPES = tuple(_ext.DTYPE_CODES)  # float32, float16, bfloat16, float64


def _type_name(v) -> str:
    return type(v).__name__


def tensor(t, name: str, *, min_dim: int = 0, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    """A tensor of one of `dtypes` with at least `min_dim` dimensions."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {_type_name(t)}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name}: expected a {allowed} tensor, got {t.dtype}")
    if t.dim() < min_dim:
        what = "a batch dimension first" if min_dim == 1 else f"at least {min_dim} dimensions"
        raise ValueError(f"{name}: expected {what}, got a {t.dim()}-dim tensor")
    return t


def like(t: torch.Tensor, ref: torch.Tensor, name: str, ref_name: str, *, shape: bool = True,
         dtype: bool = True, device: bool = True) -> torch.Tensor:
    """t matches ref in shape, dtype and device (each optional)."""
    if shape and t.shape != ref.shape:
        raise ValueError(f"{name}: shape {tuple(t.shape)} does not match {ref_name}'s {tuple(ref.shape)}")
    if dtype and t.dtype != ref.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} does not match {ref_name}'s {ref.dtype}")
    if device and t.device != ref.device:
        raise ValueError(f"{name}: on {t.device} but {ref_name} is on {ref.device}")
    return t


def is_real(v) -> bool:
    t = type(v)
    if t is float or t is int:  # the common case first: isinstance against numbers.Real is an ABC check
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and not _is_numpy_bool(v)


def _is_numpy_bool(v) -> bool:
    return type(v).__name__ == "bool_" and type(v).__module__ == "numpy"


def real(v, name: str, *, finite: bool = True, allow_none: bool = False, allow_nan: bool = False) -> Optional[float]:
    """A Python float from a real number (int, float, NumPy scalar)."""
    if v is None and allow_none:
        return None
    if not is_real(v):
        raise TypeError(f"{name}: expected a real number, got {_type_name(v)}")
    v = float(v)
    if math.isnan(v) and not allow_nan:
        raise ValueError(f"{name}: must not be NaN")
    if finite and math.isinf(v):
        raise ValueError(f"{name}: must be finite, got {v}")
    return v


def integer(v, name: str) -> int:
    """A Python int from an int or NumPy integer (not a bool)."""
    if type(v) is int:  # the common case first (bool is a subclass, not the same type)
        return v
    if isinstance(v, bool) or _is_numpy_bool(v) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {_type_name(v)}")
    return int(v)


def flag(v, name: str) -> bool:
    """A bool (Python or NumPy)."""
    if isinstance(v, bool) or _is_numpy_bool(v):
        return bool(v)
    raise TypeError(f"{name}: expected True or False, got {v!r}")


def choice(v, name: str, options):
    """One of `options` (a dict: returns its value for the key, or a sequence: returns v)."""
    try:
        ok = v in options
    except TypeError:  # unhashable (a list, a dict): not one of the names
        ok = False
    if not ok or not isinstance(v, str):
        raise ValueError(f"{name}: expected one of {', '.join(repr(o) for o in options)}, got {v!r}")
    return options[v] if isinstance(options, dict) else v
