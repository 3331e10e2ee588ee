"""Core's modules import each other without cycles, and the registry stands on its own."""

from __future__ import annotations

import ast
from pathlib import Path

import contractspec.core

ROOT = Path(contractspec.core.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = ["contractspec", "core", *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(path: Path, *, lazy: bool) -> set[str]:
    """Modules of contractspec.core imported at run time (never those under TYPE_CHECKING);
    with `lazy`, also the imports inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if lazy:
            nodes: list[ast.AST] = list(ast.walk(node))
        elif isinstance(node, ast.Try):  # optional dependencies: `try: import x except ...`
            nodes = [n for n in node.body if isinstance(n, ast.Import | ast.ImportFrom)]
        else:
            nodes = [node]
        for item in nodes:
            if isinstance(item, ast.ImportFrom) and item.module and item.level == 0:
                if item.module.startswith("contractspec.core"):
                    found.add(item.module)
            elif isinstance(item, ast.Import):
                found.update(a.name for a in item.names if a.name.startswith("contractspec.core"))
    return found


def _graph(*, lazy: bool) -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {
        name: {m for m in _runtime_imports(path, lazy=lazy) if m in modules and m != name}
        for name, path in modules.items()
        if not name.endswith(".core")  # the package's __init__ re-exports everything
    }


def test_core_modules_import_without_cycles() -> None:
    """No chain of imports (module-level or inside functions) leads from a core module back to
    itself (e.g. ir -> diff -> ir, registry -> executor -> registry)."""
    graph = _graph(lazy=True)
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        if node in stack:
            cycles.append([*stack[stack.index(node) :], node])
            return
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, stack, done)
        stack.pop()
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        visit(module, [], done)
    assert cycles == []


def test_the_registry_needs_neither_the_executor_nor_the_ir() -> None:
    """Importing the registry module pulls in no executor, pipeline, IR or diff module (its
    `to_ir()` convenience imports the IR module only when called)."""
    graph = _graph(lazy=False)
    reached: set[str] = set()
    todo = ["contractspec.core.registry"]
    while todo:
        module = todo.pop()
        for nxt in graph.get(module, ()):
            if nxt not in reached:
                reached.add(nxt)
                todo.append(nxt)
    forbidden = {
        m for m in reached if m.rsplit(".", 1)[-1] in ("executor", "ir", "diff", "handler")
    }
    assert forbidden == set()
    assert not any(".pipeline" in m for m in reached)
