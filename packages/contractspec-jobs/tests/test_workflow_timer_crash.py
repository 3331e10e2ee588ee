"""Workflow timers survive a SIGKILLed worker: the killed run's timer fires exactly once after a
new worker starts (SQLite file and PostgreSQL, real worker processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from jobs_workflow_app import POLICY, agent_ctx, build_registry
from sqlalchemy import text

from contractspec.core import Executor
from contractspec.core.sql import SqlBackend
from contractspec.core.testing import temporary_sql_engine
from contractspec.jobs import JobStatus
from contractspec.jobs.sql import SqlJobQueue

pytestmark = [pytest.mark.slow]

SCRIPT = Path(__file__).with_name("jobs_workflow_crash_worker.py")


async def _wait_for(check: object, seconds: float, what: str) -> None:
    for _ in range(int(seconds / 0.1)):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


@pytest.mark.parametrize("mode", ["hold_in_tx", "hold_after_commit"])
async def test_a_timer_due_while_its_worker_is_sigkilled_fires_exactly_once_after_restart(
    sql_kind: str, tmp_path: Path, mode: str
) -> None:
    """The worker is SIGKILLed while running the due expiry timer (inside the transition's
    transaction, or after it committed but before the job was recorded done); a new worker
    re-runs the job and the instance has exactly one `timer` step, in state `expired`."""
    registry = build_registry(expire_after=timedelta(seconds=2))
    async with temporary_sql_engine(sql_kind, tmp_path) as engine:
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        queue = SqlJobQueue(engine, registry)
        await queue.create_all()
        env = {**os.environ, "WF_KIND": sql_kind, "WF_MARKER": str(tmp_path / "marker")}
        if sql_kind == "sqlite":
            env["WF_DB"] = str(engine.url.database)
        else:
            async with engine.connect() as conn:
                env["WF_SCHEMA"] = (
                    await conn.execute(text("SELECT current_schema()"))
                ).scalar_one()
            env["WF_DB"] = engine.url.render_as_string(hide_password=False)
        ex = Executor(registry, backend=backend, jobs=queue, policy=POLICY)
        out = await ex.execute("sup.ticket.start", {"data": {"title": "printer"}}, agent_ctx())
        iid = out.model_dump()["id"]

        procs: list[subprocess.Popen[bytes]] = []

        def spawn(worker_mode: str) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [sys.executable, str(SCRIPT)],
                env={**env, "WF_MODE": worker_mode},
                cwd=SCRIPT.parent,
            )
            procs.append(proc)
            return proc

        async def state() -> str:
            got = await ex.execute("sup.ticket.get", {"instance_id": iid}, agent_ctx())
            return str(got.model_dump()["state"])

        try:
            first = spawn(mode)
            marker = tmp_path / "marker"

            async def marked() -> bool:
                return marker.exists()

            await _wait_for(marked, 90, "the first worker to hold the due timer")
            os.kill(first.pid, signal.SIGKILL)
            assert first.wait(30) == -signal.SIGKILL
            # Killed before commit: nothing happened; after commit: the transition is durable.
            assert await state() == ("open" if mode == "hold_in_tx" else "expired")

            second = spawn("none")

            async def all_done() -> bool:
                jobs = await queue.list(limit=10)
                return len(jobs) == 2 and all(j.status is JobStatus.SUCCEEDED for j in jobs)

            await _wait_for(all_done, 90, "the restarted worker to finish both timer jobs")
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(30)

        assert await state() == "expired"
        page = await ex.execute("sup.ticket.history", {"instance_id": iid}, agent_ctx())
        steps = [(s["kind"], s["transition"], s["to_state"]) for s in page.model_dump()["items"]]
        assert steps == [("start", None, "open"), ("timer", "expire", "expired")]
        expiry = [j for j in await queue.list(limit=10) if j.payload["timer"] == "open_expire"]
        # Killed at least once and run again (a conflict with the escalation may add a retry).
        assert len(expiry) == 1
        assert expiry[0].attempts >= 2
