"""PostgreSQL LISTEN/NOTIFY: an idle worker starts a job enqueued elsewhere without waiting to poll."""

from __future__ import annotations

import asyncio
import os

import pytest
from jobs_app import Email, send_email

from contractspec.core.testing import postgres_dsn, temporary_postgres_engine
from contractspec.jobs import JobContext, JobHandlers, JobStatus, Worker
from contractspec.jobs.sql import SqlJobQueue

pytestmark = pytest.mark.postgres


def _require_postgres() -> None:
    if postgres_dsn() is None:
        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "CONTRACTSPEC_REQUIRE_POSTGRES=1 but CONTRACTSPEC_TEST_POSTGRES_DSN is unset"
            )
        pytest.skip("LISTEN/NOTIFY needs CONTRACTSPEC_TEST_POSTGRES_DSN")


@pytest.mark.parametrize("in_transaction", [False, True])
async def test_notify_wakes_an_idle_worker_long_before_its_poll(in_transaction: bool) -> None:
    """A worker polling every 60 s runs a job enqueued by another process within seconds."""
    _require_postgres()
    async with temporary_postgres_engine() as engine:
        worker_queue = SqlJobQueue(engine, [send_email])
        await worker_queue.create_all()
        producer = SqlJobQueue(engine, [send_email])  # another queue object: no in-process wake-up
        handlers = JobHandlers()
        done = asyncio.Event()

        @handlers.handler(send_email)
        async def send(payload: Email, ctx: JobContext) -> None:
            done.set()

        worker = Worker(worker_queue, handlers, poll_interval=60, lease_for=30)
        run = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.5)  # the worker found nothing and is waiting on LISTEN
            if in_transaction:
                tx = await producer.unit_of_work.begin()
                job_id = await producer.enqueue(send_email, {"to": "ada@x.io"}, tx=tx)
                await tx.commit()
            else:
                job_id = await producer.enqueue(send_email, {"to": "ada@x.io"})
            await asyncio.wait_for(done.wait(), 10)
        finally:
            worker.stop()
            await asyncio.wait_for(run, 10)
        job = await producer.get(job_id)
        assert job is not None
        assert job.status is JobStatus.SUCCEEDED
        await producer.close()
