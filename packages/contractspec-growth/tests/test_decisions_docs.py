"""The decision-loop docs page runs, and prints exactly what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from growth_b_docs import run_markdown

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "growth" / "decisions.md"


def test_decisions_page_runs_and_its_outputs_are_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """The four examples (reward model in the IR, rewards from events, tenants and overrides,
    off-policy evaluation) print the text shown under them."""
    monkeypatch.chdir(ROOT)
    cells = run_markdown(PAGE)
    assert len(cells) == 4
    for cell in cells:
        assert cell.expected is not None, f"decisions.md:{cell.line} shows no output"
        assert cell.output == cell.expected, f"decisions.md:{cell.line} printed something else"
