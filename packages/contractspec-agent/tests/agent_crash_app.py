"""A worker that dies mid-run (`os._exit`) and a worker that recovers the run (crash tests).

Usage: `python agent_crash_app.py KIND TARGET MODE CARD_FILE`

* KIND `sqlite` (TARGET: a database file) or `postgres` (TARGET: `DSN|schema`);
* MODE `crash-in-tool` (dies right after the card was charged, before the ledger knows),
  `crash-in-model` (dies during the model request after the charge was recorded) or
  `recover` (polls `AgentRunner.recover()` until the dead worker's lease expired);
* CARD_FILE: the "card provider": one line per charge, keyed by the gateway's action id.

Prints one JSON object on stdout (`recover`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from agent_support import OWNER, POLICY, build_registry

from contractspec.agent import (
    AgentRunner,
    ApprovalWorkflow,
    Reconciled,
    RiskLevel,
    ToolContext,
    define_agent,
    tool,
)
from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all
from contractspec.agent.testing import FunctionModel, block_model_requests, call
from contractspec.core.sql import SqlBackend, sqlite_engine

block_model_requests()
KIND, TARGET, MODE, CARD = sys.argv[1:5] if len(sys.argv) >= 5 else ("", "", "", "")
LEASE_S = 1.0


def charges() -> list[str]:
    path = Path(CARD)
    return path.read_text().split() if path.exists() else []


def already_charged(args: Any, ctx: ToolContext) -> Reconciled:
    """Ask the provider whether this action id was charged."""
    done = ctx.action_id in charges()
    return Reconciled(done=done, result="charged 5" if done else None)


@tool(risk=RiskLevel.L1, reconcile=already_charged)
def charge(amount: int, ctx: ToolContext) -> str:
    """Charge the customer's card (the action id is the provider's idempotency key)."""
    with Path(CARD).open("a") as f:
        f.write(ctx.action_id + "\n")
    if MODE == "crash-in-tool":
        os._exit(3)  # the card is charged; the ledger still says "started"
    return f"charged {amount}"


agent = define_agent("shop.biller", model="m", instructions="Charge once.", tools=[charge])
requests: list[int] = []


def model(request: Any) -> Any:
    requests.append(request.step)
    if request.step == 1:
        return call("charge", amount=5)
    if MODE == "crash-in-model":
        os._exit(4)  # the charge is recorded; the answer never comes
    return "Charged 5."


def engine_for() -> Any:
    if KIND == "sqlite":
        return sqlite_engine(TARGET)
    from sqlalchemy.ext.asyncio import create_async_engine

    dsn, schema = TARGET.split("|")
    return create_async_engine(dsn, connect_args={"options": f"-csearch_path={schema}"})


async def main() -> dict[str, Any]:
    registry = build_registry()
    engine = engine_for()
    try:
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        await create_all(engine)
        approvals = ApprovalWorkflow(SqlApprovalStore(), backend=backend, policy=POLICY)
        runner = AgentRunner(
            [agent], model=FunctionModel(model), backend=backend, runs=SqlRunStore(),
            approvals=approvals, policy=POLICY, lease_s=LEASE_S, heartbeat_s=LEASE_S / 4,
        )  # fmt: skip
        if MODE != "recover":
            await runner.run(agent, "Charge 5 to the card on file", OWNER)
            return {"error": "the worker should have died"}
        polls = 0
        while True:
            polls += 1
            recovered = await runner.recover()
            if recovered or polls > 200:
                break
            await asyncio.sleep(0.05)
        (result,) = recovered
        return {
            "status": result.status.value,
            "output": result.output,
            "decisions": [p.decision for p in result.packets],
            "charges": len(charges()),
            "model_steps": requests,
            "logs": [line.event for line in await runner.logs(result.run_id)],
            "ledger": [a.status.value for a in await _actions(runner, result.run_id)],
        }
    finally:
        await engine.dispose()


async def _actions(runner: AgentRunner, run_id: str) -> list[Any]:
    tx = await runner.unit_of_work.begin(readonly=True)
    try:
        return await runner.runs.actions(tx, run_id)
    finally:
        await tx.rollback()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
