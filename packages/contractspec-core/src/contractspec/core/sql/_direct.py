"""The write hot path on the DBAPI driver: statements compiled once, run without the Core pipeline.

Every call of a batch writes its row before it returns, and a group commit writes the batch's
outbox and audit rows in bulk; through SQLAlchemy's execution pipeline each of those statements
costs far more than the database work itself. For the few statement shapes the unit of work
issues (single-table inserts and the `update_statement` updates) this module compiles the
SQLAlchemy statement once per dialect — same SQL text, same bind processors, so values are
converted exactly as SQLAlchemy would — and runs it on the driver connection underneath the
transaction's `AsyncConnection` (the stdlib `sqlite3` connection of `InlineConnection`, or the
psycopg `AsyncConnection`). The statements join the transaction SQLAlchemy began; SQLAlchemy's
`before_cursor_execute` events would not see them, so the unit of work takes this path only on
engines without cursor-execute listeners (tracing, query logs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

__all__ = ["Compiled", "DirectDriver", "compiled_insert", "compiled_update"]

Processor = Callable[[Any], Any]


class Compiled:
    """One statement's SQL for a dialect, its parameter order and its bind processors."""

    __slots__ = ("_plain", "_processed", "names", "processors", "sql")

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        #: Parameter names in order for positional styles (SQLite's qmark), else `None`.
        self.names: tuple[str, ...] | None = (
            tuple(compiled.positiontup) if compiled.positiontup else None
        )
        self.processors: dict[str, Processor] = {
            name: proc for name, proc in compiled._bind_processors.items() if proc is not None
        }
        #: `(position or name, processor)` of the parameters that need converting.
        order = self.names if self.names is not None else tuple(compiled.binds)
        self._processed = tuple(
            (i if self.names is not None else n, n, self.processors[n])
            for i, n in enumerate(order)
            if n in self.processors
        )
        self._plain = not self._processed

    def params(self, values: dict[str, Any]) -> Any:
        """Driver parameters of one execution (a list for qmark, a dict for pyformat)."""
        names = self.names
        if names is not None:
            out: Any = [values[n] for n in names]
        else:
            out = dict(values)
        if not self._plain:
            for slot, name, proc in self._processed:
                value = values[name]
                if value is not None:
                    out[slot] = proc(value)
        return out


_cache: dict[tuple[Any, ...], Compiled] = {}


def compiled_insert(
    table: Table, columns: tuple[str, ...], dialect: Dialect, *, or_nothing: bool = False
) -> Compiled:
    """`INSERT INTO table (columns…) VALUES (…)`; with `or_nothing`,
    `ON CONFLICT DO NOTHING RETURNING <first key column>` (PostgreSQL and SQLite)."""
    key = ("insert", table, columns, dialect.name, or_nothing)
    found = _cache.get(key)
    if found is None:
        values = {c: bindparam(c, type_=table.c[c].type) for c in columns}
        if or_nothing:
            first = next(iter(table.primary_key.columns))
            insert = pg_insert if dialect.name == "postgresql" else sqlite_insert
            stmt: Any = insert(table).values(values).on_conflict_do_nothing().returning(first)
        else:
            stmt = table.insert().values(values)
        found = _cache[key] = Compiled(stmt, dialect)
    return found


def compiled_update(statement: Any, key: tuple[Any, ...], dialect: Dialect) -> Compiled:
    """`statement` (an `update_statement`) compiled for `dialect`, cached under `key`."""
    cache_key = ("update", *key, dialect.name)
    found = _cache.get(cache_key)
    if found is None:
        found = _cache[cache_key] = Compiled(statement, dialect)
    return found


class DirectDriver:
    """Runs `Compiled` statements on one driver connection, raising SQLAlchemy's exceptions.

    Args:
        kind: `"sqlite"` (an `InlineConnection`) or `"psycopg"`.
        connection: The driver connection.
        dialect: The engine's dialect (to wrap driver errors as SQLAlchemy's `DBAPIError`s).
    """

    __slots__ = ("_client", "connection", "dialect", "kind")

    def __init__(self, kind: str, connection: Any, dialect: Dialect) -> None:
        self.kind = kind
        self.connection = connection
        self.dialect = dialect
        self._client: Any = None

    def client_cursor(self) -> Any:
        """A psycopg `AsyncClientCursor` on the connection (values bound client-side, so one
        query string may hold several statements)."""
        cursor = self._client
        if cursor is None:
            from psycopg import AsyncClientCursor

            cursor = self._client = AsyncClientCursor(self.connection)
        return cursor

    def wrap(self, exc: Exception, sql: str) -> Exception:
        """A driver exception as SQLAlchemy's `DBAPIError` (others unchanged)."""
        dbapi = self.dialect.loaded_dbapi
        if isinstance(exc, dbapi.Error):
            return DBAPIError.instance(sql, None, exc, dbapi.Error, dialect=self.dialect)
        return exc

    async def execute(self, compiled: Compiled, values: dict[str, Any]) -> tuple[int, Any]:
        """Run once; return `(rowcount, first returned row or None)`.

        Raises:
            DBAPIError: As SQLAlchemy would raise it (`IntegrityError` for constraint violations).
        """
        params = compiled.params(values)
        try:
            if self.kind == "sqlite":
                await self.connection.pause()
                cursor = self.connection._conn.execute(compiled.sql, params)
                return cursor.rowcount, cursor.fetchone() if cursor.description else None
            cur = await self.connection.execute(compiled.sql, params)
            return cur.rowcount, await cur.fetchone() if cur.description else None
        except Exception as exc:
            raise self.wrap(exc, compiled.sql) from exc

    async def executemany(self, compiled: Compiled, rows: Sequence[dict[str, Any]]) -> int:
        """Run once per row (one driver call); return the total row count.

        Raises:
            DBAPIError: As SQLAlchemy would raise it (`IntegrityError` for constraint violations).
        """
        params = [compiled.params(row) for row in rows]
        try:
            if self.kind == "sqlite":
                await self.connection.pause()
                return int(self.connection._conn.executemany(compiled.sql, params).rowcount)
            cursor = self.connection.cursor()
            try:
                await cursor.executemany(compiled.sql, params)
                return int(cursor.rowcount)
            finally:
                await cursor.close()
        except Exception as exc:
            raise self.wrap(exc, compiled.sql) from exc
