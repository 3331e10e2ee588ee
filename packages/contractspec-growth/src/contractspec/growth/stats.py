"""Frequentist stats engine for experiments, computed from sufficient statistics.

Every test here works from per-variation sufficient statistics (`n`, `sum`, `sum_squares`), so
an analysis of millions of exposures needs only a SQL `GROUP BY`, never the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from contractspec.core.errors import SpecValidationError

__all__ = ["SufficientStats"]


def _check_count(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecValidationError(
            f"{type(instance).__name__}.{attribute.name} must be an int count, got {value!r}; "
            "pass the number of units (users, sessions) as an integer.",
            details={"field": attribute.name},
        )
    if value < 0:
        raise SpecValidationError(
            f"{type(instance).__name__}.{attribute.name} must be >= 0, got {value}; "
            "a count of units cannot be negative.",
            details={"field": attribute.name},
        )


def _check_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise SpecValidationError(
            f"{type(instance).__name__}.{attribute.name} must be a finite number, got {value!r}; "
            "drop NaN/inf metric values before aggregating.",
            details={"field": attribute.name},
        )


def _to_float(value: float) -> float:
    return float(value)


@attrs.frozen
class SufficientStats:
    """Sufficient statistics of one metric in one variation: `n`, `Σx`, `Σx²`.

    Enough to compute the mean, the sample variance and every test in this module. Two
    summaries of disjoint samples combine exactly with `merge` (or `+`), so a tracker can
    aggregate per day, per shard or per SQL partition and add the results up.

    For a binomial (conversion) metric pass `sum = sum_squares = conversions`, since `x² = x`
    for `x ∈ {0, 1}`.

    Attributes:
        n: Number of units (users, sessions), `>= 0`.
        sum: `Σ x` over the units.
        sum_squares: `Σ x²` over the units, `>= 0`.

    Raises:
        SpecValidationError: `n` is not a non-negative int, a sum is NaN/inf, or `sum_squares`
            is negative (it is a sum of squares).
    """

    n: int = attrs.field(validator=_check_count)
    sum: float = attrs.field(converter=_to_float, validator=_check_finite)
    sum_squares: float = attrs.field(converter=_to_float, validator=_check_finite)

    def __attrs_post_init__(self) -> None:
        if self.sum_squares < 0:
            raise SpecValidationError(
                f"SufficientStats.sum_squares must be >= 0, got {self.sum_squares!r}; "
                "it is the sum of squared values (Σx²), not a variance.",
                details={"field": "sum_squares"},
            )
        if self.n == 0 and (self.sum != 0 or self.sum_squares != 0):
            raise SpecValidationError(
                "SufficientStats with n=0 must have sum=0 and sum_squares=0; "
                "an empty sample has no values to add up.",
                details={"field": "n"},
            )

    @classmethod
    def empty(cls) -> SufficientStats:
        """Return the statistics of an empty sample (the identity of `merge`)."""
        return cls(0, 0.0, 0.0)

    @classmethod
    def from_values(cls, values: Iterable[float]) -> SufficientStats:
        """Summarise raw per-unit values.

        Args:
            values: One metric value per unit (e.g. revenue per user; 0/1 for conversions).

        Returns:
            The `n`, `Σx` and `Σx²` of `values`.

        Raises:
            SpecValidationError: A value is NaN or infinite.
        """
        n = 0
        total = 0.0
        total_sq = 0.0
        for raw in values:
            x = float(raw)
            if not math.isfinite(x):
                raise SpecValidationError(
                    f"SufficientStats.from_values got a non-finite value {raw!r} at index {n}; "
                    "drop or impute NaN/inf values first.",
                    details={"field": "values", "index": n},
                )
            n += 1
            total += x
            total_sq += x * x
        return cls(n, total, total_sq)

    @classmethod
    def from_proportion(cls, conversions: int, n: int) -> SufficientStats:
        """Summarise a binomial metric: `conversions` successes out of `n` units.

        Raises:
            SpecValidationError: `conversions` is negative or greater than `n`.
        """
        if isinstance(conversions, bool) or not isinstance(conversions, int) or conversions < 0:
            raise SpecValidationError(
                f"conversions must be a non-negative int, got {conversions!r}.",
                details={"field": "conversions"},
            )
        if conversions > n:
            raise SpecValidationError(
                f"conversions ({conversions}) cannot exceed n ({n}); count each unit once.",
                details={"field": "conversions"},
            )
        return cls(n, float(conversions), float(conversions))

    def merge(self, other: SufficientStats) -> SufficientStats:
        """Return the statistics of the union of two disjoint samples (exact)."""
        return SufficientStats(
            self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares
        )

    def __add__(self, other: object) -> SufficientStats:
        if not isinstance(other, SufficientStats):
            return NotImplemented
        return self.merge(other)

    @property
    def mean(self) -> float:
        """Sample mean `Σx / n`; `nan` when `n == 0` (tests report why instead of using it)."""
        if self.n == 0:
            return math.nan
        return self.sum / self.n

    @property
    def variance(self) -> float:
        """Unbiased sample variance `(Σx² - (Σx)²/n) / (n - 1)`, clipped at 0.

        `nan` when `n < 2` (the variance is undefined); tests check `n` first and say why.
        """
        if self.n < 2:
            return math.nan
        return max(self.sum_squares - self.sum * self.sum / self.n, 0.0) / (self.n - 1)

    @property
    def std(self) -> float:
        """Sample standard deviation, `sqrt(variance)`."""
        return math.sqrt(self.variance)

    @property
    def standard_error(self) -> float:
        """Standard error of the mean, `sqrt(variance / n)`."""
        if self.n < 2:
            return math.nan
        return math.sqrt(self.variance / self.n)
