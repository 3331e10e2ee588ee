"""The executor pipeline on every backend: validation, policy, events, audit, idempotency."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from core_app import Deal, Stage

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    IdempotencyConflictError,
    MemoryTelemetrySink,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.testing import FakeClock, SequentialIds

SALES = CallContext(actor=Actor.user("u-sales", roles="sales"), org_id="org-1", request_id="r-1")
POLICY = RolePermissions({"sales": ["deal.*", "contact.*"]})


def make_executor(registry: SpecRegistry, backend: Backend, **kwargs: object) -> Executor:
    return Executor(
        registry,
        backend=backend,
        policy=POLICY,
        clock=FakeClock(),
        ids=SequentialIds("id"),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_create_and_move_deal_commit_writes_events_and_audit(
    registry: SpecRegistry, backend: Backend
) -> None:
    """A command's writes, events and audit record are all visible after it succeeds."""
    ex = make_executor(registry, backend)
    await ex.execute(
        "crm.contact.create", {"id": "c1", "name": "Ada", "email": "ada@example.com"}, SALES
    )
    deal = await ex.execute(
        "crm.deal.create", {"contact_id": "c1", "title": "Big", "amount": "1200.50"}, SALES
    )
    assert isinstance(deal, Deal)
    assert deal.amount == Decimal("1200.50")
    moved = await ex.execute("crm.deal.move", {"deal_id": deal.id, "to_stage": "won"}, SALES)
    assert isinstance(moved, Deal)
    assert moved.stage is Stage.WON
    found = await ex.execute("crm.deal.search", {"stage": "won"}, SALES)
    assert found.model_dump()["total"] == 1
    assert found.model_dump()["deals"][0]["id"] == deal.id


async def test_invalid_input_never_reaches_the_handler(
    registry: SpecRegistry, backend: Backend
) -> None:
    """Bad input raises SpecValidationError naming each field; nothing is written."""
    ex = make_executor(registry, backend)
    with pytest.raises(SpecValidationError) as info:
        await ex.execute(
            "crm.deal.create", {"contact_id": "", "title": "x" * 201, "amount": "-1"}, SALES
        )
    fields = sorted(e["field"] for e in info.value.errors)
    assert fields == ["amount", "contact_id", "title"]
    assert "title: String should have at most 200 characters" in info.value.message
    listed = await ex.execute("crm.deal.search", {}, SALES)
    assert listed.model_dump()["total"] == 0


async def test_denied_without_permission_and_audited(
    registry: SpecRegistry, backend: Backend
) -> None:
    """A caller without the permission is denied with the reason; the denial is audited."""
    ex = make_executor(registry, backend)
    viewer = CallContext(actor=Actor.user("u-view", roles="viewer"), org_id="org-1")
    with pytest.raises(PolicyDeniedError) as info:
        await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, viewer)
    assert info.value.action == "contact.write"
    assert "none of the actor's roles (viewer) grants 'contact.write'" in info.value.reason


async def test_idempotency_key_replays_and_conflicts(
    registry: SpecRegistry, backend: Backend
) -> None:
    """Same key + same input returns the stored result; same key + other input conflicts."""
    telemetry = MemoryTelemetrySink()
    ex = make_executor(registry, backend, telemetry=telemetry)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, SALES)
    keyed = SALES.replace(idempotency_key="k-1")
    first = await ex.execute(
        "crm.deal.create", {"contact_id": "c1", "title": "A", "amount": "10"}, keyed
    )
    again = await ex.execute(
        "crm.deal.create", {"contact_id": "c1", "title": "A", "amount": "10"}, keyed
    )
    assert again == first
    with pytest.raises(IdempotencyConflictError):
        await ex.execute(
            "crm.deal.create", {"contact_id": "c1", "title": "B", "amount": "10"}, keyed
        )
    listed = await ex.execute("crm.deal.search", {}, SALES)
    assert listed.model_dump()["total"] == 1
    assert [s.success for s in telemetry.samples] == [True, True, True, False, True]


async def test_concurrent_repeats_commit_one_effect(
    registry: SpecRegistry, backend: Backend
) -> None:
    """Concurrent calls with one idempotency key all get the same deal; exactly one is stored."""
    ex = make_executor(registry, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, SALES)
    keyed = SALES.replace(idempotency_key="k-par")
    results = await asyncio.gather(
        *(
            ex.execute("crm.deal.create", {"contact_id": "c1", "title": "A", "amount": "10"}, keyed)
            for _ in range(4)
        )
    )
    assert len({r.model_dump()["id"] for r in results}) == 1
    listed = await ex.execute("crm.deal.search", {}, SALES)
    assert listed.model_dump()["total"] == 1
