"""Checks on numbers given in specs and definitions."""

from __future__ import annotations

import math

__all__ = ["as_finite_float"]


def as_finite_float(value: object) -> float | None:
    """`value` as a finite `float`, or `None` when it is not one.

    `None` for a `bool` (an `int` subclass, but never meant as a number in a spec), for anything
    that is not an `int` or `float`, for NaN and infinities, and for an `int` too large for a
    float (beyond about 1.8e308, where `float()` and `math.isfinite()` raise `OverflowError`).
    Callers raise their own `ContractSpecError` naming the field.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
