"""The audit log is hash-chained per org: edits, deletions (also of the newest entry) and
reordering are detected on every backend."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, update

from contractspec.core import AuditRecord, Backend, MemoryAuditLog
from contractspec.core.sql import SqlAuditLog, audit_table


def record(n: int, org: str = "o1") -> AuditRecord:
    return AuditRecord(
        id=f"a{n}" if org == "o1" else f"{org}-a{n}",
        occurred_at=datetime(2024, 1, 1, 0, n, tzinfo=UTC),
        action="crm.deal.create",
        outcome="success",
        org_id=org,
        actor_id="u1",
        actor_kind="user",
        details={"n": n},
    )


async def append(backend: Backend, *records: AuditRecord) -> None:
    tx = await backend.unit_of_work.begin()
    for item in records:
        await backend.audit.record(item, tx)
    await tx.commit()


async def tamper(backend: Backend, how: str) -> None:
    audit = backend.audit
    if isinstance(audit, MemoryAuditLog):
        assert len(audit.entries) == 3  # the chain is fixed (hashed) when first read
        records = audit.records
        if how == "edit":
            records[1].details = {"n": 99}
        elif how == "delete_newest":
            records.pop()
        else:
            records[0], records[1] = records[1], records[0]
        return
    assert isinstance(audit, SqlAuditLog)
    t = audit_table
    async with audit.unit_of_work.engine.begin() as conn:
        if how == "edit":
            body = record(2).to_dict() | {"details": {"n": 99}}
            await conn.execute(update(t).where(t.c.id == "a2").values(body=body))
        elif how == "delete_newest":
            await conn.execute(delete(t).where(t.c.id == "a3"))
        else:
            await conn.execute(update(t).where(t.c.id == "a1").values(seq=-1))
            await conn.execute(update(t).where(t.c.id == "a2").values(seq=1))
            await conn.execute(update(t).where(t.c.id == "a1").values(seq=2))


async def test_chain_verifies_and_is_per_org(backend: Backend) -> None:
    """Untouched chains verify; each org has its own chain."""
    await append(backend, record(1), record(2), record(1, org="o2"))
    await append(backend, record(3))
    audit = backend.audit
    assert await _verify(audit, "o1") is True
    assert await _verify(audit, "o2") is True
    assert await _verify(audit, "nobody") is True


@pytest.mark.parametrize("how", ["edit", "delete_newest", "reorder"])
async def test_tampering_is_detected(backend: Backend, how: str) -> None:
    """Editing an entry, deleting the newest one, or swapping two breaks verification."""
    await append(backend, record(1), record(2), record(3))
    assert await _verify(backend.audit, "o1") is True
    await tamper(backend, how)
    assert await _verify(backend.audit, "o1") is False


async def _verify(audit: object, org: str) -> bool:
    if isinstance(audit, MemoryAuditLog):
        return audit.verify(org)
    assert isinstance(audit, SqlAuditLog)
    return await audit.verify(org)
