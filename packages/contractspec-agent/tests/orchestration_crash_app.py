"""An orchestrator that dies mid-tree (`os._exit`) and one that resumes the tree (crash tests).

Usage: `python orchestration_crash_app.py KIND TARGET MODE EFFECTS_FILE`

* KIND `sqlite` (TARGET: a database file) or `postgres` (TARGET: `DSN|schema`);
* MODE `crash-in-tool` (dies inside task b's tool, right after its effect, before the ledger
  knows), `crash-before-finish` (dies while writing task b's completion, after b's agent run
  completed), or `resume` (polls `Orchestrator.run_once()` until the tree is finished);
* EFFECTS_FILE: one line per tool effect, `label action_id` (the tool reconciles by action id).

The tree: a planner splits the goal into a -> b -> c (each depends on the one before). Prints
one JSON object on stdout (`resume`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent_support import OWNER, POLICY, build_registry

from contractspec.agent import (
    AgentRunner,
    ApprovalWorkflow,
    ModelRequest,
    Reconciled,
    RiskLevel,
    ToolContext,
    ToolMessage,
    define_agent,
    tool,
)
from contractspec.agent.orchestration import (
    AgentDirectory,
    Orchestrator,
    Planner,
    TaskStatus,
    planner_agent,
)
from contractspec.agent.orchestration.sql import SqlTaskStore
from contractspec.agent.orchestration.sql import create_all as create_task_tables
from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all
from contractspec.agent.testing import FunctionModel, block_model_requests, call
from contractspec.core import EventEnvelope, EventPublisher, Transaction
from contractspec.core.sql import SqlBackend, outbox_table, sqlite_engine

block_model_requests()
KIND, TARGET, MODE, EFFECTS = sys.argv[1:5] if len(sys.argv) >= 5 else ("", "", "", "")
LEASE_S = 1.0
PLAN = json.dumps(
    {"steps": [
        {"goal": "a", "capability": "work"},
        {"goal": "b", "capability": "work", "depends_on": [0]},
        {"goal": "c", "capability": "work", "depends_on": [1]},
    ]}
)  # fmt: skip


def effects() -> list[list[str]]:
    path = Path(EFFECTS)
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def remember_root(root_id: str) -> None:
    """Leave the tree's root id for the resuming process."""
    Path(EFFECTS + ".root").write_text(root_id)


def remembered_root() -> str:
    """The root id the first process left."""
    return Path(EFFECTS + ".root").read_text()


def already_done(args: Any, ctx: ToolContext) -> Reconciled:
    """Ask the outside world whether this action id took effect."""
    done = any(action == ctx.action_id for _, action in effects())
    return Reconciled(done=done, result=f"did {args.label}" if done else None)


@tool(risk=RiskLevel.L1, reconcile=already_done)
def act(label: str, ctx: ToolContext) -> str:
    """Do the task's one effect (the action id is the outside world's idempotency key)."""
    with Path(EFFECTS).open("a") as f:
        f.write(f"{label} {ctx.action_id}\n")
    if MODE == "crash-in-tool" and label == "b":
        os._exit(3)  # the effect happened; the ledger still says "started"
    return f"did {label}"


worker = define_agent("crash.worker", model="worker", instructions="Work.", tools=[act])


def model(request: ModelRequest) -> Any:
    if request.model == "planner":
        return PLAN
    goal = str(request.messages[1].content).splitlines()[0].removeprefix("Task: ")
    if not any(isinstance(m, ToolMessage) for m in request.messages):
        return call("act", label=goal)
    return f"done {goal}"


class DieOnSecondCompletion:
    """Publishes through the outbox; in `crash-before-finish` mode the process dies while the
    completion of b (the second task.completed) is being written, before it commits."""

    def __init__(self, inner: EventPublisher) -> None:
        self.inner = inner
        self.completions = 0

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        for event in events:
            if event.name == "task.completed":
                self.completions += 1
                if MODE == "crash-before-finish" and self.completions == 2:
                    os._exit(4)
        await self.inner.publish(events, tx)


def engine_for() -> Any:
    if KIND == "sqlite":
        return sqlite_engine(TARGET)
    from sqlalchemy.ext.asyncio import create_async_engine

    dsn, schema = TARGET.split("|")
    return create_async_engine(dsn, connect_args={"options": f"-csearch_path={schema}"})


async def main() -> dict[str, Any]:
    engine = engine_for()
    try:
        backend = SqlBackend(engine, build_registry())
        await backend.create_all()
        await create_all(engine)
        await create_task_tables(engine)
        approvals = ApprovalWorkflow(SqlApprovalStore(), backend=backend, policy=POLICY)
        runner = AgentRunner(
            model=FunctionModel(model), backend=backend, runs=SqlRunStore(),
            approvals=approvals, policy=POLICY, lease_s=LEASE_S, heartbeat_s=LEASE_S / 4,
        )  # fmt: skip
        directory = AgentDirectory().register(worker, capabilities=["work"])
        orch = Orchestrator(
            runner, directory, tasks=SqlTaskStore(), planner=Planner(planner_agent("planner")),
            events=DieOnSecondCompletion(backend.events), lease_s=LEASE_S,
            heartbeat_s=LEASE_S / 4,
        )  # fmt: skip
        if MODE != "resume":
            root = await orch.submit("do a, then b, then c", OWNER)
            remember_root(root.id)
            await orch.run_until_idle()
            return {"error": "the orchestrator should have died"}
        root_id = remembered_root()
        org = OWNER.org_id
        polls = executions = 0
        while polls < 400:
            polls += 1
            executions += len(await orch.run_once())
            if (await orch.get(root_id, org_id=org)).status.finished:
                break
            await asyncio.sleep(0.05)
        tasks = await orch.tree(root_id, org_id=org)
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    outbox_table.select().order_by(outbox_table.c.position)
                )
            ).mappings().all()  # fmt: skip
        completed = [r["payload"]["task_id"] for r in rows if r["name"] == "task.completed"]
        assigned = [r["payload"]["task_id"] for r in rows if r["name"] == "task.assigned"]
        runs = {t.goal: (await runner.get(t.run_id)).status.value for t in tasks if t.run_id}
        return {
            "statuses": {t.goal: t.status.value for t in tasks},
            "effects": sorted(label for label, _ in effects()),
            "completed_events": sorted(completed.count(t.id) for t in tasks),
            "assigned_events": sorted(assigned.count(t.id) for t in tasks if t.parent_id),
            "runs": runs,
            "attempts": {t.goal: t.attempts for t in tasks if t.parent_id},
            "root_done": tasks[0].status is TaskStatus.COMPLETED,
        }
    finally:
        await engine.dispose()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
