"""Importing ContractSpec stays light: heavy dependencies load when a feature needs them.

Each import check runs in a fresh interpreter and looks at `sys.modules` (never at a clock):
`import contractspec.core` must not load rich (pulled in by `structlog.dev`), structlog itself,
SQLAlchemy, Jinja2, numpy, OpenTelemetry or `importlib.metadata`; a call through the executor
adds pydantic and the runtime but still none of the others. The public surface stays whole:
every name in each package's `__all__` resolves.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import contractspec.core
from contractspec.core._log import LazyLogger, get_logger

#: Never loaded by `import contractspec.core`, nor by a plain in-memory call.
HEAVY = ("rich", "structlog", "sqlalchemy", "jinja2", "numpy", "opentelemetry", "pygments")

PACKAGES = (
    "contractspec.core",
    "contractspec.identity",
    "contractspec.bus",
    "contractspec.jobs",
    "contractspec.agent",
    "contractspec.growth",
    "contractspec.evolution",
    "contractspec.testing",
)


def _loaded_after(code: str) -> dict[str, list[str]]:
    """Run `code` in a fresh interpreter; return which HEAVY roots and core modules it loaded."""
    probe = (
        f"{code}\n"
        "import json as _json, sys as _sys\n"
        f"_roots = {{m.split('.')[0] for m in _sys.modules}} & {set(HEAVY)!r}\n"
        "print(_json.dumps({'heavy': sorted(_roots),"
        " 'metadata': 'importlib.metadata' in _sys.modules,"
        " 'core': sorted(m for m in _sys.modules if m.startswith('contractspec.core.')),"
        " 'pydantic': 'pydantic' in _sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    result: dict[str, list[str]] = json.loads(out.strip().splitlines()[-1])
    return result


def test_import_core_loads_no_heavy_dependency() -> None:
    """`import contractspec.core` loads none of rich, structlog, SQLAlchemy, Jinja2, numpy,
    OpenTelemetry, `importlib.metadata`, pydantic, nor any core submodule: names load on use."""
    loaded = _loaded_after("import contractspec.core")
    assert loaded == {"heavy": [], "metadata": False, "core": [], "pydantic": False}


def test_a_call_through_the_executor_still_loads_no_heavy_dependency() -> None:
    """Defining an operation and running a call (which logs nothing) imports pydantic and the
    runtime, but still not structlog/rich, SQLAlchemy, Jinja2, numpy or OpenTelemetry."""
    code = (
        "import asyncio\n"
        "from pydantic import BaseModel\n"
        "from contractspec.core import Executor, SpecRegistry, define_command, public\n"
        "class M(BaseModel):\n"
        "    n: int\n"
        "op = define_command('demo.echo', input=M, output=M, auth=public())\n"
        "registry = SpecRegistry(op)\n"
        "@registry.handler(op)\n"
        "async def echo(inp: M, ctx: object) -> M:\n"
        "    return M(n=inp.n + 1)\n"
        "assert asyncio.run(Executor(registry).execute('demo.echo', {'n': 1})).n == 2\n"
    )
    loaded = _loaded_after(code)
    assert loaded["heavy"] == []
    # not checked: importlib.metadata, which pydantic's plugin loader imports for the first model
    assert "contractspec.core.executor" in loaded["core"]


def test_the_first_log_line_imports_structlog() -> None:
    """An anonymous denied call logs through the lazy logger: structlog is imported
    then (not before), and the event reaches structlog with its fields."""
    code = (
        "import asyncio, sys\n"
        "from pydantic import BaseModel\n"
        "from contractspec.core import (\n"
        "    Executor, PolicyDeniedError, SpecRegistry, define_command, requires\n"
        ")\n"
        "class M(BaseModel):\n"
        "    n: int\n"
        "op = define_command('demo.secret', input=M, output=M, auth=requires('secret.read'))\n"
        "registry = SpecRegistry(op)\n"
        "@registry.handler(op)\n"
        "async def h(inp: M, ctx: object) -> M:\n"
        "    return inp\n"
        "executor = Executor(registry)\n"
        "before = 'structlog' in sys.modules\n"
        "from structlog.testing import capture_logs\n"
        "with capture_logs() as logs:\n"
        "    try:\n"
        "        asyncio.run(executor.execute('demo.secret', {'n': 1}))\n"
        "    except PolicyDeniedError:\n"
        "        pass\n"
        "print(before, [e['event'] for e in logs])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "False ['contractspec.denied_unauthenticated']"


def test_lazy_logger_forwards_to_structlog_with_the_name_it_was_given() -> None:
    """`get_logger(name)` logs exactly what `structlog.get_logger(name)` would, and `bind`
    returns a structlog logger carrying the bound context."""
    log = get_logger("contractspec.core.tests")
    assert isinstance(log, LazyLogger)
    assert log.name == "contractspec.core.tests"
    with capture_logs() as logs:
        log.info("demo.event", answer=42)
        log.bind(org_id="o1").warning("demo.bound")
    assert logs == [
        {"event": "demo.event", "answer": 42, "log_level": "info"},
        {"event": "demo.bound", "org_id": "o1", "log_level": "warning"},
    ]


def test_no_library_module_imports_structlog_at_module_level() -> None:
    """Every package logs through `contractspec.core._log.get_logger`: a module-level
    `import structlog` anywhere would bring rich back into every import."""
    src = Path(contractspec.core.__file__).parents[3].parent  # .../packages
    offenders: list[str] = []
    for path in sorted(src.glob("contractspec-*/src/contractspec/**/*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # top level only: imports inside functions are deferred
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            if any(n == "structlog" or n.startswith("structlog.") for n in names):
                offenders.append(f"{path.relative_to(src)}:{node.lineno}")
    assert offenders == [], (
        "use `from contractspec.core._log import get_logger; _log = get_logger(__name__)` "
        f"instead of a module-level structlog import in: {offenders}"
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_resolves(package: str) -> None:
    """Each name in the package's `__all__` is an attribute of it (lazy or not), and `dir()`
    lists every one of them."""
    module = pytest.importorskip(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []
    assert set(module.__all__) <= set(dir(module))


def test_core_version_and_unknown_names() -> None:
    """`__version__` comes from the installed metadata; an unknown name is an AttributeError
    naming it; a submodule is reachable as an attribute after a bare import."""
    assert contractspec.core.__version__ == importlib.metadata.version("contractspec-core")
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = contractspec.core.no_such_name  # type: ignore[attr-defined]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import contractspec.core as c; print(c.executor.Executor.__name__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert out.strip() == "Executor"
