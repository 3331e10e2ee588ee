"""GrowthBook-compatible bucketing: bucket ranges with coverage, variation choice, namespaces.

These functions are the building blocks of `ExperimentRunner`; they follow GrowthBook's SDK
semantics exactly (including its leniency: out-of-range coverage is clamped and invalid weights
fall back to equal weights), so the same inputs give the same ranges in every SDK.

How coverage works, and why raising it never moves anyone: variation `i` owns
`[c_i, c_i + coverage * w_i)` where `c_i` is the cumulative weight of the variations before it.
Every range grows from a fixed start, so a subject inside a range at coverage `a` is inside the
same range at any coverage `b >= a`.

Source: GrowthBook `packages/sdk-js/src/util.ts` (`getBucketRanges`, `chooseVariation`,
`getEqualWeights`, `inNamespace`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from contractspec.growth._lazy import lazy_module
from contractspec.growth.hashing import bucket_hash

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
else:
    np = lazy_module("numpy", __name__, "np")

__all__ = [
    "BucketRange",
    "bucket_table",
    "choose_variation",
    "equal_weights",
    "get_bucket_ranges",
    "in_namespace",
    "in_range",
]

#: `(start, end)`: a half-open interval `[start, end)` of buckets in `[0, 1]`.
BucketRange = tuple[float, float]

#: GrowthBook accepts weights whose sum lies in this interval; others fall back to equal weights.
WEIGHT_SUM_TOLERANCE = (0.99, 1.01)


def equal_weights(num_variations: int) -> list[float]:
    """`num_variations` equal weights `1 / n` (an empty list for `n < 1`). GrowthBook `getEqualWeights`."""
    if num_variations < 1:
        return []
    return [1.0 / num_variations] * num_variations


def _valid_weights(weights: Sequence[float] | None, num_variations: int) -> bool:
    if weights is None or len(weights) != num_variations:
        return False
    try:
        if not all(
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
            for w in weights
        ):
            return False
        # left to right, like GrowthBook's `sum(weights)`: near the 0.99/1.01 bounds an exact
        # sum (math.fsum) would accept weights GrowthBook replaces with equal ones
        total = sum(weights)
    except OverflowError:
        return False
    low, high = WEIGHT_SUM_TOLERANCE
    return low <= total <= high


def get_bucket_ranges(
    num_variations: int, coverage: float = 1.0, weights: Sequence[float] | None = None
) -> list[BucketRange]:
    """The bucket range of each variation. GrowthBook `getBucketRanges`.

    Args:
        num_variations: Number of variations.
        coverage: Fraction of subjects in the experiment, clamped to `[0, 1]`.
        weights: Share of each variation; equal weights are used when it is missing, has the wrong
            length, has a negative or non-finite weight, or does not sum to 1 (within 0.99..1.01,
            summed left to right in float64 as GrowthBook does).

    Returns:
        One `(start, end)` per variation: `start` is the cumulative weight before it, `end` is
        `start + coverage * weight`.
    """
    coverage = min(max(coverage, 0.0), 1.0)
    used = list(weights) if weights is not None else []
    if not _valid_weights(weights, num_variations):
        used = equal_weights(num_variations)
    ranges: list[BucketRange] = []
    cumulative = 0.0
    for w in used:
        start = cumulative
        cumulative += w
        ranges.append((start, start + coverage * w))
    return ranges


def in_range(n: float, bucket_range: BucketRange) -> bool:
    """Whether `n` lies in the half-open range `[start, end)`."""
    return bucket_range[0] <= n < bucket_range[1]


def choose_variation(n: float, ranges: Sequence[BucketRange]) -> int:
    """Index of the first range containing bucket `n`, or `-1` (not in the experiment).

    GrowthBook `chooseVariation`.
    """
    for i, (start, end) in enumerate(ranges):
        if start <= n < end:
            return i
    return -1


def in_namespace(hash_value: str, namespace: tuple[str, float, float]) -> bool:
    """Whether a subject falls in a namespace's range. GrowthBook `inNamespace`.

    A namespace `(name, start, end)` gives mutually exclusive experiments disjoint slices of the
    same population: the subject's namespace bucket is `bucket_hash("__" + name, hash_value, 1)`.
    """
    n = bucket_hash("__" + namespace[0], hash_value, 1)
    return namespace[1] <= n < namespace[2]


def bucket_table(ranges: Sequence[BucketRange], version: int = 2) -> npt.NDArray[np.int16]:
    """Variation index for every possible bucket of a hash version (`-1` outside all ranges).

    Hash version 2 has 10,000 buckets (`k / 10000`), version 1 has 1,000. Looking a bucket up in
    this table gives exactly `choose_variation(k / scale, ranges)` (same divisions, same
    comparisons, first range wins), which is what makes the vectorised path identical to the
    scalar one.
    """
    size = 10000 if version == 2 else 1000
    n = np.arange(size) / size  # the same IEEE division as k / size in Python
    table = np.full(size, -1, dtype=np.int16)
    for i in range(len(ranges) - 1, -1, -1):  # the first matching range wins
        start, end = ranges[i]
        table[(start <= n) & (n < end)] = i
    return table
