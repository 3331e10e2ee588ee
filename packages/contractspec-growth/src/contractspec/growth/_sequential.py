"""Asymptotic confidence sequences (Waudby-Smith, Arnold, Wu, Howard and Ramdas).

Source: "Time-uniform central limit theory and asymptotic confidence sequences", arXiv:2103.06476
(v7), the Gaussian-mixture boundary of eq. (9) with the mixing parameter `rho` chosen to make the
sequence tightest at a planned sample size `N*` (the "tuning parameter", their §B.2):

    rho² = (-2 ln alpha + ln(-2 ln alpha + 1)) / N*

For an estimator whose variance is `V` after `N` units (so the per-unit variance is `sigma² = V N`),
the two-sided `1 - alpha` confidence sequence is

    estimate ± sigma · sqrt( 2 (N rho² + 1) / (N² rho²) · ln( sqrt(N rho² + 1) / alpha ) )

and the anytime-valid p-value of `H0: effect = 0` is the smallest `alpha` whose sequence excludes 0:

    p = min(1, sqrt(N rho² + 1) · exp( -rho² N estimate² / (2 V (N rho² + 1)) ))

These are the formulas GrowthBook's sequential engine uses, so results agree with it.
"""

from __future__ import annotations

import math

__all__ = ["half_width", "p_value", "rho_squared"]


def rho_squared(alpha: float, tuning: float) -> float:
    """Mixing parameter `rho²` that makes the sequence tightest after `tuning` units."""
    minus_two_log_alpha = -2.0 * math.log(alpha)
    return (minus_two_log_alpha + math.log(minus_two_log_alpha + 1.0)) / tuning


def half_width(variance: float, n_total: int, alpha: float, tuning: float) -> float:
    """Half-width of the `1 - alpha` confidence sequence.

    Args:
        variance: Variance of the estimator after `n_total` units.
        n_total: Units in both arms together.
        alpha: Error rate, uniformly over time.
        tuning: Planned total sample size `N*` the sequence is optimised for.
    """
    r2 = rho_squared(alpha, tuning)
    a = n_total * r2 + 1.0
    sigma = math.sqrt(variance * n_total)
    return sigma * math.sqrt(2.0 * a * math.log(math.sqrt(a) / alpha) / (n_total * n_total * r2))


def p_value(estimate: float, variance: float, n_total: int, alpha: float, tuning: float) -> float:
    """Anytime-valid p-value of `H0: effect = 0` (inverting the confidence sequence)."""
    r2 = rho_squared(alpha, tuning)
    a = n_total * r2 + 1.0
    log_p = 0.5 * math.log(a) - r2 * n_total * estimate * estimate / (2.0 * variance * a)
    return min(1.0, math.exp(log_p))
