"""Crash test on the real PostgreSQL: workers SIGKILLed mid-job, repeatedly, lose nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from contractspec.core.testing import postgres_dsn, temporary_postgres_engine
from contractspec.jobs import JobStatus
from contractspec.jobs.sql import SqlJobQueue

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("jobs_crash_worker.py")
JOBS = 200


class Workers:
    """Worker processes forked by a pre-imported zygote process (see jobs_crash_worker.py)."""

    def __init__(self, zygote: asyncio.subprocess.Process) -> None:
        self.zygote = zygote
        self.pids: list[int] = []

    @classmethod
    async def start(cls, dsn: str, schema: str) -> Workers:
        env = {**os.environ, "CRASH_DSN": dsn, "CRASH_SCHEMA": schema}
        zygote = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "zygote",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(zygote)

    async def spawn(self) -> int:
        assert self.zygote.stdin is not None
        assert self.zygote.stdout is not None
        self.zygote.stdin.write(b"spawn\n")
        await self.zygote.stdin.drain()
        pid = int(await asyncio.wait_for(self.zygote.stdout.readline(), 60))
        self.pids.append(pid)
        return pid

    @staticmethod
    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    async def wait_gone(self, pid: int, seconds: float) -> bool:
        for _ in range(int(seconds / 0.05)):
            if not self.alive(pid):
                return True
            await asyncio.sleep(0.05)
        return False

    async def kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        assert await self.wait_gone(pid, 10)
        self.pids.remove(pid)

    async def terminate_all(self) -> list[bool]:
        """SIGTERM every live worker; True for each that stopped gracefully within 30 s."""
        live = [p for p in self.pids if self.alive(p)]
        for pid in live:
            os.kill(pid, signal.SIGTERM)
        stopped = [await self.wait_gone(pid, 30) for pid in live]
        for pid in live:
            if self.alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert self.zygote.stdin is not None
        self.zygote.stdin.close()
        await self.zygote.wait()
        return stopped


async def test_sigkilled_workers_lose_no_job_and_duplicate_no_effect() -> None:
    """Workers SIGKILLed mid-job again and again: every job completes once-effectively, none stuck."""
    dsn = postgres_dsn()
    if dsn is None:
        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "CONTRACTSPEC_REQUIRE_POSTGRES=1 but CONTRACTSPEC_TEST_POSTGRES_DSN is unset"
            )
        pytest.skip("the crash test needs CONTRACTSPEC_TEST_POSTGRES_DSN")
    from jobs_crash_worker import effect_job, orphan_job

    async with temporary_postgres_engine() as engine:
        async with engine.begin() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
            await conn.execute(text("CREATE TABLE crash_effects (job_id text PRIMARY KEY, n int)"))
            await conn.execute(text("CREATE TABLE crash_runs (job_id text, attempt int)"))
        queue = SqlJobQueue(engine, [effect_job, orphan_job])
        await queue.create_all()
        await queue.enqueue_many([(effect_job, {"n": n}) for n in range(JOBS)])
        orphan = await queue.enqueue(orphan_job, {"n": -1})

        workers = await Workers.start(dsn, schema)
        kills = 0
        try:
            for _ in range(3):
                await workers.spawn()
            async with asyncio.timeout(120):
                while kills < 8:
                    counts = await queue.counts()
                    if counts[JobStatus.QUEUED] + counts[JobStatus.FAILED] == 0:
                        break  # ran out of work before all kills: the assertion below says so
                    # Kill a worker that holds running jobs right now: the kill lands mid-job.
                    running = await queue.list(status="running", limit=1000)
                    holders = {int(j.worker_id.split(":")[1]) for j in running if j.worker_id}
                    victims = [p for p in workers.pids if p in holders]
                    if not victims:
                        await asyncio.sleep(0.05)
                        continue
                    await workers.kill(victims[0])
                    kills += 1
                    await workers.spawn()
                    await asyncio.sleep(0.3)
                while True:
                    counts = await queue.counts()
                    if counts[JobStatus.SUCCEEDED] == JOBS and counts[JobStatus.DEAD] == 1:
                        break
                    await asyncio.sleep(0.1)
        finally:
            stopped = await workers.terminate_all()
        await queue.close()

        assert kills == 8
        assert stopped == [True, True, True]  # SIGTERM stops each worker gracefully
        assert await queue.counts() == {
            JobStatus.QUEUED: 0,
            JobStatus.RUNNING: 0,
            JobStatus.SUCCEEDED: JOBS,
            JobStatus.FAILED: 0,
            JobStatus.DEAD: 1,
            JobStatus.CANCELLED: 0,
        }
        async with engine.connect() as conn:
            effects = (await conn.execute(text("SELECT n FROM crash_effects ORDER BY n"))).all()
            runs = (await conn.execute(text("SELECT count(*) FROM crash_runs"))).scalar_one()
            rerun = (
                await conn.execute(
                    text("SELECT count(DISTINCT job_id) FROM crash_runs WHERE attempt > 1")
                )
            ).scalar_one()
        assert [n for (n,) in effects] == list(range(JOBS))
        # Kills landed mid-job: some jobs ran more than once, yet each effect exists exactly once.
        assert runs > JOBS
        assert rerun >= 1
        dead = await queue.get(orphan)
        assert dead is not None
        assert dead.last_error is not None
        assert dead.last_error.startswith("no handler is registered for job type 'crash.orphan'")
