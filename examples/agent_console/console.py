"""`AgentConsole`: tools, agents, runs (history, status, logs), metrics and events over SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from attrs import define
from sqlalchemy import func, select

from agent_console.ops import AGENTS, configured_model
from contractspec.agent import (
    AGENT_EVENTS,
    APPROVAL_EVENTS,
    AgentRunner,
    ApprovalRequest,
    ApprovalWorkflow,
    ModelClient,
    Run,
    RunLog,
    RunResult,
    RunStatus,
)
from contractspec.agent.review import register_review_operations
from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all, runs_table
from contractspec.core import Actor, CallContext, RolePermissions, SpecRegistry
from contractspec.core.sql import SqlBackend, outbox_table, sqlite_engine

__all__ = ["AgentConsole", "Metrics", "open_console"]

ORG = "ops"
#: Operators (`ops`) run agents and read the review queues; SREs also decide approvals and act
#: on runs (cancel).
POLICY = RolePermissions(
    {
        "sre": ["approval.decide", "agent.review.*"],
        "ops": ["agent.review.read"],
    }
)


@define(frozen=True)
class Metrics:
    """Totals over every run of the console's org."""

    runs: int
    by_status: dict[str, int]
    avg_steps: float
    tool_calls: int
    tokens: int
    pending_approvals: int


class AgentConsole:
    """The console's operations; every one reads or writes the SQLite file.

    Use `open_console(path)`.
    """

    def __init__(
        self,
        backend: SqlBackend,
        runner: AgentRunner,
        approvals: ApprovalWorkflow,
        registry: SpecRegistry,
    ) -> None:
        self.backend = backend
        self.runner = runner
        self.approvals = approvals
        #: The specs the web console's executor runs (events and the agent review operations).
        self.registry = registry
        self.ctx = CallContext(actor=Actor.user("operator", roles="ops"), org_id=ORG)

    def tools(self) -> list[dict[str, Any]]:
        """Every agent's tools: name, kind, risk, side effects and invariants."""
        return [
            {
                "agent": agent.ref,
                "tool": t.name,
                "kind": t.kind,
                "risk": t.risk.name,
                "side_effects": t.side_effects,
                "invariants": [f"{i.name}: {i.expression.text}" for i in t.invariants],
                "description": t.description,
            }
            for agent in self.runner.registry
            for t in agent.tools
        ]

    def agents(self) -> list[dict[str, Any]]:
        """Registered agents."""
        return [
            {"agent": a.ref, "model": a.model, "tools": len(a.tools), "description": a.description}
            for a in self.runner.registry
        ]

    async def run(self, agent: str, text: str) -> RunResult | str:
        """Run an agent; a failed run returns its error message (the run is stored as failed)."""
        try:
            return await self.runner.run(agent, text, self.ctx)
        except Exception as exc:  # shown to the operator; the run itself is persisted as failed
            return f"{type(exc).__name__}: {exc}"

    async def history(self, limit: int = 20) -> list[Run]:
        """Runs, newest first."""
        return await self.runner.history(org_id=ORG, limit=limit)

    async def status(self, run_id: str) -> Run:
        """One run."""
        return await self.runner.get(run_id)

    async def logs(self, run_id: str) -> list[RunLog]:
        """A run's log lines."""
        return await self.runner.logs(run_id)

    async def approve(self, approval_id: str, approver: str) -> ApprovalRequest:
        """Approve as an SRE (the operator who started the run cannot)."""
        return await self.approvals.approve(approval_id, Actor.user(approver, roles="sre"))

    async def resume_ready(self) -> list[RunResult]:
        """Resume every run whose approvals are decided."""
        return await self.runner.resume_ready(org_id=ORG)

    async def pending(self) -> list[ApprovalRequest]:
        """Open approval requests."""
        return await self.approvals.pending(org_id=ORG)

    async def metrics(self) -> Metrics:
        """Runs by status, average steps, tool calls, tokens and open approvals."""
        t = runs_table
        async with self.backend.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(t.c.status, func.count(), func.avg(t.c.steps))
                    .where(t.c.org_key == ORG)
                    .group_by(t.c.status)
                )
            ).all()
            usages = (await conn.execute(select(t.c.usage).where(t.c.org_key == ORG))).scalars()
            tool_calls = tokens = 0
            for usage in usages:
                tool_calls += int(usage.get("tool_calls", 0))
                tokens += int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        total = sum(r[1] for r in rows)
        steps = sum(float(r[2] or 0) * r[1] for r in rows)
        return Metrics(
            runs=total,
            by_status={str(r[0]): int(r[1]) for r in sorted(rows)},
            avg_steps=round(steps / total, 2) if total else 0.0,
            tool_calls=tool_calls,
            tokens=tokens,
            pending_approvals=len(await self.pending()),
        )

    async def events(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest events from the outbox (agent.* and approval.*), oldest first."""
        o = outbox_table
        async with self.backend.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(o.c.position, o.c.name, o.c.payload, o.c.occurred_at)
                    .order_by(o.c.position.desc())
                    .limit(limit)
                )
            ).all()
        return [
            {"position": r[0], "name": r[1], "payload": r[2], "at": r[3].isoformat()}
            for r in reversed(rows)
        ]

    @staticmethod
    def waiting(run: Run) -> bool:
        """Whether the run waits for approvals."""
        return run.status is RunStatus.WAITING_APPROVAL


@asynccontextmanager
async def open_console(
    path: str | Path, *, model: ModelClient | None = None
) -> AsyncIterator[AgentConsole]:
    """A console over the SQLite file at `path` (created on first use)."""
    engine = sqlite_engine(path)
    try:
        registry = SpecRegistry()
        registry.register(*AGENT_EVENTS, *APPROVAL_EVENTS)
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        await create_all(engine)
        approvals = ApprovalWorkflow(SqlApprovalStore(), backend=backend, policy=POLICY)
        runner = AgentRunner(
            AGENTS, model=model or configured_model(), backend=backend, runs=SqlRunStore(),
            approvals=approvals, policy=POLICY,
        )  # fmt: skip
        register_review_operations(registry, approvals=approvals, runner=runner)
        yield AgentConsole(backend, runner, approvals, registry)
    finally:
        await engine.dispose()
