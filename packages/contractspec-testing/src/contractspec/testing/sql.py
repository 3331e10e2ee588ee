"""SQLAlchemy `TrafficStore`: recorded traffic in a `cs_traffic` table (SQLite, PostgreSQL).

Install with `pip install 'contractspec-testing[sql]'` (or `[postgres]`).

```python
from contractspec.core.sql import sqlite_engine
from contractspec.testing.sql import SqlTrafficStore

engine = sqlite_engine("traffic.db")
store = SqlTrafficStore(engine)
await store.create_all()        # or add `traffic_metadata` to your Alembic target_metadata
```

The store takes your engine and never disposes it. The snapshot body is kept as JSON **text**
(not JSONB) so any recorded string round-trips, including NUL characters that PostgreSQL's JSONB
rejects; the columns queried (`operation`, `version`, `recorded_at`, `outcome`, `org_id`) are
real, indexed columns.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.testing.sql needs SQLAlchemy: pip install 'contractspec-testing[sql]' "
        "(SQLite) or 'contractspec-testing[postgres]' (PostgreSQL)"
    ) from exc

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    String,
    Table,
    Text,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core.sql import UtcDateTime, create_all, new_metadata
from contractspec.testing._snapshot import Snapshot
from contractspec.testing.errors import SnapshotFormatError, TrafficStoreError
from contractspec.testing.stores import _check_aware, _check_limit

__all__ = ["SqlTrafficStore", "traffic_metadata", "traffic_table"]

#: Auto-incrementing 64-bit keys (INTEGER on SQLite, where only that type auto-increments).
_AutoBigInt = BigInteger().with_variant(Integer(), "sqlite")

#: `MetaData` of the traffic table; add it to your Alembic `target_metadata`.
traffic_metadata = new_metadata()

traffic_table = Table(
    "cs_traffic",
    traffic_metadata,
    Column("position", _AutoBigInt, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("operation", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    Column("outcome", String(64), nullable=False),
    Column("org_id", String(200), nullable=True),
    Column("duration_ms", Float, nullable=False),
    Column("body", Text, nullable=False),
    Index(None, "operation", "version", "recorded_at"),
    Index(None, "recorded_at"),
    comment="Recorded, redacted calls of spec operations (contractspec-testing).",
)


class SqlTrafficStore:
    """A `TrafficStore` on a SQLAlchemy `AsyncEngine` (SQLite via aiosqlite, PostgreSQL via psycopg).

    Args:
        engine: Your engine; the store never disposes it.

    Appends are one multi-row `INSERT ... ON CONFLICT (id) DO NOTHING`, so re-flushing a batch is
    harmless.
    """

    __slots__ = ("engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_all(self) -> None:
        """Create `cs_traffic` if it does not exist (use Alembic in production)."""
        await create_all(self.engine, traffic_metadata)

    async def append(self, snapshots: Sequence[Snapshot]) -> None:
        """Insert `snapshots`; ids already stored are skipped."""
        if not snapshots:
            return
        rows = [
            {
                "id": s.id,
                "operation": s.operation,
                "version": s.version,
                "recorded_at": s.recorded_at,
                "outcome": s.outcome,
                "org_id": s.org_id,
                "duration_ms": s.duration_ms,
                "body": json.dumps(s.to_dict(), ensure_ascii=False, separators=(",", ":")),
            }
            for s in snapshots
        ]
        dialect = self.engine.dialect.name
        async with self.engine.begin() as conn:
            if dialect in ("sqlite", "postgresql"):
                insert = sqlite_insert if dialect == "sqlite" else pg_insert
                stmt = insert(traffic_table).on_conflict_do_nothing(index_elements=["id"])
                await conn.execute(stmt, rows)
            else:  # pragma: no cover - other dialects: skip known ids first
                ids = [r["id"] for r in rows]
                known = set(
                    (
                        await conn.execute(
                            select(traffic_table.c.id).where(traffic_table.c.id.in_(ids))
                        )
                    ).scalars()
                )
                fresh = [r for r in rows if r["id"] not in known]
                if fresh:
                    await conn.execute(traffic_table.insert(), fresh)

    async def query(
        self,
        *,
        operation: str | None = None,
        version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        org_id: str | None = None,
        limit: int | None = None,
    ) -> list[Snapshot]:
        """See `TrafficStore.query` (one indexed `SELECT`)."""
        _check_limit(limit)
        _check_aware("since", since)
        _check_aware("until", until)
        t = traffic_table
        stmt = select(t.c.body, t.c.position)
        if operation is not None:
            stmt = stmt.where(t.c.operation == operation)
        if version is not None:
            stmt = stmt.where(t.c.version == version)
        if since is not None:
            stmt = stmt.where(t.c.recorded_at >= since)
        if until is not None:
            stmt = stmt.where(t.c.recorded_at < until)
        if outcome is not None:
            stmt = stmt.where(t.c.outcome == outcome)
        if org_id is not None:
            stmt = stmt.where(t.c.org_id == org_id)
        stmt = stmt.order_by(t.c.recorded_at, t.c.position)
        if limit is not None:
            stmt = stmt.limit(limit)
        async with self.engine.connect() as conn:
            try:
                rows = (await conn.execute(stmt)).all()
            except DBAPIError as exc:
                raise _read_error(exc) from exc
        out: list[Snapshot] = []
        for body, position in rows:
            try:
                data: Any = json.loads(body)
            except json.JSONDecodeError:
                raise SnapshotFormatError(
                    f"cs_traffic row {position}: body is not JSON; delete or fix the row",
                    details={"position": position},
                ) from None
            out.append(Snapshot.from_dict(data))
        return out

    async def operations(self) -> list[tuple[str, int, int]]:
        """See `TrafficStore.operations` (one `GROUP BY`)."""
        t = traffic_table
        stmt = (
            select(t.c.operation, t.c.version, func.count())
            .group_by(t.c.operation, t.c.version)
            .order_by(t.c.operation, t.c.version)
        )
        async with self.engine.connect() as conn:
            try:
                rows = (await conn.execute(stmt)).all()
            except DBAPIError as exc:
                raise _read_error(exc) from exc
        return [(str(op), int(v), int(n)) for op, v, n in rows]

    async def delete_before(self, when: datetime) -> int:
        """See `TrafficStore.delete_before`."""
        _check_aware("when", when)
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(traffic_table).where(traffic_table.c.recorded_at < when)
            )
        return int(result.rowcount or 0)


def _read_error(exc: DBAPIError) -> TrafficStoreError:
    return TrafficStoreError(
        f"cannot read the cs_traffic table ({type(exc.orig).__name__}: {exc.orig}); create it with "
        "SqlTrafficStore.create_all() or add traffic_metadata to your Alembic migrations",
        details={"table": "cs_traffic"},
    )
