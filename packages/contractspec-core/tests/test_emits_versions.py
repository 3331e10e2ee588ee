"""An operation may declare two versions of one event (a side-by-side event migration)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    EventRef,
    Executor,
    HandlerContractError,
    HandlerCtx,
    SpecDefinitionError,
    SpecRegistry,
    define_command,
    define_event,
    public,
)
from contractspec.core.testing import FakeClock, SequentialIds


class PlaceOrder(BaseModel):
    order_id: str
    cents: int


class Placed(BaseModel):
    order_id: str


class PlacedV1(BaseModel):
    order_id: str
    amount_cents: int


class PlacedV2(BaseModel):
    order_id: str
    amount: str
    currency: str


placed_v1 = define_event("shop.order.placed", payload=PlacedV1, key="order_id")
placed_v2 = define_event("shop.order.placed", version=2, payload=PlacedV2, key="order_id")
ACTOR = CallContext(actor=Actor.user("u1"), org_id="o1", request_id="req-1")


def build(handler: Any, emits: list[Any]) -> SpecRegistry:
    spec = define_command(
        "shop.order.place", input=PlaceOrder, output=Placed, emits=emits, auth=public()
    )
    registry = SpecRegistry(placed_v1, placed_v2, spec)
    registry.bind(spec, handler)
    return registry


async def both_versions(inp: PlaceOrder, ctx: HandlerCtx) -> Placed:
    ctx.emit(placed_v1, {"order_id": inp.order_id, "amount_cents": inp.cents})
    ctx.emit(
        "shop.order.placed@2",
        {"order_id": inp.order_id, "amount": f"{inp.cents / 100:.2f}", "currency": "EUR"},
    )
    return Placed(order_id=inp.order_id)


@pytest.fixture
def registry() -> SpecRegistry:
    """The backend fixture's registry: the side-by-side migration."""
    return build(both_versions, [placed_v1, placed_v2])


async def committed_events(backend: Backend) -> list[tuple[str, int, dict[str, Any]]]:
    """(name, version, payload) of every committed event, in commit order."""
    if hasattr(backend, "engine"):
        import json

        from sqlalchemy import select

        from contractspec.core.sql import outbox_table as t

        async with backend.engine.connect() as conn:
            rows = await conn.execute(
                select(t.c.name, t.c.version, t.c.payload).order_by(t.c.position)
            )
            return [
                (name, version, json.loads(payload) if isinstance(payload, str) else payload)
                for name, version, payload in rows.all()
            ]
    return [
        (e.name, e.version, e.payload.model_dump())
        for e in backend.events.events  # type: ignore[attr-defined]
    ]


async def test_a_handler_emits_both_declared_versions(
    registry: SpecRegistry, backend: Backend
) -> None:
    """Both versions of the event commit, each validated against its own payload model."""
    ex = Executor(registry, backend=backend, clock=FakeClock(), ids=SequentialIds())
    await ex.execute("shop.order.place", {"order_id": "o-7", "cents": 1250}, ACTOR)
    assert await committed_events(backend) == [
        ("shop.order.placed", 1, {"order_id": "o-7", "amount_cents": 1250}),
        ("shop.order.placed", 2, {"order_id": "o-7", "amount": "12.50", "currency": "EUR"}),
    ]


async def test_a_bare_name_is_ambiguous_with_two_versions() -> None:
    """`ctx.emit("name")` with two declared versions names both refs instead of guessing."""

    async def bare(inp: PlaceOrder, ctx: HandlerCtx) -> Placed:
        ctx.emit("shop.order.placed", {"order_id": "x", "amount_cents": 1})
        return Placed(order_id="x")

    ex = Executor(build(bare, [placed_v1, placed_v2]))
    with pytest.raises(
        HandlerContractError,
        match=re.escape(
            "declares at several versions (shop.order.placed@1, shop.order.placed@2); pass the "
            "EventSpec or one of these refs"
        ),
    ):
        await ex.execute("shop.order.place", {"order_id": "x", "cents": 1}, ACTOR)


async def test_an_undeclared_version_is_refused() -> None:
    """Declaring only @2 refuses an emit of @1 (by spec or by ref); a bare name means @2."""
    emitted: list[int] = []

    async def old_one(inp: PlaceOrder, ctx: HandlerCtx) -> Placed:
        emitted.append(ctx.emit("shop.order.placed", {**v2_payload}).version)
        ctx.emit(placed_v1, {"order_id": "x", "amount_cents": 1})
        return Placed(order_id="x")

    v2_payload = {"order_id": "x", "amount": "0.01", "currency": "EUR"}
    ex = Executor(build(old_one, [placed_v2]))
    with pytest.raises(
        HandlerContractError,
        match=re.escape(
            "emitted 'shop.order.placed@1', which it does not declare; add it to emits= "
            "(declared: shop.order.placed@2)"
        ),
    ):
        await ex.execute("shop.order.place", {"order_id": "x", "cents": 1}, ACTOR)
    assert emitted == [2]


@pytest.mark.parametrize(
    "emits",
    [
        [placed_v1, placed_v1],
        [placed_v2, "shop.order.placed@2"],
        ["shop.order.placed", "shop.order.placed@2"],
        ["shop.order.placed", "shop.order.placed"],
    ],
    ids=["same-spec-twice", "spec-and-ref", "bare-and-versioned", "bare-twice"],
)
def test_true_duplicates_are_still_refused(emits: list[Any]) -> None:
    """The same version twice, or a bare name beside another entry of it, is refused."""
    with pytest.raises(SpecDefinitionError, match="more than once") as info:
        define_command("shop.order.place", input=PlaceOrder, output=Placed, emits=emits)
    assert info.value.details == {"field": "emits"}


def test_two_versions_are_declared_and_exported() -> None:
    """Two explicit versions are kept in `emits` and both appear in the IR."""
    spec = define_command(
        "shop.order.place",
        input=PlaceOrder,
        output=Placed,
        emits=["shop.order.placed@1", placed_v2],
    )
    assert spec.emits == (EventRef("shop.order.placed", 1), placed_v2)
    registry = SpecRegistry(placed_v1, placed_v2, spec)
    (op,) = registry.to_ir()["specs"]["operation"]
    assert op["emits"] == ["shop.order.placed@1", "shop.order.placed@2"]
