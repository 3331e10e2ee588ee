"""contractspec-identity's tables under Alembic with the docs' env.py, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from identity_support import SYSTEM, as_user
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import Actor, CallContext, Executor, SpecRegistry
from contractspec.core.sql import EntityTables, SqlBackend
from contractspec.core.sql import metadata as core_metadata
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.core.testing.migrations import (
    AlembicEnv,
    metadata_from_config,
    migration_url,
    table_names,
    titled_block,
)
from contractspec.identity import MembershipStatus, Org, User, register_identity
from contractspec.identity.sql import SqlIdentityStore
from contractspec.identity.sql import metadata as identity_metadata

DOCS = Path(__file__).resolve().parents[3] / "docs" / "core" / "sql.md"
#: The docs' env.py, reading `target_metadata` from the Alembic config (the one line changed).
ENV_PY = metadata_from_config(
    titled_block(DOCS, "migrations/env.py"), "from myapp.db import target_metadata"
)


async def migrate(engine: AsyncEngine, directory: Path, metadatas: list[MetaData]) -> AlembicEnv:
    """Autogenerate (every table created), upgrade and check (no diff)."""
    env = AlembicEnv(directory, await migration_url(engine), metadatas, env_py=ENV_PY)
    migration = (await asyncio.to_thread(env.revision)).read_text()
    names = {name for md in metadatas for name in md.tables}
    assert {n for n in names if f"op.create_table('{n}'," in migration} == names
    await asyncio.to_thread(env.upgrade)
    await asyncio.to_thread(env.check)
    assert await table_names(engine) == names | {"alembic_version"}
    return env


async def test_identity_tables_autogenerate_upgrade_check_and_downgrade(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """The default `cs_identity_*` tables (foreign keys included) migrate with no diff and drop."""
    env = await migrate(sql_engine, tmp_path / "migrations", [identity_metadata])
    await asyncio.to_thread(env.downgrade)
    assert await table_names(sql_engine) == {"alembic_version"}


async def test_registered_identity_migrates_with_the_app_tables_and_serves_calls(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """With `register_identity`, the app's entity tables plus the store's keys migrate and serve calls."""
    registry = SpecRegistry()
    identity = register_identity(registry)
    tables = EntityTables(
        registry
    )  # as in env.py: the store adds its foreign keys and version table
    SqlIdentityStore(tables)
    env = await migrate(sql_engine, tmp_path / "migrations", [core_metadata, tables.metadata])

    backend = SqlBackend(sql_engine, registry)  # no create_all: the migration made the schema
    identity.store = SqlIdentityStore(backend.tables)
    executor = Executor(
        registry, backend=backend, policy=identity.engine, clock=FakeClock(), ids=SequentialIds()
    )
    ada = await executor.execute("identity.user.create", {"email": "ada@example.com"}, SYSTEM)
    assert isinstance(ada, User)
    acme = await executor.execute(
        "identity.org.create", {"name": "Acme"}, CallContext(actor=Actor.user(ada.id))
    )
    assert isinstance(acme, Org)
    mine = await executor.execute("identity.org.list_mine", {}, as_user(ada))
    assert [(o.org.id, o.role, o.status) for o in mine.orgs] == [
        (acme.id, "owner", MembershipStatus.ACTIVE)
    ]

    await asyncio.to_thread(env.downgrade)
    assert await table_names(sql_engine) == {"alembic_version"}
