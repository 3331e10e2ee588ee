"""contractspec-identity's tables under Alembic with the docs' env.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from identity_support import SYSTEM, as_user
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import Actor, CallContext, Executor, SpecRegistry
from contractspec.core.sql import EntityTables, SqlBackend
from contractspec.core.sql import metadata as core_metadata
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.core.testing.migrations import (
    downgrade_and_check,
    metadata_from_config,
    migrate_and_check,
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


async def test_identity_tables_autogenerate_upgrade_check_and_downgrade(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """The default `cs_identity_*` tables (foreign keys included) migrate with no diff and drop."""
    env = await migrate_and_check(
        sql_engine, tmp_path / "migrations", [identity_metadata], env_py=ENV_PY
    )
    await downgrade_and_check(env, sql_engine)


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
    env = await migrate_and_check(
        sql_engine, tmp_path / "migrations", [core_metadata, tables.metadata], env_py=ENV_PY
    )

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

    await downgrade_and_check(env, sql_engine)
