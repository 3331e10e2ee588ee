"""A run waiting for approval survives a process restart and resumes exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agent_support import LEAD, OWNER, AgentEnv, issue_refund

from contractspec.agent import AgentRunner, RiskLevel, RunStatus, define_agent, operation_tool
from contractspec.agent.testing import ScriptedModel, call
from contractspec.core import ConflictError

APP = Path(__file__).with_name("agent_restart_app.py")


def start_process(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen(
        [sys.executable, str(APP), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=APP.parent,
    )


def finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return data


@pytest.mark.slow
async def test_waiting_run_survives_a_restart_and_resumes_exactly_once(tmp_path: Path) -> None:
    """Process 1 suspends the run; after approval two racing processes resume it: one effect."""
    db = str(tmp_path / "shop.db")
    started = finish(start_process("start", db))
    assert (started["status"], started["refunds"], started["model_requests"]) == (
        "waiting_approval",
        0,
        1,
    )
    (approval_id,) = started["approvals"]

    from agent_support import POLICY, build_registry

    from contractspec.agent import ApprovalWorkflow
    from contractspec.agent.sql import SqlApprovalStore
    from contractspec.core.sql import SqlBackend, sqlite_engine

    engine = sqlite_engine(db)
    try:
        approvals = ApprovalWorkflow(
            SqlApprovalStore(), backend=SqlBackend(engine, build_registry()), policy=POLICY
        )
        await approvals.approve(approval_id, LEAD, comment="ok")
    finally:
        await engine.dispose()

    racers = [start_process("resume", db, started["run_id"]) for _ in range(2)]
    results = await asyncio.gather(*(asyncio.to_thread(finish, p) for p in racers))
    completed = [r for r in results if r.get("status") == "completed"]
    assert completed, results
    assert all(r["refunds"] == 1 for r in completed)
    assert sum(r["model_requests"] for r in results) == 1  # the loser never asked the model
    for r in results:
        assert r.get("conflict") or r["output"] == "Refunded 25.00 on o-1."
    engine = sqlite_engine(db)
    try:  # a third, fresh runner in this process: the run is done, nothing runs again
        from contractspec.agent.sql import SqlRunStore

        backend = SqlBackend(engine, build_registry())
        late_model = ScriptedModel([])
        late = AgentRunner([agent], model=late_model, backend=backend, runs=SqlRunStore())
        again = await late.resume(started["run_id"])
        assert (again.status, again.output) == (RunStatus.COMPLETED, "Refunded 25.00 on o-1.")
        assert late_model.requests == []
        steps = await late.steps(started["run_id"])
        assert [s.index for s in steps] == [1, 2]
    finally:
        await engine.dispose()


refund = operation_tool(issue_refund, risk=RiskLevel.L2)
agent = define_agent("shop.refunder", model="m", instructions="i", tools=[refund])


async def test_fresh_runners_racing_to_resume_take_effect_once(env: AgentEnv) -> None:
    """Two new runners over the same stores resume concurrently: one continues, one conflicts."""
    first = env.runner(ScriptedModel([call("shop_refund_issue", order_id="o-1", amount_cents=900)]))
    waiting = await first.run(agent, "refund 9", OWNER)
    await env.approvals.approve(waiting.pending_approvals[0], LEAD)
    models = [ScriptedModel(["done"]), ScriptedModel(["done"])]
    runners = [AgentRunner([agent], model=m, backend=env.backend, runs=env.runs, approvals=env.approvals,
                           executor=env.executor, clock=env.clock, ids=env.ids) for m in models]  # fmt: skip
    results = await asyncio.gather(
        *(r.resume(waiting.run_id) for r in runners), return_exceptions=True
    )
    outcomes = sorted(
        type(r).__name__ if isinstance(r, BaseException) else r.status.value for r in results
    )
    assert outcomes in (["ConflictError", "completed"], ["completed", "completed"])
    assert sum(len(m.requests) for m in models) == 1
    assert (await env.refunds()).total == 1
    assert (await first.get(waiting.run_id)).status is RunStatus.COMPLETED
    assert all(not isinstance(r, BaseException) or isinstance(r, ConflictError) for r in results)
