"""Every Python example of the README and docs/ runs unchanged in a real Jupyter kernel.

Each page becomes one notebook whose cells are its ```python blocks, executed with nbclient in a
fresh ipykernel of this interpreter: the code runs while the kernel's event loop is running (where
`asyncio.run()` refuses to run), with no `%matplotlib` magic and no `MPLBACKEND`, as a notebook
user's code does. The plain-script runs of the same pages live in each package's tests.
"""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from nbformat import NotebookNode

from contractspec.core.testing.docs import python_blocks, run_python_blocks_in_kernel

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    str(p.relative_to(ROOT))
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    if python_blocks(p)
]


def _fresh_kernel_env() -> dict[str, str]:
    """The test's environment minus what would make the kernel less fresh than a user's."""
    env = dict(os.environ)
    env.pop("MPLBACKEND", None)
    return env


def _empty_project(factory: pytest.TempPathFactory) -> Path:
    """A new empty directory `<tmp>/project` with `<tmp>/shared` linked to the shared data sets."""
    base = factory.mktemp("page")
    (base / "shared").symlink_to(ROOT.parent / "shared", target_is_directory=True)
    project = base / "project"
    project.mkdir()
    return project


def _outputs(notebook: object, block: int) -> list[dict[str, object]]:
    cells = notebook.cells  # type: ignore[attr-defined]
    return list(cells[block - 1].outputs)


#: Blocks (1-based) that end with a figure and must be displayed as a PNG image.
IMAGES = {"docs/growth/notebook.md": [-1]}


def _displayed(notebook: object, block: int) -> dict[str, object]:
    """The MIME bundle a block's last expression displayed (its `execute_result`)."""
    results = [o for o in _outputs(notebook, block) if o.get("output_type") == "execute_result"]
    assert len(results) == 1, f"block {block} displayed {len(results)} results"
    data = results[0]["data"]
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def page_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[NotebookNode]]]:
    """The selected pages, each executing in its own kernel, two kernels at a time.

    Each kernel starts in an empty project directory (files a page writes, such as
    `getting-started.md`'s `todo.db`, land there), beside the shared data sets: the data paths
    of the pages, `../shared/data/...`, resolve as they do from the project root.

    Page runs are independent processes: running two at once keeps both CI cores busy while one
    kernel starts or waits. Each page's test waits for its own run and reports its own failure.
    """
    selected = [
        item.callspec.params["page"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_page_runs_in_a_jupyter_kernel"
    ]
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="kernel-page")
    runs = {
        page: pool.submit(
            run_python_blocks_in_kernel,
            ROOT / page,
            cwd=_empty_project(tmp_path_factory),
            env=_fresh_kernel_env(),
            timeout=180,
        )
        for page in selected
    }
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_in_a_jupyter_kernel(
    page: str, page_runs: dict[str, Future[NotebookNode]]
) -> None:
    """Every python block of the page runs as a notebook cell, in order, asserts included;
    figures a block ends with are displayed as images."""
    notebook = page_runs[page].result()
    for block in IMAGES.get(page, []):
        number = block if block > 0 else len(notebook.cells) + 1 + block
        png = _displayed(notebook, number).get("image/png")
        assert isinstance(png, str), f"{page} block {number} shows no image"
        assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_display_as_image_and_tables_in_a_fresh_kernel(tmp_path: Path) -> None:
    """`result.plot()`, `result` and `assignments` as a cell's last line render as PNG and HTML."""
    page = tmp_path / "display.md"
    page.write_text(
        "```python\n"
        "from contractspec.growth import ExperimentRegistry, ExperimentRunner, define_experiment\n"
        "from contractspec.growth.stats import SufficientStats, analyze_experiment\n"
        "result = analyze_experiment(\n"
        "    {'conversion': {'control': SufficientStats.from_proportion(100, 1000),\n"
        "                    'B': SufficientStats.from_proportion(130, 1000)}},\n"
        "    control='control', experiment='demo', metric_types={'conversion': 'proportion'},\n"
        ")\n"
        "spec = define_experiment('demo', ['control', 'B'])\n"
        "assignments = ExperimentRunner(ExperimentRegistry(spec)).assign_many(spec, ['u1', 'u2'])\n"
        "```\n\n"
        "```python\nresult.plot()\n```\n\n"
        "```python\nresult\n```\n\n"
        "```python\nassignments\n```\n",
        encoding="utf-8",
    )
    notebook = run_python_blocks_in_kernel(page, cwd=tmp_path, env=_fresh_kernel_env())
    plot = _displayed(notebook, 2)
    assert base64.b64decode(str(plot["image/png"]))[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(plot["text/plain"]).startswith("<NotebookFigure size 700x")
    assert "Experiment demo" in str(_displayed(notebook, 3)["text/html"])
    assert "Assignments of demo: 2 subjects" in str(_displayed(notebook, 4)["text/html"])


def test_every_docs_page_with_examples_is_covered() -> None:
    """The README, the notebook page and the pages of every package are among the kernel runs."""
    assert "README.md" in PAGES
    assert "docs/growth/notebook.md" in PAGES
    assert {Path(p).parts[1] for p in PAGES if p.startswith("docs/")} >= {
        "core",
        "identity",
        "bus",
        "jobs",
        "agent",
        "growth",
        "evolution",
        "testing",
    }


def test_the_kernel_is_this_interpreter_and_a_loop_is_running(tmp_path: Path) -> None:
    """The kernel runs the workspace's python, inside a running event loop, pyplot not imported."""
    page = tmp_path / "probe.md"
    page.write_text(
        "```python\n"
        "import asyncio, sys\n"
        "asyncio.get_running_loop()  # raises when no loop runs\n"
        "print(sys.executable, 'matplotlib.pyplot' in sys.modules, sep='|')\n"
        "```\n",
        encoding="utf-8",
    )
    notebook = run_python_blocks_in_kernel(page, cwd=tmp_path, env=_fresh_kernel_env())
    [stream] = _outputs(notebook, 1)
    executable, pyplot_loaded = str(stream["text"]).strip().split("|")
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert pyplot_loaded == "False"


def test_a_failing_block_names_the_page_and_block(tmp_path: Path) -> None:
    """A block that raises fails the run with the page, the block number and the traceback."""
    page = tmp_path / "broken.md"
    page.write_text(
        "```python\nx = 1\n```\n\ntext\n\n```python\nassert x == 2, 'x is not two'\n```\n",
        encoding="utf-8",
    )
    with pytest.raises(AssertionError) as caught:
        run_python_blocks_in_kernel(page, cwd=tmp_path, env=_fresh_kernel_env())
    message = str(caught.value)
    assert f"{page} [block 2] failed in a Jupyter kernel" in message
    assert "AssertionError: x is not two" in message
