"""The write hot path on the DBAPI driver: statements compiled once, run without the Core pipeline.

Every call of a batch writes its row before it returns, and a group commit writes the batch's
outbox and audit rows in bulk; through SQLAlchemy's execution pipeline each of those statements
costs far more than the database work itself. For the few statement shapes the unit of work
issues (single-table inserts, the `update_statement` updates and reads of one row by key) this
module compiles the
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

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError

__all__ = [
    "Compiled",
    "DirectDriver",
    "SelectRow",
    "autocommit_statement",
    "checked_out_connection",
    "compiled_insert",
    "compiled_select_row",
    "compiled_update",
]

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


class SelectRow:
    """`SELECT <every column of table> WHERE c = :w_c …` compiled once, and the decoding of its
    rows as SQLAlchemy's result does it: each column type's result processor for the type code
    the driver reports (`cursor.description`), the same `_cached_result_processor` SQLAlchemy's
    `CursorResult` uses.

    Attributes:
        compiled: The statement (parameters `w_<column>`).
    """

    __slots__ = ("_dialect", "_names", "_procs", "_types", "compiled")

    def __init__(self, table: Table, where: tuple[str, ...], dialect: Dialect) -> None:
        stmt = select(table).where(
            *(table.c[c] == bindparam(f"w_{c}", type_=table.c[c].type) for c in where)
        )
        self.compiled = Compiled(stmt, dialect)
        self._dialect = dialect
        self._names = tuple(c.name for c in table.columns)
        self._types = tuple(c.type for c in table.columns)
        self._procs: dict[tuple[Any, ...], tuple[Processor | None, ...]] = {}

    def row(self, values: Sequence[Any], description: Sequence[Any]) -> dict[str, Any]:
        """One fetched row as `{column: Python value}`."""
        codes = tuple(d[1] for d in description)
        procs = self._procs.get(codes)
        if procs is None:
            procs = self._procs[codes] = tuple(
                t._cached_result_processor(self._dialect, code)
                for t, code in zip(self._types, codes, strict=True)
            )
        return {
            name: value if proc is None else proc(value)
            for name, value, proc in zip(self._names, values, procs, strict=True)
        }


def compiled_select_row(table: Table, where: tuple[str, ...], dialect: Dialect) -> SelectRow:
    """The cached `SelectRow` of `table` by the columns `where`."""
    key = (table, where, dialect.name)
    found = _select_cache.get(key)
    if found is None:
        found = _select_cache[key] = SelectRow(table, where, dialect)
    return found


_select_cache: dict[tuple[Any, ...], SelectRow] = {}


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

    async def fetch_one(self, compiled: Compiled, values: dict[str, Any]) -> tuple[Any, Any]:
        """Run a query; return `(first row or None, cursor.description)`.

        Raises:
            DBAPIError: As SQLAlchemy would raise it.
        """
        params = compiled.params(values)
        try:
            if self.kind == "sqlite":  # busy-aware, as the inline connection's own reads
                conn = self.connection
                cursor = await conn._run(conn._conn.execute, compiled.sql, params)
                return cursor.fetchone(), cursor.description
            cur = await self.connection.execute(compiled.sql, params)
            return await cur.fetchone(), cur.description
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


async def checked_out_connection(conn: Any) -> Any:
    """The pooled DBAPI connection (SQLAlchemy's `PoolProxiedConnection`) under the
    `AsyncConnection` `conn`: read directly while it is checked out and valid (no I/O), else
    through `get_raw_connection()`, whose greenlet hop costs tens of microseconds per call."""
    sync = conn.sync_connection
    if sync is not None and not sync.invalidated:
        return sync.connection
    return await conn.get_raw_connection()


async def autocommit_statement(
    conn: Any, sql: str, params: dict[str, Any] | None, *, fetch: bool
) -> tuple[int, list[Any], Any] | None:
    """Run one statement on the psycopg connection under `conn` in autocommit mode (one round
    trip, no `BEGIN`/`COMMIT`), for a store's hot single-statement writes (a job enqueued, a
    relay's claim or mark) that need no transaction of their own.

    The connection stays in (and goes back to) the engine's pool; the autocommit mode it had is
    restored afterwards, and a connection whose mode cannot be restored (a cancelled statement
    left it busy) is invalidated rather than pooled. Engines with cursor-execute listeners
    (tracing, query logs) and other drivers are not touched: the caller then runs the statement
    through SQLAlchemy, so those listeners see it.

    Args:
        conn: A SQLAlchemy `AsyncConnection`, checked out and not in a transaction.
        sql: The statement in psycopg's parameter style (`%(name)s`).
        params: Its parameters, adapted by psycopg (`None`: none).
        fetch: Fetch the rows it returns.

    Returns:
        `(rowcount, rows, cursor description)`, or `None` when the caller must use SQLAlchemy.

    Raises:
        psycopg.Error: The database refused the statement (wrap it with `DirectDriver.wrap` or
            `translate` for ContractSpec's errors).
    """
    events = conn.sync_connection.dispatch
    if events.before_cursor_execute or events.after_cursor_execute:
        return None
    driver: Any = (await checked_out_connection(conn)).driver_connection
    if not type(driver).__module__.startswith("psycopg"):
        return None
    was = bool(driver.autocommit)  # an engine made with isolation_level="AUTOCOMMIT" keeps it
    if not was:
        await driver.set_autocommit(True)
    restored = was
    try:
        cursor = await driver.execute(sql, params)
        rows = list(await cursor.fetchall()) if fetch else []
        result = (cursor.rowcount, rows, cursor.description)
        if not was:
            await driver.set_autocommit(False)
            restored = True
        return result
    finally:
        if not restored:
            try:
                await driver.set_autocommit(False)
            except Exception:  # a cancelled statement left it busy: never pool it
                await conn.invalidate()
