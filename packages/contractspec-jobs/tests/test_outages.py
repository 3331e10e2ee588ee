"""Database outages longer than the lease, under running workers and a scheduler (issue 14).

While the database does not answer, workers and schedulers back off, keep extending the leases of
running jobs and of finished jobs whose outcome is not stored yet, and log one line when the
database goes away and one when it comes back; afterwards no job has run twice, none is lost, and
the processes go on working. On PostgreSQL a real server is stopped and restarted under worker and
scheduler processes; on SQLite another connection holds the write lock.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jobs_outage_app import LEASE, SPECS, make_scheduler, make_worker, tick, work
from jobs_pg_server import ThrowawayPostgres, find_postgres_bin
from structlog.testing import capture_logs

from contractspec.jobs import Job, JobQueue, JobStatus

APP = Path(__file__).with_name("jobs_outage_app.py")
UNAVAILABLE = "contractspec.jobs.database_unavailable"
AVAILABLE = "contractspec.jobs.database_available"


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    """Poll `check` every 50 ms until it holds; fail naming `what` after `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            while not await check():  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {seconds}s waiting for {what}")


async def all_jobs(queue: JobQueue) -> list[Job]:
    return await queue.list(limit=10_000)


def assert_each_job_ran_once(jobs: list[Job], runs: list[str]) -> None:
    """Every job succeeded on its first lease, and its handler started exactly once."""
    assert Counter(runs) == Counter({job.id: 1 for job in jobs})
    assert {(job.status, job.attempts) for job in jobs} == {(JobStatus.SUCCEEDED, 1)}


def assert_every_fire_once(jobs: list[Job], after: datetime) -> None:
    """The one-second schedule's fires form an unbroken sequence (none lost, none twice), with
    fires after `after` (the scheduler kept working)."""
    fires = sorted(job.scheduled_at for job in jobs if job.type == tick.name)
    assert len(fires) >= 4
    assert {b - a for a, b in itertools.pairwise(fires)} == {timedelta(seconds=1)}
    assert fires[-1] > after


def warnings_and_errors(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(
        e["event"] for e in events if e.get("log_level", e.get("level")) in ("warning", "error")
    )


# -- Results that cannot be stored while the database still answers other calls ------------------


class ResultsFail:
    """A queue whose `complete_many` raises `ConnectionError` while `down` (counting the calls);
    everything else goes to the real queue (heartbeats still work)."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.down = True
        self.complete_calls = 0

    async def complete_many(self, *args: Any, **kwargs: Any) -> Any:
        self.complete_calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        return await self.queue.complete_many(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)


async def test_unrecorded_result_keeps_its_lease_and_is_retried_with_backoff() -> None:
    """A finished job whose result cannot be stored for 3x the lease keeps its lease (so another,
    healthy worker sweeping every 0.3 s does not run it again), storing is retried with backoff
    (tens of attempts, not thousands), one warning is logged, and the result is stored once the
    database takes it."""
    from contractspec.jobs import MemoryJobQueue

    queue = MemoryJobQueue(SPECS)
    flaky = ResultsFail(queue)
    runs: list[str] = []
    job_id = await queue.enqueue(work, {"n": 1, "seconds": 0})
    holder = make_worker(flaky, lambda job_id, attempt: runs.append(job_id), concurrency=1)
    other = make_worker(queue, lambda job_id, attempt: runs.append(job_id), concurrency=1)
    with capture_logs() as events:
        tasks = [asyncio.create_task(holder.run())]

        async def finished() -> bool:
            return holder.unrecorded == 1

        await until(finished, 5, "the job to finish with its result unrecorded")
        tasks.append(asyncio.create_task(other.run()))
        await asyncio.sleep(3 * LEASE)
        job = await queue.get(job_id)
        assert job is not None
        assert job.status is JobStatus.RUNNING  # still held by `holder`
        calls_during_outage = flaky.complete_calls
        flaky.down = False
        await until(lambda: _succeeded(queue, job_id), 5, "the result to be stored")

        async def back() -> bool:
            return any(e["event"] == AVAILABLE for e in events)

        await until(back, 5, "the worker to log that the database is back")
        holder.stop()
        other.stop()
        held, _ = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert runs == [job_id]
    assert held.succeeded == 1
    assert held.lost == 0
    assert 3 <= calls_during_outage <= 40, calls_during_outage
    assert warnings_and_errors(events) == Counter({UNAVAILABLE: 1})
    assert [e["failed_calls"] for e in events if e["event"] == AVAILABLE] == [calls_during_outage]


# -- SQLite: another connection holds the write lock for longer than the lease ----------------------


async def hold_write_lock(path: Path, seconds: float) -> None:
    """Take SQLite's write lock from another connection (as a long migration or backup would)
    and hold it for `seconds`."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        while True:
            try:
                conn.execute("BEGIN EXCLUSIVE")
                break
            except sqlite3.OperationalError:  # a worker is mid-transaction: try again shortly
                await asyncio.sleep(0.001)
        await asyncio.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_sqlite_write_lock_longer_than_the_lease_runs_no_job_twice(tmp_path: Path) -> None:
    """A write lock held 3x the lease under a worker (long jobs running, short ones finishing)
    and a scheduler: one log line each when writes fail and when they work again, bounded
    retries, then every job has run exactly once and every fire time is enqueued once."""
    from contractspec.core.sql import sqlite_engine
    from contractspec.jobs.sql import SqlJobQueue

    path = tmp_path / "jobs.db"
    engine = sqlite_engine(path, busy_timeout_ms=100)
    runs: list[str] = []
    try:
        queue = SqlJobQueue(engine, SPECS)
        await queue.create_all()
        await queue.enqueue_many([(work, {"n": i, "seconds": 2.0}) for i in range(3)], priority=10)
        await queue.enqueue_many([(work, {"n": i, "seconds": 0.1 * (i % 3)}) for i in range(20)])
        worker = make_worker(queue, lambda job_id, attempt: runs.append(job_id), concurrency=6)
        scheduler = make_scheduler(queue)
        with capture_logs() as events:
            tasks = [asyncio.create_task(worker.run()), asyncio.create_task(scheduler.run())]

            async def long_jobs_running() -> bool:
                running = await queue.list(status="running")
                ticks = await queue.list(status="succeeded", job_type=tick.name)
                return (
                    sum(j.payload.get("seconds") == 2.0 for j in running) == 3 and len(ticks) >= 1
                )

            await until(long_jobs_running, 10, "the long jobs to run and a first tick")
            await hold_write_lock(path, 3 * LEASE)
            unlocked = datetime.now(UTC)
            assert not any(task.done() for task in tasks)

            async def drained() -> bool:
                jobs = await all_jobs(queue)
                fires_after = [j for j in jobs if j.type == tick.name and j.scheduled_at > unlocked]
                return len(fires_after) >= 2 and all(j.status is JobStatus.SUCCEEDED for j in jobs)

            await until(drained, 15, "every job to succeed and two more fires")
            later = await queue.enqueue(work, {"n": 99, "seconds": 0})
            await until(lambda: _succeeded(queue, later), 5, "a job enqueued after the lock to run")
            scheduler.stop()  # first (it fires every second), then the worker once it is idle
            await asyncio.wait_for(tasks[1], 10)
            await until(lambda: _all_succeeded(queue), 5, "the scheduler's last fires to run")
            worker.stop()
            stats, _ = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        jobs = await all_jobs(queue)
    finally:
        await engine.dispose()
    assert_each_job_ran_once(jobs, runs)
    assert_every_fire_once(jobs, unlocked)
    assert stats.lost == 0
    # One line when the database stopped answering and one when it answered again, per component.
    assert warnings_and_errors(events) == Counter({UNAVAILABLE: 2})
    back = [e for e in events if e["event"] == AVAILABLE]
    assert sorted("worker_id" in e for e in back) == [False, True]
    # Backoff, not a busy loop: a few failed calls per second of outage (not ~800).
    assert all(e["failed_calls"] <= 40 for e in back), back


async def _all_succeeded(queue: JobQueue) -> bool:
    return all(job.status is JobStatus.SUCCEEDED for job in await all_jobs(queue))


async def _succeeded(queue: JobQueue, job_id: str) -> bool:
    job = await queue.get(job_id)
    return job is not None and job.status is JobStatus.SUCCEEDED


# -- PostgreSQL: the server is stopped and restarted under worker and scheduler processes -----------


def postgres_bin() -> Path:
    """The PostgreSQL server binaries; skip (or fail under CONTRACTSPEC_REQUIRE_POSTGRES=1)."""
    found = find_postgres_bin()
    if found is None:
        reason = (
            "the outage test starts and stops its own PostgreSQL server and found no binaries "
            "under /usr/lib/postgresql/*/bin (install the postgresql package, or set "
            "CONTRACTSPEC_PG_BIN)"
        )
        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CONTRACTSPEC_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    return found


class Process:
    """A worker or scheduler process of jobs_outage_app.py, its JSON log lines collected."""

    def __init__(self, role: str, proc: asyncio.subprocess.Process) -> None:
        self.role = role
        self.proc = proc
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._reader = asyncio.create_task(self._read(proc.stdout))

    @classmethod
    async def start(cls, role: str, env: dict[str, str]) -> Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(APP), role, env=env, stdout=asyncio.subprocess.PIPE
        )
        return cls(role, proc)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self.lines.append(line.decode())

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def alive(self) -> bool:
        return self.proc.returncode is None

    async def terminate(self) -> int:
        """SIGTERM; the exit code (the process is killed if it has not exited after 20 s)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        await self._reader
        return code


@pytest.mark.slow
async def test_postgres_restart_longer_than_the_lease_runs_no_job_twice(tmp_path: Path) -> None:
    """PostgreSQL stopped for 3x the lease under two worker processes (long jobs running across the
    outage, short ones finishing during it) and a scheduler process: they survive, log one line
    when the server goes and one when it is back, and afterwards every job has run exactly once,
    every fire time is enqueued once, and new work runs; SIGTERM stops each with exit code 0."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from contractspec.jobs.sql import SqlJobQueue

    server = await ThrowawayPostgres.create(postgres_bin())
    engine = create_async_engine(server.dsn)
    processes: list[Process] = []
    codes: list[int] = []
    runs_file = tmp_path / "runs.txt"
    try:
        queue = SqlJobQueue(engine, SPECS)
        await queue.create_all()
        await queue.enqueue_many([(work, {"n": i, "seconds": 6.0}) for i in range(6)], priority=10)
        await queue.enqueue_many([(work, {"n": i, "seconds": 0.1 * (i % 4)}) for i in range(40)])
        env = {**os.environ, "OUTAGE_DSN": server.dsn, "OUTAGE_RUNS": str(runs_file)}
        processes = [await Process.start(role, env) for role in ("worker", "worker", "scheduler")]

        async def long_jobs_running() -> bool:
            running = await queue.list(status="running")
            ticks = await queue.list(status="succeeded", job_type=tick.name)
            return sum(j.payload.get("seconds") == 6.0 for j in running) == 6 and len(ticks) >= 1

        await until(long_jobs_running, 30, "the long jobs to run and a first tick")
        await server.stop("fast")
        await engine.dispose()  # the test's own pooled connections died with the server
        await asyncio.sleep(3 * LEASE)
        assert [p.alive() for p in processes] == [True, True, True]
        await server.start()
        restarted = datetime.now(UTC)

        async def drained() -> bool:
            jobs = await all_jobs(queue)
            fires_after = [j for j in jobs if j.type == tick.name and j.scheduled_at > restarted]
            return len(fires_after) >= 2 and all(j.status is JobStatus.SUCCEEDED for j in jobs)

        await until(drained, 30, "every job to succeed and two more fires")
        later = await queue.enqueue(work, {"n": 99, "seconds": 0})
        await until(lambda: _succeeded(queue, later), 10, "a job enqueued after the restart")
        # The scheduler first (it fires every second), then the workers once its last fire ran.
        scheduler_code = await processes[2].terminate()
        await until(lambda: _all_succeeded(queue), 10, "the scheduler's last fires to run")
        codes = [await p.terminate() for p in processes[:2]] + [scheduler_code]
        jobs = await all_jobs(queue)
    finally:
        for p in processes:
            if p.alive():
                p.proc.kill()
                await p.proc.wait()
        await engine.dispose()
        await server.destroy()
    logs = {f"{p.role}-{i}": p.events for i, p in enumerate(processes)}
    assert codes == [0, 0, 0], logs
    runs = [line.split()[0] for line in runs_file.read_text().splitlines()]
    assert_each_job_ran_once(jobs, runs)
    assert_every_fire_once(jobs, restarted)
    for name, events in logs.items():
        problems = warnings_and_errors(events)
        # A worker idle on LISTEN when the server went may also say its listener broke, once.
        assert problems - Counter({"contractspec.jobs.listen_failed": 1}) == Counter(
            {UNAVAILABLE: 1}
        ), (name, events)
        back = [e for e in events if e["event"] == AVAILABLE]
        assert len(back) == 1, (name, events)
        assert back[0]["failed_calls"] <= 60, (name, back)
