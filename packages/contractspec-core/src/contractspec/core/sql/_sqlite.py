"""SQLite on the event loop: the stdlib `sqlite3` driver behind aiosqlite's async interface.

SQLite runs in-process and answers in microseconds, so a statement costs far less than the hop to
aiosqlite's worker thread that carries it (about 100 µs per DBAPI call, several per statement).
`InlineConnection` runs each call directly on the event loop instead, and SQLAlchemy's aiosqlite
dialect drives it unchanged (through `create_async_engine(..., async_creator=...)`).

The one thing that may block in SQLite is waiting for a lock (another writer holds the database).
The connection's `busy_timeout` is therefore 0, and a statement refused with `SQLITE_BUSY` is
retried after an `asyncio.sleep` with growing back-off until the configured busy timeout, so a
waiting writer never blocks the loop (other tasks, including the lock holder, keep running).
Everything else — reading rows, writing the WAL, committing with `synchronous=NORMAL` — is
short CPU and page-cache work. Since such calls complete without suspending, a connection yields
to the event loop every `YIELD_EVERY` statements, so a long import in one task never starves the
others (an HTTP server's requests, a second writer). A WAL checkpoint (every 1,000 pages by default) does write and
sync the database file on the loop; use aiosqlite (`sqlite_engine(..., driver="aiosqlite")`) if
even those pauses matter more than throughput.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

__all__ = ["YIELD_EVERY", "InlineConnection", "inline_creator"]

#: Statements a connection runs before it lets other tasks of the event loop run.
YIELD_EVERY = 32


def _busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text


class _InlineQueue:
    """Stands in for aiosqlite's request queue: SQLAlchemy sets the isolation level through it."""

    __slots__ = ()

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except BaseException as exc:
            future.set_exception(exc)


class InlineCursor:
    """An aiosqlite-style cursor whose coroutines run `sqlite3` calls directly."""

    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection
        self._cursor = connection._conn.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        await self._connection._run(
            self._cursor.execute, sql, () if parameters is None else parameters
        )
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        rows = parameters if isinstance(parameters, Sequence) else list(parameters)
        await self._connection._run(self._cursor.executemany, sql, rows)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany() if size is None else self._cursor.fetchmany(size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def nextset(self) -> None:
        return None

    async def setinputsizes(self, *sizes: Any) -> None:
        return None


class InlineConnection:
    """An aiosqlite-compatible connection running the stdlib driver on the event loop.

    Args:
        conn: A `sqlite3.Connection` opened with `check_same_thread=False`.
        busy_timeout_s: How long a statement waits for a lock another connection holds, in
            seconds (retried with back-off from 1 ms to 50 ms).
    """

    __slots__ = ("_conn", "_connection", "_ticks", "_tx", "busy_timeout_s")

    def __init__(self, conn: sqlite3.Connection, busy_timeout_s: float) -> None:
        self._conn = conn
        self._ticks = 0
        #: aiosqlite's attribute SQLAlchemy tests to know whether the connection is open.
        self._connection: sqlite3.Connection | None = conn
        self._tx = _InlineQueue()
        self.busy_timeout_s = busy_timeout_s

    async def pause(self) -> None:
        """Count one statement; every `YIELD_EVERY`th, let the event loop run other tasks."""
        self._ticks += 1
        if self._ticks >= YIELD_EVERY:
            self._ticks = 0
            await asyncio.sleep(0)

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        await self.pause()
        try:
            return function(*args)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.busy_timeout_s
        delay = 0.001
        while True:
            await asyncio.sleep(delay)
            try:
                return function(*args)
            except sqlite3.OperationalError as exc:
                if not _busy(exc) or loop.time() >= deadline:
                    raise
            delay = min(delay * 2, 0.05)

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        cursor = InlineCursor(self)
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        await self._run(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        """Close at once (SQLAlchemy's `terminate`)."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    @property
    def total_changes(self) -> int:
        return self._conn.total_changes


def inline_creator(
    database: str, *, uri: bool = False, busy_timeout_s: float = 10.0
) -> Callable[[], Awaitable[InlineConnection]]:
    """The `async_creator` of an engine whose connections are `InlineConnection`s.

    Args:
        database: The file path (or a `file:` URI with `uri=True`).
        uri: Whether `database` is a URI.
        busy_timeout_s: Lock wait per statement, in seconds.
    """

    async def create() -> InlineConnection:
        conn = sqlite3.connect(database, uri=uri, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=0")  # waiting happens in InlineConnection._run
        return InlineConnection(conn, busy_timeout_s)

    return create
