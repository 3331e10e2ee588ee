"""Helpers for testing apps built on ContractSpec: fake clock and ids, real databases.

Everything here is importable without pytest. Pytest fixtures built on these helpers live in
`contractspec.core.testing.fixtures`; import the ones you want into your `conftest.py`:

```python
from contractspec.core.testing.fixtures import sql_engine, backend_kind  # noqa: F401
```
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "POSTGRES_DSN_ENV",
    "FakeClock",
    "SequentialIds",
    "postgres_dsn",
    "temporary_postgres_engine",
    "temporary_sql_engine",
]

#: Environment variable holding the PostgreSQL DSN used by tests (`postgresql+psycopg://...`).
POSTGRES_DSN_ENV = "CONTRACTSPEC_TEST_POSTGRES_DSN"


class FakeClock:
    """A `Clock` that only moves when told to.

    Args:
        start: Initial time (aware; naive values are taken as UTC). Default 2024-01-01T00:00Z.
        tick: Added after every `now()` call (default zero: time stands still).
    """

    __slots__ = ("_now", "tick")

    def __init__(self, start: datetime | None = None, *, tick: timedelta = timedelta(0)) -> None:
        start = start or datetime(2024, 1, 1, tzinfo=UTC)
        self._now = start if start.tzinfo else start.replace(tzinfo=UTC)
        self.tick = tick

    def now(self) -> datetime:
        """The fake current time (then advanced by `tick`)."""
        current = self._now
        self._now = current + self.tick
        return current

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by `delta` (a timedelta or seconds); return the new time."""
        self._now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        return self._now

    def set(self, when: datetime) -> None:
        """Jump to `when`."""
        self._now = when if when.tzinfo else when.replace(tzinfo=UTC)


class SequentialIds:
    """An `IdGenerator` returning `prefix-000001`, `prefix-000002`, ... (readable, deterministic)."""

    __slots__ = ("_n", "prefix")

    def __init__(self, prefix: str = "id") -> None:
        self.prefix = prefix
        self._n = 0

    def new_id(self) -> str:
        """The next id."""
        self._n += 1
        return f"{self.prefix}-{self._n:06d}"


def postgres_dsn() -> str | None:
    """The test PostgreSQL DSN from `CONTRACTSPEC_TEST_POSTGRES_DSN`, or `None`."""
    return os.environ.get(POSTGRES_DSN_ENV) or None


@asynccontextmanager
async def temporary_postgres_engine(
    dsn: str | None = None, **kwargs: object
) -> AsyncIterator[AsyncEngine]:
    """An engine whose connections use a fresh schema, dropped (with its tables) afterwards.

    Args:
        dsn: `postgresql+psycopg://user@host:port/db`; defaults to `postgres_dsn()`.
        **kwargs: Passed to `create_async_engine`.

    Raises:
        RuntimeError: No DSN given and `CONTRACTSPEC_TEST_POSTGRES_DSN` is unset.
    """
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    dsn = dsn or postgres_dsn()
    if not dsn:
        raise RuntimeError(f"set {POSTGRES_DSN_ENV} to a postgresql+psycopg:// DSN")
    schema = f"cs_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(dsn)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        engine = create_async_engine(
            dsn,
            connect_args={"options": f"-csearch_path={schema}", "application_name": schema},
            **kwargs,
        )
        try:
            yield engine
        finally:
            await engine.dispose()
            async with admin.begin() as conn:
                # A failed test may leave a connection checked out inside a transaction that
                # holds locks; end it so DROP SCHEMA cannot wait forever.
                await conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": schema},
                )
                await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await admin.dispose()


@asynccontextmanager
async def temporary_sql_engine(kind: str, directory: Path | str) -> AsyncIterator[AsyncEngine]:
    """A throw-away engine: `kind="sqlite"` (a file in `directory`) or `"postgres"`.

    Raises:
        ValueError: Unknown kind.
        RuntimeError: `postgres` without `CONTRACTSPEC_TEST_POSTGRES_DSN`.
    """
    if kind == "sqlite":
        from contractspec.core.sql import sqlite_engine

        engine = sqlite_engine(Path(directory) / f"test-{uuid.uuid4().hex[:8]}.db")
        try:
            yield engine
        finally:
            await engine.dispose()
    elif kind == "postgres":
        async with temporary_postgres_engine() as engine:
            yield engine
    else:
        raise ValueError(f"unknown SQL backend {kind!r}: use 'sqlite' or 'postgres'")
