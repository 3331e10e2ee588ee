"""Issue 15: a run whose worker dies is recovered from its last durable step (real processes,
`os._exit`, SQLite file and PostgreSQL); leases, in-doubt calls after a crash, cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_support import LEAD, ORG, OWNER, AgentEnv, event_names

from contractspec.agent import (
    ActionStatus,
    AgentRunner,
    RiskLevel,
    RunStatus,
    define_agent,
    tool,
)
from contractspec.agent.testing import ScriptedModel, call
from contractspec.core import ConflictError
from contractspec.core.testing import postgres_dsn, temporary_sql_engine

APP = Path(__file__).with_name("agent_crash_app.py")


def run_app(kind: str, target: str, mode: str, card: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, str(APP), kind, target, mode, str(card)],
        capture_output=True, text=True, env=env, cwd=APP.parent, timeout=180, check=False,
    )  # fmt: skip


@pytest.fixture
async def target(sql_kind: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Where both processes meet: a SQLite file, or a fresh PostgreSQL schema."""
    if sql_kind == "sqlite":
        yield "sqlite", str(tmp_path / "crash.db")
        return
    from sqlalchemy import text

    async with temporary_sql_engine("postgres", tmp_path) as engine:
        async with engine.connect() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
        yield "postgres", f"{postgres_dsn()}|{schema}"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["crash-in-tool", "crash-in-model"])
async def test_a_run_whose_worker_died_is_recovered_once_without_a_second_charge(
    target: tuple[str, str], where: str, tmp_path: Path
) -> None:
    """Worker 1 dies (`os._exit`) after charging the card but before the ledger knew, or during
    the next model request; worker 2 recovers the run once its lease expired: the started call
    is in doubt and reconciled (not charged again), and the run completes from its last
    durable step."""
    kind, where_db = target
    card = tmp_path / "card.txt"
    died = await asyncio.to_thread(run_app, kind, where_db, where, card)
    assert died.returncode == (3 if where == "crash-in-tool" else 4), died.stderr
    assert len(card.read_text().split()) == 1
    recovered = await asyncio.to_thread(run_app, kind, where_db, "recover", card)
    assert recovered.returncode == 0, recovered.stderr
    out: dict[str, Any] = json.loads(recovered.stdout.strip().splitlines()[-1])
    assert (out["status"], out["output"], out["charges"]) == ("completed", "Charged 5.", 1)
    assert out["ledger"] == ["succeeded"]
    assert out["model_steps"] == [2]  # step 1 was durable: only the answer is asked again
    assert "run.recovered" in out["logs"]
    if where == "crash-in-tool":
        assert out["decisions"] == ["reconciled"]
    else:
        assert out["decisions"] == []


# -- in-process: leases, in-doubt calls after a crash, cancellation ------------------------------


class Crash(BaseException):
    """Stands in for a dying process: nothing after it runs (not even `except Exception`)."""


async def test_a_held_run_is_not_recovered_until_its_lease_expires(env: AgentEnv) -> None:
    """While the lease holds, `recover()` finds nothing and `resume()` refuses; once it
    expired, one recovery claims the run; an L1 call that was started and never finished
    (no reconcile) waits for a person instead of running again."""
    effects: list[int] = []

    @tool(risk=RiskLevel.L1)
    def ship(box: int) -> str:
        """Ship a box."""
        effects.append(box)
        raise Crash  # the worker dies inside the call

    shipping = define_agent("shop.ship3", model="m", instructions="i", tools=[ship])
    dead = env.runner(ScriptedModel([call("ship", box=1)]), lease_s=30)
    with pytest.raises(Crash):
        await dead.run(shipping, "ship", OWNER)
    (run,) = await dead.history(org_id=ORG, status=RunStatus.RUNNING)
    assert run.pending[0]["inflight"] is True

    survivor = env.runner(ScriptedModel(["I could not confirm the shipment."]), lease_s=30)
    survivor.registry.register(shipping)
    assert await survivor.recover() == []
    with pytest.raises(ConflictError):
        await survivor.resume(run.id)
    env.clock.advance(timedelta(seconds=31))
    (waiting,) = await survivor.resume_ready(org_id=ORG)
    assert await survivor.recover() == []  # claimed once
    assert waiting.status is RunStatus.WAITING_APPROVAL
    (packet,) = waiting.packets
    assert packet.decision == "needs_approval"
    req = await env.approvals.get(waiting.pending_approvals[0])
    assert req.metadata["in_doubt"] is True
    assert effects == [1]
    assert "agent.run.recovered" in await event_names(env)
    await env.approvals.reject(req.id, LEAD, comment="it shipped")
    done = await survivor.resume(run.id)
    assert (done.status, done.output) == (RunStatus.COMPLETED, "I could not confirm the shipment.")
    assert effects == [1]


async def test_a_cancelled_run_is_marked_cancelled_and_its_call_in_doubt(env: AgentEnv) -> None:
    """Cancelling the task that drives a run: the run is `cancelled` (final), the call that was
    running is `in_doubt`, and `agent.run.cancelled` is published."""
    started = asyncio.Event()

    @tool(risk=RiskLevel.L1)
    async def wire(amount: int) -> str:
        """Wire money."""
        started.set()
        await asyncio.sleep(60)
        return "sent"

    money = define_agent("shop.wire3", model="m", instructions="i", tools=[wire])
    runner = env.runner(ScriptedModel([call("wire", amount=9)]))
    task = asyncio.create_task(runner.run(money, "wire", OWNER))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (run,) = await runner.history(org_id=ORG)
    assert (run.status, run.lease_owner) == (RunStatus.CANCELLED, None)
    tx = await env.backend.unit_of_work.begin(readonly=True)
    (action,) = await env.runs.actions(tx, run.id)
    await tx.rollback()
    assert action.status is ActionStatus.IN_DOUBT
    assert "agent.run.cancelled" in await event_names(env)
    assert (await runner.resume(run.id)).status is RunStatus.CANCELLED


async def test_heartbeats_keep_a_slow_run_from_being_recovered(env: AgentEnv) -> None:
    """A step slower than the lease is not taken over: heartbeats extend the lease."""
    from contractspec.core import SystemClock

    release = asyncio.Event()

    @tool(risk=RiskLevel.L1)
    async def slow(n: int) -> int:
        """Slow work."""
        await release.wait()
        return n

    work = define_agent("shop.slow", model="m", instructions="i", tools=[slow])
    clock = SystemClock()
    busy = AgentRunner(
        model=ScriptedModel([call("slow", n=1), "done"]), backend=env.backend, runs=env.runs,
        approvals=env.approvals, clock=clock, lease_s=1.0, heartbeat_s=0.1,
    )  # fmt: skip
    other = AgentRunner([work], backend=env.backend, runs=env.runs, clock=clock, lease_s=1.0)
    task = asyncio.create_task(busy.run(work, "work", OWNER))
    await asyncio.sleep(2.5)  # 2.5 leases
    assert await other.recover() == []
    release.set()
    assert (await task).status is RunStatus.COMPLETED


async def test_a_stalled_worker_that_lost_its_lease_stops_and_its_outcome_is_kept(
    env: AgentEnv,
) -> None:
    """Worker A stalls in a call past its lease; B recovers the run (the call is in doubt, a
    person is asked). When A's call finally returns, A stops with `LeaseLostError` without
    touching the run, and the call's outcome still reaches the ledger, so B replays it."""
    from contractspec.agent import LeaseLostError

    release = asyncio.Event()
    started = asyncio.Event()
    effects: list[int] = []

    @tool(risk=RiskLevel.L1)
    async def pack(box: int) -> str:
        """Pack a box."""
        effects.append(box)
        if len(effects) == 1:
            started.set()
            await release.wait()
        return "packed"

    packing = define_agent("shop.pack", model="m", instructions="i", tools=[pack])
    a = env.runner(ScriptedModel([call("pack", box=1), "A done"]), lease_s=30, heartbeat_s=20)
    task = asyncio.create_task(a.run(packing, "pack", OWNER))
    await started.wait()
    env.clock.advance(timedelta(seconds=31))
    b = env.runner(ScriptedModel([]), lease_s=30)
    b.registry.register(packing)
    (waiting,) = await b.recover()
    assert waiting.status is RunStatus.WAITING_APPROVAL
    release.set()
    with pytest.raises(LeaseLostError):
        await task
    run = await b.get(waiting.run_id)
    assert (run.status, run.lease_owner) == (RunStatus.WAITING_APPROVAL, None)
    await env.approvals.approve(waiting.pending_approvals[0], LEAD)
    with b.override(model=ScriptedModel(["B done"])):
        done = await b.resume(waiting.run_id)
    assert (done.output, effects) == ("B done", [1])
    assert done.packets[-1].decision == "replayed"
