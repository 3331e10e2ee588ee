"""The fast Student-t tail (Hill's Algorithm 395) agrees with scipy's exact stdtr."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from contractspec.growth._tdist import HILL_MIN_DF, t_isf, t_sf, t_sf_scalar


@pytest.mark.parametrize("df", [HILL_MIN_DF, 63.5, 100.0, 1_000.0, 52_341.7, 5e6])
def test_hill_transform_is_exact_to_1e_13(df: float) -> None:
    """Over t in [-40, 40] the absolute error against stdtr stays below 1e-13."""
    t = np.linspace(-40.0, 40.0, 80_001)
    err = np.abs(t_sf(t, np.full_like(t, df)) - special.stdtr(df, -t))
    assert float(err.max()) < 1e-13


def test_small_df_falls_back_to_stdtr_exactly() -> None:
    """Below HILL_MIN_DF the result is stdtr's, bit for bit."""
    t = np.linspace(-8.0, 8.0, 1001)
    df = np.linspace(1.0, 49.9, 1001)
    assert np.array_equal(t_sf(t, df), special.stdtr(df, -t))


@pytest.mark.parametrize(
    ("t", "df"), [(0.0, 80.0), (1.96, 500.0), (-2.5, 5000.0), (3.1, 12.0), (40.0, 60.0)]
)
def test_scalar_path_equals_vector_path(t: float, df: float) -> None:
    """The scalar helper computes the same tail as the vectorised one."""
    assert t_sf_scalar(t, df) == pytest.approx(
        float(t_sf(np.array([t]), np.array([df]))[0]), abs=1e-15
    )


def test_critical_value_inverts_the_tail() -> None:
    """t_isf(0.025, df) is the 97.5 % quantile."""
    assert t_isf(0.025, 30.0) == pytest.approx(2.0422724563012373, rel=1e-12)


def test_huge_t_statistics_give_tail_probabilities_not_nan() -> None:
    """A vanishing standard error (variance 2e-311) makes t ~ 1e156: t*t overflows, so the tail
    probability comes from `stdtr`, never NaN (found by Hypothesis in test_results_never_hold_nan)."""
    from contractspec.growth.stats import SufficientStats, welch_ttest

    assert (t_sf_scalar(7.6e155, 50.0), t_sf_scalar(-7.6e155, 50.0)) == (0.0, 1.0)
    assert t_sf(np.array([7.6e155, -1e200]), np.array([60.0, 60.0])).tolist() == [0.0, 1.0]
    tiny = 2.225073858507e-311
    result = welch_ttest(
        SufficientStats.from_moments(26, 0.0, tiny), SufficientStats.from_moments(26, 1.0, tiny)
    )
    assert result.absolute is not None
    assert result.absolute.p_value == 0.0
