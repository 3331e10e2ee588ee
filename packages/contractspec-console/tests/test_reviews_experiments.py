"""The experiments section: comparisons, the SRM verdict, the lift plot as a PNG route."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import pytest
from console_support import build_registry
from reviews_support import ReviewClient, review_console

from contractspec.console.reviews import Experiments
from contractspec.core import (
    Actor,
    CallContext,
    ConfigurationError,
    Executor,
    MemoryBackend,
    NotFoundError,
    RolePermissions,
)
from contractspec.growth import SufficientStats, analyze_experiment
from contractspec.growth.results import ExperimentResult

ORG = "acme"
POLICY = RolePermissions({"analyst": ["growth.results.read"], "clerk": ["product.write"]})
USERS = {"ana": Actor.user("u-ana", roles="analyst"), "bob": Actor.user("u-bob", roles="clerk")}
HOSTILE_METRIC = "<b>checkout</b>"


def source(key: str, call: CallContext) -> ExperimentResult:
    """Two experiments: a clean one and one whose exposures break the 50/50 split."""
    calls.append((key, call.org_id))
    if key == "clean":
        data = {
            HOSTILE_METRIC: {
                "control": SufficientStats.from_proportion(100, 1000),
                "treatment": SufficientStats.from_proportion(150, 1000),
            }
        }
        return analyze_experiment(data, control="control", experiment="clean",
                                  metric_types={HOSTILE_METRIC: "proportion"})  # fmt: skip
    if key == "skewed":
        data = {
            "revenue": {
                "control": SufficientStats.from_moments(1000, 10.0, 4.0),
                "treatment": SufficientStats.from_moments(800, 10.5, 4.0),
            }
        }
        return analyze_experiment(data, control="control", experiment="skewed")
    raise NotFoundError(f"no experiment {key!r}", details={"experiment": key})


calls: list[tuple[str, str | None]] = []


@pytest.fixture
async def client() -> AsyncIterator[ReviewClient]:
    registry = build_registry()
    section = Experiments(registry, experiments=["clean", "skewed"], source=source)
    executor = Executor(registry, backend=MemoryBackend(), policy=POLICY)
    c = ReviewClient(review_console(executor, USERS, ORG, [section]), USERS, ORG)
    yield c
    await c.aclose()


async def test_result_table_srm_verdicts_and_plot(client: ReviewClient) -> None:
    """The clean experiment shows its lift and no SRM; the skewed one flags the mismatch;
    the plot is a PNG served from the console (an <img> on the page, no inline data)."""
    index = await client.page("ana", "/admin/experiments/")
    assert [a["href"] for a in index.select("ul.cards a")] == [
        "/admin/experiments/clean",
        "/admin/experiments/skewed",
    ]
    clean = await client.page("ana", "/admin/experiments/clean")
    assert clean.select_one("p.srm")["data-mismatch"] == "false"
    row = clean.select_one("table.comparisons tbody tr")
    assert row["data-metric"] == HOSTILE_METRIC
    assert row.select_one("td").get_text() == HOSTILE_METRIC  # escaped, not markup
    assert row.select_one("td.lift").get_text() == "+50.00%"
    assert row.select_one("td.significant").get_text() == "yes"
    img = clean.select_one("img.plot")
    assert img["src"] == "/admin/experiments/clean/plot.png"
    assert img["alt"]
    skewed = await client.page("ana", "/admin/experiments/skewed")
    srm = skewed.select_one("p.srm")
    assert srm["data-mismatch"] == "true"
    assert "do not trust" in srm.get_text()
    png = await client.get("ana", "/admin/experiments/clean/plot.png")
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert ("clean", ORG) in calls  # the source hears the caller's tenant


async def test_results_are_for_readers_only(client: ReviewClient) -> None:
    """Without the permission: not in the navigation, 403 on the result and on the image;
    an unknown experiment is a 404."""
    home = await client.page("bob", "/admin/")
    assert "/admin/experiments/" not in {a["href"] for a in home.select("nav.side a")}
    assert (await client.get("bob", "/admin/experiments/clean")).status_code == 403
    image = await client.get("bob", "/admin/experiments/clean/plot.png")
    assert image.status_code == 403
    assert image.headers["content-type"].startswith("text/html")
    assert (await client.get("ana", "/admin/experiments/nope")).status_code == 404
    assert (await client.get("ana", "/admin/experiments/nope/plot.png")).status_code == 404


def test_missing_growth_package_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without contractspec-growth the section names the package (with its plot extra)."""
    monkeypatch.setitem(sys.modules, "contractspec.growth.results", None)
    with pytest.raises(ConfigurationError, match=r"contractspec-growth\[plot\]"):
        Experiments(build_registry(), experiments=[], source=source)
