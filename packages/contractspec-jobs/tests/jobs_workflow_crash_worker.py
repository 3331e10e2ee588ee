"""A worker process for the workflow timer crash test: runs the ticket workflow's timer jobs.

Environment: `WF_KIND` (`sqlite` or `postgres`), `WF_DB` (SQLite file path or PostgreSQL DSN),
`WF_SCHEMA` (PostgreSQL schema), `WF_MODE` and `WF_MARKER` (a file path). `WF_MODE=hold_in_tx`
holds the expiry timer's transaction open after the transition ran (before commit);
`hold_after_commit` holds the job after its transaction committed (before the worker records the
job as done). Either way it touches `WF_MARKER` and sleeps, so the test SIGKILLs it there.
`WF_MODE=none` runs normally until SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from jobs_workflow_app import POLICY, build_registry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contractspec.core import Executor
from contractspec.core.handler import Invocation, NextFn
from contractspec.core.sql import SqlBackend, sqlite_engine
from contractspec.core.workflows import WorkflowTimerFire
from contractspec.jobs import JobContext, JobHandlers, Worker
from contractspec.jobs.sql import SqlJobQueue
from contractspec.jobs.workflows import workflow_timer_handlers

EXPIRE_AFTER = timedelta(seconds=2)
MODE = os.environ.get("WF_MODE", "none")
MARKER = Path(os.environ.get("WF_MARKER", "/nonexistent/marker"))


def _is_expiry(payload: Any) -> bool:
    return isinstance(payload, WorkflowTimerFire) and payload.timer == "open_expire"


async def _hold() -> None:
    MARKER.write_text(str(os.getpid()))  # noqa: ASYNC240 - one tiny write, then we are killed
    await asyncio.sleep(120)


class HoldInTransaction:
    """Middleware: after the expiry timer's handler ran, before its transaction commits."""

    async def __call__(self, invocation: Invocation, call_next: NextFn) -> BaseModel:
        result = await call_next(invocation)
        if MODE == "hold_in_tx" and _is_expiry(invocation.input):
            await _hold()
        return result


def _engine() -> AsyncEngine:
    if os.environ["WF_KIND"] == "sqlite":
        return sqlite_engine(Path(os.environ["WF_DB"]))
    return create_async_engine(
        os.environ["WF_DB"],
        connect_args={"options": f"-csearch_path={os.environ['WF_SCHEMA']}"},
    )


async def main() -> None:
    engine = _engine()
    registry = build_registry(expire_after=EXPIRE_AFTER)
    queue = SqlJobQueue(engine, registry)
    executor = Executor(
        registry,
        backend=SqlBackend(engine, registry),
        jobs=queue,
        policy=POLICY,
        middleware=[HoldInTransaction()],
    )
    base = workflow_timer_handlers(executor)
    spec, run = base.get("sup.ticket.timers")  # type: ignore[misc]

    async def maybe_hold_after_commit(payload: WorkflowTimerFire, ctx: JobContext) -> Any:
        result = await run(payload, ctx)
        if MODE == "hold_after_commit" and _is_expiry(payload):
            await _hold()
        return result

    worker = Worker(
        queue,
        JobHandlers({spec: maybe_hold_after_commit}),
        concurrency=2,
        lease_for=1.0,
        heartbeat_every=0.3,
        recover_every=0.5,
        poll_interval=0.2,
        shutdown_grace=5.0,
    )
    try:
        await worker.run(handle_signals=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
