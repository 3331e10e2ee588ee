"""ExperimentTracker conformance suite: memory, SQLite and PostgreSQL stores behave the same."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from growth_a_stores import sql_engine_for
from hypothesis import given
from hypothesis import strategies as st

from contractspec.core import SpecValidationError
from contractspec.core.testing import FakeClock
from contractspec.growth.experiments import ExperimentRegistry, ExperimentRunner, define_experiment
from contractspec.growth.stats import SufficientStats
from contractspec.growth.tracking import (
    ExperimentTracker,
    MemoryTrackingStore,
    MetricEvent,
    SqlTrackingStore,
    TrackingStore,
)

T0 = datetime(2024, 5, 1, tzinfo=UTC)
EXPERIMENT = define_experiment(
    "checkout", ["control", "treatment", "unused"], weights=[0.5, 0.5, 0.0]
)


@pytest.fixture
async def store(backend_kind: str, tmp_path: Path) -> AsyncIterator[TrackingStore]:
    """A tracking store on memory, a SQLite file or a PostgreSQL schema."""
    async with sql_engine_for(backend_kind, tmp_path) as engine:
        if engine is None:
            yield MemoryTrackingStore()
            return
        sql = SqlTrackingStore(engine)
        await sql.create_all()
        yield sql


@pytest.fixture
def tracker(store: TrackingStore) -> ExperimentTracker:
    """A tracker on the store with a fake clock at T0."""
    return ExperimentTracker(store, ExperimentRegistry(EXPERIMENT), clock=FakeClock(T0))


def _runner() -> ExperimentRunner:
    return ExperimentRunner(ExperimentRegistry(EXPERIMENT))


def _subject_in(variation: str, start: int = 0) -> str:
    """The first `user-N` id (N >= start) that the runner puts in `variation`."""
    runner = _runner()
    for i in range(start, start + 1000):
        if runner.assign(EXPERIMENT, f"user-{i}").variation == variation:
            return f"user-{i}"
    raise AssertionError("unreachable: a 50% arm always has a member in 1000 ids")


async def test_exposures_are_deduplicated_per_subject(tracker: ExperimentTracker) -> None:
    """A subject is exposed once per experiment: the first exposure (and its variation) wins."""
    runner = _runner()
    first = runner.assign(EXPERIMENT, "user-1")
    assert await tracker.expose(first) is True
    assert await tracker.expose(first) is False
    other_arm = first._replace(variation="treatment" if first.variation == "control" else "control")
    assert await tracker.expose(other_arm) is False
    counts = await tracker.exposure_counts("checkout")
    assert counts == {"control": 0, "treatment": 0, "unused": 0} | {first.variation: 1}


async def test_untracked_assignments_are_not_exposed(tracker: ExperimentTracker) -> None:
    """Excluded and forced assignments never count as exposures."""
    forced = ExperimentRunner(ExperimentRegistry(EXPERIMENT), forced={"checkout": "treatment"})
    assert await tracker.expose(forced.assign(EXPERIMENT, "user-1")) is False
    excluded = _runner().assign(EXPERIMENT, {"plan": "no id"})
    assert await tracker.expose(excluded) is False
    assert await tracker.exposure_counts(EXPERIMENT) == {"control": 0, "treatment": 0, "unused": 0}


async def test_summary_sums_values_after_exposure_per_variation(tracker: ExperimentTracker) -> None:
    """Each subject's value sums its events since exposure; exposed subjects without events add 0."""
    runner = _runner()
    c1, c2 = _subject_in("control"), _subject_in("control", 500)
    t1 = _subject_in("treatment")
    for subject in (c1, c2, t1):
        await tracker.expose(runner.assign(EXPERIMENT, subject), at=T0)
    await tracker.track("revenue", c1, 10.0, at=T0 - timedelta(minutes=1))  # before exposure
    await tracker.track("revenue", c1, 2.5, at=T0)
    await tracker.track("revenue", c1, 4.0, at=T0 + timedelta(days=3))
    await tracker.track("revenue", t1, 8.25, at=T0 + timedelta(hours=1))
    await tracker.track("revenue", "never-exposed", 100.0, at=T0)
    await tracker.track("clicks", t1, 1.0, at=T0)
    summary = await tracker.summarize("checkout", "revenue")
    assert list(summary) == ["control", "treatment", "unused"]
    assert summary["control"] == SufficientStats(2, 6.5, 6.5**2)
    assert summary["treatment"] == SufficientStats(1, 8.25, 8.25**2)
    assert summary["unused"] == SufficientStats(0, 0.0, 0.0)
    windowed = await tracker.summarize("checkout", "revenue", window=timedelta(days=1))
    assert windowed["control"] == SufficientStats(2, 2.5, 6.25)


async def test_conversions_and_counts_aggregate_per_subject(tracker: ExperimentTracker) -> None:
    """`conversion` gives 0/1 per subject and `count` the number of events per subject."""
    runner = _runner()
    subjects = [_subject_in("control"), _subject_in("control", 300), _subject_in("treatment")]
    for subject in subjects:
        await tracker.expose(runner.assign(EXPERIMENT, subject))
    await tracker.convert("purchase", subjects[0], at=T0 + timedelta(seconds=1))
    await tracker.convert("purchase", subjects[0], at=T0 + timedelta(seconds=2))
    await tracker.convert("purchase", subjects[2], at=T0 + timedelta(seconds=3))
    conversion = await tracker.summarize(EXPERIMENT, "purchase", aggregation="conversion")
    assert conversion["control"] == SufficientStats(2, 1.0, 1.0)
    assert conversion["treatment"] == SufficientStats(1, 1.0, 1.0)
    count = await tracker.summarize(EXPERIMENT, "purchase", aggregation="count")
    assert count["control"] == SufficientStats(2, 2.0, 4.0)


async def test_summary_filters_by_org(tracker: ExperimentTracker) -> None:
    """With `org_id`, only subjects exposed in that tenant are summarised."""
    runner = _runner()
    a, b = _subject_in("control"), _subject_in("control", 400)
    await tracker.expose(runner.assign(EXPERIMENT, a), org_id="o1")
    await tracker.expose(runner.assign(EXPERIMENT, b), org_id="o2")
    await tracker.track("revenue", a, 3.0, org_id="o1")
    await tracker.track("revenue", b, 5.0, org_id="o2")
    assert (await tracker.summarize(EXPERIMENT, "revenue", org_id="o2"))["control"] == (
        SufficientStats(1, 5.0, 25.0)
    )


async def test_bulk_exposures_from_assign_many_match_counts(tracker: ExperimentTracker) -> None:
    """A back-fill of 10,000 vectorised assignments stores exactly the assigned subjects."""
    ids = [f"user-{i}" for i in range(10_000)]
    batch = _runner().assign_many(EXPERIMENT, ids)
    assert await tracker.expose_many(batch, ids) == 10_000
    assert await tracker.expose_many(batch, ids) == 0
    assert await tracker.exposure_counts(EXPERIMENT) == batch.counts()
    rng = np.random.default_rng(7)
    values = rng.integers(0, 8, size=len(ids)) / 4.0  # quarters: sums are exact in binary
    await tracker.track_many(
        MetricEvent("revenue", s, float(v), T0 + timedelta(seconds=1))
        for s, v in zip(ids, values, strict=True)
    )
    summary = await tracker.summarize(EXPERIMENT, "revenue")
    for k, key in enumerate(EXPERIMENT.variation_keys):
        chosen = values[batch.variation_index == k]
        assert summary[key] == SufficientStats(
            len(chosen), float(chosen.sum()), float((chosen**2).sum())
        )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"metric": "", "subject_id": "u"}, "metric must be a non-empty string"),
        ({"metric": "m", "subject_id": ""}, "subject_id must be a non-empty string"),
        ({"metric": "m", "subject_id": "u", "value": True}, "value must be a number"),
        ({"metric": "m", "subject_id": "u", "at": datetime(2024, 1, 1)}, "timezone-aware"),
    ],
)
async def test_bad_events_are_rejected(call: dict[str, Any], message: str) -> None:
    """Events with an empty name or subject, a boolean value or a naive time are refused."""
    with pytest.raises(SpecValidationError, match=message):
        await ExperimentTracker().track(**call)


@given(st.sampled_from([math.nan, math.inf, -math.inf]))
async def test_non_finite_values_are_rejected(value: float) -> None:
    """NaN and infinities never enter a summary."""
    with pytest.raises(SpecValidationError, match="finite number") as info:
        await ExperimentTracker().track("m", "u", value)
    assert info.value.details["field"] == "value"


async def test_bad_summary_arguments_are_rejected() -> None:
    """Unknown aggregations and non-positive windows name the field."""
    tracker = ExperimentTracker()
    with pytest.raises(
        SpecValidationError, match="aggregation must be one of sum, count, conversion"
    ):
        await tracker.summarize("x", "m", aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(SpecValidationError, match="window must be a positive timedelta"):
        await tracker.summarize("x", "m", window=timedelta(0))


async def test_sql_summary_is_one_grouped_query(tmp_path: Path) -> None:
    """The SQL summary is a nested GROUP BY: the database aggregates, no rows reach Python."""
    async with sql_engine_for("sqlite", tmp_path) as engine:
        store = SqlTrackingStore(engine)
        sql = str(store.summary_statement("checkout", "revenue").compile(engine))
    assert sql.count("GROUP BY") == 2
    assert "sum(per_subject.x * per_subject.x)" in sql
