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


def assert_summary(actual: SufficientStats, values: Any) -> None:
    """`actual` summarises `values`: same count, mean and M2 (to rounding)."""
    expected = SufficientStats.from_values(np.asarray(values, dtype=np.float64))
    assert actual.n == expected.n
    assert actual.mean == pytest.approx(expected.mean, rel=1e-12, abs=1e-12)
    assert actual.m2 == pytest.approx(expected.m2, rel=1e-9, abs=1e-9)


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
    assert_summary(summary["control"], [6.5, 0.0])
    assert_summary(summary["treatment"], [8.25])
    assert summary["unused"] == SufficientStats.empty()
    windowed = await tracker.summarize("checkout", "revenue", window=timedelta(days=1))
    assert_summary(windowed["control"], [2.5, 0.0])


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
    assert_summary(conversion["control"], [1.0, 0.0])
    assert_summary(conversion["treatment"], [1.0])
    count = await tracker.summarize(EXPERIMENT, "purchase", aggregation="count")
    assert_summary(count["control"], [2.0, 0.0])


async def test_summary_filters_by_org(tracker: ExperimentTracker) -> None:
    """With `org_id`, only subjects exposed in that tenant are summarised."""
    runner = _runner()
    a, b = _subject_in("control"), _subject_in("control", 400)
    await tracker.expose(runner.assign(EXPERIMENT, a), org_id="o1")
    await tracker.expose(runner.assign(EXPERIMENT, b), org_id="o2")
    await tracker.track("revenue", a, 3.0, org_id="o1")
    await tracker.track("revenue", b, 5.0, org_id="o2")
    assert_summary((await tracker.summarize(EXPERIMENT, "revenue", org_id="o2"))["control"], [5.0])


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
        assert_summary(summary[key], chosen)


async def test_summaries_of_values_near_1e9_keep_their_variance(
    tracker: ExperimentTracker,
) -> None:
    """Values near 1e9 with unit spread (epoch seconds, cents): the stored summary has numpy's
    variance and Welch's test gives scipy's p-value on the raw values, in memory and in SQL."""
    from scipy import stats as sps

    from contractspec.growth.stats import welch_ttest

    ids = [f"user-{i}" for i in range(1200)]
    batch = _runner().assign_many(EXPERIMENT, ids)
    await tracker.expose_many(batch, ids, at=T0)
    rng = np.random.default_rng(11)
    values = 1e9 + rng.normal(0.0, 1.0, len(ids)) + 0.25 * (batch.variation_index == 1)
    await tracker.track_many(
        MetricEvent("epoch", s, float(v), T0 + timedelta(seconds=1))
        for s, v in zip(ids, values, strict=True)
    )
    summary = await tracker.summarize(EXPERIMENT, "epoch")
    control = values[batch.variation_index == 0]
    treatment = values[batch.variation_index == 1]
    for key, chosen in (("control", control), ("treatment", treatment)):
        assert summary[key].n == len(chosen)
        assert summary[key].mean == pytest.approx(np.mean(chosen), rel=1e-15)
        assert summary[key].variance == pytest.approx(np.var(chosen, ddof=1), rel=1e-7)
    result = welch_ttest(summary["control"], summary["treatment"], difference="absolute")
    assert result.status == "ok"
    # the reference runs on the values minus 1e9 (exact by Sterbenz's lemma); a float64 mean
    # near 1e9 is resolved to 1.2e-7, which limits the agreement to about 5 digits
    reference = sps.ttest_ind(treatment - 1e9, control - 1e9, equal_var=False).pvalue
    assert reference < 0.001
    assert result.p_value == pytest.approx(reference, rel=1e-4)


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
    assert "avg(per_subject.x) OVER (PARTITION BY per_subject.variation)" in sql
    assert "sum((centred.x - centred.mu) * (centred.x - centred.mu))" in sql
