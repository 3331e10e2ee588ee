"""Shared test app for the bus tests: a small CRM spec and store builders per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from attrs import define
from pydantic import BaseModel

from contractspec.bus import (
    AuditTrail,
    DeadLetterStore,
    DeliveryLogStore,
    InAppStore,
    MemoryAuditTrail,
    MemoryDeadLetterStore,
    MemoryDeliveryLog,
    MemoryInAppStore,
    MemoryOutboxStore,
    MemoryPreferenceStore,
    MemoryProcessedEventStore,
    OutboxStore,
    PreferenceStore,
    ProcessedEventStore,
)
from contractspec.core import (
    PII,
    EventEnvelope,
    HandlerCtx,
    MemoryUnitOfWork,
    SpecRegistry,
    UnitOfWork,
    define_command,
    define_entity,
    define_event,
    requires,
)
from contractspec.core.testing import temporary_sql_engine

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class Deal(BaseModel):
    id: str
    title: str
    amount: Decimal
    stage: str = "lead"
    owner_id: str = "u-1"


class DealCreated(BaseModel):
    deal_id: str
    title: str
    amount: Decimal
    owner_id: str = "u-1"
    contact_email: Annotated[str | None, PII] = None


class DealMoved(BaseModel):
    deal_id: str
    to_stage: str


deal_entity = define_entity("crm.deal", Deal)
deal_created = define_event("crm.deal.created", payload=DealCreated, key="deal_id")
deal_moved = define_event("crm.deal.moved", payload=DealMoved, key="deal_id")


class CreateDeal(BaseModel):
    id: str
    title: str
    amount: Decimal
    contact_email: str | None = None


class MoveDeal(BaseModel):
    deal_id: str
    to_stage: str


create_deal = define_command(
    "crm.deal.create",
    input=CreateDeal,
    output=Deal,
    emits=[deal_created],
    auth=requires("deal.write"),
)
move_deal = define_command(
    "crm.deal.move", input=MoveDeal, output=Deal, emits=[deal_moved], auth=requires("deal.write")
)


def build_registry() -> SpecRegistry:
    """The specs with handlers bound."""
    registry = SpecRegistry(deal_entity, deal_created, deal_moved, create_deal, move_deal)

    @registry.handler(create_deal)
    async def _create(inp: CreateDeal, ctx: HandlerCtx) -> Deal:
        deal = await ctx.repo(deal_entity).add(
            Deal(id=inp.id, title=inp.title, amount=inp.amount, owner_id=ctx.actor.id)
        )
        ctx.emit(
            deal_created,
            DealCreated(
                deal_id=deal.id,
                title=deal.title,
                amount=deal.amount,
                owner_id=deal.owner_id,
                contact_email=inp.contact_email,
            ),
        )
        return deal

    @registry.handler(move_deal)
    async def _move(inp: MoveDeal, ctx: HandlerCtx) -> Deal:
        repo = ctx.repo(deal_entity)
        deal = await repo.require(inp.deal_id)
        moved = deal.model_copy(update={"stage": inp.to_stage})
        await repo.update(moved)
        ctx.emit(deal_moved, DealMoved(deal_id=deal.id, to_stage=inp.to_stage))
        return moved

    return registry


def envelope(
    n: int,
    *,
    name: str = "crm.deal.created",
    key: str | None = None,
    org_id: str | None = "org-1",
    at: datetime = T0,
    **payload: Any,
) -> EventEnvelope:
    """A deterministic envelope number `n`."""
    if name == "crm.deal.moved":
        model: BaseModel = DealMoved(
            deal_id=payload.get("deal_id", f"d{n}"), to_stage=payload.get("to_stage", "won")
        )
    else:
        model = DealCreated(
            deal_id=payload.get("deal_id", f"d{n}"),
            title=payload.get("title", f"Deal {n}"),
            amount=Decimal(payload.get("amount", "10")),
            owner_id=payload.get("owner_id", "u-1"),
            contact_email=payload.get("contact_email"),
        )
    return EventEnvelope(
        id=f"ev-{n:04d}",
        name=name,
        version=1,
        occurred_at=at,
        payload=model,
        org_id=org_id,
        actor_id="u-1",
        actor_kind="user",
        key=key,
    )


@define
class Stores:
    """Every bus store on one backend, with the unit of work transactional stores need."""

    kind: str
    unit_of_work: UnitOfWork
    outbox: OutboxStore
    dead_letters: DeadLetterStore
    processed: ProcessedEventStore
    inbox: InAppStore
    preferences: PreferenceStore
    deliveries: DeliveryLogStore
    audit: AuditTrail
    engine: Any = None


@asynccontextmanager
async def open_stores(kind: str, directory: Path, **audit_kwargs: Any) -> AsyncIterator[Stores]:
    """All stores on `memory`, `sqlite` (a file) or `postgres` (a fresh schema)."""
    if kind == "memory":
        yield Stores(
            kind,
            MemoryUnitOfWork(),
            MemoryOutboxStore(),
            MemoryDeadLetterStore(),
            MemoryProcessedEventStore(),
            MemoryInAppStore(),
            MemoryPreferenceStore(),
            MemoryDeliveryLog(),
            MemoryAuditTrail(**audit_kwargs),
        )
        return
    from contractspec.bus.sql import (
        SqlAuditTrail,
        SqlDeadLetterStore,
        SqlDeliveryLog,
        SqlInAppStore,
        SqlOutboxStore,
        SqlPreferenceStore,
        SqlProcessedEventStore,
        create_bus_tables,
    )
    from contractspec.core.sql import SqlUnitOfWork

    async with temporary_sql_engine(kind, directory) as engine:
        await create_bus_tables(engine)
        yield Stores(
            kind,
            SqlUnitOfWork(engine),
            SqlOutboxStore(engine),
            SqlDeadLetterStore(engine),
            SqlProcessedEventStore(engine),
            SqlInAppStore(engine),
            SqlPreferenceStore(engine),
            SqlDeliveryLog(engine),
            SqlAuditTrail(engine, **audit_kwargs),
            engine,
        )
