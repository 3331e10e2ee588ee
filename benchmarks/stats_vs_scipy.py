"""Welch's t-test from summary statistics: contractspec-growth vs scipy, side by side.

The same comparisons (means, sample standard deviations and sizes of two arms, shaped like real
experiments: 20 to 200,000 units per arm, so some Welch degrees of freedom fall below 50 and take
the exact `stdtr` path) are tested by:

* `scipy.stats.ttest_ind_from_stats(..., equal_var=False)`, one vectorised call;
* our `welch_ttest_from_stats`, one vectorised call (Hill's Algorithm 395 for the t tail where
  df >= 50, scipy's `stdtr` below);
* per comparison: scipy's function on scalars vs our `welch_ttest` on `SufficientStats` (which
  also computes the relative lift with its delta-method CI).

Every p-value is compared (max absolute difference must be <= 1e-10). Times are medians of
repeated runs.

Run: `uv run --group bench python benchmarks/stats_vs_scipy.py [--comparisons N]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import numpy as np
from scipy import stats

from contractspec.growth import SufficientStats, welch_ttest, welch_ttest_from_stats


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time (seconds) of `repeats` runs, and the last result."""
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--comparisons", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--scalar", type=int, default=5_000, help="comparisons timed one by one")
    args = parser.parse_args()

    rng = np.random.default_rng(20240601)
    k = args.comparisons
    n1 = np.round(10 ** rng.uniform(np.log10(20), np.log10(200_000), k))
    n2 = np.round(n1 * rng.uniform(0.9, 1.1, k))
    mean1 = rng.gamma(2.0, 10.0, k)
    mean2 = mean1 * (1 + rng.normal(0.0, 0.05, k))
    std1 = mean1 * rng.uniform(0.5, 3.0, k)
    std2 = std1 * rng.uniform(0.8, 1.25, k)
    args6 = (mean2, std2, n2, mean1, std1, n1)

    t_scipy, ref = timed(lambda: stats.ttest_ind_from_stats(*args6, equal_var=False), args.repeats)
    t_ours, ours = timed(lambda: welch_ttest_from_stats(*args6), args.repeats)
    diff = float(np.max(np.abs(ours.pvalue - ref.pvalue)))
    stat_diff = float(np.max(np.abs(ours.statistic - ref.statistic)))
    assert bool(ours.valid.all())
    assert diff <= 1e-10, f"p-values differ by {diff}"

    m = min(args.scalar, k)
    sc = [
        (
            SufficientStats.from_moments(int(n1[i]), float(mean1[i]), float(std1[i]) ** 2),
            SufficientStats.from_moments(int(n2[i]), float(mean2[i]), float(std2[i]) ** 2),
        )
        for i in range(m)
    ]
    scalars = [tuple(float(a[i]) for a in args6) for i in range(m)]

    def scipy_loop() -> list[float]:
        return [float(stats.ttest_ind_from_stats(*s, equal_var=False).pvalue) for s in scalars]

    def ours_loop() -> list[float | None]:
        return [welch_ttest(c, v, difference="absolute").p_value for c, v in sc]

    reps = max(3, args.repeats // 3)
    t_scipy_1, ref_1 = timed(scipy_loop, reps)
    t_ours_1, ours_1 = timed(ours_loop, reps)
    diff_1 = max(abs((o or 0.0) - r) for o, r in zip(ours_1, ref_1, strict=True))
    assert diff_1 <= 1e-10, f"scalar p-values differ by {diff_1}"

    small_df = int(np.sum(ours.df < 50))
    print(f"Welch t-test from summary statistics, {k:,} comparisons ({small_df:,} with df < 50)")
    print(f"scipy {version('scipy')}, numpy {np.__version__}")
    print()
    print(f"{'':34}{'scipy':>14}{'contractspec':>16}{'ratio':>9}")
    print(
        f"{'vectorised, one call (ms)':34}{t_scipy * 1e3:14.2f}{t_ours * 1e3:16.2f}"
        f"{t_scipy / t_ours:8.2f}x"
    )
    print(f"{'  comparisons / s':34}{k / t_scipy:14,.0f}{k / t_ours:16,.0f}")
    print(
        f"{'per comparison, scalar (us)':34}{t_scipy_1 / m * 1e6:14.2f}{t_ours_1 / m * 1e6:16.2f}"
        f"{t_scipy_1 / t_ours_1:8.2f}x"
    )
    print()
    print(f"max |p_ours - p_scipy|: vectorised {diff:.2e}, scalar {diff_1:.2e} (<= 1e-10 required)")
    print(f"max |t_ours - t_scipy|: {stat_diff:.2e}")
    print("(the scalar path also computes the relative lift and its delta-method CI)")


if __name__ == "__main__":
    main()
