"""Growth results display in Jupyter without `%matplotlib`: plots as PNG, assignments as HTML."""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imread

from contractspec.growth import ExperimentRegistry, ExperimentRunner, define_experiment
from contractspec.growth.stats import SufficientStats, analyze_experiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_plot_is_a_figure_that_renders_itself_as_png() -> None:
    """plot() returns a matplotlib Figure whose `_repr_png_` (what Jupyter calls) is the image."""
    result = analyze_experiment(
        {
            "conversion": {
                "control": SufficientStats.from_proportion(1000, 10_000),
                "B": SufficientStats.from_proportion(1150, 10_050),
            }
        },
        control="control",
        metric_types={"conversion": "proportion"},
    )
    fig = result.plot()
    assert isinstance(fig, Figure)
    png = fig._repr_png_()  # type: ignore[attr-defined]
    assert png[:8] == PNG_MAGIC
    pixels = imread(io.BytesIO(png), format="png")
    height, width = pixels.shape[:2]
    dpi = fig.get_dpi()
    # the whole figure at its dpi ("tight" crops or pads by a few pixels), not a thumbnail
    assert abs(width - fig.get_figwidth() * dpi) < 0.1 * fig.get_figwidth() * dpi
    assert abs(height - fig.get_figheight() * dpi) < 0.2 * fig.get_figheight() * dpi
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10  # drawn, not blank


def test_assignments_render_as_an_html_table_of_counts_and_shares() -> None:
    """`Assignments._repr_html_` shows subjects and share per arm, its weight, and who is out."""
    spec = define_experiment(
        "checkout.cta", ["control", "green"], weights=[0.25, 0.75], coverage=0.5
    )
    assignments = ExperimentRunner(ExperimentRegistry(spec)).assign_many(
        spec, [f"user-{i}" for i in range(2000)]
    )
    counts = assignments.counts()
    inside = sum(counts.values())
    assert 0 < inside < 2000
    page = assignments._repr_html_()
    assert page.startswith(
        f"<table><caption>Assignments of checkout.cta: 2,000 subjects, {inside:,} in the "
        f"experiment, {2000 - inside:,} not (served the control)</caption>"
    )
    for key, weight in (("control", "25.0%"), ("green", "75.0%")):
        n = counts[key]
        assert (
            f"<tr><td>{key}</td><td>{n:,}</td><td>{n / inside:.1%}</td><td>{weight}</td></tr>"
            in page
        )


def test_assignments_html_escapes_keys_and_handles_nobody_assigned() -> None:
    """Keys are escaped, and an experiment nobody entered shows no shares instead of dividing by 0."""
    spec = define_experiment("a.b", ["<ctl>", "x&y"], active=False)
    assignments = ExperimentRunner(ExperimentRegistry(spec)).assign_many(spec, ["u1", "u2"])
    page = assignments._repr_html_()
    assert "2 subjects, 0 in the experiment, 2 not" in page
    assert "<tr><td>&lt;ctl&gt;</td><td>0</td><td>&mdash;</td><td>50.0%</td></tr>" in page
    assert "<td>x&amp;y</td>" in page
