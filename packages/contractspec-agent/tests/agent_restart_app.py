"""A process that starts or resumes a refund run on a SQLite file (for the restart test).

Usage: `python agent_restart_app.py start DB` or `python agent_restart_app.py resume DB RUN_ID`.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agent_support import OWNER, POLICY, build_registry, issue_refund

from contractspec.agent import (
    AgentRunner,
    ApprovalWorkflow,
    RiskLevel,
    define_agent,
    operation_tool,
)
from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all
from contractspec.agent.testing import ScriptedModel, block_model_requests, call
from contractspec.core import ConflictError, Executor
from contractspec.core.sql import SqlBackend, sqlite_engine

block_model_requests()
refund = operation_tool(issue_refund, risk=RiskLevel.L2)
agent = define_agent("shop.refunder", model="m", instructions="Refund when fair.", tools=[refund])


async def main(mode: str, db: str, run_id: str | None) -> dict[str, Any]:
    registry = build_registry()
    engine = sqlite_engine(db)
    try:
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        await create_all(engine)
        executor = Executor(registry, backend=backend, policy=POLICY)
        approvals = ApprovalWorkflow(SqlApprovalStore(), backend=backend, policy=POLICY)
        if mode == "start":
            model = ScriptedModel([call("shop_refund_issue", order_id="o-1", amount_cents=2500)])
        else:
            model = ScriptedModel(["Refunded 25.00 on o-1."])
        runner = AgentRunner(
            [agent], model=model, backend=backend, runs=SqlRunStore(), approvals=approvals,
            executor=executor, policy=POLICY,
        )  # fmt: skip
        if mode == "start":
            result = await runner.run(agent, "Refund order o-1 (25.00)", OWNER)
        else:
            assert run_id is not None
            try:
                result = await runner.resume(run_id)
            except ConflictError as exc:
                return {"conflict": exc.message, "model_requests": len(model.requests)}
        refunds = await executor.execute("shop.refund.list", {}, OWNER)
        return {
            "run_id": result.run_id,
            "status": result.status.value,
            "output": result.output,
            "approvals": list(result.pending_approvals),
            "refunds": refunds.model_dump()["total"],
            "model_requests": len(model.requests),
        }
    finally:
        await engine.dispose()


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(asyncio.run(main(args[0], args[1], args[2] if len(args) > 2 else None))))
