"""The Python examples in the README and the core docs run as written (docs cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.core.testing.docs import run_python_blocks

ROOT = Path(__file__).resolve().parents[3]
PAGES = [
    "README.md",
    "docs/core/index.md",
    "docs/core/runtime.md",
    "docs/core/sql.md",
    "docs/core/ir.md",
    "docs/core/diff.md",
    "docs/core/codegen.md",
    "docs/core/http.md",
]


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every ```python block of the page runs, in order, in one namespace (asserts included)."""
    path = ROOT / page
    if not path.is_file():
        pytest.skip(f"{page} is not part of this checkout")
    run_python_blocks(path)
