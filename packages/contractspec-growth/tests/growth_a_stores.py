"""Tracking and rollout stores on memory, a SQLite file or a PostgreSQL schema, for the suites."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from contractspec.core.testing import temporary_sql_engine


@asynccontextmanager
async def sql_engine_for(kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A throw-away engine for `sqlite`/`postgres`, or `None` for `memory`."""
    if kind == "memory":
        yield None
        return
    async with temporary_sql_engine(kind, tmp_path) as engine:
        yield engine
