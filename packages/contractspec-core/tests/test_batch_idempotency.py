"""Idempotency keys inside a batch: a replay, and a keyed call that fails after reserving its key
(the reservation must vanish with it, so a retry with the same key runs)."""

from __future__ import annotations

import pytest
from core_app import POLICY_GRANTS, deal_entity

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    NotFoundError,
    RolePermissions,
    SpecRegistry,
)

CTX = CallContext(actor=Actor.user("u1", roles="sales"), org_id="org-1")


def keyed(key: str) -> CallContext:
    return CTX.replace(idempotency_key=key)


async def test_keyed_calls_in_a_batch_replay_and_release_failed_reservations(
    registry: SpecRegistry, backend: Backend
) -> None:
    """k1 runs then replays (same deal); k2 fails (unknown contact) and is retried with the same
    key and a valid contact, which runs; afterwards exactly two deals exist and both keys replay."""
    ex = Executor(registry, backend=backend, policy=RolePermissions(POLICY_GRANTS))
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)
    good = {"contact_id": "c1", "title": "A", "amount": "1"}
    bad = {"contact_id": "nobody", "title": "A", "amount": "1"}
    async with ex.batch(commit_every=100):
        first = await ex.execute("crm.deal.create", good, keyed("k1"))
        again = await ex.execute("crm.deal.create", good, keyed("k1"))
        with pytest.raises(NotFoundError):
            await ex.execute("crm.deal.create", bad, keyed("k2"))
        await ex.execute("crm.contact.create", {"id": "nobody", "name": "Nob"}, CTX)
        retried = await ex.execute("crm.deal.create", bad, keyed("k2"))
    assert again == first
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        deals = await backend.entities.repository(deal_entity, tx, "org-1").count()
    finally:
        await tx.rollback()
    assert deals == 2
    assert await ex.execute("crm.deal.create", good, keyed("k1")) == first
    assert await ex.execute("crm.deal.create", bad, keyed("k2")) == retried
