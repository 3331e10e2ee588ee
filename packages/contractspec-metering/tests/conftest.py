"""Fixtures: the metering app on memory, a SQLite file and a PostgreSQL schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from metering_support import App, open_app

from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[App]:
    """The app on the parametrised backend."""
    async with open_app(backend_kind, tmp_path) as a:
        yield a
