"""Workflow SLA timers through a real job queue and worker (memory, SQLite file, PostgreSQL):
due timers fire through the executor as a system actor, once per state entry; a transition
before the due time cancels them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jobs_workflow_app import ORG, POLICY, agent_ctx, build_registry

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    MemoryBackend,
    PolicyDeniedError,
    SpecRegistry,
)
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.core.workflows import WorkflowTimerFire, system_call
from contractspec.jobs import JobQueue, MemoryJobQueue, Worker
from contractspec.jobs.workflows import (
    timer_idempotency_key,
    workflow_timer_handlers,
    workflow_timer_jobs,
)


@pytest.fixture
async def app(
    backend_kind: str, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[Executor, JobQueue]]:
    """An executor whose workflow enqueues timer jobs, and the queue, on one backend."""
    registry = build_registry()
    async with _backend_and_queue(backend_kind, tmp_path, registry, clock) as (backend, queue):
        yield _executor(registry, backend, queue, clock), queue


def _executor(
    registry: SpecRegistry, backend: Backend, queue: JobQueue, clock: FakeClock
) -> Executor:
    return Executor(
        registry, backend=backend, jobs=queue, policy=POLICY, clock=clock, ids=SequentialIds("id")
    )


async def _drain(ex: Executor, queue: JobQueue) -> None:
    await Worker(queue, workflow_timer_handlers(ex), poll_interval=0.01).run(until_idle=True)


async def _history(ex: Executor, iid: str) -> list[tuple[Any, ...]]:
    page = await ex.execute("sup.ticket.history", {"instance_id": iid}, agent_ctx())
    return [
        (s["kind"], s["transition"], s["to_state"], s["actor_id"], s["actor_kind"])
        for s in page.model_dump()["items"]
    ]


async def _start(ex: Executor) -> str:
    out = await ex.execute("sup.ticket.start", {"data": {"title": "printer"}}, agent_ctx())
    return str(out.model_dump()["id"])


def test_timer_job_types_are_declared_once_per_workflow() -> None:
    """workflow_timer_jobs is idempotent: one `sup.ticket.timers` job spec."""
    registry = build_registry()
    [spec] = workflow_timer_jobs(registry)
    assert spec.name == "sup.ticket.timers"
    assert workflow_timer_jobs(registry) == [spec]


async def test_due_timers_escalate_then_fire_the_transition_as_a_system_actor(
    app: tuple[Executor, JobQueue], clock: FakeClock
) -> None:
    """Nothing fires before its time; at 30 min the escalation (no state change), at 60 min the
    expiry transition, recorded as a `timer` step by the system actor."""
    ex, queue = app
    iid = await _start(ex)
    await _drain(ex, queue)
    assert (await ex.execute("sup.ticket.get", {"instance_id": iid}, agent_ctx())).model_dump()[
        "state"
    ] == "open"
    clock.advance(timedelta(minutes=31))
    await _drain(ex, queue)
    assert await _history(ex, iid) == [("start", None, "open", "agent-1", "user")]
    clock.advance(timedelta(minutes=30))
    await _drain(ex, queue)
    assert await _history(ex, iid) == [
        ("start", None, "open", "agent-1", "user"),
        ("timer", "expire", "expired", "workflow-timer", "system"),
    ]
    done = await queue.list(status="succeeded", limit=10)
    assert sorted(j.result["reason"] for j in done) == ["escalated", "fired expire"]  # type: ignore[index]


async def test_a_transition_before_the_due_time_cancels_the_timers(
    app: tuple[Executor, JobQueue], clock: FakeClock
) -> None:
    """Closed after 10 minutes: at 2 hours both timer jobs run and report that the instance left
    the state; the history has no timer step."""
    ex, queue = app
    iid = await _start(ex)
    clock.advance(timedelta(minutes=10))
    await ex.execute("sup.ticket.close", {"instance_id": iid}, agent_ctx())
    clock.advance(timedelta(hours=2))
    await _drain(ex, queue)
    assert [h[0] for h in await _history(ex, iid)] == ["start", "transition"]
    done = await queue.list(status="succeeded", limit=10)
    assert [j.result["reason"] for j in done] == ["instance left the state"] * 2  # type: ignore[index]


async def test_a_redelivered_timer_fires_once(app: tuple[Executor, JobQueue]) -> None:
    """The same timer run twice (at-least-once delivery) with its key: one timer step; without
    the key the second run finds the entry gone; a non-system actor may not run timers."""
    ex, _queue = app
    iid = await _start(ex)
    fire = WorkflowTimerFire(
        workflow="sup.ticket", instance_id=iid, entry_seq=1, timer="open_expire", org_id=ORG
    )
    key = timer_idempotency_key(fire)
    first = await ex.execute("sup.ticket.timer", fire, system_call(ORG, key))
    again = await ex.execute("sup.ticket.timer", fire, system_call(ORG, key))
    other = await ex.execute("sup.ticket.timer", fire, system_call(ORG, key + "-other"))
    assert first.model_dump() == again.model_dump()
    assert first.model_dump()["fired"] is True
    assert other.model_dump()["fired"] is False
    assert [h[0] for h in await _history(ex, iid)] == ["start", "timer"]
    with pytest.raises(PolicyDeniedError, match="runs only as a system actor"):
        await ex.execute("sup.ticket.timer", fire, CallContext(actor=Actor.user("u1"), org_id=ORG))


def test_the_workflow_timers_page_prints_what_it_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/jobs/workflow-timers.md runs: the due timer expires the ticket as the system actor."""
    from contractspec.core.testing.docs import printed_by_python_blocks

    page = Path(__file__).resolve().parents[3] / "docs" / "jobs" / "workflow-timers.md"
    monkeypatch.chdir(page.parents[2])
    assert printed_by_python_blocks(page).splitlines() == [
        "expired [('start', None, 'ada'), ('timer', 'expire', 'workflow-timer')]"
    ]


async def test_a_timer_due_at_a_time_computed_from_the_instance(
    backend_kind: str, tmp_path: Path, clock: FakeClock
) -> None:
    """`timer(at=...)`: the due time comes from the instance data (here `sla_minutes`), so two
    instances started together expire at different times."""
    from pydantic import BaseModel

    from contractspec.core import define_workflow, timer, transition

    class Call(BaseModel):
        sla_minutes: int

    def due(instance: Any) -> Any:
        return instance.created_at + timedelta(minutes=instance.data["sla_minutes"])

    wf = define_workflow(
        "sup.call",
        subject=Call,
        states=["waiting", "answered", "missed"],
        initial="waiting",
        final=["answered", "missed"],
        transitions=[
            transition("answer", source="waiting", target="answered"),
            transition("miss", source="waiting", target="missed"),
        ],
        timers=[timer("waiting", at=due, fire="miss")],
    )
    registry = SpecRegistry(wf)
    workflow_timer_jobs(registry)
    async with _backend_and_queue(backend_kind, tmp_path, registry, clock) as (backend, queue):
        ex = _executor(registry, backend, queue, clock)
        quick = await ex.execute("sup.call.start", {"data": {"sla_minutes": 5}}, agent_ctx())
        slow = await ex.execute("sup.call.start", {"data": {"sla_minutes": 60}}, agent_ctx())

        async def states() -> list[str]:
            return [
                (await ex.execute("sup.call.get", {"instance_id": i.id}, agent_ctx())).state  # type: ignore[attr-defined]
                for i in (quick, slow)
            ]

        clock.advance(timedelta(minutes=6))
        await _drain(ex, queue)
        assert await states() == ["missed", "waiting"]
        clock.advance(timedelta(minutes=60))
        await _drain(ex, queue)
        assert await states() == ["missed", "missed"]


@asynccontextmanager
async def _backend_and_queue(
    kind: str, tmp_path: Path, registry: SpecRegistry, clock: FakeClock
) -> AsyncIterator[tuple[Backend, JobQueue]]:
    if kind == "memory":
        yield MemoryBackend(), MemoryJobQueue(registry, clock=clock, ids=SequentialIds("job"))
        return
    from contractspec.core.sql import SqlBackend
    from contractspec.jobs.sql import SqlJobQueue

    async with temporary_sql_engine(kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        queue = SqlJobQueue(engine, registry, clock=clock, ids=SequentialIds("job"))
        await queue.create_all()
        yield sql, queue
