"""`run_python_blocks_in_kernel` when the kernel process dies while starting.

A real kernel spec whose launcher exits before the kernel binds its sockets (as a kernel does when
it is killed, or cannot start, before replying to `kernel_info`): the page is run in a second fresh
kernel when the first died before any block ran, and fails with a message naming the page when
every start fails. Blocks never run twice: the counter file a block appends to holds one line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from contractspec.core.testing.docs import run_python_blocks_in_kernel

LAUNCHER = """
import os, sys
marker, mode = sys.argv[1], sys.argv[2]
starts = int(open(marker).read()) if os.path.exists(marker) else 0
with open(marker, "w") as f:
    f.write(str(starts + 1))
if mode == "always" or starts == 0:
    sys.exit(3)  # dies before binding: "Kernel died before replying to kernel_info"
from ipykernel import kernelapp
kernelapp.launch_new_instance(argv=sys.argv[3:])
"""


def _kernel_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> Path:
    """A kernel spec `dies-<mode>` on JUPYTER_PATH; returns the file counting its starts."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    marker = tmp_path / "starts"
    spec_dir = tmp_path / "jupyter" / "kernels" / f"dies-{mode}"
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, str(launcher), str(marker), mode, "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": f"dies {mode}", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return marker


def _page(tmp_path: Path) -> Path:
    page = tmp_path / "page.md"
    counter = tmp_path / "ran"
    page.write_text(
        "# Page\n\n```python\n"
        f"with open({str(counter)!r}, 'a') as f:\n    f.write('block 1\\n')\n"
        "print('hello from the kernel')\n```\n"
    )
    return page


def test_a_kernel_that_dies_starting_is_started_once_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _kernel_spec(tmp_path, monkeypatch, "first")
    notebook = run_python_blocks_in_kernel(_page(tmp_path), kernel_name="dies-first", timeout=60)
    assert marker.read_text() == "2"  # the first start died, the second ran the page
    assert (tmp_path / "ran").read_text() == "block 1\n"  # the block ran exactly once
    printed = "".join(o.get("text", "") for o in notebook.cells[0].outputs)
    assert printed == "hello from the kernel\n"


def test_a_kernel_that_never_starts_fails_the_page_after_two_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = _kernel_spec(tmp_path, monkeypatch, "always")
    page = _page(tmp_path)
    with pytest.raises(AssertionError, match=r"page\.md: the Jupyter kernel died"):
        run_python_blocks_in_kernel(page, kernel_name="dies-always", timeout=60)
    assert marker.read_text() == "2"
    assert not (tmp_path / "ran").exists()
