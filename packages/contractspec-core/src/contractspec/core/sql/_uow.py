"""SQL unit of work: one connection per transaction, a write-behind buffer and savepoints.

Writes are buffered and flushed in bulk (`executemany`): before a query reads the database, at
commit, and — inside a batch (`Executor.batch()`) — before each call returns. Rows of
*append-only* tables (the outbox and the audit log: new unique ids, no conflict possible) are kept
apart and written only at commit (or when a query reads those tables), so a batch writes them once
per group commit.

Inside a batch each call has its own buffer. When the call ends, its buffered writes go to the
database inside a SAVEPOINT: a unique or version conflict then fails *that* call (the savepoint is
rolled back, its rows, events and audit record vanish) and never a neighbour; the calls that
returned are exactly the ones whose writes are in the transaction.

On PostgreSQL (psycopg) outside batch calls, a failed write fails the whole transaction, so the
flushed writes are not sent one by one: they are bound client-side and travel as one query string
with the next statement that needs a result — a read, the audit chain's head lock — or with
`COMMIT` itself (`SqlTransaction._deferring`). A command then costs `BEGIN`, its reads, one round
trip for its writes with the outbox and audit-head locks, and one for the audit rows with
`COMMIT`. Version-checked updates are checked (per-statement row counts) before `COMMIT` is sent.
"""

from __future__ import annotations

import asyncio
import os
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from sqlalchemy import Table, UniqueConstraint, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Engine, Result
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncTransaction
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import Executable
from sqlalchemy.sql.util import find_tables

from contractspec.core.errors import (
    ConcurrentUpdateError,
    ConfigurationError,
    ConflictError,
    SpecValidationError,
)
from contractspec.core.sql._direct import (
    Compiled,
    DirectDriver,
    checked_out_connection,
    compiled_insert,
    compiled_select_row,
    compiled_update,
)
from contractspec.core.sql._join import CallerTransaction, caller_transaction, pending_tasks
from contractspec.core.sql._schema import audit_table, outbox_table
from contractspec.core.sql._sqlite import InlineConnection
from contractspec.core.sql.engines import is_configured
from contractspec.core.transactions import Transaction

__all__ = [
    "FlushHook",
    "SqlTransaction",
    "SqlUnitOfWork",
    "WriteBuffer",
    "append_only",
    "sql_transaction",
]

_MISSING: Any = object()
IdentityKey = tuple[str, str | None, Any]

#: Called before buffered rows are written, with the connection and the buffer being written:
#: the pending writes of a transaction or call, or its append-only rows (as a buffer of inserts).
#: Hooks fill derived columns (the audit chain's positions and hashes) or add side statements
#: (a job queue's `NOTIFY`); a hook looks for its own tables and ignores other buffers.
FlushHook = Callable[[AsyncConnection, "WriteBuffer"], Awaitable[None]]

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: ([\w., ]+)")

#: Tables whose rows never conflict (fresh unique ids, positions assigned at flush): their inserts
#: wait for the commit. Register your own with `append_only(table)`.
_APPEND_ONLY: set[Table] = {outbox_table, audit_table}

#: Flush hooks that queue their statements with the deferred writes (`SqlTransaction.defer`)
#: instead of running them: other hooks see the deferred writes sent first.
_DEFERRING_HOOKS = frozenset({"cs_outbox_order", "cs_audit_chain"})


def append_only(table: Table) -> Table:
    """Declare `table` append-only: buffered inserts into it wait for the commit.

    Only for tables whose inserts cannot conflict (no unique key but fresh ids) and that the
    transaction's own reads do not need before commit (a read of the table flushes them anyway).

    Returns:
        `table`, so it can wrap a `Table(...)` definition.
    """
    _APPEND_ONLY.add(table)
    return table


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


#: SQLSTATEs of a transaction that lost to a concurrent one: deadlock victim, serialization
#: failure, lock not available (lock_timeout). Retrying the call is the fix.
_CONCURRENCY_STATES = frozenset({"40P01", "40001", "55P03"})


def translate(exc: DBAPIError) -> Exception:
    """The `ContractSpecError` a database error means for the caller, or `exc` itself.

    Unique and primary-key violations are `ConflictError`; a deadlock, serialization failure or
    lock timeout is `ConcurrentUpdateError` (retry the call); a data exception (SQLSTATE class
    22: a value the database cannot hold) is `SpecValidationError`. Anything else is returned
    unchanged (the executor reports it as `InternalError`).
    """
    if isinstance(exc, IntegrityError):
        return conflict_from(exc)
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    if not isinstance(sqlstate, str):
        return exc
    if sqlstate in _CONCURRENCY_STATES:
        return ConcurrentUpdateError(
            "a concurrent transaction conflicted with this call "
            f"({'deadlock' if sqlstate == '40P01' else 'lock or serialization conflict'}); "
            "nothing was written: retry the call",
            details={"sqlstate": sqlstate},
        )
    if sqlstate.startswith("22"):  # class 22: data exception
        return SpecValidationError(
            f"a value cannot be stored by the database (SQLSTATE {sqlstate}); check lengths, "
            "ranges and characters of the input",
            details={"sqlstate": sqlstate},
        )
    return exc


class WriteBuffer:
    """Pending inserts (per table, in order), coalesced updates (per row) and append-only rows.

    Attributes:
        inserts: Rows to insert, per table, in staging order.
        rows: The pending insert row of each identity key (later updates merge into it).
        updates: `(table, identity key) -> (where values, changed values)`.
        versioned: Update keys whose `where` includes a version: exactly one row must match.
        appended: Rows of append-only tables (a `WriteBuffer` of inserts only), or `None`.
    """

    __slots__ = ("appended", "inserts", "rows", "updates", "versioned")

    def __init__(self) -> None:
        self.inserts: dict[Table, list[dict[str, Any]]] = {}
        self.rows: dict[IdentityKey, dict[str, Any]] = {}
        self.updates: dict[tuple[Table, IdentityKey], tuple[dict[str, Any], dict[str, Any]]] = {}
        self.versioned: set[tuple[Table, IdentityKey]] = set()
        self.appended: WriteBuffer | None = None

    def __bool__(self) -> bool:
        """Whether writes that may conflict are pending (append-only rows not counted)."""
        return bool(self.inserts or self.updates)

    def insert(self, table: Table, row: dict[str, Any], key: IdentityKey | None) -> None:
        """Buffer `row`; `key` lets later updates of the same row merge into it."""
        if table in _APPEND_ONLY:
            appended = self.appended
            if appended is None:
                appended = self.appended = WriteBuffer()
            appended.inserts.setdefault(table, []).append(row)
            return
        self.inserts.setdefault(table, []).append(row)
        if key is not None:
            self.rows[key] = row

    def update(
        self,
        table: Table,
        key: IdentityKey,
        where: dict[str, Any],
        values: dict[str, Any],
        *,
        versioned: bool = False,
    ) -> None:
        """Buffer an update of one row (merged into its pending insert or earlier update)."""
        pending = self.rows.get(key)
        if pending is not None:
            pending.update(values)
            return
        current = self.updates.get((table, key))
        if current is not None:
            current[1].update(values)
        else:
            self.updates[(table, key)] = (where, dict(values))
            if versioned:
                self.versioned.add((table, key))

    def merge_into(self, other: WriteBuffer) -> None:
        """Move everything into `other` (a call's buffer joining the batch's buffer)."""
        for table, rows in self.inserts.items():
            other.inserts.setdefault(table, []).extend(rows)
        other.rows.update(self.rows)
        for (table, key), (where, values) in self.updates.items():
            other.update(table, key, where, values, versioned=(table, key) in self.versioned)
        if self.appended is not None:
            if other.appended is None:
                other.appended = WriteBuffer()
            for table, rows in self.appended.inserts.items():
                other.appended.inserts.setdefault(table, []).extend(rows)
        self.clear()

    def appended_tables(self) -> set[Table]:
        """Append-only tables with pending rows."""
        return set(self.appended.inserts) if self.appended is not None else set()

    def clear_writes(self) -> None:
        """Forget the pending inserts and updates (append-only rows are kept)."""
        self.inserts, self.rows, self.updates, self.versioned = {}, {}, {}, set()

    def clear(self) -> None:
        """Forget everything pending."""
        self.inserts = {}
        self.rows = {}
        self.updates = {}
        self.versioned = set()
        self.appended = None


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


_unique_cache: dict[Table, frozenset[str]] = {}


def _unique_columns(table: Table) -> frozenset[str]:
    """Columns of `table` in its primary key or a unique constraint or index."""
    cols = _unique_cache.get(table)
    if cols is None:
        names: set[str] = {c.name for c in table.primary_key.columns}
        for constraint in table.constraints:
            if isinstance(constraint, UniqueConstraint):
                names.update(c.name for c in constraint.columns)
        for index in table.indexes:
            if index.unique:
                names.update(c.name for c in index.columns)
        cols = _unique_cache[table] = frozenset(names)
    return cols


def _update_params(
    where: dict[str, Any], values: dict[str, Any]
) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, Any]]:
    """`(where columns, value columns, parameters)` of one row for `update_statement`."""
    wcols = tuple(where)
    vcols = tuple(sorted(values))
    params = {f"w_{c}": v for c, v in where.items()}
    params.update({f"v_{c}": values[c] for c in vcols})
    return wcols, vcols, params


class SqlTransaction(Transaction):
    """A transaction on one `AsyncConnection`, with a write-behind buffer and an identity map.

    Adapters use `stage_insert`/`stage_update` for writes, `execute` for reads and immediate
    writes, and the identity map (`identity_get`/`identity_set`) to avoid re-reading rows.

    Attributes:
        connection: The connection (flush with `await tx.flush()` before using it directly).
        dialect: `sqlite` or `postgresql`.
        locked: Identity keys of rows locked by `SELECT … FOR UPDATE` in this transaction.
    """

    __slots__ = (
        "_base",
        "_broken",
        "_call",
        "_call_sp",
        "_db_savepoint",
        "_deferred",
        "_deferred_checks",
        "_driver",
        "_hooks",
        "_identity",
        "_identity_undo",
        "_joined",
        "_outer",
        "_written",
        "connection",
        "dialect",
        "locked",
    )

    def __init__(
        self,
        connection: AsyncConnection,
        outer: AsyncTransaction | RawSavepoint,
        *,
        readonly: bool,
        joined: CallerTransaction | None = None,
    ) -> None:
        super().__init__(readonly=readonly)
        self.connection = connection
        self.dialect = connection.dialect.name
        self._outer = outer
        #: The caller's transaction this one runs in (a SAVEPOINT of it), or `None`.
        self._joined = joined
        self._base = WriteBuffer()
        self._call: WriteBuffer | None = None
        self._db_savepoint: AsyncTransaction | None = None
        self._identity: dict[IdentityKey, dict[str, Any] | None] = {}
        self._identity_undo: dict[IdentityKey, Any] | None = None
        self._hooks: dict[str, FlushHook] = {}
        self._driver: DirectDriver | Any | None = _MISSING
        self.locked: set[IdentityKey] = set()
        #: Rows this transaction wrote in earlier calls of a batch: it holds their row locks.
        self._written: set[IdentityKey] = set()
        #: Bound SQL sent with the next statement (PostgreSQL, psycopg): writes of batch calls
        #: that cannot fail, and every write outside batch calls (see `_deferring`).
        self._deferred: list[str] = []
        #: `(index in _deferred, table)` of deferred version-checked updates: exactly one row
        #: must match, checked when the statements are sent.
        self._deferred_checks: list[tuple[int, Table]] = []
        self._broken: BaseException | None = None
        #: A raw `SAVEPOINT cs_call` is open for the current batch call (direct drivers).
        self._call_sp = False

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
        self,
        table: Table,
        key: IdentityKey,
        where: dict[str, Any],
        values: dict[str, Any],
        *,
        versioned: bool = False,
    ) -> None:
        """Buffer an UPDATE of the row identified by `where` (column -> value).

        With `versioned=True` the `where` includes the version the transaction read: if no row
        matches when the update is flushed, `ConcurrentUpdateError` is raised.
        """
        self.buffer.update(table, key, where, values, versioned=versioned)

    def add_flush_hook(self, name: str, hook: FlushHook) -> None:
        """Register `hook` (once per `name`) to run before each buffer is written (`FlushHook`)."""
        self._hooks.setdefault(name, hook)

    async def _run_hooks(self, buf: WriteBuffer) -> None:
        for name, hook in self._hooks.items():
            if self._deferred and name not in _DEFERRING_HOOKS:
                await self._send_deferred()  # the hook may run statements on the connection
            await hook(self.connection, buf)

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

    async def _direct(self) -> DirectDriver | None:
        """The driver connection for the write hot path (see `_direct`), or `None` if unknown
        or if the engine has statement listeners (`before_cursor_execute`/`after_cursor_execute`,
        as tracing and query logging install): those must see every statement."""
        driver = self._driver
        if driver is _MISSING:
            driver = None
            dc = (await checked_out_connection(self.connection)).driver_connection
            events = self.connection.sync_connection.dispatch  # type: ignore[union-attr]
            if events.before_cursor_execute or events.after_cursor_execute:
                pass  # SQLAlchemy runs every statement, so its cursor events fire
            elif isinstance(dc, InlineConnection):
                driver = DirectDriver("sqlite", dc, self.connection.dialect)
            elif type(dc).__module__.startswith("psycopg"):
                driver = DirectDriver("psycopg", dc, self.connection.dialect)
            self._driver = driver
        return cast(DirectDriver | None, driver)

    async def _deferring(self) -> DirectDriver | None:
        """The psycopg driver when writes are deferred (PostgreSQL outside batch calls), else
        `None`.

        Outside a batch call a failed write fails the whole transaction, so buffered writes need
        not be sent one by one: they are bound client-side (`defer`) and travel with the next
        statement that needs a result — a read, the audit chain's head lock — or with the
        `COMMIT` itself. Round trips per command on PostgreSQL: `BEGIN`, its reads, one for the
        writes and the outbox and audit-head locks, one for the audit rows and `COMMIT`.
        """
        if self._call is not None:
            return None
        driver = await self._direct()
        return driver if driver is not None and driver.kind == "psycopg" else None

    def defer(
        self, driver: DirectDriver, compiled: Compiled, values: dict[str, Any], check: Table | None
    ) -> None:
        """Bind `compiled` with `values` client-side and queue it for the next round trip
        (only while `_deferring()` returns `driver`).

        Args:
            driver: The psycopg driver `_deferring()` returned.
            compiled: The statement.
            values: Its parameters.
            check: For a version-checked UPDATE, its table: exactly one row must match when the
                statement runs, else the send raises `ConcurrentUpdateError`.

        Raises:
            DBAPIError: psycopg cannot adapt a value (as SQLAlchemy would raise it).
        """
        try:
            sql = driver.client_cursor().mogrify(compiled.sql, compiled.params(values))
        except Exception as exc:
            raise driver.wrap(exc, compiled.sql) from exc
        if check is not None:
            self._deferred_checks.append((len(self._deferred), check))
        self._deferred.append(sql)

    def defer_sql(self, sql: str) -> None:
        """Queue a bound statement (no parameters left) for the next round trip (PostgreSQL)."""
        self._deferred.append(sql)

    def _defer_writes(
        self,
        driver: DirectDriver,
        inserts: dict[Table, list[dict[str, Any]]],
        updates: dict[tuple[Table, IdentityKey], tuple[dict[str, Any], dict[str, Any]]],
        versioned: set[tuple[Table, IdentityKey]],
    ) -> None:
        """Queue `inserts` then `updates` (one statement per row, in buffer order)."""
        dialect = self.connection.dialect
        for table, rows in inserts.items():
            for row in rows:
                self.defer(driver, compiled_insert(table, tuple(row), dialect), row, None)
        for (table, ikey), (where, values) in updates.items():
            if values:
                wcols, vcols, params = _update_params(where, values)
                compiled = compiled_update(
                    update_statement(table, wcols, vcols), (table, wcols, vcols), dialect
                )
                checked = table if (table, ikey) in versioned else None
                self.defer(driver, compiled, params, checked)

    async def _insert_many(self, table: Table, rows: list[dict[str, Any]]) -> None:
        driver = await self._direct()
        if driver is None:
            await self.connection.execute(table.insert(), rows)
            return
        columns = tuple(rows[0])
        compiled = compiled_insert(table, columns, self.connection.dialect)
        if all(len(row) == len(columns) for row in rows):
            await driver.executemany(compiled, rows)
        else:  # rows with different column sets: let SQLAlchemy sort them out
            await self.connection.execute(table.insert(), rows)

    async def _update_many(
        self,
        table: Table,
        wcols: tuple[str, ...],
        vcols: tuple[str, ...],
        params: list[dict[str, Any]],
    ) -> int:
        statement = update_statement(table, wcols, vcols)
        driver = await self._direct()
        if driver is None:
            result = await self.connection.execute(statement, params)
            return int(result.rowcount)
        compiled = compiled_update(statement, (table, wcols, vcols), self.connection.dialect)
        if len(params) == 1:
            count, _ = await driver.execute(compiled, params[0])
            return count
        return await driver.executemany(compiled, params)

    async def _flush_writes(self, buf: WriteBuffer) -> None:
        """Write `buf`'s inserts and updates (not its append-only rows)."""
        if self._hooks:
            await self._run_hooks(buf)
        inserts, updates, versioned = buf.inserts, buf.updates, buf.versioned
        buf.inserts, buf.rows, buf.updates, buf.versioned = {}, {}, {}, set()
        try:
            deferring = await self._deferring()
            if deferring is not None:
                self._defer_writes(deferring, inserts, updates, versioned)
                return
            for table, rows in inserts.items():
                if rows:
                    await self._insert_many(table, rows)
            if updates:
                groups: dict[
                    tuple[Table, tuple[str, ...], tuple[str, ...], bool], list[dict[str, Any]]
                ] = {}
                for (table, ikey), (where, values) in updates.items():
                    if values:
                        wcols, vcols, params = _update_params(where, values)
                        checked = (table, ikey) in versioned
                        groups.setdefault((table, wcols, vcols, checked), []).append(params)
                for (table, wcols, vcols, checked), params_list in groups.items():
                    count = await self._update_many(table, wcols, vcols, params_list)
                    if checked and count != len(params_list):
                        raise self._stale(table)
        except DBAPIError as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc

    async def _flush_appended(self, buf: WriteBuffer) -> None:
        """Write `buf`'s append-only rows (after the flush hooks filled their derived columns)."""
        appended = buf.appended
        if appended is None:
            return
        buf.appended = None
        try:
            await self._run_hooks(appended)
            deferring = await self._deferring()
            if deferring is not None:
                self._defer_writes(deferring, appended.inserts, {}, set())
                return
            for table, rows in appended.inserts.items():
                if rows:
                    await self._insert_many(table, rows)
        except DBAPIError as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc

    async def _send_deferred(self, tail: tuple[str, ...] | list[str] = ()) -> Any:
        """Send the deferred statements, then `tail`, as one query string (one round trip).

        Returns:
            The psycopg cursor on the result of `tail`'s first statement (to read what it
            returns), or `None` without a `tail`.

        Raises:
            ConcurrentUpdateError: A deferred version-checked update matched no row.
            ConflictError, SpecValidationError: As `translate()` maps the database's error.
        """
        deferred, self._deferred = self._deferred, []
        checks, self._deferred_checks = self._deferred_checks, []
        driver = await self._direct()
        assert driver is not None  # only the psycopg path defers
        cursor = driver.client_cursor()
        try:
            await cursor.execute("; ".join([*deferred, *tail]) if tail else "; ".join(deferred))
        except Exception as exc:
            self._broken = exc
            wrapped = driver.wrap(exc, f"<{len(deferred) + len(tail)} buffered statements>")
            error = translate(wrapped) if isinstance(wrapped, DBAPIError) else wrapped
            if error is exc:
                raise
            raise error from exc
        if checks:
            stale: Table | None = None
            at = 0
            for index, table in checks:
                while at < index:
                    cursor.nextset()
                    at += 1
                if cursor.rowcount != 1:
                    stale = table
                    break
            if stale is not None:
                raise self._stale(stale)
            if tail:
                while at < len(deferred):
                    cursor.nextset()
                    at += 1
                return cursor
            return None
        if not tail:
            return None
        for _ in deferred:
            cursor.nextset()
        return cursor

    async def _open_db_savepoint(self) -> None:
        if self._call is not None and self._db_savepoint is None:
            if self._deferred:
                await self._send_deferred()
            self._db_savepoint = await self.connection.begin_nested()

    async def _flush_for_read(
        self, statement: Executable | None, *, table: Table | None = None, send: bool = True
    ) -> None:
        """Flush what a read must see: pending writes, and append-only rows it selects from.

        Inside a call of a batch, only that call's own append-only rows are written (in its
        savepoint); the outbox and audit rows of the batch's earlier calls wait for the group
        commit, since writing them inside this call's savepoint would lose them if this call
        failed. A read of `cs_outbox`/`cs_audit_log` in a batch call therefore does not see the
        earlier calls' rows until the batch commits.

        Args:
            statement: The read (its tables decide which append-only rows it must see), or
                `None` for all of them.
            table: The one table the read selects from, instead of `statement`.
            send: Send the deferred writes now; `False` leaves them to travel with the read
                (the caller sends it with `_send_deferred`).
        """
        if self._base:
            await self._flush_writes(self._base)
        call = self._call
        if call is not None and call:
            await self._open_db_savepoint()
            await self._flush_writes(call)
        pending = (call if call is not None else self._base).appended_tables()
        if pending and (
            (table in pending)
            if table is not None
            else statement is None
            or any(t in pending for t in find_tables(cast(Any, statement), include_crud=True))
        ):
            if call is None:
                await self._flush_appended(self._base)
            else:
                await self._open_db_savepoint()  # the audit chain locks its head row
                await self._flush_appended(call)
        if send and self._deferred:
            await self._send_deferred()

    async def flush(self) -> None:
        """Write everything buffered, append-only rows included (inside a batch call: the call's
        own; see `_flush_for_read`)."""
        self._check_active()
        await self._flush_for_read(None)

    async def execute(
        self,
        statement: Executable,
        params: Any = None,
        *,
        write: bool = False,
        locks: bool = False,
    ) -> Result[Any]:
        """Flush what the statement must see, then execute it now.

        Args:
            statement: Any SQLAlchemy executable.
            params: Its parameters (a dict, or a list of dicts for `executemany`).
            write: An immediate write (refused in read-only transactions).
            locks: The statement takes row locks (`SELECT … FOR UPDATE`). Inside a batch, writes
                and locking reads run in the call's savepoint, so a deadlock or lock timeout fails
                that call only.

        Raises:
            ConflictError: A unique or primary-key constraint was violated.
            ConcurrentUpdateError: A deadlock, serialization failure or lock timeout.
            SpecValidationError: The database cannot hold a value (a data exception).
        """
        self._check_active()
        await self._flush_for_read(statement)
        if write:
            self.check_writable("an immediate write")
        if write or locks:
            await self._open_db_savepoint()
        try:
            if params is None:
                return await self.connection.execute(statement)
            return await self.connection.execute(statement, params)
        except DBAPIError as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc

    async def get_row(self, table: Table, where: dict[str, Any]) -> dict[str, Any] | None:
        """The first row of `table` whose columns equal `where` (column -> value), as a dict.

        Flushes what the read must see first. With a known driver the compiled read runs on it
        (on PostgreSQL outside batch calls in one round trip with the deferred writes), its
        values decoded by the columns' result processors as SQLAlchemy would; else through
        `execute`.

        Raises:
            ConcurrentUpdateError, ConflictError: A deferred write sent with the read failed.
        """
        driver = await self._direct()
        if driver is None:
            stmt = select(table).where(*(table.c[k] == v for k, v in where.items()))
            found = (await self.execute(stmt)).mappings().first()
            return dict(found) if found is not None else None
        self._check_active()
        selected = compiled_select_row(table, tuple(where), self.connection.dialect)
        values = {f"w_{k}": v for k, v in where.items()}
        deferring = driver.kind == "psycopg" and self._call is None
        await self._flush_for_read(None, table=table, send=not deferring)
        if deferring and self._deferred:
            compiled = selected.compiled
            try:
                sql = driver.client_cursor().mogrify(compiled.sql, compiled.params(values))
            except Exception as exc:
                raise driver.wrap(exc, compiled.sql) from exc
            cursor = await self._send_deferred([sql])
            row, description = await cursor.fetchone(), cursor.description
        else:
            try:
                row, description = await driver.fetch_one(selected.compiled, values)
            except DBAPIError as exc:
                error = translate(exc)
                if error is exc:
                    raise
                raise error from exc
        return None if row is None else selected.row(row, description)

    async def write(self, statement: Executable, params: Any = None) -> int:
        """Flush, execute an UPDATE/DELETE (or INSERT) now, and return the affected row count.

        Raises:
            HandlerContractError: The transaction is read-only.
            ConflictError: A unique or primary-key constraint was violated.
        """
        result = await self.execute(statement, params, write=True)
        return int(getattr(result, "rowcount", 0) or 0)

    async def insert_or_nothing(self, table: Table, row: dict[str, Any]) -> bool:
        """`INSERT … ON CONFLICT DO NOTHING` now; return whether the row was inserted.

        On PostgreSQL a conflicting row of a transaction still in flight makes this wait until
        that transaction ends (then it counts as a conflict if it committed), which is what an
        idempotency reservation needs. Inside a batch call with a known driver the statement runs
        in the call's savepoint in one round trip (with the savepoint itself).

        Raises:
            HandlerContractError: The transaction is read-only.
        """
        self._check_active()
        self.check_writable("an immediate write")
        call = self._call
        # The direct path: a batch call that has not written yet, with no SQLAlchemy savepoint.
        direct = call is not None and not call and self._db_savepoint is None
        driver = await self._direct() if direct else None
        if driver is None:
            insert = pg_insert if self.dialect == "postgresql" else sqlite_insert
            first = next(iter(table.primary_key.columns))
            stmt = insert(table).values(row).on_conflict_do_nothing().returning(first)
            return (await self.execute(stmt, write=True)).first() is not None
        compiled = compiled_insert(table, tuple(row), self.connection.dialect, or_nothing=True)
        try:
            if driver.kind == "sqlite":
                if not self._call_sp:
                    driver.connection._conn.execute("SAVEPOINT cs_call")
                    self._call_sp = True
                _, inserted = await driver.execute(compiled, row)
                return inserted is not None
            if self._deferred:
                await self._send_deferred()
            cursor = driver.client_cursor()
            statement = cursor.mogrify(compiled.sql, compiled.params(row))
            if not self._call_sp:
                statement = f"SAVEPOINT cs_call; {statement}"
                self._call_sp = True  # from here on, undoing the call rolls back to it
                await cursor.execute(statement)
                cursor.nextset()
            else:
                await cursor.execute(statement)
            return (await cursor.fetchone()) is not None
        except Exception as exc:
            wrapped = driver.wrap(exc, compiled.sql)
            error = translate(wrapped) if isinstance(wrapped, DBAPIError) else wrapped
            if error is exc:
                raise
            raise error from exc

    # -- lifecycle hooks --------------------------------------------------------------------------

    @property
    def joined(self) -> bool:
        """Whether this transaction is a SAVEPOINT of the caller's transaction (it commits only
        when the caller commits)."""
        return self._joined is not None

    def after_caller_transaction(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` once the caller's transaction has ended (committed or not).

        Only for joined transactions (see `SqlUnitOfWork.join`).

        Raises:
            ConfigurationError: This transaction is not joined to a caller's transaction.
        """
        if self._joined is None:
            raise ConfigurationError("after_caller_transaction() needs a joined transaction")
        self._joined.after_end.append(work)

    async def _commit_backend(self) -> None:
        joined = self._joined
        try:
            if self._base:
                await self._flush_writes(self._base)
            await self._flush_appended(self._base)
            if self._deferred:
                # The last writes travel with COMMIT (or the joined call's RELEASE SAVEPOINT),
                # unless a version check must be read first: a stale update must commit nothing.
                outer = self._outer
                tail: list[str] = []
                if not self._deferred_checks:
                    if joined is None:
                        tail.append("COMMIT")  # psycopg's commit() then sees no transaction
                    elif isinstance(outer, RawSavepoint) and outer.is_active:
                        tail.append("RELEASE SAVEPOINT cs_join")
                await self._send_deferred(tail)
                if tail and isinstance(outer, RawSavepoint):
                    outer.is_active = False
            await self._outer.commit()  # joined: RELEASE SAVEPOINT; the caller commits
        except DBAPIError as exc:
            error = translate(exc)
            if error is exc:
                raise
            raise error from exc
        finally:
            if joined is None:
                await self.connection.close()
        if joined is not None:
            # After-commit callbacks wait for the caller's COMMIT (dropped if it rolls back).
            joined.on_commit.extend(self._on_commit)
            self._on_commit.clear()

    async def _rollback_backend(self) -> None:
        self._deferred = []
        self._deferred_checks = []
        self._base.clear()
        self._call = None
        self._identity.clear()
        try:
            if self._outer.is_active:
                await self._outer.rollback()  # joined: ROLLBACK TO SAVEPOINT
        finally:
            if self._joined is None:
                await self.connection.close()

    async def _begin_savepoint(self) -> None:
        self._call_sp = False
        self._call = WriteBuffer()
        self._identity_undo = {}
        self._db_savepoint = None

    async def _call_statements(
        self, call: WriteBuffer, failable: list[bool] | None = None
    ) -> list[tuple[Table, Compiled, list[dict[str, Any]], bool]]:
        """The call's writes as `(table, compiled statement, rows, version-checked)`, in order.

        With `failable`, also say per statement whether it may fail (`_may_fail`)."""
        if self._hooks:
            await self._run_hooks(call)
        dialect = self.connection.dialect
        out: list[tuple[Table, Compiled, list[dict[str, Any]], bool]] = []
        for table, rows in call.inserts.items():
            if rows:
                out.append((table, compiled_insert(table, tuple(rows[0]), dialect), rows, False))
                if failable is not None:
                    failable.append(True)
        for (table, key), (where, values) in call.updates.items():
            if not values:
                continue
            if failable is not None:
                failable.append(self._may_fail(table, key, values))
            wcols, vcols, params = _update_params(where, values)
            compiled = compiled_update(
                update_statement(table, wcols, vcols), (table, wcols, vcols), dialect
            )
            out.append((table, compiled, [params], (table, key) in call.versioned))
        call.clear_writes()
        return out

    def _may_fail(self, table: Table, key: IdentityKey, values: Mapping[str, Any]) -> bool:
        """Whether an update may fail: unless it updates a row this transaction already wrote
        (or locked) without touching a unique column (see `_certain`)."""
        if key not in self._written and key not in self.locked:
            return True
        return not _unique_columns(table).isdisjoint(values)

    def _certain(self, call: WriteBuffer) -> bool:
        """Whether none of the call's writes can fail: each updates a row this transaction
        already wrote (so it holds the row's lock and knows its version) without touching a
        unique column, and nothing is inserted."""
        if call.inserts:
            return False
        written, locked = self._written, self.locked
        for (table, key), (_, values) in call.updates.items():
            if key not in written and key not in locked:
                return False
            if not _unique_columns(table).isdisjoint(values):
                return False
        return True

    def _remember_written(self, call: WriteBuffer) -> None:
        """Note the rows a call wrote (before its buffer is consumed): this transaction holds
        their locks from now on."""
        written = self._written
        written.update(call.rows)
        written.update(key for _, key in call.updates)

    @staticmethod
    def _stale(table: Table) -> ConcurrentUpdateError:
        return ConcurrentUpdateError(
            f"a {table.name} record changed since this call read it; read it again and retry "
            "(or read it with get_for_update())",
            details={"table": table.name},
        )

    async def _flush_call_sqlite(self, driver: DirectDriver, call: WriteBuffer) -> None:
        """SQLite (inline driver): a call with at most one row that may fail needs no savepoint;
        the others go inside `SAVEPOINT cs_call`, all in-process.

        SQLite undoes just a failing statement (a constraint violation), and a version-checked
        update that matches no row changed nothing, so a call whose only failable write runs
        first leaves nothing behind when that write fails. The other writes of such a call
        update rows this transaction already wrote (`_may_fail` is false: the version is known,
        no unique column changes), which cannot fail; should one fail anyway, the batch's
        transaction is marked broken (nothing of it commits) rather than keep half a call.
        """
        opened = self._call_sp  # a reservation already opened the call's savepoint
        self._remember_written(call)  # kept only if the call succeeds (see _rollback_savepoint)
        failable: list[bool] = []
        statements = await self._call_statements(call, failable)
        sqlite = driver.connection._conn
        may_fail = sum(len(st[2]) for st, f in zip(statements, failable, strict=True) if f)
        lone = not opened and may_fail <= 1
        if lone and may_fail == 1 and not failable[0]:
            # Run the failable write first (only updates can be here: inserts come first).
            at = failable.index(True)
            statements.insert(0, statements.pop(at))
        if not lone and not opened:
            sqlite.execute("SAVEPOINT cs_call")
            self._call_sp = True
        done = 0
        try:
            for table, compiled, rows, checked in statements:
                for row in rows:
                    count, _ = await driver.execute(compiled, row)
                    if checked and count != 1:
                        raise self._stale(table)
                    done += 1  # written (a failing statement or a stale update writes nothing)
        except BaseException as exc:
            if not lone:
                self._call_sp = False
                sqlite.execute("ROLLBACK TO SAVEPOINT cs_call")
                sqlite.execute("RELEASE SAVEPOINT cs_call")
            elif done > 0:
                # A write that could not fail did, after others were written: no savepoint to
                # undo them, so the whole transaction must not commit.
                self._broken = exc
            if isinstance(exc, DBAPIError):
                error = translate(exc)
                if error is not exc:
                    raise error from exc
            raise
        if not lone:
            self._call_sp = False
            sqlite.execute("RELEASE SAVEPOINT cs_call")

    async def _flush_call_psycopg(self, driver: DirectDriver, call: WriteBuffer) -> None:
        """PostgreSQL (psycopg): `SAVEPOINT`, the writes and `RELEASE` as one query string (one
        round trip, values bound client-side by psycopg). A conflict, a deadlock or a version
        mismatch rolls back to the savepoint, so the batch's transaction stays usable and the
        call leaves nothing.

        A call whose writes cannot fail (`_certain`: updates of rows this transaction already
        wrote, so it holds their locks and knows their versions) costs no round trip: its
        statements are deferred and sent ahead of the next call's savepoint, or before the next
        read or the commit.

        A version mismatch is only visible once the results are back, so a call with a
        version-checked update among several writes releases its savepoint after checking them
        (a second round trip).
        """
        if self._deferred_checks:  # deferred outside a call: checked before the call starts
            await self._send_deferred()
        opened = self._call_sp  # a reservation already opened the call's savepoint
        certain = not opened and self._certain(call)
        self._remember_written(call)  # kept only if the call succeeds (see _rollback_savepoint)
        statements = await self._call_statements(call)
        cursor = driver.client_cursor()
        if certain:
            self._deferred.extend(
                cursor.mogrify(compiled.sql, compiled.params(row))
                for _, compiled, rows, _ in statements
                for row in rows
            )
            return
        rows_total = sum(len(rows) for _, _, rows, _ in statements)
        checked_any = any(checked for *_, checked in statements)
        release_now = not checked_any or rows_total == 1
        deferred, self._deferred = self._deferred, []
        parts = [*deferred] if opened else [*deferred, "SAVEPOINT cs_call"]
        first = len(parts)  # results before the call's own statements
        tables: list[tuple[Table, bool]] = []
        for table, compiled, rows, checked in statements:
            for row in rows:
                parts.append(cursor.mogrify(compiled.sql, compiled.params(row)))
                tables.append((table, checked))
        if release_now:
            parts.append("RELEASE SAVEPOINT cs_call")
        self._call_sp = True
        try:
            await cursor.execute("; ".join(parts))
        except Exception as exc:
            await self._pg_undo_call(driver, exc)
            wrapped = driver.wrap(exc, statements[0][1].sql if statements else "")
            error = translate(wrapped) if isinstance(wrapped, DBAPIError) else wrapped
            if error is exc:
                raise
            raise error from exc
        counts = [cursor.rowcount]
        while cursor.nextset():
            counts.append(cursor.rowcount)
        stale = next(
            (
                t
                for (t, checked), n in zip(tables, counts[first:], strict=False)
                if checked and n != 1
            ),
            None,
        )
        if release_now:
            self._call_sp = False
            if stale is not None:  # the lone write matched nothing: nothing was written
                raise self._stale(stale)
            return
        if stale is not None:
            await self._pg_undo_call(driver, None)
            raise self._stale(stale)
        await cursor.execute("RELEASE SAVEPOINT cs_call")
        self._call_sp = False

    async def _pg_undo_call(self, driver: DirectDriver, cause: BaseException | None) -> None:
        """Roll the call back to its savepoint. If that fails (the error came before the
        savepoint existed, e.g. in a deferred write) the transaction is lost: mark it broken."""
        self._call_sp = False
        try:
            await driver.client_cursor().execute(
                "ROLLBACK TO SAVEPOINT cs_call; RELEASE SAVEPOINT cs_call"
            )
        except Exception as exc:
            self._broken = cause or exc
            raise

    async def _release_savepoint(self) -> None:
        """Write the call's conflict-capable writes inside its savepoint, then keep them.

        With a known driver (the inline SQLite connection, psycopg) the call's writes and its
        savepoint travel together (`_flush_call_sqlite`, `_flush_call_psycopg`); otherwise a
        SQLAlchemy savepoint is opened around the flush.

        Raises:
            ConflictError: The writes conflict; the call's writes are undone (with a SQLAlchemy
                savepoint, it stays open for `rollback()`).
        """
        call = self._call
        if call is not None and call:
            driver = await self._direct() if self._db_savepoint is None else None
            if driver is not None and driver.kind == "sqlite":
                await self._flush_call_sqlite(driver, call)
            elif driver is not None and driver.kind == "psycopg":
                await self._flush_call_psycopg(driver, call)
            else:
                await self._open_db_savepoint()
                await self._flush_writes(call)
        self._call = None
        self._identity_undo = None
        savepoint, self._db_savepoint = self._db_savepoint, None
        if call is not None and call.appended is not None:
            call.merge_into(self._base)
        if savepoint is not None:
            await savepoint.commit()
        if self._call_sp:  # opened by a reservation; nothing (more) to write
            await self._raw_call_savepoint("RELEASE SAVEPOINT cs_call")

    async def _raw_call_savepoint(self, sql: str) -> None:
        """Release or roll back the call's raw `cs_call` savepoint (direct drivers)."""
        self._call_sp = False
        driver = await self._direct()
        assert driver is not None  # only direct drivers open it
        if driver.kind == "sqlite":
            for statement in sql.split("; "):
                driver.connection._conn.execute(statement)
        else:
            try:
                await driver.client_cursor().execute(sql)
            except Exception as exc:
                self._broken = exc
                raise

    async def _rollback_savepoint(self) -> None:
        if self._broken is not None:
            raise RuntimeError(
                "the transaction failed outside the call's savepoint and cannot continue"
            ) from self._broken
        self._call = None
        undo, self._identity_undo = self._identity_undo, None
        for key, previous in (undo or {}).items():
            if previous is _MISSING:
                self._identity.pop(key, None)
            else:
                self._identity[key] = previous
            self.locked.discard(key)
            self._written.discard(key)
        savepoint, self._db_savepoint = self._db_savepoint, None
        if savepoint is not None:
            await savepoint.rollback()
        if self._call_sp:
            await self._raw_call_savepoint(
                "ROLLBACK TO SAVEPOINT cs_call; RELEASE SAVEPOINT cs_call"
            )


class RawSavepoint:
    """A joined call's `SAVEPOINT cs_join`, sent on the driver connection (see `_direct`):
    the same statements SQLAlchemy's `begin_nested()` sends, without its execution pipeline."""

    __slots__ = ("_driver", "is_active")

    def __init__(self) -> None:
        self._driver: DirectDriver | None = None
        self.is_active = False

    async def _send(self, sql: str) -> None:
        driver = self._driver
        assert driver is not None  # begun
        try:
            if driver.kind == "sqlite":
                for statement in sql.split("; "):
                    await driver.connection.pause()
                    driver.connection._conn.execute(statement)
            else:
                await driver.client_cursor().execute(sql)
        except Exception as exc:
            raise driver.wrap(exc, sql) from exc

    async def begin(self, driver: DirectDriver) -> None:
        """Open the savepoint on `driver`'s connection.

        Raises:
            DBAPIError: The database refused it.
        """
        self._driver = driver
        await self._send("SAVEPOINT cs_join")
        self.is_active = True

    async def commit(self) -> None:
        """Release the savepoint: the call's work stays in the caller's transaction.

        Raises:
            DBAPIError: The database refused it.
        """
        await self._end("RELEASE SAVEPOINT cs_join")

    async def rollback(self) -> None:
        """Undo the call's work; the caller's transaction goes on.

        Raises:
            DBAPIError: The database refused it.
        """
        await self._end("ROLLBACK TO SAVEPOINT cs_join; RELEASE SAVEPOINT cs_join")

    async def _end(self, sql: str) -> None:
        """Close the savepoint with `sql`, once: a second commit or rollback does nothing."""
        if self.is_active:
            self.is_active = False
            await self._send(sql)


class SqlUnitOfWork:
    """Begins `SqlTransaction`s on the user's `AsyncEngine` (which it never disposes).

    SQLite engines must be configured by `configure_sqlite_engine()` (or made by `sqlite_engine()`)
    so transactions and savepoints behave: the unit of work refuses unconfigured ones. SQLite has
    one writer at a time: the write transactions of one process queue for it in arrival order
    (an asyncio lock per event loop) instead of polling for the database lock, so a busy writer
    cannot starve the others; other processes still meet SQLite's own lock. An in-memory SQLite
    database lives on one connection, so all its transactions take turns.

    Args:
        engine: An `AsyncEngine` for SQLite (aiosqlite) or PostgreSQL (psycopg).

    Raises:
        ConfigurationError: Unsupported dialect or an unconfigured SQLite engine.
    """

    __slots__ = ("_turns", "_writers", "engine")

    def __init__(self, engine: AsyncEngine) -> None:
        given: Any = engine  # users pass sync engines too: say how to get an async one
        if isinstance(given, Engine):
            raise ConfigurationError(sync_engine_message(given.url), details={"field": "engine"})
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
        # One shared connection (StaticPool): every transaction takes its turn; a SQLite file:
        # write transactions do. One lock per event loop (asyncio locks belong to one loop).
        shared = isinstance(engine.pool, StaticPool)
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] | None = (
            weakref.WeakKeyDictionary() if shared else None
        )
        self._writers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] | None = (
            weakref.WeakKeyDictionary() if dialect == "sqlite" and not shared else None
        )

    async def begin(self, *, readonly: bool = False) -> SqlTransaction:
        """Check out a connection and begin a transaction (`BEGIN IMMEDIATE` for writes on SQLite)."""
        turn: asyncio.Lock | None = None
        locks = self._turns if self._turns is not None else None if readonly else self._writers
        if locks is not None:
            loop = asyncio.get_running_loop()
            turn = locks.get(loop)
            if turn is None:
                turn = locks[loop] = asyncio.Lock()
            await turn.acquire()
        try:
            conn = await self.engine.connect()
            try:
                if not readonly and self.engine.dialect.name == "sqlite":
                    # Read by the engine's "begin" listener (configure_sqlite_engine) during
                    # conn.begin() only: a pooled connection must not keep it, or the app's later
                    # plain reads on it would queue behind writers as BEGIN IMMEDIATE.
                    conn.info["contractspec_begin"] = "BEGIN IMMEDIATE"
                    try:
                        outer = await conn.begin()
                    finally:
                        conn.info.pop("contractspec_begin", None)
                else:
                    outer = await conn.begin()
            except BaseException:
                await conn.close()
                raise
        except BaseException:
            if turn is not None:
                turn.release()
            raise
        tx = SqlTransaction(conn, outer, readonly=readonly)
        if turn is not None:
            tx.on_end(turn.release)
        return tx

    async def join(
        self, connection: AsyncConnection | AsyncSession, *, readonly: bool = False
    ) -> SqlTransaction:
        """Begin a transaction inside the caller's: a SAVEPOINT of `connection`.

        The caller's transaction is begun if it was not (SQLAlchemy's autobegin), and the caller
        commits or rolls back everything: its own writes and the call's rows, outbox events, audit
        record and idempotency record. Committing the returned transaction releases the savepoint;
        rolling it back undoes the call only, leaving the caller's transaction usable. After-commit
        callbacks wait for the caller's COMMIT (see `contractspec.core.sql._join`).

        Args:
            connection: The caller's `AsyncConnection`, or an `AsyncSession` (its connection for
                the current transaction, `await session.connection()`). It must reach the same
                database as this unit of work's engine (same dialect, host, port and database);
                a SQLite engine must be configured by `configure_sqlite_engine()`.
            readonly: A query's transaction (writes refused).

        Returns:
            The joined `SqlTransaction` (it never closes the caller's connection).

        Raises:
            ConfigurationError: `connection` is not an `AsyncConnection`/`AsyncSession`, reaches
                another database, or is an unconfigured SQLite connection.
        """
        if isinstance(connection, AsyncSession):
            connection = await connection.connection()
        elif not isinstance(connection, AsyncConnection):
            raise ConfigurationError(
                "connection= takes the caller's sqlalchemy AsyncConnection or AsyncSession, got "
                f"{type(connection).__name__}",
                details={"field": "connection"},
            )
        mine, theirs = self.engine.url, connection.engine.url
        if connection.engine.sync_engine is not self.engine.sync_engine and _database(
            mine
        ) != _database(theirs):
            raise ConfigurationError(
                "connection= reaches another database than the executor's SqlBackend "
                f"({theirs.render_as_string(hide_password=True)} vs "
                f"{mine.render_as_string(hide_password=True)}); pass a connection of the "
                "backend's engine (or of an engine on the same database)",
                details={"field": "connection"},
            )
        if self.engine.dialect.name == "sqlite" and not is_configured(connection.engine):
            raise ConfigurationError(
                "connection= comes from a SQLite engine that is not configured for savepoints; "
                "call configure_sqlite_engine(engine) once after create_async_engine() (or create "
                "it with contractspec.core.sql.sqlite_engine(path))",
                details={"field": "connection"},
            )
        if not connection.in_transaction():
            await connection.begin()
        caller = caller_transaction(connection.sync_connection)  # type: ignore[arg-type]
        raw = RawSavepoint()
        tx = SqlTransaction(connection, raw, readonly=readonly, joined=caller)
        driver = await tx._direct()
        if driver is None:  # no known driver (or statement listeners): SQLAlchemy's savepoint
            tx._outer = await connection.begin_nested()
        else:
            await raw.begin(driver)
        return tx

    async def after_caller_transaction(
        self, connection: AsyncConnection | AsyncSession, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run `work()` once the caller's transaction on `connection` has ended (at once if the
        caller has no transaction open).

        Raises:
            ConfigurationError: `connection` is not an `AsyncConnection`/`AsyncSession`.
        """
        if isinstance(connection, AsyncSession):
            if not connection.in_transaction():
                await work()
                return
            connection = await connection.connection()
        elif not isinstance(connection, AsyncConnection):
            raise ConfigurationError(
                "connection= takes the caller's sqlalchemy AsyncConnection or AsyncSession, got "
                f"{type(connection).__name__}",
                details={"field": "connection"},
            )
        if not connection.in_transaction():
            await work()
            return
        caller_transaction(connection.sync_connection).after_end.append(  # type: ignore[arg-type]
            work
        )

    async def wait_joined(self) -> None:
        """Wait for the work deferred until callers' transactions ended (denial records written
        on their own, after-commit callbacks) on the running event loop: for tests and orderly
        shutdown."""
        while tasks := pending_tasks():
            await asyncio.gather(*tasks, return_exceptions=True)


def _database(url: URL) -> tuple[str, str | None, int | None, str | None]:
    """What identifies a database in a URL: backend, host, port, database name (or file)."""
    database = url.database
    backend = url.get_backend_name()
    if backend == "sqlite" and database not in (None, "", ":memory:"):
        database = os.path.realpath(database)  # relative and absolute paths of one file
    return (backend, url.host, url.port, database)


def sync_engine_message(url: URL) -> str:
    """The fix for a sync `Engine` given where an `AsyncEngine` is needed."""
    shown = url.render_as_string(hide_password=True)
    return (
        f"ContractSpec's SQL backend needs an AsyncEngine, got a sync Engine ({shown}); create "
        "an async engine on the same database with contractspec.core.sql.async_engine_from(engine) "
        "(it maps the driver: sqlite -> a configured sqlite_engine(), postgresql/psycopg2 -> "
        "postgresql+psycopg), or create_async_engine(engine.url.set(drivername="
        "'postgresql+psycopg')); your sync engine keeps serving the rest of the app"
    )


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
