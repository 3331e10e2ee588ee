"""The SQL audit log: one hash chain per org in `cs_audit_log`, its head in `cs_audit_head`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from sqlalchemy import bindparam, func, literal_column, null, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contractspec.core.audit import (
    AnchorSink,
    AuditEntry,
    AuditTamperedError,
    ChainAnchor,
    ChainVerifier,
    Checkpoint,
    VerifyResult,
    check_audit_key,
)
from contractspec.core.errors import ConfigurationError
from contractspec.core.ports import Clock, SystemClock
from contractspec.core.records import KEYED_HASH_PREFIX, AuditRecord, audit_hash
from contractspec.core.sql._direct import Compiled, compiled_update
from contractspec.core.sql._schema import audit_head_table, audit_table
from contractspec.core.sql._uow import (
    SqlTransaction,
    SqlUnitOfWork,
    WriteBuffer,
    sql_transaction,
    update_statement,
)
from contractspec.core.transactions import Transaction

__all__ = [
    "AUDIT_INDEXED_COLUMNS",
    "SqlAuditLog",
    "audit_snapshot",
    "org_key",
    "verify_audit_chain",
]

#: Columns of `cs_audit_log` that repeat a value of the hashed `body` (for queries); `verify`
#: compares each with the body, so editing one without the body is detected.
AUDIT_INDEXED_COLUMNS = (
    "id",
    "occurred_at",
    "action",
    "outcome",
    "actor_id",
    "actor_kind",
    "target_type",
    "target_id",
    "request_id",
    "trace_id",
)


def org_key(org_id: str | None) -> str:
    """The `org_key` column value of an org (`""` for calls without one)."""
    return "" if org_id is None else org_id


_head_lock_cache: dict[str, tuple[Any, Compiled]] = {}


def _head_lock(dialect: Any) -> tuple[Any, Compiled]:
    """`(statement, compiled)` of the head-row upsert of one org (parameter `okey`), built once
    per dialect: creates the org's head row if missing and locks it (PostgreSQL), returning the
    head's `seq` and `hash` and the org's highest stored position (an index lookup), so a
    tampered chain is refused."""
    found = _head_lock_cache.get(dialect.name)
    if found is None:
        t, h = audit_table, audit_head_table
        okey = bindparam("okey", type_=h.c.org_key.type)
        last = select(func.max(t.c.seq)).where(t.c.org_key == okey).scalar_subquery()
        insert = pg_insert if dialect.name == "postgresql" else sqlite_insert
        stmt = (
            insert(h)
            .values(org_key=okey, seq=literal_column("0"), hash=null())
            .on_conflict_do_update(index_elements=[h.c.org_key], set_={"seq": h.c.seq})
            .returning(h.c.seq, h.c.hash, last)
        )
        found = _head_lock_cache[dialect.name] = (stmt, Compiled(stmt, dialect))
    return found


_HEAD_UPDATE_KEY = (audit_head_table, ("org_key",), ("hash", "seq"))


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
    the transaction flushes, under a lock on the org's `cs_audit_head` row, so concurrent writers on
    PostgreSQL never fork a chain. A chain that was changed outside the log — entries beyond its
    head, or entries without a head — is not extended: the flush raises `AuditTamperedError` and
    the call fails, instead of every later write colliding on `UNIQUE(org_key, seq)`.

    With `key=`, each hash is `HMAC-SHA256(key, prev_hash + "\\n" + canonical body)`, so a database
    writer without the key cannot re-hash history; the hash's `hmac-sha256:` prefix records the
    scheme in each entry and in the head. Use one key (and one `SqlAuditLog` configuration) for
    every writer of a database: a log without a key refuses to extend a keyed chain. A keyed log
    extends an existing unkeyed chain (sealing it); verify such a chain against an anchor taken
    before the key was introduced.

    Args:
        unit_of_work: Used for entries recorded without a transaction (policy denials) and reads.
        key: HMAC key (at least 16 bytes; keep it outside the database), or `None` for the
            unkeyed SHA-256 chain.
        clock: Time source of anchors.

    Raises:
        ConfigurationError: `key` is too short.
    """

    __slots__ = ("clock", "key", "unit_of_work")

    def __init__(
        self,
        unit_of_work: SqlUnitOfWork,
        *,
        key: bytes | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.unit_of_work = unit_of_work
        self.key = check_audit_key(key)
        self.clock: Clock = clock or SystemClock()

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """Append `entry` in `tx`, or in a transaction of its own when `tx` is `None`.

        Raises:
            AuditTamperedError: The org's chain has entries beyond its head or no head (when the
                transaction flushes).
            ConfigurationError: The org's chain is keyed and this log has no key (idem).
        """
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

    def _stage(self, tx: SqlTransaction, entry: AuditRecord) -> None:
        if "cs_audit_chain" not in tx._hooks:
            tx.add_flush_hook("cs_audit_chain", partial(self._chain_hook, tx))
        tx.stage_insert(audit_table, _audit_row(entry))

    async def _chain_hook(
        self, tx: SqlTransaction, conn: AsyncConnection, buf: WriteBuffer
    ) -> None:
        """Fill `seq`, `prev_hash` and `hash` of buffered audit rows, continuing each chain.

        Takes each org's head row (`_head_lock`, orgs in sorted order) and writes the new heads.
        On PostgreSQL outside batch calls the head locks travel with the transaction's deferred
        writes (one round trip, after them) and the head updates are deferred to the round trip
        that carries the audit rows and `COMMIT`; with a known driver the statements skip
        SQLAlchemy's execution pipeline; else they run through `conn`.
        """
        rows = buf.inserts.get(audit_table)
        if not rows:
            return
        by_org: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            if row["hash"] is None:
                by_org.setdefault(row["org_key"], []).append(row)
        if not by_org:
            return
        dialect = conn.dialect
        stmt, compiled = _head_lock(dialect)
        key = self.key
        heads: list[dict[str, Any]] = []
        # Lock heads in one global order, so two transactions appending to the same orgs never
        # wait for each other in a cycle.
        orgs = sorted(by_org)
        found: list[Any] = []
        deferring = await tx._deferring()
        driver = deferring or await tx._direct()
        if deferring is not None:
            cursor = deferring.client_cursor()
            try:
                locks = [cursor.mogrify(compiled.sql, compiled.params({"okey": o})) for o in orgs]
            except Exception as exc:
                raise deferring.wrap(exc, compiled.sql) from exc
            cursor = await tx._send_deferred(locks)
            for i in range(len(orgs)):
                if i:
                    cursor.nextset()
                found.append(await cursor.fetchone())
        elif driver is not None:
            found = [(await driver.execute(compiled, {"okey": o}))[1] for o in orgs]
        else:
            found = [(await conn.execute(stmt, {"okey": o})).one() for o in orgs]
        for okey, head in zip(orgs, found, strict=True):
            org_rows = by_org[okey]
            seq, prev, last_seq = head
            if last_seq is not None and last_seq > seq:
                org = org_rows[0]["body"]["org_id"]
                raise AuditTamperedError.for_chain(
                    org, None if prev is None and seq == 0 else seq, int(last_seq)
                )
            if key is None and prev is not None and prev.startswith(KEYED_HASH_PREFIX):
                org = org_rows[0]["body"]["org_id"]
                raise ConfigurationError(
                    f"the audit chain of org {org!r} is keyed (HMAC-SHA256): configure this "
                    "SqlAuditLog with its key (SqlAuditLog(..., key=...)) so it can extend it",
                    details={"field": "key", "org_id": org},
                )
            for row in org_rows:
                seq += 1
                row["seq"] = seq
                row["prev_hash"] = prev
                row["hash"] = prev = audit_hash(prev, row["body"], key=key)
            heads.append({"w_org_key": okey, "v_seq": seq, "v_hash": prev})
        update = compiled_update(update_statement(*_HEAD_UPDATE_KEY), _HEAD_UPDATE_KEY, dialect)
        if deferring is not None:
            for head_row in heads:
                tx.defer(deferring, update, head_row, None)
        elif driver is not None:
            for head_row in heads:
                await driver.execute(update, head_row)
        else:
            await conn.execute(update_statement(*_HEAD_UPDATE_KEY), heads)

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

    async def target_entries(
        self,
        org_id: str | None,
        target_type: str,
        target_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """The org's committed entries about one target, oldest first, after chain position
        `after_seq`, at most `limit` (one indexed query on `org_key, target_type, target_id`;
        workflows with `history="audit"` read their history here)."""
        t = audit_table
        stmt = (
            select(t)
            .where(
                t.c.org_key == org_key(org_id),
                t.c.target_type == target_type,
                t.c.target_id == target_id,
                t.c.seq > after_seq,
            )
            .order_by(t.c.seq)
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

    async def verify(
        self, org_id: str | None, *, anchor: ChainAnchor | None = None, page_size: int = 2000
    ) -> VerifyResult:
        """Recompute the org's chain with `ChainVerifier` (see there for what is detected).

        Reads one snapshot (`REPEATABLE READ` on PostgreSQL, a read transaction on SQLite) page by
        page, so memory stays flat and concurrent appends never look like tampering. Every entry
        of the org is read, also those beyond the head, and each indexed column is compared with
        the hashed body. This checks a chain that starts at position 1; after retention purges use
        contractspec-bus's `SqlAuditTrail.verify`, which also honours its checkpoints.

        Args:
            org_id: Tenant.
            anchor: A `ChainAnchor` from `anchor()` that the chain must still contain.
            page_size: Entries read per query.

        Raises:
            ConfigurationError: `anchor` belongs to another org.
        """
        async with audit_snapshot(self.unit_of_work.engine) as conn:
            return await verify_audit_chain(
                conn, org_id, key=self.key, anchor=anchor, page_size=page_size
            )

    async def anchor(self, org_id: str | None, *, sink: AnchorSink | None = None) -> ChainAnchor:
        """The org's current head as a `ChainAnchor` (also stored in `sink` when given).

        Anchor a chain you have verified: `verify(org_id, anchor=previous)` first.
        """
        h = audit_head_table
        async with self.unit_of_work.engine.connect() as conn:
            row = (
                await conn.execute(select(h.c.seq, h.c.hash).where(h.c.org_key == org_key(org_id)))
            ).first()
        anchor = ChainAnchor(
            org_id,
            int(row.seq) if row else 0,
            row.hash if row else None,
            self.clock.now(),
        )
        if sink is not None:
            await sink.store(anchor)
        return anchor


@asynccontextmanager
async def audit_snapshot(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose reads all see one snapshot, for verifying a chain while others append.

    PostgreSQL: `REPEATABLE READ`. SQLite (configured by `configure_sqlite_engine`): the `BEGIN`
    issued before the first read starts a read transaction, which sees one snapshot.
    """
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


async def verify_audit_chain(
    conn: AsyncConnection,
    org_id: str | None,
    *,
    checkpoint: Checkpoint | None = None,
    key: bytes | None = None,
    anchor: ChainAnchor | None = None,
    page_size: int = 2000,
) -> VerifyResult:
    """Verify an org's chain in `cs_audit_log`/`cs_audit_head` with `ChainVerifier`, page by page.

    Reads the head, then every entry after `checkpoint` (also beyond the head) with its indexed
    columns (`AUDIT_INDEXED_COLUMNS`), in pages of `page_size`. Open `conn` with
    `audit_snapshot()` so the head and the entries come from one snapshot.

    Args:
        conn: The connection to read with.
        org_id: Tenant.
        checkpoint: Retention checkpoint (contractspec-bus), or `None`.
        key: HMAC key of a keyed chain.
        anchor: A `ChainAnchor` the chain must still contain.
        page_size: Entries read per query.

    Returns:
        The `VerifyResult`.
    """
    t, h = audit_table, audit_head_table
    okey = org_key(org_id)
    row = (await conn.execute(select(h.c.seq, h.c.hash).where(h.c.org_key == okey))).first()
    head = None if row is None else (int(row.seq), row.hash)
    verifier = ChainVerifier(org_id, checkpoint, head=head, key=key, anchor=anchor)
    after = checkpoint.seq if checkpoint is not None else 0
    columns = [t.c[name] for name in AUDIT_INDEXED_COLUMNS]
    base = select(t.c.seq, t.c.body, t.c.prev_hash, t.c.hash, *columns).where(t.c.org_key == okey)
    while True:
        stmt = base.where(t.c.seq > after).order_by(t.c.seq).limit(page_size)
        rows = (await conn.execute(stmt)).mappings().all()
        if not rows:
            break
        for r in rows:
            # (VerifyResult is falsy when it reports a failure: test for None explicitly.)
            failed = verifier.feed(
                int(r["seq"]),
                r["body"],
                r["prev_hash"],
                r["hash"],
                {name: r[name] for name in AUDIT_INDEXED_COLUMNS},
            )
            if failed is not None:
                return failed
        after = int(rows[-1]["seq"])
    return verifier.finish()
