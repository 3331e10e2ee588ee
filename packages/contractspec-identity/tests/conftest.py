"""Shared fixtures: identity apps on memory, a SQLite file or a PostgreSQL schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from identity_support import IdentityApp, identity_app

from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[IdentityApp]:
    """An identity app (registry, store, engine, executor) on `backend_kind`, with fake time."""
    async with identity_app(backend_kind, tmp_path) as built:
        yield built
