"""Outside batch calls on PostgreSQL a command's buffered writes are bound client-side and sent
with the next statement that needs a result (a read, the audit chain's head lock) or with
`COMMIT` itself. These tests hold the guarantees that must survive that: a stale version check
commits nothing, a conflict or a COMMIT refused by the database is reported and leaves nothing,
reads and flush hooks see the writes before them — and the round trips it saves."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from core_app import POLICY_GRANTS, contact_entity
from pydantic import BaseModel
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contractspec.core import (
    Actor,
    CallContext,
    ConcurrentUpdateError,
    ConflictError,
    Executor,
    RolePermissions,
    SpecRegistry,
)
from contractspec.core.handler import Invocation, NextFn
from contractspec.core.records import AuditRecord
from contractspec.core.sql import (
    SqlAuditLog,
    SqlBackend,
    SqlUnitOfWork,
    WriteBuffer,
    audit_table,
    create_all,
    metadata,
    outbox_table,
)

CTX = CallContext(actor=Actor.user("u1", roles="sales"), org_id="org-1")

md = MetaData()
items = Table(
    "t_deferred_item",
    md,
    Column("id", String(20), primary_key=True),
    Column("name", String(50), nullable=False),
    Column("version", Integer, nullable=False),
)
notes = Table(
    "t_deferred_note",
    md,
    Column("id", String(20), primary_key=True),
    Column("body", String(50), nullable=False),
)


def _key(table: Table, pk: str) -> tuple[str, str | None, Any]:
    return (table.name, None, pk)


async def _uow(engine: AsyncEngine) -> SqlUnitOfWork:
    await create_all(engine, metadata, md)  # the library's tables (audit log) and ours
    async with engine.begin() as conn:
        await conn.execute(insert(items).values(id="i1", name="first", version=1))
    return SqlUnitOfWork(engine)


async def _rows(engine: AsyncEngine, table: Table) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(select(table).order_by(table.c.id))]


# -- the unit of work ------------------------------------------------------------------------------


async def test_a_stale_versioned_update_commits_none_of_the_transactions_writes(
    sql_engine: AsyncEngine,
) -> None:
    """An update checked against version 1 of a row now at version 2 raises
    ConcurrentUpdateError at commit; the insert buffered before it is not committed either
    (on PostgreSQL both travel in one round trip, and COMMIT waits for the check)."""
    uow = await _uow(sql_engine)
    async with sql_engine.begin() as conn:  # a concurrent writer got there first
        await conn.execute(update(items).values(name="theirs", version=2))
    tx = await uow.begin()
    tx.stage_insert(notes, {"id": "n1", "body": "mine"}, _key(notes, "n1"))
    tx.stage_update(
        items,
        _key(items, "i1"),
        {"id": "i1", "version": 1},
        {"name": "mine", "version": 2},
        versioned=True,
    )
    with pytest.raises(ConcurrentUpdateError, match="t_deferred_item"):
        await tx.commit()
    assert await _rows(sql_engine, notes) == []
    assert await _rows(sql_engine, items) == [("i1", "theirs", 2)]


async def test_a_conflicting_insert_is_a_conflict_error_and_leaves_nothing(
    sql_engine: AsyncEngine,
) -> None:
    """A buffered insert whose key is taken fails the commit with ConflictError (not a raw
    driver error), and the transaction's other writes are not committed."""
    uow = await _uow(sql_engine)
    tx = await uow.begin()
    tx.stage_insert(notes, {"id": "n1", "body": "mine"}, _key(notes, "n1"))
    tx.stage_insert(items, {"id": "i1", "name": "dup", "version": 1}, _key(items, "i1"))
    with pytest.raises(ConflictError):
        await tx.commit()
    assert await _rows(sql_engine, notes) == []
    assert await _rows(sql_engine, items) == [("i1", "first", 1)]


async def test_reads_and_flush_hooks_see_the_writes_buffered_before_them(
    sql_engine: AsyncEngine,
) -> None:
    """A read after buffered writes sees them; a flush hook of another package that runs its
    own statement (as the jobs queue's NOTIFY hook does) sees every row buffered before the
    audit rows it is called for; then everything commits, the audit chain intact."""
    uow = await _uow(sql_engine)
    log = SqlAuditLog(uow)
    seen: list[int] = []

    async def counting_hook(conn: AsyncConnection, buf: WriteBuffer) -> None:
        if buf.inserts.get(audit_table):  # the append-only flush, after the entity writes
            seen.append((await conn.execute(select(func.count()).select_from(notes))).scalar_one())

    tx = await uow.begin()
    tx.add_flush_hook("test.counting", counting_hook)
    tx.stage_insert(notes, {"id": "n1", "body": "a"}, _key(notes, "n1"))
    tx.stage_update(
        items, _key(items, "i1"), {"id": "i1", "version": 1}, {"version": 2}, versioned=True
    )
    found = (await tx.execute(select(items.c.version).where(items.c.id == "i1"))).scalar_one()
    assert found == 2
    tx.stage_insert(notes, {"id": "n2", "body": "b"}, _key(notes, "n2"))
    await log.record(
        AuditRecord(
            id="a-1",
            occurred_at=datetime.now(UTC),
            action="test.hook",
            outcome="success",
            org_id="org-1",
        ),
        tx,
    )
    await tx.commit()
    assert seen == [2]
    assert await _rows(sql_engine, notes) == [("n1", "a"), ("n2", "b")]
    assert await log.verify("org-1")
    assert [e.seq for e in await log.entries("org-1")] == [1]


async def test_a_read_by_key_sees_buffered_writes_and_reports_their_failure(
    sql_engine: AsyncEngine,
) -> None:
    """`get_row` after buffered writes (on PostgreSQL sent with the read, one round trip) sees
    them, decoded as SQLAlchemy would; a stale versioned update among them fails the read with
    ConcurrentUpdateError, and the transaction commits nothing."""
    uow = await _uow(sql_engine)
    tx = await uow.begin()
    tx.stage_insert(notes, {"id": "n1", "body": "a"}, _key(notes, "n1"))
    tx.stage_update(
        items, _key(items, "i1"), {"id": "i1", "version": 1}, {"version": 2}, versioned=True
    )
    assert await tx.get_row(notes, {"id": "n1"}) == {"id": "n1", "body": "a"}
    assert await tx.get_row(items, {"id": "i1"}) == {"id": "i1", "name": "first", "version": 2}
    assert await tx.get_row(items, {"id": "nope"}) is None
    await tx.commit()

    tx = await uow.begin()
    tx.stage_insert(notes, {"id": "n2", "body": "b"}, _key(notes, "n2"))
    tx.stage_update(
        items, _key(items, "i1"), {"id": "i1", "version": 1}, {"version": 3}, versioned=True
    )  # version 1 is gone
    with pytest.raises(ConcurrentUpdateError):
        await tx.get_row(notes, {"id": "n2"})
    await tx.rollback()
    assert await _rows(sql_engine, notes) == [("n1", "a")]
    assert await _rows(sql_engine, items) == [("i1", "first", 2)]


# -- the executor on PostgreSQL --------------------------------------------------------------------


@contextmanager
def round_trips(engine: AsyncEngine) -> Iterator[list[list[str]]]:
    """Collect the frontend messages of each round trip on `engine`'s connections (libpq's
    trace, enabled per checkout: no cursor-execute listener, so the driver fast path stays on)."""
    from psycopg import pq

    fd, name = tempfile.mkstemp(suffix=".trace")
    trips: list[list[str]] = []

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        pgconn = dbapi_conn.driver_connection.pgconn
        pgconn.trace(fd)
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def on_checkin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.driver_connection.pgconn.untrace()

    event.listen(engine.sync_engine, "checkout", on_checkout)
    event.listen(engine.sync_engine, "checkin", on_checkin)
    try:
        yield trips
    finally:
        event.remove(engine.sync_engine, "checkout", on_checkout)
        event.remove(engine.sync_engine, "checkin", on_checkin)
        last = "B"
        for line in Path(name).read_text().splitlines():
            side, _, rest = line.partition("\t")
            if side == "F":
                if last == "B":
                    trips.append([])
                trips[-1].append(rest)
            last = side
        os.close(fd)
        os.unlink(name)


async def _executor(
    engine: AsyncEngine, registry: SpecRegistry, ran: list[str] | None = None
) -> tuple[Executor, SqlBackend]:
    backend = SqlBackend(engine, registry)
    await backend.create_all()

    async def on_commit_probe(invocation: Invocation, call_next: NextFn) -> BaseModel:
        output = await call_next(invocation)
        if ran is not None:
            call_id = str(getattr(invocation.input, "id", ""))
            invocation.ctx.tx.on_commit(lambda: ran.append(call_id))
        return output

    policy = RolePermissions(POLICY_GRANTS)
    return Executor(registry, backend=backend, policy=policy, middleware=[on_commit_probe]), backend


@pytest.fixture
def postgres(sql_kind: str) -> None:
    if sql_kind != "postgres":
        pytest.skip("the deferred round trips are PostgreSQL's (SQLite runs in-process)")


@pytest.mark.usefixtures("postgres")
async def test_a_command_takes_four_round_trips_with_its_writes_sent_alongside_commit(
    sql_engine: AsyncEngine, registry: SpecRegistry
) -> None:
    """Moving a deal (read, versioned update, outbox event, chained audit entry): BEGIN, the
    read, the writes with the outbox key lock and the audit head lock, then the audit row and
    the head update with COMMIT — four round trips, and everything is stored."""
    ex, backend = await _executor(sql_engine, registry)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)
    deal = await ex.execute(
        "crm.deal.create", {"contact_id": "c1", "title": "T", "amount": "5"}, CTX
    )
    with round_trips(sql_engine) as trips:
        await ex.execute("crm.deal.move", {"deal_id": deal.id, "to_stage": "qualified"}, CTX)  # type: ignore[attr-defined]
    sent = [" ".join(trip) for trip in trips]
    assert len(sent) == 4, sent
    assert '"BEGIN"' in sent[0]
    assert "SELECT" in sent[1]
    assert all(word in sent[2] for word in ("UPDATE", "pg_advisory_xact_lock", "cs_outbox"))
    assert "cs_audit_head" in sent[2]
    assert sent[3].rstrip('" ').endswith("COMMIT")
    assert "cs_audit_log" in sent[3]
    async with sql_engine.connect() as conn:
        events = (await conn.execute(select(func.count()).select_from(outbox_table))).scalar()
    assert events == 2  # created, moved
    assert await backend.audit.verify("org-1")


@pytest.mark.usefixtures("postgres")
async def test_a_commit_refused_by_the_database_is_reported_and_runs_no_callbacks(
    sql_engine: AsyncEngine, registry: SpecRegistry
) -> None:
    """A deferred unique constraint fails at the COMMIT sent with the command's last writes:
    the call raises ConflictError, its after-commit callbacks never run, nothing of it is
    stored, and the next call on the pool's connections works."""
    ran: list[str] = []
    ex, backend = await _executor(sql_engine, registry, ran)
    table = backend.table(contact_entity).name
    async with sql_engine.begin() as conn:
        await conn.execute(
            text(
                f"ALTER TABLE {table} ADD CONSTRAINT contact_name_key UNIQUE (name) "
                "DEFERRABLE INITIALLY DEFERRED"
            )
        )
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)
    with pytest.raises(ConflictError):
        await ex.execute("crm.contact.create", {"id": "c2", "name": "Ada"}, CTX)
    await ex.execute("crm.contact.create", {"id": "c3", "name": "Bob"}, CTX)
    assert ran == ["c1", "c3"]
    async with sql_engine.connect() as conn:
        ids = [r[0] for r in await conn.execute(text(f"SELECT id FROM {table} ORDER BY id"))]
        actions = [
            (r.action, r.outcome, r.target_id)
            for r in await conn.execute(select(audit_table).order_by(audit_table.c.seq))
        ]
    assert ids == ["c1", "c3"]
    assert ("crm.contact.create", "success", "c2") not in actions
    assert await backend.audit.verify("org-1")
