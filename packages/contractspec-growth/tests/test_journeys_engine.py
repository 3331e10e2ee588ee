"""Journey engine and stores: one conformance suite on memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from contractspec.core.audit import MemoryAuditLog
from contractspec.core.errors import NotFoundError, SpecValidationError
from contractspec.core.records import EventEnvelope
from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.growth.journeys import (
    JOURNEY_CHECK_JOB,
    JOURNEY_NUDGE_EVENT,
    Enrollment,
    EventCondition,
    JourneyCheck,
    JourneyEngine,
    JourneyEvent,
    JourneyStore,
    MemoryJourneyStore,
    Module,
    Nudge,
    Step,
    StepState,
    define_track,
)

T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)

TRACK = define_track(
    "onboarding",
    1,
    modules=[
        Module(
            "basics",
            [
                Step(
                    "first_deal",
                    "Create a deal.",
                    action="crm.deal.create",
                    completion=EventCondition("crm.deal.created"),
                ),
                Step(
                    "invoicing",
                    "Send 3 invoices within a week.",
                    completion=EventCondition("invoice.sent", count=3, within=7 * DAY),
                    prerequisites=["first_deal"],
                    deadline=14 * DAY,
                    nudges=[Nudge(3 * DAY, "journey.invoicing.reminder")],
                ),
            ],
        ),
        Module(
            "team",
            [
                Step(
                    "team_deals",
                    "Your team creates 2 deals.",
                    completion=EventCondition("crm.deal.created", count=2, by="org"),
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


class RecordingEnqueuer:
    """A fake `JobEnqueuer` that records jobs and keeps one per unique key (like real queues)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, Any, dict[str, Any]]] = []

    async def enqueue(self, job_type: str, payload: Any, *, tx: Any = None, **options: Any) -> str:
        """Record the job; a taken unique key returns the existing job's id."""
        for i, (_, _, opts) in enumerate(self.jobs):
            if opts.get("unique_key") == options.get("unique_key"):
                return str(i)
        self.jobs.append((job_type, payload, options))
        return str(len(self.jobs) - 1)


class RecordingNotifier:
    """A fake `Notifier` that records the envelopes it is handed."""

    def __init__(self) -> None:
        self.events: list[EventEnvelope] = []

    async def handle(self, event: EventEnvelope) -> None:
        """Record the nudge event."""
        self.events.append(event)


def ev(i: str, type_: str, actor: str | None, at: dt.datetime, org: str = "acme") -> JourneyEvent:
    return JourneyEvent(i, type_, actor, org, at)


def engine_on(store: JourneyStore, **kw: Any) -> JourneyEngine:
    kw.setdefault("clock", FakeClock(T0))
    return JourneyEngine([TRACK], store, **kw)


async def test_a_product_event_completes_the_step_of_its_actor(store: JourneyStore) -> None:
    """`crm.deal.created` by u1 enrolls u1 and completes first_deal at the event's time."""
    engine = engine_on(store)
    done = await engine.handle(ev("e1", "crm.deal.created", "u1", T0 + DAY))
    assert [(c.learner_id, c.step, c.completed_at) for c in done] == [
        ("u1", "first_deal", T0 + DAY)
    ]
    progress = await engine.progress("acme", "u1", "onboarding")
    assert progress.enrollment.version == 1
    assert progress.enrollment.enrolled_at == T0 + DAY
    assert progress.completed == ("first_deal",)
    assert progress.steps["invoicing"] == StepState("invoicing", T0 + DAY, None, 0)
    assert progress.steps["team_deals"] == StepState("team_deals", T0 + DAY, None, 1)
    assert progress.fraction == pytest.approx(1 / 3)


async def test_envelopes_from_the_bus_are_accepted(store: JourneyStore) -> None:
    """An EventEnvelope is read as (id, name, actor, org, occurred_at)."""
    from pydantic import BaseModel

    class Payload(BaseModel):
        deal_id: str

    engine = engine_on(store)
    envelope = EventEnvelope(
        id="env-1",
        name="crm.deal.created",
        version=1,
        occurred_at=T0,
        payload=Payload(deal_id="d"),
        org_id="acme",
        actor_id="u9",
    )
    [done] = await engine.handle(envelope)
    assert (done.learner_id, done.step, done.completed_at) == ("u9", "first_deal", T0)


async def test_replaying_events_never_double_counts_or_double_completes(
    store: JourneyStore,
) -> None:
    """Handling the same events again reports no completion and leaves counts unchanged."""
    engine = engine_on(store)
    events = [ev("d1", "crm.deal.created", "u1", T0)] + [
        ev(f"i{k}", "invoice.sent", "u1", T0 + k * DAY) for k in range(1, 3)
    ]
    first = [c for e in events for c in await engine.handle(e)]
    before = await engine.progress("acme", "u1", "onboarding")
    replayed = [c for e in events * 3 for c in await engine.handle(e)]
    assert [c.step for c in first] == ["first_deal"]
    assert replayed == []
    after = await engine.progress("acme", "u1", "onboarding")
    assert after == before
    assert after.steps["invoicing"].count == 2  # not 6: distinct event ids
    assert after.steps["invoicing"].completed_at is None


async def test_three_invoices_within_seven_days_is_a_sliding_window(store: JourneyStore) -> None:
    """Invoices on days 1, 5, 9 do not complete; one on day 11 completes at day 11."""
    engine = engine_on(store)
    await engine.handle(ev("d1", "crm.deal.created", "u1", T0))
    for k in (1, 5, 9):
        assert await engine.handle(ev(f"i{k}", "invoice.sent", "u1", T0 + k * DAY)) == []
    [done] = await engine.handle(ev("i11", "invoice.sent", "u1", T0 + 11 * DAY))
    assert (done.step, done.completed_at) == ("invoicing", T0 + 11 * DAY)


async def test_prerequisites_gate_completion_but_earlier_events_count(
    store: JourneyStore,
) -> None:
    """Invoices before the first deal count; invoicing completes with the deal, not before."""
    engine = engine_on(store)
    for k in (1, 2, 3):
        assert await engine.handle(ev(f"i{k}", "invoice.sent", "u1", T0 + k * DAY)) == []
    progress = await engine.progress("acme", "u1", "onboarding")
    assert progress.steps["invoicing"] == StepState("invoicing", None, None, 3)
    done = await engine.handle(ev("d1", "crm.deal.created", "u1", T0 + 10 * DAY))
    assert sorted((c.step, c.completed_at) for c in done) == [
        ("first_deal", T0 + 10 * DAY),
        ("invoicing", T0 + 10 * DAY),
    ]


async def test_org_steps_count_teammates_and_stay_within_the_org(store: JourneyStore) -> None:
    """team_deals completes for both learners of acme on the second acme deal, not for globex."""
    engine = engine_on(store)
    await engine.handle(ev("a1", "crm.deal.created", "u1", T0))
    await engine.handle(ev("g1", "crm.deal.created", "g1", T0, org="globex"))
    done = await engine.handle(ev("a2", "crm.deal.created", "u2", T0 + DAY))
    assert sorted((c.learner_id, c.step) for c in done) == [
        ("u1", "team_deals"),
        ("u2", "first_deal"),
        ("u2", "team_deals"),
    ]
    globex = await engine.progress("globex", "g1", "onboarding")
    assert globex.steps["team_deals"].completed_at is None
    with pytest.raises(NotFoundError):
        await engine.progress("globex", "u1", "onboarding")


async def test_concurrent_deliveries_complete_each_step_once(store: JourneyStore) -> None:
    """The same events delivered 4 times concurrently report each completion exactly once."""
    engine = engine_on(store)
    events = [ev("d1", "crm.deal.created", "u1", T0)] + [
        ev(f"i{k}", "invoice.sent", "u1", T0 + k * DAY) for k in range(1, 4)
    ]
    results = await asyncio.gather(*(engine.handle(e) for e in events * 4))
    steps = sorted(c.step for r in results for c in r)
    assert steps == ["first_deal", "invoicing"]
    progress = await engine.progress("acme", "u1", "onboarding")
    assert progress.steps["invoicing"].completed_at == T0 + 3 * DAY


async def test_a_late_event_moves_completion_earlier_without_a_second_report(
    store: JourneyStore,
) -> None:
    """An out-of-order older deal event lowers completed_at; nothing is reported again."""
    engine = engine_on(store)
    await engine.handle(ev("d2", "crm.deal.created", "u1", T0 + 5 * DAY))
    late = await engine.handle(ev("d1", "crm.deal.created", "u1", T0 + DAY))
    assert [(c.step, c.completed_at) for c in late] == [("team_deals", T0 + 5 * DAY)]
    progress = await engine.progress("acme", "u1", "onboarding")
    assert progress.steps["first_deal"].completed_at == T0 + DAY
    assert progress.enrollment.enrolled_at == T0 + DAY


async def test_the_store_is_scoped_by_org(store: JourneyStore) -> None:
    """Events with one id in two orgs are two events; queries never cross orgs."""
    assert await store.add_events([ev("same", "e", "u", T0), ev("same", "e", "u", T0, "b")]) == 2
    assert await store.add_events([ev("same", "e", "u", T0)]) == 0
    assert [e.org_id for e in await store.events("b", ["e"])] == ["b"]
    assert await store.events("acme", ["other"]) == []
    await store.enroll(Enrollment("acme", "u", "t", 1, T0))
    await store.enroll(Enrollment("b", "u", "t", 1, T0))
    assert [e.org_id for e in await store.enrollments("b", "t")] == ["b"]
    assert len(await store.enrollments(None, "t")) == 2


async def test_enrolling_keeps_the_version_and_the_earliest_start(store: JourneyStore) -> None:
    """A second enroll keeps the stored version and lowers enrolled_at only."""
    first = await store.enroll(Enrollment("acme", "u", "t", 1, T0))
    again = await store.enroll(Enrollment("acme", "u", "t", 2, T0 + DAY))
    earlier = await store.enroll(Enrollment("acme", "u", "t", 2, T0 - DAY))
    assert first == again == Enrollment("acme", "u", "t", 1, T0)
    assert earlier == Enrollment("acme", "u", "t", 1, T0 - DAY)


async def test_learners_keep_the_version_they_started(store: JourneyStore) -> None:
    """After v2 is published, u1 stays on v1 and a new learner enrolls on v2."""
    engine = engine_on(store)
    await engine.handle(ev("d1", "crm.deal.created", "u1", T0))
    v2 = define_track(
        "onboarding",
        2,
        modules=[Module("m", [Step("deal", completion=EventCondition("crm.deal.created"))])],
    )
    engine.publish(v2)
    await engine.handle(ev("d2", "crm.deal.created", "u1", T0 + DAY))
    [done] = await engine.handle(ev("d3", "crm.deal.created", "u2", T0 + DAY))
    assert (await engine.progress("acme", "u1", "onboarding")).enrollment.version == 1
    assert (done.learner_id, done.version, done.step) == ("u2", 2, "deal")


async def test_migration_carries_mapped_completions_and_is_audited(store: JourneyStore) -> None:
    """migrate moves v1 learners to v2: mapped steps keep their completion time, others drop."""
    audit = MemoryAuditLog()
    engine = engine_on(store, audit=audit)
    await engine.handle(ev("d1", "crm.deal.created", "u1", T0))
    await engine.handle(ev("d2", "crm.deal.created", "u2", T0 + DAY))
    v2 = define_track(
        "onboarding",
        2,
        modules=[
            Module(
                "start",
                [
                    Step("deal", completion=EventCondition("crm.deal.created")),
                    Step(
                        "three_deals",
                        completion=EventCondition("crm.deal.created", count=3),
                        prerequisites=["deal"],
                    ),
                ],
            )
        ],
    )
    engine.publish(v2)
    with pytest.raises(SpecValidationError) as info:
        await engine.migrate(TRACK, v2, {"first_deal": "nope"})
    assert (info.value.details["field"], info.value.details["step"]) == ("mapping", "nope")
    report = await engine.migrate(TRACK, v2, {"first_deal": "deal", "team_deals": None})
    assert report.learners == (("acme", "u1"), ("acme", "u2"))
    assert sorted(report.carried) == [
        ("acme", "u1", "first_deal", "deal"),
        ("acme", "u2", "first_deal", "deal"),
    ]
    assert sorted(report.dropped) == [("acme", "u1", "team_deals"), ("acme", "u2", "team_deals")]
    p1 = await engine.progress("acme", "u1", "onboarding")
    assert p1.enrollment.version == 2
    assert p1.enrollment.migrated_from == 1
    assert p1.steps["deal"].completed_at == T0
    assert p1.steps["three_deals"] == StepState("three_deals", T0, None, 1)
    assert (await engine.migrate(TRACK, v2, {})).learners == ()  # nobody left on v1
    [done] = [
        c
        for e in ("d3", "d4")
        for c in await engine.handle(ev(e, "crm.deal.created", "u1", T0 + 2 * DAY))
    ]
    assert (done.version, done.step) == (2, "three_deals")
    records = audit.records
    assert [r.action for r in records] == ["growth.journey.migrate"] * 2
    assert records[0].details["carried"] == {"first_deal": "deal"}
    assert records[0].details["dropped"] == ["team_deals"]


async def test_a_started_step_with_a_deadline_enqueues_checks_through_the_jobs_port(
    store: JourneyStore,
) -> None:
    """When invoicing starts, a nudge check (day 3) and a deadline check (day 14) are enqueued."""
    jobs = RecordingEnqueuer()
    engine = engine_on(store, enqueuer=jobs)
    await engine.handle(ev("d1", "crm.deal.created", "u1", T0 + DAY))
    await engine.handle(ev("d1", "crm.deal.created", "u1", T0 + DAY))  # replay: no new jobs
    assert [(t, o["scheduled_at"], o["unique_key"]) for t, _, o in jobs.jobs] == [
        (
            JOURNEY_CHECK_JOB,
            T0 + 4 * DAY,
            "journey:acme:u1:onboarding@1:invoicing:nudge:0",
        ),
        (
            JOURNEY_CHECK_JOB,
            T0 + 15 * DAY,
            "journey:acme:u1:onboarding@1:invoicing:deadline:0",
        ),
    ]
    assert all(o["org_id"] == "acme" for _, _, o in jobs.jobs)
    check = jobs.jobs[1][1]
    assert isinstance(check, JourneyCheck)
    assert check.started_at == T0 + DAY


async def test_a_due_check_nudges_only_while_the_step_is_incomplete(store: JourneyStore) -> None:
    """Overdue invoicing sends one nudge event; after completion a check sends nothing."""
    jobs, notifier = RecordingEnqueuer(), RecordingNotifier()
    engine = engine_on(store, enqueuer=jobs, notifier=notifier)
    await engine.handle(ev("d1", "crm.deal.created", "u1", T0 + DAY))
    nudge_check, deadline_check = (payload for _, payload, _ in jobs.jobs)
    assert await engine.run_check(deadline_check.model_dump(mode="json")) is True
    assert await engine.run_check(deadline_check) is True  # a retried job: same event id
    [first, second] = notifier.events
    assert first.id == second.id
    assert first.name == JOURNEY_NUDGE_EVENT
    assert (first.org_id, first.actor_id) == ("acme", "u1")
    assert first.payload.model_dump() == {
        "track": "onboarding",
        "version": 1,
        "step": "invoicing",
        "learner_id": "u1",
        "reason": "deadline",
        "template": "journey.overdue",
        "started_at": T0 + DAY,
        "due_at": T0 + 15 * DAY,
        "step_action": None,
    }
    for k in (2, 3, 4):
        await engine.handle(ev(f"i{k}", "invoice.sent", "u1", T0 + k * DAY))
    assert await engine.run_check(nudge_check) is False
    assert len(notifier.events) == 2


async def test_deadlines_already_past_are_not_scheduled(store: JourneyStore) -> None:
    """A step that started long ago (backfill) enqueues no check due in the past."""
    jobs = RecordingEnqueuer()
    engine = engine_on(store, enqueuer=jobs, clock=FakeClock(T0 + 10 * DAY))
    await engine.backfill([ev("d1", "crm.deal.created", "u1", T0)])
    assert [o["scheduled_at"] for _, _, o in jobs.jobs] == [T0 + 14 * DAY]


async def test_backfill_equals_incremental_processing(store: JourneyStore) -> None:
    """Backfilling history in batches gives the progress of handling events one by one."""
    history = [ev("d1", "crm.deal.created", "u1", T0)] + [
        ev(f"i{k}", "invoice.sent", "u1" if k % 2 else "u2", T0 + k * DAY) for k in range(1, 12)
    ]
    history += [ev("d2", "crm.deal.created", "u2", T0 + 12 * DAY)]
    engine = engine_on(store)
    report = await engine.backfill(reversed(history), batch_size=5)
    reference = engine_on(MemoryJourneyStore())
    for e in history:
        await reference.handle(e)
    for learner in ("u1", "u2"):
        assert await engine.progress("acme", learner, "onboarding") == await reference.progress(
            "acme", learner, "onboarding"
        )
    assert (report.events, report.stored, report.learners) == (13, 13, 2)
    assert sorted((c.learner_id, c.step) for c in report.completions) == [
        ("u1", "first_deal"),
        ("u1", "invoicing"),
        ("u1", "team_deals"),
        ("u2", "first_deal"),
        ("u2", "invoicing"),
        ("u2", "team_deals"),
    ]


async def test_backfill_reads_async_iterables(store: JourneyStore) -> None:
    """An async generator of events is consumed like a list."""

    async def history() -> AsyncIterator[JourneyEvent]:
        for k in range(3):
            yield ev(f"d{k}", "crm.deal.created", f"u{k}", T0 + k * DAY)

    report = await engine_on(store).backfill(history())
    assert (report.events, report.learners, len(report.completions)) == (3, 3, 3 + 3)


async def test_explicit_enrollment_starts_steps_and_unknown_tracks_are_named(
    store: JourneyStore,
) -> None:
    """enroll() starts the steps without prerequisites at `at`; an unknown track is NotFound."""
    engine = engine_on(store)
    enrollment = await engine.enroll("acme", "u1", "onboarding", at=T0)
    assert enrollment == Enrollment("acme", "u1", "onboarding", 1, T0)
    progress = await engine.progress("acme", "u1", "onboarding")
    assert progress.steps["first_deal"].started_at == T0
    assert progress.steps["invoicing"].started_at is None
    with pytest.raises(NotFoundError) as info:
        await engine.enroll("acme", "u1", "nope")
    assert "onboarding@1" in info.value.message


class CrashingStore:
    """Delegates to a real store but fails the next `save_steps` (a process dying mid-handle)."""

    def __init__(self, inner: JourneyStore) -> None:
        self.inner = inner
        self.crash_next_save = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save_steps(self, enrollment: Enrollment, states: Any) -> Any:
        """Raise once, then delegate."""
        if self.crash_next_save:
            self.crash_next_save = False
            raise RuntimeError("process killed")
        return await self.inner.save_steps(enrollment, states)


async def test_a_redelivery_after_a_crash_completes_the_step(store: JourneyStore) -> None:
    """The event was stored but progress not saved (crash): its redelivery completes the step
    although the event is no longer new, as at-least-once delivery needs."""
    crashing = CrashingStore(store)
    engine = engine_on(crashing)  # type: ignore[arg-type]
    deal = ev("d1", "crm.deal.created", "u1", T0)
    with pytest.raises(RuntimeError, match="process killed"):
        await engine.handle(deal)
    assert [e.id for e in await store.events("acme", ["crm.deal.created"])] == ["d1"]
    done = await engine.handle(deal)
    assert [(c.step, c.completed_at) for c in done] == [("first_deal", T0)]
    assert await engine.handle(deal) == []


async def test_a_crowded_backfill_reads_the_org_once_and_equals_incremental(
    store: JourneyStore,
) -> None:
    """30 learners in one batch (the org-wide read path) get the progress of one-by-one handling,
    for actor and org steps alike."""
    import random

    rng = random.Random(7)
    history = [
        ev(
            f"e{i}",
            rng.choice(["crm.deal.created", "invoice.sent", "invoice.sent"]),
            f"u{rng.randrange(30)}",
            T0 + i * dt.timedelta(hours=5),
        )
        for i in range(300)
    ]
    engine = engine_on(store)
    report = await engine.backfill(history)
    reference = engine_on(MemoryJourneyStore())
    expected = [c for e in history for c in await reference.handle(e)]
    assert sorted(report.completions, key=repr) == sorted(expected, key=repr)
    learners = {e.actor_id for e in history}
    assert len(learners) == 30
    for learner in sorted(learners, key=str):
        assert await engine.progress("acme", str(learner), "onboarding") == (
            await reference.progress("acme", str(learner), "onboarding")
        )
