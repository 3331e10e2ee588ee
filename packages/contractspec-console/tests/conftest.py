"""Shared fixtures of the console tests: backends (memory, SQLite file, PostgreSQL schema) and a
real Chromium for the browser tests (`served_console`, `browser_type_launch_args`).

Browser tests are plain sync tests (sync Playwright cannot run inside an event loop). They need
`CONTRACTSPEC_CHROMIUM` (the path `.ci/install-chromium DIR | tail -1` prints); without it they
are skipped, unless `CONTRACTSPEC_REQUIRE_BROWSER=1`, which makes them fail.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from console_support import build_registry, serve_console

from contractspec.core import Backend, MemoryBackend, SpecRegistry
from contractspec.core.testing import temporary_sql_engine
from contractspec.core.testing.fixtures import backend_kind, sql_engine, sql_kind

__all__ = ["backend_kind", "sql_engine", "sql_kind"]

CHROMIUM_ENV = "CONTRACTSPEC_CHROMIUM"
#: Fixtures of pytest-playwright's sync API; tests using them run after every other test.
BROWSER_FIXTURES = frozenset({"page", "context", "browser", "browser_type", "playwright"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser tests last: sync Playwright keeps its event loop running in the main
    thread while it is started, and pytest-asyncio cannot start a test's loop meanwhile.

    Order: tests without a browser; then tests whose module starts and stops its own
    `sync_playwright()` (no `playwright` fixture); last the tests on pytest-playwright's fixtures,
    whose `playwright` is session-scoped (two sync Playwrights cannot run at once).
    """

    def rank(item: pytest.Item) -> int:
        names = set(getattr(item, "fixturenames", ()))
        if not BROWSER_FIXTURES & names:
            return 0
        return 2 if "playwright" in names else 1

    items.sort(key=rank)


REQUIRE_BROWSER_ENV = "CONTRACTSPEC_REQUIRE_BROWSER"


@pytest.fixture
def registry() -> SpecRegistry:
    """A fresh registry of the shop app."""
    return build_registry()


@pytest.fixture
async def backend(
    backend_kind: str, registry: SpecRegistry, tmp_path: Path
) -> AsyncIterator[Backend]:
    """The shop app's backend on memory, a SQLite file or a PostgreSQL schema."""
    if backend_kind == "memory":
        yield MemoryBackend()
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        yield sql


def chromium_path() -> str:
    """The Chromium executable for browser tests; skip (or fail when required) without one."""
    path = os.environ.get(CHROMIUM_ENV, "")
    if not path:
        if os.environ.get(REQUIRE_BROWSER_ENV) == "1":
            pytest.fail(
                f"{REQUIRE_BROWSER_ENV}=1 but {CHROMIUM_ENV} is unset; run "
                f'export {CHROMIUM_ENV}="$(.ci/install-chromium ~/.cache/contractspec-browser | tail -1)"'
            )
        pytest.skip(f"browser tests need {CHROMIUM_ENV} (see .ci/install-chromium)")
    if not Path(path).exists():
        pytest.fail(f"{CHROMIUM_ENV}={path} does not exist; rerun .ci/install-chromium")
    return path


@pytest.fixture(scope="session")
def base_url() -> str | None:
    """No base URL: tests use the served console's absolute URLs. (Replaces pytest-playwright's
    fallback fixture, an instance-method session fixture that pytest 9 warns about.)"""
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch arguments with the installed Chromium (never --single-process)."""
    return {**browser_type_launch_args, "executable_path": chromium_path(), "headless": True}


@pytest.fixture
def served_console(tmp_path: Path) -> Iterator[str]:
    """The shop console on a SQLite file, served by uvicorn in a thread; yields its base URL
    (mounted under `/admin` in a Starlette app)."""
    chromium_path()
    with serve_console(tmp_path / "shop.db") as url:
        yield url
