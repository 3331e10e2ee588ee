"""Fixtures: a job queue on memory, a SQLite file and a PostgreSQL schema, with a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from jobs_app import build_registry, make_queue

from contractspec.core import SpecRegistry
from contractspec.core.testing import FakeClock
from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind
from contractspec.jobs import JobQueue

__all__ = ["backend_kind", "sql_engine", "sql_kind"]


@pytest.fixture
def clock() -> FakeClock:
    """A clock frozen at 2024-01-01T00:00Z that tests move by hand."""
    return FakeClock()


@pytest.fixture
def registry() -> SpecRegistry:
    """The test jobs."""
    return build_registry()


@pytest.fixture
async def queue(
    backend_kind: str, registry: SpecRegistry, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[JobQueue]:
    """The queue under test on memory, SQLite or PostgreSQL."""
    async with make_queue(backend_kind, tmp_path, registry, clock) as q:
        yield q
