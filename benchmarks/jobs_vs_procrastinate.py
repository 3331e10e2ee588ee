"""Job throughput on PostgreSQL: contractspec-jobs' `SqlJobQueue` vs procrastinate, side by side.

Run with a PostgreSQL DSN (each library gets its own fresh schema, dropped afterwards):

    CONTRACTSPEC_TEST_POSTGRES_DSN=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        uv run --all-packages --all-extras --group bench python benchmarks/jobs_vs_procrastinate.py

What is measured, for both libraries, alternating rounds and printing medians and ratios:

1. **enqueue**: `ENQUEUE` jobs enqueued one by one, each in its own transaction
   (`await queue.enqueue(...)` vs `await task.defer_async()`), from one process;
2. **process, 1 and 4 worker processes**: `PROCESS` no-op jobs are queued, then worker processes
   (started and connected beforehand, released together) drain the queue at `CONCURRENCY` jobs at a
   time each; jobs/s = jobs / (last worker's finish - release);
3. **backlog** (ours): one worker process takes `PROCESS` jobs from a queue holding 100,000 due jobs,
   compared with taking them from a queue holding only those jobs; the ratio shows the backlog does
   not slow dequeue (the partial dequeue index is read in order, never sorted).

Goal (issue 6): >= 1x procrastinate per worker, near-linear scaling to 4 workers, flat with backlog.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

from pydantic import BaseModel

DSN = os.environ.get("CONTRACTSPEC_TEST_POSTGRES_DSN", "")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
ENQUEUE = int(os.environ.get("BENCH_ENQUEUE", "2000"))
PROCESS = int(os.environ.get("BENCH_PROCESS", "4000"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "100000"))
CONCURRENCY = 10


class Noop(BaseModel):
    n: int


def _libpq(dsn: str) -> str:
    return dsn.replace("postgresql+psycopg://", "postgresql://")


# -- contractspec-jobs ---------------------------------------------------------------------------


def ours_queue(schema: str) -> Any:
    from sqlalchemy.ext.asyncio import create_async_engine

    from contractspec.jobs import define_job
    from contractspec.jobs.sql import SqlJobQueue

    engine = create_async_engine(
        DSN, connect_args={"options": f"-csearch_path={schema}"}, pool_size=CONCURRENCY + 2
    )
    job = define_job("bench.noop", payload=Noop)
    return engine, job, SqlJobQueue(engine, [job])


async def ours_worker(schema: str, limit: int) -> float:
    from contractspec.jobs import JobContext, JobHandlers, Worker

    engine, job, queue = ours_queue(schema)
    handlers = JobHandlers()
    worker: Worker | None = None
    done = 0

    @handlers.handler(job)
    async def noop(payload: Noop, ctx: JobContext) -> None:
        nonlocal done
        done += 1
        if limit and done >= limit and worker is not None:
            worker.stop()

    worker = Worker(queue, handlers, concurrency=CONCURRENCY, poll_interval=0.05, worker_id=None)
    await queue.lease(worker_id="warmup", limit=1, queues=["warmup"])  # connect before the start
    ready_and_wait()
    await worker.run(until_idle=not limit)
    finished = time.time()
    await engine.dispose()
    return finished


# -- procrastinate -------------------------------------------------------------------------------


def procrastinate_app(schema: str) -> Any:
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=_libpq(DSN),
            kwargs={"options": f"-csearch_path={schema}"},
            max_size=CONCURRENCY + 2,
        )
    )

    @app.task(name="bench.noop")
    async def noop(n: int) -> None:
        return None

    return app, noop


async def procrastinate_worker(schema: str, limit: int) -> float:
    app, _ = procrastinate_app(schema)
    async with app.open_async():
        await app.job_manager.list_jobs_async(id=0)  # connect before the start
        ready_and_wait()
        await app.run_worker_async(
            concurrency=CONCURRENCY, wait=False, install_signal_handlers=False
        )
        # Timed before the pool closes, as ours is timed before `engine.dispose()`.
        return time.time()


# -- worker processes ----------------------------------------------------------------------------


def ready_and_wait() -> None:
    print("ready", flush=True)
    sys.stdin.readline()


async def run_workers(kind: str, schema: str, processes: int, limit: int = 0) -> float:
    """Start `processes` workers, release them together, return the elapsed seconds until the
    last one finished."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "worker",
            kind,
            schema,
            str(limit),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    for proc in procs:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        assert line.strip() == b"ready", line
    start = time.time()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    ends = []
    for proc in procs:
        out, _ = await proc.communicate()
        ends.append(json.loads(out.decode().strip().splitlines()[-1])["finished"])
    return max(ends) - start


# -- the benchmark -------------------------------------------------------------------------------


async def schema_sql(sql: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(_libpq(DSN), autocommit=True) as conn:
        await conn.execute(sql)


async def fresh(kind: str) -> str:
    schema = f"bench_{kind}_{uuid.uuid4().hex[:8]}"
    await schema_sql(f'CREATE SCHEMA "{schema}"')
    if kind == "ours":
        engine, _, queue = ours_queue(schema)
        await queue.create_all()
        await engine.dispose()
    else:
        app, _ = procrastinate_app(schema)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
    return schema


async def drop(schema: str) -> None:
    await schema_sql(f'DROP SCHEMA "{schema}" CASCADE')


async def enqueue_rate(kind: str, schema: str) -> float:
    if kind == "ours":
        engine, job, queue = ours_queue(schema)
        await queue.enqueue(job, {"n": -1}, queue="warmup")
        start = time.perf_counter()
        for n in range(ENQUEUE):
            await queue.enqueue(job, {"n": n})
        elapsed = time.perf_counter() - start
        await engine.dispose()
        return ENQUEUE / elapsed
    app, noop = procrastinate_app(schema)
    async with app.open_async():
        await noop.defer_async(n=-1)
        start = time.perf_counter()
        for n in range(ENQUEUE):
            await noop.defer_async(n=n)
        elapsed = time.perf_counter() - start
    return ENQUEUE / elapsed


async def fill(kind: str, schema: str, count: int) -> None:
    """Queue `count` jobs in bulk (not timed)."""
    if kind == "ours":
        engine, job, queue = ours_queue(schema)
        for start in range(0, count, 5000):
            await queue.enqueue_many(
                [(job, {"n": n}) for n in range(start, min(count, start + 5000))]
            )
        await engine.dispose()
        return
    app, noop = procrastinate_app(schema)
    async with app.open_async():
        for start in range(0, count, 5000):
            await noop.batch_defer_async(
                *({"n": n} for n in range(start, min(count, start + 5000)))
            )


async def main() -> None:
    if not DSN:
        sys.exit("set CONTRACTSPEC_TEST_POSTGRES_DSN to a postgresql+psycopg:// DSN")
    results: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    for round_no in range(ROUNDS):
        for kind in ("ours", "procrastinate"):
            schema = await fresh(kind)
            try:
                record(f"enqueue/{kind}", await enqueue_rate(kind, schema))
            finally:
                await drop(schema)
            for processes in (1, 4):
                schema = await fresh(kind)
                try:
                    await fill(kind, schema, PROCESS)
                    elapsed = await run_workers(kind, schema, processes)
                    record(f"process{processes}/{kind}", PROCESS / elapsed)
                finally:
                    await drop(schema)
        # Backlog: take PROCESS jobs from a 100k backlog vs from a queue of just those jobs.
        schema = await fresh("ours")
        try:
            await fill("ours", schema, BACKLOG)
            record("backlog/ours", PROCESS / await run_workers("ours", schema, 1, limit=PROCESS))
        finally:
            await drop(schema)
        schema = await fresh("ours")
        try:
            await fill("ours", schema, PROCESS)
            record("small/ours", PROCESS / await run_workers("ours", schema, 1, limit=PROCESS))
        finally:
            await drop(schema)
        print(f"round {round_no + 1}/{ROUNDS} done", file=sys.stderr, flush=True)

    def med(key: str) -> float:
        return statistics.median(results[key])

    print(f"PostgreSQL, {ROUNDS} rounds (medians), concurrency {CONCURRENCY} per worker process")
    print(f"{'measure':<44}{'contractspec-jobs':>18}{'procrastinate':>15}{'ratio':>8}")
    rows = [
        (f"enqueue, one transaction each ({ENQUEUE} jobs)", "enqueue"),
        (f"process {PROCESS} no-op jobs, 1 worker", "process1"),
        (f"process {PROCESS} no-op jobs, 4 workers", "process4"),
    ]
    for label, key in rows:
        ours, theirs = med(f"{key}/ours"), med(f"{key}/procrastinate")
        print(f"{label:<44}{ours:>14,.0f}/s{theirs:>11,.0f}/s{ours / theirs:>7.2f}x")
    for kind in ("ours", "procrastinate"):
        scale = med(f"process4/{kind}") / med(f"process1/{kind}")
        print(f"scaling 1 -> 4 workers, {kind:<21}{scale:>10.2f}x")
    small, backlog = med("small/ours"), med("backlog/ours")
    print(
        f"dequeue {PROCESS} jobs, 1 worker: queue of {PROCESS}: {small:,.0f}/s; with "
        f"{BACKLOG:,} queued: {backlog:,.0f}/s (ratio {backlog / small:.2f})"
    )


def worker_main(kind: str, schema: str, limit: str) -> None:
    import logging

    logging.disable(logging.CRITICAL)
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
    )
    runner = ours_worker if kind == "ours" else procrastinate_worker
    finished = asyncio.run(runner(schema, int(limit)))
    print(json.dumps({"finished": finished}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker_main(*sys.argv[2:5])
    else:
        asyncio.run(main())
