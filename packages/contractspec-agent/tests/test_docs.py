"""The Python examples of docs/agent run as written (so the docs cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.core.testing.docs import python_blocks, run_python_blocks

DOCS = Path(__file__).resolve().parents[3] / "docs" / "agent"
PAGES = sorted(p.name for p in DOCS.glob("*.md")) if DOCS.is_dir() else []


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(DOCS / p)])
def test_python_blocks_of_the_page_run(page: str) -> None:
    """Every ```python block of the page runs, in order, in one namespace, and its asserts hold."""
    run_python_blocks(DOCS / page)


def test_every_page_is_in_the_nav() -> None:
    """mkdocs.yml lists each docs/agent page."""
    nav = (DOCS.parents[1] / "mkdocs.yml").read_text()
    assert [p for p in PAGES if f"agent/{p}" not in nav] == []
