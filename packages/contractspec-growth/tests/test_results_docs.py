"""The growth docs pages (stats, analytics, notebook) run, and print what they show."""

from __future__ import annotations

from pathlib import Path

import pytest
from growth_b_data import cdnow_path
from growth_b_docs import run_markdown

ROOT = Path(__file__).resolve().parents[3]
PAGES = ["stats.md", "analytics.md", "notebook.md"]


@pytest.mark.parametrize("page", PAGES)
def test_docs_page_runs_and_its_outputs_are_current(
    page: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every Python block executes from the project root and prints exactly the text shown under it."""
    cdnow_path()  # skips with a reason when the shared data is absent
    monkeypatch.chdir(ROOT)
    cells = run_markdown(ROOT / "docs" / "growth" / page)
    assert cells, f"{page} has no python blocks"
    checked = [c for c in cells if c.expected is not None]
    assert checked, f"{page} shows no output to check"
    for cell in checked:
        assert cell.output == cell.expected, f"{page}:{cell.line} printed something else"


def test_notebook_plot_image_exists() -> None:
    """The lift plot the notebook page embeds is committed next to it."""
    image = ROOT / "docs" / "growth" / "notebook-lift.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
