"""The bandits docs page runs, and prints exactly what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from growth_b_docs import run_markdown

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "growth" / "bandits.md"


def test_bandits_page_runs_and_its_outputs_are_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both examples (sync in-memory, async on a SQLite log) print the text shown under them."""
    monkeypatch.chdir(ROOT)
    cells = run_markdown(PAGE)
    assert len(cells) == 2
    for cell in cells:
        assert cell.expected is not None, f"bandits.md:{cell.line} shows no output"
        assert cell.output == cell.expected, f"bandits.md:{cell.line} printed something else"
