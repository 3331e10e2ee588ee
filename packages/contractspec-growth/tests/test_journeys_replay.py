"""Property: any order of delivery, replay and backfill batching gives the same final progress."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.growth.journeys import (
    EventCondition,
    JourneyEngine,
    JourneyEvent,
    JourneyStore,
    MemoryJourneyStore,
    Module,
    Step,
    TrackProgress,
    define_track,
)

T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)

TRACK = define_track(
    "onboarding",
    1,
    modules=[
        Module(
            "m",
            [
                Step("deal", completion=EventCondition("deal")),
                Step(
                    "invoices",
                    completion=EventCondition("invoice", count=3, within=24 * HOUR),
                    prerequisites=["deal"],
                ),
                Step("team", completion=EventCondition("deal", count=3, by="org")),
                Step(
                    "all",
                    completion=EventCondition("invoice", count=2),
                    prerequisites=["invoices", "team"],
                ),
            ],
        )
    ],
)
LEARNERS = ("u1", "u2", "u3")


@pytest.fixture
async def store(backend_kind: str, tmp_path: Path) -> AsyncIterator[JourneyStore]:
    """A journey store on memory, a SQLite file or PostgreSQL (each example uses its own org)."""
    if backend_kind == "memory":
        yield MemoryJourneyStore()
        return
    from contractspec.growth.journeys_sql import SqlJourneyStore

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlJourneyStore(engine)
        await sql.create_all()
        yield sql


EVENT = st.tuples(
    st.sampled_from(["deal", "invoice", "other"]),
    st.sampled_from([*LEARNERS, None]),
    st.integers(min_value=0, max_value=72),
)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[tuple[str, str | None, int]], list[int], list[int]]:
    """Distinct events, then a delivery order (every event at least once, some replayed) and
    the sizes of the batches it is cut into (size 1 = `handle`, larger = `backfill`)."""
    events = draw(st.lists(EVENT, min_size=1, max_size=14))
    order = draw(st.permutations(range(len(events))))
    replays = draw(st.lists(st.sampled_from(range(len(events))), max_size=8))
    sequence = list(order)
    for r in replays:
        sequence.insert(draw(st.integers(0, len(sequence))), r)
    cuts = draw(st.lists(st.integers(1, 5), min_size=1, max_size=len(sequence)))
    return events, sequence, cuts


def _journey_events(org: str, events: list[tuple[str, str | None, int]]) -> list[JourneyEvent]:
    return [
        JourneyEvent(f"e{i}", type_, actor, org, T0 + hours * HOUR)
        for i, (type_, actor, hours) in enumerate(events)
    ]


async def _progress(engine: JourneyEngine, org: str) -> dict[str, TrackProgress]:
    out = {}
    for learner in LEARNERS:
        if await engine.store.enrollment(org, learner, "onboarding") is not None:
            out[learner] = await engine.progress(org, learner, "onboarding")
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(deliveries())
async def test_any_delivery_order_with_replays_gives_the_same_progress(
    store: JourneyStore,
    case: tuple[list[tuple[str, str | None, int]], list[int], list[int]],
) -> None:
    """Shuffled, replayed, batched delivery equals handling each event once in time order, and
    each completed step is reported exactly once."""
    raw, sequence, cuts = case
    org = f"org-{uuid.uuid4().hex[:12]}"  # a fresh tenant per example: the store is shared
    events = _journey_events(org, raw)
    engine = JourneyEngine([TRACK], store, clock=FakeClock(T0))
    reported = []
    position, k = 0, 0
    while position < len(sequence):
        size = cuts[k % len(cuts)]
        batch = [events[i] for i in sequence[position : position + size]]
        if size == 1:
            reported += await engine.handle(batch[0])
        else:
            reported += list((await engine.backfill(batch)).completions)
        position += size
        k += 1
    reference = JourneyEngine([TRACK], MemoryJourneyStore(), clock=FakeClock(T0))
    for e in sorted(events, key=lambda e: (e.occurred_at, e.id)):
        await reference.handle(e)
    got, want = await _progress(engine, org), await _progress(reference, org)
    assert got == want
    completed = sorted((learner, step) for learner, p in want.items() for step in p.completed)
    assert sorted((c.learner_id, c.step) for c in reported) == completed
