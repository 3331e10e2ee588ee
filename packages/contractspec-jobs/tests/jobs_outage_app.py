"""The jobs, worker and scheduler of the outage tests (test_outages.py).

As a process: `python jobs_outage_app.py worker|scheduler` with `OUTAGE_DSN` (the database) and
`OUTAGE_RUNS` (a file each run appends `<job id> <attempt>` to, before it does anything else, so a
job started twice shows up twice) set; it runs until SIGTERM and logs JSON lines on stdout.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from typing import Any

import structlog
from pydantic import BaseModel

from contractspec.jobs import (
    JobContext,
    JobHandlers,
    JobQueue,
    Scheduler,
    Worker,
    define_job,
    define_schedule,
    fixed,
)


class Work(BaseModel):
    n: int
    seconds: float


class Tick(BaseModel):
    pass


work = define_job("outage.work", payload=Work, max_attempts=5, backoff=fixed(0.1))
tick = define_job("outage.tick", payload=Tick, max_attempts=5, backoff=fixed(0.1))
every_second = define_schedule(
    tick, interval=timedelta(seconds=1), coalesce=False, misfire_grace=timedelta(minutes=5)
)
SPECS = [work, tick]

#: Worker settings: a short lease, so a few seconds of outage outlast it several times.
LEASE = 1.0
WORKER_SETTINGS: dict[str, Any] = {
    "lease_for": LEASE,
    "heartbeat_every": 0.25,
    "recover_every": 0.3,
    "poll_interval": 0.1,
    "shutdown_grace": 10.0,
}


def handlers(record: Any) -> JobHandlers:
    """Handlers that call `record(job_id, attempt)` first, then sleep `seconds` (work)."""
    bound = JobHandlers()

    @bound.handler(work)
    async def do_work(payload: Work, ctx: JobContext) -> dict[str, int]:
        record(ctx.job.id, ctx.attempt)
        await asyncio.sleep(payload.seconds)
        return {"n": payload.n}

    @bound.handler(tick)
    async def do_tick(payload: Tick, ctx: JobContext) -> None:
        record(ctx.job.id, ctx.attempt)

    return bound


def make_worker(queue: JobQueue, record: Any, **settings: Any) -> Worker:
    """A worker of both job types with the outage settings."""
    return Worker(queue, handlers(record), **{"concurrency": 5, **WORKER_SETTINGS, **settings})


def make_scheduler(queue: JobQueue) -> Scheduler:
    """A scheduler of `every_second` that retries quickly."""
    return Scheduler(queue, [every_second], max_sleep=0.3)


def append_run(path: str) -> Any:
    def record(job_id: str, attempt: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job_id} {attempt}\n".encode())  # one write: atomic with O_APPEND
        finally:
            os.close(fd)

    return record


async def main(role: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from contractspec.jobs.sql import SqlJobQueue

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    engine = create_async_engine(os.environ["OUTAGE_DSN"])
    queue = SqlJobQueue(engine, SPECS)
    try:
        if role == "worker":
            await make_worker(queue, append_run(os.environ["OUTAGE_RUNS"])).run(handle_signals=True)
        else:
            await make_scheduler(queue).run(handle_signals=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
