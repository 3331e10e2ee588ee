"""A worker process for the crash test: runs `crash.effect` jobs until SIGTERM (or SIGKILL).

Usage: `python jobs_crash_worker.py zygote` with `CRASH_DSN` and `CRASH_SCHEMA` set. The zygote
imports everything once, then forks a fresh worker process for each `spawn` line on its standard
input and prints the child's pid (forking takes milliseconds; a cold interpreter start takes seconds
on a busy machine, which would make killing workers again and again slow). Each run records its
start in `crash_runs`, sleeps 100-400 ms (so kills land mid-job), then writes its effect to
`crash_effects` idempotently (`ON CONFLICT DO NOTHING` on the job id).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contractspec.jobs import JobContext, JobHandlers, Worker, define_job, fixed
from contractspec.jobs.sql import SqlJobQueue


class Effect(BaseModel):
    n: int


effect_job = define_job("crash.effect", payload=Effect, max_attempts=20, backoff=fixed(0.05))
orphan_job = define_job("crash.orphan", payload=Effect)


async def main() -> None:
    engine = create_async_engine(
        os.environ["CRASH_DSN"],
        connect_args={"options": f"-csearch_path={os.environ['CRASH_SCHEMA']}"},
    )
    queue = SqlJobQueue(engine, [effect_job, orphan_job])
    handlers = JobHandlers()

    @handlers.handler(effect_job)
    async def run(payload: Effect, ctx: JobContext) -> dict[str, int]:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO crash_runs (job_id, attempt) VALUES (:j, :a)"),
                {"j": ctx.job.id, "a": ctx.attempt},
            )
        await asyncio.sleep(random.uniform(0.1, 0.4))
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO crash_effects (job_id, n) VALUES (:j, :n) "
                    "ON CONFLICT (job_id) DO NOTHING"
                ),
                {"j": ctx.job.id, "n": payload.n},
            )
        return {"n": payload.n}

    worker = Worker(
        queue,
        handlers,
        concurrency=4,
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


def zygote() -> None:
    """Fork a worker per `spawn` line on stdin; print each child's pid."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    for line in sys.stdin:
        if line.strip() != "spawn":
            continue
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 0)
            code = 0
            try:
                asyncio.run(main())
            except BaseException:
                code = 1
            os._exit(code)
        print(pid, flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["zygote"]:
        zygote()
    else:
        asyncio.run(main())
