"""The Python examples of the contractspec-testing docs run as written (docs cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.core.testing.docs import run_python_blocks

ROOT = Path(__file__).resolve().parents[3]
PAGES = [
    "docs/testing/index.md",
    "docs/testing/recording.md",
    "docs/testing/golden.md",
    "docs/testing/plugin.md",
    "docs/testing/redteam.md",
]


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page: str) -> None:
    """Every ```python block of the page runs, in order, in one namespace."""
    path = ROOT / page
    if not path.is_file():
        pytest.skip(f"{page} is not part of this checkout")
    run_python_blocks(path)
