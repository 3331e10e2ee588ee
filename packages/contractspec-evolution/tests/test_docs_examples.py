"""The Python examples of docs/evolution run and print what the pages show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from contractspec.core.testing.docs import printed_by_python_blocks

DOCS = Path(__file__).resolve().parents[3] / "docs" / "evolution"
_TEXT = re.compile(r"```text\n(.*?)```", re.DOTALL)


def run_page(name: str) -> str:
    """Execute every python block of a page in one namespace; return stdout."""
    return printed_by_python_blocks(DOCS / f"{name}.md")


def shown(name: str) -> list[str]:
    """The output blocks of a page, as lines ('...' matches anything)."""
    blocks = _TEXT.findall((DOCS / f"{name}.md").read_text(encoding="utf-8"))
    return [line for b in blocks for line in b.splitlines()]


def matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


@pytest.mark.parametrize("page", ["telemetry", "detection", "suggestions"])
def test_page_prints_what_it_shows(page: str) -> None:
    """Every printed line equals the page's output block."""
    printed = run_page(page).splitlines()
    expected = shown(page)
    assert printed == expected


def test_index_runs_the_loop_end_to_end() -> None:
    """The overview's end-to-end example detects, suggests, approves and writes the envelope."""
    printed = run_page("index").splitlines()
    expected = list(_TEXT.findall((DOCS / "index.md").read_text(encoding="utf-8"))[1].splitlines())
    assert len(printed) == len(expected) == 4
    for want, got in zip(expected, printed, strict=True):
        assert matches(want, got), (want, got)
