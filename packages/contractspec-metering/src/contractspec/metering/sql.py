"""SQLAlchemy adapter of the `MeteringStore` (SQLite and PostgreSQL).

Install with `pip install 'contractspec-metering[sql]'` or `'contractspec-metering[postgres]'`.

```python
from contractspec.core.sql import create_all, metadata as core_metadata
from contractspec.metering.sql import SqlMeteringStore, metadata

await create_all(engine, core_metadata, metadata)
store = SqlMeteringStore(engine)
```

Tables (on `contractspec.metering.sql.metadata`, core's `NAMING_CONVENTION`, so add it to your
Alembic `target_metadata`): `cs_usage_events` (unique `(org_id, id)`: a duplicate is `INSERT … ON
CONFLICT DO NOTHING`), `cs_usage_counters` (one running total per org, meter, limit window and
window start, updated by `INSERT … ON CONFLICT DO UPDATE … WHERE used + n <= limit`: PostgreSQL
locks the row and re-checks the condition on its latest version, so N concurrent callers at a limit
admit exactly the allowed number; SQLite serialises writers) and `cs_plan_assignments`. Values are
exact: `NUMERIC(36, 6)` on PostgreSQL, integer micro-units on SQLite (`SUM` stays exact up to
9.2e12 units per group). The adapter takes your `AsyncEngine` and never disposes it.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.metering.sql needs SQLAlchemy: pip install 'contractspec-metering[sql]' "
        "(SQLite) or 'contractspec-metering[postgres]' (PostgreSQL)"
    ) from exc

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    column,
    distinct,
    func,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import SpecValidationError, Transaction
from contractspec.core.sql import (
    DecimalType,
    SqlTransaction,
    SqlUnitOfWork,
    UtcDateTime,
    new_metadata,
    sql_transaction,
)
from contractspec.metering.specs import Aggregation, Meter, Window, window_bounds
from contractspec.metering.stores import (
    Counter,
    PlanAssignment,
    Recorded,
    UsageAggregate,
    UsageEvent,
    check_event,
    clean_decimal,
    counted,
)

__all__ = [
    "SqlMeteringStore",
    "counters_table",
    "create_metering_tables",
    "metadata",
    "plan_assignments_table",
    "usage_events_table",
]

#: The metering tables. Add it to your Alembic `target_metadata`.
metadata = new_metadata()

_Value = DecimalType(36, 6)

#: The largest usage value SQLite can store (values are 64-bit integer micro-units there).
SQLITE_MAX_VALUE = Decimal(2**63 - 1).scaleb(-6)
_AutoBigInt = BigInteger().with_variant(Integer(), "sqlite")
#: `window_start` of a gauge's lock row (`lock_gauge`).
_GAUGE_LOCK_START = datetime(1970, 1, 1, tzinfo=UTC)
#: Rows per multi-row INSERT of `record_many` (9 parameters each: far below SQLite's limit).
_CHUNK = 500

usage_events_table = Table(
    "cs_usage_events",
    metadata,
    Column("seq", _AutoBigInt, primary_key=True, autoincrement=True),
    Column("org_id", String(255), nullable=False),
    Column("id", String(255), nullable=False),
    Column("meter", String(255), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("user_id", String(255), nullable=True),
    Column("value", _Value, nullable=False),
    Column("unique_key", String(255), nullable=True),
    Column("timestamp", UtcDateTime(), nullable=False),
    Column("window_start", UtcDateTime(), nullable=False),
    UniqueConstraint("org_id", "id"),
    Index(None, "org_id", "meter", "timestamp"),
    comment="Usage events, idempotent per (org_id, id); window_start is the meter's window.",
)

counters_table = Table(
    "cs_usage_counters",
    metadata,
    Column("org_id", String(255), nullable=False),
    Column("meter", String(255), nullable=False),
    Column("window_kind", String(8), nullable=False),
    Column("window_start", UtcDateTime(), nullable=False),
    Column("used", _Value, nullable=False),
    PrimaryKeyConstraint("org_id", "meter", "window_kind", "window_start"),
    comment="Running totals of additive meters per limit window (quota checks).",
)

plan_assignments_table = Table(
    "cs_plan_assignments",
    metadata,
    Column("org_id", String(255), primary_key=True),
    Column("plan", String(255), nullable=False),
    Column("assigned_at", UtcDateTime(), nullable=False),
    comment="The plan each org is on.",
)


#: Start of the UTC window of an event's timestamp (always UTC: `UsageEvent` converts it); the
#: same values as `window_bounds(window, at)[0]`, without its cache (ingested events are not in
#: time order).
_WINDOW_START: dict[Window, Callable[[datetime], datetime]] = {
    Window.HOUR: lambda t: t.replace(minute=0, second=0, microsecond=0),
    Window.DAY: lambda t: t.replace(hour=0, minute=0, second=0, microsecond=0),
    Window.MONTH: lambda t: t.replace(day=1, hour=0, minute=0, second=0, microsecond=0),
}
#: The stored events of one org among a JSON array of ids (SQLite; see `_stored`).
_SQLITE_STORED = text(
    "SELECT * FROM cs_usage_events WHERE org_id = :org_id "
    "AND id IN (SELECT value FROM json_each(:ids))"
).columns(*usage_events_table.columns)
#: Rows per statement of `record_many` on PostgreSQL (one JSON parameter, no bound-parameter limit).
_PG_CHUNK = 5000
#: `record_many` on PostgreSQL, one round trip per chunk: the rows go in as one JSON array of
#: arrays (`json.dumps` in C; psycopg's text array dumper quoted each element with a regex, a
#: third of the call's CPU), `ON CONFLICT DO NOTHING` inserts the new ones and returns their ids,
#: and the same statement returns the rows already stored among them (a data-modifying CTE's
#: outer query reads the statement's snapshot, taken before the insert: the duplicates only),
#: looked up by index (`LATERAL … LIMIT 1`: a plan that does not depend on the table's size or
#: statistics) for the rows the insert did not return only (a hashed `NOT IN` over its keys). A
#: duplicate committed by another transaction after that snapshot is in neither part; the caller
#: reads those again (`_stored`).
_PG_RECORD_MANY = text(
    "WITH input AS (SELECT r->>0 AS org_id, r->>1 AS id, r->>2 AS subject, r->>3 AS user_id, "
    "CAST(r->>4 AS numeric) AS value, r->>5 AS unique_key, "
    "CAST(r->>6 AS timestamptz) AS ts, CAST(r->>7 AS timestamptz) AS ws "
    "FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r), "
    "ins AS (INSERT INTO cs_usage_events (org_id, id, meter, subject, user_id, value, "
    'unique_key, "timestamp", window_start) '
    "SELECT org_id, id, :meter, subject, user_id, value, unique_key, ts, ws FROM input "
    "ON CONFLICT (org_id, id) DO NOTHING RETURNING org_id, id) "
    "SELECT true AS new, org_id, id, NULL AS meter, NULL AS subject, NULL AS user_id, "
    'NULL AS value, NULL AS unique_key, NULL AS "timestamp" FROM ins '
    "UNION ALL "
    "SELECT false, e.* FROM input AS i CROSS JOIN LATERAL (SELECT e.org_id, e.id, e.meter, "
    'e.subject, e.user_id, e.value, e.unique_key, e."timestamp" FROM cs_usage_events AS e '
    "WHERE e.org_id = i.org_id AND e.id = i.id LIMIT 1) AS e "
    "WHERE (i.org_id, i.id) NOT IN (SELECT org_id, id FROM ins)"
).columns(
    column("new", Boolean()),
    *(
        usage_events_table.c[name]
        for name in (
            "org_id",
            "id",
            "meter",
            "subject",
            "user_id",
            "value",
            "unique_key",
            "timestamp",
        )
    ),
)


async def create_metering_tables(engine: AsyncEngine) -> None:
    """Create the metering tables (tests, examples, the docs; use Alembic in production)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)


def _insert(dialect: str) -> Any:
    return pg_insert if dialect == "postgresql" else sqlite_insert


def _event(row: Any) -> UsageEvent:
    return UsageEvent(
        id=row["id"],
        org_id=row["org_id"],
        user_id=row["user_id"],
        subject=row["subject"],
        meter=row["meter"],
        value=clean_decimal(row["value"]),
        timestamp=row["timestamp"],
        unique_key=row["unique_key"],
    )


def _measure(aggregation: Aggregation) -> Any:
    t = usage_events_table
    if aggregation is Aggregation.SUM:
        return func.sum(t.c.value, type_=_Value)
    if aggregation is Aggregation.COUNT:
        return func.count()
    if aggregation is Aggregation.MAX:
        return func.max(t.c.value, type_=_Value)
    return func.count(distinct(t.c.unique_key))


class SqlMeteringStore:
    """`MeteringStore` on SQLAlchemy (SQLite file or PostgreSQL).

    Args:
        engine: Your `AsyncEngine`; writes inside an operation go through its `SqlTransaction`
            (an executor on a `SqlBackend` of the same database).
    """

    __slots__ = ("_uow", "engine")

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._uow = SqlUnitOfWork(engine)

    @property
    def unit_of_work(self) -> SqlUnitOfWork:
        """A `SqlUnitOfWork` on the engine, for writes outside an operation."""
        return self._uow

    async def _rows(self, stmt: Any, tx: Transaction | None = None) -> list[Any]:
        if isinstance(tx, SqlTransaction):
            return list((await tx.execute(stmt)).mappings().all())
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).mappings().all())

    async def record(
        self, tx: Transaction, event: UsageEvent, meter: Meter, counters: Sequence[Counter] = ()
    ) -> Recorded:
        """See `MeteringStore.record`."""
        check_event(event, meter)
        stx = sql_transaction(tx, "SqlMeteringStore")
        stx.check_writable("recording usage")
        t = usage_events_table
        wstart, _ = window_bounds(meter.window, event.timestamp)
        inserted = await stx.insert_or_nothing(
            t,
            {
                "org_id": event.org_id,
                "id": event.id,
                "meter": event.meter,
                "subject": event.subject,
                "user_id": event.user_id,
                "value": event.value,
                "unique_key": event.unique_key,
                "timestamp": event.timestamp,
                "window_start": wstart,
            },
        )
        if not inserted:
            stmt = select(t).where(t.c.org_id == event.org_id, t.c.id == event.id)
            row = (await stx.execute(stmt)).mappings().one()
            return Recorded(_event(row), False)
        amount = counted(event, meter)
        c = counters_table
        insert = _insert(stx.dialect)
        for counter in counters:
            cstart, _ = window_bounds(counter.window, event.timestamp)
            where = (
                c.c.org_id == event.org_id,
                c.c.meter == meter.key,
                c.c.window_kind == counter.window.value,
                c.c.window_start == cstart,
            )
            if counter.limit is not None and amount > counter.limit:
                used = await self._used(stx, where)
                return Recorded(event, True, counter, used)
            stmt = insert(c).values(
                org_id=event.org_id,
                meter=meter.key,
                window_kind=counter.window.value,
                window_start=cstart,
                used=amount,
            )
            # DecimalType is text-like to SQLAlchemy: add as numbers (scaled integers on SQLite)
            # and compare with the limit stored the same way.
            grown = type_coerce(c.c.used, Numeric()) + type_coerce(stmt.excluded.used, Numeric())
            stmt = stmt.on_conflict_do_update(
                index_elements=[c.c.org_id, c.c.meter, c.c.window_kind, c.c.window_start],
                set_={"used": grown},
                where=None if counter.limit is None else grown <= self._limit(stx, counter.limit),
            ).returning(c.c.used)
            if (await stx.execute(stmt, write=True)).first() is None:
                return Recorded(event, True, counter, await self._used(stx, where))
        return Recorded(event, True)

    async def record_many(
        self,
        tx: Transaction,
        events: Sequence[UsageEvent],
        meter: Meter,
        windows: Sequence[Window] = (),
    ) -> list[UsageEvent]:
        """See `MeteringStore.record_many`.

        On PostgreSQL one statement per 5,000 events (`_PG_RECORD_MANY`: the rows as one JSON
        parameter, `INSERT … ON CONFLICT DO NOTHING RETURNING` and, in the same statement, the
        stored rows of the duplicates; a second read only for duplicates another transaction
        committed while the statement ran). On SQLite (one writer, this transaction), per 500:
        one read of the events already stored (the ids as one JSON array through `json_each`);
        the others are buffered as plain inserts, written with one executemany on the driver
        before the transaction's next statement or commit. Then one upsert per quota counter."""
        stx = sql_transaction(tx, "SqlMeteringStore")
        stx.check_writable("recording usage")
        first: dict[tuple[str, str], UsageEvent] = {}
        sqlite = stx.dialect == "sqlite"
        for event in events:
            check_event(event, meter)
            if sqlite and not -SQLITE_MAX_VALUE <= event.value <= SQLITE_MAX_VALUE:
                raise SpecValidationError(
                    f"usage event {event.id}: value {event.value} does not fit SQLite's storage "
                    f"(64-bit integer micro-units, at most {SQLITE_MAX_VALUE} in magnitude); use "
                    "a larger unit for this meter, or PostgreSQL (NUMERIC(36, 6))",
                    details={"field": "value", "id": event.id},
                )
            first.setdefault((event.org_id, event.id), event)
        insert = _insert(stx.dialect)
        start_of = _WINDOW_START[meter.window]
        new: set[tuple[str, str]] = set()
        stored = dict(first)
        unique = list(first.values())
        if stx.dialect == "postgresql":
            await self._record_pg(stx, unique, meter, start_of, new, stored)
            unique = []
        for i in range(0, len(unique), _CHUNK):
            chunk = unique[i : i + _CHUNK]
            # SQLite has one writer at a time and this transaction is it (BEGIN IMMEDIATE): the
            # ids stored before the insert are exactly the duplicates, and the new rows are
            # buffered as plain inserts, which the unit of work writes with one executemany on
            # the driver before the transaction's next statement or commit (8 % less CPU than
            # an executemany through SQLAlchemy's pipeline); a duplicate there would be a
            # ConflictError, not a silent no-op
            known = await self._stored(stx, [(e.org_id, e.id) for e in chunk])
            stored.update(known)
            chunk = [e for e in chunk if (e.org_id, e.id) not in known]
            if not chunk:
                continue
            rows = [
                {
                    "org_id": e.org_id,
                    "id": e.id,
                    "meter": e.meter,
                    "subject": e.subject,
                    "user_id": e.user_id,
                    "value": e.value,
                    "unique_key": e.unique_key,
                    "timestamp": e.timestamp,
                    "window_start": start_of(e.timestamp),
                }
                for e in chunk
            ]
            for row in rows:  # written by the unit of work's executemany at the next statement
                stx.stage_insert(usage_events_table, row)
            new.update((e.org_id, e.id) for e in chunk)
        if windows and new:
            grow: dict[tuple[str, Window, datetime], Decimal] = {}
            for key in new:
                event = first[key]
                for window in windows:
                    ckey = (event.org_id, window, window_bounds(window, event.timestamp)[0])
                    grow[ckey] = grow.get(ckey, Decimal(0)) + counted(event, meter)
            c = counters_table
            for (org, window, cstart), amount in grow.items():
                up = insert(c).values(
                    org_id=org,
                    meter=meter.key,
                    window_kind=window.value,
                    window_start=cstart,
                    used=amount,
                )
                grown = type_coerce(c.c.used, Numeric()) + type_coerce(up.excluded.used, Numeric())
                up = up.on_conflict_do_update(
                    index_elements=[c.c.org_id, c.c.meter, c.c.window_kind, c.c.window_start],
                    set_={"used": grown},
                )
                await stx.execute(up, write=True)
        return [stored[(e.org_id, e.id)] for e in events]

    async def _record_pg(
        self,
        stx: SqlTransaction,
        unique: list[UsageEvent],
        meter: Meter,
        start_of: Callable[[datetime], datetime],
        new: set[tuple[str, str]],
        stored: dict[tuple[str, str], UsageEvent],
    ) -> None:
        """PostgreSQL: one `_PG_RECORD_MANY` per chunk of `_PG_CHUNK` events (distinct keys);
        adds the inserted keys to `new` and the stored duplicates to `stored`."""
        missing: list[tuple[str, str]] = []
        for i in range(0, len(unique), _PG_CHUNK):
            chunk = unique[i : i + _PG_CHUNK]
            rows = json.dumps(
                [
                    (
                        e.org_id,
                        e.id,
                        e.subject,
                        e.user_id,
                        str(e.value),
                        e.unique_key,
                        e.timestamp.isoformat(),
                        start_of(e.timestamp).isoformat(),
                    )
                    for e in chunk
                ],
                ensure_ascii=False,
                separators=(",", ":"),
            )
            result = await stx.execute(
                _PG_RECORD_MANY, {"rows": rows, "meter": meter.key}, write=True
            )
            seen: set[tuple[str, str]] = set()
            for row in result.mappings():
                key = (row["org_id"], row["id"])
                seen.add(key)
                if row["new"]:
                    new.add(key)
                else:
                    stored[key] = _event(row)
            if len(seen) < len(chunk):
                missing.extend((e.org_id, e.id) for e in chunk if (e.org_id, e.id) not in seen)
        if missing:
            # stored by a transaction that committed after this statement's snapshot was taken
            stored.update(await self._stored(stx, missing))

    async def _stored(
        self, stx: SqlTransaction, keys: list[tuple[str, str]]
    ) -> dict[tuple[str, str], UsageEvent]:
        """The stored events among `keys` ((org_id, id) pairs).

        On SQLite the ids go in as one JSON array (`json_each`): one bound parameter instead of
        an expanded `IN` list of up to 500, which SQLAlchemy would re-render per chunk."""
        t = usage_events_table
        found: dict[tuple[str, str], UsageEvent] = {}
        by_org: dict[str, list[str]] = {}
        for org, id in keys:
            by_org.setdefault(org, []).append(id)
        for org, ids in by_org.items():
            for i in range(0, len(ids), _CHUNK):
                part = ids[i : i + _CHUNK]
                stmt: Any
                if stx.dialect == "sqlite":
                    stmt = _SQLITE_STORED.bindparams(org_id=org, ids=json.dumps(part))
                else:
                    stmt = select(t).where(t.c.org_id == org, t.c.id.in_(part))
                for row in (await stx.execute(stmt)).mappings():
                    found[(row["org_id"], row["id"])] = _event(row)
        return found

    @staticmethod
    def _limit(stx: SqlTransaction, limit: Decimal) -> Any:
        stored = _Value.process_bind_param(limit, stx.connection.dialect)
        if stx.dialect == "sqlite":
            return bindparam(None, stored, type_=BigInteger())
        return bindparam(None, stored, type_=Numeric(36, 6))

    async def _used(self, stx: SqlTransaction, where: tuple[Any, ...]) -> Decimal:
        value = (await stx.execute(select(counters_table.c.used).where(*where))).scalar()
        return clean_decimal(value) if value is not None else Decimal(0)

    async def counter(
        self,
        org_id: str,
        meter: str,
        window: Window,
        window_start: datetime,
        *,
        tx: Transaction | None = None,
    ) -> Decimal:
        """See `MeteringStore.counter`."""
        c = counters_table
        rows = await self._rows(
            select(c.c.used).where(
                c.c.org_id == org_id,
                c.c.meter == meter,
                c.c.window_kind == Window(window).value,
                c.c.window_start == window_start,
            ),
            tx,
        )
        return clean_decimal(rows[0]["used"]) if rows else Decimal(0)

    async def get(self, org_id: str, id: str) -> UsageEvent | None:
        """See `MeteringStore.get`."""
        t = usage_events_table
        rows = await self._rows(select(t).where(t.c.org_id == org_id, t.c.id == id))
        return _event(rows[0]) if rows else None

    async def events(
        self, org_id: str, meter: str, start: datetime, end: datetime
    ) -> list[UsageEvent]:
        """See `MeteringStore.events`."""
        t = usage_events_table
        stmt = (
            select(t)
            .where(
                t.c.org_id == org_id,
                t.c.meter == meter,
                t.c.timestamp >= start,
                t.c.timestamp < end,
            )
            .order_by(t.c.timestamp, t.c.seq)
        )
        return [_event(r) for r in await self._rows(stmt)]

    def _filter(
        self, meter: Meter, org_id: str, start: datetime, end: datetime, subject: str | None
    ) -> list[Any]:
        t = usage_events_table
        conds = [
            t.c.org_id == org_id,
            t.c.meter == meter.key,
            t.c.timestamp >= start,
            t.c.timestamp < end,
        ]
        if subject is not None:
            conds.append(t.c.subject == subject)
        return conds

    async def aggregate(
        self,
        meter: Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        by_subject: bool = True,
        subject: str | None = None,
    ) -> list[UsageAggregate]:
        """See `MeteringStore.aggregate` (one `GROUP BY subject, window_start` query; `latest`
        picks each group's newest event with `row_number()`)."""
        t = usage_events_table
        conds = self._filter(meter, org_id, start, end, subject)
        keys = [t.c.subject, t.c.window_start] if by_subject else [t.c.window_start]
        if meter.aggregation is Aggregation.LATEST:
            rank = (
                func.row_number()
                .over(partition_by=keys, order_by=(t.c.timestamp.desc(), t.c.seq.desc()))
                .label("rank")
            )
            inner = select(*keys, t.c.value, rank).where(*conds).subquery()
            okeys = (
                [inner.c.subject, inner.c.window_start] if by_subject else [inner.c.window_start]
            )
            stmt = select(*okeys, inner.c.value.label("total")).where(inner.c.rank == 1)
            stmt = stmt.order_by(*okeys)
        else:
            stmt = (
                select(*keys, _measure(meter.aggregation).label("total"))
                .where(*conds)
                .group_by(*keys)
                .order_by(*keys)
            )
        out = []
        for row in await self._rows(stmt):
            wstart = row["window_start"]
            _, wend = window_bounds(meter.window, wstart)
            out.append(
                UsageAggregate(
                    org_id,
                    meter.key,
                    row["subject"] if by_subject else None,
                    wstart,
                    wend,
                    clean_decimal(Decimal(row["total"])),
                )
            )
        return out

    async def total(
        self,
        meter: Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        subject: str | None = None,
        tx: Transaction | None = None,
    ) -> Decimal:
        """See `MeteringStore.total`."""
        t = usage_events_table
        conds = self._filter(meter, org_id, start, end, subject)
        if meter.aggregation is Aggregation.LATEST:
            stmt = (
                select(t.c.value.label("total"))
                .where(*conds)
                .order_by(t.c.timestamp.desc(), t.c.seq.desc())
                .limit(1)
            )
        else:
            stmt = select(_measure(meter.aggregation).label("total")).where(*conds)
        rows = await self._rows(stmt, tx)
        value = rows[0]["total"] if rows else None
        return clean_decimal(Decimal(value)) if value is not None else Decimal(0)

    async def lock_gauge(self, tx: Transaction, org_id: str, meter: str) -> None:
        """See `MeteringStore.lock_gauge`: an upsert of the gauge's lock row in
        `cs_usage_counters` (`window_kind` `gauge`), which PostgreSQL row-locks until the
        transaction ends and which makes this transaction SQLite's writer."""
        stx = sql_transaction(tx, "SqlMeteringStore")
        stx.check_writable("locking a gauge")
        c = counters_table
        stmt = _insert(stx.dialect)(c).values(
            org_id=org_id, meter=meter, window_kind="gauge", window_start=_GAUGE_LOCK_START, used=0
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[c.c.org_id, c.c.meter, c.c.window_kind, c.c.window_start],
            set_={"used": c.c.used},
        )
        await stx.execute(stmt, write=True)

    async def assign_plan(
        self, assignment: PlanAssignment, *, tx: Transaction | None = None
    ) -> None:
        """See `MeteringStore.assign_plan` (an upsert)."""
        p = plan_assignments_table
        own = tx is None
        stx = await self._uow.begin() if tx is None else sql_transaction(tx, "SqlMeteringStore")
        try:
            stmt = _insert(stx.dialect)(p).values(
                org_id=assignment.org_id, plan=assignment.plan, assigned_at=assignment.assigned_at
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[p.c.org_id],
                set_={"plan": stmt.excluded.plan, "assigned_at": stmt.excluded.assigned_at},
            )
            await stx.execute(stmt, write=True)
            if own:
                await stx.commit()
        except BaseException:
            if own:
                await stx.rollback()
            raise

    async def plan_of(self, org_id: str, *, tx: Transaction | None = None) -> PlanAssignment | None:
        """See `MeteringStore.plan_of`."""
        p = plan_assignments_table
        rows = await self._rows(select(p).where(p.c.org_id == org_id), tx)
        if not rows:
            return None
        row = rows[0]
        return PlanAssignment(row["org_id"], row["plan"], row["assigned_at"])
