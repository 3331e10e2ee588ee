"""The journeys docs page runs as a script and prints exactly what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from growth_b_docs import run_markdown

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "growth" / "journeys.md"


def test_journeys_page_runs_and_its_outputs_are_current(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every example runs in an empty directory; each ```text block is what its cell printed."""
    # The page binds the check job with contractspec-jobs and nudges through contractspec-bus;
    # growth does not depend on them, so the isolation session (growth alone) skips the page.
    pytest.importorskip("contractspec.jobs")
    pytest.importorskip("contractspec.bus")
    monkeypatch.chdir(tmp_path)
    cells = run_markdown(PAGE)
    assert len(cells) == 6
    shown = [cell for cell in cells if cell.expected is not None]
    assert len(shown) == 5
    for cell in shown:
        assert cell.output == cell.expected, f"journeys.md:{cell.line} printed something else"
