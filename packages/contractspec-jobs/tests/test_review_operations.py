"""Dead- and failed-job review queues as spec operations, through a real Executor with a policy."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from attrs import define, field
from jobs_app import Email, build_registry, send_email

from contractspec.core import (
    Actor,
    AuditRecord,
    Backend,
    CallContext,
    ConflictError,
    EventEnvelope,
    Executor,
    InternalError,
    MemoryBackend,
    NotFoundError,
    PolicyDeniedError,
    RolePermissions,
    SpecValidationError,
    Transaction,
)
from contractspec.core.http import create_app
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.jobs import JobContext, JobQueue, JobStatus, MemoryJobQueue, Worker
from contractspec.jobs.review import register_review_operations

POLICY = RolePermissions({"ops": {"jobs.review.*"}, "viewer": {"jobs.review.read"}})
OPS = CallContext(actor=Actor.user("u-ops", roles="ops"), org_id="org-1")
VIEWER = CallContext(actor=Actor.user("u-view", roles="viewer"), org_id="org-1")
OTHER_ORG = CallContext(actor=Actor.user("u-ops2", roles="ops"), org_id="org-2")


@define
class RecordedEvents:
    """An `EventPublisher` keeping what committed calls emitted."""

    events: list[EventEnvelope] = field(factory=list)
    broken: bool = False

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        if self.broken:
            raise ConnectionError("outbox unavailable")
        tx.on_commit(lambda: self.events.extend(events))


@define
class App:
    """The executor under test, its queue, and where its events and audit rows land."""

    executor: Executor
    queue: JobQueue
    events: RecordedEvents
    backend: Backend

    async def audit(self, org_id: str) -> list[AuditRecord]:
        audit = self.backend.audit
        if isinstance(self.backend, MemoryBackend):
            return [r for r in self.backend.audit.records if r.org_id == org_id]
        return [e.record for e in await audit.entries(org_id)]  # type: ignore[union-attr]

    async def run(self, op: str, data: dict[str, Any], ctx: CallContext = OPS) -> Any:
        return (await self.executor.execute(op, data, ctx)).model_dump(mode="json")


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[App]:
    """The review operations over a queue on memory, SQLite or PostgreSQL (executor on the same)."""
    registry = build_registry()
    clock = FakeClock()
    events = RecordedEvents()
    if backend_kind == "memory":
        queue: JobQueue = MemoryJobQueue(registry, clock=clock, ids=SequentialIds("job"))
        register_review_operations(registry, queue=queue)
        backend: Backend = MemoryBackend()
        executor = Executor(registry, backend=backend, policy=POLICY, events=events, clock=clock)
        yield App(executor, queue, events, backend)
        return
    from contractspec.core.sql import SqlBackend
    from contractspec.jobs.sql import SqlJobQueue

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql_queue = SqlJobQueue(engine, registry, clock=clock, ids=SequentialIds("job"))
        await sql_queue.create_all()
        register_review_operations(registry, queue=sql_queue)
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        executor = Executor(registry, backend=sql, policy=POLICY, events=events, clock=clock)
        try:
            yield App(executor, sql_queue, events, sql)
        finally:
            await sql_queue.close()


async def dead_job(queue: JobQueue, org_id: str | None = "org-1", **kw: Any) -> str:
    """Enqueue a job and fail its only lease for good."""
    job_type = kw.pop("job_type", "mail.send")
    payload = kw.pop("payload", {"to": "ada@example.com"})
    job_id = await queue.enqueue(job_type, payload, org_id=org_id, **kw)
    [job] = await queue.lease(worker_id="w", queues=[(await queue.get(job_id)).queue])  # type: ignore[union-attr]
    assert job.id == job_id
    assert job.lease_token is not None
    await queue.fail(job_id, job.lease_token, "SMTPError: 550 mailbox unavailable", retry_at=None)
    return job_id


async def failed_job(queue: JobQueue, org_id: str = "org-1") -> str:
    """A job whose last attempt failed and that is waiting to run again in an hour."""
    job_id = await queue.enqueue("mail.send", {"to": "bob@example.com"}, org_id=org_id)
    [job] = await queue.lease(worker_id="w")
    assert job.lease_token is not None
    retry_at = queue.clock.now() + timedelta(hours=1)
    await queue.fail(job_id, job.lease_token, "TimeoutError: smtp", retry_at=retry_at)
    return job_id


def mail_worker(queue: JobQueue, sent: list[str], *, fail: bool) -> Worker:
    """A worker for `mail.send` whose handler records the recipient, then fails if `fail`."""

    async def send(payload: Email, ctx: JobContext) -> None:
        sent.append(payload.to)
        if fail:
            raise OSError("550 mailbox unavailable")

    return Worker(queue, {send_email: send}, poll_interval=0.02, rng=random.Random(1))


async def test_a_retried_dead_job_runs_again_with_a_worker(app: App) -> None:
    """A job dead after 3 failed runs is listed, shown, retried, and the worker then runs it."""
    sent: list[str] = []
    job_id = await app.queue.enqueue("mail.send", {"to": "ada@example.com"}, org_id="org-1")
    await mail_worker(app.queue, sent, fail=True).run(until_idle=True)
    assert sent == ["ada@example.com"] * 3

    page = await app.run("jobs.review.dead.list", {})
    assert page["next_cursor"] is None
    [item] = page["items"]
    assert (item["id"], item["status"], item["attempts"], item["max_attempts"]) == (
        job_id,
        "dead",
        3,
        3,
    )
    assert item["payload"] == {"to": "ada@example.com", "subject": "hello"}
    assert "550 mailbox unavailable" in item["last_error"]
    assert await app.run("jobs.review.dead.show", {"job_id": job_id}) == item
    assert (await app.run("jobs.review.failed.list", {}))["items"] == []

    done = await app.run("jobs.review.dead.retry", {"job_id": job_id, "comment": "mailbox fixed"})
    assert (done["job"]["status"], done["job"]["attempts"]) == ("queued", 0)
    assert (await app.run("jobs.review.dead.list", {}))["items"] == []

    await mail_worker(app.queue, sent, fail=False).run(until_idle=True)
    assert sent == ["ada@example.com"] * 4
    job = await app.queue.get(job_id)
    assert job is not None
    assert job.status is JobStatus.SUCCEEDED

    [event] = app.events.events
    assert (event.name, event.org_id, event.actor_id) == (
        "jobs.review.dead.retried",
        "org-1",
        "u-ops",
    )
    assert event.payload.model_dump(mode="json") == {
        "job_id": job_id,
        "job_type": "mail.send",
        "previous_status": "dead",
        "status": "queued",
        "comment": "mailbox fixed",
    }
    audit = [(r.action, r.outcome) for r in await app.audit("org-1")]
    assert ("jobs.review.dead.retry", "success") in audit


async def test_discarding_dead_and_failed_jobs_cancels_them_for_good(app: App) -> None:
    """Discard turns a dead or failed job cancelled; it leaves its queue and never runs again."""
    dead_id = await dead_job(app.queue)
    failed_id = await failed_job(app.queue)
    failed = (await app.run("jobs.review.failed.list", {}))["items"]
    assert [(i["id"], i["status"]) for i in failed] == [(failed_id, "failed")]
    with pytest.raises(NotFoundError):  # a failed job is not in the dead queue
        await app.run("jobs.review.dead.show", {"job_id": failed_id})

    out = await app.run("jobs.review.failed.discard", {"job_id": failed_id})
    assert out["job"]["status"] == "cancelled"
    out = await app.run("jobs.review.dead.discard", {"job_id": dead_id, "comment": "spam"})
    assert out["job"]["status"] == "cancelled"
    assert (await app.run("jobs.review.failed.list", {}))["items"] == []
    assert (await app.run("jobs.review.dead.list", {}))["items"] == []

    sent: list[str] = []
    app.executor.clock.advance(timedelta(hours=2))  # type: ignore[attr-defined]
    await mail_worker(app.queue, sent, fail=False).run(until_idle=True)
    assert sent == []
    with pytest.raises(ConflictError, match="is cancelled, not dead"):
        await app.run("jobs.review.dead.discard", {"job_id": dead_id})
    assert [(e.name, e.payload.job_id) for e in app.events.events] == [  # type: ignore[attr-defined]
        ("jobs.review.failed.discarded", failed_id),
        ("jobs.review.dead.discarded", dead_id),
    ]


async def test_actions_need_the_act_permission_and_denials_are_audited(app: App) -> None:
    """A viewer lists but cannot retry (PolicyDeniedError, audited); no role sees nothing."""
    job_id = await dead_job(app.queue)
    assert len((await app.run("jobs.review.dead.list", {}, VIEWER))["items"]) == 1
    with pytest.raises(PolicyDeniedError):
        await app.run("jobs.review.dead.retry", {"job_id": job_id}, VIEWER)
    nobody = CallContext(actor=Actor.user("u-x"), org_id="org-1")
    with pytest.raises(PolicyDeniedError):
        await app.run("jobs.review.dead.list", {}, nobody)
    job = await app.queue.get(job_id)
    assert job is not None
    assert job.status is JobStatus.DEAD
    denied = [(r.action, r.actor_id) for r in await app.audit("org-1") if r.outcome == "denied"]
    assert denied == [("jobs.review.dead.retry", "u-view"), ("jobs.review.dead.list", "u-x")]
    assert app.events.events == []


async def test_another_orgs_job_is_not_found(app: App) -> None:
    """A job of org-2 is invisible to org-1: not listed, and show/retry/discard say not found."""
    theirs = await dead_job(app.queue, org_id="org-2")
    unscoped = await dead_job(app.queue, org_id=None)
    assert (await app.run("jobs.review.dead.list", {}))["items"] == []
    for op in ("show", "retry", "discard"):
        for job_id in (theirs, unscoped):
            with pytest.raises(NotFoundError, match="does not exist in this org"):
                await app.run(f"jobs.review.dead.{op}", {"job_id": job_id})
    job = await app.queue.get(theirs)
    assert job is not None
    assert job.status is JobStatus.DEAD
    listed = (await app.run("jobs.review.dead.list", {}, OTHER_ORG))["items"]
    assert [i["id"] for i in listed] == [theirs]
    no_org = CallContext(actor=Actor.user("u-ops", roles="ops"))
    assert [i["id"] for i in (await app.run("jobs.review.dead.list", {}, no_org))["items"]] == [
        unscoped
    ]


async def test_the_cursor_walks_every_dead_job_once_newest_first(app: App) -> None:
    """Pages of 3 over 8 dead jobs (some created at the same instant) return each exactly once."""
    clock: FakeClock = app.executor.clock  # type: ignore[assignment]
    ids = []
    for i in range(8):
        if i % 3 == 0:
            clock.advance(1)  # groups of jobs share a created_at: the id breaks the tie
        ids.append(await dead_job(app.queue, payload={"to": f"user{i}@example.com"}))
    await dead_job(app.queue, org_id="org-2")
    report = await dead_job(app.queue, job_type="crm.report.nightly", payload={"day": "mon"})

    seen: list[str] = []
    pages = []
    cursor = None
    while True:
        data: dict[str, Any] = {"limit": 3, "job_type": "mail.send"}
        if cursor is not None:
            data["cursor"] = cursor
        page = await app.run("jobs.review.dead.list", data)
        pages.append(len(page["items"]))
        seen.extend(i["id"] for i in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [3, 3, 2]
    # newest first: later created_at first, then (same instant) the larger id first
    assert seen == ids[::-1]
    everything = (await app.run("jobs.review.dead.list", {"limit": 200}))["items"]
    assert next(i["id"] for i in everything) == report


async def test_repeating_an_action_with_its_idempotency_key_replays_the_result(app: App) -> None:
    """A retry repeated with the same idempotency key returns the first result and acts once."""
    job_id = await dead_job(app.queue)
    keyed = OPS.replace(idempotency_key="retry-1")
    first = await app.run("jobs.review.dead.retry", {"job_id": job_id}, keyed)
    again = await app.run("jobs.review.dead.retry", {"job_id": job_id}, keyed)
    assert again == first
    assert [e.name for e in app.events.events] == ["jobs.review.dead.retried"]
    with pytest.raises(ConflictError, match="is queued, not dead"):
        await app.run("jobs.review.dead.retry", {"job_id": job_id})


async def test_an_action_rolls_back_with_its_call(app: App) -> None:
    """When the call fails after acting (its event cannot be published), the job stays dead."""
    job_id = await dead_job(app.queue)
    failed_id = await failed_job(app.queue)
    app.events.broken = True
    with pytest.raises(InternalError):
        await app.run("jobs.review.dead.retry", {"job_id": job_id})
    with pytest.raises(InternalError):
        await app.run("jobs.review.failed.discard", {"job_id": failed_id})
    job = await app.queue.get(job_id)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.DEAD, 1)
    failed = await app.queue.get(failed_id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    app.events.broken = False
    assert (await app.run("jobs.review.dead.retry", {"job_id": job_id}))["job"][
        "status"
    ] == "queued"


def test_review_specs_declare_permissions_events_and_pii() -> None:
    """Queries need jobs.review.read, actions jobs.review.act and emit their event; payloads are PII."""
    review = register_review_operations(build_registry(), queue=MemoryJobQueue())
    ops = review.operations
    assert sorted(ops) == sorted(
        f"jobs.review.{q}.{v}"
        for q in ("dead", "failed")
        for v in ("list", "show", "retry", "discard")
    )
    assert {
        n: ops[n].auth.permissions for n in ("jobs.review.dead.list", "jobs.review.failed.retry")
    } == {
        "jobs.review.dead.list": ("jobs.review.read",),
        "jobs.review.failed.retry": ("jobs.review.act",),
    }
    assert [ops[f"jobs.review.dead.{v}"].kind for v in ("list", "show", "retry", "discard")] == [
        "query",
        "query",
        "command",
        "command",
    ]
    assert ops["jobs.review.dead.discard"].idempotent is True
    assert [e.name for e in ops["jobs.review.failed.discard"].emits] == [  # type: ignore[union-attr]
        "jobs.review.failed.discarded"
    ]
    assert ops["jobs.review.dead.show"].pii == {"output.payload", "output.last_error"}
    assert ops["jobs.review.dead.list"].pii == {"output.items.payload", "output.items.last_error"}
    assert review.permissions == ("jobs.review.read", "jobs.review.act")


@pytest.mark.parametrize(
    ("op", "data", "field_name"),
    [
        ("jobs.review.dead.list", {"limit": 0}, "limit"),
        ("jobs.review.dead.list", {"limit": 201}, "limit"),
        ("jobs.review.dead.list", {"cursor": "not-a-cursor"}, "cursor"),
        ("jobs.review.dead.show", {}, "job_id"),
        ("jobs.review.failed.retry", {"job_id": ""}, "job_id"),
        ("jobs.review.dead.discard", {"job_id": "j", "comment": "x" * 2001}, "comment"),
    ],
)
async def test_bad_input_is_a_spec_validation_error(
    app: App, op: str, data: dict[str, Any], field_name: str
) -> None:
    """Out-of-range limits, a forged cursor or a missing id fail validation naming the field."""
    with pytest.raises(SpecValidationError, match=field_name):
        await app.run(op, data)


@pytest.mark.parametrize("backend_kind", ["memory"])
async def test_review_operations_are_served_over_http(app: App) -> None:
    """create_app serves the review queries as GET and the actions as POST routes."""
    job_id = await dead_job(app.queue)
    roles = {"ops": "ops", "viewer": "viewer"}

    def authenticate(request: Any) -> Actor | None:
        role = roles.get(request.headers.get("x-role", ""))
        return Actor.user(f"u-{role}", roles=role) if role else None

    http_app = create_app(app.executor, authenticate=authenticate, org_id=lambda r, a: "org-1")
    transport = httpx.ASGITransport(app=http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        listed = await client.get(
            "/jobs/review/dead/list/v1", params={"limit": 5}, headers={"x-role": "viewer"}
        )
        assert listed.status_code == 200
        assert [i["id"] for i in listed.json()["items"]] == [job_id]
        shown = await client.get(
            "/jobs/review/dead/show/v1", params={"job_id": job_id}, headers={"x-role": "viewer"}
        )
        assert (shown.status_code, shown.json()["status"]) == (200, "dead")
        denied = await client.post(
            "/jobs/review/dead/retry/v1", json={"job_id": job_id}, headers={"x-role": "viewer"}
        )
        assert denied.status_code == 403
        done = await client.post(
            "/jobs/review/dead/retry/v1", json={"job_id": job_id}, headers={"x-role": "ops"}
        )
        assert (done.status_code, done.json()["job"]["status"]) == (200, "queued")
        for path in ("/jobs/review/failed/list/v1", "/jobs/review/failed/show/v1"):
            assert (await client.post(path, json={})).status_code == 405
        for verb in ("retry", "discard"):
            assert (await client.get(f"/jobs/review/failed/{verb}/v1")).status_code == 405
