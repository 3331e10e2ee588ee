"""Frequentist stats engine for experiments, computed from sufficient statistics.

Every test here works from per-variation sufficient statistics (`n`, `Σx`, `Σx²`, plus `Σx·pre`
for CUPED), so an analysis of millions of exposures needs only a SQL `GROUP BY`, never the rows.
The numbers match GrowthBook's `gbstats` (frequentist engine) and scipy:

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
            is negative or below `sum**2 / n` (no real values have those statistics).
    """

    n: int = attrs.field(converter=_to_count)
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
        # Cauchy-Schwarz: n Σx² >= (Σx)² for any real values; a violation means the three
        # numbers were not aggregated from the same rows.
        lhs = self.sum * self.sum
        rhs = self.n * self.sum_squares
        if lhs - rhs > 1e-9 * max(rhs, 1.0):
            raise SpecValidationError(
                f"SufficientStats(n={self.n}, sum={self.sum!r}, sum_squares={self.sum_squares!r}) "
                "is impossible: sum_squares must be >= sum**2 / n. Aggregate n, SUM(x) and "
                "SUM(x * x) over the same rows.",
                details={"field": "sum_squares"},
            )

    @classmethod
    def empty(cls) -> SufficientStats:
        """Return the statistics of an empty sample (the identity of `merge`)."""
        return cls(0, 0.0, 0.0)

    @classmethod
    def from_values(cls, values: Iterable[float]) -> SufficientStats:
        """Summarise raw per-unit values.

        Args:
            values: One metric value per unit (e.g. revenue per user; 0/1 for conversions);
                a NumPy array is summarised without a Python loop.

        Returns:
            The `n`, `Σx` and `Σx²` of `values`.

        Raises:
            SpecValidationError: A value is NaN or infinite.
        """
        if isinstance(values, np.ndarray):
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
            finite = np.isfinite(arr)
            if not finite.all():
                bad = int(np.flatnonzero(~finite)[0])
                raise SpecValidationError(
                    f"SufficientStats.from_values got a non-finite value {arr[bad]!r} at index "
                    f"{bad}; drop or impute NaN/inf values first.",
                    details={"field": "values", "index": bad},
                )
            return cls(int(arr.size), float(arr.sum()), float(arr @ arr))
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


@attrs.frozen
class CovariateStats:
    """Sufficient statistics of a metric with a pre-period covariate, for CUPED.

    CUPED (Deng, Xu, Kohavi and Walker, "Improving the sensitivity of online controlled
    experiments by utilizing pre-experiment data", WSDM 2013) removes the part of the metric
    explained by the same unit's pre-experiment value, shrinking the variance by `1 - rho²` (rho the
    correlation of the two) without biasing the lift.

    Attributes:
        post: Statistics of the metric during the experiment.
        pre: Statistics of the covariate (usually the same metric before exposure), same units.
        sum_products: `Σ post·pre` over the units.

    Raises:
        SpecValidationError: `post` and `pre` do not cover the same number of units, or
            `sum_products` is not finite.
    """

    post: SufficientStats
    pre: SufficientStats
    sum_products: float = attrs.field(converter=_to_float, validator=_check_finite)

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

    @classmethod
    def from_values(cls, post: Iterable[float], pre: Iterable[float]) -> CovariateStats:
        """Summarise paired per-unit values (`post[i]` and `pre[i]` belong to one unit).

        Raises:
            SpecValidationError: The sequences differ in length or hold NaN/inf.
        """
        post_list = [float(x) for x in post]
        pre_list = [float(x) for x in pre]
        if len(post_list) != len(pre_list):
            raise SpecValidationError(
                f"CovariateStats.from_values got {len(post_list)} post values and "
                f"{len(pre_list)} pre values; pass one pair per unit.",
                details={"field": "pre"},
            )
        return cls(
            SufficientStats.from_values(post_list),
            SufficientStats.from_values(pre_list),
            math.fsum(a * b for a, b in zip(post_list, pre_list, strict=True)),
        )

    def merge(self, other: CovariateStats) -> CovariateStats:
        """Return the statistics of the union of two disjoint samples (exact)."""
        return CovariateStats(
            self.post.merge(other.post),
            self.pre.merge(other.pre),
            self.sum_products + other.sum_products,
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
        p = stats.sum / stats.n
        return p * (1.0 - p)
    return stats.variance


def _check_proportion(stats: SufficientStats, field: str) -> None:
    if abs(stats.sum - stats.sum_squares) > 1e-9 * max(stats.sum, 1.0) or stats.sum > stats.n:
        raise SpecValidationError(
            f"{field} is not a proportion: a 0/1 metric has sum == sum_squares <= n, got "
            f"n={stats.n}, sum={stats.sum!r}, sum_squares={stats.sum_squares!r}. Use "
            "SufficientStats.from_proportion(conversions, n) or metric_type='mean'.",
            details={"field": field},
        )


def _covariance(stats: CovariateStats) -> float:
    n = stats.n
    return (stats.sum_products - stats.post.sum * stats.pre.sum / n) / (n - 1)


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
                    CovariateStats(SufficientStats.empty(), SufficientStats.empty(), 0.0)
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
