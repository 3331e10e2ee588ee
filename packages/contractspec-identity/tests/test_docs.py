"""The Python examples of the identity docs run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[3] / "docs" / "identity"
PAGES = ["index.md", "roles.md", "permissions.md", "tenancy.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


@pytest.mark.parametrize("page", PAGES)
def test_doc_examples_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of the page executes without error (its assertions included)."""
    blocks = BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))
    assert blocks, f"{page} has no Python example"
    for block in blocks:
        exec(compile(block, f"docs/identity/{page}", "exec"), {"__name__": f"docs_{page[:-3]}"})
