"""DDSketch log-bucket mapping and grouped quantiles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.core import ConfigurationError
from contractspec.evolution import DEFAULT_MAPPING, LogBucketMapping
from contractspec.evolution.sketch import dense_quantiles, grouped_quantiles


def test_default_mapping_shape() -> None:
    """1 % accuracy gives gamma = 1.01/0.99 and 1,153 buckets from 1 µs to 10^7 ms."""
    assert DEFAULT_MAPPING.gamma == pytest.approx(1.0202020202020)
    assert DEFAULT_MAPPING.bucket_count == 1153


def test_index_and_value_edges() -> None:
    """Zero and tiny values land in bucket 0 (reported 0.0); huge values in the last bucket."""
    m = DEFAULT_MAPPING
    idx = m.index([0.0, 1e-5, 1.0, 1e12])
    assert idx.tolist() == [0, 0, 346, 1152]
    assert [m.index_one(v) for v in (0.0, 1e-5, 1.0, 1e12)] == [0, 0, 346, 1152]
    values = m.value(idx)
    assert values[0] == 0.0
    assert values[2] == pytest.approx(0.99, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.002, max_value=5e6, allow_nan=False))
def test_reported_value_within_relative_accuracy(x: float) -> None:
    """Every value in range is reported within 1 % (the DDSketch guarantee)."""
    m = DEFAULT_MAPPING
    v = float(m.value(m.index([x]))[0])
    assert abs(v - x) <= 0.01 * x * (1 + 1e-9)
    assert m.index_one(x) == int(m.index([x])[0])


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(min_value=0.01, max_value=1e5), min_size=1, max_size=300),
    st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_quantile_matches_lower_rank_within_accuracy(values: list[float], q: float) -> None:
    """The q-quantile is within 1 % of the exact value of rank floor(q (n - 1))."""
    arr = np.asarray(values)
    ids, totals, got = grouped_quantiles(
        np.zeros(len(arr), dtype=np.int64), DEFAULT_MAPPING.index(arr),
        np.ones(len(arr), dtype=np.int64), [q],
    )  # fmt: skip
    exact = np.sort(arr)[int(np.floor(q * (len(arr) - 1)))]
    assert ids.tolist() == [0]
    assert totals.tolist() == [len(arr)]
    assert abs(got[0, 0] - exact) <= 0.01 * exact * (1 + 1e-9)


def test_grouped_and_dense_quantiles_agree() -> None:
    """The sparse (grouped) and dense forms give the same quantiles per group."""
    rng = np.random.default_rng(3)
    values = rng.lognormal(3, 1, 5000)
    groups = rng.integers(0, 4, 5000)
    buckets = DEFAULT_MAPPING.index(values)
    ids, totals, sparse = grouped_quantiles(
        groups, buckets, np.ones(5000, dtype=np.int64), (0.5, 0.99)
    )
    dense_hist = np.zeros((4, DEFAULT_MAPPING.bucket_count), dtype=np.int64)
    np.add.at(dense_hist, (groups, buckets), 1)
    dense = dense_quantiles(dense_hist, (0.5, 0.99))
    assert ids.tolist() == [0, 1, 2, 3]
    assert totals.tolist() == np.bincount(groups).tolist()
    assert np.array_equal(sparse, dense)


def test_dense_quantiles_of_an_empty_row_are_nan() -> None:
    """A histogram without counts has NaN quantiles."""
    out = dense_quantiles(np.zeros((1, DEFAULT_MAPPING.bucket_count), dtype=np.int64), [0.5])
    assert np.isnan(out[0, 0])


@pytest.mark.parametrize("accuracy", [0.0, 0.5, -0.1, 2])
def test_bad_accuracy_is_refused(accuracy: float) -> None:
    """relative_accuracy must lie in (0, 0.5); the message names the field."""
    with pytest.raises(ConfigurationError, match="relative_accuracy"):
        LogBucketMapping(relative_accuracy=accuracy)


def test_bad_range_and_quantiles_are_refused() -> None:
    """An empty value range or a quantile outside [0, 1] is a configuration error."""
    with pytest.raises(ConfigurationError, match="min_value_ms"):
        LogBucketMapping(min_value_ms=5.0, max_value_ms=1.0)
    one = np.ones(1, dtype=np.int64)
    with pytest.raises(ConfigurationError, match="quantiles"):
        grouped_quantiles(one, one, one, [1.5])
    with pytest.raises(ConfigurationError, match="same length"):
        grouped_quantiles(one, np.ones(2, dtype=np.int64), one, [0.5])
