"""SQLAlchemy adapters of every bus store (SQLite via aiosqlite, PostgreSQL via psycopg).

Install with `pip install 'contractspec-bus[sql]'` or `'contractspec-bus[postgres]'`.

```python
from contractspec.bus.sql import SqlOutboxStore, SqlDeadLetterStore, metadata
from contractspec.core.sql import create_all, metadata as core_metadata

await create_all(engine, core_metadata, metadata)
```

The bus's own tables (`cs_dead_letters`, `cs_processed_events`, `cs_audit_checkpoint`,
`cs_notifications`, `cs_notification_preferences`, `cs_notification_deliveries`) live on
`contractspec.bus.sql.metadata` with `NAMING_CONVENTION`: add it to your Alembic `target_metadata`
next to core's. The outbox and audit log use core's `cs_outbox`, `cs_audit_log`, `cs_audit_head`.
Adapters take your `AsyncEngine` and never dispose it.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.bus.sql needs SQLAlchemy: pip install 'contractspec-bus[sql]' (SQLite) "
        "or 'contractspec-bus[postgres]' (PostgreSQL)"
    ) from exc

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Interval

from contractspec.bus.audit import (
    AuditFilter,
    PurgeResult,
    _check_cutoff,
    _purge_record,
    _seq_cursor,
)
from contractspec.bus.stores import (
    DeadLetter,
    DeliveryRecord,
    DeliveryStatus,
    InAppNotification,
    OrderingKey,
    OutboxMessage,
    OutboxStatus,
    Page,
    Preference,
    _cursor,
    accept_in_key_order,
    check_page,
    new_lease_token,
)
from contractspec.core import (
    AnchorSink,
    AuditEntry,
    AuditRecord,
    ChainAnchor,
    Checkpoint,
    Clock,
    ConfigurationError,
    EventEnvelope,
    IdGenerator,
    NotFoundError,
    SystemClock,
    Transaction,
    UuidGenerator,
    VerifyResult,
)
from contractspec.core.sql import (
    NAMING_CONVENTION,
    JsonType,
    SqlAuditLog,
    SqlOutbox,
    SqlTransaction,
    SqlUnitOfWork,
    UtcDateTime,
    as_utc,
    audit_head_table,
    audit_snapshot,
    audit_table,
    autocommit_statement,
    new_metadata,
    outbox_table,
    verify_audit_chain,
)
from contractspec.core.sql import metadata as core_metadata

__all__ = [
    "NAMING_CONVENTION",
    "SqlAuditTrail",
    "SqlDeadLetterStore",
    "SqlDeliveryLog",
    "SqlInAppStore",
    "SqlOutboxStore",
    "SqlPreferenceStore",
    "SqlProcessedEventStore",
    "audit_checkpoint_table",
    "core_metadata",
    "create_bus_tables",
    "dead_letter_table",
    "delivery_table",
    "metadata",
    "notification_table",
    "preference_table",
    "processed_table",
]

#: The bus's own tables. Add it (and core's `metadata`) to your Alembic `target_metadata`.
metadata = new_metadata()
_AutoBigInt = BigInteger().with_variant(Integer(), "sqlite")

dead_letter_table = Table(
    "cs_dead_letters",
    metadata,
    Column("position", _AutoBigInt, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("event_id", String(64), nullable=False),
    Column("event_name", String(200), nullable=False),
    Column("org_id", String(200), nullable=True),
    Column("subscriber", String(300), nullable=False),
    Column("event", JsonType, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("failed_at", UtcDateTime, nullable=False),
    Column("replayed_at", UtcDateTime, nullable=True),
    Index(None, "subscriber", "position"),
    Index(None, "org_id", "position"),
    comment="Deliveries that failed past their retry limit (replayable).",
)

processed_table = Table(
    "cs_processed_events",
    metadata,
    Column("consumer", String(300), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("processed_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("consumer", "event_id"),
    comment="Events each idempotent consumer has processed.",
)

audit_checkpoint_table = Table(
    "cs_audit_checkpoint",
    metadata,
    Column("org_key", String(200), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("purged", BigInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    comment="Where each org's audit chain starts after retention purges.",
)

notification_table = Table(
    "cs_notifications",
    metadata,
    Column("position", _AutoBigInt, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_key", String(200), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("notification", String(200), nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("event_id", String(64), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("read_at", UtcDateTime, nullable=True),
    Column("data", JsonType, nullable=False),
    Index(None, "org_key", "user_id", "position"),
    comment="In-app notifications with read/unread state.",
)

preference_table = Table(
    "cs_notification_preferences",
    metadata,
    Column("org_key", String(200), nullable=False),
    Column("user_key", String(200), nullable=False),
    Column("notification", String(200), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    PrimaryKeyConstraint("org_key", "user_key", "notification", "channel"),
    comment="Notification opt-ins/outs per org ('' user = org-wide) and user.",
)

delivery_table = Table(
    "cs_notification_deliveries",
    metadata,
    Column("position", _AutoBigInt, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(200), nullable=True),
    Column("notification", String(200), nullable=False),
    Column("event_id", String(64), nullable=False),
    Column("recipient_id", String(200), nullable=False),
    Column("channel", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("message", JsonType, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=True),
    Column("sent_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("notification", "event_id", "recipient_id", "channel"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "org_id", "position"),
    comment="Notification delivery log: one row per (notification, event, recipient, channel).",
)


async def create_bus_tables(engine: AsyncEngine) -> None:
    """Create core's library tables and the bus's tables (tests, examples; use Alembic in prod)."""
    async with engine.begin() as conn:
        await conn.run_sync(core_metadata.create_all)
        await conn.run_sync(metadata.create_all)


def _org_key(org_id: str | None) -> str:
    return "" if org_id is None else org_id


def _org_of(org_key: str) -> str | None:
    return None if org_key == "" else org_key


def _insert(dialect: str) -> Any:
    return pg_insert if dialect == "postgresql" else sqlite_insert


def _one_of(column: Any, values: Sequence[Any], dialect: str, item_type: Any) -> Any:
    """`column IN (...)`; on PostgreSQL `column = ANY(:array)`, one parameter however many values
    (hundreds of expanded parameters cost more to bind and plan than the statement itself)."""
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(item_type)))
    return column.in_(list(values))


class _SqlStore:
    """Base: the user's engine, a unit of work for writes, short read connections."""

    __slots__ = ("_uow", "engine")

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._uow = SqlUnitOfWork(engine)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def _write(self, *statements: Any) -> list[Any]:
        tx = await self._uow.begin()
        try:
            results = [await tx.execute(s, write=True) for s in statements]
            rowcounts = [getattr(r, "rowcount", None) for r in results]
            await tx.commit()
            return rowcounts
        except BaseException:
            await tx.rollback()
            raise

    async def _read(self, stmt: Any) -> list[Mapping[Any, Any]]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).mappings().all())


# --------------------------------------------------------------------------------------------
# Outbox
# --------------------------------------------------------------------------------------------


def _message(
    row: Mapping[Any, Any],
    *,
    attempts: int = 0,
    available_at: datetime | None = None,
    lease_token: str | None = None,
) -> OutboxMessage:
    return OutboxMessage(
        position=int(row["position"]),
        id=row["id"],
        name=row["name"],
        version=int(row["version"]),
        org_id=row["org_id"],
        key=row["aggregate_key"],
        payload=row["payload"],
        headers=row["headers"],
        occurred_at=row["occurred_at"],
        status=row["status"],
        attempts=int(row["attempts"]) + attempts,
        available_at=available_at or row["available_at"],
        delivered_at=row["delivered_at"],
        last_error=row["last_error"],
        lease_token=lease_token or row["lease_token"],
    )


#: The PostgreSQL claim (`SqlOutboxStore._claim_postgresql`). `cs_claim` is materialized so
#: the rows it locked are exactly the candidates the key check excludes.
#: `'pending'` as a SQL literal: a claim's `status = 'pending'` then matches the predicate of the
#: outbox's partial indexes (`ix_cs_outbox_pending`, `ix_cs_outbox_pending_key`), which a bound
#: parameter cannot prove, so the claim reads pending rows only, not the delivered history.
_PENDING = literal_column("'pending'", String())

_PG_CLAIM = """
WITH {marked}cs_claim AS MATERIALIZED (
    SELECT position, org_id, aggregate_key FROM {table}
    WHERE status = 'pending' AND available_at <= {due}{not_marked}
    ORDER BY position
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE {table} AS o
SET attempts = o.attempts + 1, available_at = {until}, lease_token = :token
FROM cs_claim AS c
WHERE o.position = c.position
  AND (
    c.aggregate_key IS NULL
    OR NOT EXISTS (
      SELECT 1 FROM {table} AS p
      WHERE p.status = 'pending'
        AND p.aggregate_key = c.aggregate_key
        AND p.org_id IS NOT DISTINCT FROM c.org_id
        AND p.position < c.position
        AND p.position NOT IN (SELECT position FROM cs_claim){probe_marked}
    )
  )
RETURNING o.*
"""

#: The fragments that make `_PG_CLAIM` mark the previous batch delivered first (`SqlOutboxStore.
#: mark_and_claim`). Every part of one statement reads the same snapshot, in which the rows
#: `cs_marked` updates are still pending: the claim and its per-key probe skip the rows it did
#: mark (delivered as of this statement), so the next row of their key can be claimed in the same
#: statement, exactly as by a claim after the mark.
_PG_MARKING = {
    "marked": """cs_marked AS (
    UPDATE {table}
    SET status = 'delivered', delivered_at = :at, last_error = NULL, lease_token = NULL
    WHERE position = ANY(:done) AND lease_token = :done_token
    RETURNING position
),
""",
    "not_marked": " AND position NOT IN (SELECT position FROM cs_marked)",
    "probe_marked": "\n        AND p.position NOT IN (SELECT position FROM cs_marked)",
}
_PG_NOT_MARKING = dict.fromkeys(_PG_MARKING, "")


def _pg_claim_statement(due: str, until: str, marking: bool = False) -> Any:
    """The `_PG_CLAIM` statement (parameters `limit`, `token`, and `lease` or `now`/`until`;
    with `marking`, also `done`, `done_token` and `at`)."""
    binds: list[Any] = (
        [bindparam("lease", type_=Interval())]
        if due == "now()"
        else [bindparam("now", type_=UtcDateTime()), bindparam("until", type_=UtcDateTime())]
    )
    table = outbox_table.fullname
    parts = {k: v.format(table=table) for k, v in _PG_MARKING.items()} if marking else None
    sql = _PG_CLAIM.format(table=table, due=due, until=until, **(parts or _PG_NOT_MARKING))
    if marking:
        binds += [
            bindparam("done", type_=ARRAY(BigInteger())),
            bindparam("done_token", type_=String()),
            bindparam("at", type_=UtcDateTime()),
        ]
    return text(sql).bindparams(
        bindparam("limit", type_=Integer()), bindparam("token", type_=String()), *binds
    )


def _pg_mark_statement(token: bool) -> Any:
    """`mark_delivered`'s UPDATE (parameters `positions`, `at`, and `token` if `token`)."""
    t = outbox_table
    stmt = update(t).where(t.c.position == any_(bindparam("positions", type_=ARRAY(BigInteger()))))
    if token:
        stmt = stmt.where(t.c.lease_token == bindparam("token", type_=String()))
    return stmt.values(
        status="delivered",
        delivered_at=bindparam("at", type_=UtcDateTime()),
        last_error=None,
        lease_token=None,
    )


class _PgRelaySql:
    """The relay's two hot statements on PostgreSQL (claim, mark delivered), compiled once for
    psycopg and run on the driver connection in autocommit, without SQLAlchemy's per-call
    statement building, compilation-cache lookup and result machinery (about 1 ms of CPU per
    claim and per mark otherwise; a relay runs both for every batch). Same SQL text as the
    SQLAlchemy path; rows are decoded by each column type's result processor, as SQLAlchemy
    does. Engines with cursor-execute listeners (tracing, query logs) keep the SQLAlchemy path,
    so those listeners see every statement."""

    __slots__ = ("_decoders", "claim_sql", "dialect", "mark_sql")

    def __init__(self, dialect: Any) -> None:
        self.dialect = dialect
        self.claim_sql = {
            (*mode, marking): _pg_claim_statement(*mode, marking).compile(dialect=dialect).string
            for mode in (("now()", "now() + :lease"), (":now", ":until"))
            for marking in (False, True)
        }
        self.mark_sql = {
            token: _pg_mark_statement(token).compile(dialect=dialect).string
            for token in (True, False)
        }
        self._decoders: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def rows(
        self, rows: Sequence[Sequence[Any]], description: Sequence[Any]
    ) -> list[dict[str, Any]]:
        """`RETURNING o.*` rows as `{column: value}`, decoded as SQLAlchemy decodes them."""
        codes = tuple(d[1] for d in description)
        procs = self._decoders.get(codes)
        if procs is None:
            procs = self._decoders[codes] = tuple(
                c.type.dialect_impl(self.dialect).result_processor(self.dialect, code)
                for c, code in zip(outbox_table.columns, codes, strict=True)
            )
        names = [c.name for c in outbox_table.columns]
        return [
            {
                name: value if proc is None or value is None else proc(value)
                for name, value, proc in zip(names, row, procs, strict=True)
            }
            for row in rows
        ]


_relay_sql: dict[Any, _PgRelaySql] = {}


def _relay_sql_for(dialect: Any) -> _PgRelaySql:
    found = _relay_sql.get(dialect)
    if found is None:
        found = _relay_sql[dialect] = _PgRelaySql(dialect)
    return found


class SqlOutboxStore(_SqlStore):
    """`OutboxStore` over core's `cs_outbox` table.

    `publish` is core's `SqlOutbox` (rows written in the call's transaction; on PostgreSQL an
    advisory lock per `(org_id, aggregate_key)` makes positions of a key follow commit order).
    `claim` runs one short transaction: it selects pending, available rows in position order
    (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so concurrent relays never claim the same row), keeps
    those that respect per-key order (`accept_in_key_order`, keys scoped by org), and leases them
    by moving `available_at` to `now + lease`, counting the attempt and stamping a fresh
    `lease_token`. `extend` renews a lease and reports which rows the token still holds;
    `mark_delivered` and `mark_failed` with `token=` touch only rows that still carry it.
    On PostgreSQL `claim` and `mark_delivered` are each one statement run on its own (autocommit:
    one round trip, atomic and durable like a transaction of one statement).

    With `now=None` lease times come from PostgreSQL's clock (`now()`), so relays whose clocks
    disagree agree on expiry; on SQLite, from the local clock every process of the database
    shares.

    Args:
        engine: Your `AsyncEngine` (never disposed here).
    """

    __slots__ = ("_writer",)

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self._writer = SqlOutbox()

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Stage one `cs_outbox` row per event in `tx` (a `SqlTransaction`)."""
        await self._writer.publish(events, tx)

    def dead_letter_store(self) -> SqlDeadLetterStore:
        """The durable dead-letter store of this database (`cs_dead_letters`).

        `OutboxRelay` gives it to an `EventBus` created without `dead_letters=`, so failed
        deliveries of rows the relay marks delivered are never only in process memory.
        """
        return SqlDeadLetterStore(self.engine)

    async def claim(
        self, limit: int, now: datetime | None, lease: timedelta
    ) -> list[OutboxMessage]:
        """Lease up to `limit` deliverable rows (see the class docs)."""
        check_page(limit, maximum=10_000)
        if self.dialect == "postgresql":
            return await self._claim_postgresql(limit, now, lease)
        t = outbox_table
        db_clock = now is None and self.dialect == "postgresql"
        tx = await self._uow.begin()
        try:
            if db_clock:
                stmt = select(t, func.now().label("cs_db_now")).where(
                    t.c.status == _PENDING, t.c.available_at <= func.now()
                )
            else:
                now = now or datetime.now(UTC)
                stmt = select(t).where(t.c.status == _PENDING, t.c.available_at <= now)
            stmt = stmt.order_by(t.c.position).limit(limit)
            if self.dialect == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            rows = (await tx.execute(stmt)).mappings().all()
            if not rows:
                await tx.rollback()
                return []
            start = rows[0]["cs_db_now"] if db_clock else now
            assert start is not None
            until = start + lease
            token = new_lease_token()
            # As they will be once leased (attempt counted, hidden until the lease ends).
            candidates = [
                _message(r, attempts=1, available_at=until, lease_token=token) for r in rows
            ]
            queues: dict[OrderingKey, list[int]] = {}
            for m in candidates:
                if (okey := m.ordering_key) is not None:
                    queues[okey] = []
            if queues:
                last = candidates[-1].position
                keys = sorted({key for _, key in queues})
                pending = await tx.execute(
                    select(t.c.position, t.c.org_id, t.c.aggregate_key)
                    .where(
                        t.c.status == _PENDING,
                        _one_of(t.c.aggregate_key, keys, self.dialect, String()),
                        t.c.position <= last,
                    )
                    .order_by(t.c.position)
                )
                for row in pending.mappings():
                    queue = queues.get((row["org_id"], row["aggregate_key"]))
                    if queue is not None:
                        queue.append(int(row["position"]))
            accepted = accept_in_key_order(candidates, queues)
            if accepted:
                await tx.execute(
                    update(t)
                    .where(
                        _one_of(
                            t.c.position, [m.position for m in accepted], self.dialect, BigInteger()
                        )
                    )
                    .values(attempts=t.c.attempts + 1, available_at=until, lease_token=token),
                    write=True,
                )
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        return accepted

    async def mark_and_claim(
        self,
        positions: Sequence[int],
        token: str,
        at: datetime,
        limit: int,
        now: datetime | None,
        lease: timedelta,
    ) -> list[OutboxMessage]:
        """`mark_delivered(positions, at, token=token)`, then `claim(limit, now, lease)`.

        On PostgreSQL both are one statement (one round trip, atomic): a relay that keeps
        claiming sends the marks of its last batch with its next claim instead of a statement
        of their own. Rows no longer carrying `token` are left alone, as by `mark_delivered`.
        Elsewhere the two calls run one after the other, with the same result.
        """
        check_page(limit, maximum=10_000)
        if self.dialect != "postgresql" or not positions:
            await self.mark_delivered(positions, at, token=token)
            return await self.claim(limit, now, lease)
        return await self._claim_postgresql(limit, now, lease, marking=(positions, token, at))

    async def _claim_postgresql(
        self,
        limit: int,
        now: datetime | None,
        lease: timedelta,
        marking: tuple[Sequence[int], str, datetime] | None = None,
    ) -> list[OutboxMessage]:
        """The claim on PostgreSQL: one statement, run on its own (one round trip, atomic).

        Same rule as the generic claim (`accept_in_key_order`): a candidate (pending, available,
        not locked by a concurrent claim: `FOR UPDATE SKIP LOCKED`) with a key is leased only if
        no pending row of its `(org_id, key)` before it is left out of the candidates (leased
        elsewhere, backing off, or locked and skipped). With `marking` (positions, their lease
        token, the time), those rows are marked delivered first, in the same statement.
        """
        mode = ("now()", "now() + :lease") if now is None else (":now", ":until")
        params: dict[str, Any] = {"limit": limit, "token": new_lease_token()}
        if now is None:
            params["lease"] = lease
        else:
            params["now"] = as_utc(now)
            params["until"] = as_utc(now + lease)
        if marking is not None:
            positions, token, at = marking
            params["done"] = [int(p) for p in positions]
            params["done_token"] = token
            params["at"] = as_utc(at)
        key = (*mode, marking is not None)
        async with self.engine.connect() as conn:
            fast = _relay_sql_for(conn.dialect)
            done = await autocommit_statement(conn, fast.claim_sql[key], params, fetch=True)
            if done is not None:
                rows: Sequence[Mapping[Any, Any]] = fast.rows(done[1], done[2])
            else:
                stmt = _pg_claim_statement(*key).bindparams(**params).columns(*outbox_table.c)
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = (await auto.execute(stmt)).mappings().all()
        return sorted((_message(r) for r in rows), key=lambda m: m.position)

    async def extend(
        self, positions: Sequence[int], token: str, now: datetime | None, lease: timedelta
    ) -> list[int]:
        """Renew the lease on the rows still carrying `token`; return their positions."""
        if not positions:
            return []
        t = outbox_table
        if now is None and self.dialect == "postgresql":
            until: Any = func.now() + lease
        else:
            until = (now or datetime.now(UTC)) + lease
        stmt = (
            update(t)
            .where(
                _one_of(t.c.position, positions, self.dialect, BigInteger()),
                t.c.lease_token == token,
                t.c.status == "pending",
            )
            .values(available_at=until)
            .returning(t.c.position)
        )
        tx = await self._uow.begin()
        try:
            held = sorted(int(p) for p in (await tx.execute(stmt, write=True)).scalars())
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        return held

    async def mark_delivered(
        self, positions: Sequence[int], at: datetime, *, token: str | None = None
    ) -> int:
        """Mark rows delivered (one statement; with `token`, only rows still carrying it).

        On PostgreSQL the statement runs on its own (autocommit: one round trip instead of
        `BEGIN`, `UPDATE`, `COMMIT`; a single statement is atomic and durable on its own).
        """
        if not positions:
            return 0
        t = outbox_table

        def statement() -> Any:  # built only off the driver path (about 60 us of SQLAlchemy)
            stmt = update(t).where(_one_of(t.c.position, positions, self.dialect, BigInteger()))
            if token is not None:
                stmt = stmt.where(t.c.lease_token == token)
            return stmt.values(
                status="delivered", delivered_at=at, last_error=None, lease_token=None
            )

        if self.dialect == "postgresql":
            async with self.engine.connect() as conn:
                params: dict[str, Any] = {
                    "positions": [int(p) for p in positions],
                    "at": as_utc(at),
                    "status": "delivered",
                    "last_error": None,
                    "lease_token": None,
                }
                if token is not None:
                    params["token"] = token
                sql = _relay_sql_for(conn.dialect).mark_sql[token is not None]
                done = await autocommit_statement(conn, sql, params, fetch=False)
                if done is not None:
                    return int(done[0] or 0)
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return int((await auto.execute(statement())).rowcount or 0)
        (count,) = await self._write(statement())
        return int(count or 0)

    async def mark_failed(
        self, position: int, error: str, retry_at: datetime | None, *, token: str | None = None
    ) -> None:
        """Record the error; back off until `retry_at`, or mark `failed`."""
        t = outbox_table
        values: dict[str, Any] = {"last_error": error[:4000], "lease_token": None}
        if retry_at is None:
            values["status"] = "failed"
        else:
            values["available_at"] = retry_at
        stmt = update(t).where(t.c.position == position)
        if token is not None:
            stmt = stmt.where(t.c.lease_token == token)
        await self._write(stmt.values(**values))

    async def requeue(self, positions: Sequence[int] | None, now: datetime) -> int:
        """Failed rows back to pending."""
        t = outbox_table
        stmt = update(t).where(t.c.status == "failed")
        if positions is not None:
            stmt = stmt.where(t.c.position.in_(list(positions)))
        (count,) = await self._write(
            stmt.values(status="pending", available_at=now, attempts=0, lease_token=None)
        )
        return int(count or 0)

    async def messages(
        self, *, status: OutboxStatus | None = None, limit: int = 100, after: int = 0
    ) -> list[OutboxMessage]:
        """Rows in position order."""
        check_page(limit, maximum=10_000)
        t = outbox_table
        stmt = select(t).where(t.c.position > after).order_by(t.c.position).limit(limit)
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        return [_message(r) for r in await self._read(stmt)]

    async def purge_delivered(self, before: datetime) -> int:
        """Delete rows delivered before `before`."""
        t = outbox_table
        (count,) = await self._write(
            delete(t).where(t.c.status == "delivered", t.c.delivered_at < before)
        )
        return int(count or 0)


# --------------------------------------------------------------------------------------------
# Dead letters, processed events
# --------------------------------------------------------------------------------------------


def _letter(row: Mapping[Any, Any]) -> DeadLetter:
    return DeadLetter(
        id=row["id"],
        event=row["event"],
        subscriber=row["subscriber"],
        error=row["error"],
        attempts=int(row["attempts"]),
        failed_at=row["failed_at"],
        replayed_at=row["replayed_at"],
    )


class SqlDeadLetterStore(_SqlStore):
    """`DeadLetterStore` in `cs_dead_letters`."""

    __slots__ = ()

    async def _apply(self, tx: Transaction | None, stmt: Any, what: str) -> int | None:
        """Run one write on its own, or inside the caller's `SqlTransaction`."""
        if tx is None:
            (count,) = await self._write(stmt)
            return count  # type: ignore[no-any-return]
        if not isinstance(tx, SqlTransaction):
            raise ConfigurationError(
                f"SqlDeadLetterStore.{what}(tx=...) needs a SqlTransaction (a handler's ctx.tx "
                f"on a SqlBackend of the same database), got {type(tx).__name__}",
                details={"field": "tx"},
            )
        tx.check_writable(f"{what} of a dead letter")
        result = await tx.execute(stmt, write=True)
        return getattr(result, "rowcount", None)

    async def add(self, letter: DeadLetter, *, tx: Transaction | None = None) -> None:
        """Insert (in `tx`, if given); `ConflictError` if the id exists."""
        await self._apply(
            tx,
            dead_letter_table.insert().values(
                id=letter.id,
                event_id=letter.event_id,
                event_name=letter.event_name,
                org_id=letter.org_id,
                subscriber=letter.subscriber,
                event=dict(letter.event),
                error=letter.error,
                attempts=letter.attempts,
                failed_at=letter.failed_at,
                replayed_at=letter.replayed_at,
            ),
            "add",
        )

    async def get(self, id: str, *, tx: Transaction | None = None) -> DeadLetter | None:
        """One dead letter, read inside `tx` (a `SqlTransaction`) when given."""
        stmt = select(dead_letter_table).where(dead_letter_table.c.id == id)
        if isinstance(tx, SqlTransaction):
            row = (await tx.execute(stmt)).mappings().first()
            return _letter(row) if row is not None else None
        rows = await self._read(stmt)
        return _letter(rows[0]) if rows else None

    async def list(
        self,
        *,
        subscriber: str | None = None,
        org_id: str | None = None,
        event_name: str | None = None,
        include_replayed: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Oldest first; keyset pagination on position."""
        check_page(limit)
        t = dead_letter_table
        stmt = select(t).where(t.c.position > _cursor(cursor)).order_by(t.c.position)
        if subscriber is not None:
            stmt = stmt.where(t.c.subscriber == subscriber)
        if org_id is not None:
            stmt = stmt.where(t.c.org_id == org_id)
        if event_name is not None:
            stmt = stmt.where(t.c.event_name == event_name)
        if not include_replayed:
            stmt = stmt.where(t.c.replayed_at.is_(None))
        rows = await self._read(stmt.limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(
            tuple(_letter(r) for r in rows), str(rows[-1]["position"]) if more and rows else None
        )

    async def browse(
        self,
        *,
        org_id: str | None,
        subscriber: str | None = None,
        event_name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tx: Transaction | None = None,
    ) -> Page:
        """Still-dead letters of one tenant, newest first; keyset pagination on position."""
        check_page(limit)
        t = dead_letter_table
        stmt = select(t).where(
            t.c.org_id.is_(None) if org_id is None else t.c.org_id == org_id,
            t.c.replayed_at.is_(None),
        )
        if cursor is not None:
            stmt = stmt.where(t.c.position < _cursor(cursor))
        if subscriber is not None:
            stmt = stmt.where(t.c.subscriber == subscriber)
        if event_name is not None:
            stmt = stmt.where(t.c.event_name == event_name)
        stmt = stmt.order_by(t.c.position.desc()).limit(limit + 1)
        rows: list[Any] = (
            list((await tx.execute(stmt)).mappings().all())
            if isinstance(tx, SqlTransaction)
            else await self._read(stmt)
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(
            tuple(_letter(r) for r in rows), str(rows[-1]["position"]) if more and rows else None
        )

    async def mark_replayed(self, id: str, at: datetime, *, tx: Transaction | None = None) -> None:
        """Record a successful replay (in `tx`, if given); `NotFoundError` if unknown."""
        t = dead_letter_table
        count = await self._apply(
            tx, update(t).where(t.c.id == id).values(replayed_at=at), "mark_replayed"
        )
        if not count:
            raise NotFoundError(f"dead letter {id!r} does not exist")

    async def discard(self, id: str, *, tx: Transaction | None = None) -> bool:
        """Delete a dead letter (in `tx`, if given); `False` if unknown."""
        t = dead_letter_table
        return bool(await self._apply(tx, delete(t).where(t.c.id == id), "discard"))

    async def count(self, *, include_replayed: bool = False) -> int:
        """How many."""
        t = dead_letter_table
        stmt = select(func.count()).select_from(t)
        if not include_replayed:
            stmt = stmt.where(t.c.replayed_at.is_(None))
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())


class SqlProcessedEventStore:
    """`ProcessedEventStore` in `cs_processed_events`, written in the consumer's transaction.

    `mark` inserts with `ON CONFLICT DO NOTHING`: on PostgreSQL a concurrent duplicate waits for
    the first transaction and then sees the row, so exactly one of them runs the effect.

    Args:
        engine: Your `AsyncEngine` (for `seen`).
    """

    __slots__ = ("engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def mark(self, tx: Transaction, consumer: str, event_id: str, at: datetime) -> bool:
        """`True` the first time, `False` for a repeat."""
        if not isinstance(tx, SqlTransaction):
            raise ConfigurationError(
                "SqlProcessedEventStore needs a SQL transaction: build the IdempotentConsumer "
                "with unit_of_work=SqlUnitOfWork(engine)",
                details={"field": "unit_of_work"},
            )
        stmt = (
            _insert(tx.dialect)(processed_table)
            .values(consumer=consumer, event_id=event_id, processed_at=at)
            .on_conflict_do_nothing()
            .returning(processed_table.c.event_id)
        )
        # rowcount of INSERT .. ON CONFLICT is not reliable across drivers; RETURNING is.
        result = await tx.execute(stmt, write=True)
        return result.first() is not None

    async def seen(self, consumer: str, event_id: str) -> bool:
        """Whether the pair is committed."""
        t = processed_table
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t.c.event_id).where(t.c.consumer == consumer, t.c.event_id == event_id)
                )
            ).first()
        return row is not None


# --------------------------------------------------------------------------------------------
# Notifications: in-app, preferences, delivery log
# --------------------------------------------------------------------------------------------


def _inapp(row: Mapping[Any, Any]) -> InAppNotification:
    return InAppNotification(
        id=row["id"],
        org_id=_org_of(row["org_key"]),
        user_id=row["user_id"],
        notification=row["notification"],
        title=row["title"],
        body=row["body"],
        event_id=row["event_id"],
        created_at=row["created_at"],
        read_at=row["read_at"],
        data=row["data"] or {},
    )


class SqlInAppStore(_SqlStore):
    """`InAppStore` in `cs_notifications`, every query scoped by org and user."""

    __slots__ = ()

    async def add(self, item: InAppNotification) -> None:
        """Insert; `ConflictError` on a duplicate id."""
        await self._write(
            notification_table.insert().values(
                id=item.id,
                org_key=_org_key(item.org_id),
                user_id=item.user_id,
                notification=item.notification,
                title=item.title,
                body=item.body,
                event_id=item.event_id,
                created_at=item.created_at,
                read_at=item.read_at,
                data=dict(item.data),
            )
        )

    def _mine(self, org_id: str | None, user_id: str) -> Any:
        t = notification_table
        return and_(t.c.org_key == _org_key(org_id), t.c.user_id == user_id)

    async def list(
        self,
        org_id: str | None,
        user_id: str,
        *,
        unread_only: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first; keyset pagination on position."""
        check_page(limit)
        t = notification_table
        stmt = select(t).where(self._mine(org_id, user_id)).order_by(t.c.position.desc())
        if cursor is not None:
            stmt = stmt.where(t.c.position < _cursor(cursor))
        if unread_only:
            stmt = stmt.where(t.c.read_at.is_(None))
        rows = await self._read(stmt.limit(limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(
            tuple(_inapp(r) for r in rows), str(rows[-1]["position"]) if more and rows else None
        )

    async def mark_read(self, org_id: str | None, user_id: str, id: str, at: datetime) -> bool:
        """Mark one read."""
        t = notification_table
        (count,) = await self._write(
            update(t)
            .where(self._mine(org_id, user_id), t.c.id == id, t.c.read_at.is_(None))
            .values(read_at=at)
        )
        return bool(count)

    async def mark_all_read(self, org_id: str | None, user_id: str, at: datetime) -> int:
        """Mark all read."""
        t = notification_table
        (count,) = await self._write(
            update(t).where(self._mine(org_id, user_id), t.c.read_at.is_(None)).values(read_at=at)
        )
        return int(count or 0)

    async def unread_count(self, org_id: str | None, user_id: str) -> int:
        """How many unread."""
        t = notification_table
        stmt = (
            select(func.count())
            .select_from(t)
            .where(self._mine(org_id, user_id), t.c.read_at.is_(None))
        )
        async with self.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())


class SqlPreferenceStore(_SqlStore):
    """`PreferenceStore` in `cs_notification_preferences`."""

    __slots__ = ()

    async def set(self, pref: Preference) -> None:
        """Upsert on (org, user, notification, channel)."""
        stmt = _insert(self.dialect)(preference_table).values(
            org_key=_org_key(pref.org_id),
            user_key=pref.user_id or "",
            notification=pref.notification,
            channel=pref.channel,
            enabled=pref.enabled,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["org_key", "user_key", "notification", "channel"],
            set_={"enabled": pref.enabled},
        )
        await self._write(stmt)

    async def remove(
        self, org_id: str | None, user_id: str | None, notification: str, channel: str
    ) -> bool:
        """Delete one."""
        t = preference_table
        (count,) = await self._write(
            delete(t).where(
                t.c.org_key == _org_key(org_id),
                t.c.user_key == (user_id or ""),
                t.c.notification == notification,
                t.c.channel == channel,
            )
        )
        return bool(count)

    async def for_user(self, org_id: str | None, user_id: str) -> list[Preference]:
        """The user's and the org-wide preferences."""
        t = preference_table
        rows = await self._read(
            select(t)
            .where(
                t.c.org_key == _org_key(org_id), or_(t.c.user_key == "", t.c.user_key == user_id)
            )
            .order_by(t.c.user_key, t.c.notification, t.c.channel)
        )
        return [
            Preference(
                org_id=_org_of(r["org_key"]),
                user_id=r["user_key"] or None,
                notification=r["notification"],
                channel=r["channel"],
                enabled=bool(r["enabled"]),
            )
            for r in rows
        ]


def _delivery(row: Mapping[Any, Any]) -> DeliveryRecord:
    return DeliveryRecord(
        id=row["id"],
        org_id=row["org_id"],
        notification=row["notification"],
        event_id=row["event_id"],
        recipient_id=row["recipient_id"],
        channel=row["channel"],
        status=row["status"],
        attempts=int(row["attempts"]),
        message=row["message"],
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        sent_at=row["sent_at"],
        last_error=row["last_error"],
    )


class SqlDeliveryLog(_SqlStore):
    """`DeliveryLogStore` in `cs_notification_deliveries` (unique idempotency key)."""

    __slots__ = ()

    async def create(self, record: DeliveryRecord) -> DeliveryRecord | None:
        """Insert unless the key exists (`ON CONFLICT DO NOTHING`)."""
        stmt = (
            _insert(self.dialect)(delivery_table)
            .values(
                id=record.id,
                org_id=record.org_id,
                notification=record.notification,
                event_id=record.event_id,
                recipient_id=record.recipient_id,
                channel=record.channel,
                status=record.status,
                attempts=record.attempts,
                message=dict(record.message),
                created_at=record.created_at,
                next_attempt_at=record.next_attempt_at,
                sent_at=record.sent_at,
                last_error=record.last_error,
            )
            .on_conflict_do_nothing(
                index_elements=["notification", "event_id", "recipient_id", "channel"]
            )
            .returning(delivery_table.c.id)
        )
        tx = await self._uow.begin()
        try:
            inserted = (await tx.execute(stmt, write=True)).first()
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        return record if inserted is not None else None

    async def get(self, id: str) -> DeliveryRecord | None:
        """One record."""
        rows = await self._read(select(delivery_table).where(delivery_table.c.id == id))
        return _delivery(rows[0]) if rows else None

    async def find(
        self, notification: str, event_id: str, recipient_id: str, channel: str
    ) -> DeliveryRecord | None:
        """By idempotency key."""
        t = delivery_table
        rows = await self._read(
            select(t).where(
                t.c.notification == notification,
                t.c.event_id == event_id,
                t.c.recipient_id == recipient_id,
                t.c.channel == channel,
            )
        )
        return _delivery(rows[0]) if rows else None

    async def _update(self, id: str, **values: Any) -> None:
        t = delivery_table
        (count,) = await self._write(update(t).where(t.c.id == id).values(**values))
        if not count:
            raise NotFoundError(f"delivery {id!r} does not exist")

    async def mark_sent(self, id: str, at: datetime, attempts: int) -> None:
        """Record success."""
        await self._update(
            id, status="sent", sent_at=at, attempts=attempts, next_attempt_at=None, last_error=None
        )

    async def mark_failed(
        self, id: str, error: str, attempts: int, next_attempt_at: datetime | None
    ) -> None:
        """Record a failure."""
        await self._update(
            id,
            status="queued" if next_attempt_at is not None else "failed",
            attempts=attempts,
            last_error=error[:4000],
            next_attempt_at=next_attempt_at,
        )

    async def due(self, now: datetime, limit: int = 100) -> list[DeliveryRecord]:
        """Queued and due, oldest first."""
        check_page(limit)
        t = delivery_table
        rows = await self._read(
            select(t)
            .where(t.c.status == "queued", t.c.next_attempt_at <= now)
            .order_by(t.c.next_attempt_at, t.c.created_at, t.c.position)
            .limit(limit)
        )
        return [_delivery(r) for r in rows]

    async def list(
        self,
        *,
        org_id: str | None = None,
        status: DeliveryStatus | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Filtered, in insertion order."""
        check_page(limit)
        t = delivery_table
        stmt = select(t).order_by(t.c.position).limit(limit)
        if org_id is not None:
            stmt = stmt.where(t.c.org_id == org_id)
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        if event_id is not None:
            stmt = stmt.where(t.c.event_id == event_id)
        return [_delivery(r) for r in await self._read(stmt)]


# --------------------------------------------------------------------------------------------
# Audit trail
# --------------------------------------------------------------------------------------------


class SqlAuditTrail(_SqlStore):
    """`AuditTrail` over core's `cs_audit_log`/`cs_audit_head` plus `cs_audit_checkpoint`.

    Appending is core's `SqlAuditLog` (chain positions and hashes assigned at flush under a lock
    on the org's head row; a tampered chain is not extended). Queries use the indexed columns and
    keyset pagination on `seq`; verification is core's (`verify_audit_chain`) from the checkpoint.

    Args:
        engine: Your `AsyncEngine`.
        key: HMAC key of a keyed chain, the same as the executor's `SqlAuditLog` (at least 16
            bytes), or `None`.
        clock: Time source for purge entries and anchors.
        ids: Id source for purge entries.

    Raises:
        ConfigurationError: `key` is too short.
    """

    __slots__ = ("_log", "clock", "ids")

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        key: bytes | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        super().__init__(engine)
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self._log = SqlAuditLog(self._uow, key=key, clock=self.clock)

    @property
    def key(self) -> bytes | None:
        """The HMAC key of a keyed chain, or `None`."""
        return self._log.key

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """Append `entry` in `tx` (or in its own transaction)."""
        await self._log.record(entry, tx)

    async def query(
        self,
        org_id: str | None,
        filter: AuditFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> Page:
        """Matching entries of one org, a page at a time."""
        check_page(limit)
        t = audit_table
        f = filter or AuditFilter()
        stmt = select(t).where(t.c.org_key == _org_key(org_id))
        for name in (
            "actor_id",
            "actor_kind",
            "outcome",
            "target_type",
            "target_id",
            "request_id",
            "trace_id",
        ):
            value = getattr(f, name)
            if value is not None:
                stmt = stmt.where(t.c[name] == value)
        if f.action is not None:
            if f.action.endswith("*"):
                prefix = f.action[:-1]
                stmt = stmt.where(func.substr(t.c.action, 1, len(prefix)) == prefix)
            else:
                stmt = stmt.where(t.c.action == f.action)
        if f.since is not None:
            stmt = stmt.where(t.c.occurred_at >= f.since)
        if f.until is not None:
            stmt = stmt.where(t.c.occurred_at < f.until)
        bound = _seq_cursor(cursor)
        if bound is not None:
            stmt = stmt.where(t.c.seq < bound if newest_first else t.c.seq > bound)
        stmt = stmt.order_by(t.c.seq.desc() if newest_first else t.c.seq).limit(limit + 1)
        rows = await self._read(stmt)
        more = len(rows) > limit
        rows = rows[:limit]
        entries = tuple(
            AuditEntry(int(r["seq"]), AuditRecord.from_dict(r["body"]), r["prev_hash"], r["hash"])
            for r in rows
        )
        return Page(entries, str(entries[-1].seq) if more and entries else None)

    async def checkpoint(self, org_id: str | None) -> Checkpoint | None:
        """The org's checkpoint."""
        c = audit_checkpoint_table
        rows = await self._read(select(c).where(c.c.org_key == _org_key(org_id)))
        if not rows:
            return None
        r = rows[0]
        return Checkpoint(org_id, int(r["seq"]), r["hash"], int(r["purged"]), r["created_at"])

    async def verify(
        self, org_id: str | None, *, anchor: ChainAnchor | None = None, page_size: int = 2000
    ) -> VerifyResult:
        """Recompute the org's chain from its checkpoint with core's `ChainVerifier`.

        Reads one snapshot (`REPEATABLE READ` on PostgreSQL, a read transaction on SQLite) page
        by page, so memory stays flat and concurrent appends never look like tampering. Every
        indexed column is compared with the hashed body; entries beyond the head are forged.

        Args:
            org_id: Tenant.
            anchor: A `ChainAnchor` from `anchor()` that the chain must still contain.
            page_size: Entries read per query.

        Raises:
            ConfigurationError: `anchor` belongs to another org.
        """
        c = audit_checkpoint_table
        async with audit_snapshot(self.engine) as conn:
            cp_row = (
                (await conn.execute(select(c).where(c.c.org_key == _org_key(org_id))))
                .mappings()
                .first()
            )
            checkpoint = (
                None
                if cp_row is None
                else Checkpoint(
                    org_id,
                    int(cp_row["seq"]),
                    cp_row["hash"],
                    int(cp_row["purged"]),
                    cp_row["created_at"],
                )
            )
            return await verify_audit_chain(
                conn,
                org_id,
                checkpoint=checkpoint,
                key=self.key,
                anchor=anchor,
                page_size=page_size,
            )

    async def anchor(self, org_id: str | None, *, sink: AnchorSink | None = None) -> ChainAnchor:
        """The org's current head as a `ChainAnchor` (also stored in `sink` when given)."""
        return await self._log.anchor(org_id, sink=sink)

    async def purge_older_than(
        self, org_id: str | None, cutoff: datetime, *, actor_id: str = "system"
    ) -> PurgeResult:
        """Delete the longest prefix older than `cutoff`, checkpoint it and chain a purge entry.

        Runs in one transaction that locks the org's head row first (PostgreSQL), so it never
        races with appends.
        """
        _check_cutoff(cutoff)
        t, h, c = audit_table, audit_head_table, audit_checkpoint_table
        key = _org_key(org_id)
        tx = await self._uow.begin()
        try:
            lock = select(h.c.seq).where(h.c.org_key == key)
            if self.dialect == "postgresql":
                lock = lock.with_for_update()
            if (await tx.execute(lock)).first() is None:
                await tx.rollback()
                return PurgeResult(0, None)
            first_young = (
                await tx.execute(
                    select(func.min(t.c.seq)).where(t.c.org_key == key, t.c.occurred_at >= cutoff)
                )
            ).scalar_one()
            upto_stmt = select(t.c.seq, t.c.hash).where(t.c.org_key == key)
            if first_young is not None:
                upto_stmt = upto_stmt.where(t.c.seq < first_young)
            last = (await tx.execute(upto_stmt.order_by(t.c.seq.desc()).limit(1))).first()
            current_rows = (await tx.execute(select(c).where(c.c.org_key == key))).mappings().all()
            current = current_rows[0] if current_rows else None
            if last is None:
                await tx.rollback()
                return PurgeResult(0, await self.checkpoint(org_id))
            through_seq, through_hash = int(last.seq), str(last.hash)
            deleted = await tx.execute(
                delete(t).where(t.c.org_key == key, t.c.seq <= through_seq), write=True
            )
            n = int(getattr(deleted, "rowcount", 0) or 0)
            now = self.clock.now()
            cp = Checkpoint(
                org_id,
                through_seq,
                through_hash,
                (int(current["purged"]) if current else 0) + n,
                now,
            )
            upsert = _insert(self.dialect)(c).values(
                org_key=key, seq=cp.seq, hash=cp.hash, purged=cp.purged, created_at=now
            )
            upsert = upsert.on_conflict_do_update(
                index_elements=["org_key"],
                set_={"seq": cp.seq, "hash": cp.hash, "purged": cp.purged, "created_at": now},
            )
            await tx.execute(upsert, write=True)
            await self._log.record(
                _purge_record(self.ids, now, org_id, cp, n, cutoff, actor_id), tx
            )
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        return PurgeResult(n, cp)
