"""SQL adapters: entity repositories, idempotency store, outbox and hash-chained audit log."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, cast

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    MetaData,
    Table,
    and_,
    delete,
    func,
    select,
    text,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contractspec.core.errors import (
    ConcurrentUpdateError,
    ConflictError,
    IdempotencyInProgressError,
)
from contractspec.core.ports import IdempotencyRecord
from contractspec.core.records import EventEnvelope
from contractspec.core.registry import SpecRegistry
from contractspec.core.repository import (
    BaseRepository,
    Condition,
    check_aggregate,
    parse_order_by,
    parse_where,
)
from contractspec.core.specs import EntitySpec
from contractspec.core.sql._audit import SqlAuditLog, org_key
from contractspec.core.sql._schema import (
    VERSION_COLUMN,
    EntityTable,
    EntityTables,
    idempotency_table,
    metadata,
    outbox_table,
)
from contractspec.core.sql._uow import SqlTransaction, SqlUnitOfWork, sql_transaction
from contractspec.core.sql.engines import create_all
from contractspec.core.sql.types import as_utc
from contractspec.core.transactions import Transaction

__all__ = [
    "OUTBOX_LOCK_CLASS",
    "SqlAuditLog",
    "SqlBackend",
    "SqlEntityStore",
    "SqlIdempotencyStore",
    "SqlOutbox",
    "SqlRepository",
    "outbox_lock_key",
    "sql_transaction",
]

M = TypeVar("M", bound=BaseModel)


class SqlEntityStore:
    """Repositories over entity tables built by `EntityTables`."""

    __slots__ = ("tables",)

    def __init__(self, tables: EntityTables) -> None:
        self.tables = tables

    def repository(
        self, entity: EntitySpec[M], tx: Transaction, org_id: str | None
    ) -> SqlRepository[M]:
        """A `SqlRepository` for `entity` inside `tx` (a `SqlTransaction`), scoped to `org_id`."""
        return SqlRepository(
            entity,
            sql_transaction(tx, f"the {entity.name} repository"),
            org_id,
            self.tables[entity],
        )


class SqlRepository(BaseRepository[M]):
    """`Repository` on a SQL table: buffered writes, identity map, one query per read."""

    __slots__ = ("_sql", "_t")

    def __init__(
        self, entity: EntitySpec[M], tx: SqlTransaction, org_id: str | None, table: EntityTable
    ) -> None:
        super().__init__(entity, tx, org_id)
        self._sql = tx
        self._t = table

    # -- conversions ------------------------------------------------------------------------------

    def _to_row(self, model: BaseModel) -> dict[str, Any]:
        row = model.model_dump()
        json_fields = self._t.json_fields
        if json_fields:
            row.update(model.model_dump(mode="json", include=set(json_fields)))
        if self._entity.tenant_scoped:
            row["org_id"] = self._org_id
        return row

    def _load_row(self, row: Mapping[str, Any]) -> M:
        hidden = self._t.hidden
        return self._entity.model.model_validate({k: v for k, v in row.items() if k not in hidden})

    def _key(self, pk: Any) -> tuple[str, str | None, Any]:
        return (self._entity.name, self._org_id, pk)

    def _where_pk(self, pk: Any) -> dict[str, Any]:
        if self._entity.tenant_scoped:
            return {"org_id": self._org_id, self._entity.primary_key: pk}
        return {self._entity.primary_key: pk}

    def _scope(self) -> list[ColumnElement[bool]]:
        if self._entity.tenant_scoped:
            return [self._t.table.c.org_id == self._org_id]
        return []

    def _conditions(self, conditions: list[Condition]) -> list[ColumnElement[bool]]:
        out = self._scope()
        c = self._t.table.c
        for cond in conditions:
            col = c[cond.field]
            v = cond.value
            match cond.op:
                case "eq":
                    out.append(col == v)
                case "ne":
                    out.append(col != v)
                case "lt":
                    out.append(col < v)
                case "le":
                    out.append(col <= v)
                case "gt":
                    out.append(col > v)
                case "ge":
                    out.append(col >= v)
                case "in":
                    out.append(col.in_(v))
                case "not_in":
                    out.append(col.not_in(v))
                case "is_null":
                    out.append(col.is_(None) if v else col.is_not(None))
                case "icontains":
                    out.append(func.lower(col).contains(v.lower(), autoescape=True))
        return out

    def _order_col(self, name: str) -> Any:
        col: Any = self._t.table.c[name]
        if (
            self._sql.dialect == "postgresql"
            and name in self._t.kinds
            and self._t.kinds[name].kind == "str"
        ):
            col = col.collate("C")  # code-point order, as in SQLite and Python
        return col

    def _select_pk(self, pk: Any) -> Any:
        where = self._where_pk(pk)
        return select(self._t.table).where(
            and_(*(self._t.table.c[k] == v for k, v in where.items()))
        )

    async def _row(self, pk: Any) -> dict[str, Any] | None:
        key = self._key(pk)
        known = self._sql.identity_get(key)
        if known is not SqlTransaction.MISSING:
            return cast(dict[str, Any] | None, known)
        row = await self._sql.get_row(self._t.table, self._where_pk(pk))
        self._sql.identity_set(key, row)
        return row

    # -- protocol ---------------------------------------------------------------------------------

    async def get(self, id: Any) -> M | None:
        """The record with primary key `id` in this tenant, or `None` (one query, then cached)."""
        row = await self._row(self._coerce_pk(id))
        return None if row is None else self._load_row(row)

    async def get_for_update(self, id: Any) -> M | None:
        """The record, row-locked until the transaction ends (`SELECT … FOR UPDATE`), or `None`.

        On SQLite, write transactions already run one at a time, so this is a plain read.
        """
        pk = self._coerce_pk(id)
        sql = self._sql
        key = self._key(pk)
        if sql.dialect != "postgresql" or key in sql.locked:
            row = await self._row(pk)
        else:
            result = await sql.execute(self._select_pk(pk).with_for_update(), locks=True)
            found = result.mappings().first()
            row = dict(found) if found is not None else None
            sql.identity_set(key, row)
            sql.locked.add(key)
        return None if row is None else self._load_row(row)

    async def add(self, obj: M | Mapping[str, Any]) -> M:
        """Buffer an insert; `ConflictError` now if the key is known, else when written."""
        self._tx.check_writable(f"adding {self._entity.name}")
        model = self._coerce_new(obj)
        pk = self._pk_of(model)
        key = self._key(pk)
        known = self._sql.identity_get(key)
        if known is not SqlTransaction.MISSING and known is not None:
            raise ConflictError(
                f"{self._entity.name} {pk!r} already exists",
                details={"entity": self._entity.name, "id": str(pk)},
            )
        row = self._to_row(model)
        row[VERSION_COLUMN] = 1
        self._sql.stage_insert(self._t.table, row, key)
        self._sql.identity_set(key, dict(row))
        self._record("create", pk, None, model)
        return model

    async def update(self, obj: M) -> M:
        """Buffer a versioned update of the changed columns.

        Raises:
            NotFoundError: No such record. ConcurrentUpdateError (when written): it changed since
                this transaction read it.
        """
        self._tx.check_writable(f"updating {self._entity.name}")
        model = self._coerce_new(obj)
        pk = self._pk_of(model)
        before = await self._row(pk)
        if before is None:
            raise self._not_found(pk)
        row = self._to_row(model)
        changed = {k: v for k, v in row.items() if before.get(k, SqlTransaction.MISSING) != v}
        key = self._key(pk)
        version = before.get(VERSION_COLUMN, 1)
        row[VERSION_COLUMN] = version
        if changed:
            row[VERSION_COLUMN] = changed[VERSION_COLUMN] = version + 1
            where = self._where_pk(pk)
            where[VERSION_COLUMN] = version
            self._sql.stage_update(self._t.table, key, where, changed, versioned=True)
        self._sql.identity_set(key, row)
        self._record("update", pk, self._load_row(before), model)
        return model

    async def delete(self, id: Any) -> bool:
        """Delete now (after flushing); return whether the record existed.

        Raises:
            ConcurrentUpdateError: It changed (or was deleted) since this transaction read it.
        """
        self._tx.check_writable(f"deleting {self._entity.name}")
        pk = self._coerce_pk(id)
        before = await self._row(pk)
        if before is None:
            return False
        where = self._where_pk(pk)
        where[VERSION_COLUMN] = before.get(VERSION_COLUMN, 1)
        table = self._t.table
        deleted = await self._sql.write(
            delete(table).where(and_(*(table.c[k] == v for k, v in where.items())))
        )
        if deleted != 1:
            raise ConcurrentUpdateError(
                f"{self._entity.name} {pk!r} changed since this call read it; read it again and "
                "retry (or read it with get_for_update())",
                details={"entity": self._entity.name, "id": str(pk)},
            )
        self._sql.identity_set(self._key(pk), None)
        self._record("delete", pk, self._load_row(before), None)
        return True

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[M]:
        """Matching records in one query (after flushing buffered writes)."""
        self._check_page(limit, offset)
        conditions = self._conditions(parse_where(self._entity, where))
        terms = parse_order_by(self._entity, order_by)
        stmt = select(self._t.table).where(*conditions)
        for term in terms:
            col = self._order_col(term.field)
            stmt = stmt.order_by(
                col.desc().nulls_first() if term.descending else col.asc().nulls_last()
            )
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset:
            stmt = stmt.offset(offset)
        result = await self._sql.execute(stmt)
        return [self._load_row(dict(row)) for row in result.mappings()]

    async def count(self, where: Mapping[str, Any] | None = None) -> int:
        """Number of matching records (`SELECT count(*)`)."""
        conditions = self._conditions(parse_where(self._entity, where))
        stmt = select(func.count()).select_from(self._t.table).where(*conditions)
        result = await self._sql.execute(stmt)
        return int(result.scalar_one())

    async def aggregate(
        self,
        *,
        group_by: Sequence[str] = (),
        sum: Sequence[str] = (),
        where: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Grouped counts and sums in one `GROUP BY` query."""
        check_aggregate(self._entity, group_by, sum)
        conditions = self._conditions(parse_where(self._entity, where))
        c = self._t.table.c
        columns: list[Any] = [c[g] for g in group_by]
        columns.append(func.count().label("count"))
        for f in sum:
            total: Any = func.sum(c[f])
            if self._t.kinds[f].kind == "int":
                total = sql_cast(total, BigInteger)
            columns.append(total.label(f"sum_{f}"))
        stmt = select(*columns).where(*conditions)
        if group_by:
            stmt = stmt.group_by(*(c[g] for g in group_by))
            stmt = stmt.order_by(*(self._order_col(g).asc().nulls_last() for g in group_by))
        result = await self._sql.execute(stmt)
        return [dict(row) for row in result.mappings()]


class SqlIdempotencyStore:
    """Idempotency records in `cs_idempotency`, reserved in the call's transaction.

    `reserve` inserts the record first (`INSERT … ON CONFLICT DO NOTHING`): on PostgreSQL a
    concurrent call with the same key waits on the primary key until the first call's transaction
    ends, then sees its committed record (or, if it rolled back, takes the key); SQLite writers run
    one at a time anyway. The output is filled in by `complete` in the same transaction, so other
    transactions only ever see completed records.
    """

    __slots__ = ()

    @staticmethod
    def _ident(org_id: str | None, operation: str, key: str) -> tuple[str, str | None, Any]:
        return ("cs_idempotency", org_id, (operation, key))

    @staticmethod
    def _record(org_id: str | None, row: Mapping[str, Any]) -> IdempotencyRecord:
        return IdempotencyRecord(
            org_id=org_id,
            operation=row["operation"],
            key=row["key"],
            fingerprint=row["fingerprint"],
            output=row["output"],
            created_at=row["created_at"],
        )

    async def _select(
        self, sql: SqlTransaction, org_id: str | None, operation: str, key: str
    ) -> dict[str, Any] | None:
        t = idempotency_table
        result = await sql.execute(
            select(t).where(
                t.c.org_key == org_key(org_id), t.c.operation == operation, t.c.key == key
            )
        )
        found = result.mappings().first()
        return dict(found) if found is not None else None

    async def get(
        self, tx: Transaction, org_id: str | None, operation: str, key: str
    ) -> IdempotencyRecord | None:
        """The record (including one staged earlier in `tx`), or `None`."""
        sql = sql_transaction(tx, "the idempotency store")
        ident = self._ident(org_id, operation, key)
        known = sql.identity_get(ident)
        if known is SqlTransaction.MISSING:
            known = await self._select(sql, org_id, operation, key)
        return None if known is None else self._record(org_id, known)

    async def reserve(
        self,
        tx: Transaction,
        org_id: str | None,
        operation: str,
        key: str,
        fingerprint: str,
        now: datetime,
    ) -> IdempotencyRecord | None:
        """Claim the key in `tx` (one statement), or return the record of its first call."""
        sql = sql_transaction(tx, "the idempotency store")
        ident = self._ident(org_id, operation, key)
        known = sql.identity_get(ident)
        if known is not SqlTransaction.MISSING and known is not None:
            return self._record(org_id, known)
        row = {
            "org_key": org_key(org_id),
            "operation": operation,
            "key": key,
            "fingerprint": fingerprint,
            "output": None,
            "created_at": now,
        }
        if await sql.insert_or_nothing(idempotency_table, row):
            sql.identity_set(ident, row)
            return None
        found = await self._select(sql, org_id, operation, key)
        if found is None:  # the holder rolled back between our two statements: try once more
            if await sql.insert_or_nothing(idempotency_table, row):
                sql.identity_set(ident, row)
                return None
            found = await self._select(sql, org_id, operation, key)
            if found is None:
                raise IdempotencyInProgressError(
                    f"idempotency key {key!r} of {operation} is contended; retry",
                    details={"operation": operation, "field": "idempotency_key"},
                )
        sql.identity_set(ident, found)
        return self._record(org_id, found)

    async def complete(self, tx: Transaction, record: IdempotencyRecord) -> None:
        """Buffer the outcome into the record reserved in `tx`."""
        sql = sql_transaction(tx, "the idempotency store")
        ident = self._ident(record.org_id, record.operation, record.key)
        where = {
            "org_key": org_key(record.org_id),
            "operation": record.operation,
            "key": record.key,
        }
        sql.stage_update(idempotency_table, ident, where, {"output": record.output})
        known = sql.identity_get(ident)
        if isinstance(known, dict):
            known["output"] = record.output


#: Class id of the transaction-level advisory locks that order `cs_outbox` positions per key
#: (PostgreSQL's two-argument `pg_advisory_xact_lock(class, object)`; the bytes of "cs_o").
OUTBOX_LOCK_CLASS = 0x63735F6F
_ORDER_HOOK = "cs_outbox_order"


def outbox_lock_key(org_id: str | None, key: str) -> int:
    """The advisory lock object id of an ordering key: a 32-bit BLAKE2b hash of `(org, key)`.

    Two keys with the same hash merely take turns; the hash is the same in every process.
    """
    digest = hashlib.blake2b(
        f"{org_id or ''}\x1f{key}".encode(), digest_size=4, person=b"cs_outbox"
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class SqlOutbox:
    """`EventPublisher` writing events to `cs_outbox` in the call's transaction.

    Rows are buffered and written when the transaction commits (they are append-only). A relay
    (contractspec-bus) delivers `pending` rows in `position` order per `(org_id, aggregate_key)`
    and marks them.

    **Positions follow commit order per key.** On PostgreSQL a position comes from a sequence
    when the row is inserted, and the transaction that inserted it may commit after one that
    inserted a later position; a relay could then see position 2 before position 1. So the
    flush that writes a transaction's outbox rows first takes a transaction-level advisory lock
    per `(org_id, aggregate_key)` of those rows (`pg_advisory_xact_lock(OUTBOX_LOCK_CLASS,
    outbox_lock_key(org, key))`, in ascending order, in the same round trip as the inserts),
    held until the transaction ends: a second transaction emitting for the same key waits at
    its commit until the first one has committed or rolled back, so a row of a key is never
    visible before an earlier-positioned row of that key could still commit. The locks are
    taken before any other flush hook runs (the audit chain locks its head rows after them), in
    one global order, so writers cannot deadlock on them. Rows without a key take no lock and
    have no order across transactions. On SQLite, write transactions are serialized, so
    positions are commit order without a lock.
    """

    __slots__ = ()

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Buffer one outbox row per event, in emission order."""
        sql = sql_transaction(tx, "the SQL outbox")
        for env in events:
            sql.stage_insert(outbox_table, outbox_row(env))
        if events and sql.dialect == "postgresql" and _ORDER_HOOK not in sql._hooks:
            # First of all hooks: the key locks come before the audit chain's head-row locks in
            # every transaction, so two writers never wait for each other in a cycle.
            sql._hooks = {_ORDER_HOOK: partial(_lock_keys_and_insert, sql), **sql._hooks}


async def _lock_keys_and_insert(sql: SqlTransaction, conn: AsyncConnection, buf: Any) -> None:
    """Flush hook (PostgreSQL): lock the buffered outbox rows' keys, then insert the rows, in
    one round trip (the rows are removed from the buffer, so the unit of work skips them).
    Outside batch calls the statements are deferred: they travel with the transaction's other
    writes and the audit chain's head lock.

    On psycopg each row goes in as `INSERT … SELECT … FROM jsonb_populate_record(…)` whose only
    value is one JSON literal (`outbox_row_inserts`), instead of 14 values bound one by one.
    Engines with statement listeners (tracing, query logs) and other drivers keep the unit of
    work's inserts, after the locks."""
    rows: list[dict[str, Any]] | None = buf.inserts.get(outbox_table)
    if not rows:
        return
    keys = sorted(
        {
            outbox_lock_key(row["org_id"], row["aggregate_key"])
            for row in rows
            if row["aggregate_key"] is not None
        }
    )
    locks = [f"SELECT pg_advisory_xact_lock({OUTBOX_LOCK_CLASS}, {key})" for key in keys]
    deferring = await sql._deferring()
    driver = deferring or await sql._direct()
    if driver is None or driver.kind != "psycopg":
        for statement in locks:  # the unit of work inserts the rows after the hooks
            await conn.execute(text(statement))
        return
    try:
        inserts = outbox_row_inserts(rows, driver.connection)
    except (TypeError, ValueError) as exc:
        raise driver.wrap(exc, "INSERT INTO cs_outbox") from exc
    if deferring is not None:  # outside batch calls: with the transaction's next round trip
        for statement in [*locks, *inserts]:
            sql.defer_sql(statement)
        rows.clear()
        return
    cursor = driver.client_cursor()
    try:
        await cursor.execute("; ".join([*locks, *inserts]))
    except Exception as exc:
        raise driver.wrap(exc, "INSERT INTO cs_outbox") from exc
    rows.clear()


#: `INSERT … SELECT` heads of `outbox_row_inserts`, per column tuple.
_RECORD_HEADS: dict[tuple[str, ...], str] = {}


def _json_default(value: object) -> str:
    if isinstance(value, datetime):  # as `UtcDateTime` binds it
        return as_utc(value).isoformat()
    raise TypeError(f"an outbox column value of type {type(value).__name__} is not JSON")


def outbox_row_inserts(rows: Sequence[Mapping[str, Any]], connection: Any) -> list[str]:
    """`INSERT INTO cs_outbox` statements for `rows` (each a full `outbox_row` mapping), one per
    row in order, bound client-side: each row travels as one JSON object literal expanded by
    `jsonb_populate_record(NULL::cs_outbox, …)`.

    One JSON literal (the C encoder, then `psycopg.sql.quote`) costs a fraction of binding
    the row's 14 values one by one (`mogrify`: a dumper, a quote and a cast per value); the
    server's extra work to expand the record is a few microseconds. Datetimes travel as ISO
    8601 with their offset (naive ones as UTC, as `UtcDateTime` stores them); `payload` and
    `headers` as nested JSON.

    Args:
        rows: The rows, as `outbox_row` builds them.
        connection: The psycopg connection (quoting follows its encoding and settings).

    Returns:
        The statements, with no parameters left.

    Raises:
        TypeError: A value is not JSON (other than a datetime).
        ValueError: A float is not finite.
    """
    from psycopg.sql import quote

    statements: list[str] = []
    for row in rows:
        columns = tuple(row)
        head = _RECORD_HEADS.get(columns)
        if head is None:
            names = ", ".join(columns)
            head = _RECORD_HEADS[columns] = (
                f"INSERT INTO {outbox_table.fullname} ({names}) SELECT {names} "
                f"FROM jsonb_populate_record(NULL::{outbox_table.fullname}, "
            )
        literal = json.dumps(row, default=_json_default, allow_nan=False, separators=(",", ":"))
        statements.append(f"{head}{quote(literal, connection)})")
    return statements


def outbox_row(env: EventEnvelope) -> dict[str, Any]:
    """The `cs_outbox` row of an envelope (every column given, for `executemany`)."""
    return {
        "id": env.id,
        "name": env.name,
        "version": env.version,
        "org_id": env.org_id,
        "aggregate_key": env.key,
        "payload": env.payload_json(),
        "headers": {
            "actor_id": env.actor_id,
            "actor_kind": env.actor_kind,
            "trace_id": env.trace_id,
            "correlation_id": env.correlation_id,
            "causation_id": env.causation_id,
            "request_id": env.request_id,
            "operation": env.operation,
        },
        "occurred_at": env.occurred_at,
        "status": "pending",
        "attempts": 0,
        "available_at": env.occurred_at,
        "delivered_at": None,
        "last_error": None,
        "lease_token": None,
    }


class SqlBackend:
    """Everything the executor persists, in SQL: entities, idempotency, outbox, audit.

    Args:
        engine: Your `AsyncEngine` (SQLite configured by `configure_sqlite_engine`, or
            PostgreSQL via psycopg). The backend never disposes it.
        specs: A `SpecRegistry` (its entities get tables) or prebuilt `EntityTables`.
        prefix: Table prefix for entity tables when `specs` is a registry.
        audit_key: HMAC key of a keyed audit chain (at least 16 bytes, kept outside the
            database), or `None` for the unkeyed SHA-256 chain (see `SqlAuditLog`).

    Attributes:
        unit_of_work, entities, idempotency, events, audit: The adapters.
        tables: The entity tables.
        metadatas: Library tables and entity tables, for `create_all` or Alembic.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        specs: SpecRegistry | EntityTables,
        *,
        prefix: str = "",
        audit_key: bytes | None = None,
    ) -> None:
        self.engine = engine
        self.unit_of_work = SqlUnitOfWork(engine)
        self.tables = (
            specs if isinstance(specs, EntityTables) else EntityTables(specs, prefix=prefix)
        )
        self.entities = SqlEntityStore(self.tables)
        self.idempotency = SqlIdempotencyStore()
        self.events = SqlOutbox()
        self.audit = SqlAuditLog(self.unit_of_work, key=audit_key)

    @property
    def metadatas(self) -> tuple[MetaData, ...]:
        """`(library metadata, entity metadata)`."""
        return (metadata, self.tables.metadata)

    async def create_all(self) -> None:
        """Create library and entity tables that do not exist yet (tests, examples, prototypes)."""
        await create_all(self.engine, *self.metadatas)

    def table(self, entity: EntitySpec[Any]) -> Table:
        """The SQLAlchemy table of an entity (for your own reporting queries)."""
        return self.tables[entity].table
