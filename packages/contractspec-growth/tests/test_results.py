"""Experiment results render for notebooks: DataFrame, HTML and a lift plot."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from contractspec.core.errors import NotFoundError
from contractspec.growth.results import ExperimentResult
from contractspec.growth.stats import SufficientStats, analyze_experiment


def _result() -> ExperimentResult:
    return analyze_experiment(
        {
            "conversion": {
                "control": SufficientStats.from_proportion(1000, 10_000),
                "B": SufficientStats.from_proportion(1150, 10_050),
                "C": SufficientStats.empty(),
            },
            "revenue": {
                "control": SufficientStats.from_sums(10_000, 251_000.0, 9_800_000.0),
                "B": SufficientStats.from_sums(10_050, 249_000.0, 9_700_000.0),
                "C": SufficientStats.empty(),
            },
        },
        control="control",
        experiment="checkout-redesign",
        weights={"control": 0.5, "B": 0.5, "C": 0.0},
        metric_types={"conversion": "proportion"},
    )


def test_to_frame_has_one_row_per_metric_and_variation() -> None:
    """to_frame() returns exact estimates per metric x variation with NaN where status says why."""
    res = _result()
    frame = res.to_frame()
    assert isinstance(frame, pd.DataFrame)
    assert frame[["metric", "variation", "status"]].values.tolist() == [
        ["conversion", "B", "ok"],
        ["conversion", "C", "empty_variation"],
        ["revenue", "B", "ok"],
        ["revenue", "C", "empty_variation"],
    ]
    comp = res.comparison("conversion", "B")
    assert comp.relative is not None
    row = frame.iloc[0]
    assert row["rel_lift"] == comp.relative.estimate
    assert row["rel_lift"] == pytest.approx((1150 / 10_050 - 0.1) / 0.1, rel=1e-12)
    assert row["adjusted_p_value"] == comp.adjusted_p_value
    assert row["n_control"] == 10_000
    assert bool(row["significant"]) is True
    assert math.isnan(frame.iloc[1]["rel_lift"])
    assert frame.iloc[1]["reason"] == "'C' has no units yet; wait for exposures before analysing."
    assert frame["rel_lift"].dtype == np.float64


def test_repr_html_shows_lifts_status_and_srm() -> None:
    """The Jupyter HTML has a row per comparison, formatted lifts and the SRM verdict."""
    res = _result()
    page = res._repr_html_()
    assert page.count("<tr") == 5  # header + 4 comparisons
    comp = res.comparison("conversion", "B")
    assert comp.relative is not None
    assert f"{comp.relative.estimate * 100:+.2f}%" in page
    assert "empty_variation: &#x27;C&#x27; has no units yet" in page
    assert "No sample ratio mismatch" in page
    assert "checkout-redesign" in page
    assert comp._repr_html_().count("<tr") == 2


def test_repr_html_warns_on_sample_ratio_mismatch() -> None:
    """A broken split is announced above the table."""
    res = analyze_experiment(
        {
            "m": {
                "control": SufficientStats.from_values(np.arange(1000.0)),
                "B": SufficientStats.from_values(np.arange(1200.0)),
            }
        },
        control="control",
    )
    assert res.srm is not None
    assert res.srm.mismatch is True
    assert "Sample ratio mismatch" in res._repr_html_()
    assert "do not trust the lifts" in res.srm._repr_html_()


def test_plot_draws_one_panel_per_metric(tmp_path: Path) -> None:
    """plot() returns a matplotlib Figure with a forest panel per metric that saves as PNG."""
    res = _result()
    fig = res.plot()
    assert isinstance(fig, Figure)
    axes = fig.get_axes()
    assert len(axes) == 2
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == ["C (empty_variation)", "B"]
    assert axes[0].get_xlabel() == "lift (%)"
    out = tmp_path / "lift.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_absolute_and_subset() -> None:
    """plot(difference='absolute', metrics=[...]) draws only the chosen metric in its unit."""
    fig = _result().plot(difference="absolute", metrics=["revenue"])
    (ax,) = fig.get_axes()
    assert ax.get_xlabel() == "lift"
    assert ax.get_title(loc="left") == "revenue: vs control"


def test_plot_unknown_metric_raises() -> None:
    """Asking for a metric that is not in the result raises NotFoundError."""
    with pytest.raises(NotFoundError, match="unknown metric 'clicks'"):
        _result().plot(metrics=["clicks"])


def test_comparison_lookup_of_unknown_pair_raises() -> None:
    """comparison() on an unknown metric/variation lists what exists."""
    with pytest.raises(NotFoundError, match="metrics are \\['conversion', 'revenue'\\]"):
        _result().comparison("clicks", "B")


def test_missing_extras_fail_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pandas / matplotlib the methods name the extra to install."""
    res = _result()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'contractspec-growth\[pandas\]'"):
        res.to_frame()
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'contractspec-growth\[plot\]'"):
        res.plot()
