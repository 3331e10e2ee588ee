"""Frequentist stats engine for experiments, computed from sufficient statistics.

Every test here works from per-variation sufficient statistics (`n`, the mean and
`M2 = Σ(x - mean)²`, plus the co-moment with a pre-period covariate for CUPED), so an analysis of
millions of exposures needs only a SQL `GROUP BY`, never the rows. Centred moments, merged with
Chan, Golub and LeVeque's update, stay exact when the mean dwarfs the spread (revenue in cents,
epoch timestamps, nanosecond latencies), where `Σx²` loses the variance to rounding. The numbers
match GrowthBook's `gbstats` (frequentist engine) and scipy:

* [`welch_ttest`][contractspec.growth.stats.welch_ttest]: Welch's unequal-variance t-test with
  Welch-Satterthwaite degrees of freedom, absolute and relative lift (delta-method standard error
  of the ratio), on means and proportions.
* [`sequential_ttest`][contractspec.growth.stats.sequential_ttest]: asymptotic confidence
  sequences (Waudby-Smith et al., "Time-uniform central limit theory and asymptotic confidence
  sequences", arXiv:2103.06476), valid however often results are peeked at.
* CUPED / regression adjustment with a pre-period covariate (Deng, Xu, Kohavi and Walker, WSDM
  2013) through [`CovariateStats`][contractspec.growth.stats.CovariateStats].
* [`srm_check`][contractspec.growth.stats.srm_check]: sample-ratio mismatch, Pearson χ²
  goodness of fit.
* [`adjust_pvalues`][contractspec.growth.stats.adjust_pvalues]: Holm (1979) step-down and
  Benjamini-Hochberg (1995) step-up corrections.
* [`welch_ttest_from_stats`][contractspec.growth.stats.welch_ttest_from_stats]: the vectorised
  kernel for thousands of comparisons at once (scipy's `ttest_ind_from_stats` signature).
* [`analyze_experiment`][contractspec.growth.stats.analyze_experiment]: all of the above for
  every metric and variation, returning a notebook-friendly
  [`ExperimentResult`][contractspec.growth.results.ExperimentResult].

Edge cases (an empty variation, `n < 2`, zero variance, a zero control mean) never raise and never
return a silent `NaN`: the `Comparison` has `status` and `reason` saying why estimates are missing.
Malformed input (negative counts, NaN sums, an unknown control) raises `SpecValidationError`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from typing import Literal

import attrs
import numpy as np
import numpy.typing as npt
from scipy import special

from contractspec.core.errors import SpecValidationError
from contractspec.growth import _sequential
from contractspec.growth._tdist import t_isf, t_sf_scalar
from contractspec.growth._welch import welch_arrays
from contractspec.growth.results import (
    Alternative,
    Comparison,
    ComparisonStatus,
    DifferenceType,
    ExperimentResult,
    Lift,
    MetricType,
    SrmResult,
)

__all__ = [
    "CovariateStats",
    "SufficientStats",
    "WelchArrays",
    "adjust_pvalues",
    "analyze_experiment",
    "cuped_theta",
    "sequential_ttest",
    "srm_check",
    "welch_ttest",
    "welch_ttest_from_stats",
]


def _to_count(value: object) -> int:
    """Convert a count (int or NumPy integer) to `int`; reject bools, floats and negatives."""
    if isinstance(value, bool | float):
        raise SpecValidationError(
            f"a count must be an int, got {value!r}; pass the number of units as an integer.",
            details={"field": "n"},
        )
    try:
        count = operator.index(value)  # type: ignore[arg-type]  # anything with __index__
    except TypeError:
        raise SpecValidationError(
            f"a count must be an int, got {value!r}; pass the number of units as an integer.",
            details={"field": "n"},
        ) from None
    if count < 0:
        raise SpecValidationError(
            f"a count must be >= 0, got {count}; a count of units cannot be negative.",
            details={"field": "n"},
        )
    return count


def _check_finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not math.isfinite(value):
        raise SpecValidationError(
            f"{type(instance).__name__}.{attribute.name} must be a finite number, got {value!r}; "
            "drop NaN/inf metric values before aggregating.",
            details={"field": attribute.name},
        )


def _to_float(value: float) -> float:
    return float(value)


def _values_array(values: Iterable[float], what: str) -> npt.NDArray[np.float64]:
    """`values` as a 1-D float64 array; `SpecValidationError` naming the first non-finite one."""
    if isinstance(values, np.ndarray):
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    else:
        items = [float(x) for x in values]
        arr = np.asarray(items, dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise SpecValidationError(
            f"{what} got a non-finite value {arr[bad]!r} at index {bad}; drop or impute NaN/inf "
            "values first.",
            details={"field": "values", "index": bad},
        )
    return arr


def _mean_and_deviations(arr: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
    """The mean of `arr` and the deviations from it, by the corrected two-pass algorithm.

    The first pass's mean (NumPy's pairwise sum) is refined by the mean of the deviations, so
    the result is accurate even when the mean is huge next to the spread (Chan, Golub and
    LeVeque, "Algorithms for computing the sample variance", 1983).
    """
    mean = float(np.mean(arr))
    dev = arr - mean
    shift = float(np.mean(dev))
    if shift:
        mean += shift
        dev -= shift
    return mean, dev


@attrs.frozen(kw_only=True)
class SufficientStats:
    """Sufficient statistics of one metric in one variation: `n`, the mean and `M2`.

    `M2 = Σ (x - mean)²` is the sum of squared deviations from the mean, so the sample variance
    is `M2 / (n - 1)`. Keeping the mean and `M2` (rather than `Σx` and `Σx²`) keeps the variance
    exact to the last digits when the mean is large next to the spread: revenue in cents, epoch
    timestamps, latencies in nanoseconds. (`Σx²` of values near 1e9 is near 1e18, where a
    float64 has a resolution of 128, so `Σx² - (Σx)²/n` cannot recover a variance of 1.)

    Two summaries of disjoint samples combine exactly with `merge` (or `+`), by Chan, Golub and
    LeVeque's pairwise update (1979), so a tracker can aggregate per day, per shard or per SQL
    partition and add the results up.

    Build one with a constructor that says what you have:

    * `SufficientStats.from_moments(n, mean, variance)`: count, mean and sample variance;
    * `SufficientStats.from_values(values)`: raw per-unit values;
    * `SufficientStats.from_proportion(conversions, n)`: a 0/1 metric;
    * `SufficientStats.from_sums(n, sum, sum_squares)`: `Σx` and `Σx²` (only as precise as
      those sums are: prefer the others when the mean is large next to the spread);
    * `SufficientStats(n=..., mean=..., m2=...)`: the stored form itself (keywords only).

    Attributes:
        n: Number of units (users, sessions), `>= 0`.
        mean: Mean of the values (`0.0` when `n == 0`).
        m2: `Σ (x - mean)²`, `>= 0` (`0.0` when `n < 2`).

    Raises:
        SpecValidationError: `n` is not a non-negative int, `mean` or `m2` is NaN/inf, `m2` is
            negative, or an empty or one-unit sample has a spread.
    """

    n: int = attrs.field(converter=_to_count)
    mean: float = attrs.field(converter=_to_float, validator=_check_finite)
    m2: float = attrs.field(converter=_to_float, validator=_check_finite)

    def __attrs_post_init__(self) -> None:
        if self.m2 < 0:
            raise SpecValidationError(
                f"SufficientStats.m2 must be >= 0, got {self.m2!r}; it is the sum of squared "
                "deviations from the mean, Σ(x - mean)² = variance * (n - 1).",
                details={"field": "m2"},
            )
        if self.n == 0 and (self.mean != 0 or self.m2 != 0):
            raise SpecValidationError(
                "SufficientStats with n=0 must have mean=0 and m2=0; an empty sample has no "
                "values.",
                details={"field": "n"},
            )
        if self.n == 1 and self.m2 != 0:
            raise SpecValidationError(
                f"SufficientStats with n=1 must have m2=0 (one value has no spread), got "
                f"{self.m2!r}.",
                details={"field": "m2"},
            )

    @classmethod
    def empty(cls) -> SufficientStats:
        """Return the statistics of an empty sample (the identity of `merge`)."""
        return cls(n=0, mean=0.0, m2=0.0)

    @classmethod
    def from_moments(cls, n: int, mean: float, variance: float) -> SufficientStats:
        """Summarise a sample from its size, mean and sample variance.

        Args:
            n: Number of units, `>= 0`.
            mean: Their mean (`0.0` when `n == 0`).
            variance: Their unbiased sample variance (ddof=1), `>= 0`; `0.0` (or NaN) when
                `n < 2`. Pass `std ** 2` for a standard deviation.

        Returns:
            The statistics, with `m2 = variance * (n - 1)`.

        Raises:
            SpecValidationError: A negative or non-finite variance, or as the constructor.
        """
        count = _to_count(n)
        var = float(variance)
        if count < 2 and (var == 0.0 or math.isnan(var)):
            return cls(n=count, mean=mean, m2=0.0)
        if not (math.isfinite(var) and var >= 0.0):
            raise SpecValidationError(
                f"variance must be a finite number >= 0, got {variance!r}; pass the sample "
                "variance (ddof=1), i.e. the standard deviation squared.",
                details={"field": "variance"},
            )
        if count < 2:
            raise SpecValidationError(
                f"a sample of n={count} has no variance, got {variance!r}; pass variance=0.",
                details={"field": "variance"},
            )
        return cls(n=count, mean=mean, m2=var * (count - 1))

    @classmethod
    def from_sums(cls, n: int, sum: float, sum_squares: float) -> SufficientStats:
        """Summarise a sample from `n`, `Σx` and `Σx²` (e.g. a legacy `SUM(x), SUM(x * x)`).

        The variance is then `(Σx² - (Σx)²/n) / (n - 1)`, which cancels catastrophically when the
        mean is large next to the spread: with values near 1e9 and a variance of 1, `Σx²` has
        lost the variance before it reaches this function. Aggregate `AVG(x)` and the squared
        deviations instead (as `SqlTrackingStore` does), or use `from_moments`.

        For a binomial (conversion) metric `sum = sum_squares = conversions`.

        Raises:
            SpecValidationError: `n` is not a non-negative int, a sum is NaN/inf, `sum_squares`
                is negative or below `sum**2 / n` (no real values have those statistics).
        """
        count = _to_count(n)
        total = float(sum)
        squares = float(sum_squares)
        for field, value in (("sum", total), ("sum_squares", squares)):
            if not math.isfinite(value):
                raise SpecValidationError(
                    f"SufficientStats.{field} must be a finite number, got {value!r}; drop "
                    "NaN/inf metric values before aggregating.",
                    details={"field": field},
                )
        if squares < 0:
            raise SpecValidationError(
                f"SufficientStats.sum_squares must be >= 0, got {squares!r}; it is the sum of "
                "squared values (Σx²), not a variance.",
                details={"field": "sum_squares"},
            )
        if count == 0:
            if total != 0 or squares != 0:
                raise SpecValidationError(
                    "SufficientStats with n=0 must have sum=0 and sum_squares=0; an empty "
                    "sample has no values to add up.",
                    details={"field": "n"},
                )
            return cls.empty()
        # Cauchy-Schwarz: n Σx² >= (Σx)² for any real values; a violation means the three
        # numbers were not aggregated from the same rows.
        lhs = total * total
        rhs = count * squares
        if lhs - rhs > 1e-9 * max(rhs, 1.0):
            raise SpecValidationError(
                f"SufficientStats(n={count}, sum={total!r}, sum_squares={squares!r}) is "
                "impossible: sum_squares must be >= sum**2 / n. Aggregate n, SUM(x) and "
                "SUM(x * x) over the same rows.",
                details={"field": "sum_squares"},
            )
        mean = total / count
        m2 = 0.0 if count == 1 else max(squares - total * mean, 0.0)
        return cls(n=count, mean=mean, m2=m2)

    @classmethod
    def from_values(cls, values: Iterable[float]) -> SufficientStats:
        """Summarise raw per-unit values (corrected two-pass algorithm, exact to rounding).

        Args:
            values: One metric value per unit (e.g. revenue per user; 0/1 for conversions);
                a NumPy array is summarised without a Python loop.

        Returns:
            The `n`, mean and `M2` of `values`.

        Raises:
            SpecValidationError: A value is NaN or infinite.
        """
        arr = _values_array(values, "SufficientStats.from_values")
        if arr.size == 0:
            return cls.empty()
        mean, dev = _mean_and_deviations(arr)
        m2 = float(dev @ dev) if arr.size > 1 else 0.0
        return cls(n=int(arr.size), mean=mean, m2=m2)

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
        count = _to_count(n)
        if conversions > count:
            raise SpecValidationError(
                f"conversions ({conversions}) cannot exceed n ({count}); count each unit once.",
                details={"field": "conversions"},
            )
        if count == 0:
            return cls.empty()
        return cls(
            n=count, mean=conversions / count, m2=conversions * (count - conversions) / count
        )

    def merge(self, other: SufficientStats) -> SufficientStats:
        """Return the statistics of the union of two disjoint samples.

        Chan, Golub and LeVeque's update: `mean = mean_a + d n_b / n` and
        `M2 = M2_a + M2_b + d² n_a n_b / n` with `d = mean_b - mean_a`.
        """
        n_a, n_b = self.n, other.n
        if n_b == 0:
            return self
        if n_a == 0:
            return other
        n = n_a + n_b
        delta = other.mean - self.mean
        mean = self.mean + delta * (n_b / n)
        m2 = self.m2 + other.m2 + delta * delta * (n_a * n_b / n)
        return SufficientStats(n=n, mean=mean, m2=m2)

    def __add__(self, other: object) -> SufficientStats:
        if not isinstance(other, SufficientStats):
            return NotImplemented
        return self.merge(other)

    @property
    def sum(self) -> float:
        """`Σx = n * mean`."""
        return self.n * self.mean

    @property
    def sum_squares(self) -> float:
        """`Σx² = M2 + n * mean²` (for export; the tests never use it)."""
        return self.m2 + self.n * self.mean * self.mean

    @property
    def variance(self) -> float:
        """Unbiased sample variance `M2 / (n - 1)`.

        `nan` when `n < 2` (the variance is undefined); tests check `n` first and say why.
        """
        if self.n < 2:
            return math.nan
        return self.m2 / (self.n - 1)

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


@attrs.frozen
class CovariateStats:
    """Sufficient statistics of a metric with a pre-period covariate, for CUPED.

    CUPED (Deng, Xu, Kohavi and Walker, "Improving the sensitivity of online controlled
    experiments by utilizing pre-experiment data", WSDM 2013) removes the part of the metric
    explained by the same unit's pre-experiment value, shrinking the variance by `1 - rho²` (rho the
    correlation of the two) without biasing the lift.

    Like `SufficientStats`, the pair keeps centred moments: the co-moment
    `C = Σ (post - mean_post)(pre - mean_pre)`, so the covariance `C / (n - 1)` stays exact when
    the means are large; `merge` uses Chan et al.'s pairwise update.

    Attributes:
        post: Statistics of the metric during the experiment.
        pre: Statistics of the covariate (usually the same metric before exposure), same units.
        comoment: `Σ (post - mean_post)(pre - mean_pre)` over the units (keyword only; use
            `from_sums` for `Σ post·pre`, `from_moments` for a covariance).

    Raises:
        SpecValidationError: `post` and `pre` do not cover the same number of units, or
            `comoment` is not finite.
    """

    post: SufficientStats
    pre: SufficientStats
    comoment: float = attrs.field(kw_only=True, converter=_to_float, validator=_check_finite)

    def __attrs_post_init__(self) -> None:
        if self.post.n != self.pre.n:
            raise SpecValidationError(
                f"CovariateStats.pre has n={self.pre.n} but post has n={self.post.n}; "
                "aggregate the covariate over the same units as the metric (use 0 for units "
                "without pre-period data).",
                details={"field": "pre"},
            )

    @property
    def n(self) -> int:
        """Number of units."""
        return self.post.n

    @property
    def covariance(self) -> float:
        """Sample covariance of post and pre, `C / (n - 1)` (`nan` when `n < 2`)."""
        if self.n < 2:
            return math.nan
        return self.comoment / (self.n - 1)

    @classmethod
    def from_moments(
        cls, post: SufficientStats, pre: SufficientStats, covariance: float
    ) -> CovariateStats:
        """Pair two summaries with the sample covariance (ddof=1) of their units."""
        cov = float(covariance)
        if post.n < 2 and (cov == 0.0 or math.isnan(cov)):
            return cls(post, pre, comoment=0.0)
        return cls(post, pre, comoment=cov * (post.n - 1))

    @classmethod
    def from_sums(
        cls, post: SufficientStats, pre: SufficientStats, sum_products: float
    ) -> CovariateStats:
        """Pair two summaries with `Σ post·pre` (as precise as that sum; see
        `SufficientStats.from_sums`)."""
        products = float(sum_products)
        if not math.isfinite(products):
            raise SpecValidationError(
                f"CovariateStats.sum_products must be a finite number, got {products!r}.",
                details={"field": "sum_products"},
            )
        return cls(post, pre, comoment=products - post.n * post.mean * pre.mean)

    @classmethod
    def from_values(cls, post: Iterable[float], pre: Iterable[float]) -> CovariateStats:
        """Summarise paired per-unit values (`post[i]` and `pre[i]` belong to one unit).

        Raises:
            SpecValidationError: The sequences differ in length or hold NaN/inf.
        """
        post_arr = _values_array(post, "CovariateStats.from_values")
        pre_arr = _values_array(pre, "CovariateStats.from_values")
        if post_arr.size != pre_arr.size:
            raise SpecValidationError(
                f"CovariateStats.from_values got {post_arr.size} post values and "
                f"{pre_arr.size} pre values; pass one pair per unit.",
                details={"field": "pre"},
            )
        if post_arr.size == 0:
            return cls(SufficientStats.empty(), SufficientStats.empty(), comoment=0.0)
        n = int(post_arr.size)
        mean_post, dev_post = _mean_and_deviations(post_arr)
        mean_pre, dev_pre = _mean_and_deviations(pre_arr)
        if n == 1:
            return cls(
                SufficientStats(n=1, mean=mean_post, m2=0.0),
                SufficientStats(n=1, mean=mean_pre, m2=0.0),
                comoment=0.0,
            )
        return cls(
            SufficientStats(n=n, mean=mean_post, m2=float(dev_post @ dev_post)),
            SufficientStats(n=n, mean=mean_pre, m2=float(dev_pre @ dev_pre)),
            comoment=float(dev_post @ dev_pre),
        )

    def merge(self, other: CovariateStats) -> CovariateStats:
        """Return the statistics of the union of two disjoint samples.

        `C = C_a + C_b + d_post d_pre n_a n_b / n` (Chan et al.'s update for co-moments).
        """
        n_a, n_b = self.n, other.n
        if n_b == 0:
            return self
        if n_a == 0:
            return other
        d_post = other.post.mean - self.post.mean
        d_pre = other.pre.mean - self.pre.mean
        comoment = self.comoment + other.comoment + d_post * d_pre * (n_a * n_b / (n_a + n_b))
        return CovariateStats(
            self.post.merge(other.post), self.pre.merge(other.pre), comoment=comoment
        )

    def __add__(self, other: object) -> CovariateStats:
        if not isinstance(other, CovariateStats):
            return NotImplemented
        return self.merge(other)


AnyStats = SufficientStats | CovariateStats

_DIFFERENCES = ("relative", "absolute")
_ALTERNATIVES = ("two-sided", "greater", "less")
_METRIC_TYPES = ("mean", "proportion")


def _check_choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecValidationError(
            f"{field} must be one of {list(allowed)}, got {value!r}.",
            details={"field": field},
        )


def _check_alpha(alpha: float, field: str = "alpha") -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha < 1.0:
        raise SpecValidationError(
            f"{field} must be a fraction strictly between 0 and 1 (0.05 for 95 % confidence), "
            f"got {alpha!r}.",
            details={"field": field},
        )


def _variance(stats: SufficientStats, metric_type: MetricType) -> float:
    """Per-unit variance: sample variance, or `p(1-p)` for proportions (as gbstats does)."""
    if metric_type == "proportion":
        p = stats.mean
        return p * (1.0 - p)
    return stats.variance


def _check_proportion(stats: SufficientStats, field: str) -> None:
    """A 0/1 metric has `0 <= mean <= 1` and `M2 = n p (1 - p)` (within rounding)."""
    p = stats.mean
    expected = stats.n * p * (1.0 - p)
    if not 0.0 <= p <= 1.0 or abs(stats.m2 - expected) > 1e-9 * (stats.n + 1.0):
        raise SpecValidationError(
            f"{field} is not a proportion: a 0/1 metric has 0 <= mean <= 1 and "
            f"m2 == n * mean * (1 - mean), got n={stats.n}, mean={p!r}, m2={stats.m2!r}. Use "
            "SufficientStats.from_proportion(conversions, n) or metric_type='mean'.",
            details={"field": field},
        )


def _covariance(stats: CovariateStats) -> float:
    return stats.comoment / (stats.n - 1)


def cuped_theta(
    control: CovariateStats, variation: CovariateStats, *, metric_type: MetricType = "mean"
) -> float:
    """CUPED coefficient `θ = Cov(post, pre) / Var(pre)`, pooled over both arms.

    Pooling keeps `θ` independent of the treatment, so the adjusted lift stays unbiased (Deng
    et al., 2013, §3.3). Returns `0.0` (no adjustment) when the pooled pre or post variance is 0
    or there are fewer than two units.

    Args:
        control: Control statistics with covariate.
        variation: Variation statistics with covariate.
        metric_type: `proportion` uses `p(1-p)` variances, like gbstats.

    Returns:
        The regression coefficient of the metric on its covariate.
    """
    pooled = control.merge(variation)
    if pooled.n < 2:
        return 0.0
    var_pre = _variance(pooled.pre, metric_type)
    var_post = _variance(pooled.post, metric_type)
    if var_pre <= 0.0 or var_post <= 0.0:
        return 0.0
    return _covariance(pooled) / var_pre


@attrs.frozen
class _Arm:
    n: int
    mean: float
    unadjusted_mean: float
    variance: float


def _arm(stats: AnyStats, metric_type: MetricType, theta: float | None) -> _Arm:
    if isinstance(stats, CovariateStats):
        post = stats.post
        var_post = _variance(post, metric_type)
        assert theta is not None  # the caller computes theta for covariate stats
        var_pre = _variance(stats.pre, metric_type)
        adjusted = var_post + theta * theta * var_pre - 2.0 * theta * _covariance(stats)
        return _Arm(post.n, post.mean - theta * stats.pre.mean, post.mean, max(adjusted, 0.0))
    return _Arm(stats.n, stats.mean, stats.mean, _variance(stats, metric_type))


def _welch_df(c: _Arm, v: _Arm) -> float:
    """Welch-Satterthwaite degrees of freedom."""
    qc = c.variance / c.n
    qv = v.variance / v.n
    # (qc + qv)² / (qc²/(n_c-1) + qv²/(n_v-1)), written with shares so tiny variances cannot
    # underflow to 0/0.
    share = qc / (qc + qv)
    return 1.0 / (share * share / (c.n - 1) + (1.0 - share) ** 2 / (v.n - 1))


def _lift(
    estimate: float,
    variance: float,
    df: float,
    *,
    alternative: Alternative,
    alpha: float,
    sequential_n: int | None,
    tuning: float,
) -> Lift:
    se = math.sqrt(variance)
    if sequential_n is not None:
        width = _sequential.half_width(variance, sequential_n, alpha, tuning)
        p = _sequential.p_value(estimate, variance, sequential_n, alpha, tuning)
        return Lift(estimate, se, estimate - width, estimate + width, p)
    t = estimate / se
    if alternative == "two-sided":
        p = 2.0 * t_sf_scalar(abs(t), df)
        width = t_isf(alpha / 2.0, df) * se
        return Lift(estimate, se, estimate - width, estimate + width, min(p, 1.0))
    width = t_isf(alpha, df) * se
    if alternative == "greater":
        return Lift(estimate, se, estimate - width, math.inf, t_sf_scalar(t, df))
    return Lift(estimate, se, -math.inf, estimate + width, t_sf_scalar(-t, df))


def _compare(
    control: AnyStats,
    variation: AnyStats,
    *,
    metric: str,
    control_name: str,
    variation_name: str,
    metric_type: MetricType,
    difference: DifferenceType,
    alternative: Alternative,
    alpha: float,
    theta: float | None,
    sequential: bool,
    tuning: float,
) -> Comparison:
    _check_choice("difference", difference, _DIFFERENCES)
    _check_choice("alternative", alternative, _ALTERNATIVES)
    _check_choice("metric_type", metric_type, _METRIC_TYPES)
    _check_alpha(alpha)
    if sequential:
        if alternative != "two-sided":
            raise SpecValidationError(
                "sequential tests support alternative='two-sided' only; use welch_ttest for a "
                "one-sided fixed-horizon test.",
                details={"field": "alternative"},
            )
        if isinstance(tuning, bool) or not isinstance(tuning, int | float) or not tuning > 0:
            raise SpecValidationError(
                f"tuning must be a positive planned sample size (units in both arms), got {tuning!r}.",
                details={"field": "tuning"},
            )
    for field, stats in (("control", control), ("variation", variation)):
        if not isinstance(stats, SufficientStats | CovariateStats):
            raise SpecValidationError(
                f"{field} must be SufficientStats or CovariateStats, got {type(stats).__name__}.",
                details={"field": field},
            )
    if isinstance(control, CovariateStats) != isinstance(variation, CovariateStats):
        raise SpecValidationError(
            f"metric {metric!r}: control and variation must both have a covariate (CovariateStats) "
            "or neither; CUPED needs the pre-period data of every arm.",
            details={"field": "variation", "metric": metric},
        )
    if metric_type == "proportion":
        for field, stats in (("control", control), ("variation", variation)):
            post = stats.post if isinstance(stats, CovariateStats) else stats
            _check_proportion(post, field)

    def result(
        status: ComparisonStatus,
        reason: str | None,
        *,
        df: float | None = None,
        theta_used: float | None = None,
        absolute: Lift | None = None,
        relative: Lift | None = None,
    ) -> Comparison:
        c_post = control.post if isinstance(control, CovariateStats) else control
        v_post = variation.post if isinstance(variation, CovariateStats) else variation
        return Comparison(
            metric=metric,
            control=control_name,
            variation=variation_name,
            control_stats=control,
            variation_stats=variation,
            metric_type=metric_type,
            method="sequential" if sequential else "welch",
            difference=difference,
            alternative=alternative,
            alpha=float(alpha),
            status=status,
            reason=reason,
            control_mean=c_post.mean if c_post.n else None,
            variation_mean=v_post.mean if v_post.n else None,
            df=df,
            theta=theta_used,
            absolute=absolute,
            relative=relative,
        )

    empty = [name for name, s in ((control_name, control), (variation_name, variation)) if s.n == 0]
    if empty:
        return result(
            "empty_variation",
            f"{' and '.join(repr(e) for e in empty)} {'has' if len(empty) == 1 else 'have'} no "
            "units yet; wait for exposures before analysing.",
        )
    small = [
        f"{name!r} has n={s.n}"
        for name, s in ((control_name, control), (variation_name, variation))
        if s.n < 2
    ]
    if small:
        return result(
            "insufficient_data",
            f"{' and '.join(small)}: at least 2 units per variation are needed to estimate a variance.",
        )
    theta_used: float | None = None
    if isinstance(control, CovariateStats) and isinstance(variation, CovariateStats):
        theta_used = (
            cuped_theta(control, variation, metric_type=metric_type)
            if theta is None
            else float(theta)
        )
        if not math.isfinite(theta_used):
            raise SpecValidationError(
                f"theta must be finite, got {theta!r}.", details={"field": "theta"}
            )
    c = _arm(control, metric_type, theta_used)
    v = _arm(variation, metric_type, theta_used)
    var_abs = c.variance / c.n + v.variance / v.n
    if var_abs <= 0.0:
        return result(
            "zero_variance",
            "both variations have zero variance (every unit has the same value, e.g. no "
            "conversions at all), so there is no sampling error to test against.",
            theta_used=theta_used,
        )
    df = _welch_df(c, v)
    seq_n = c.n + v.n if sequential else None
    absolute = _lift(
        v.mean - c.mean,
        var_abs,
        df,
        alternative=alternative,
        alpha=alpha,
        sequential_n=seq_n,
        tuning=tuning,
    )
    m_c = c.unadjusted_mean
    m_v = v.unadjusted_mean
    # Delta method for (m_v - m_c) / m_c with independent arms:
    # s_v²/(m_c² n_v) + s_c² m_v²/(m_c⁴ n_c).
    m_c2 = m_c * m_c
    var_rel = math.inf
    if m_c2 > 0.0:
        ratio = m_v / m_c
        var_rel = (v.variance / v.n + c.variance / c.n * ratio * ratio) / m_c2
    if var_rel == 0.0:
        return result(
            "zero_variance",
            f"the variation {variation_name!r} is constant at 0, so the relative lift has no "
            "sampling error (delta method); read the absolute lift (difference='absolute').",
            df=df,
            theta_used=theta_used,
            absolute=absolute,
        )
    if not math.isfinite(var_rel):
        return result(
            "zero_baseline",
            f"the control {control_name!r} has mean {m_c!r} (0 or too close to 0), so a relative "
            "lift is undefined; read the absolute lift (difference='absolute').",
            df=df,
            theta_used=theta_used,
            absolute=absolute,
        )
    relative = _lift(
        (v.mean - c.mean) / m_c,
        var_rel,
        df,
        alternative=alternative,
        alpha=alpha,
        sequential_n=seq_n,
        tuning=tuning,
    )
    return result("ok", None, df=df, theta_used=theta_used, absolute=absolute, relative=relative)


def welch_ttest(
    control: AnyStats,
    variation: AnyStats,
    *,
    difference: DifferenceType = "relative",
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
    metric_type: MetricType = "mean",
    theta: float | None = None,
    metric: str = "metric",
    control_name: str = "control",
    variation_name: str = "variation",
) -> Comparison:
    """Welch's unequal-variance t-test of a variation against the control, from summaries.

    The absolute lift is `mean_v - mean_c` with standard error `sqrt(s_c²/n_c + s_v²/n_v)`;
    the relative lift is `(mean_v - mean_c) / mean_c` with the delta-method standard error
    `sqrt(s_v² / (m_c² n_v) + s_c² m_v² / (m_c⁴ n_c))`. Both use Welch-Satterthwaite degrees of
    freedom `(q_c + q_v)² / (q_c²/(n_c-1) + q_v²/(n_v-1))`, `q = s²/n`. With `CovariateStats`
    the means and variances are CUPED-adjusted first (`theta` pooled unless given).
    Matches `scipy.stats.ttest_ind(variation, control, equal_var=False)` on the absolute lift and
    gbstats' `TwoSidedTTest` on both.

    Args:
        control: The declared control's statistics.
        variation: The treatment's statistics (same type as `control`).
        difference: Which lift `Comparison.p_value` and `.significant` refer to.
        alternative: `two-sided`, `greater` (variation > control) or `less`.
        alpha: Significance level; intervals are at `1 - alpha`.
        metric_type: `mean`, or `proportion` for 0/1 metrics (variance `p(1-p)`, like gbstats).
        theta: CUPED coefficient to use instead of the pooled estimate.
        metric: Metric name, carried into the result.
        control_name: Control name, carried into the result.
        variation_name: Variation name, carried into the result.

    Returns:
        A `Comparison`; its `status` and `reason` explain any missing estimate.

    Raises:
        SpecValidationError: An option is out of range, the arms mix `SufficientStats` and
            `CovariateStats`, or a `proportion` metric is not 0/1.
    """
    return _compare(
        control,
        variation,
        metric=metric,
        control_name=control_name,
        variation_name=variation_name,
        metric_type=metric_type,
        difference=difference,
        alternative=alternative,
        alpha=alpha,
        theta=theta,
        sequential=False,
        tuning=1.0,
    )


def sequential_ttest(
    control: AnyStats,
    variation: AnyStats,
    *,
    tuning: float = 5000.0,
    difference: DifferenceType = "relative",
    alpha: float = 0.05,
    metric_type: MetricType = "mean",
    theta: float | None = None,
    metric: str = "metric",
    control_name: str = "control",
    variation_name: str = "variation",
) -> Comparison:
    """Anytime-valid two-sided test: an asymptotic confidence sequence around the lift.

    Unlike a fixed-horizon t-test, the interval and p-value stay valid however often you look
    (Waudby-Smith et al., arXiv:2103.06476, eq. 9; GrowthBook's sequential engine). They are wider
    than Welch's at the same sample size; `tuning` (a planned total sample size, both arms) sets
    where the sequence is tightest. Lifts and standard errors are the same as `welch_ttest`'s.

    Args:
        control: The declared control's statistics.
        variation: The treatment's statistics.
        tuning: Planned total number of units `N*` (> 0); GrowthBook's default is 5000.
        difference: Which lift `p_value` and `significant` refer to.
        alpha: Error rate, uniformly over all peeks.
        metric_type: `mean` or `proportion`.
        theta: CUPED coefficient to use instead of the pooled estimate.
        metric: Metric name, carried into the result.
        control_name: Control name, carried into the result.
        variation_name: Variation name, carried into the result.

    Returns:
        A `Comparison` with `method="sequential"`.

    Raises:
        SpecValidationError: As `welch_ttest`, or `tuning <= 0`.
    """
    return _compare(
        control,
        variation,
        metric=metric,
        control_name=control_name,
        variation_name=variation_name,
        metric_type=metric_type,
        difference=difference,
        alternative="two-sided",
        alpha=alpha,
        theta=theta,
        sequential=True,
        tuning=tuning,
    )


FloatArray = npt.NDArray[np.float64]


@attrs.frozen
class WelchArrays:
    """Element-wise results of `welch_ttest_from_stats`.

    Attributes:
        statistic: t statistics `(mean1 - mean2) / se`.
        pvalue: p-values for the requested alternative.
        df: Welch-Satterthwaite degrees of freedom.
        valid: `False` where the test is undefined (`nobs < 2`, both standard deviations 0, or a
            non-finite input); `statistic`, `pvalue` and `df` are `NaN` exactly there.
    """

    statistic: FloatArray
    pvalue: FloatArray
    df: FloatArray
    valid: npt.NDArray[np.bool_]


def welch_ttest_from_stats(
    mean1: npt.ArrayLike,
    std1: npt.ArrayLike,
    nobs1: npt.ArrayLike,
    mean2: npt.ArrayLike,
    std2: npt.ArrayLike,
    nobs2: npt.ArrayLike,
    *,
    alternative: Alternative = "two-sided",
) -> WelchArrays:
    """Vectorised Welch t-test from summary statistics, for many comparisons at once.

    Same arguments and numbers as `scipy.stats.ttest_ind_from_stats(..., equal_var=False)`
    (`std` is the sample standard deviation, ddof=1), several times faster: the t tail uses Hill's
    normalising transformation (CACM Algorithm 395) where `df >= 50`, exact to ~1e-13, and
    `scipy.special.stdtr` below.

    Args:
        mean1: Means of sample 1, any shape.
        std1: Sample standard deviations of sample 1.
        nobs1: Sizes of sample 1.
        mean2: Means of sample 2.
        std2: Sample standard deviations of sample 2.
        nobs2: Sizes of sample 2.
        alternative: `two-sided`, `greater` (mean1 > mean2) or `less`.

    Returns:
        `WelchArrays` broadcast to the inputs' common shape.

    Raises:
        SpecValidationError: `alternative` is unknown or the shapes do not broadcast.
    """
    _check_choice("alternative", alternative, _ALTERNATIVES)
    try:
        m1, s1, n1, m2, s2, n2 = np.broadcast_arrays(
            *(np.asarray(a, dtype=np.float64) for a in (mean1, std1, nobs1, mean2, std2, nobs2))
        )
    except ValueError as exc:
        raise SpecValidationError(
            f"welch_ttest_from_stats: the six inputs must broadcast to one shape ({exc}).",
            details={"field": "mean1"},
        ) from None
    shape = m1.shape
    flat = [np.ascontiguousarray(a, dtype=np.float64).reshape(-1) for a in (m1, s1, n1, m2, s2, n2)]
    stat, p, df = welch_arrays(flat[0], flat[1], flat[2], flat[3], flat[4], flat[5], alternative)
    f_n1, f_n2 = flat[2], flat[5]
    valid = (f_n1 >= 2) & (f_n2 >= 2) & np.isfinite(stat) & np.isfinite(df) & np.isfinite(p)
    if not valid.all():
        invalid = ~valid
        stat[invalid] = np.nan
        p[invalid] = np.nan
        df[invalid] = np.nan
    return WelchArrays(
        statistic=stat.reshape(shape),
        pvalue=p.reshape(shape),
        df=df.reshape(shape),
        valid=valid.reshape(shape),
    )


def srm_check(
    observed: Mapping[str, int],
    weights: Mapping[str, float] | None = None,
    *,
    threshold: float = 0.001,
) -> SrmResult:
    """Sample-ratio-mismatch check: Pearson's χ² goodness of fit of exposures to weights.

    A mismatch (p below `threshold`, 0.001 by default as in GrowthBook) means the assignment or
    the exposure logging is broken, so the experiment's lifts cannot be trusted.

    Args:
        observed: Units exposed per variation.
        weights: Intended traffic split per variation (any positive scale, normalised here);
            equal weights when omitted. Must name exactly the variations of `observed`.
        threshold: p-value below which a mismatch is flagged.

    Returns:
        An `SrmResult`. With no exposures, or a single weighted variation, it carries a `reason`
        and no p-value. Units in a variation of weight 0 are a mismatch with `p_value = 0`.

    Raises:
        SpecValidationError: Negative counts or weights, all-zero weights, mismatched names, or
            a threshold outside (0, 1).
    """
    _check_alpha(threshold, "threshold")
    if not observed:
        raise SpecValidationError(
            "srm_check needs the exposure count of at least one variation.",
            details={"field": "observed"},
        )
    counts = {str(k): _to_count(v) for k, v in observed.items()}
    names = list(counts)
    if weights is None:
        raw = dict.fromkeys(names, 1.0)
    else:
        if set(weights) != set(names):
            raise SpecValidationError(
                f"weights name {sorted(weights)} but observed names {sorted(names)}; give one "
                "weight per variation.",
                details={"field": "weights"},
            )
        raw = {k: float(weights[k]) for k in names}
    for k, w in raw.items():
        if not math.isfinite(w) or w < 0:
            raise SpecValidationError(
                f"weight of variation {k!r} must be a finite number >= 0, got {w!r}.",
                details={"field": "weights", "variation": k},
            )
    total_w = math.fsum(raw.values())
    if total_w <= 0:
        raise SpecValidationError(
            "at least one variation needs a positive weight.", details={"field": "weights"}
        )
    norm = {k: w / total_w for k, w in raw.items()}
    total = sum(counts.values())
    expected = {k: total * norm[k] for k in names}
    positive = [k for k in names if norm[k] > 0]
    df = len(positive) - 1

    def done(stat: float | None, p: float | None, mismatch: bool, reason: str | None) -> SrmResult:
        return SrmResult(
            observed=counts,
            expected=expected,
            weights=norm,
            statistic=stat,
            df=df,
            p_value=p,
            threshold=float(threshold),
            mismatch=mismatch,
            reason=reason,
        )

    if total == 0:
        return done(None, None, False, "no exposures yet")
    stray = [k for k in names if norm[k] == 0 and counts[k] > 0]
    if stray:
        return done(
            math.inf,
            0.0,
            True,
            f"units were exposed to {stray} although their weight is 0",
        )
    if df < 1:
        return done(
            None, None, False, "a sample-ratio check needs at least two weighted variations"
        )
    stat = math.fsum((counts[k] - expected[k]) ** 2 / expected[k] for k in positive)
    p = float(special.chdtrc(df, stat))
    return done(stat, p, p < threshold, None)


def adjust_pvalues(pvalues: npt.ArrayLike, method: Literal["holm", "bh"] = "holm") -> FloatArray:
    """Adjust p-values for multiple comparisons.

    `holm` is Holm's (1979) step-down procedure, controlling the family-wise error rate;
    `bh` is Benjamini and Hochberg's (1995) step-up procedure, controlling the false discovery
    rate. Rejecting where the adjusted p-value is below `alpha` is the corresponding test
    (identical to `statsmodels.stats.multitest.multipletests` with `holm` / `fdr_bh`).

    Args:
        pvalues: 1-D p-values in [0, 1].
        method: `holm` or `bh`.

    Returns:
        Adjusted p-values, same order and shape as the input.

    Raises:
        SpecValidationError: `method` is unknown, or a p-value is outside [0, 1] or NaN.
    """
    _check_choice("method", method, ("holm", "bh"))
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise SpecValidationError(
            f"adjust_pvalues takes a 1-D sequence of p-values, got shape {p.shape}.",
            details={"field": "pvalues"},
        )
    if not np.all((p >= 0.0) & (p <= 1.0)):
        bad = int(np.flatnonzero(~((p >= 0.0) & (p <= 1.0)))[0])
        raise SpecValidationError(
            f"p-value at index {bad} is {p[bad]!r}; p-values must lie in [0, 1].",
            details={"field": "pvalues", "index": bad},
        )
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    ranked = p[order]
    if method == "holm":
        factors = m - np.arange(m, dtype=np.float64)
        adjusted_sorted = np.maximum.accumulate(np.minimum(ranked * factors, 1.0))
    else:
        factors = m / np.arange(1, m + 1, dtype=np.float64)
        adjusted_sorted = np.minimum.accumulate((ranked * factors)[::-1])[::-1]
        np.minimum(adjusted_sorted, 1.0, out=adjusted_sorted)
    out = np.empty_like(p)
    out[order] = adjusted_sorted
    return out


def analyze_experiment(
    data: Mapping[str, Mapping[str, AnyStats]],
    *,
    control: str,
    experiment: str = "",
    weights: Mapping[str, float] | None = None,
    exposures: Mapping[str, int] | None = None,
    metric_types: Mapping[str, MetricType] | None = None,
    difference: DifferenceType = "relative",
    alternative: Alternative = "two-sided",
    alpha: float = 0.05,
    sequential: bool = False,
    sequential_tuning: float = 5000.0,
    correction: Literal["holm", "bh"] | None = "holm",
    srm_threshold: float = 0.001,
) -> ExperimentResult:
    """Analyse every metric of every variation against the declared control.

    Args:
        data: `{metric: {variation: SufficientStats | CovariateStats}}`, e.g. the tracker's
            per-variation summaries. A variation missing from a metric counts as empty.
        control: The declared control variation; never chosen from the data.
        experiment: Experiment key, for display.
        weights: Intended traffic split per variation, for the SRM check (equal by default).
        exposures: Units exposed per variation for the SRM check; by default the `n` of the
            first metric.
        metric_types: `proportion` for 0/1 metrics (default `mean`).
        difference: Which lift leads (`relative` or `absolute`).
        alternative: Alternative hypothesis (fixed-horizon only).
        alpha: Significance level.
        sequential: Use anytime-valid confidence sequences instead of Welch's t-test.
        sequential_tuning: Planned total sample size for the sequential test.
        correction: `holm`, `bh` or `None`; applied across all metrics and variations.
        srm_threshold: p-value threshold of the SRM check.

    Returns:
        An `ExperimentResult` (control first in `variations`).

    Raises:
        SpecValidationError: No metrics, a metric without the control, or any error of
            `welch_ttest` / `srm_check`.
    """
    if not data:
        raise SpecValidationError(
            "analyze_experiment needs at least one metric: {metric: {variation: stats}}.",
            details={"field": "data"},
        )
    if correction is not None:
        _check_choice("correction", correction, ("holm", "bh"))
    types = dict(metric_types or {})
    unknown = sorted(set(types) - set(data))
    if unknown:
        raise SpecValidationError(
            f"metric_types names unknown metrics {unknown}; metrics are {sorted(data)}.",
            details={"field": "metric_types"},
        )
    variations: list[str] = [control]
    for per_variation in data.values():
        for name in per_variation:
            if name not in variations:
                variations.append(name)
    comparisons: list[Comparison] = []
    for metric, per_variation in data.items():
        if control not in per_variation:
            raise SpecValidationError(
                f"metric {metric!r} has no statistics for the declared control {control!r} "
                f"(it has {sorted(per_variation)}); pass control= one of them or add the control's "
                "summary.",
                details={"field": "control", "metric": metric},
            )
        c_stats = per_variation[control]
        for name in variations[1:]:
            v_stats = per_variation.get(name)
            if v_stats is None:
                v_stats = (
                    CovariateStats(SufficientStats.empty(), SufficientStats.empty(), comoment=0.0)
                    if isinstance(c_stats, CovariateStats)
                    else SufficientStats.empty()
                )
            comparisons.append(
                _compare(
                    c_stats,
                    v_stats,
                    metric=metric,
                    control_name=control,
                    variation_name=name,
                    metric_type=types.get(metric, "mean"),
                    difference=difference,
                    alternative=alternative,
                    alpha=alpha,
                    theta=None,
                    sequential=sequential,
                    tuning=sequential_tuning,
                )
            )
    if correction is not None:
        idx = [i for i, c in enumerate(comparisons) if c.p_value is not None]
        if idx:
            adjusted = adjust_pvalues(
                [float(comparisons[i].p_value or 0.0) for i in idx], correction
            )
            for i, adj in zip(idx, adjusted, strict=True):
                comparisons[i] = attrs.evolve(
                    comparisons[i], adjusted_p_value=float(adj), correction=correction
                )
    if exposures is None:
        first = next(iter(data.values()))
        exposures = {name: (first[name].n if name in first else 0) for name in variations}
    srm = srm_check(exposures, weights, threshold=srm_threshold)
    return ExperimentResult(
        experiment=experiment,
        control=control,
        variations=tuple(variations),
        metrics=tuple(data),
        comparisons=tuple(comparisons),
        srm=srm,
        correction=correction,
        alpha=float(alpha),
    )
