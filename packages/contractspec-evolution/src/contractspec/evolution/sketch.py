"""Latency histograms with a relative-accuracy guarantee: DDSketch's logarithmic bucket mapping.

A duration `x` (milliseconds) falls into bucket `i = ceil(log(x) / log(gamma))` with
`gamma = (1 + alpha) / (1 - alpha)`; the bucket is reported as `2 * gamma**i / (gamma + 1)`, which is
within a factor `alpha` of every value in it. Histograms built this way merge by adding counts, so
one-minute buckets roll into windows exactly, and any quantile read from them is within `alpha`
(default 1 %) of the exact sample quantile. Source: Masson, Rim and Lee, "DDSketch: A Fast and
Fully-Mergeable Quantile Sketch with Relative-Error Guarantees", PVLDB 12(12), 2019, section 2.

The quantile convention is the sketch's own: the `q`-quantile of `n` values is the value of rank
`floor(q * (n - 1))` (0-based) in sorted order, i.e. numpy's and pandas' `interpolation="lower"`.

Everything here is vectorised with numpy: bucket indexes of millions of durations take one
`np.log` and one `np.ceil`; quantiles of many groups at once take one `np.searchsorted`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from attrs import define, field

from contractspec.core import ConfigurationError

__all__ = ["DEFAULT_MAPPING", "LogBucketMapping", "dense_quantiles", "grouped_quantiles"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _check_accuracy(_instance: Any, _attribute: Any, value: float) -> None:
    if not isinstance(value, float | int) or not 0.0 < float(value) < 0.5:
        raise ConfigurationError(
            f"relative_accuracy must be a fraction between 0 and 0.5 (0.01 = 1 %), got {value!r}"
        )


@define(frozen=True)
class LogBucketMapping:
    """DDSketch's logarithmic mapping from durations (ms) to bucket indexes `0 .. bucket_count-1`.

    Bucket 0 holds every value below the lowest bucket, which starts at `min_value_ms / gamma`
    (reported as `0.0`); the last bucket also
    holds every value above the top of the range (reported as the top bucket's value, so a
    quantile that lands there is a lower bound).

    Attributes:
        relative_accuracy: `alpha`, the guaranteed relative error of reported values (0.01 = 1 %).
        min_value_ms: Smallest duration resolved (default 1 µs = 0.001 ms).
        max_value_ms: Largest duration resolved (default 10^7 ms, about 2.8 hours).

    Raises:
        ConfigurationError: `relative_accuracy` outside (0, 0.5) or an empty value range.
    """

    relative_accuracy: float = field(default=0.01, validator=_check_accuracy)
    min_value_ms: float = 1e-3
    max_value_ms: float = 1e7
    gamma: float = field(init=False)
    _log_gamma: float = field(init=False, repr=False)
    _offset: int = field(init=False, repr=False)
    _below: float = field(init=False, repr=False)
    bucket_count: int = field(init=False)

    def __attrs_post_init__(self) -> None:
        if not 0.0 < self.min_value_ms < self.max_value_ms or not math.isfinite(self.max_value_ms):
            raise ConfigurationError(
                "min_value_ms and max_value_ms must satisfy 0 < min < max < inf, got "
                f"{self.min_value_ms!r} and {self.max_value_ms!r}"
            )
        gamma = (1.0 + self.relative_accuracy) / (1.0 - self.relative_accuracy)
        log_gamma = math.log(gamma)
        low = math.ceil(math.log(self.min_value_ms) / log_gamma)
        high = math.ceil(math.log(self.max_value_ms) / log_gamma)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "_log_gamma", log_gamma)
        # bucket 0 is the "below min" bucket; sketch index `low` maps to bucket 1
        object.__setattr__(self, "_offset", 1 - low)
        object.__setattr__(self, "bucket_count", high - low + 2)
        # a value that lands in sketch index `low - 1` (bucket 0) after the clip
        object.__setattr__(self, "_below", gamma ** (low - 1.5))

    def index(self, durations_ms: npt.ArrayLike) -> IntArray:
        """Bucket index of each duration (vectorised).

        Args:
            durations_ms: Durations in milliseconds (finite, non-negative).

        Returns:
            An `int64` array of bucket indexes in `0 .. bucket_count - 1`.
        """
        values = np.asarray(durations_ms, dtype=np.float64)
        # values below the range map to sketch index `low - 1`, i.e. bucket 0, after the clip
        scaled = np.clip(values, self._below, self.max_value_ms)
        np.log(scaled, out=scaled)
        scaled *= 1.0 / self._log_gamma
        np.ceil(scaled, out=scaled)
        scaled += self._offset
        np.clip(scaled, 0, self.bucket_count - 1, out=scaled)
        return scaled.astype(np.int64)

    def index_one(self, duration_ms: float) -> int:
        """Bucket index of one duration (the scalar form of `index`)."""
        value = min(max(duration_ms, self._below), self.max_value_ms)
        i = math.ceil(math.log(value) / self._log_gamma) + self._offset
        return min(max(i, 0), self.bucket_count - 1)

    def value(self, buckets: npt.ArrayLike) -> FloatArray:
        """The representative duration (ms) of each bucket index: `2 gamma^i / (gamma + 1)`.

        Returns:
            A `float64` array; bucket 0 gives `0.0`.
        """
        idx = np.asarray(buckets, dtype=np.int64)
        sketch_index = (idx - self._offset).astype(np.float64)
        out = 2.0 * np.exp(sketch_index * self._log_gamma) / (self.gamma + 1.0)
        out[idx == 0] = 0.0
        return out


#: The mapping used by default: 1 % relative accuracy from 1 µs to about 2.8 hours.
DEFAULT_MAPPING: Final = LogBucketMapping()


def grouped_quantiles(
    groups: IntArray,
    buckets: IntArray,
    counts: IntArray,
    quantiles: Sequence[float],
    mapping: LogBucketMapping = DEFAULT_MAPPING,
    *,
    presorted: bool = False,
) -> tuple[IntArray, IntArray, FloatArray]:
    """Quantiles of many histograms at once.

    Args:
        groups: Group id of each histogram row (non-negative integers).
        buckets: Bucket index of each row.
        counts: Count of each row (positive).
        quantiles: Fractions in [0, 1], e.g. `(0.5, 0.95, 0.99)`.
        mapping: The mapping the bucket indexes come from.
        presorted: The rows are already sorted by group, then bucket (skips one sort).

    Returns:
        `(group_ids, totals, values)`: the distinct groups in ascending order, the total count of
        each, and a `(len(group_ids), len(quantiles))` array of quantile values in milliseconds
        (rank `floor(q * (n - 1))`, see the module docstring).

    Raises:
        ConfigurationError: A quantile outside [0, 1] or arrays of different lengths.
    """
    qs = np.asarray(quantiles, dtype=np.float64)
    if qs.size and (np.any(qs < 0) or np.any(qs > 1) or not np.all(np.isfinite(qs))):
        raise ConfigurationError(f"quantiles must be fractions in [0, 1], got {list(quantiles)!r}")
    if not len(groups) == len(buckets) == len(counts):
        raise ConfigurationError("groups, buckets and counts must have the same length")
    if len(groups) == 0:
        return (
            np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.int64),
            np.empty((0, len(qs)), dtype=np.float64),
        )
    g = np.asarray(groups, dtype=np.int64)
    b = np.asarray(buckets, dtype=np.int64)
    c = np.asarray(counts, dtype=np.int64)
    if not presorted:
        _ids, dense = np.unique(g, return_inverse=True)
        order = np.argsort(dense.astype(np.int64) * mapping.bucket_count + b)
        g, b, c = g[order], b[order], c[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    group_ids = g[starts]
    cum = np.cumsum(c)
    totals = np.add.reduceat(c, starts)
    base = cum[starts] - c[starts]
    ranks = np.floor(qs[None, :] * (totals[:, None] - 1).astype(np.float64)).astype(np.int64)
    # the row holding 0-based rank r of a group is the first row whose cumulative count exceeds
    # base + r (cumulative counts are non-decreasing across the whole array)
    rows = np.searchsorted(cum, base[:, None] + ranks, side="right")
    values = mapping.value(b[rows].ravel()).reshape(rows.shape)
    return group_ids, totals.astype(np.int64), values


def dense_quantiles(
    histograms: IntArray, quantiles: Sequence[float], mapping: LogBucketMapping = DEFAULT_MAPPING
) -> FloatArray:
    """Quantiles of a dense `(groups, mapping.bucket_count)` matrix of counts.

    Returns:
        A `(groups, len(quantiles))` array in milliseconds; NaN for empty rows.
    """
    hist = np.asarray(histograms, dtype=np.int64)
    qs = np.asarray(quantiles, dtype=np.float64)
    cum = np.cumsum(hist, axis=1)
    totals = cum[:, -1]
    out = np.full((hist.shape[0], len(qs)), np.nan)
    for k, q in enumerate(qs.tolist()):
        ranks = np.floor(q * (totals - 1).astype(np.float64)).astype(np.int64)
        idx = np.argmax(cum > ranks[:, None], axis=1)
        out[:, k] = mapping.value(idx)
    out[totals == 0] = np.nan
    return out
