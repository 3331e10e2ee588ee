"""`as_finite_float`: the finite-number check the packages' definitions share."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contractspec.core.numbers import as_finite_float


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (-3, -3.0),
        (0.25, 0.25),
        (2**63, float(2**63)),  # past int64: still a float
        (10**308, 1e308),
        (10**400, None),  # past the largest float: float() raises OverflowError
        (-(10**400), None),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        (True, None),  # an int subclass, never a number in a spec
        ("1.5", None),
        (None, None),
    ],
)
def test_finite_numbers_and_everything_else(value: Any, expected: float | None) -> None:
    assert as_finite_float(value) == expected


@given(st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans()))
def test_never_raises_and_agrees_with_float(value: Any) -> None:
    got = as_finite_float(value)
    if isinstance(value, bool):
        assert got is None
        return
    try:
        expected: float | None = float(value)
    except OverflowError:
        expected = None
    if expected is not None and not math.isfinite(expected):
        expected = None
    assert got == expected
