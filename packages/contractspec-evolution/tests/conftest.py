"""Fixtures: backends (memory, SQLite file, PostgreSQL schema); real model calls are blocked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from evolution_app import EvolutionEnv, evolution_env

from contractspec.agent.testing import block_model_requests
from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]

block_model_requests()


@pytest.fixture
async def env(backend_kind: str, tmp_path: Path) -> AsyncIterator[EvolutionEnv]:
    """The deal app's evolution environment on memory, SQLite or PostgreSQL."""
    async with evolution_env(backend_kind, tmp_path) as environment:
        yield environment
