"""A small deal app and an evolution environment on memory, SQLite or PostgreSQL (test support)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from attrs import define
from evolution_support import T0
from pydantic import BaseModel, Field

from contractspec.agent import ApprovalStore, ApprovalWorkflow, MemoryApprovalStore
from contractspec.core import (
    Actor,
    Backend,
    HandlerCtx,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
    define_command,
    define_entity,
    define_query,
    requires,
)
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.evolution import (
    EVOLUTION_EVENTS,
    MemoryIntentStore,
    MemorySuggestionStore,
    MemoryTelemetryBucketStore,
    SpecSuggestionOrchestrator,
)
from contractspec.evolution.stores import IntentStore, SuggestionStore, TelemetryBucketStore


class Deal(BaseModel):
    id: str
    title: str
    amount: int
    stage: str = "lead"


class CreateDeal(BaseModel):
    title: Annotated[str, Field(min_length=1)]
    amount: int


class MoveDeal(BaseModel):
    deal_id: str
    stage: str


class DealOut(BaseModel):
    id: str
    stage: str


class Listing(BaseModel):
    stage: str | None = None


class DealCount(BaseModel):
    total: int


deal_entity = define_entity("shop.deal", Deal)
create_deal = define_command(
    "shop.deal.create", input=CreateDeal, output=DealOut, auth=requires("deal.write"),
    errors=["validation_error"],
)  # fmt: skip
move_deal = define_command(
    "shop.deal.move", input=MoveDeal, output=DealOut, auth=requires("deal.write")
)
count_deals = define_query(
    "shop.deal.count", input=Listing, output=DealCount, auth=requires("deal.read")
)
archive_deals = define_command(
    "shop.deal.archive", input=Listing, output=DealCount, auth=requires("deal.write")
)


def build_registry() -> SpecRegistry:
    """The deal app: create rejects non-positive amounts in the handler (field-level error)."""
    registry = SpecRegistry(deal_entity, create_deal, move_deal, count_deals, archive_deals)

    @registry.handler(create_deal)
    async def create(inp: CreateDeal, ctx: HandlerCtx) -> DealOut:
        if inp.amount <= 0:
            raise SpecValidationError(
                "amount must be positive",
                errors=[{"field": "amount", "loc": ["amount"], "type": "greater_than",
                         "msg": "Input should be greater than 0", "ctx": {"gt": 0}}],
            )  # fmt: skip
        deal = await ctx.repo(deal_entity).add(
            Deal(id=ctx.new_id(), title=inp.title, amount=inp.amount)
        )
        return DealOut(id=deal.id, stage=deal.stage)

    @registry.handler(move_deal)
    async def move(inp: MoveDeal, ctx: HandlerCtx) -> DealOut:
        deal = await ctx.repo(deal_entity).get(inp.deal_id)
        moved = await ctx.repo(deal_entity).update(deal.model_copy(update={"stage": inp.stage}))
        return DealOut(id=moved.id, stage=moved.stage)

    @registry.handler(count_deals)
    async def count(inp: Listing, ctx: HandlerCtx) -> DealCount:
        return DealCount(total=len(await ctx.repo(deal_entity).find()))

    @registry.handler(archive_deals)
    async def archive(inp: Listing, ctx: HandlerCtx) -> DealCount:
        return DealCount(total=0)

    registry.register(*EVOLUTION_EVENTS)
    return registry


POLICY = RolePermissions({"sales": ["deal.*"], "reviewer": ["approval.decide"]})
REVIEWER = Actor.user("u-reviewer", roles="reviewer")
REVIEWER2 = Actor.user("u-reviewer-2", roles="reviewer")
OUTSIDER = Actor.user("u-outsider")
BOT = Actor.system("evolution-bot", roles="reviewer")


@define
class EvolutionEnv:
    """Stores, the approval workflow and a factory for orchestrators on one backend."""

    kind: str
    registry: SpecRegistry
    backend: Backend
    clock: FakeClock
    ids: SequentialIds
    suggestions: SuggestionStore
    intents: IntentStore
    buckets: TelemetryBucketStore
    approval_store: ApprovalStore
    workflow: ApprovalWorkflow
    out: Path

    def orchestrator(self, **kwargs: object) -> SpecSuggestionOrchestrator:
        """An orchestrator writing envelopes under `out`."""
        return SpecSuggestionOrchestrator(
            self.suggestions, self.workflow, output_dir=self.out, registry=self.registry,
            clock=self.clock, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip


@asynccontextmanager
async def evolution_env(kind: str, tmp_path: Path) -> AsyncIterator[EvolutionEnv]:
    """An environment on `memory`, `sqlite` or `postgres`."""
    registry = build_registry()
    clock = FakeClock(T0)
    ids = SequentialIds("ap")
    out = tmp_path / "suggestions"
    if kind == "memory":
        backend: Backend = MemoryBackend()
        approvals: ApprovalStore = MemoryApprovalStore()
        yield EvolutionEnv(
            kind, registry, backend, clock, ids, MemorySuggestionStore(), MemoryIntentStore(),
            MemoryTelemetryBucketStore(), approvals,
            ApprovalWorkflow(approvals, backend=backend, policy=POLICY, clock=clock, ids=ids), out,
        )  # fmt: skip
        return
    from contractspec.agent.sql import SqlApprovalStore
    from contractspec.agent.sql import create_all as agent_tables
    from contractspec.core.sql import SqlBackend
    from contractspec.evolution.sql import (
        SqlIntentStore,
        SqlSuggestionStore,
        SqlTelemetryBucketStore,
    )
    from contractspec.evolution.sql import create_all as evolution_tables

    async with temporary_sql_engine(kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        await agent_tables(engine)
        await evolution_tables(engine)
        approvals = SqlApprovalStore()
        yield EvolutionEnv(
            kind, registry, sql, clock, ids, SqlSuggestionStore(), SqlIntentStore(),
            SqlTelemetryBucketStore(), approvals,
            ApprovalWorkflow(approvals, backend=sql, policy=POLICY, clock=clock, ids=ids), out,
        )  # fmt: skip


async def event_names(env: EvolutionEnv) -> list[str]:
    """Names of the committed events of the environment's backend, oldest first."""
    if env.kind == "memory":
        return list(env.backend.events.names())  # type: ignore[attr-defined]
    from sqlalchemy import select

    from contractspec.core.sql import outbox_table

    tx = await env.backend.unit_of_work.begin(readonly=True)
    try:
        result = await tx.execute(  # type: ignore[attr-defined]
            select(outbox_table.c.name).order_by(outbox_table.c.position)
        )
        return [r[0] for r in result.all()]
    finally:
        await tx.rollback()
