"""Traffic records carry the events a call committed (so golden suites can compare them)."""

from __future__ import annotations

import pytest
from core_app import POLICY_GRANTS

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    MemoryTrafficSink,
    NotFoundError,
    RolePermissions,
    SpecRegistry,
)

CTX = CallContext(actor=Actor.user("u1", roles="sales"), org_id="org-1")


@pytest.mark.parametrize("in_batch", [False, True], ids=["alone", "in_batch"])
async def test_committed_calls_carry_their_events_and_failed_ones_none(
    registry: SpecRegistry, backend: Backend, in_batch: bool
) -> None:
    """A deal create records its `crm.deal.created` payload; a failing create records none."""
    sink = MemoryTrafficSink()
    ex = Executor(registry, backend=backend, policy=RolePermissions(POLICY_GRANTS), traffic=sink)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)

    async def calls() -> None:
        await ex.execute(
            "crm.deal.create", {"contact_id": "c1", "title": "A", "amount": "12.50"}, CTX
        )
        with pytest.raises(NotFoundError):
            await ex.execute(
                "crm.deal.create", {"contact_id": "nobody", "title": "B", "amount": "1"}, CTX
            )

    if in_batch:
        async with ex.batch(commit_every=10):
            await calls()
    else:
        await calls()
    contact, created, failed = sink.calls
    assert contact.events == ()
    assert [(e.name, e.payload.model_dump(mode="json")["amount"]) for e in created.events] == [
        ("crm.deal.created", "12.50")
    ]
    assert created.events[0].payload.deal_id == created.output.id  # type: ignore[attr-defined, union-attr]
    assert failed.error is not None
    assert failed.events == ()
