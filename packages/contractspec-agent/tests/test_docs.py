"""The Python examples of docs/agent run as written (so the docs cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[3] / "docs" / "agent"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = sorted(p.name for p in DOCS.glob("*.md")) if DOCS.is_dir() else []


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_of_the_page_run(page: str) -> None:
    """Every ```python block of the page runs, in order, in one namespace, and its asserts hold."""
    blocks = BLOCK.findall((DOCS / page).read_text())
    namespace: dict[str, object] = {"__name__": f"docs_agent_{page[:-3]}"}
    for number, code in enumerate(blocks, start=1):
        exec(compile(code, f"{page}#block{number}", "exec", dont_inherit=True), namespace)
    assert isinstance(blocks, list)


def test_every_page_is_in_the_nav() -> None:
    """mkdocs.yml lists each docs/agent page."""
    nav = (DOCS.parents[1] / "mkdocs.yml").read_text()
    assert [p for p in PAGES if f"agent/{p}" not in nav] == []
