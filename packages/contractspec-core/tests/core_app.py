"""A small CRM app used across the core tests (specs + handlers)."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, Field

from contractspec.core import (
    PII,
    HandlerCtx,
    Index,
    NotFoundError,
    SpecRegistry,
    SpecValidationError,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    requires,
)


class Stage(enum.StrEnum):
    """Pipeline stages, in order."""

    LEAD = "lead"
    QUALIFIED = "qualified"
    WON = "won"
    LOST = "lost"


class Contact(BaseModel):
    id: str
    name: Annotated[str, Field(min_length=1, max_length=120)]
    email: Annotated[str | None, PII] = None


class Deal(BaseModel):
    id: str
    contact_id: str
    title: Annotated[str, Field(min_length=1, max_length=200)]
    amount: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]
    stage: Stage = Stage.LEAD
    tags: list[str] = []
    created_at: AwareDatetime
    closed_at: AwareDatetime | None = None


class Currency(BaseModel):
    code: Annotated[str, Field(min_length=3, max_length=3)]
    name: str
    rate: float | None = None


currency_entity = define_entity("ref.currency", Currency, primary_key="code", tenant_scoped=False)

contact_entity = define_entity(
    "crm.contact", Contact, indexes=[Index(("email",), unique=True)], description="A person."
)
deal_entity = define_entity("crm.deal", Deal, indexes=["stage", ("contact_id", "stage")])


class DealCreated(BaseModel):
    deal_id: str
    amount: Decimal


class DealMoved(BaseModel):
    deal_id: str
    from_stage: Stage
    to_stage: Stage


deal_created = define_event("crm.deal.created", payload=DealCreated, key="deal_id")
deal_moved = define_event("crm.deal.moved", payload=DealMoved, key="deal_id")


class CreateContact(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=120)]
    email: Annotated[str | None, Field(max_length=200), PII] = None


class CreateDeal(BaseModel):
    contact_id: Annotated[str, Field(min_length=1, max_length=64)]
    title: Annotated[str, Field(min_length=1, max_length=200)]
    amount: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]


class MoveDeal(BaseModel):
    deal_id: str
    to_stage: Stage


class SearchDeals(BaseModel):
    stage: Stage | None = None
    limit: Annotated[int, Field(ge=1, le=100)] = 20


class DealList(BaseModel):
    deals: list[Deal]
    total: int


create_contact = define_command(
    "crm.contact.create", input=CreateContact, output=Contact, auth=requires("contact.write")
)
create_deal = define_command(
    "crm.deal.create",
    input=CreateDeal,
    output=Deal,
    emits=[deal_created],
    auth=requires("deal.write"),
    idempotent=True,
)
move_deal = define_command(
    "crm.deal.move", input=MoveDeal, output=Deal, emits=[deal_moved], auth=requires("deal.write")
)
search_deals = define_query(
    "crm.deal.search", input=SearchDeals, output=DealList, auth=authenticated()
)

ORDER = [Stage.LEAD, Stage.QUALIFIED, Stage.WON]
#: Role grants used by the tests' RolePermissions decider.
POLICY_GRANTS = {"sales": ["deal.*", "contact.*"]}
#: A command that writes, reads (forcing a flush) and then fails: for savepoint tests.
FLUSHING_OPERATION = "crm.deal.create_then_fail"
create_then_fail = define_command(
    FLUSHING_OPERATION,
    input=CreateDeal,
    output=Deal,
    emits=[deal_created],
    auth=requires("deal.write"),
)


def build_registry() -> SpecRegistry:
    """Register the specs and bind the handlers."""
    registry = SpecRegistry(
        contact_entity,
        deal_entity,
        currency_entity,
        create_contact,
        create_deal,
        move_deal,
        search_deals,
        create_then_fail,
    )

    @registry.handler(create_contact)
    async def _create_contact(inp: CreateContact, ctx: HandlerCtx) -> Contact:
        contact = Contact(id=inp.id, name=inp.name, email=inp.email)
        return await ctx.repo(contact_entity).add(contact)

    @registry.handler(create_deal)
    async def _create_deal(inp: CreateDeal, ctx: HandlerCtx) -> Deal:
        if await ctx.repo(contact_entity).get(inp.contact_id) is None:
            raise NotFoundError(f"contact {inp.contact_id!r} not found")
        deal = Deal(
            id=ctx.new_id(),
            contact_id=inp.contact_id,
            title=inp.title,
            amount=inp.amount,
            created_at=ctx.now(),
        )
        await ctx.repo(deal_entity).add(deal)
        ctx.emit(deal_created, DealCreated(deal_id=deal.id, amount=deal.amount))
        return deal

    @registry.handler(move_deal)
    async def _move_deal(inp: MoveDeal, ctx: HandlerCtx) -> Deal:
        repo = ctx.repo(deal_entity)
        deal = await repo.require(inp.deal_id)
        if deal.stage in (Stage.WON, Stage.LOST):
            raise SpecValidationError(f"deal {deal.id} is closed ({deal.stage}); it cannot move")
        closed: datetime | None = ctx.now() if inp.to_stage in (Stage.WON, Stage.LOST) else None
        moved = deal.model_copy(update={"stage": inp.to_stage, "closed_at": closed})
        await repo.update(moved)
        ctx.emit(
            "crm.deal.moved",
            {"deal_id": deal.id, "from_stage": deal.stage, "to_stage": inp.to_stage},
        )
        return moved

    @registry.handler(search_deals)
    async def _search(inp: SearchDeals, ctx: HandlerCtx) -> DealList:
        repo = ctx.repo(deal_entity)
        where = {"stage": inp.stage} if inp.stage else None
        deals = await repo.find(where, order_by=["-amount"], limit=inp.limit)
        return DealList(deals=deals, total=await repo.count(where))

    @registry.handler(create_then_fail)
    async def _create_then_fail(inp: CreateDeal, ctx: HandlerCtx) -> Deal:
        deal = await _create_deal(inp, ctx)
        await ctx.repo(deal_entity).count()  # flushes the buffered insert inside the savepoint
        raise NotFoundError(f"no such deal after creating {deal.id}")

    return registry
