"""Services with a sync `Engine`: `SqlBackend` refuses it with the fix, and `async_engine_from`
builds an async engine on the same database (SQLite file and PostgreSQL)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from core_guarantees_app import build_app, call_ctx, make_executor, note_entity
from sqlalchemy import create_engine, text

from contractspec.core import ConfigurationError
from contractspec.core.sql import SqlBackend
from contractspec.core.sql.engines import async_engine_from, is_configured
from contractspec.core.testing import postgres_dsn


def test_a_sync_engine_is_refused_with_the_fix() -> None:
    """`SqlBackend(sync_engine)` raises ConfigurationError naming `async_engine_from` and the
    psycopg driver, without showing the password."""
    engine = create_engine("postgresql+psycopg://app:s3cret@db.internal:5432/shop")
    with pytest.raises(ConfigurationError, match="async_engine_from") as err:
        SqlBackend(engine, build_app().registry)
    message = str(err.value)
    assert "postgresql+psycopg" in message
    assert "s3cret" not in message
    assert err.value.details == {"field": "engine"}


def test_postgres_drivers_map_to_psycopg() -> None:
    """psycopg2, pg8000, asyncpg and bare `postgresql` URLs become `postgresql+psycopg`, keeping
    user, password, host, port, database and query."""
    for driver in ("postgresql", "postgresql+psycopg2", "postgresql+pg8000", "postgresql+asyncpg"):
        url = f"{driver}://app:s3cret@db.internal:6543/shop?sslmode=require"
        engine = async_engine_from(url)
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.url.username == "app"
        assert engine.url.password == "s3cret"
        assert (engine.url.host, engine.url.port, engine.url.database) == (
            "db.internal",
            6543,
            "shop",
        )
        assert engine.url.query == {"sslmode": "require"}


def test_in_memory_sqlite_and_other_dialects_are_refused() -> None:
    """An in-memory SQLite database cannot be shared by two engines; MySQL is not supported."""
    with pytest.raises(ConfigurationError, match="use a SQLite file"):
        async_engine_from(create_engine("sqlite://"))
    with pytest.raises(ConfigurationError, match="unsupported SQL dialect 'mysql'"):
        async_engine_from("mysql+pymysql://u@h/db")


async def test_a_sync_sqlite_engine_and_its_async_twin_share_the_file(tmp_path: Path) -> None:
    """The async engine from a sync SQLite engine is configured for ContractSpec and writes the
    same file the sync engine reads."""
    app = build_app()
    sync = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    engine = async_engine_from(sync)
    try:
        assert is_configured(engine)
        backend = SqlBackend(engine, app.registry)
        await backend.create_all()
        await make_executor(app, backend).execute(
            "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1")
        )
        with sync.connect() as conn:
            table = backend.table(note_entity).name
            assert conn.execute(text(f"SELECT id FROM {table}")).scalars().all() == ["n1"]
    finally:
        await engine.dispose()
        sync.dispose()


async def test_a_sync_postgres_engine_and_its_async_twin_share_the_database() -> None:
    """From a sync psycopg engine, the async twin stores a call that the sync engine reads."""
    dsn = postgres_dsn()
    if not dsn:
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    schema = f"cs_test_{uuid.uuid4().hex[:12]}"
    options = {"options": f"-csearch_path={schema}"}
    sync = create_engine(dsn, connect_args=options)
    with sync.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = async_engine_from(sync, connect_args=options)
    try:
        app = build_app()
        backend = SqlBackend(engine, app.registry)
        await backend.create_all()
        await make_executor(app, backend).execute(
            "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1")
        )
        with sync.connect() as conn:
            table = backend.table(note_entity).name
            assert conn.execute(text(f"SELECT id FROM {table}")).scalars().all() == ["n1"]
    finally:
        await engine.dispose()
        with sync.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        sync.dispose()
