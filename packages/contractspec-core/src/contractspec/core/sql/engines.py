"""Engine helpers: SQLite configured for real transactions, and schema creation.

Stores never create or dispose engines; these helpers are for *you* to call when you create one.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Literal

import pydantic_core
from sqlalchemy import MetaData, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from contractspec.core.errors import ConfigurationError
from contractspec.core.sql._sqlite import InlineConnection, inline_creator

__all__ = [
    "async_engine_from",
    "configure_sqlite_engine",
    "create_all",
    "drop_all",
    "fast_json_dumps",
    "is_configured",
    "sqlite_engine",
]


def fast_json_dumps(value: Any) -> str:
    """JSON text of a JSON-compatible value through pydantic-core (compact, UTF-8, ~4x `json`).

    Pass it as `create_async_engine(..., json_serializer=fast_json_dumps,
    json_deserializer=pydantic_core.from_json)` for PostgreSQL engines too.
    """
    return pydantic_core.to_json(value).decode()


_configured: weakref.WeakSet[Any] = weakref.WeakSet()


def is_configured(engine: AsyncEngine) -> bool:
    """Whether `configure_sqlite_engine` was applied to this engine."""
    return engine.sync_engine in _configured


def configure_sqlite_engine(engine: AsyncEngine, *, busy_timeout_ms: int = 10_000) -> AsyncEngine:
    """Make an aiosqlite engine safe for ContractSpec transactions (call once per engine).

    It applies SQLAlchemy's documented recipe for SQLite transactions: the driver's implicit
    transaction handling is turned off and `BEGIN` is emitted explicitly (`BEGIN IMMEDIATE` for write
    transactions, so writers queue instead of dead-locking on upgrade), which also makes SAVEPOINT
    work. Each connection gets `journal_mode=WAL` (files only), `synchronous=NORMAL`,
    `foreign_keys=ON` and a `busy_timeout`.

    Args:
        engine: An engine made with `create_async_engine("sqlite+aiosqlite:///...")`.
        busy_timeout_ms: How long a writer waits for the lock, in milliseconds.

    Returns:
        The same engine.
    """
    sync = engine.sync_engine
    if sync in _configured:
        return engine
    memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(sync, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        inline = isinstance(getattr(dbapi_connection, "driver_connection", None), InlineConnection)
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not inline:  # inline connections wait for locks on the event loop, not in SQLite
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(sync, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(conn.info.get("contractspec_begin", "BEGIN"))

    _configured.add(sync)
    return engine


def sqlite_engine(
    path: str | os.PathLike[str] = ":memory:",
    *,
    driver: Literal["inline", "aiosqlite"] = "inline",
    busy_timeout_ms: int = 10_000,
    **kwargs: Any,
) -> AsyncEngine:
    """Create a SQLite `AsyncEngine` configured by `configure_sqlite_engine`.

    Args:
        path: Database file, or `":memory:"` (one in-memory database on one shared connection,
            via `StaticPool`; its transactions take turns).
        driver: `"inline"` (default) runs the stdlib `sqlite3` driver directly on the event loop
            behind aiosqlite's interface (see `contractspec.core.sql._sqlite`): statements cost
            microseconds instead of a thread hop each, and a writer waiting for the lock sleeps
            asynchronously instead of blocking the loop. `"aiosqlite"` runs every call on
            aiosqlite's worker thread.
        busy_timeout_ms: How long a writer waits for another connection's lock, in milliseconds.
        **kwargs: Passed to `create_async_engine` (`pool_reset_on_return` defaults to `None`:
            connections go back to the pool without an extra ROLLBACK; JSON columns use
            pydantic-core's serializer and parser).

    Returns:
        The engine (URL `sqlite+aiosqlite://…` either way). You own it: `await engine.dispose()`.

    Raises:
        ValueError: Unknown `driver`.
    """
    if driver not in ("inline", "aiosqlite"):
        raise ValueError(f"unknown SQLite driver {driver!r}: use 'inline' or 'aiosqlite'")
    target = os.fspath(path)
    # Every ContractSpec transaction ends with COMMIT or ROLLBACK, so the pool's extra ROLLBACK on
    # check-in (one more round trip) is skipped; pass pool_reset_on_return="rollback" to restore
    # SQLAlchemy's default for code of your own.
    kwargs.setdefault("pool_reset_on_return", None)
    # JSON columns through pydantic-core's serializer: about 4x faster than the json module.
    kwargs.setdefault("json_serializer", fast_json_dumps)
    kwargs.setdefault("json_deserializer", pydantic_core.from_json)
    if target == ":memory:":
        kwargs.setdefault("poolclass", StaticPool)
        url = "sqlite+aiosqlite://"
    else:
        url = f"sqlite+aiosqlite:///{target}"
    if driver == "inline":
        kwargs.setdefault(
            "async_creator", inline_creator(target, busy_timeout_s=busy_timeout_ms / 1000)
        )
    engine = create_async_engine(url, **kwargs)
    return configure_sqlite_engine(engine, busy_timeout_ms=busy_timeout_ms)


#: PostgreSQL drivers `async_engine_from` replaces by psycopg 3 (which has an async API).
_POSTGRES_DRIVERS = frozenset({"psycopg2", "psycopg", "psycopg2cffi", "pg8000", "asyncpg"})


def async_engine_from(engine_or_url: Engine | URL | str, **kwargs: Any) -> AsyncEngine:
    """An `AsyncEngine` on the same database as a sync `Engine` (or URL), for `SqlBackend`.

    Services built on a sync `Engine` keep it for their own code and give ContractSpec an async
    engine on the same database. Drivers are mapped as follows: SQLite (`sqlite`,
    `sqlite+pysqlite`, `sqlite+aiosqlite`) becomes `sqlite_engine(path)` (configured for
    ContractSpec's transactions); PostgreSQL (`postgresql`, `+psycopg2`, `+psycopg`, `+pg8000`,
    `+asyncpg`) becomes `postgresql+psycopg` (psycopg 3), keeping host, port, database, user,
    password and query options. The new engine is yours: `await engine.dispose()` when done.

    Args:
        engine_or_url: A sync `Engine`, a `URL` or a URL string.
        **kwargs: Passed to `sqlite_engine` or `create_async_engine`.

    Returns:
        A new `AsyncEngine`.

    Raises:
        ConfigurationError: An in-memory SQLite database (a second engine would open another,
            empty database: use a file) or a dialect other than SQLite and PostgreSQL.
    """
    url = engine_or_url.url if isinstance(engine_or_url, Engine) else make_url(engine_or_url)
    backend = url.get_backend_name()
    shown = url.render_as_string(hide_password=True)
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):
            raise ConfigurationError(
                f"cannot share an in-memory SQLite database ({shown}) with a second engine: each "
                "engine opens its own empty database; use a SQLite file",
                details={"field": "engine"},
            )
        return sqlite_engine(url.database, **kwargs)
    if backend == "postgresql":
        driver = url.get_driver_name()
        if driver not in _POSTGRES_DRIVERS:
            raise ConfigurationError(
                f"unknown PostgreSQL driver {driver!r} in {shown}: use postgresql+psycopg",
                details={"field": "engine"},
            )
        kwargs.setdefault("json_serializer", fast_json_dumps)
        kwargs.setdefault("json_deserializer", pydantic_core.from_json)
        return create_async_engine(url.set(drivername="postgresql+psycopg"), **kwargs)
    raise ConfigurationError(
        f"unsupported SQL dialect {backend!r} ({shown}): ContractSpec runs on SQLite and PostgreSQL",
        details={"field": "engine"},
    )


async def create_all(engine: AsyncEngine, *metadatas: MetaData) -> None:
    """Create the tables of every `MetaData` (skipping existing ones). Use Alembic in production."""
    async with engine.begin() as conn:
        for md in metadatas:
            await conn.run_sync(md.create_all)


async def drop_all(engine: AsyncEngine, *metadatas: MetaData) -> None:
    """Drop the tables of every `MetaData` (tests and tear-down)."""
    async with engine.begin() as conn:
        for md in reversed(metadatas):
            await conn.run_sync(md.drop_all)
