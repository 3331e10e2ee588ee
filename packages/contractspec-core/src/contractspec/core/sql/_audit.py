"""The SQL audit log: one hash chain per org in `cs_audit_log`, its head in `cs_audit_head`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contractspec.core.audit import AuditEntry
from contractspec.core.records import AuditRecord, audit_hash
from contractspec.core.sql._schema import audit_head_table, audit_table
from contractspec.core.sql._uow import (
    SqlTransaction,
    SqlUnitOfWork,
    WriteBuffer,
    sql_transaction,
    update_statement,
)
from contractspec.core.transactions import Transaction

__all__ = ["SqlAuditLog", "org_key"]


def org_key(org_id: str | None) -> str:
    """The `org_key` column value of an org (`""` for calls without one)."""
    return "" if org_id is None else org_id


def _upsert(dialect: str) -> Any:
    return pg_insert if dialect == "postgresql" else sqlite_insert


async def _chain_hook(conn: AsyncConnection, buf: WriteBuffer) -> None:
    """Fill `seq`, `prev_hash` and `hash` of buffered audit rows, continuing each org's chain."""
    rows = buf.inserts.get(audit_table)
    if not rows:
        return
    by_org: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["hash"] is None:
            by_org.setdefault(row["org_key"], []).append(row)
    if not by_org:
        return
    insert = _upsert(conn.dialect.name)
    heads: list[dict[str, Any]] = []
    for key, org_rows in by_org.items():
        # Creates the head row if missing and locks it (PostgreSQL) in one statement.
        stmt = insert(audit_head_table).values(org_key=key, seq=0, hash=None)
        stmt = stmt.on_conflict_do_update(
            index_elements=[audit_head_table.c.org_key],
            set_={"seq": audit_head_table.c.seq},
        ).returning(audit_head_table.c.seq, audit_head_table.c.hash)
        seq, prev = (await conn.execute(stmt)).one()
        for row in org_rows:
            seq += 1
            row["seq"] = seq
            row["prev_hash"] = prev
            row["hash"] = prev = audit_hash(prev, row["body"])
        heads.append({"w_org_key": key, "v_seq": seq, "v_hash": prev})
    await conn.execute(update_statement(audit_head_table, ("org_key",), ("hash", "seq")), heads)


def _audit_row(entry: AuditRecord) -> dict[str, Any]:
    return {
        "id": entry.id,
        "org_key": org_key(entry.org_id),
        "seq": None,
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
        "prev_hash": None,
        "hash": None,
    }


class SqlAuditLog:
    """`AuditSink` writing a hash chain per org to `cs_audit_log` (see `audit_hash`).

    Entries of a call are written in its transaction; chain positions and hashes are assigned when
    the transaction flushes, under a lock on the org's head row, so concurrent writers on
    PostgreSQL never fork a chain.

    Args:
        unit_of_work: Used for entries recorded without a transaction (policy denials).
    """

    __slots__ = ("unit_of_work",)

    def __init__(self, unit_of_work: SqlUnitOfWork) -> None:
        self.unit_of_work = unit_of_work

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """Append `entry` in `tx`, or in a transaction of its own when `tx` is `None`."""
        if tx is None:
            own = await self.unit_of_work.begin()
            try:
                self._stage(own, entry)
                await own.commit()
            except BaseException:
                await own.rollback()
                raise
            return
        self._stage(sql_transaction(tx, "the SQL audit log"), entry)

    @staticmethod
    def _stage(tx: SqlTransaction, entry: AuditRecord) -> None:
        tx.add_flush_hook("cs_audit_chain", _chain_hook)
        tx.stage_insert(audit_table, _audit_row(entry))

    async def entries(
        self, org_id: str | None, *, limit: int | None = None, after_seq: int = 0
    ) -> list[AuditEntry]:
        """The org's chain, oldest first, from position `after_seq + 1`."""
        t = audit_table
        stmt = (
            select(t).where(t.c.org_key == org_key(org_id), t.c.seq > after_seq).order_by(t.c.seq)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self.unit_of_work.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [
            AuditEntry(
                row["seq"], AuditRecord.from_dict(row["body"]), row["prev_hash"], row["hash"]
            )
            for row in rows
        ]

    async def verify(self, org_id: str | None) -> bool:
        """Recompute the org's chain; `False` if an entry was edited, removed or reordered.

        The head is read first and only entries up to it are checked, so appends running
        concurrently are never mistaken for tampering. This checks a chain that starts at
        position 1; after retention purges use contractspec-bus's `SqlAuditTrail.verify`, which
        also honours its checkpoints and names the first broken entry.
        """
        t, h = audit_table, audit_head_table
        async with self.unit_of_work.engine.connect() as conn:
            head = (
                await conn.execute(select(h.c.seq, h.c.hash).where(h.c.org_key == org_key(org_id)))
            ).first()
            rows = (
                await conn.execute(
                    select(t.c.seq, t.c.body, t.c.prev_hash, t.c.hash)
                    .where(t.c.org_key == org_key(org_id), t.c.seq <= (head.seq if head else 0))
                    .order_by(t.c.seq)
                )
            ).all()
        prev: str | None = None
        for expected, (seq, body, prev_hash, digest) in enumerate(rows, start=1):
            if seq != expected or prev_hash != prev or audit_hash(prev, body) != digest:
                return False
            prev = digest
        if head is None:
            return not rows
        return bool(head.seq == len(rows) and head.hash == prev)
