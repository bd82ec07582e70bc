"""Argument types for the command line: each checks its value when the flag is parsed, so a bad value is one line
(``chameleon-lite generate: error: argument --threads: must be >= 0, got -2``) before any work starts.

Bottom layer: every command module may use them; they import nothing of the package but its errors.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from chameleon_lite.errors import UserError


def _number(text: str, kind: type) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An integer in [lo, hi] (either bound may be open-ended)."""

    def parse(text: str) -> int:
        value = int(_number(text, int))
        _check(value, lo, hi, text)
        return value

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Callable[[str], float]:
    """A finite number in [lo, hi] ((lo, hi] with ``lo_open``)."""

    def parse(text: str) -> float:
        value = float(_number(text, float))
        if lo_open and lo is not None and value <= lo:
            raise argparse.ArgumentTypeError(f"must be > {lo}, got {text}")
        _check(value, lo, hi, text)
        return value

    parse.__name__ = "number"
    return parse


def _check(value: float, lo: float | None, hi: float | None, text: str) -> None:
    if lo is not None and value < lo:
        raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text}")
    if hi is not None and value > hi:
        raise argparse.ArgumentTypeError(f"must be <= {hi}, got {text}")


positive_int = int_range(1)
nonnegative_int = int_range(0)
nonnegative_float = float_range(0.0)
positive_float = float_range(0.0, lo_open=True)
probability = float_range(0.0, 1.0)
seed = int_range(0, 2**63 - 1)


def float_list(text: str) -> list[float]:
    """Comma-separated finite numbers >= 0 (``1,1.5,2``)."""
    items = [x.strip() for x in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}")
    return [nonnegative_float(x) for x in items]


def parse_set(items: list[str] | None, flag: str = "--set") -> dict[str, Any]:
    """``--set KEY=VALUE`` items -> {key: JSON value}; one line naming the item for anything else."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise UserError(f'{flag} {key}: value {value!r} is not JSON (e.g. 8, 0.5, [32, 64, 128], "vq")') from None
    return out
