"""A small shop app and an agent environment on memory, SQLite or PostgreSQL (test support)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from attrs import define
from pydantic import BaseModel, Field

from contractspec.agent import (
    AgentRunner,
    ApprovalStore,
    ApprovalWorkflow,
    MemoryApprovalStore,
    MemoryRunStore,
    ModelClient,
    RunStore,
)
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    HandlerCtx,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
    define_command,
    define_entity,
    define_query,
    requires,
)
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine


class Refund(BaseModel):
    id: str
    order_id: str
    amount_cents: int


class IssueRefund(BaseModel):
    order_id: Annotated[str, Field(min_length=1, max_length=40)]
    amount_cents: Annotated[int, Field(gt=0)]
    reason: str = ""


class RefundOut(BaseModel):
    refund_id: str
    order_id: str
    amount_cents: int


class ListRefunds(BaseModel):
    order_id: str | None = None


class RefundList(BaseModel):
    total: int
    amount_cents: int


refund_entity = define_entity("shop.refund", Refund, indexes=["order_id"])
issue_refund = define_command(
    "shop.refund.issue",
    input=IssueRefund,
    output=RefundOut,
    auth=requires("refund.issue"),
    idempotent=True,
    description="Refund part or all of an order.",
)
list_refunds = define_query(
    "shop.refund.list", input=ListRefunds, output=RefundList, auth=requires("refund.read")
)


def build_registry() -> SpecRegistry:
    """The shop's specs and handlers."""
    registry = SpecRegistry(refund_entity, issue_refund, list_refunds)

    @registry.handler(issue_refund)
    async def issue(inp: IssueRefund, ctx: HandlerCtx) -> RefundOut:
        refund = await ctx.repo(refund_entity).add(
            Refund(id=ctx.new_id(), order_id=inp.order_id, amount_cents=inp.amount_cents)
        )
        return RefundOut(
            refund_id=refund.id, order_id=refund.order_id, amount_cents=refund.amount_cents
        )

    @registry.handler(list_refunds)
    async def listing(inp: ListRefunds, ctx: HandlerCtx) -> RefundList:
        where = {"order_id": inp.order_id} if inp.order_id else None
        rows = await ctx.repo(refund_entity).find(where)
        return RefundList(total=len(rows), amount_cents=sum(r.amount_cents for r in rows))

    return registry


POLICY = RolePermissions(
    {
        "support": ["refund.read", "refund.issue", "agent.run"],
        "lead": ["approval.decide", "refund.read"],
        "auditor": ["refund.read"],
    }
)
ORG = "org-1"
OWNER = CallContext(actor=Actor.user("u-owner", roles="support"), org_id=ORG, request_id="r-1")
LEAD = Actor.user("u-lead", roles="lead")
LEAD2 = Actor.user("u-lead-2", roles="lead")


@define
class AgentEnv:
    """Everything a test needs: executor, approvals, runner factory and the stores."""

    kind: str
    registry: SpecRegistry
    backend: Backend
    runs: RunStore
    approval_store: ApprovalStore
    clock: FakeClock
    ids: SequentialIds
    executor: Executor
    approvals: ApprovalWorkflow

    def runner(self, model: ModelClient | None = None, **kwargs: Any) -> AgentRunner:
        """A runner over this environment's stores."""
        return AgentRunner(
            model=model,
            backend=self.backend,
            runs=self.runs,
            approvals=self.approvals,
            executor=self.executor,
            policy=POLICY,
            clock=self.clock,
            ids=self.ids,
            **kwargs,
        )

    async def refunds(self) -> RefundList:
        """Refunds issued so far in the test org."""
        out = await self.executor.execute("shop.refund.list", {}, OWNER)
        assert isinstance(out, RefundList)
        return out


@asynccontextmanager
async def agent_env(kind: str, tmp_path: Path) -> AsyncIterator[AgentEnv]:
    """An `AgentEnv` on `memory`, `sqlite` (a file in `tmp_path`) or `postgres`."""
    registry = build_registry()
    clock = FakeClock()
    ids = SequentialIds("id")
    if kind == "memory":
        backend: Backend = MemoryBackend()
        yield _env(kind, registry, backend, MemoryRunStore(), MemoryApprovalStore(), clock, ids)
        return
    from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        await create_all(engine)
        yield _env(kind, registry, sql, SqlRunStore(), SqlApprovalStore(), clock, ids)


def _env(
    kind: str,
    registry: SpecRegistry,
    backend: Backend,
    runs: RunStore,
    store: ApprovalStore,
    clock: FakeClock,
    ids: SequentialIds,
) -> AgentEnv:
    executor = Executor(registry, backend=backend, policy=POLICY, clock=clock, ids=ids)
    approvals = ApprovalWorkflow(store, backend=backend, policy=POLICY, clock=clock, ids=ids)
    return AgentEnv(kind, registry, backend, runs, store, clock, ids, executor, approvals)


async def event_names(env: AgentEnv) -> list[str]:
    """Names of the committed events (memory outbox or `cs_outbox`), oldest first."""
    if env.kind == "memory":
        assert isinstance(env.backend, MemoryBackend)
        return env.backend.events.names()
    from sqlalchemy import select

    from contractspec.core.sql import SqlBackend, outbox_table

    assert isinstance(env.backend, SqlBackend)
    async with env.backend.engine.connect() as conn:
        rows = await conn.execute(select(outbox_table.c.name).order_by(outbox_table.c.position))
        return [r[0] for r in rows]


async def audit_actions(env: AgentEnv) -> list[tuple[str, str]]:
    """`(action, outcome)` of the committed audit records of the test org, oldest first."""
    if env.kind == "memory":
        assert isinstance(env.backend, MemoryBackend)
        return [(r.action, r.outcome) for r in env.backend.audit.records if r.org_id == ORG]
    from contractspec.core.sql import SqlBackend

    assert isinstance(env.backend, SqlBackend)
    return [(e.record.action, e.record.outcome) for e in await env.backend.audit.entries(ORG)]
