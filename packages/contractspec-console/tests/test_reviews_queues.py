"""Dead jobs and dead letters sections: list, show, retry/replay, discard (memory/SQLite/PG)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bus_support import build_registry as bus_registry
from bus_support import envelope
from console_support import assert_safe_html
from jobs_app import build_registry as jobs_registry
from reviews_support import ReviewClient, review_console

from contractspec.bus import DeadLetterStore, EventBus, MemoryDeadLetterStore, RetryPolicy
from contractspec.bus.review import register_review_operations as bus_review
from contractspec.console.reviews import DeadJobs, DeadLetters
from contractspec.core import (
    Actor,
    Backend,
    ConfigurationError,
    EventEnvelope,
    Executor,
    MemoryBackend,
    RolePermissions,
)
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.core.testing.fixtures import backend_kind
from contractspec.jobs import JobQueue, JobStatus, MemoryJobQueue
from contractspec.jobs.review import register_review_operations as jobs_review

__all__ = ["backend_kind"]

ORG = "org-1"
POLICY = RolePermissions(
    {
        "ops": {"jobs.review.*", "bus.review.*"},
        "viewer": {"jobs.review.read", "bus.review.read"},
    }
)
USERS = {"ops": Actor.user("u-ops", roles="ops"), "viewer": Actor.user("u-view", roles="viewer")}
HOSTILE = '<script>alert("x")</script>'


class Jobs:
    def __init__(self, queue: JobQueue, executor: Executor) -> None:
        self.queue = queue
        app = review_console(executor, USERS, ORG, [DeadJobs(), DeadJobs(queue="failed")])
        self.client = ReviewClient(app, USERS, ORG)

    async def dead(self, payload: dict[str, str]) -> str:
        job_id = await self.queue.enqueue("mail.send", payload, org_id=ORG)
        [job] = await self.queue.lease(worker_id="w")
        assert job.lease_token is not None
        await self.queue.fail(job_id, job.lease_token, f"SMTPError: {HOSTILE}", retry_at=None)
        return job_id


@pytest.fixture
async def jobs(backend_kind: str, tmp_path: Path) -> AsyncIterator[Jobs]:
    registry = jobs_registry()
    clock = FakeClock()
    if backend_kind == "memory":
        queue: JobQueue = MemoryJobQueue(registry, clock=clock, ids=SequentialIds("job"))
        jobs_review(registry, queue=queue)
        j = Jobs(queue, Executor(registry, backend=MemoryBackend(), policy=POLICY, clock=clock))
        yield j
        await j.client.aclose()
        return
    from contractspec.core.sql import SqlBackend
    from contractspec.jobs.sql import SqlJobQueue

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql_queue = SqlJobQueue(engine, registry, clock=clock, ids=SequentialIds("job"))
        await sql_queue.create_all()
        jobs_review(registry, queue=sql_queue)
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        j = Jobs(sql_queue, Executor(registry, backend=sql, policy=POLICY, clock=clock))
        try:
            yield j
        finally:
            await j.client.aclose()
            await sql_queue.close()


async def test_dead_job_is_listed_shown_escaped_and_retried(jobs: Jobs) -> None:
    """The dead job's payload and error render as text; retry requeues it (303 back)."""
    job_id = await jobs.dead({"to": HOSTILE})
    listing = await jobs.client.page("ops", "/admin/dead-jobs/")
    assert listing.select_one(f'tr[data-id="{job_id}"]') is not None
    page = await jobs.client.page("ops", f"/admin/dead-jobs/{job_id}")
    assert page.select_one("pre.last-error").get_text() == f"SMTPError: {HOSTILE}"
    assert json.loads(page.select_one("pre.payload").get_text())["to"] == HOSTILE
    assert [f["action"] for f in page.select("form.action")] == [
        f"/admin/dead-jobs/{job_id}/retry",
        f"/admin/dead-jobs/{job_id}/discard",
    ]
    done = await jobs.client.post("ops", f"/admin/dead-jobs/{job_id}/retry", {"comment": "ok"})
    assert done.status_code == 303
    job = await jobs.queue.get(job_id)
    assert job is not None
    assert job.status is JobStatus.QUEUED
    assert (await jobs.client.page("ops", "/admin/dead-jobs/")).select("tbody tr") == []
    # no longer dead: its page in the dead queue is a 404
    assert (await jobs.client.get("ops", f"/admin/dead-jobs/{job_id}")).status_code == 404


async def test_discard_and_denial(jobs: Jobs) -> None:
    """A viewer is offered nothing and gets 403 when forcing; ops discard (cancelled)."""
    job_id = await jobs.dead({"to": "ada@example.com"})
    page = await jobs.client.page("viewer", f"/admin/dead-jobs/{job_id}")
    assert page.select("form.action") == []
    forced = await jobs.client.force("viewer", f"/admin/dead-jobs/{job_id}/discard", {})
    assert forced.status_code == 403
    assert (await jobs.queue.get(job_id)).status is JobStatus.DEAD  # type: ignore[union-attr]
    done = await jobs.client.post("ops", f"/admin/dead-jobs/{job_id}/discard", {})
    assert done.status_code == 303
    assert (await jobs.queue.get(job_id)).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    unknown = await jobs.client.force("ops", f"/admin/dead-jobs/{job_id}/explode", {})
    assert unknown.status_code == 404


NO_WAIT = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0)


class Letters:
    def __init__(self, store: DeadLetterStore, backend: Backend) -> None:
        registry = bus_registry()
        self.healthy = False
        self.delivered: list[str] = []
        self.bus = EventBus(
            retry=NO_WAIT,
            clock=FakeClock(),
            ids=SequentialIds("dl"),
            dead_letters=store,
            registry=registry,
        )
        bus_review(registry, bus=self.bus)
        executor = Executor(registry, backend=backend, policy=POLICY)

        def mailer(event: EventEnvelope) -> None:
            if not self.healthy:
                raise ConnectionError(f"smtp down {HOSTILE}")
            self.delivered.append(event.id)

        self.bus.subscribe("crm.deal.created", mailer, name="mailer")
        self.client = ReviewClient(
            review_console(executor, USERS, ORG, [DeadLetters()]), USERS, ORG
        )

    async def dead_letter(self, n: int) -> str:
        report = await self.bus.deliver(envelope(n, org_id=ORG))
        [outcome] = report.outcomes
        assert outcome.dead_letter_id is not None
        return outcome.dead_letter_id


@pytest.fixture
async def letters(backend_kind: str, tmp_path: Path) -> AsyncIterator[Letters]:
    if backend_kind == "memory":
        lt = Letters(MemoryDeadLetterStore(), MemoryBackend())
        yield lt
        await lt.client.aclose()
        return
    from contractspec.bus.sql import SqlDeadLetterStore, create_bus_tables
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        await create_bus_tables(engine)
        sql = SqlBackend(engine, bus_registry())
        await sql.create_all()
        lt = Letters(SqlDeadLetterStore(engine), sql)
        yield lt
        await lt.client.aclose()


async def test_dead_letter_replayed_through_the_form(letters: Letters) -> None:
    """A dead letter shows its error (escaped) and event; replay delivers it to the mailer."""
    letter = await letters.dead_letter(1)
    listing = await letters.client.page("viewer", "/admin/dead-letters/")
    assert listing.select_one(f'tr[data-id="{letter}"]') is not None
    page = await letters.client.page("ops", f"/admin/dead-letters/{letter}")
    assert HOSTILE in page.select_one("pre.last-error").get_text()
    assert [f["action"] for f in page.select("form.action")] == [
        f"/admin/dead-letters/{letter}/replay",
        f"/admin/dead-letters/{letter}/discard",
    ]
    letters.healthy = True
    done = await letters.client.post("ops", f"/admin/dead-letters/{letter}/replay", {})
    assert done.status_code == 303
    assert len(letters.delivered) == 1
    after = await letters.client.page("ops", f"/admin/dead-letters/{letter}")
    assert after.select_one("dd.status").get_text() == "replayed"
    assert after.select("form.action") == []


async def test_dead_letter_denial_and_discard(letters: Letters) -> None:
    """A viewer is offered nothing and gets 403 when forcing; ops discard the letter (gone)."""
    letter = await letters.dead_letter(2)
    page = await letters.client.page("viewer", f"/admin/dead-letters/{letter}")
    assert page.select("form.action") == []
    forced = await letters.client.force("viewer", f"/admin/dead-letters/{letter}/replay", {})
    assert forced.status_code == 403
    assert letters.delivered == []
    done = await letters.client.post(
        "ops", f"/admin/dead-letters/{letter}/discard", {"comment": "spam"}
    )
    assert done.status_code == 303
    gone = await letters.client.get("ops", f"/admin/dead-letters/{letter}")
    assert gone.status_code == 404
    assert_safe_html(gone.text)


def test_missing_packages_are_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without contractspec-jobs / -bus the sections name the package to install."""
    import sys

    monkeypatch.setitem(sys.modules, "contractspec.jobs.review", None)
    monkeypatch.setitem(sys.modules, "contractspec.bus.review", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'contractspec-jobs'"):
        DeadJobs()
    with pytest.raises(ConfigurationError, match=r"pip install 'contractspec-bus'"):
        DeadLetters()
