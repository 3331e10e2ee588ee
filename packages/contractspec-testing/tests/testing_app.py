"""A small billing app used across the contractspec-testing tests (specs + handlers)."""

from __future__ import annotations

import enum
import os
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, Field

from contractspec.core import (
    PII,
    AllowAll,
    CallContext,
    ConflictError,
    Executor,
    HandlerCtx,
    NotFoundError,
    SpecRegistry,
    authenticated,
    define_command,
    define_entity,
    define_event,
    define_query,
    public,
)
from contractspec.core.testing import FakeClock, SequentialIds


class Plan(enum.StrEnum):
    """Subscription plans."""

    FREE = "free"
    PRO = "pro"


class Line(BaseModel):
    sku: Annotated[str, Field(min_length=1, max_length=32)]
    quantity: Annotated[int, Field(ge=1, le=1000)]
    unit_price: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2)]


class QuoteIn(BaseModel):
    customer_email: Annotated[str, Field(max_length=200), PII]
    lines: Annotated[list[Line], Field(min_length=1, max_length=50)]
    plan: Plan = Plan.FREE
    note: str | None = None


class QuoteOut(BaseModel):
    customer_email: Annotated[str, PII]
    total: Decimal
    discount: Decimal
    lines: int
    labels: dict[str, int]


class Customer(BaseModel):
    id: str
    name: Annotated[str, Field(min_length=1, max_length=120)]
    email: Annotated[str, PII]
    phone: str | None = None
    created_at: AwareDatetime


customer_entity = define_entity("billing.customer", Customer)


class CreateCustomer(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=120)]
    email: Annotated[str, Field(max_length=200), PII]
    phone: str | None = None


class GetCustomer(BaseModel):
    id: Annotated[str, Field(min_length=1)]


class Welcome(BaseModel):
    customer_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1, max_length=120)]


class WelcomeOut(BaseModel):
    message: str


class CustomerWelcomed(BaseModel):
    customer_id: str
    name: Annotated[str, PII]
    text: str
    sent_at: AwareDatetime


customer_welcomed = define_event("billing.customer.welcomed", payload=CustomerWelcomed)

quote = define_query(
    "billing.invoice.quote", input=QuoteIn, output=QuoteOut, auth=public(), pii=["input.note"]
)
create_customer = define_command(
    "billing.customer.create", input=CreateCustomer, output=Customer, auth=authenticated()
)
get_customer = define_query(
    "billing.customer.get", input=GetCustomer, output=Customer, auth=authenticated()
)
welcome = define_command(
    "billing.customer.welcome",
    input=Welcome,
    output=WelcomeOut,
    auth=authenticated(),
    emits=[customer_welcomed],
)

#: Greeting of the welcome event; tests change it (or set TESTING_APP_WELCOME_TEXT in a
#: subprocess) to show golden suites catching a changed event payload.
WELCOME_TEXT = {
    "template": os.environ.get("TESTING_APP_WELCOME_TEXT", "Dear {name}, welcome aboard")
}

#: Discount of the PRO plan; tests change it (or set TESTING_APP_PRO_DISCOUNT in a subprocess)
#: to show golden suites catching a changed handler.
PRO_DISCOUNT = {"rate": Decimal(os.environ.get("TESTING_APP_PRO_DISCOUNT", "0.10"))}


def build_registry() -> SpecRegistry:
    """Register the specs and bind the handlers."""
    registry = SpecRegistry(
        customer_entity, customer_welcomed, quote, create_customer, get_customer, welcome
    )

    @registry.handler(quote)
    async def _quote(inp: QuoteIn, ctx: HandlerCtx) -> QuoteOut:
        gross = sum((line.unit_price * line.quantity for line in inp.lines), Decimal("0"))
        rate = PRO_DISCOUNT["rate"] if inp.plan is Plan.PRO else Decimal("0")
        discount = (gross * rate).quantize(Decimal("0.01"))
        labels: dict[str, int] = {}
        for line in inp.lines:
            labels[line.sku] = labels.get(line.sku, 0) + line.quantity
        return QuoteOut(
            customer_email=inp.customer_email,
            total=gross - discount,
            discount=discount,
            lines=len(inp.lines),
            labels=labels,
        )

    @registry.handler(create_customer)
    async def _create(inp: CreateCustomer, ctx: HandlerCtx) -> Customer:
        repo = ctx.repo(customer_entity)
        if await repo.count({"email": inp.email}):
            raise ConflictError(f"a customer with e-mail {inp.email} exists")
        customer = Customer(
            id=ctx.new_id(), name=inp.name, email=inp.email, phone=inp.phone, created_at=ctx.now()
        )
        return await repo.add(customer)

    @registry.handler(get_customer)
    async def _get(inp: GetCustomer, ctx: HandlerCtx) -> Customer:
        customer = await ctx.repo(customer_entity).get(inp.id)
        if customer is None:
            raise NotFoundError(f"customer {inp.id!r} not found")
        return customer

    @registry.handler(welcome)
    async def _welcome(inp: Welcome, ctx: HandlerCtx) -> WelcomeOut:
        text = WELCOME_TEXT["template"].format(name=inp.name)
        ctx.emit(
            customer_welcomed,
            CustomerWelcomed(
                customer_id=inp.customer_id, name=inp.name, text=text, sent_at=ctx.now()
            ),
        )
        return WelcomeOut(message=f"welcome sent to {inp.name}")

    return registry


def make_executor(registry: SpecRegistry, **kwargs: object) -> Executor:
    """An executor over memory ports with a fake clock and sequential ids."""
    return Executor(
        registry,
        policy=AllowAll(),
        clock=FakeClock(),
        ids=SequentialIds("c"),
        **kwargs,  # type: ignore[arg-type]
    )


def ctx(trace: str, *, org: str = "org-1", actor: str = "u-1") -> CallContext:
    """A user call context with the given trace id."""
    from contractspec.core import Actor

    return CallContext(actor=Actor.user(actor), org_id=org, trace_id=trace, request_id=f"r-{trace}")
