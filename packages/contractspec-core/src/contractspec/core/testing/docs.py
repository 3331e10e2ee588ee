"""Run the Python examples of Markdown documentation, so docs cannot rot.

```python
from contractspec.core.testing.docs import run_python_blocks

def test_guide_examples_run() -> None:
    run_python_blocks("docs/guide.md")
```

`run_python_blocks_in_kernel` runs the same blocks as the cells of a notebook in a real Jupyter
kernel (nbclient + ipykernel, `pip install nbclient ipykernel`), where an event loop is already
running, as it is for every notebook user.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import sys
import tempfile
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from nbformat import NotebookNode

__all__ = [
    "PYTHON_BLOCK",
    "printed_by_python_blocks",
    "python_blocks",
    "run_python_blocks",
    "run_python_blocks_in_kernel",
]

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


#: ANSI colour codes of IPython tracebacks.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_python_blocks_in_kernel(
    path: str | os.PathLike[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
    kernel_name: str = "python3",
    env: dict[str, str] | None = None,
) -> NotebookNode:
    """Execute every ```python block of a Markdown file as the cells of one notebook, in a real
    Jupyter kernel.

    One fresh kernel runs the page: the blocks are its cells, in order, so they share one
    namespace, a cell's last expression is displayed as Jupyter displays it (rich reprs included),
    and the code runs while the kernel's event loop is running, as in every notebook.

    `kernel_name` `"python3"` is the kernel of the running interpreter (`sys.executable`, with
    `ipykernel` installed in it). Needs `nbclient` and `ipykernel` (`pip install nbclient ipykernel`).

    On POSIX the kernel talks over Unix sockets in a temporary directory of its own (ZeroMQ `ipc`),
    so parallel page runs and servers started by other tests cannot take its TCP ports. A kernel
    that dies while starting, before any block ran, is started once more; one that dies after a
    block ran fails the page.

    Args:
        path: The Markdown file.
        cwd: Working directory of the kernel; the current directory by default.
        timeout: Seconds each cell may run.
        kernel_name: The Jupyter kernel spec to start.
        env: Environment of the kernel process; a copy of `os.environ` by default.

    Returns:
        The executed notebook (`nbformat.NotebookNode`): `cells[i].outputs` holds what block
        `i + 1` printed and displayed (`stream`, `display_data`, `execute_result` with their
        MIME bundles, e.g. `image/png`).

    Raises:
        AssertionError: The page has no Python block, or a block raised (the message names the
            page, the block number and the kernel's traceback) or ran longer than `timeout`, or
            the kernel died (after a block ran, or twice while starting).
        ImportError: nbclient or ipykernel is not installed.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError
        from traitlets.config import Config
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "running docs in a Jupyter kernel needs nbclient and ipykernel: "
            "pip install nbclient ipykernel"
        ) from exc
    from contractspec.core.sync import run_sync

    page = Path(path)
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python examples"
    # nbformat's v4 constructors are not annotated: they return a NotebookNode
    notebook: NotebookNode = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    notebook.cells = [
        nbformat.v4.new_code_cell(code.rstrip("\n"))  # type: ignore[no-untyped-call]
        for code in blocks
    ]
    workdir = str(Path(cwd) if cwd is not None else Path.cwd())
    for attempt in (1, 2):
        for cell in notebook.cells:
            cell.outputs, cell.execution_count = [], None
        with tempfile.TemporaryDirectory(prefix="cs-kernel-") as sockets:
            # Unix sockets in a directory of this run's own: the kernel never races another
            # process (or another page's kernel) for a TCP port between choosing and binding it
            config = Config()
            if os.name == "posix":  # ZeroMQ's ipc transport is Unix-only
                config.KernelManager.transport = "ipc"
                config.KernelManager.ip = os.path.join(sockets, "kernel")
            client = NotebookClient(
                notebook,
                timeout=int(timeout),
                kernel_name=kernel_name,
                resources={"metadata": {"path": workdir}},
                shutdown_kernel="immediate",
                config=config,
            )
            try:
                # on a loop of its own, closed afterwards (nbclient's sync `execute` leaves its
                # loop open)
                run_sync(client.async_execute(env=dict(os.environ) if env is None else env))
            except (CellExecutionError, CellTimeoutError) as exc:
                failed = next(
                    (
                        number
                        for number, cell in enumerate(notebook.cells, start=1)
                        if any(out.get("output_type") == "error" for out in cell.get("outputs", []))
                    ),
                    None,
                )
                where = f"block {failed}" if failed is not None else "a block"
                raise AssertionError(
                    f"{page} [{where}] failed in a Jupyter kernel:\n{_ANSI.sub('', str(exc))}"
                ) from None
            except RuntimeError as exc:
                # "Kernel died before replying to kernel_info": the kernel process exited while
                # starting, before any block ran. Start one fresh kernel again; a kernel that dies
                # once a block has run is the page's failure and is reported
                started = any(cell.get("execution_count") for cell in notebook.cells)
                if started or attempt == 2 or "kernel" not in str(exc).lower():
                    raise AssertionError(
                        f"{page}: the Jupyter kernel died ({exc}); blocks run before: "
                        f"{sum(1 for cell in notebook.cells if cell.get('execution_count'))}"
                    ) from exc
                continue
            finally:
                # nbclient registers its kernel clean-up at exit for every run; the kernel is
                # shut down by now (and a failed start leaves nothing to clean up)
                atexit.unregister(client._cleanup_kernel)
        break
    return notebook
