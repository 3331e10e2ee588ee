"""SQL unit of work: one connection per transaction, a write-behind buffer and savepoints.

Writes are buffered and flushed in bulk (`executemany`) before a query reads the database and at
commit. Inside a batch (`Executor.batch()`), each call has its own buffer: a failed call's buffer
is dropped, and if it had already been flushed a database SAVEPOINT (opened lazily, just before
that flush) is rolled back. This is what lets a bulk import commit thousands of calls at once
while each call stays atomic.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.engine import Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncTransaction
from sqlalchemy.sql import Executable

from contractspec.core.errors import ConfigurationError, ConflictError
from contractspec.core.sql.engines import is_configured
from contractspec.core.transactions import Transaction

__all__ = ["FlushHook", "SqlTransaction", "SqlUnitOfWork", "WriteBuffer", "sql_transaction"]

_MISSING: Any = object()
IdentityKey = tuple[str, str | None, Any]

#: Called before a buffer is flushed, with the connection and the buffer (fills derived columns).
FlushHook = Callable[[AsyncConnection, "WriteBuffer"], Awaitable[None]]

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: ([\w., ]+)")


def conflict_from(exc: IntegrityError) -> ConflictError:
    """Translate a database integrity error into `ConflictError` without leaking row values."""
    orig = exc.orig
    constraint = getattr(getattr(orig, "diag", None), "constraint_name", None)
    if constraint is None:
        match = _SQLITE_UNIQUE.search(str(orig))
        constraint = match.group(1) if match else None
    what = f" ({constraint})" if constraint else ""
    return ConflictError(
        f"the write conflicts with an existing record{what}: a primary key or unique value is "
        "already taken",
        details={"constraint": constraint} if constraint else None,
    )


class WriteBuffer:
    """Pending inserts (per table, in order) and coalesced updates (per row)."""

    __slots__ = ("inserts", "rows", "updates")

    def __init__(self) -> None:
        self.inserts: dict[Table, list[dict[str, Any]]] = {}
        #: identity key -> the pending insert row, so later updates merge into it
        self.rows: dict[IdentityKey, dict[str, Any]] = {}
        #: (table, identity key) -> (where values, changed values)
        self.updates: dict[tuple[Table, IdentityKey], tuple[dict[str, Any], dict[str, Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates)

    def insert(self, table: Table, row: dict[str, Any], key: IdentityKey | None) -> None:
        self.inserts.setdefault(table, []).append(row)
        if key is not None:
            self.rows[key] = row

    def update(
        self, table: Table, key: IdentityKey, where: dict[str, Any], values: dict[str, Any]
    ) -> None:
        pending = self.rows.get(key)
        if pending is not None:
            pending.update(values)
            return
        current = self.updates.get((table, key))
        if current is not None:
            current[1].update(values)
        else:
            self.updates[(table, key)] = (where, dict(values))

    def merge_into(self, other: WriteBuffer) -> None:
        """Move everything into `other` (a call's buffer joining the batch's buffer)."""
        for table, rows in self.inserts.items():
            other.inserts.setdefault(table, []).extend(rows)
        other.rows.update(self.rows)
        for (table, key), (where, values) in self.updates.items():
            other.update(table, key, where, values)
        self.clear()

    def clear(self) -> None:
        self.inserts = {}
        self.rows = {}
        self.updates = {}


_update_cache: dict[tuple[Table, tuple[str, ...], tuple[str, ...]], Any] = {}


def update_statement(table: Table, where_cols: tuple[str, ...], value_cols: tuple[str, ...]) -> Any:
    """Cached `UPDATE table SET c = :v_c ... WHERE w = :w_w ...` for `executemany`."""
    key = (table, where_cols, value_cols)
    stmt = _update_cache.get(key)
    if stmt is None:
        stmt = update(table)
        for col in where_cols:
            stmt = stmt.where(table.c[col] == bindparam(f"w_{col}", type_=table.c[col].type))
        stmt = stmt.values(
            {col: bindparam(f"v_{col}", type_=table.c[col].type) for col in value_cols}
        )
        _update_cache[key] = stmt
    return stmt


class SqlTransaction(Transaction):
    """A transaction on one `AsyncConnection`, with a write-behind buffer and an identity map.

    Adapters use `stage_insert`/`stage_update` for writes, `execute` for reads and immediate
    writes, and the identity map (`identity_get`/`identity_set`) to avoid re-reading rows.

    Attributes:
        connection: The connection (flush with `await tx.flush()` before using it directly).
        dialect: `sqlite` or `postgresql`.
    """

    __slots__ = (
        "_base",
        "_call",
        "_db_savepoint",
        "_hooks",
        "_identity",
        "_identity_undo",
        "_outer",
        "connection",
        "dialect",
    )

    def __init__(
        self, connection: AsyncConnection, outer: AsyncTransaction, *, readonly: bool
    ) -> None:
        super().__init__(readonly=readonly)
        self.connection = connection
        self.dialect = connection.dialect.name
        self._outer = outer
        self._base = WriteBuffer()
        self._call: WriteBuffer | None = None
        self._db_savepoint: AsyncTransaction | None = None
        self._identity: dict[IdentityKey, dict[str, Any] | None] = {}
        self._identity_undo: dict[IdentityKey, Any] | None = None
        self._hooks: dict[str, FlushHook] = {}

    # -- buffer ---------------------------------------------------------------------------------

    @property
    def buffer(self) -> WriteBuffer:
        """The buffer new writes go to (the current call's inside a batch)."""
        return self._call if self._call is not None else self._base

    def stage_insert(
        self, table: Table, row: dict[str, Any], key: IdentityKey | None = None
    ) -> None:
        """Buffer an INSERT of `row`; `key` lets later updates of the same row merge into it."""
        self.buffer.insert(table, row, key)

    def stage_update(
        self, table: Table, key: IdentityKey, where: dict[str, Any], values: dict[str, Any]
    ) -> None:
        """Buffer an UPDATE of the row identified by `where` (column -> value)."""
        self.buffer.update(table, key, where, values)

    def add_flush_hook(self, name: str, hook: FlushHook) -> None:
        """Register `hook` (once per `name`) to run before each buffer flush."""
        self._hooks.setdefault(name, hook)

    # -- identity map ---------------------------------------------------------------------------

    def identity_get(self, key: IdentityKey) -> dict[str, Any] | Any | None:
        """The known row for `key`, `None` if known to be absent, or `MISSING` if unknown."""
        return self._identity.get(key, _MISSING)

    def identity_set(self, key: IdentityKey, row: dict[str, Any] | None) -> None:
        """Remember `row` (or its absence) for `key`; undone if the current call fails."""
        undo = self._identity_undo
        if undo is not None and key not in undo:
            undo[key] = self._identity.get(key, _MISSING)
        self._identity[key] = row

    MISSING: Any = _MISSING

    # -- flushing and statements ---------------------------------------------------------------

    async def _flush_buffer(self, buf: WriteBuffer) -> None:
        for hook in self._hooks.values():
            await hook(self.connection, buf)
        conn = self.connection
        inserts, updates = buf.inserts, buf.updates
        buf.clear()
        try:
            for table, rows in inserts.items():
                if rows:
                    await conn.execute(table.insert(), rows)
            if updates:
                groups: dict[
                    tuple[Table, tuple[str, ...], tuple[str, ...]], list[dict[str, Any]]
                ] = {}
                for (table, _), (where, values) in updates.items():
                    if not values:
                        continue
                    wcols = tuple(where)
                    vcols = tuple(sorted(values))
                    params = {f"w_{c}": v for c, v in where.items()}
                    params.update({f"v_{c}": values[c] for c in vcols})
                    groups.setdefault((table, wcols, vcols), []).append(params)
                for (table, wcols, vcols), params_list in groups.items():
                    await conn.execute(update_statement(table, wcols, vcols), params_list)
        except IntegrityError as exc:
            raise conflict_from(exc) from None

    async def flush(self) -> None:
        """Write everything buffered (the batch's buffer first, then the current call's)."""
        if self._base:
            await self._flush_buffer(self._base)
        if self._call is not None and self._call:
            if self._db_savepoint is None:
                self._db_savepoint = await self.connection.begin_nested()
            await self._flush_buffer(self._call)

    async def execute(
        self, statement: Executable, params: Any = None, *, write: bool = False
    ) -> Result[Any]:
        """Flush, then execute `statement` now. Pass `write=True` for immediate writes.

        Raises:
            ConflictError: A unique or primary-key constraint was violated.
        """
        self._check_active()
        await self.flush()
        if write:
            self.check_writable("an immediate write")
            if self._call is not None and self._db_savepoint is None:
                self._db_savepoint = await self.connection.begin_nested()
        try:
            if params is None:
                return await self.connection.execute(statement)
            return await self.connection.execute(statement, params)
        except IntegrityError as exc:
            raise conflict_from(exc) from None

    async def write(self, statement: Executable, params: Any = None) -> int:
        """Flush, execute an UPDATE/DELETE (or INSERT) now, and return the affected row count.

        Raises:
            HandlerContractError: The transaction is read-only.
            ConflictError: A unique or primary-key constraint was violated.
        """
        result = await self.execute(statement, params, write=True)
        return int(getattr(result, "rowcount", 0) or 0)

    # -- lifecycle hooks --------------------------------------------------------------------------

    async def _commit_backend(self) -> None:
        try:
            if not self.readonly or self._base:
                await self.flush()
            await self._outer.commit()
        except IntegrityError as exc:
            raise conflict_from(exc) from None
        finally:
            await self.connection.close()

    async def _rollback_backend(self) -> None:
        self._base.clear()
        self._call = None
        self._identity.clear()
        try:
            if self._outer.is_active:
                await self._outer.rollback()
        finally:
            await self.connection.close()

    async def _begin_savepoint(self) -> None:
        self._call = WriteBuffer()
        self._identity_undo = {}
        self._db_savepoint = None

    async def _release_savepoint(self) -> None:
        call, self._call = self._call, None
        self._identity_undo = None
        savepoint, self._db_savepoint = self._db_savepoint, None
        if call is not None and call:
            call.merge_into(self._base)
        if savepoint is not None:
            await savepoint.commit()

    async def _rollback_savepoint(self) -> None:
        self._call = None
        undo, self._identity_undo = self._identity_undo, None
        for key, previous in (undo or {}).items():
            if previous is _MISSING:
                self._identity.pop(key, None)
            else:
                self._identity[key] = previous
        savepoint, self._db_savepoint = self._db_savepoint, None
        if savepoint is not None:
            await savepoint.rollback()


class SqlUnitOfWork:
    """Begins `SqlTransaction`s on the user's `AsyncEngine` (which it never disposes).

    SQLite engines must be configured by `configure_sqlite_engine()` (or made by `sqlite_engine()`)
    so transactions and savepoints behave: the unit of work refuses unconfigured ones.

    Args:
        engine: An `AsyncEngine` for SQLite (aiosqlite) or PostgreSQL (psycopg).

    Raises:
        ConfigurationError: Unsupported dialect or an unconfigured SQLite engine.
    """

    __slots__ = ("engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        if not isinstance(engine, AsyncEngine):
            raise ConfigurationError(
                f"SqlUnitOfWork needs an AsyncEngine (create_async_engine(...)), got {type(engine).__name__}"
            )
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigurationError(
                f"unsupported SQL dialect {dialect!r}: use SQLite or PostgreSQL"
            )
        if dialect == "sqlite" and not is_configured(engine):
            raise ConfigurationError(
                "this SQLite engine is not configured for ContractSpec transactions; call "
                "configure_sqlite_engine(engine) once after create_async_engine(), or create it "
                "with contractspec.core.sql.sqlite_engine(path)"
            )
        self.engine = engine

    async def begin(self, *, readonly: bool = False) -> SqlTransaction:
        """Check out a connection and begin a transaction (`BEGIN IMMEDIATE` for writes on SQLite)."""
        conn = await self.engine.connect()
        try:
            if not readonly and self.engine.dialect.name == "sqlite":
                conn.info["contractspec_begin"] = "BEGIN IMMEDIATE"
            elif "contractspec_begin" in conn.info:
                del conn.info["contractspec_begin"]
            outer = await conn.begin()
        except BaseException:
            await conn.close()
            raise
        return SqlTransaction(conn, outer, readonly=readonly)


def sql_transaction(tx: Transaction, who: str = "this SQL adapter") -> SqlTransaction:
    """`tx` as a `SqlTransaction`, for SQL adapters of other packages.

    Raises:
        ConfigurationError: `tx` is not a SQL transaction (the executor was wired with another
            unit of work), with the fix.
    """
    if not isinstance(tx, SqlTransaction):
        raise ConfigurationError(
            f"{who} needs a SQL transaction but got {type(tx).__name__}; configure the executor "
            "with the same SqlBackend (or SqlUnitOfWork) for every SQL store"
        )
    return tx
