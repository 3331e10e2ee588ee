"""The Python examples of the identity docs run as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.core.testing.docs import run_python_blocks

DOCS = Path(__file__).resolve().parents[3] / "docs" / "identity"
PAGES = ["index.md", "roles.md", "permissions.md", "tenancy.md"]


@pytest.mark.parametrize("page", PAGES)
def test_doc_examples_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of the page executes, in order, its assertions included."""
    run_python_blocks(DOCS / page)
