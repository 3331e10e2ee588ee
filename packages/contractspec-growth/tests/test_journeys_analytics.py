"""Journey analytics: completion funnel, per-step drop-off and time to complete, cohorts, plot."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.growth.journeys import (
    EventCondition,
    JourneyAnalytics,
    JourneyEngine,
    JourneyEvent,
    JourneyStore,
    MemoryJourneyStore,
    Module,
    Step,
    define_track,
)

T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
TRACK = define_track(
    "onboarding",
    1,
    modules=[
        Module("start", [Step("deal", completion=EventCondition("deal"))]),
        Module(
            "billing",
            [
                Step(
                    "invoices",
                    completion=EventCondition("invoice", count=3, within=7 * DAY),
                    prerequisites=["deal"],
                )
            ],
        ),
    ],
)


@pytest.fixture
async def store(backend_kind: str, tmp_path: Path) -> AsyncIterator[JourneyStore]:
    """A journey store on memory, a SQLite file or a fresh PostgreSQL schema."""
    if backend_kind == "memory":
        yield MemoryJourneyStore()
        return
    from contractspec.growth.journeys_sql import SqlJourneyStore

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlJourneyStore(engine)
        await sql.create_all()
        yield sql


def _history() -> list[JourneyEvent]:
    late = T0 + 35 * DAY
    rows = [
        ("u1", "deal", T0 + 2 * HOUR),
        ("u1", "invoice", T0 + DAY),
        ("u1", "invoice", T0 + 2 * DAY),
        ("u1", "invoice", T0 + 3 * DAY),  # invoices: 70 h after the step started
        ("u2", "deal", T0 + 4 * HOUR),  # never invoices
        ("u3", "invoice", T0 + 5 * HOUR),  # no deal: stuck on the first step
        ("u4", "deal", late),
        ("u4", "invoice", late + HOUR),
        ("u4", "invoice", late + 2 * HOUR),
        ("u4", "invoice", late + 3 * HOUR),  # invoices: 3 h
    ]
    return [JourneyEvent(f"e{i}", t, u, "acme", at) for i, (u, t, at) in enumerate(rows)]


@pytest.fixture
async def analytics(store: JourneyStore) -> JourneyAnalytics:
    """Analytics of four learners backfilled from history."""
    engine = JourneyEngine([TRACK], store, clock=FakeClock(T0))
    await engine.backfill(_history())
    return await engine.analytics("onboarding", org_id="acme")


async def test_steps_frame_gives_drop_off_and_time_to_complete(
    analytics: JourneyAnalytics,
) -> None:
    """Per step: started/completed learners, completion rate, drop-off, hours to complete."""
    frame = analytics.steps_frame()
    assert frame[["module", "step", "started", "completed", "drop_off"]].to_dict("records") == [
        {"module": "start", "step": "deal", "started": 4, "completed": 3, "drop_off": 1},
        {"module": "billing", "step": "invoices", "started": 3, "completed": 2, "drop_off": 1},
    ]
    assert frame["completion_rate"].tolist() == [0.75, pytest.approx(2 / 3)]
    assert frame["median_hours_to_complete"].tolist() == [0.0, 36.5]
    assert frame["p90_hours_to_complete"].tolist() == [0.0, pytest.approx(3 + 0.9 * 67)]


async def test_the_funnel_reuses_the_growth_funnel_analyzer(analytics: JourneyAnalytics) -> None:
    """enrolled -> deal -> invoices: 4, 3, 2 learners, with FunnelAnalyzer's conversions."""
    result = analytics.funnel()
    assert result.steps == ("enrolled", "deal", "invoices")
    assert result.counts == (4, 3, 2)
    assert result.drop_off == (0, 1, 1)
    assert result.conversion_from_start == (1.0, 0.75, 0.5)
    frame = result.to_frame()
    assert frame["count"].tolist() == [4, 3, 2]


async def test_learners_frame_gives_time_to_complete_the_track(
    analytics: JourneyAnalytics,
) -> None:
    """Per learner: steps completed and hours from enrollment to finishing the track."""
    frame = analytics.learners_frame().set_index("learner_id")
    assert frame["steps_completed"].to_dict() == {"u1": 2, "u2": 1, "u3": 0, "u4": 2}
    assert frame.loc["u1", "hours_to_complete"] == pytest.approx(70.0)
    assert frame.loc["u4", "hours_to_complete"] == pytest.approx(3.0)
    assert math.isnan(frame.loc["u2", "hours_to_complete"])


async def test_cohorts_group_learners_by_enrollment_month(analytics: JourneyAnalytics) -> None:
    """March cohort: 3 learners, 3 steps done in month 0; April cohort: 1 learner, 2 steps."""
    table = analytics.cohorts()
    assert table.cohorts == ("2025-03", "2025-04")
    assert table.sizes.tolist() == [3, 1]
    assert table.ltv[0, 0] == pytest.approx(1.0)
    assert table.ltv[1, 0] == pytest.approx(2.0)


async def test_the_plot_renders_as_png(analytics: JourneyAnalytics) -> None:
    """plot() returns a two-panel figure that displays as PNG in Jupyter."""
    figure = analytics.plot()
    assert len(figure.get_axes()) == 2
    assert figure._repr_png_().startswith(b"\x89PNG")
    bars = figure.get_axes()[0].patches
    assert [b.get_height() for b in bars] == [4, 3, 3, 2]
