"""The stats engine matches scipy, statsmodels and GrowthBook's published gbstats values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests

from contractspec.core.errors import SpecValidationError
from contractspec.growth.stats import (
    CovariateStats,
    SufficientStats,
    adjust_pvalues,
    analyze_experiment,
    cuped_theta,
    sequential_ttest,
    srm_check,
    welch_ttest,
    welch_ttest_from_stats,
)

# The summary statistics of gbstats' own frequentist test-suite
# (growthbook/growthbook packages/stats/tests/frequentist/test_tests.py, DECIMALS = 5).
GB_A = SufficientStats.from_sums(3407, 1396.87, 52377.9767)
GB_A3000 = SufficientStats.from_sums(3000, 1396.87, 52377.9767)
GB_B = SufficientStats.from_sums(3461, 2422.7, 134698.29)


def r5(x: float) -> float:
    """Round like gbstats' fixtures (numpy, 5 decimals)."""
    return float(np.round(x, 5))


# --------------------------------------------------------------------------- SufficientStats


def test_sufficient_stats_mean_and_variance_match_numpy() -> None:
    """Mean and unbiased variance equal numpy's on the same values."""
    values = [3.5, 1.25, 8.0, 2.0, 0.5]
    s = SufficientStats.from_values(values)
    assert s.n == 5
    assert s.mean == pytest.approx(np.mean(values), abs=1e-15)
    assert s.variance == pytest.approx(np.var(values, ddof=1), rel=1e-13)
    assert s.standard_error == pytest.approx(np.std(values, ddof=1) / math.sqrt(5), rel=1e-13)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=30),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=30),
)
def test_merge_equals_summary_of_the_union(xs: list[float], ys: list[float]) -> None:
    """Merging two summaries gives the summary of the concatenated values."""
    merged = SufficientStats.from_values(xs) + SufficientStats.from_values(ys)
    direct = SufficientStats.from_values(xs + ys)
    assert merged.n == direct.n
    assert merged.mean == pytest.approx(direct.mean, rel=1e-9, abs=1e-6)
    assert merged.m2 == pytest.approx(direct.m2, rel=1e-9, abs=1e-4)


def test_numpy_integer_counts_are_accepted() -> None:
    """An `np.int64` count (from a DataFrame or SQL driver) is converted to a Python int."""
    s = SufficientStats(n=np.int64(4), mean=np.float64(0.5), m2=1.0)
    assert s.n == 4
    assert type(s.n) is int


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"n": -1, "sum": 0.0, "sum_squares": 0.0}, "n", "must be >= 0"),
        ({"n": 2.0, "sum": 0.0, "sum_squares": 0.0}, "n", "must be an int"),
        ({"n": True, "sum": 0.0, "sum_squares": 0.0}, "n", "must be an int"),
        ({"n": 3, "sum": math.nan, "sum_squares": 1.0}, "sum", "finite"),
        ({"n": 3, "sum": 1.0, "sum_squares": -1.0}, "sum_squares", ">= 0"),
        ({"n": 0, "sum": 1.0, "sum_squares": 1.0}, "n", "n=0"),
        ({"n": 2, "sum": 1396.87, "sum_squares": 52377.9767}, "sum_squares", "impossible"),
    ],
)
def test_bad_sums_raise_naming_the_field(
    kwargs: dict[str, float], field: str, fragment: str
) -> None:
    """Malformed Σx / Σx² summaries raise SpecValidationError whose details name the field."""
    with pytest.raises(SpecValidationError, match=fragment) as info:
        SufficientStats.from_sums(**kwargs)
    assert info.value.details["field"] == field


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"),
    [
        ({"n": -1, "mean": 0.0, "m2": 0.0}, "n", "must be >= 0"),
        ({"n": 3, "mean": math.inf, "m2": 1.0}, "mean", "finite"),
        ({"n": 3, "mean": 1.0, "m2": -1.0}, "m2", ">= 0"),
        ({"n": 0, "mean": 1.0, "m2": 0.0}, "n", "n=0"),
        ({"n": 1, "mean": 1.0, "m2": 2.0}, "m2", "n=1"),
    ],
)
def test_bad_moments_raise_naming_the_field(
    kwargs: dict[str, float], field: str, fragment: str
) -> None:
    """Malformed (n, mean, M2) summaries raise SpecValidationError whose details name the field."""
    with pytest.raises(SpecValidationError, match=fragment) as info:
        SufficientStats(**kwargs)  # type: ignore[arg-type]
    assert info.value.details["field"] == field
    with pytest.raises(SpecValidationError, match="variance must be a finite number >= 0"):
        SufficientStats.from_moments(10, 1.0, -0.5)


def test_positional_sums_are_refused() -> None:
    """The old positional `(n, Σx, Σx²)` form fails loudly instead of being read as moments."""
    with pytest.raises(TypeError):
        SufficientStats(4, 2.0, 2.0)  # type: ignore[misc]


def test_from_values_rejects_nan_with_its_index() -> None:
    """A NaN value is reported with its position."""
    with pytest.raises(SpecValidationError, match="index 2") as info:
        SufficientStats.from_values([1.0, 2.0, float("nan")])
    assert info.value.details == {"errors": [], "field": "values", "index": 2}
    with pytest.raises(SpecValidationError, match="index 1") as info:
        SufficientStats.from_values(np.array([1.0, np.inf]))
    assert info.value.details["index"] == 1


def test_numpy_and_python_values_summarise_alike() -> None:
    """An array and the equivalent list give the same statistics."""
    values = np.random.default_rng(1).normal(3.0, 2.0, 1000)
    fast = SufficientStats.from_values(values)
    slow = SufficientStats.from_values(values.tolist())
    assert fast.n == slow.n == 1000
    assert fast.mean == pytest.approx(slow.mean, rel=1e-12)
    assert fast.m2 == pytest.approx(slow.m2, rel=1e-12)


def test_from_proportion_rejects_more_conversions_than_units() -> None:
    """Conversions above n are refused."""
    with pytest.raises(SpecValidationError, match="cannot exceed n"):
        SufficientStats.from_proportion(11, 10)


# --------------------------------------------------------------------------- numerics


def _large_mean_arms(seed: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Two arms of 2,000 values with a mean of 1e9 and a variance of 1 (treatment +0.2)."""
    rng = np.random.default_rng(seed)
    return 1e9 + rng.normal(0.0, 1.0, 2000), 1e9 + 0.2 + rng.normal(0.0, 1.0, 2000)


def test_a_mean_of_1e9_with_a_variance_of_1_keeps_its_variance() -> None:
    """Values near 1e9 with unit spread: mean, variance and a chunked merge equal numpy's."""
    control, _ = _large_mean_arms()
    direct = SufficientStats.from_values(control)
    assert direct.variance == pytest.approx(np.var(control, ddof=1), rel=1e-9)
    assert direct.mean == pytest.approx(np.mean(control), rel=1e-15)
    chunks = [SufficientStats.from_values(part) for part in np.array_split(control, 7)]
    merged = chunks[0]
    for part in chunks[1:]:
        merged = merged + part
    assert merged.n == 2000
    # float64 holds a mean near 1e9 to ~6e-8, which bounds the merge's precision
    assert merged.variance == pytest.approx(direct.variance, rel=1e-7)
    assert merged.mean == pytest.approx(direct.mean, rel=1e-15)
    listed = SufficientStats.from_values(control.tolist())
    assert listed.variance == pytest.approx(direct.variance, rel=1e-9)


def test_welch_on_a_mean_of_1e9_matches_scipy_on_the_raw_values() -> None:
    """Welch's test on 1e9-mean summaries gives scipy's p-value on the raw values, status ok."""
    control, variation = _large_mean_arms()
    ref = sps.ttest_ind(variation, control, equal_var=False)
    res = welch_ttest(
        SufficientStats.from_values(control),
        SufficientStats.from_values(variation),
        difference="absolute",
    )
    assert res.status == "ok"
    assert ref.pvalue < 0.05
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-6)
    assert res.absolute is not None
    assert res.absolute.estimate == pytest.approx(np.mean(variation) - np.mean(control), abs=1e-6)


def test_moments_are_accepted_directly_and_match_scipy() -> None:
    """`from_moments(n, mean, variance)` with mean 1e9 and variance 1 equals scipy from stats."""
    control = SufficientStats.from_moments(5000, 1e9, 1.0)
    variation = SufficientStats.from_moments(5000, 1e9 + 0.05, 1.0)
    assert (control.variance, control.m2, variation.variance) == (1.0, 4999.0, 1.0)
    ref = sps.ttest_ind_from_stats(1e9 + 0.05, 1.0, 5000, 1e9, 1.0, 5000, equal_var=False)
    res = welch_ttest(control, variation, difference="absolute")
    assert res.status == "ok"
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    merged = control + variation
    delta = (1e9 + 0.05) - 1e9  # the difference of the two float64 means
    assert merged.variance == pytest.approx((2 * 4999.0 + delta**2 * 2500) / 9999, rel=1e-12)


def test_nearly_constant_large_values_are_not_zero_variance() -> None:
    """Latencies in ns (1e9 +- a few): a tiny but real spread is tested, not called zero."""
    rng = np.random.default_rng(3)
    control = 1.7e9 + rng.integers(-3, 4, 500).astype(np.float64)
    variation = 1.7e9 + 2.0 + rng.integers(-3, 4, 500).astype(np.float64)
    res = welch_ttest(
        SufficientStats.from_values(control),
        SufficientStats.from_values(variation),
        difference="absolute",
    )
    ref = sps.ttest_ind(variation, control, equal_var=False)
    assert res.status == "ok"
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)


def test_covariate_moments_survive_large_means() -> None:
    """CUPED on pre/post values near 1e9 gives the covariance numpy computes, merged or not."""
    rng = np.random.default_rng(4)
    pre = 1e9 + rng.normal(0.0, 1.0, 1000)
    post = pre + rng.normal(0.0, 0.5, 1000)
    whole = CovariateStats.from_values(post, pre)
    assert whole.covariance == pytest.approx(np.cov(post, pre)[0, 1], rel=1e-9)
    halves = CovariateStats.from_values(post[:400], pre[:400]) + CovariateStats.from_values(
        post[400:], pre[400:]
    )
    assert halves.covariance == pytest.approx(whole.covariance, rel=1e-7)
    assert CovariateStats.from_moments(whole.post, whole.pre, whole.covariance) == whole


# --------------------------------------------------------------------------- gbstats fixtures


def test_gbstats_two_sided_relative() -> None:
    """Relative lift, delta-method CI and p-value equal gbstats' TwoSidedTTest fixture."""
    rel = welch_ttest(GB_A, GB_B).relative
    assert rel is not None
    assert (r5(rel.estimate), r5(rel.ci_low), r5(rel.ci_high)) == (0.70732, -0.03526, 1.44989)
    assert (r5(rel.std_error), r5(rel.p_value)) == (0.37879, 0.06191)


def test_gbstats_two_sided_absolute() -> None:
    """Absolute lift, CI and p-value equal gbstats' absolute fixture."""
    res = welch_ttest(GB_A, GB_B, difference="absolute")
    lift = res.lift
    assert lift is not None
    assert (r5(lift.estimate), r5(lift.ci_low), r5(lift.ci_high)) == (0.29, 0.04538, 0.53462)
    assert (r5(lift.std_error), r5(lift.p_value)) == (0.12478, 0.02016)
    assert res.p_value == lift.p_value


def test_gbstats_two_sided_binomial() -> None:
    """A proportion metric uses p(1-p) variances and matches gbstats' binomial fixture."""
    rel = welch_ttest(
        SufficientStats.from_proportion(14, 28),
        SufficientStats.from_proportion(16, 30),
        metric_type="proportion",
    ).relative
    assert rel is not None
    assert (r5(rel.estimate), r5(rel.ci_low), r5(rel.ci_high)) == (0.06667, -0.47767, 0.61101)
    assert (r5(rel.std_error), r5(rel.p_value)) == (0.2717, 0.80707)


@pytest.mark.parametrize(
    ("alternative", "difference", "expected"),
    [
        (
            "greater",
            "relative",
            (0.5033610858562358, -0.045136675850396046, math.inf, 0.06558262868467746),
        ),
        (
            "greater",
            "absolute",
            (0.23437666666666668, 0.020791480063255735, math.inf, 0.03554272489873023),
        ),
        (
            "less",
            "relative",
            (0.5033610858562358, -math.inf, 1.0518588475628676, 0.9344173713153225),
        ),
        (
            "less",
            "absolute",
            (0.23437666666666668, -math.inf, 0.44796185327007765, 0.9644572751012698),
        ),
    ],
)
def test_gbstats_one_sided(
    alternative: str, difference: str, expected: tuple[float, float, float, float]
) -> None:
    """One-sided tests equal gbstats' OneSidedTreatment{Greater,Lesser}TTest fixtures."""
    lift = welch_ttest(
        GB_A3000,
        GB_B,
        alternative=alternative,  # type: ignore[arg-type]
        difference=difference,  # type: ignore[arg-type]
    ).lift
    assert lift is not None
    got = (lift.estimate, lift.ci_low, lift.ci_high, lift.p_value)
    assert [r5(x) if math.isfinite(x) else x for x in got] == [
        r5(x) if math.isfinite(x) else x for x in expected
    ]


def test_gbstats_sequential_mean() -> None:
    """The confidence sequence with tuning 1000 equals gbstats' sequential fixture."""
    res = sequential_ttest(GB_A3000, GB_B, tuning=1000)
    rel = res.relative
    assert rel is not None
    assert res.method == "sequential"
    assert (r5(rel.estimate), r5(rel.ci_low), r5(rel.ci_high)) == (0.50336, -0.55844, 1.56516)
    assert (r5(rel.std_error), rel.p_value) == (0.33341, 1.0)


def test_gbstats_sequential_proportion() -> None:
    """A sequential proportion test equals gbstats' fixture (default tuning 5000)."""
    rel = sequential_ttest(
        SufficientStats.from_proportion(1396, 3000),
        SufficientStats.from_proportion(2422, 3461),
        metric_type="proportion",
    ).relative
    assert rel is not None
    assert (r5(rel.estimate), r5(rel.ci_low), r5(rel.ci_high)) == (0.50386, 0.40098, 0.60675)
    assert (r5(rel.std_error), r5(rel.p_value)) == (0.03386, 0.0)


def test_gbstats_sequential_regression_adjusted_with_fixed_theta() -> None:
    """CUPED with theta=0.5 inside a confidence sequence equals gbstats 0.8's fixture."""
    control = CovariateStats.from_sums(
        GB_A3000, SufficientStats.from_sums(3000, 16.87, 527.9767), 12525
    )
    variation = CovariateStats.from_sums(GB_B, SufficientStats.from_sums(3461, 22.7, 1348.29), 3333)
    res = sequential_ttest(control, variation, theta=0.5)
    rel = res.relative
    assert rel is not None
    assert res.theta == 0.5
    assert (r5(rel.estimate), r5(rel.ci_low), r5(rel.ci_high)) == (0.50236, -0.43745, 1.44217)
    assert (r5(rel.std_error), rel.p_value) == (0.3093, 1.0)


def test_gbstats_sequential_regression_adjusted_with_pooled_theta() -> None:
    """CUPED with the pooled theta equals gbstats' current fixture (theta=None)."""
    control = CovariateStats.from_sums(
        GB_A3000, SufficientStats.from_sums(3000, 16.87, 527.9767), 1
    )
    variation = CovariateStats.from_sums(GB_B, SufficientStats.from_sums(3461, 22.7, 1348.29), 1)
    rel = sequential_ttest(control, variation).relative
    assert rel is not None
    assert (r5(rel.estimate), r5(rel.ci_low), r5(rel.ci_high)) == (0.50338, -0.50969, 1.51646)
    assert r5(rel.std_error) == 0.33341


def test_sequential_interval_narrows_most_near_the_tuning_size() -> None:
    """Tuning near the actual sample size gives the tightest sequence (gbstats' tuning test)."""
    widths = {}
    for tuning in (10, 6461, 10000):
        rel = sequential_ttest(GB_A3000, GB_B, tuning=tuning).relative
        assert rel is not None
        widths[tuning] = rel.ci_high - rel.ci_low
    assert widths[6461] < widths[10000] < widths[10]


# --------------------------------------------------------------------------- scipy oracle


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=2, max_value=400),
    st.integers(min_value=2, max_value=400),
)
def test_absolute_lift_matches_scipy_ttest_ind(seed: int, n_c: int, n_v: int) -> None:
    """Statistic, df and p-value equal scipy's ttest_ind(equal_var=False) on raw values."""
    rng = np.random.default_rng(seed)
    c = rng.lognormal(1.0, 0.8, n_c)
    v = rng.lognormal(1.05, 0.9, n_v)
    res = welch_ttest(
        SufficientStats.from_values(c), SufficientStats.from_values(v), difference="absolute"
    )
    ref = sps.ttest_ind(v, c, equal_var=False)
    assert res.absolute is not None
    assert res.df is not None
    assert res.absolute.estimate / res.absolute.std_error == pytest.approx(ref.statistic, rel=1e-9)
    assert res.df == pytest.approx(ref.df, rel=1e-9)
    assert res.absolute.p_value == pytest.approx(ref.pvalue, abs=1e-10)
    ci = ref.confidence_interval(0.95)
    assert res.absolute.ci_low == pytest.approx(ci.low, rel=1e-8, abs=1e-10)
    assert res.absolute.ci_high == pytest.approx(ci.high, rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_one_sided_pvalues_match_scipy(alternative: str) -> None:
    """Each alternative's p-value equals scipy's for the same direction."""
    rng = np.random.default_rng(7)
    c = rng.normal(10.0, 3.0, 250)
    v = rng.normal(10.6, 4.0, 180)
    res = welch_ttest(
        SufficientStats.from_values(c),
        SufficientStats.from_values(v),
        difference="absolute",
        alternative=alternative,  # type: ignore[arg-type]
    )
    ref = sps.ttest_ind(v, c, equal_var=False, alternative=alternative)
    assert res.p_value == pytest.approx(ref.pvalue, abs=1e-12)


def test_vectorised_welch_matches_scipy_to_1e_10() -> None:
    """welch_ttest_from_stats equals ttest_ind_from_stats on 20k comparisons, small df included."""
    rng = np.random.default_rng(11)
    k = 20_000
    args = (
        rng.normal(0.0, 1.0, k),
        rng.uniform(0.2, 3.0, k),
        rng.integers(2, 5_000, k).astype(float),
        rng.normal(0.0, 1.0, k),
        rng.uniform(0.2, 3.0, k),
        rng.integers(2, 5_000, k).astype(float),
    )
    for alternative in ("two-sided", "greater", "less"):
        ours = welch_ttest_from_stats(*args, alternative=alternative)
        ref = sps.ttest_ind_from_stats(*args, equal_var=False, alternative=alternative)
        assert bool(ours.valid.all())
        assert float(np.max(np.abs(ours.pvalue - ref.pvalue))) < 1e-10
        np.testing.assert_allclose(ours.statistic, ref.statistic, rtol=1e-12)
        assert bool((ours.df < 50).any())


def test_vectorised_welch_masks_undefined_comparisons() -> None:
    """Comparisons with n < 2 or zero variance are flagged invalid and NaN, the rest computed."""
    res = welch_ttest_from_stats(
        [1.0, 1.0, 2.0],
        [1.0, 0.0, 1.0],
        [1, 10, 30],
        [0.5, 1.0, 1.0],
        [1.0, 0.0, 1.5],
        [10, 10, 40],
    )
    assert res.valid.tolist() == [False, False, True]
    assert np.isnan(res.pvalue[:2]).all()
    ref = sps.ttest_ind_from_stats(2.0, 1.0, 30, 1.0, 1.5, 40, equal_var=False)
    assert res.pvalue[2] == pytest.approx(ref.pvalue, abs=1e-12)


# --------------------------------------------------------------------------- CUPED


def test_cuped_equals_welch_on_adjusted_raw_values() -> None:
    """CUPED from summaries equals scipy's Welch test on y - theta*x with the pooled theta."""
    rng = np.random.default_rng(3)
    x_c = rng.gamma(2.0, 5.0, 800)
    x_v = rng.gamma(2.0, 5.0, 760)
    y_c = 0.8 * x_c + rng.normal(0.0, 3.0, 800)
    y_v = 0.8 * x_v + 0.6 + rng.normal(0.0, 3.0, 760)
    c = CovariateStats.from_values(y_c, x_c)
    v = CovariateStats.from_values(y_v, x_v)
    x_all = np.concatenate([x_c, x_v])
    y_all = np.concatenate([y_c, y_v])
    theta = np.cov(y_all, x_all, ddof=1)[0, 1] / np.var(x_all, ddof=1)
    assert cuped_theta(c, v) == pytest.approx(theta, rel=1e-10)
    res = welch_ttest(c, v, difference="absolute")
    ref = sps.ttest_ind(y_v - theta * x_v, y_c - theta * x_c, equal_var=False)
    assert res.absolute is not None
    assert res.absolute.estimate == pytest.approx(
        np.mean(y_v) - np.mean(y_c) - theta * (np.mean(x_v) - np.mean(x_c)), rel=1e-10
    )
    assert res.absolute.p_value == pytest.approx(ref.pvalue, abs=1e-12)
    plain = welch_ttest(c.post, v.post, difference="absolute")
    assert plain.absolute is not None
    # The covariate explains most of the variance: the CUPED interval is much narrower.
    assert res.absolute.std_error < 0.5 * plain.absolute.std_error


def test_cuped_theta_is_zero_without_covariate_variance() -> None:
    """A constant covariate gives theta 0, i.e. the plain Welch test."""
    c = CovariateStats.from_values([1.0, 2.0, 4.0], [5.0, 5.0, 5.0])
    v = CovariateStats.from_values([2.0, 3.0, 7.0], [5.0, 5.0, 5.0])
    assert cuped_theta(c, v) == 0.0
    assert welch_ttest(c, v).relative == welch_ttest(c.post, v.post).relative


def test_mixing_plain_and_covariate_stats_is_refused() -> None:
    """CUPED needs the covariate in every arm."""
    c = CovariateStats.from_values([1.0, 2.0], [1.0, 3.0])
    with pytest.raises(SpecValidationError, match="both have a covariate"):
        welch_ttest(c, SufficientStats.from_values([1.0, 2.0]))


def test_covariate_stats_need_the_same_units() -> None:
    """pre and post summaries must count the same units."""
    with pytest.raises(SpecValidationError, match="same units") as info:
        CovariateStats(
            SufficientStats.from_values([1.0, 2.0]),
            SufficientStats.from_values([1.0]),
            comoment=2.0,
        )
    assert info.value.details["field"] == "pre"


# --------------------------------------------------------------------------- edge cases


def test_empty_variation_says_why() -> None:
    """An empty variation yields no estimates and a reason, not a crash or NaN."""
    res = welch_ttest(
        SufficientStats.from_values([1.0, 2.0, 3.0]), SufficientStats.empty(), variation_name="B"
    )
    assert (res.status, res.absolute, res.relative, res.p_value) == (
        "empty_variation",
        None,
        None,
        None,
    )
    assert res.reason == "'B' has no units yet; wait for exposures before analysing."
    assert res.variation_mean is None
    assert res.significant is False


def test_single_unit_is_insufficient_data() -> None:
    """n < 2 cannot estimate a variance and says so."""
    res = welch_ttest(SufficientStats.from_values([1.0]), SufficientStats.from_values([2.0, 3.0]))
    assert res.status == "insufficient_data"
    assert (
        res.reason
        == "'control' has n=1: at least 2 units per variation are needed to estimate a variance."
    )


def test_zero_variance_in_both_arms_says_why() -> None:
    """No conversions anywhere is zero variance, reported as such."""
    zero = SufficientStats.from_proportion(0, 100)
    res = welch_ttest(zero, zero, metric_type="proportion")
    assert res.status == "zero_variance"
    assert res.absolute is None
    assert res.reason is not None
    assert res.reason.startswith("both variations have zero variance")


def test_zero_variance_in_one_arm_still_tests() -> None:
    """One constant arm is a valid Welch test (as in scipy)."""
    c = [5.0] * 20
    v = [4.0, 6.0, 7.0, 5.5, 6.5] * 4
    res = welch_ttest(
        SufficientStats.from_values(c), SufficientStats.from_values(v), difference="absolute"
    )
    ref = sps.ttest_ind_from_stats(np.mean(v), np.std(v, ddof=1), 20, 5.0, 0.0, 20, equal_var=False)
    assert res.status == "ok"
    assert res.p_value == pytest.approx(ref.pvalue, abs=1e-12)


def test_zero_control_mean_keeps_the_absolute_lift() -> None:
    """A control mean of 0 makes only the relative lift undefined."""
    c = SufficientStats.from_values([-1.0, 1.0, 0.0, 0.0])
    v = SufficientStats.from_values([1.0, 2.0, 0.0, 1.0])
    res = welch_ttest(c, v)
    assert res.status == "zero_baseline"
    assert res.relative is None
    assert res.absolute is not None
    assert res.absolute.estimate == 1.0
    assert res.p_value is None


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 50),
    st.floats(-100, 100),
    st.floats(0, 1e4),
    st.integers(0, 50),
    st.floats(-100, 100),
    st.floats(0, 1e4),
)
def test_results_never_hold_nan(
    n1: int, mean1: float, var1: float, n2: int, mean2: float, var2: float
) -> None:
    """Whatever valid summaries come in, every number out is finite or the status says why."""

    def stats(n: int, mean: float, var: float) -> SufficientStats:
        if n == 0:
            return SufficientStats.empty()
        return SufficientStats.from_moments(n, mean, var if n > 1 else 0.0)

    for res in (
        welch_ttest(stats(n1, mean1, var1), stats(n2, mean2, var2)),
        sequential_ttest(stats(n1, mean1, var1), stats(n2, mean2, var2)),
    ):
        for lift in (res.absolute, res.relative):
            if lift is not None:
                values = (lift.estimate, lift.std_error, lift.ci_low, lift.ci_high, lift.p_value)
                assert not any(math.isnan(x) for x in values)
                assert 0.0 <= lift.p_value <= 1.0
        assert (res.status == "ok") == (res.reason is None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"difference": "ratio"}, "difference"),
        ({"alternative": "bigger"}, "alternative"),
        ({"metric_type": "binomial"}, "metric_type"),
    ],
)
def test_bad_options_raise_naming_the_option(kwargs: dict[str, object], field: str) -> None:
    """Out-of-range options raise SpecValidationError naming the option."""
    with pytest.raises(SpecValidationError) as info:
        welch_ttest(GB_A, GB_B, **kwargs)  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_proportion_metric_rejects_non_binary_stats() -> None:
    """metric_type='proportion' needs 0/1 summaries."""
    with pytest.raises(SpecValidationError, match="not a proportion"):
        welch_ttest(GB_A, GB_B, metric_type="proportion")


def test_sequential_refuses_one_sided_and_bad_tuning() -> None:
    """The sequential test is two-sided and needs a positive planned sample size."""
    with pytest.raises(SpecValidationError) as info:
        sequential_ttest(GB_A, GB_B, tuning=0)
    assert info.value.details["field"] == "tuning"


def test_sequential_controls_error_under_continuous_peeking() -> None:
    """Peeking 20 times at A/A tests: Welch over-rejects, the confidence sequence does not."""
    rng = np.random.default_rng(2024)
    experiments, peeks, per_peek = 300, 20, 50
    welch_hits = seq_hits = 0
    for _ in range(experiments):
        c = rng.normal(0.0, 1.0, peeks * per_peek)
        v = rng.normal(0.0, 1.0, peeks * per_peek)
        welch_any = seq_any = False
        for k in range(1, peeks + 1):
            sc = SufficientStats.from_values(c[: k * per_peek])
            sv = SufficientStats.from_values(v[: k * per_peek])
            welch_any |= welch_ttest(sc, sv, difference="absolute").significant
            seq_any |= sequential_ttest(sc, sv, difference="absolute", tuning=2000).significant
        welch_hits += welch_any
        seq_hits += seq_any
    assert welch_hits / experiments > 0.15
    assert seq_hits / experiments <= 0.05


# --------------------------------------------------------------------------- SRM


def test_srm_matches_scipy_chisquare() -> None:
    """The χ² statistic and p-value equal scipy.stats.chisquare with the expected split."""
    res = srm_check({"A": 5050, "B": 4800, "C": 2150}, {"A": 0.4, "B": 0.4, "C": 0.2})
    ref = sps.chisquare([5050, 4800, 2150], [4800.0, 4800.0, 2400.0])
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert res.df == 2
    assert res.mismatch is True
    assert res.expected == {"A": 4800.0, "B": 4800.0, "C": 2400.0}


def test_srm_balanced_split_is_not_a_mismatch() -> None:
    """A split within chance of 50/50 passes at the default 0.001 threshold."""
    res = srm_check({"control": 10_040, "treatment": 9_960})
    assert res.mismatch is False
    assert res.threshold == 0.001
    assert res.weights == {"control": 0.5, "treatment": 0.5}
    assert res.p_value == pytest.approx(sps.chisquare([10_040, 9_960]).pvalue, rel=1e-9)


def test_srm_without_exposures_says_why() -> None:
    """No exposures is no test, with a reason."""
    res = srm_check({"A": 0, "B": 0})
    assert (res.p_value, res.mismatch, res.reason) == (None, False, "no exposures yet")


def test_srm_units_in_a_zero_weight_variation_are_a_mismatch() -> None:
    """Traffic in a variation that should get none is flagged."""
    res = srm_check({"A": 100, "B": 3}, {"A": 1.0, "B": 0.0})
    assert (res.mismatch, res.p_value) == (True, 0.0)
    assert res.reason == "units were exposed to ['B'] although their weight is 0"


@pytest.mark.parametrize(
    ("observed", "weights", "field"),
    [
        ({"A": -1, "B": 2}, None, "n"),
        ({"A": 1, "B": 2}, {"A": 1.0}, "weights"),
        ({"A": 1, "B": 2}, {"A": -1.0, "B": 1.0}, "weights"),
        ({"A": 1, "B": 2}, {"A": 0.0, "B": 0.0}, "weights"),
        ({}, None, "observed"),
    ],
)
def test_srm_bad_input_raises(
    observed: dict[str, int], weights: dict[str, float] | None, field: str
) -> None:
    """Bad counts or weights raise SpecValidationError naming the field."""
    with pytest.raises(SpecValidationError) as info:
        srm_check(observed, weights)
    assert info.value.details["field"] == field


# --------------------------------------------------------------------------- corrections


@settings(max_examples=15, deadline=None)  # statsmodels' holm costs ~50 ms per call
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40))
def test_holm_and_bh_match_statsmodels(pvalues: list[float]) -> None:
    """Adjusted p-values equal statsmodels' multipletests holm / fdr_bh."""
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
        expected = multipletests(pvalues, alpha=0.05, method=theirs)[1]
        np.testing.assert_allclose(adjust_pvalues(pvalues, ours), expected, rtol=1e-12, atol=1e-15)  # type: ignore[arg-type]


def test_adjust_pvalues_known_values() -> None:
    """Holm multiplies the k-th smallest by m-k+1 and keeps monotonicity; BH by m/k."""
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_pvalues(p, "holm").tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_pvalues(p, "bh").tolist() == pytest.approx([0.02, 0.04, 0.04, 0.02])


@pytest.mark.parametrize(
    ("pvalues", "method"), [([0.1, 1.2], "holm"), ([math.nan], "bh"), ([0.1], "bonferroni")]
)
def test_adjust_pvalues_bad_input(pvalues: list[float], method: str) -> None:
    """p-values outside [0, 1], NaN or an unknown method raise SpecValidationError."""
    with pytest.raises(SpecValidationError):
        adjust_pvalues(pvalues, method)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- analyze_experiment


def _two_metric_data() -> dict[str, dict[str, SufficientStats]]:
    rng = np.random.default_rng(5)
    revenue = {
        "control": SufficientStats.from_values(rng.gamma(2.0, 10.0, 2000)),
        "B": SufficientStats.from_values(rng.gamma(2.0, 11.0, 2010)),
        "C": SufficientStats.from_values(rng.gamma(2.0, 9.6, 1990)),
    }
    conversion = {
        "control": SufficientStats.from_proportion(200, 2000),
        "B": SufficientStats.from_proportion(260, 2010),
        "C": SufficientStats.from_proportion(199, 1990),
    }
    return {"revenue": revenue, "conversion": conversion}


def test_analyze_experiment_compares_every_variation_with_the_declared_control() -> None:
    """Each metric x variation is compared with the declared control, with Holm across all."""
    data = _two_metric_data()
    res = analyze_experiment(
        data, control="control", experiment="checkout", metric_types={"conversion": "proportion"}
    )
    assert res.variations == ("control", "B", "C")
    assert [(c.metric, c.variation) for c in res.comparisons] == [
        ("revenue", "B"),
        ("revenue", "C"),
        ("conversion", "B"),
        ("conversion", "C"),
    ]
    raw = [c.p_value for c in res.comparisons]
    expected = multipletests(raw, method="holm")[1]
    assert [c.adjusted_p_value for c in res.comparisons] == pytest.approx(list(expected), rel=1e-12)
    single = welch_ttest(
        data["conversion"]["control"], data["conversion"]["B"], metric_type="proportion"
    )
    assert res.comparison("conversion", "B").relative == single.relative
    assert res.srm is not None
    assert res.srm.observed == {"control": 2000, "B": 2010, "C": 1990}
    assert res.srm.mismatch is False


def test_the_control_is_never_the_best_variation() -> None:
    """Declaring B as control compares A and C with B, even if C looks best."""
    data = _two_metric_data()
    res = analyze_experiment(data, control="B", correction=None)
    assert res.control == "B"
    assert {c.variation for c in res.comparisons} == {"control", "C"}
    assert all(c.control == "B" for c in res.comparisons)
    assert all(c.adjusted_p_value is None for c in res.comparisons)


def test_missing_variation_in_one_metric_is_an_empty_comparison() -> None:
    """A variation absent from a metric is reported as empty, not dropped."""
    data = _two_metric_data()
    del data["revenue"]["C"]
    res = analyze_experiment(data, control="control")
    comp = res.comparison("revenue", "C")
    assert comp.status == "empty_variation"
    assert comp.adjusted_p_value is None


def test_unknown_control_raises() -> None:
    """A control absent from the data raises SpecValidationError naming the field."""
    with pytest.raises(SpecValidationError, match="declared control 'A'") as info:
        analyze_experiment(_two_metric_data(), control="A")
    assert info.value.details["field"] == "control"


def test_analyze_sequential_and_bh() -> None:
    """Sequential mode and BH correction propagate to every comparison."""
    res = analyze_experiment(
        _two_metric_data(), control="control", sequential=True, correction="bh"
    )
    assert {c.method for c in res.comparisons} == {"sequential"}
    assert {c.correction for c in res.comparisons} == {"bh"}


def test_variation_constant_at_zero_has_no_relative_variance() -> None:
    """A variation of all zeros against a varying control keeps only the absolute lift."""
    res = welch_ttest(
        SufficientStats.from_values([1.0, 2.0, 3.0]), SufficientStats.from_values([0.0, 0.0])
    )
    assert res.status == "zero_variance"
    assert res.relative is None
    assert res.absolute is not None
    assert res.absolute.estimate == -2.0
