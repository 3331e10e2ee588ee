"""Inside a batch on PostgreSQL, writes that cannot fail (updates of rows the batch already
wrote) are sent with the next statement; a failing call in between never takes them along."""

from __future__ import annotations

import pytest
from core_app import POLICY_GRANTS, Stage, deal_entity
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import (
    Actor,
    CallContext,
    ConflictError,
    Executor,
    RolePermissions,
    SpecRegistry,
)
from contractspec.core.sql import SqlBackend, audit_table, outbox_table

CTX = CallContext(actor=Actor.user("u1", roles="sales"), org_id="org-1")


async def _executor(registry: SpecRegistry, engine: AsyncEngine) -> tuple[Executor, SqlBackend]:
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    return Executor(registry, backend=backend, policy=RolePermissions(POLICY_GRANTS)), backend


async def _counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        events = (await conn.execute(select(func.count()).select_from(outbox_table))).scalar_one()
        audits = (await conn.execute(select(func.count()).select_from(audit_table))).scalar_one()
    return int(events), int(audits)


async def test_moves_between_a_failing_call_and_a_read_are_all_kept(
    registry: SpecRegistry, sql_engine: AsyncEngine
) -> None:
    """create, move (deferred), a conflicting create (fails), move (deferred), a search (sees
    both moves): after the commit the deal is won with its three events and five audit entries."""
    ex, backend = await _executor(registry, sql_engine)
    async with ex.batch(commit_every=100):
        await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)
        deal = await ex.execute(
            "crm.deal.create", {"contact_id": "c1", "title": "T", "amount": "5"}, CTX
        )
        deal_id = deal.id  # type: ignore[attr-defined]
        await ex.execute("crm.deal.move", {"deal_id": deal_id, "to_stage": "qualified"}, CTX)
        with pytest.raises(ConflictError):
            await ex.execute("crm.contact.create", {"id": "c1", "name": "Again"}, CTX)
        await ex.execute("crm.deal.move", {"deal_id": deal_id, "to_stage": "won"}, CTX)
        found = await ex.execute("crm.deal.search", {"stage": "won"}, CTX)
        assert [d.id for d in found.deals] == [deal_id]  # type: ignore[attr-defined]
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        stored = await backend.entities.repository(deal_entity, tx, "org-1").require(deal_id)
    finally:
        await tx.rollback()
    assert stored.stage is Stage.WON
    assert await _counts(sql_engine) == (3, 4)  # created + 2 moved; contact, deal, 2 moves
    assert await backend.audit.verify("org-1")


async def test_deferred_moves_vanish_with_a_batch_that_raises(
    registry: SpecRegistry, sql_engine: AsyncEngine
) -> None:
    """A block that raises after deferred moves leaves none of the batch's work."""
    ex, backend = await _executor(registry, sql_engine)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)

    async def create_move_and_fail() -> None:
        async with ex.batch(commit_every=100):
            deal = await ex.execute(
                "crm.deal.create", {"contact_id": "c1", "title": "T", "amount": "5"}, CTX
            )
            move = {"deal_id": deal.id, "to_stage": "qualified"}  # type: ignore[attr-defined]
            await ex.execute("crm.deal.move", move, CTX)
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        await create_move_and_fail()
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        assert await backend.entities.repository(deal_entity, tx, "org-1").count() == 0
    finally:
        await tx.rollback()
    assert await _counts(sql_engine) == (0, 1)
