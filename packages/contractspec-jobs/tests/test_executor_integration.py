"""Jobs from commands: `ctx.enqueue` and `on_event` triggers commit or roll back with the call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jobs_app import send_email
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConfigurationError,
    Executor,
    HandlerCtx,
    InternalError,
    MemoryBackend,
    SpecRegistry,
    authenticated,
    define_command,
    define_event,
)
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.jobs import (
    EventJobs,
    JobQueue,
    JobStatus,
    MemoryJobQueue,
    define_job,
    on_event,
)


class Signup(BaseModel):
    email: str
    fail_after_enqueue: bool = False


class SignedUp(BaseModel):
    to: str


signed_up = define_event("crm.user.signed_up", payload=SignedUp)
signup = define_command(
    "crm.user.signup", input=Signup, output=SignedUp, emits=[signed_up], auth=authenticated()
)
welcome = on_event(
    signed_up, enqueue=send_email, payload=lambda e: {"to": e.payload.to, "subject": "welcome"}
)  # type: ignore[attr-defined]

CTX = CallContext(actor=Actor.user("u-1"), org_id="org-1")


def build() -> SpecRegistry:
    registry = SpecRegistry(signup, send_email, welcome)

    @registry.handler(signup)
    async def handle(inp: Signup, ctx: HandlerCtx) -> SignedUp:
        await ctx.enqueue("mail.send", {"to": inp.email, "subject": "confirm"}, org_id=ctx.org_id)
        ctx.emit(signed_up, {"to": inp.email})
        if inp.fail_after_enqueue:
            raise RuntimeError("the handler failed after enqueueing")
        return SignedUp(to=inp.email)

    return registry


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[tuple[Executor, JobQueue]]:
    """An executor whose handlers enqueue jobs, on memory, SQLite or PostgreSQL."""
    registry = build()
    clock = FakeClock()
    if backend_kind == "memory":
        backend: Backend = MemoryBackend()
        queue: JobQueue = MemoryJobQueue(registry, clock=clock, ids=SequentialIds("job"))
        events = EventJobs(queue, registry, then=backend.events)
        yield Executor(registry, backend=backend, jobs=queue, events=events, clock=clock), queue
        return
    from contractspec.core.sql import SqlBackend
    from contractspec.jobs.sql import SqlJobQueue

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        sql_queue = SqlJobQueue(engine, registry, clock=clock, ids=SequentialIds("job"))
        await sql_queue.create_all()
        events = EventJobs(sql_queue, registry, then=sql.events)
        yield Executor(registry, backend=sql, jobs=sql_queue, events=events, clock=clock), sql_queue


async def test_jobs_enqueued_by_a_command_commit_with_it(app: tuple[Executor, JobQueue]) -> None:
    """ctx.enqueue and on_event jobs exist after the command commits, with the call's org."""
    executor, queue = app
    await executor.execute("crm.user.signup", {"email": "ada@x.io"}, CTX)
    jobs = await queue.list()
    assert [(j.type, j.payload, j.org_id, j.status) for j in jobs] == [
        ("mail.send", {"to": "ada@x.io", "subject": "confirm"}, "org-1", JobStatus.QUEUED),
        ("mail.send", {"to": "ada@x.io", "subject": "welcome"}, "org-1", JobStatus.QUEUED),
    ]


async def test_jobs_vanish_when_the_command_rolls_back(app: tuple[Executor, JobQueue]) -> None:
    """A handler failing after ctx.enqueue leaves no job behind."""
    executor, queue = app
    with pytest.raises(InternalError):
        await executor.execute(
            "crm.user.signup", {"email": "ada@x.io", "fail_after_enqueue": True}, CTX
        )
    assert await queue.list() == []


async def test_bad_job_payload_inside_a_handler_fails_the_call(
    app: tuple[Executor, JobQueue],
) -> None:
    """A handler enqueueing an invalid payload gets SpecValidationError and nothing commits."""
    from contractspec.core import SpecValidationError

    executor, queue = app
    with pytest.raises(SpecValidationError) as info:
        await executor.execute("crm.user.signup", {"email": ""}, CTX)
    assert info.value.errors[0]["field"] == "to"
    assert info.value.message.startswith("invalid payload for job mail.send@1: to: String")
    assert await queue.list() == []


async def test_executor_without_a_job_queue_explains_the_fix() -> None:
    """Without Executor(jobs=...), ctx.enqueue raises ConfigurationError naming the fix."""
    registry = build()
    executor = Executor(registry)
    with pytest.raises(ConfigurationError, match=r"pass Executor\(jobs=...\)"):
        await executor.execute("crm.user.signup", {"email": "ada@x.io"}, CTX)


async def test_sql_queue_refuses_a_memory_transaction(tmp_path: Path) -> None:
    """SqlJobQueue.enqueue(tx=...) with a non-SQL transaction raises ConfigurationError."""
    from contractspec.core import MemoryUnitOfWork
    from contractspec.jobs.sql import SqlJobQueue

    async with temporary_sql_engine("sqlite", tmp_path) as engine:
        queue = SqlJobQueue(engine, [send_email])
        tx = await MemoryUnitOfWork().begin()
        with pytest.raises(ConfigurationError, match="needs a SqlTransaction"):
            await queue.enqueue("mail.send", {"to": "ada@x.io"}, tx=tx)


class Invoice(BaseModel):
    invoice_id: str


invoice_overdue = define_event("billing.invoice.overdue", payload=Invoice)
mark_overdue = define_command(
    "billing.invoice.mark_overdue",
    input=Invoice,
    output=Invoice,
    emits=[invoice_overdue],
    auth=authenticated(),
)
remind = define_job("billing.invoice.remind", payload=Invoice, unique_key="remind:{invoice_id}")
escalate = define_job(
    "billing.invoice.escalate", payload=Invoice, unique_key="escalate:{invoice_id}"
)
remind_when_overdue = on_event(invoice_overdue, enqueue=remind)


async def test_two_orgs_with_the_same_unique_key_each_get_their_job(
    backend_kind: str, tmp_path: Path
) -> None:
    """Org B marking its invoice `inv-1` overdue after org A did gets its own reminder and
    escalation jobs (on_event and ctx.enqueue), not org A's ids; a repeat within an org dedupes."""
    registry = SpecRegistry(mark_overdue, invoice_overdue, remind, escalate, remind_when_overdue)

    @registry.handler(mark_overdue)
    async def handle(inp: Invoice, ctx: HandlerCtx) -> Invoice:
        await ctx.enqueue("billing.invoice.escalate", inp, org_id=ctx.org_id)
        ctx.emit(invoice_overdue, inp)
        return inp

    clock = FakeClock()
    org_a = CallContext(actor=Actor.user("u-a"), org_id="org-a")
    org_b = CallContext(actor=Actor.user("u-b"), org_id="org-b")

    async def scenario(executor: Executor, queue: JobQueue) -> None:
        for ctx in (org_a, org_b, org_a, org_b):
            await executor.execute("billing.invoice.mark_overdue", {"invoice_id": "inv-1"}, ctx)
        jobs = await queue.list()
        assert sorted((j.org_id, j.type, j.unique_key) for j in jobs) == [
            ("org-a", "billing.invoice.escalate", "escalate:inv-1"),
            ("org-a", "billing.invoice.remind", "remind:inv-1"),
            ("org-b", "billing.invoice.escalate", "escalate:inv-1"),
            ("org-b", "billing.invoice.remind", "remind:inv-1"),
        ]

    if backend_kind == "memory":
        backend = MemoryBackend()
        queue: JobQueue = MemoryJobQueue(registry, clock=clock)
        events = EventJobs(queue, registry, then=backend.events)
        await scenario(
            Executor(registry, backend=backend, jobs=queue, events=events, clock=clock), queue
        )
        return
    from contractspec.core.sql import SqlBackend
    from contractspec.jobs.sql import SqlJobQueue

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        sql_queue = SqlJobQueue(engine, registry, clock=clock)
        await sql_queue.create_all()
        events = EventJobs(sql_queue, registry, then=sql.events)
        await scenario(
            Executor(registry, backend=sql, jobs=sql_queue, events=events, clock=clock), sql_queue
        )
