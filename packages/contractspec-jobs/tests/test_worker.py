"""Workers on every backend: results, retries, dead letter, timeouts, cancellation, shutdown."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from jobs_app import Email, Report, ReportResult, nightly_report, send_email
from pydantic import BaseModel

from contractspec.core import ConfigurationError, SpecDefinitionError, SpecRegistry
from contractspec.core.testing import FakeClock
from contractspec.jobs import (
    JobContext,
    JobHandlers,
    JobQueue,
    JobStatus,
    Worker,
    define_job,
    exponential,
    fixed,
)


class Slow(BaseModel):
    seconds: float


slow_job = define_job("test.slow", payload=Slow, timeout=0.2, max_attempts=1)
long_job = define_job("test.long", payload=Slow, max_attempts=2, backoff=fixed(0))


@pytest.fixture
def registry() -> SpecRegistry:
    """Test jobs plus slow and long-running ones."""
    from jobs_app import build_registry

    return build_registry(slow_job, long_job)


def fast_worker(queue: JobQueue, handlers: JobHandlers, **kwargs: Any) -> Worker:
    """A worker with short intervals so tests finish quickly."""
    kwargs.setdefault("poll_interval", 0.02)
    kwargs.setdefault("rng", random.Random(1))
    return Worker(queue, handlers, **kwargs)


async def test_worker_runs_jobs_and_stores_validated_results(queue: JobQueue) -> None:
    """Handlers get validated payloads and context; results are validated into the result model."""
    handlers = JobHandlers()
    seen: list[tuple[str, int, str]] = []

    @handlers.handler(nightly_report)
    async def report(payload: Report, ctx: JobContext) -> ReportResult:
        seen.append((payload.day, ctx.attempt, ctx.spec.ref))
        return ReportResult(rows=len(payload.day))

    @handlers.handler(send_email)
    async def send(payload: Email, ctx: JobContext) -> dict[str, str]:
        return {"sent_to": payload.to}

    r = await queue.enqueue("crm.report.nightly", {"day": "2024-01-01"})
    m = await queue.enqueue("mail.send", {"to": "ada@x.io"})
    stats = await fast_worker(queue, handlers).run(until_idle=True)
    assert (stats.succeeded, stats.dead, stats.retried) == (2, 0, 0)
    assert seen == [("2024-01-01", 1, "crm.report.nightly@1")]
    done_r, done_m = await queue.get(r), await queue.get(m)
    assert done_r is not None
    assert done_m is not None
    assert (done_r.status, done_r.result) == (JobStatus.SUCCEEDED, {"rows": 10})
    assert done_m.result == {"sent_to": "ada@x.io"}


async def test_failures_retry_with_backoff_then_dead_letter(queue: JobQueue) -> None:
    """A handler that keeps raising is retried max_attempts times, then dead-lettered with the error."""
    handlers = JobHandlers()
    calls: list[int] = []

    @handlers.handler(send_email)
    async def send(payload: Email, ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError(f"smtp down ({ctx.attempt})")

    job_id = await queue.enqueue("mail.send", {"to": "ada@x.io"})
    stats = await fast_worker(queue, handlers).run(until_idle=True)
    assert calls == [1, 2, 3]
    assert (stats.retried, stats.dead, stats.succeeded) == (2, 1, 0)
    job = await queue.get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.last_error) == (
        JobStatus.DEAD,
        3,
        "RuntimeError: smtp down (3)",
    )


async def test_retry_waits_for_the_backoff_delay(queue: JobQueue, clock: FakeClock) -> None:
    """After a failure the job is `failed` with scheduled_at = now + backoff delay."""
    flaky = define_job(
        "mail.send", payload=Email, max_attempts=3, backoff=exponential(10, 100, jitter=0)
    )
    handlers = JobHandlers()

    @handlers.handler(flaky)
    async def send(payload: Email, ctx: JobContext) -> None:
        raise ValueError("nope")

    job_id = await queue.enqueue("mail.send", {"to": "ada@x.io"})
    await fast_worker(queue, handlers).run(until_idle=True)
    job = await queue.get(job_id)
    assert job is not None
    assert (job.status, job.attempts, job.last_error) == (JobStatus.FAILED, 1, "ValueError: nope")
    assert (job.scheduled_at - clock.now()).total_seconds() == 10.0
    clock.advance(10)
    await fast_worker(queue, handlers).run(until_idle=True)
    job = await queue.get(job_id)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.FAILED, 2)
    assert (job.scheduled_at - clock.now()).total_seconds() == 20.0


async def test_job_without_handler_goes_to_dead_letter_with_a_clear_error(queue: JobQueue) -> None:
    """A job type the worker has no handler for is dead-lettered at once, never left queued."""
    handlers = JobHandlers()

    @handlers.handler(send_email)
    async def send(payload: Email, ctx: JobContext) -> None:
        return None

    job_id = await queue.enqueue("crm.report.nightly", {"day": "d"})
    worker = fast_worker(queue, handlers, queues=["default", "reports"], worker_id="w-1")
    stats = await worker.run(until_idle=True)
    assert stats.dead == 1
    job = await queue.get(job_id)
    assert job is not None
    assert job.status is JobStatus.DEAD
    assert job.attempts == 1
    assert job.last_error == (
        "no handler is registered for job type 'crm.report.nightly' on worker w-1 (it serves "
        "mail.send); bind one with JobHandlers.bind() or route the job to a queue that a worker "
        "with the handler serves"
    )


async def test_timeout_really_cancels_the_handler(queue: JobQueue) -> None:
    """A run past the spec's timeout is cancelled inside the handler and recorded as failed."""
    handlers = JobHandlers()
    events: list[str] = []

    @handlers.handler(slow_job)
    async def slow(payload: Slow, ctx: JobContext) -> None:
        events.append("started")
        try:
            await asyncio.sleep(payload.seconds)
            events.append("finished")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    job_id = await queue.enqueue("test.slow", {"seconds": 30})
    stats = await fast_worker(queue, handlers).run(until_idle=True)
    assert events == ["started", "cancelled"]
    assert stats.dead == 1
    job = await queue.get(job_id)
    assert job is not None
    assert job.status is JobStatus.DEAD
    assert job.last_error == "job test.slow@1 timed out after 0.2s and was cancelled (attempt 1/1)"


async def test_operator_cancel_stops_a_running_job(queue: JobQueue) -> None:
    """Cancelling a running job makes the next heartbeat fail and the handler is cancelled."""
    handlers = JobHandlers()
    started = asyncio.Event()
    events: list[str] = []

    @handlers.handler(long_job)
    async def long(payload: Slow, ctx: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(payload.seconds)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    job_id = await queue.enqueue("test.long", {"seconds": 30})
    worker = fast_worker(queue, handlers, lease_for=0.3)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    assert await queue.cancel(job_id) is True
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.02)
    worker.stop()
    stats = await asyncio.wait_for(run, 5)
    assert events == ["cancelled"]
    assert stats.lost == 1
    job = await queue.get(job_id)
    assert job is not None
    assert job.status is JobStatus.CANCELLED


async def test_graceful_stop_releases_unfinished_jobs(queue: JobQueue) -> None:
    """On stop, running jobs get the grace period, then are cancelled and released unrun."""
    handlers = JobHandlers()
    started = asyncio.Event()

    @handlers.handler(long_job)
    async def long(payload: Slow, ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(payload.seconds)

    @handlers.handler(send_email)
    async def send(payload: Email, ctx: JobContext) -> None:
        await asyncio.sleep(0.05)

    stuck = await queue.enqueue("test.long", {"seconds": 30})
    worker = fast_worker(queue, handlers, shutdown_grace=0.2, concurrency=2)
    run = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 5)
    quick = await queue.enqueue("mail.send", {"to": "ada@x.io"})
    await asyncio.sleep(0.1)
    worker.stop()
    stats = await asyncio.wait_for(run, 5)
    assert (stats.released, stats.succeeded) == (1, 1)
    released, finished = await queue.get(stuck), await queue.get(quick)
    assert released is not None
    assert finished is not None
    assert (released.status, released.attempts) == (JobStatus.QUEUED, 0)
    assert finished.status is JobStatus.SUCCEEDED


async def test_worker_runs_up_to_concurrency_jobs_at_once(queue: JobQueue) -> None:
    """With concurrency 4, four jobs run in parallel and never more."""
    handlers = JobHandlers()
    active = 0
    peak = 0

    @handlers.handler(send_email)
    async def send(payload: Email, ctx: JobContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.03)
        active -= 1

    await queue.enqueue_many([("mail.send", {"to": f"u{i}@x.io"}) for i in range(12)])
    stats = await fast_worker(queue, handlers, concurrency=4).run(until_idle=True)
    assert stats.succeeded == 12
    assert peak == 4


def test_handlers_and_worker_settings_are_checked() -> None:
    """Sync handlers, duplicate bindings and bad worker settings are refused with the fix."""
    handlers = JobHandlers()

    def sync(payload: Email, ctx: JobContext) -> None:
        return None

    async def one_arg(payload: Email) -> None:
        return None

    async def ok(payload: Email, ctx: JobContext) -> None:
        return None

    async def other(payload: Email, ctx: JobContext) -> None:
        return None

    with pytest.raises(SpecDefinitionError, match="must be an async function"):
        handlers.bind(send_email, sync)  # type: ignore[arg-type]
    with pytest.raises(SpecDefinitionError, match="must take two arguments"):
        handlers.bind(send_email, one_arg)  # type: ignore[arg-type]
    handlers.bind(send_email, ok)
    handlers.bind(send_email, ok)
    with pytest.raises(SpecDefinitionError, match="already has a handler"):
        handlers.bind(send_email, other)
    from contractspec.jobs import MemoryJobQueue

    with pytest.raises(ConfigurationError, match="concurrency must be an integer >= 1"):
        Worker(MemoryJobQueue(), handlers, concurrency=0)
    with pytest.raises(ConfigurationError, match="heartbeat_every must be between 0 and lease_for"):
        Worker(MemoryJobQueue(), handlers, lease_for=1, heartbeat_every=2)
    assert Worker(MemoryJobQueue(), handlers).queues == ["default"]
