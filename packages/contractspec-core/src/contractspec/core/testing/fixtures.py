"""Pytest fixtures over real backends: import them into your `conftest.py`.

* `backend_kind` — parametrised over `memory`, `sqlite` and `postgres` (the last is skipped with a
  reason when `CONTRACTSPEC_TEST_POSTGRES_DSN` is unset, and required when `CONTRACTSPEC_REQUIRE_POSTGRES=1`).
* `sql_kind` — the same without `memory`.
* `sql_engine` — a fresh `AsyncEngine` for `sql_kind` (a SQLite file or a PostgreSQL schema).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core.testing import POSTGRES_DSN_ENV, postgres_dsn, temporary_sql_engine

__all__ = ["backend_kind", "sql_engine", "sql_kind"]


def _check_postgres(kind: str) -> None:
    if kind == "postgres" and not postgres_dsn():
        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CONTRACTSPEC_REQUIRE_POSTGRES=1 but {POSTGRES_DSN_ENV} is unset")
        pytest.skip(f"PostgreSQL tests need {POSTGRES_DSN_ENV}")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    """`memory`, `sqlite` or `postgres`."""
    kind: str = request.param
    _check_postgres(kind)
    return kind


@pytest.fixture(params=["sqlite", "postgres"])
def sql_kind(request: pytest.FixtureRequest) -> str:
    """`sqlite` or `postgres`."""
    kind: str = request.param
    _check_postgres(kind)
    return kind


@pytest.fixture
async def sql_engine(sql_kind: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A fresh engine on `sql_kind`, disposed (and its PostgreSQL schema dropped) afterwards."""
    async with temporary_sql_engine(sql_kind, tmp_path) as engine:
        yield engine
