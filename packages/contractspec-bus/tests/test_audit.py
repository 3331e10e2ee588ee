"""Audit trail: queries, pagination, retention with checkpoints, tamper detection, event audits."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from bus_support import T0, Stores, build_registry, envelope, open_stores
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, text, update

from contractspec.bus import (
    AuditableEventBus,
    AuditFilter,
    ChainVerifier,
    EventBus,
    MemoryAuditTrail,
    VerifyResult,
    mask_pii,
    verify_chain,
)
from contractspec.bus.testing import capture
from contractspec.core import (
    REDACTED,
    Actor,
    AuditEntry,
    AuditRecord,
    AuditTamperedError,
    CallContext,
    ChainAnchor,
    ConfigurationError,
    EntityChange,
    Executor,
    MemoryBackend,
    RolePermissions,
    audit_hash,
)
from contractspec.core import ChainVerifier as CoreChainVerifier
from contractspec.core import VerifyResult as CoreVerifyResult
from contractspec.core import verify_chain as core_verify_chain
from contractspec.core.sql import audit_head_table, audit_table
from contractspec.core.testing import FakeClock, SequentialIds


def record(n: int, *, actor: str = "u1", action: str = "crm.deal.move", org: str | None = "org-1", minutes: int | None = None, target: str = "d1") -> AuditRecord:  # fmt: skip
    return AuditRecord(
        id=f"a-{n:03d}",
        occurred_at=T0 + timedelta(minutes=n if minutes is None else minutes),
        action=action,
        outcome="success",
        org_id=org,
        actor_id=actor,
        actor_kind="user",
        operation_version=1,
        target_type="crm.deal",
        target_id=target,
        changes=(
            EntityChange("crm.deal", target, "update", {"stage": "lead"}, {"stage": f"s{n}"}),
        ),
        request_id=f"r-{n}",
        details={"n": n},
    )


async def append(stores: Stores, *records: AuditRecord) -> None:
    for r in records:
        tx = await stores.unit_of_work.begin()
        await stores.audit.record(r, tx)
        await tx.commit()


async def test_query_filters_by_actor_target_action_and_time(stores: Stores) -> None:
    """Each filter narrows the org's entries; other orgs never show up."""
    await append(
        stores,
        record(1, actor="u1"),
        record(2, actor="u2", action="crm.deal.create", target="d2"),
        record(3, actor="u1", action="crm.contact.create", target="c1"),
        record(4, actor="u2"),
        record(5, org="org-2"),
    )
    audit = stores.audit

    async def ids(f: AuditFilter | None = None, **kw: object) -> list[str]:
        page = await audit.query("org-1", f, **kw)  # type: ignore[arg-type]
        return [e.record.id for e in page]

    assert await ids() == ["a-004", "a-003", "a-002", "a-001"]
    assert await ids(newest_first=False) == ["a-001", "a-002", "a-003", "a-004"]
    assert await ids(AuditFilter(actor_id="u2")) == ["a-004", "a-002"]
    assert await ids(AuditFilter(target_type="crm.deal", target_id="d1")) == ["a-004", "a-001"]
    assert await ids(AuditFilter(action="crm.deal.*")) == ["a-004", "a-002", "a-001"]
    assert await ids(AuditFilter(action="crm.contact.create")) == ["a-003"]
    assert await ids(
        AuditFilter(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4))
    ) == ["a-003", "a-002"]
    assert await ids(AuditFilter(request_id="r-3")) == ["a-003"]
    page = await audit.query("org-2")
    assert [(e.seq, e.record.id) for e in page] == [(1, "a-005")]
    (entry,) = (await audit.query("org-1", AuditFilter(actor_id="u1"), limit=1)).items
    assert entry.record == record(3, actor="u1", action="crm.contact.create", target="c1")


async def test_query_pages_with_a_cursor_in_both_directions(stores: Stores) -> None:
    """Keyset pagination returns every entry exactly once and ends with next_cursor None."""
    await append(stores, *(record(n) for n in range(1, 8)))
    for newest_first in (True, False):
        seen: list[int] = []
        cursor = None
        while True:
            page = await stores.audit.query(
                "org-1", limit=3, cursor=cursor, newest_first=newest_first
            )
            seen += [e.seq for e in page]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == (list(range(7, 0, -1)) if newest_first else list(range(1, 8)))


async def test_chain_verifies_and_purge_keeps_it_verifiable(
    stores: Stores, clock: FakeClock
) -> None:
    """Purging old entries leaves a checkpoint and an audit.purged entry; the chain verifies."""
    await append(stores, *(record(n) for n in range(1, 6)))
    assert (await stores.audit.verify("org-1")).ok is True
    clock.set(T0 + timedelta(days=30))
    result = await stores.audit.purge_older_than("org-1", T0 + timedelta(minutes=3))
    assert result.purged == 2
    assert result.checkpoint is not None
    assert (result.checkpoint.seq, result.checkpoint.purged) == (2, 2)
    remaining = [e.record.action for e in await stores.audit.query("org-1", newest_first=False)]
    assert remaining == ["crm.deal.move"] * 3 + ["audit.purged"]
    verdict = await stores.audit.verify("org-1")
    assert (verdict.ok, verdict.checked) == (True, 4)
    again = await stores.audit.purge_older_than("org-1", T0 + timedelta(minutes=5))
    assert again.purged == 2
    assert again.checkpoint is not None
    assert (again.checkpoint.seq, again.checkpoint.purged) == (4, 4)
    assert (await stores.audit.verify("org-1")).ok is True
    await append(stores, record(9, minutes=60 * 24 * 31))
    assert (await stores.audit.verify("org-1")).ok is True
    assert (await stores.audit.purge_older_than("org-1", T0)).purged == 0
    assert (await stores.audit.purge_older_than("org-9", T0)).purged == 0
    assert (await stores.audit.verify("org-9")).ok is True


async def test_bad_query_and_purge_arguments_name_the_field(stores: Stores) -> None:
    """Naive datetimes, inverted ranges, bad cursors and limits raise ConfigurationError."""
    with pytest.raises(ConfigurationError) as info:
        AuditFilter(since=T0.replace(tzinfo=None))
    assert info.value.details == {"field": "since"}
    with pytest.raises(ConfigurationError, match="since must be before until"):
        AuditFilter(since=T0, until=T0)
    with pytest.raises(ConfigurationError) as info:
        AuditFilter(action="crm.*.create")
    assert info.value.details == {"field": "action"}
    with pytest.raises(ConfigurationError) as info:
        await stores.audit.query("org-1", cursor="x")
    assert info.value.details == {"field": "cursor"}
    with pytest.raises(ConfigurationError) as info:
        await stores.audit.purge_older_than("org-1", T0.replace(tzinfo=None))
    assert info.value.details == {"field": "cutoff"}


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=1001)))
async def test_query_limit_out_of_range_is_rejected(limit: int) -> None:
    """Limits outside 1..1000 raise ConfigurationError naming `limit`."""
    with pytest.raises(ConfigurationError) as info:
        await MemoryAuditTrail().query("org-1", limit=limit)
    assert info.value.details == {"field": "limit"}


# -- tamper detection -----------------------------------------------------------------------


async def _sql_tamper(stores: Stores, how: str) -> None:
    table = "cs_audit_log"
    async with stores.engine.begin() as conn:
        if how == "edit":
            t = audit_table
            body = (await conn.execute(select(t.c.body).where(t.c.seq == 3))).scalar_one()
            await conn.execute(
                update(t).where(t.c.seq == 3).values(body={**body, "details": {"n": 999}})
            )
        elif how == "edit_column":
            await conn.execute(text(f"UPDATE {table} SET actor_id = 'mallory' WHERE seq = 3"))
        elif how == "delete":
            await conn.execute(text(f"DELETE FROM {table} WHERE seq = 3"))
        elif how == "delete_last":
            await conn.execute(text(f"DELETE FROM {table} WHERE seq = 5"))
        elif how == "reorder":
            await conn.execute(text(f"UPDATE {table} SET seq = -1 WHERE seq = 2"))
            await conn.execute(text(f"UPDATE {table} SET seq = 2 WHERE seq = 3"))
            await conn.execute(text(f"UPDATE {table} SET seq = 3 WHERE seq = -1"))
        elif how == "forge_checkpoint":
            await conn.execute(text("UPDATE cs_audit_checkpoint SET seq = 1"))


def _memory_tamper(trail: MemoryAuditTrail, how: str) -> None:
    chain = trail.chains["org-1"]
    index = {e.seq: i for i, e in enumerate(chain)}
    if how == "edit":
        e = chain[index[3]]
        chain[index[3]] = evolve(e, record=evolve(e.record, details={"n": 999}))
    elif how == "edit_column":
        e = chain[index[3]]
        chain[index[3]] = evolve(e, record=evolve(e.record, actor_id="mallory"))
    elif how == "delete":
        del chain[index[3]]
    elif how == "delete_last":
        del chain[index[5]]
    elif how == "reorder":
        a, b = index[2], index[3]
        chain[a], chain[b] = evolve(chain[b], seq=2), evolve(chain[a], seq=3)
    elif how == "forge_checkpoint":
        cp = trail._checkpoints["org-1"]
        trail._checkpoints["org-1"] = evolve(cp, seq=1)


@pytest.mark.parametrize(
    ("how", "bad_seq", "reason"),
    [
        ("edit", 3, "hash mismatch: the entry was edited"),
        ("edit_column", 3, "the entry was edited"),
        ("delete", 3, "entry 3 is missing (found 4): entries were deleted"),
        ("delete_last", 5, "the head says the chain ends at 5 but it ends at 4"),
        ("reorder", 2, "link broken"),
    ],
)
async def test_verify_finds_edited_deleted_and_reordered_entries(
    stores: Stores, how: str, bad_seq: int, reason: str
) -> None:
    """Each kind of tampering is detected at the entry where it happened, with the reason."""
    await append(stores, *(record(n) for n in range(1, 6)))
    other_org = record(6, org="org-2")
    await append(stores, other_org)
    if stores.kind == "memory":
        _memory_tamper(stores.audit, how)  # type: ignore[arg-type]
    else:
        await _sql_tamper(stores, how)
    verdict = await stores.audit.verify("org-1")
    assert verdict.ok is False
    assert verdict.first_bad_seq == bad_seq
    assert reason in (verdict.reason or "")
    assert (await stores.audit.verify("org-2")).ok is True


async def test_verify_detects_a_forged_checkpoint(stores: Stores) -> None:
    """Moving the checkpoint (to hide a purge or skip entries) disagrees with the chain."""
    await append(stores, *(record(n) for n in range(1, 6)))
    await stores.audit.purge_older_than("org-1", T0 + timedelta(minutes=3))
    if stores.kind == "memory":
        _memory_tamper(stores.audit, "forge_checkpoint")  # type: ignore[arg-type]
    else:
        await _sql_tamper(stores, "forge_checkpoint")
    verdict = await stores.audit.verify("org-1")
    assert verdict.ok is False
    assert verdict.first_bad_seq == 2


async def test_executor_audit_records_land_in_the_trail_and_verify(tmp_path: Path) -> None:
    """With SqlBackend, the executor's audit records are queryable through SqlAuditTrail."""
    from contractspec.bus.sql import SqlAuditTrail, create_bus_tables
    from contractspec.core.sql import SqlBackend

    async with open_stores("sqlite", tmp_path) as stores:
        backend = SqlBackend(stores.engine, build_registry())
        await backend.create_all()
        await create_bus_tables(stores.engine)
        ex = Executor(
            build_registry(),
            backend=backend,
            policy=RolePermissions({"sales": ["deal.*"]}),
            clock=FakeClock(),
            ids=SequentialIds("x"),
        )
        ctx = CallContext(actor=Actor.user("u-9", roles="sales"), org_id="org-1", request_id="r")
        await ex.execute("crm.deal.create", {"id": "d1", "title": "T", "amount": "1"}, ctx)
        await ex.execute("crm.deal.move", {"deal_id": "d1", "to_stage": "won"}, ctx)
        trail = SqlAuditTrail(stores.engine)
        page = await trail.query("org-1", AuditFilter(actor_id="u-9", target_id="d1"))
        assert [(e.seq, e.record.action) for e in page] == [
            (2, "crm.deal.move"),
            (1, "crm.deal.create"),
        ]
        assert page.items[0].record.changes[0].diff() == {"stage": ["lead", "won"]}
        assert (await trail.verify("org-1")).ok is True


# -- AuditableEventBus -----------------------------------------------------------------------


async def test_auditable_bus_audits_each_event_with_pii_redacted() -> None:
    """Every published event gets an audit record in the same transaction; PII is redacted."""
    backend = MemoryBackend()
    bus = EventBus()
    seen = capture(bus)
    audited = AuditableEventBus(
        bus, backend.audit, registry=build_registry(), ids=SequentialIds("ev-audit")
    )
    ex = Executor(
        build_registry(),
        backend=backend,
        events=audited,
        policy=RolePermissions({"sales": ["deal.*"]}),
        audit_enabled=True,
    )
    ctx = CallContext(actor=Actor.user("u-1", roles="sales"), org_id="org-1", request_id="r-1")
    await ex.execute(
        "crm.deal.create",
        {"id": "d1", "title": "T", "amount": "3", "contact_email": "ada@example.com"},
        ctx,
    )
    await audited.drain()
    assert [e.payload.contact_email for e in seen] == ["ada@example.com"]  # type: ignore[attr-defined]
    actions = [r.action for r in backend.audit.records]
    assert actions == ["crm.deal.created", "crm.deal.create"]
    event_record = backend.audit.records[0]
    assert event_record.details["payload"]["contact_email"] == REDACTED
    assert event_record.details["payload"]["deal_id"] == "d1"
    assert (event_record.actor_id, event_record.target_type, event_record.target_id) == (
        "u-1",
        "crm.deal",
        "d1",
    )
    assert (await backend.audit.verify("org-1")).ok is True


async def test_auditable_bus_hash_mode_is_keyed_and_deterministic() -> None:
    """`hash` mode stores an HMAC of the value: equal inputs match, other keys differ."""
    audit = MemoryAuditTrail()
    ev = envelope(1, contact_email="ada@example.com")
    a = AuditableEventBus(EventBus(), audit, pii="hash", pii_key=b"k1").audit_record(ev)
    b = AuditableEventBus(EventBus(), audit, pii="hash", pii_key=b"k1").audit_record(ev)
    c = AuditableEventBus(EventBus(), audit, pii="hash", pii_key=b"k2").audit_record(ev)
    hashed = a.details["payload"]["contact_email"]
    assert hashed.startswith("hmac-sha256:")
    assert len(hashed) == len("hmac-sha256:") + 64
    assert hashed == b.details["payload"]["contact_email"]
    assert hashed != c.details["payload"]["contact_email"]
    with pytest.raises(ConfigurationError):
        AuditableEventBus(EventBus(), audit, pii="encrypt")  # type: ignore[arg-type]


def test_mask_pii_crosses_lists_and_nested_mappings() -> None:
    """Dotted paths mask every list element's field and leave other fields alone."""
    data = {"contacts": [{"email": "a@x", "name": "A"}, {"email": None, "name": "B"}], "n": 1}
    assert mask_pii(data, {"contacts.email"}) == {
        "contacts": [{"email": REDACTED, "name": "A"}, {"email": None, "name": "B"}],
        "n": 1,
    }
    assert mask_pii(data, {"contacts.email"}, mode="hash")["contacts"][0]["email"].startswith(
        "sha256:"
    )


async def test_sql_verify_pages_through_long_chains(sql_engine: Any) -> None:
    """Verification reads in pages: a clean 9-entry chain passes with pages of 2, a gap is found."""
    from contractspec.bus.sql import SqlAuditTrail, create_bus_tables

    await create_bus_tables(sql_engine)
    trail = SqlAuditTrail(sql_engine)
    for n in range(1, 10):
        await trail.record(record(n), None)
    verdict = await trail.verify("org-1", page_size=2)
    assert (verdict.ok, verdict.checked) == (True, 9)
    async with sql_engine.begin() as conn:
        await conn.execute(text("DELETE FROM cs_audit_log WHERE seq = 6"))
    broken = await trail.verify("org-1", page_size=2)
    assert (broken.ok, broken.first_bad_seq, broken.checked) == (False, 6, 6)


# -- one verifier: head, forged appends, keys, anchors ---------------------------------------

KEY = b"bus-audit-key-0123456789abcdef!!"


def test_bus_reexports_the_core_verifier() -> None:
    """ChainVerifier, VerifyResult and verify_chain are core's objects under their bus names."""
    assert (ChainVerifier, VerifyResult, verify_chain) == (
        CoreChainVerifier,
        CoreVerifyResult,
        core_verify_chain,
    )


@pytest.mark.parametrize("how", ["delete_head", "forge"])
async def test_trail_reports_a_missing_head_or_forged_entry_and_refuses_appends(
    stores: Stores, how: str
) -> None:
    """Both trails fail verify and raise AuditTamperedError on append; other orgs carry on."""
    await append(stores, *(record(n) for n in range(1, 4)))
    forged = record(4, actor="mallory")
    if isinstance(stores.audit, MemoryAuditTrail):
        trail = stores.audit
        if how == "delete_head":
            del trail.heads["org-1"]
        else:
            prev = trail.heads["org-1"][1]
            trail.chains["org-1"].append(
                AuditEntry(4, forged, prev, audit_hash(prev, forged.to_dict()))
            )
    else:
        async with stores.engine.begin() as conn:
            h = audit_head_table
            if how == "delete_head":
                await conn.execute(h.delete().where(h.c.org_key == "org-1"))
            else:
                prev = (await conn.execute(select(h.c.hash))).scalar_one()
                await conn.execute(
                    audit_table.insert().values(
                        id=forged.id, org_key="org-1", seq=4, occurred_at=forged.occurred_at,
                        action=forged.action, outcome=forged.outcome, actor_id="mallory",
                        actor_kind="user", target_type="crm.deal", target_id="d1",
                        request_id="r-4", body=forged.to_dict(), prev_hash=prev,
                        hash=audit_hash(prev, forged.to_dict()),
                    )
                )  # fmt: skip
    verdict = await stores.audit.verify("org-1")
    if how == "delete_head":
        expected = VerifyResult(
            False,
            "org-1",
            1,
            None,
            "the chain head row is missing: entries exist but the head was deleted",
        )
        details = {"org_id": "org-1", "head_seq": None, "last_seq": 3}
    else:
        expected = VerifyResult(
            False,
            "org-1",
            4,
            4,
            "entry 4 is beyond the chain head (3): it was not appended through the audit log "
            "(forged)",
        )
        details = {"org_id": "org-1", "head_seq": 3, "last_seq": 4}
    assert verdict == expected
    with pytest.raises(AuditTamperedError) as info:
        await append(stores, record(5))
    assert info.value.details == details
    assert await stores.audit.verify("org-1") == expected
    await append(stores, record(6, org="org-2"))
    assert (await stores.audit.verify("org-2")).ok is True


async def test_a_keyed_trail_purges_and_verifies_only_with_its_key(
    backend_kind: str, tmp_path: Path, clock: FakeClock
) -> None:
    """A keyed trail stays verifiable across purges with the key; without it, it fails."""
    async with open_stores(backend_kind, tmp_path, key=KEY, clock=clock) as stores:
        await append(stores, *(record(n) for n in range(1, 6)))
        result = await stores.audit.purge_older_than("org-1", T0 + timedelta(minutes=3))
        assert result.purged == 2
        assert await stores.audit.verify("org-1") == VerifyResult(True, "org-1", 4)
        if isinstance(stores.audit, MemoryAuditTrail):
            rows = [
                (e.seq, e.record.to_dict(), e.prev_hash, e.hash)
                for e in stores.audit.chains["org-1"]
            ]
            keyless = verify_chain("org-1", rows, stores.audit.heads["org-1"], result.checkpoint)
        else:
            from contractspec.bus.sql import SqlAuditTrail

            keyless = await SqlAuditTrail(stores.engine).verify("org-1")
        assert keyless == VerifyResult(
            False, "org-1", 1, 3, "keyed chain: verify with the key (the entries are HMAC-SHA256)"
        )


async def test_an_anchor_is_checked_across_purges(stores: Stores, clock: FakeClock) -> None:
    """Anchors at or after the checkpoint verify; an anchor whose entry was purged is refused."""
    await append(stores, *(record(n) for n in range(1, 6)))
    old = await stores.audit.anchor("org-1")
    assert (old.seq, old.at) == (5, clock.now())
    at_two = ChainAnchor("org-1", 2, (await stores.audit.query("org-1", newest_first=False, limit=2)).items[1].hash, clock.now())  # fmt: skip
    first = ChainAnchor("org-1", 1, "x" * 64, clock.now())
    await stores.audit.purge_older_than("org-1", T0 + timedelta(minutes=3))
    assert await stores.audit.verify("org-1", anchor=old) == VerifyResult(True, "org-1", 4)
    assert await stores.audit.verify("org-1", anchor=at_two) == VerifyResult(True, "org-1", 4)
    assert await stores.audit.verify("org-1", anchor=first) == VerifyResult(
        False,
        "org-1",
        4,
        1,
        "the anchor (entry 1, 2024-01-01T00:00:00+00:00) is not in the chain any more: it was "
        "purged up to 2; verify against an anchor taken after the purge",
    )
    new = await stores.audit.anchor("org-1")
    assert new.seq == 6
    assert await stores.audit.verify("org-1", anchor=new) == VerifyResult(True, "org-1", 4)
