"""The Python examples in the README and the core docs run as written (docs cannot rot)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from contractspec.core.testing.docs import run_python_blocks

ROOT = Path(__file__).resolve().parents[3]
PAGES = [
    "README.md",
    "docs/core/index.md",
    "docs/core/runtime.md",
    "docs/core/workflows.md",
    "docs/core/sql.md",
    "docs/core/ir.md",
    "docs/core/diff.md",
    "docs/core/codegen.md",
    "docs/core/http.md",
    "docs/core/fastapi.md",
    "docs/core/logging.md",
    "docs/core/cli.md",
]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Pages that configure logging (docs/core/logging.md) leave nothing behind for later tests."""
    root, ours = logging.getLogger(), logging.getLogger("contractspec")
    handlers, levels = list(root.handlers), (root.level, ours.level)
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    for handler in list(root.handlers):
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of the page runs, in order, in one namespace (asserts included)."""
    path = ROOT / page
    if not path.is_file():
        pytest.skip(f"{page} is not part of this checkout")
    run_python_blocks(path)


def test_getting_started_runs_in_an_empty_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/getting-started.md, as a new user runs it: app.py's `todo.db` lands in their directory."""
    pytest.importorskip("httpx")
    monkeypatch.chdir(tmp_path)
    run_python_blocks(ROOT / "docs" / "getting-started.md")
    with contextlib.closing(sqlite3.connect(tmp_path / "todo.db")) as db:
        rows = db.execute("SELECT org_id, title, done FROM todo_item").fetchall()
    # one row, under the API key's tenant: the rejected calls (422, 401) left nothing
    assert rows == [("acme", "Write docs", 0)]
