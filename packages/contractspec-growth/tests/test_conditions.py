"""Targeting conditions beyond the conformance cases: JavaScript fidelity, robustness, validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.core import SpecDefinitionError
from contractspec.growth.conditions import (
    VALUE_OPERATORS,
    check_condition,
    eval_condition,
    padded_version,
)

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=True)
    | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
_operator = st.sampled_from(sorted(VALUE_OPERATORS))
_condition = st.dictionaries(
    st.sampled_from(["a", "b", "a.b", "$or", "$and", "$nor", "$not"]),
    _json | st.dictionaries(_operator, _json, max_size=2),
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@given(_condition, st.dictionaries(st.sampled_from(["a", "b"]), _json, max_size=2))
def test_any_json_condition_evaluates_to_a_bool_without_raising(
    condition: dict[str, Any], attributes: dict[str, Any]
) -> None:
    """Payloads are untrusted: whatever the condition and attributes, evaluation returns a bool."""
    assert eval_condition(attributes, condition, {"g": [1, "x"]}) in (True, False)


def test_strings_compare_by_utf16_code_units_like_javascript() -> None:
    """An emoji (surrogate 0xD83D) sorts below U+FF01 in JavaScript, unlike Python's code points."""
    assert ("😀" < "\uff01") is False  # Python compares code points
    assert eval_condition({"s": "😀"}, {"s": {"$lt": "\uff01"}}) is True
    assert eval_condition({"s": "abc"}, {"s": {"$gt": "abb", "$lt": "abd"}}) is True


def test_numbers_and_strings_compare_like_javascript() -> None:
    """Relational operators coerce like JavaScript: '8' > 5, a missing attribute is 0, 'x' is NaN."""
    assert eval_condition({"n": "8"}, {"n": {"$gt": 5}}) is True
    assert eval_condition({}, {"n": {"$lt": 1, "$gt": -1}}) is True
    assert eval_condition({"n": "x"}, {"n": {"$gt": 5}}) is False
    assert eval_condition({"n": "x"}, {"n": {"$lte": 5}}) is False


def test_semantic_versions_order_pre_releases_first() -> None:
    """`1.0.0-beta` < `1.0.0` < `1.0.1`, build metadata is ignored, `v` prefixes too."""
    assert padded_version("v1.2.3+build7") == padded_version("1.2.3")
    assert eval_condition({"v": "1.0.0-beta"}, {"v": {"$vlt": "1.0.0"}}) is True
    assert eval_condition({"v": "1.10.0"}, {"v": {"$vgt": "1.9.9"}}) is True
    assert eval_condition({"v": "2.0.0"}, {"v": {"$veq": "v2.0.0"}}) is True


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8))
def test_unknown_operators_are_refused_with_their_path(name: str) -> None:
    """Any `$operator` that GrowthBook does not define is a definition error naming its path."""
    operator = "$" + name
    if operator in VALUE_OPERATORS:
        return
    with pytest.raises(SpecDefinitionError) as info:
        check_condition({"plan": {operator: 1}}, field="targeting")
    assert info.value.details == {"field": f"targeting.plan.{operator}"}
    assert f"unknown operator {operator!r}" in info.value.message


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("plan == pro", "must be a condition mapping"),
        ({"$or": {"a": 1}}, r"condition\.\$or must be a list of conditions"),
        ({"$where": "1"}, "is not a logical operator"),
        ({"a": {"$type": "integer"}}, "must name a JSON type"),
        ({"a": {"$regex": "("}}, "is not a valid regular expression"),
        ({"a": {"$inGroup": ["x"]}}, "needs a saved group"),
        ({"a": {"$elemMatch": {"b": {"$bogus": 1}}}}, "unknown operator '\\$bogus'"),
        ({"$and": [{"a": {"$nin": 3}}]}, r"condition\.\$and\[0\]\.a\.\$nin needs a list"),
    ],
)
def test_malformed_conditions_are_refused(condition: Any, message: str) -> None:
    """Malformed conditions fail at definition time with the path and the fix."""
    with pytest.raises(SpecDefinitionError, match=message):
        check_condition(condition)
