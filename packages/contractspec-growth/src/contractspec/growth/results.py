"""Result objects of the stats engine, built for notebooks.

[`Comparison`][contractspec.growth.results.Comparison] is one metric of one variation against the
declared control; [`ExperimentResult`][contractspec.growth.results.ExperimentResult] gathers every
comparison of an experiment with its sample-ratio-mismatch check. Both render as a rich HTML table
in Jupyter (`_repr_html_`), convert to a pandas `DataFrame` with `to_frame()` (extra
`contractspec-growth[pandas]`) and `ExperimentResult.plot()` draws lift with its confidence interval
per variation and metric (extra `contractspec-growth[plot]`): a matplotlib `Figure` that Jupyter
displays as an image.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from contractspec.core.errors import NotFoundError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    from matplotlib.figure import Figure

    from contractspec.growth.stats import CovariateStats, SufficientStats

__all__ = [
    "Alternative",
    "Comparison",
    "ComparisonStatus",
    "DifferenceType",
    "ExperimentResult",
    "Lift",
    "MetricType",
    "SrmResult",
]

#: Which lift a comparison leads with: `relative` ((variation - control) / control, a fraction:
#: 0.05 means +5 %) or `absolute` (variation - control, in the metric's unit).
DifferenceType = Literal["relative", "absolute"]
#: The alternative hypothesis, as in scipy: `two-sided`, `greater` (variation > control) or `less`.
Alternative = Literal["two-sided", "greater", "less"]
#: `mean` (any numeric metric, sample variance) or `proportion` (0/1 conversions, variance p(1-p)).
MetricType = Literal["mean", "proportion"]
#: Why a comparison has (or has no) estimates. Anything but `ok` comes with a `reason` sentence.
ComparisonStatus = Literal[
    "ok", "empty_variation", "insufficient_data", "zero_variance", "zero_baseline"
]


def _require_pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            "to_frame() needs pandas: pip install 'contractspec-growth[pandas]'"
        ) from exc
    return pd


def _require_matplotlib_figure() -> Any:
    try:
        import matplotlib.figure  # noqa: F401 - checked first: _figure may be imported already

        from contractspec.growth._figure import NotebookFigure
    except ImportError as exc:
        raise ImportError(
            "plot() needs matplotlib: pip install 'contractspec-growth[plot]'"
        ) from exc
    return NotebookFigure


@attrs.frozen
class Lift:
    """A lift estimate with its uncertainty.

    Attributes:
        estimate: Point estimate: `variation - control` for an absolute lift, `(variation -
            control) / control` for a relative one (a fraction: 0.05 is +5 %).
        std_error: Standard error of `estimate` (delta method for relative lifts).
        ci_low: Lower confidence bound at `1 - alpha` (`-inf` for `alternative="less"`).
        ci_high: Upper confidence bound (`inf` for `alternative="greater"`).
        p_value: p-value of `H0: lift == 0` against the comparison's alternative.
    """

    estimate: float
    std_error: float
    ci_low: float
    ci_high: float
    p_value: float


@attrs.frozen
class Comparison:
    """One metric of one variation compared with the declared control.

    Estimates are `None` exactly when `status` says why (`empty_variation`, `insufficient_data`,
    `zero_variance`); with `zero_baseline` (control mean 0) only the relative lift is missing.

    Attributes:
        metric: Metric name.
        control: Name of the control variation (always the declared one).
        variation: Name of the treatment variation.
        control_stats: Sufficient statistics of the control (with covariate for CUPED).
        variation_stats: Sufficient statistics of the variation.
        metric_type: `mean` or `proportion`.
        method: `welch` (fixed-horizon Welch t-test) or `sequential` (Waudby-Smith asymptotic
            confidence sequence, valid at any peek).
        difference: The lift `p_value`, `lift` and `significant` refer to.
        alternative: The alternative hypothesis.
        alpha: Significance level; confidence intervals are at `1 - alpha`.
        status: `ok` or the edge case met; see `reason`.
        reason: A sentence saying why estimates are missing, or `None` when `status == "ok"`.
        control_mean: Unadjusted control mean (`None` if the control is empty).
        variation_mean: Unadjusted variation mean (`None` if the variation is empty).
        df: Welch-Satterthwaite degrees of freedom (`None` without estimates).
        theta: CUPED coefficient used (`None` without a pre-period covariate).
        absolute: Absolute lift, or `None`.
        relative: Relative lift, or `None`.
        adjusted_p_value: p-value after a multiple-comparison correction, if one was applied.
        correction: Name of that correction (`holm`, `bh`), or `None`.
    """

    metric: str
    control: str
    variation: str
    control_stats: SufficientStats | CovariateStats
    variation_stats: SufficientStats | CovariateStats
    metric_type: MetricType
    method: Literal["welch", "sequential"]
    difference: DifferenceType
    alternative: Alternative
    alpha: float
    status: ComparisonStatus
    reason: str | None
    control_mean: float | None
    variation_mean: float | None
    df: float | None
    theta: float | None
    absolute: Lift | None
    relative: Lift | None
    adjusted_p_value: float | None = None
    correction: str | None = None

    @property
    def lift(self) -> Lift | None:
        """The lift named by `difference` (`None` when it could not be estimated)."""
        return self.relative if self.difference == "relative" else self.absolute

    @property
    def p_value(self) -> float | None:
        """p-value of the primary lift, before any correction (`None` without estimates)."""
        lift = self.lift
        return None if lift is None else lift.p_value

    @property
    def significant(self) -> bool:
        """Whether the primary lift is significant at `alpha` (corrected p-value if present)."""
        p = self.adjusted_p_value if self.adjusted_p_value is not None else self.p_value
        return p is not None and p < self.alpha

    def to_record(self) -> dict[str, Any]:
        """Flatten into one JSON-friendly row (the row of `ExperimentResult.to_frame()`)."""
        abs_ = self.absolute
        rel = self.relative
        return {
            "metric": self.metric,
            "variation": self.variation,
            "control": self.control,
            "status": self.status,
            "reason": self.reason,
            "method": self.method,
            "n_control": self.control_stats.n,
            "n_variation": self.variation_stats.n,
            "control_mean": self.control_mean,
            "variation_mean": self.variation_mean,
            "abs_lift": None if abs_ is None else abs_.estimate,
            "abs_ci_low": None if abs_ is None else abs_.ci_low,
            "abs_ci_high": None if abs_ is None else abs_.ci_high,
            "abs_p_value": None if abs_ is None else abs_.p_value,
            "rel_lift": None if rel is None else rel.estimate,
            "rel_ci_low": None if rel is None else rel.ci_low,
            "rel_ci_high": None if rel is None else rel.ci_high,
            "rel_p_value": None if rel is None else rel.p_value,
            "p_value": self.p_value,
            "adjusted_p_value": self.adjusted_p_value,
            "significant": self.significant,
            "df": self.df,
            "theta": self.theta,
        }

    def _repr_html_(self) -> str:
        return _html_table([self], None, title=f"{self.metric}: {self.variation} vs {self.control}")


@attrs.frozen
class SrmResult:
    """Sample-ratio-mismatch check: a χ² goodness-of-fit test of exposure counts.

    Attributes:
        observed: Units exposed per variation.
        expected: Expected units per variation (`total * weight`).
        weights: The normalised traffic weights the test assumed.
        statistic: Pearson's χ² statistic (`None` when there is nothing to test).
        df: Degrees of freedom (variations with positive weight - 1).
        p_value: `P(χ²_df >= statistic)`, or `None`.
        threshold: p-values below it flag a mismatch (GrowthBook's default 0.001).
        mismatch: Whether assignment looks broken: do not trust the experiment's lifts.
        reason: Why the check could not run (no exposures), or `None`.
    """

    observed: dict[str, int]
    expected: dict[str, float]
    weights: dict[str, float]
    statistic: float | None
    df: int
    p_value: float | None
    threshold: float
    mismatch: bool
    reason: str | None = None

    def _repr_html_(self) -> str:
        return _srm_banner(self)


@attrs.frozen
class ExperimentResult:
    """Every comparison of an experiment against its declared control.

    Attributes:
        experiment: Experiment key.
        control: The declared control variation.
        variations: All variation names, control first.
        metrics: Metric names in analysis order.
        comparisons: One `Comparison` per metric and non-control variation, metric-major.
        srm: The sample-ratio-mismatch check, or `None` when no weights were given.
        correction: Multiple-comparison correction applied across all comparisons, or `None`.
        alpha: Significance level.
    """

    experiment: str
    control: str
    variations: tuple[str, ...]
    metrics: tuple[str, ...]
    comparisons: tuple[Comparison, ...]
    srm: SrmResult | None
    correction: str | None
    alpha: float

    def comparison(self, metric: str, variation: str) -> Comparison:
        """Return the comparison of `variation` against the control on `metric`.

        Raises:
            NotFoundError: No such metric or variation in this result.
        """
        for c in self.comparisons:
            if c.metric == metric and c.variation == variation:
                return c
        raise NotFoundError(
            f"no comparison for metric {metric!r} and variation {variation!r}; "
            f"metrics are {list(self.metrics)}, variations {list(self.variations[1:])}.",
            details={"metric": metric, "variation": variation},
        )

    def to_records(self) -> list[dict[str, Any]]:
        """Return one flat dict per comparison (see `Comparison.to_record`)."""
        return [c.to_record() for c in self.comparisons]

    def to_frame(self) -> pd.DataFrame:
        """Return the comparisons as a pandas `DataFrame`, one row per metric and variation.

        Missing estimates are `NaN` in float columns, and `status`/`reason` say why.

        Raises:
            ImportError: pandas is not installed (`pip install 'contractspec-growth[pandas]'`).
        """
        pd = _require_pandas()
        frame = pd.DataFrame.from_records(self.to_records())
        float_cols = [
            "control_mean",
            "variation_mean",
            "abs_lift",
            "abs_ci_low",
            "abs_ci_high",
            "abs_p_value",
            "rel_lift",
            "rel_ci_low",
            "rel_ci_high",
            "rel_p_value",
            "p_value",
            "adjusted_p_value",
            "df",
            "theta",
        ]
        frame[float_cols] = frame[float_cols].astype("float64")
        return frame

    def plot(
        self,
        *,
        difference: Literal["relative", "absolute"] | None = None,
        metrics: Sequence[str] | None = None,
    ) -> Figure:
        """Draw each variation's lift with its confidence interval, one panel per metric.

        A forest plot: a dot at the estimate, a bar over the CI, a dashed line at 0; significant
        lifts are coloured (green up, red down). Comparisons without estimates are listed with
        their status instead of a bar.

        Args:
            difference: `relative` (percent) or `absolute`; defaults to each comparison's own.
            metrics: Subset and order of metrics to draw; all by default.

        Returns:
            A `matplotlib.figure.Figure`, not attached to pyplot (nothing global changes). As the
            last expression of a Jupyter cell it is displayed as a PNG image, in a fresh kernel
            too (no `%matplotlib inline` needed); `fig.savefig("lift.png")` writes it to a file.

        Raises:
            ImportError: matplotlib is not installed (`pip install 'contractspec-growth[plot]'`).
            NotFoundError: A name in `metrics` is not a metric of this result.
        """
        figure_cls = _require_matplotlib_figure()
        chosen = list(metrics) if metrics is not None else list(self.metrics)
        for m in chosen:
            if m not in self.metrics:
                raise NotFoundError(
                    f"plot(metrics=...) names unknown metric {m!r}; metrics are {list(self.metrics)}.",
                    details={"metric": m},
                )
        rows = max(len(chosen), 1)
        n_var = max(len(self.variations) - 1, 1)
        fig: Figure = figure_cls(
            figsize=(7.0, 0.6 + rows * (0.5 + 0.45 * n_var)), layout="constrained"
        )
        axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
        for ax, metric in zip(axes, chosen, strict=False):
            comps = [c for c in self.comparisons if c.metric == metric]
            labels: list[str] = []
            for y, comp in enumerate(reversed(comps)):
                kind = difference or comp.difference
                lift = comp.relative if kind == "relative" else comp.absolute
                scale = 100.0 if kind == "relative" else 1.0
                if lift is None:
                    labels.append(f"{comp.variation} ({comp.status})")
                    continue
                labels.append(comp.variation)
                p = comp.adjusted_p_value if comp.adjusted_p_value is not None else lift.p_value
                color = "#7f7f7f"
                if p < comp.alpha:
                    color = "#2ca02c" if lift.estimate > 0 else "#d62728"
                low = lift.ci_low * scale
                high = lift.ci_high * scale
                est = lift.estimate * scale
                finite_low = low if math.isfinite(low) else est - 3 * lift.std_error * scale
                finite_high = high if math.isfinite(high) else est + 3 * lift.std_error * scale
                ax.plot([finite_low, finite_high], [y, y], color=color, linewidth=3, alpha=0.6)
                ax.plot([est], [y], marker="o", color=color)
            ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
            ax.set_yticks(range(len(labels)), labels)
            ax.set_ylim(-0.7, max(len(labels), 1) - 0.3)
            unit = "lift (%)" if (difference or self._primary(metric)) == "relative" else "lift"
            ax.set_title(f"{metric}: vs {self.control}", loc="left", fontsize=10)
            ax.set_xlabel(unit)
        if self.srm is not None and self.srm.mismatch:
            fig.suptitle("Sample ratio mismatch: lifts are not trustworthy", color="#d62728")
        return fig

    def _primary(self, metric: str) -> str:
        for c in self.comparisons:
            if c.metric == metric:
                return c.difference
        return "relative"

    def _repr_html_(self) -> str:
        title = f"Experiment {self.experiment}" if self.experiment else "Experiment"
        return _html_table(list(self.comparisons), self.srm, title=title)


def _fmt(value: float | None, *, percent: bool = False, digits: int = 4) -> str:
    if value is None:
        return "&mdash;"
    if math.isinf(value):
        return "&infin;" if value > 0 else "&minus;&infin;"
    if percent:
        return f"{value * 100:+.2f}%"
    return f"{value:.{digits}g}"


def _srm_banner(srm: SrmResult) -> str:
    if srm.reason is not None:
        return f'<p style="color:#7f7f7f">SRM check not run: {html.escape(srm.reason)}</p>'
    counts = ", ".join(f"{html.escape(k)}: {v}" for k, v in srm.observed.items())
    if srm.mismatch:
        return (
            '<p style="color:#d62728;font-weight:bold">Sample ratio mismatch '
            f"(p = {_fmt(srm.p_value)} &lt; {srm.threshold}; {counts}): "
            "assignment looks broken, do not trust the lifts below.</p>"
        )
    return f'<p style="color:#2ca02c">No sample ratio mismatch (p = {_fmt(srm.p_value)}; {counts}).</p>'


def _html_table(comps: Sequence[Comparison], srm: SrmResult | None, *, title: str) -> str:
    head = (
        "<tr><th>metric</th><th>variation</th><th>n</th><th>control mean</th>"
        "<th>variation mean</th><th>lift</th><th>CI</th><th>p</th><th>adj. p</th>"
        "<th>status</th></tr>"
    )
    rows: list[str] = []
    for c in comps:
        lift = c.lift
        pct = c.difference == "relative"
        if lift is None:
            lift_s = ci_s = p_s = "&mdash;"
            style = "color:#7f7f7f"
        else:
            lift_s = _fmt(lift.estimate, percent=pct)
            ci_s = f"[{_fmt(lift.ci_low, percent=pct)}, {_fmt(lift.ci_high, percent=pct)}]"
            p_s = _fmt(lift.p_value)
            style = ""
            if c.significant:
                style = "color:#2ca02c" if lift.estimate > 0 else "color:#d62728"
        status = html.escape(c.status if c.reason is None else f"{c.status}: {c.reason}")
        rows.append(
            f'<tr style="{style}"><td>{html.escape(c.metric)}</td>'
            f"<td>{html.escape(c.variation)}</td>"
            f"<td>{c.variation_stats.n} / {c.control_stats.n}</td>"
            f"<td>{_fmt(c.control_mean)}</td><td>{_fmt(c.variation_mean)}</td>"
            f"<td>{lift_s}</td><td>{ci_s}</td><td>{p_s}</td>"
            f"<td>{_fmt(c.adjusted_p_value)}</td><td>{status}</td></tr>"
        )
    banner = "" if srm is None else _srm_banner(srm)
    return (
        f'<div class="contractspec-growth-result"><h4>{html.escape(title)}</h4>{banner}'
        f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
