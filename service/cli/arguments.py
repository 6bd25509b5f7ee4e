"""Argument types shared by the subcommands, so every command rejects bad numbers the same way.

argparse turns an `ArgumentTypeError` into `clickstream X: error: argument --rate: ...` and
exit code 2: a clear message naming the option, never a traceback.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type[int] | type[float]) -> float:
    try:
        return kind(text.replace("_", ""))
    except ValueError:
        noun = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def port(text: str) -> int:
    """0 means 'pick a free port'."""
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def share(upper: float) -> Callable[[str], float]:
    """A fraction in [0, upper]."""

    def parse(text: str) -> float:
        value = _number(text, float)
        if not 0.0 <= value <= upper:
            raise argparse.ArgumentTypeError(f"must be between 0 and {upper:g}, got {text}")
        return value

    return parse
