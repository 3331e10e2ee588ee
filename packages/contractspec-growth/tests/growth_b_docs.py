"""Execute the Python blocks of a Markdown page, in order, and capture what each prints.

A page's ```python blocks share one namespace, like notebook cells. A ```text block right after
a Python block is that cell's expected output; `run_markdown` returns both so tests can compare.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import attrs

_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.M | re.S)


@attrs.frozen
class Cell:
    """One executed Python block."""

    line: int
    source: str
    expected: str | None
    output: str


def run_markdown(path: Path) -> list[Cell]:
    """Run every ```python block of `path` in one namespace; pair each with its ```text block."""
    text = path.read_text(encoding="utf-8")
    blocks = [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1, m.end())
        for m in _FENCE.finditer(text)
    ]
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    cells: list[Cell] = []
    for i, (lang, body, line, end) in enumerate(blocks):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
            between = text[end : text.find("```text", end)]
            if between.strip() == "":
                expected = blocks[i + 1][1]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(body, f"{path.name}:{line}", "exec"), namespace)
        cells.append(Cell(line, body, expected, buffer.getvalue()))
    return cells
