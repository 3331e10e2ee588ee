"""The Python examples in the README and the core docs run as written (docs cannot rot)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from contractspec.core import Executor

ROOT = Path(__file__).resolve().parents[3]
PAGES = ["README.md", "docs/core/index.md", "docs/core/runtime.md", "docs/core/sql.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page: str) -> None:
    """Every ```python block of the page runs, in order, in one namespace."""
    path = ROOT / page
    if not path.is_file():
        pytest.skip(f"{page} is not part of this checkout")
    blocks = BLOCK.findall(path.read_text(encoding="utf-8"))
    assert blocks, f"{page} has no python examples"
    module = types.ModuleType("docs_example_" + re.sub(r"\W", "_", page))
    sys.modules[module.__name__] = module  # pydantic resolves annotations through the module
    try:
        for number, code in enumerate(blocks, start=1):
            exec(
                compile(code, f"{page}[block {number}]", "exec", dont_inherit=True), module.__dict__
            )
    finally:
        del sys.modules[module.__name__]
        for value in module.__dict__.values():
            if isinstance(value, Executor):
                value.close()  # examples may use execute_sync, which starts an event loop
