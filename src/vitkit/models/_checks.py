"""Argument checks shared by the model and loss constructors: a clear message at construction, not a shape error
(or a NaN) at the first forward."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_args", "ArgumentTypeError"]


class ArgumentTypeError(TypeError, ValueError):
    """A model argument of the wrong type (``true`` or a string for a size): a TypeError, and a ValueError as every
    other bad argument, so the command line reports it by name like the rest."""


def _number(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ArgumentTypeError(f"{owner}: {name} must be a number, got {value!r}")
    return float(value)


def check_args(
    owner: str,
    *,
    positive: dict[str, Any] | None = None,
    nonnegative: dict[str, Any] | None = None,
    rates: dict[str, Any] | None = None,
    integers: tuple[str, ...] = (),
    divisible: tuple[tuple[str, int, str, int], ...] = (),
) -> None:
    """Raise a ValueError naming ``owner`` and the argument for the first one out of range.

    ``positive``: > 0. ``nonnegative``: >= 0. ``rates``: probabilities in [0, 1) (a dropout rate of 1 would drop
    everything). ``integers``: names (among the above) that must be whole numbers. ``divisible``: (name, value,
    by_name, by_value) pairs where ``value % by_value == 0``."""
    for group, ok, what in (
        (positive, lambda v: v > 0, "> 0"),
        (nonnegative, lambda v: v >= 0, ">= 0"),
        (rates, lambda v: 0 <= v < 1, "in [0, 1)"),
    ):
        for name, value in (group or {}).items():
            v = _number(owner, name, value)
            if name.split("[")[0] in integers and v != int(v):
                raise ValueError(f"{owner}: {name} must be a whole number, got {value!r}")
            if not ok(v) or math.isinf(v):
                raise ValueError(f"{owner}: {name} must be {what}, got {value!r}")
    for name, value, by_name, by_value in divisible:
        if value % by_value:
            raise ValueError(f"{owner}: {name} ({value}) must be divisible by {by_name} ({by_value})")
