"""The audit log is hash-chained per org and one verifier checks it on every backend.

Edits (of the body or of an indexed column), deletions (also of the newest entry), reordering, a
deleted head and forged entries beyond the head are detected; a tampered chain is not extended;
a keyed chain cannot be re-hashed without its key; an exported anchor catches a truncated and
re-hashed chain.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import (
    AuditRecord,
    AuditTamperedError,
    Backend,
    ChainAnchor,
    ConfigurationError,
    JsonlAnchorSink,
    MemoryAuditLog,
    VerifiableAuditLog,
    VerifyResult,
    audit_hash,
    canonical_json,
    verify_chain,
)
from contractspec.core.sql import (
    AUDIT_INDEXED_COLUMNS,
    SqlAuditLog,
    SqlUnitOfWork,
    audit_head_table,
    audit_table,
    create_all,
    metadata,
)
from contractspec.core.testing import FakeClock

KEY = b"k" * 32
AuditLog = MemoryAuditLog | SqlAuditLog


def record(n: int, org: str = "o1", **changes: Any) -> AuditRecord:
    base = AuditRecord(
        id=f"a{n}" if org == "o1" else f"{org}-a{n}",
        occurred_at=datetime(2024, 1, 1, 0, n, tzinfo=UTC),
        action="crm.deal.create",
        outcome="success",
        org_id=org,
        actor_id="u1",
        actor_kind="user",
        target_type="crm.deal",
        target_id=f"d{n}",
        request_id=f"r{n}",
        trace_id=f"t{n}",
        details={"n": n},
    )
    return evolve(base, **changes)


def audit_of(backend: Backend) -> AuditLog:
    audit = backend.audit
    assert isinstance(audit, MemoryAuditLog | SqlAuditLog)
    return audit


async def append(backend: Backend, *records: AuditRecord) -> None:
    tx = await backend.unit_of_work.begin()
    try:
        for item in records:
            await backend.audit.record(item, tx)
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise


def engine_of(audit: SqlAuditLog) -> AsyncEngine:
    return audit.unit_of_work.engine


async def sql_chain(engine: AsyncEngine, org: str = "o1") -> list[tuple[int, str | None, str]]:
    t = audit_table
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(t.c.seq, t.c.prev_hash, t.c.hash).where(t.c.org_key == org).order_by(t.c.seq)
        )
        return [(int(r.seq), r.prev_hash, r.hash) for r in rows]


def sql_row(entry: AuditRecord, seq: int, prev: str | None, digest: str) -> dict[str, Any]:
    """A `cs_audit_log` row as a database writer would forge it."""
    return {
        "id": entry.id,
        "org_key": entry.org_id or "",
        "seq": seq,
        "occurred_at": entry.occurred_at,
        "action": entry.action,
        "outcome": entry.outcome,
        "actor_id": entry.actor_id,
        "actor_kind": entry.actor_kind,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "request_id": entry.request_id,
        "trace_id": entry.trace_id,
        "body": entry.to_dict(),
        "prev_hash": prev,
        "hash": digest,
    }


async def rewrite_sql_chain(
    engine: AsyncEngine, keep: int, new: list[AuditRecord], *, key: bytes | None = None
) -> None:
    """Keep entries 1..keep, replace the rest by `new` re-hashed (with `key`), move the head."""
    t, h = audit_table, audit_head_table
    chain = await sql_chain(engine)
    prev = chain[keep - 1][2] if keep else None
    async with engine.begin() as conn:
        await conn.execute(delete(t).where(t.c.org_key == "o1", t.c.seq > keep))
        seq = keep
        for entry in new:
            seq += 1
            digest = audit_hash(prev, entry.to_dict(), key=key)
            await conn.execute(insert(t).values(sql_row(entry, seq, prev, digest)))
            prev = digest
        await conn.execute(update(h).where(h.c.org_key == "o1").values(seq=seq, hash=prev))


def memory_rows(
    audit: MemoryAuditLog, org: str = "o1"
) -> list[tuple[int, dict[str, Any], str | None, str]]:
    return [(e.seq, e.record.to_dict(), e.prev_hash, e.hash) for e in audit.for_org(org)]


# -- what verify() detects ------------------------------------------------------------------------


async def test_chain_verifies_and_is_per_org(backend: Backend) -> None:
    """Untouched chains verify; each org has its own chain."""
    await append(backend, record(1), record(2), record(1, org="o2"))
    await append(backend, record(3))
    audit = audit_of(backend)
    assert isinstance(audit, VerifiableAuditLog)
    assert await audit.verify("o1") == VerifyResult(True, "o1", 3)
    assert await audit.verify("o2") == VerifyResult(True, "o2", 1)
    assert await audit.verify("nobody") == VerifyResult(True, "nobody", 0)


async def tamper(audit: AuditLog, how: str) -> None:
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
    t = audit_table
    async with engine_of(audit).begin() as conn:
        if how == "edit":
            body = record(2).to_dict() | {"details": {"n": 99}}
            await conn.execute(update(t).where(t.c.id == "a2").values(body=body))
        elif how == "delete_newest":
            await conn.execute(delete(t).where(t.c.id == "a3"))
        else:
            await conn.execute(update(t).where(t.c.id == "a1").values(seq=-1))
            await conn.execute(update(t).where(t.c.id == "a2").values(seq=1))
            await conn.execute(update(t).where(t.c.id == "a1").values(seq=2))


@pytest.mark.parametrize(
    ("how", "bad_seq", "reason"),
    [
        ("edit", 2, "hash mismatch: the entry was edited"),
        (
            "delete_newest",
            3,
            "the head says the chain ends at 3 but it ends at 2: the latest entries were deleted "
            "or the head was altered",
        ),
        ("reorder", 1, None),
    ],
)
async def test_tampering_is_detected(
    backend: Backend, how: str, bad_seq: int, reason: str | None
) -> None:
    """Editing an entry, deleting the newest one, or swapping two breaks verification there."""
    await append(backend, record(1), record(2), record(3))
    audit = audit_of(backend)
    assert (await audit.verify("o1")).ok is True
    await tamper(audit, how)
    verdict = await audit.verify("o1")
    assert (verdict.ok, verdict.first_bad_seq) == (False, bad_seq)
    if reason is not None:
        assert verdict.reason == reason


async def test_a_deleted_head_is_detected_and_the_chain_is_not_extended(backend: Backend) -> None:
    """Without its head row a chain with entries fails verify; appends raise AuditTamperedError."""
    await append(backend, record(1), record(2), record(3))
    audit = audit_of(backend)
    if isinstance(audit, MemoryAuditLog):
        del audit.heads["o1"]
    else:
        h = audit_head_table
        async with engine_of(audit).begin() as conn:
            await conn.execute(delete(h).where(h.c.org_key == "o1"))
    verdict = await audit.verify("o1")
    assert verdict == VerifyResult(
        False,
        "o1",
        1,
        None,
        "the chain head row is missing: entries exist but the head was deleted",
    )
    with pytest.raises(AuditTamperedError) as info:
        await append(backend, record(4))
    assert info.value.code == "audit_tampered"
    assert info.value.details == {"org_id": "o1", "head_seq": None, "last_seq": 3}
    assert info.value.message.startswith(
        "the audit chain of org 'o1' has entries (up to 3) but no head: the head was deleted"
    )
    assert await audit.verify("o1") == verdict  # the failed append left nothing


async def test_a_forged_entry_beyond_the_head_is_detected_and_blocks_appends_clearly(
    backend: Backend,
) -> None:
    """An entry inserted past the head fails verify; appends raise AuditTamperedError (no clash)."""
    await append(backend, record(1), record(2), record(3))
    audit = audit_of(backend)
    forged = record(4, actor_id="mallory")
    if isinstance(audit, MemoryAuditLog):
        audit.records.append(forged)
    else:
        ((_, _, h3),) = (await sql_chain(engine_of(audit)))[2:]
        # A well-formed entry: right position, linked and hashed like a real one.
        row = sql_row(forged, 4, h3, audit_hash(h3, forged.to_dict()))
        async with engine_of(audit).begin() as conn:
            await conn.execute(insert(audit_table).values(row))
    verdict = await audit.verify("o1")
    assert verdict == VerifyResult(
        False,
        "o1",
        4,
        4,
        "entry 4 is beyond the chain head (3): it was not appended through the audit log (forged)",
    )
    with pytest.raises(AuditTamperedError) as info:
        await append(backend, record(5))
    assert info.value.details == {"org_id": "o1", "head_seq": 3, "last_seq": 4}
    assert info.value.message == (
        "the audit chain of org 'o1' has entries beyond its head (3), up to 4: they were not "
        "appended through the audit log (forged); refusing to extend a tampered chain: run "
        "verify('o1'), then remove the forged entries or restore the head"
    )
    assert await audit.verify("o1") == verdict
    # Other orgs are unaffected; in SQL, deleting the forged row unblocks the org.
    await append(backend, record(1, org="o2"))
    assert (await audit.verify("o2")).ok is True
    if isinstance(audit, SqlAuditLog):
        async with engine_of(audit).begin() as conn:
            await conn.execute(delete(audit_table).where(audit_table.c.id == "a4"))
        await append(backend, record(5))
        assert await audit.verify("o1") == VerifyResult(True, "o1", 4)


NEW_VALUES: dict[str, Any] = {
    "id": "forged-id",
    "occurred_at": datetime(2030, 1, 1, tzinfo=UTC),
    "action": "crm.deal.delete",
    "outcome": "denied",
    "actor_id": "mallory",
    "actor_kind": "agent",
    "target_type": "crm.contact",
    "target_id": "d9",
    "request_id": "r-forged",
    "trace_id": "t-forged",
}


@pytest.mark.parametrize("column", AUDIT_INDEXED_COLUMNS)
async def test_an_edited_indexed_column_is_detected(backend: Backend, column: str) -> None:
    """Changing a queryable column (or, in memory, the record) fails verify at that entry."""
    await append(backend, record(1), record(2), record(3))
    audit = audit_of(backend)
    assert (await audit.verify("o1")).ok is True
    if isinstance(audit, MemoryAuditLog):
        setattr(audit.records[1], column, NEW_VALUES[column])
        reason = "hash mismatch: the entry was edited"
    else:
        t = audit_table
        async with engine_of(audit).begin() as conn:
            await conn.execute(
                update(t)
                .where(t.c.org_key == "o1", t.c.seq == 2)
                .values({column: NEW_VALUES[column]})
            )
        reason = f"column {column} disagrees with the hashed body: the entry was edited"
    assert await audit.verify("o1") == VerifyResult(False, "o1", 2, 2, reason)


# -- keyed chains ---------------------------------------------------------------------------------


def keyed(backend: Backend, key: bytes | None = KEY) -> AuditLog:
    """Switch the backend to a keyed audit log (as an app configures it) and return it."""
    if isinstance(backend.audit, MemoryAuditLog):
        backend.audit = log = MemoryAuditLog(key=key)
    else:
        assert isinstance(backend.audit, SqlAuditLog)
        backend.audit = log = SqlAuditLog(backend.audit.unit_of_work, key=key)
    return log


async def verify_without_key(audit: AuditLog, key: bytes | None = None) -> VerifyResult:
    """Verify as someone without the app's key (no key, or another one) would."""
    if isinstance(audit, MemoryAuditLog):
        head = (audit.heads["o1"], audit.for_org("o1")[-1].hash)
        return verify_chain("o1", memory_rows(audit), head, key=key)
    return await SqlAuditLog(audit.unit_of_work, key=key).verify("o1")


async def test_a_keyed_chain_verifies_only_with_its_key(backend: Backend) -> None:
    """HMAC-keyed hashes verify with the key; without it (or with another) verify fails at 1."""
    audit = keyed(backend)
    await append(backend, record(1), record(2), record(3))
    assert await audit.verify("o1") == VerifyResult(True, "o1", 3)
    if isinstance(audit, MemoryAuditLog):
        hashes = [e.hash for e in audit.for_org("o1")]
    else:
        hashes = [digest for _, _, digest in await sql_chain(engine_of(audit))]
    assert [(len(h), h[:12]) for h in hashes] == [(55, "hmac-sha256:")] * 3
    assert hashes[0] == audit_hash(None, record(1).to_dict(), key=KEY)
    assert await verify_without_key(audit) == VerifyResult(
        False, "o1", 1, 1, "keyed chain: verify with the key (the entries are HMAC-SHA256)"
    )
    assert await verify_without_key(audit, key=b"x" * 32) == VerifyResult(
        False,
        "o1",
        1,
        1,
        "hash mismatch: the entry was edited, or the chain was keyed with another key",
    )


async def test_a_keyed_chain_rehashed_without_the_key_fails(backend: Backend) -> None:
    """A writer without the key who edits entry 2 and re-hashes from there is caught at 2."""
    audit = keyed(backend)
    await append(backend, record(1), record(2), record(3))
    edited = [record(2, actor_id="mallory"), record(3)]
    if isinstance(audit, MemoryAuditLog):
        # The memory log cannot be rewritten in place: check what such a rewrite would store.
        rows = memory_rows(audit)[:1]
        prev = rows[0][3]
        for seq, entry in enumerate(edited, start=2):
            digest = audit_hash(prev, entry.to_dict())
            rows.append((seq, entry.to_dict(), prev, digest))
            prev = digest
        verdict = verify_chain("o1", rows, (3, prev), key=KEY)
    else:
        await rewrite_sql_chain(engine_of(audit), 1, edited)
        verdict = await audit.verify("o1")
    assert verdict == VerifyResult(
        False,
        "o1",
        2,
        2,
        "entry 2 is not keyed in a keyed chain: it was re-hashed by a writer without the key "
        "(entries older than the key verify only up to an anchor taken before it)",
    )


async def test_a_keyless_log_refuses_to_extend_a_keyed_chain(sql_engine: AsyncEngine) -> None:
    """A writer configured without the key gets ConfigurationError instead of breaking the chain."""
    await create_all(sql_engine, metadata)
    uow = SqlUnitOfWork(sql_engine)
    await SqlAuditLog(uow, key=KEY).record(record(1), None)
    with pytest.raises(ConfigurationError) as info:
        await SqlAuditLog(uow).record(record(2), None)
    assert info.value.details == {"field": "key", "org_id": "o1"}
    assert len(await sql_chain(sql_engine)) == 1
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        SqlAuditLog(uow, key=b"short")


async def test_a_key_introduced_later_seals_the_history_up_to_an_anchor(
    sql_engine: AsyncEngine,
) -> None:
    """A keyed verifier accepts unkeyed entries up to an anchor; later ones must be keyed."""
    await create_all(sql_engine, metadata)
    uow = SqlUnitOfWork(sql_engine)
    clock = FakeClock()
    before = SqlAuditLog(uow, clock=clock)
    await before.record(record(1), None)
    await before.record(record(2), None)
    anchor = await before.anchor("o1")
    after = SqlAuditLog(uow, key=KEY)
    await after.record(record(3), None)
    assert await after.verify("o1", anchor=anchor) == VerifyResult(True, "o1", 3)
    assert (await after.verify("o1")).first_bad_seq == 1
    assert (await before.verify("o1")).reason == (
        "keyed chain: verify with the key (the entries are HMAC-SHA256)"
    )


# -- anchors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "bad_seq", "reason"),
    [
        (
            "truncate",
            3,
            "the chain ends at 2 but was anchored at 4 on 2024-01-01T00:00:00+00:00: entries "
            "were deleted",
        ),
        (
            "rewrite",
            4,
            "entry 4 differs from the anchor exported at 2024-01-01T00:00:00+00:00: the chain "
            "was rewritten",
        ),
    ],
)
async def test_an_anchor_catches_a_truncated_and_rehashed_chain(
    backend: Backend, tmp_path: Path, how: str, bad_seq: int, reason: str
) -> None:
    """Re-hashing after edits fools verify(), but not verify(anchor=...) with an exported head."""
    clock = FakeClock()
    audit = audit_of(backend)
    audit.clock = clock
    await append(backend, *(record(n) for n in range(1, 5)))
    sink = JsonlAnchorSink(tmp_path / "anchors.jsonl")
    exported = await audit.anchor("o1", sink=sink)
    await audit.anchor("o2", sink=sink)
    assert exported == ChainAnchor("o1", 4, exported.hash, clock.now())
    assert await sink.latest("o1") == exported
    assert [a.seq for a in await sink.anchors("o2")] == [0]
    assert await audit.verify("o1", anchor=exported) == VerifyResult(True, "o1", 4)

    # A database writer keeps entry 1, edits entry 2, drops or replaces the rest, re-hashes all.
    rest = [record(2, outcome="denied")]
    if how == "rewrite":
        rest += [record(3), record(4, target_id="d0")]
    if isinstance(audit, MemoryAuditLog):
        rewritten = MemoryAuditLog()
        for entry in [audit.records[0], *rest]:
            await rewritten.record(entry, None)
        audit = rewritten
    else:
        await rewrite_sql_chain(engine_of(audit), 1, rest)
    assert (await audit.verify("o1")).ok is True  # consistent again: only the anchor can tell
    anchor = await sink.latest("o1")
    assert anchor is not None
    verdict = await audit.verify("o1", anchor=anchor)
    assert (verdict.ok, verdict.first_bad_seq, verdict.reason) == (False, bad_seq, reason)
    with pytest.raises(ConfigurationError, match="the anchor belongs to org 'o1', not 'o2'"):
        await audit.verify("o2", anchor=anchor)


def test_an_unkeyed_hash_is_byte_identical_to_earlier_releases() -> None:
    """`audit_hash` without a key is sha256(prev + newline + canonical JSON), as before."""
    body = record(1).to_dict()
    expected = hashlib.sha256(("p\n" + canonical_json(body)).encode()).hexdigest()
    assert audit_hash("p", body) == expected
    assert (
        audit_hash(None, body) == hashlib.sha256(("\n" + canonical_json(body)).encode()).hexdigest()
    )


async def test_concurrent_appends_never_look_tampered(backend: Backend) -> None:
    """Eight writers appending at once to one org form one intact chain (no false alarms)."""

    async def writer(w: int) -> None:
        for n in range(5):
            await backend.audit.record(record(n, id=f"w{w}-{n}"), None)

    await asyncio.gather(*(writer(w) for w in range(8)))
    assert await audit_of(backend).verify("o1") == VerifyResult(True, "o1", 40)
