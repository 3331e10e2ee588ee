"""Run the Python examples of Markdown documentation, so docs cannot rot.

```python
from contractspec.core.testing.docs import run_python_blocks

def test_guide_examples_run() -> None:
    run_python_blocks("docs/guide.md")
```
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

__all__ = ["PYTHON_BLOCK", "printed_by_python_blocks", "python_blocks", "run_python_blocks"]

#: A fenced ```python block at the start of a line, up to its closing fence.
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: str | os.PathLike[str]) -> list[str]:
    """The source of every fenced ```python block of a Markdown file, in order."""
    return PYTHON_BLOCK.findall(Path(path).read_text(encoding="utf-8"))


def run_python_blocks(path: str | os.PathLike[str], *, require: bool = True) -> dict[str, Any]:
    """Execute every ```python block of a Markdown file, in order, in one fresh module namespace.

    The namespace is registered in `sys.modules` while the blocks run (pydantic resolves
    annotations through the module), and is compiled without inheriting this module's
    `from __future__` flags. Executors the examples leave in the namespace are closed afterwards
    (their `execute_sync` event loops).

    Args:
        path: The Markdown file.
        require: Fail when the page has no Python block.

    Returns:
        The namespace after the last block.

    Raises:
        AssertionError: `require` is set and the page has no Python block.
        Exception: Whatever an example raises (including its failed `assert`s), with the page and
            block number in the traceback.
    """
    page = Path(path)
    blocks = python_blocks(page)
    if require:
        assert blocks, f"{page} has no python examples"
    module = types.ModuleType("docs_example_" + re.sub(r"\W", "_", str(page)))
    sys.modules[module.__name__] = module
    try:
        for number, code in enumerate(blocks, start=1):
            exec(
                compile(code, f"{page}[block {number}]", "exec", dont_inherit=True), module.__dict__
            )
    finally:
        del sys.modules[module.__name__]
        for value in list(module.__dict__.values()):
            close = getattr(value, "close", None)
            if type(value).__name__ == "Executor" and callable(close):
                close()
    return module.__dict__


def printed_by_python_blocks(path: str | os.PathLike[str]) -> str:
    """Run the page's Python blocks (as `run_python_blocks`) and return what they printed.

    Library log lines (structlog) are captured and dropped, so only the examples' own `print`
    output is returned: compare it with the output the page shows.
    """
    from structlog.testing import capture_logs

    out = io.StringIO()
    with contextlib.redirect_stdout(out), capture_logs():
        run_python_blocks(path)
    return out.getvalue()
