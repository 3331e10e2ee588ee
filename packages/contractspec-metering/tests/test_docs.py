"""The examples in docs/metering run as written (docs cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.core.testing.docs import python_blocks, run_python_blocks

DOCS = Path(__file__).resolve().parents[3] / "docs" / "metering"
PAGES = [p.name for p in sorted(DOCS.glob("*.md")) if python_blocks(p)] if DOCS.is_dir() else []


@pytest.mark.parametrize("page", PAGES)
def test_docs_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each python block of the page executes, in order (its asserts included), in a scratch dir."""
    monkeypatch.chdir(tmp_path)
    run_python_blocks(DOCS / page)
