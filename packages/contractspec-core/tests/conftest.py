"""Shared fixtures: backends (memory, SQLite file, PostgreSQL schema) and a small CRM spec."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from core_app import build_registry

from contractspec.core import Backend, MemoryBackend, SpecRegistry
from contractspec.core.testing import temporary_sql_engine
from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]


@pytest.fixture
def registry() -> SpecRegistry:
    """A fresh registry of the test CRM app."""
    return build_registry()


@pytest.fixture
async def backend(
    backend_kind: str, registry: SpecRegistry, tmp_path: Path
) -> AsyncIterator[Backend]:
    """The test app's backend on memory, a SQLite file or a PostgreSQL schema."""
    if backend_kind == "memory":
        yield MemoryBackend()
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        yield sql
