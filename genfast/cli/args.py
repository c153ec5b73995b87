"""Argument types and the parser class shared by every `genfast` command."""
from __future__ import annotations

import argparse
import math

from genfast._backend import BACKENDS

BACKEND_CHOICES = list(BACKENDS)


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage is one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    v = _number(text, int, "a positive integer")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def finite_float(text: str) -> float:
    v = _number(text, float, "a number")
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def seed_int(text: str) -> int:
    v = _number(text, int, "an integer in [0, 2**63)")
    if not 0 <= v < 1 << 63:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**63), got {v}")
    return v


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """--device and --backend, as every command that runs models takes them."""
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=None, help="force a genfast backend")
