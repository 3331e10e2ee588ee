"""Fixtures: every bus store on memory, a SQLite file and a PostgreSQL schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bus_support import Stores, build_registry, open_stores

from contractspec.core import SpecRegistry
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]


@pytest.fixture
def registry() -> SpecRegistry:
    """The test CRM registry."""
    return build_registry()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at 2024-01-01T00:00Z."""
    return FakeClock()


@pytest.fixture
async def stores(backend_kind: str, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Stores]:
    """Every store on the parametrised backend."""
    async with open_stores(backend_kind, tmp_path, clock=clock, ids=SequentialIds("aud")) as s:
        yield s
