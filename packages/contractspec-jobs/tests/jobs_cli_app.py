"""Targets of the CLI tests (test_cli.py): `contractspec jobs worker jobs_cli_app:serve` etc.

`CLI_DB` names the SQLite file; `CLI_RUNS` a file each handler appends `<event> <job id>` to
(`started`, `finished`, `cancelled`), so the test sees what ran and what was interrupted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from pydantic import BaseModel

from contractspec.core.sql import sqlite_engine
from contractspec.jobs import (
    JobContext,
    JobHandlers,
    Scheduler,
    Worker,
    define_job,
    define_schedule,
    fixed,
)
from contractspec.jobs.sql import SqlJobQueue


class Nap(BaseModel):
    seconds: float


nap = define_job("cli.nap", payload=Nap, max_attempts=3, backoff=fixed(0))
every_second = define_schedule(nap, interval=timedelta(seconds=1), payload={"seconds": 0})
SPECS = [nap]
handlers = JobHandlers()


def note(event: str, job_id: str) -> None:
    fd = os.open(os.environ["CLI_RUNS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {job_id}\n".encode())
    finally:
        os.close(fd)


@handlers.handler(nap)
async def do_nap(payload: Nap, ctx: JobContext) -> None:
    note("started", ctx.job.id)
    try:
        await asyncio.sleep(payload.seconds)
    except asyncio.CancelledError:
        note("cancelled", ctx.job.id)
        raise
    note("finished", ctx.job.id)


@asynccontextmanager
async def serve() -> AsyncIterator[Worker]:
    """A worker on `CLI_DB` with a 1.5 s shutdown grace; the engine is disposed afterwards."""
    engine = sqlite_engine(os.environ["CLI_DB"])
    try:
        queue = SqlJobQueue(engine, SPECS)
        yield Worker(queue, handlers, concurrency=4, poll_interval=0.1, shutdown_grace=1.5)
    finally:
        await engine.dispose()


@asynccontextmanager
async def schedule() -> AsyncIterator[Scheduler]:
    """A scheduler of `every_second` on `CLI_DB`."""
    engine = sqlite_engine(os.environ["CLI_DB"])
    try:
        yield Scheduler(SqlJobQueue(engine, SPECS), [every_second], max_sleep=0.2)
    finally:
        await engine.dispose()


@asynccontextmanager
async def serve_postgres() -> AsyncIterator[Worker]:
    """A worker on the PostgreSQL database `CLI_DSN` (the missing-driver test hides psycopg)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(os.environ["CLI_DSN"])
    try:
        yield Worker(SqlJobQueue(engine, SPECS), handlers, poll_interval=0.1)
    finally:
        await engine.dispose()


not_a_worker = 42
