"""Test your Alembic migrations against a real database: autogenerate, upgrade, check, downgrade.

`AlembicEnv` drives Alembic's command API over a throw-away script directory around your own
`env.py`, so a test proves that what autogenerate writes imports, applies, matches your
`MetaData` (`alembic check`) and rolls back. Needs `pip install alembic`.

```python
import asyncio
from pathlib import Path

from contractspec.core.sql import metadata
from contractspec.core.testing.migrations import (
    AlembicEnv, metadata_from_config, migration_url, table_names,
)

# your env.py, with its `target_metadata` import replaced by the metadata under test
ENV_PY = metadata_from_config(
    Path("migrations/env.py").read_text(), "from myapp.db import target_metadata"
)


async def test_migrations(sql_engine, tmp_path):
    env = AlembicEnv(tmp_path / "migrations", await migration_url(sql_engine), [metadata],
                     env_py=ENV_PY)
    await asyncio.to_thread(env.revision)   # autogenerate
    await asyncio.to_thread(env.upgrade)
    await asyncio.to_thread(env.check)      # raises on any difference
    await asyncio.to_thread(env.downgrade)
    assert await table_names(sql_engine) == {"alembic_version"}
```

The methods are synchronous (Alembic's commands are) and an async `env.py` starts its own event
loop: from async code call them through `asyncio.to_thread`, as above.

The whole cycle over an empty database, with an assertion at each step, is two calls:

```python
async def test_migrations(sql_engine, tmp_path):
    env = await migrate_and_check(sql_engine, tmp_path / "migrations", [metadata], env_py=ENV_PY)
    ...  # use the migrated schema
    await downgrade_and_check(env, sql_engine)
```
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "AlembicEnv",
    "downgrade_and_check",
    "metadata_from_config",
    "migrate_and_check",
    "migration_url",
    "table_names",
    "titled_block",
]


def titled_block(path: str | os.PathLike[str], title: str) -> str:
    """The source of the one fenced block of a Markdown file titled `title` (```` ```python title="env.py" ````).

    Titled blocks are shown, not run, by `run_python_blocks` (its pattern takes only bare
    ```` ```python ```` fences): use this to test files the docs ask readers to write.

    Args:
        path: The Markdown file.
        title: The block's `title` attribute.

    Returns:
        The block's text, without its fences.

    Raises:
        AssertionError: The page has no block with that title, or more than one.
    """
    pattern = re.compile(
        r"^```\w+ [^\n]*title=\"" + re.escape(title) + r"\"[^\n]*\n(.*?)^```",
        re.DOTALL | re.MULTILINE,
    )
    found = pattern.findall(Path(path).read_text(encoding="utf-8"))
    assert len(found) == 1, f"{path} has {len(found)} blocks titled {title!r}, expected one"
    return str(found[0])


def metadata_from_config(env_py: str, import_line: str) -> str:
    """`env_py` with the line importing your `target_metadata` replaced by a read of
    `context.config.attributes["target_metadata"]`, where `AlembicEnv` puts the metadata to test.

    Args:
        env_py: The source of an `env.py` that imports `alembic.context`.
        import_line: The start of the line to replace, e.g.
            `"from myapp.db import target_metadata"`.

    Returns:
        The edited source.

    Raises:
        AssertionError: No line of `env_py` starts with `import_line`.
    """
    lines = env_py.splitlines(keepends=True)
    found = [i for i, line in enumerate(lines) if line.startswith(import_line)]
    assert found, f"env.py has no line starting with {import_line!r}"
    for i in found:
        lines[i] = 'target_metadata = context.config.attributes["target_metadata"]\n'
    return "".join(lines)


def _alembic() -> Any:
    try:
        import alembic
        import alembic.command
        import alembic.config
    except ImportError as exc:  # pragma: no cover - alembic is in every package's dev group
        raise ImportError("AlembicEnv needs Alembic: pip install alembic") from exc
    return alembic


async def migration_url(engine: AsyncEngine) -> str:
    """A URL reaching the same database (and PostgreSQL schema) as `engine`, for Alembic.

    On PostgreSQL the engine's current schema (e.g. the fresh one of
    `contractspec.core.testing.temporary_postgres_engine`) is added as the connection's
    `search_path`, so migrations and their `alembic_version` table land there.

    Args:
        engine: An engine of the database to migrate.

    Returns:
        The URL as a string, password included.
    """
    from sqlalchemy import text

    url = engine.url
    if url.get_backend_name() == "postgresql":
        async with engine.connect() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
        url = url.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


async def table_names(engine: AsyncEngine) -> set[str]:
    """The names of the tables in `engine`'s database (its default schema)."""
    from sqlalchemy import inspect

    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))


class AlembicEnv:
    """A throw-away Alembic environment (script directory) around your `env.py`.

    The directory gets your `env.py`, Alembic's own `script.py.mako` (of the `async` template)
    and an empty `versions/`. `target_metadata` is handed to `env.py` in
    `context.config.attributes["target_metadata"]`.

    Args:
        directory: Where to create the script directory (must not exist yet).
        url: The database URL (`sqlalchemy.url`), e.g. from `migration_url`.
        target_metadata: The `MetaData` objects to migrate.
        env_py: The source of the `env.py` to use.

    Attributes:
        directory: The script directory.
        config: The `alembic.config.Config` the commands run with.
    """

    def __init__(
        self,
        directory: str | Path,
        url: str,
        target_metadata: Sequence[MetaData],
        *,
        env_py: str,
    ) -> None:
        alembic = _alembic()
        self.directory = Path(directory)
        (self.directory / "versions").mkdir(parents=True)
        (self.directory / "env.py").write_text(env_py, encoding="utf-8")
        template = Path(alembic.__file__).parent / "templates" / "async" / "script.py.mako"
        shutil.copy(template, self.directory / "script.py.mako")
        self.config = alembic.config.Config()
        self.config.set_main_option("script_location", str(self.directory))
        self.config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        self.config.attributes["target_metadata"] = list(target_metadata)
        self._command = alembic.command

    def revision(self, message: str = "contractspec") -> Path:
        """`alembic revision --autogenerate`; returns the new migration file."""
        before = set(self.directory.glob("versions/*.py"))
        self._command.revision(self.config, message=message, autogenerate=True)
        (created,) = set(self.directory.glob("versions/*.py")) - before
        return created

    def upgrade(self, revision: str = "head") -> None:
        """`alembic upgrade head` (or to `revision`)."""
        self._command.upgrade(self.config, revision)

    def check(self) -> None:
        """`alembic check`: raises `alembic.util.AutogenerateDiffsDetected` on any difference."""
        self._command.check(self.config)

    def downgrade(self, revision: str = "base") -> None:
        """`alembic downgrade base` (or to `revision`)."""
        self._command.downgrade(self.config, revision)


async def migrate_and_check(
    engine: AsyncEngine,
    directory: str | Path,
    target_metadata: Sequence[MetaData],
    *,
    env_py: str,
) -> AlembicEnv:
    """Autogenerate, upgrade and check the migration of an empty database to `target_metadata`.

    Asserts that the autogenerated migration creates every table of `target_metadata`, then
    upgrades to head, runs `alembic check` and asserts that the database holds exactly those
    tables plus `alembic_version`. Alembic's commands run in a worker thread
    (`asyncio.to_thread`), so an async `env.py` can start its own event loop.

    Args:
        engine: An engine of the (empty) database to migrate.
        directory: Where to create the script directory (must not exist yet).
        target_metadata: The `MetaData` objects to migrate.
        env_py: The source of the `env.py` to use (see `metadata_from_config`).

    Returns:
        The environment, upgraded to head, e.g. for `downgrade_and_check`.

    Raises:
        AssertionError: The migration does not create every table, or the migrated database
            holds other tables.
        alembic.util.AutogenerateDiffsDetected: `alembic check` found a difference between the
            migrated database and `target_metadata`.
    """
    env = AlembicEnv(directory, await migration_url(engine), target_metadata, env_py=env_py)
    migration = (await asyncio.to_thread(env.revision)).read_text(encoding="utf-8")
    names = {name for metadata in target_metadata for name in metadata.tables}
    created = {name for name in names if f"op.create_table('{name}'," in migration}
    assert created == names, f"the migration does not create {sorted(names - created)}"
    await asyncio.to_thread(env.upgrade)
    await asyncio.to_thread(env.check)
    assert await table_names(engine) == names | {"alembic_version"}
    return env


async def downgrade_and_check(env: AlembicEnv, engine: AsyncEngine) -> None:
    """`alembic downgrade base`, then assert that only `alembic_version` is left in the database.

    Args:
        env: The environment, e.g. from `migrate_and_check`.
        engine: An engine of the database `env` migrates.

    Raises:
        AssertionError: A table other than `alembic_version` is left.
    """
    await asyncio.to_thread(env.downgrade)
    assert await table_names(engine) == {"alembic_version"}
