"""The `contractspec` command line (install `contractspec-core[cli]`)."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from contractspec.core.errors import ConfigurationError, ContractSpecError
from contractspec.core.registry import SpecRegistry

__all__ = ["app", "load_registry", "main"]

try:
    import typer
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "the contractspec CLI needs typer: pip install 'contractspec-core[cli]'"
    ) from exc

app = typer.Typer(help="ContractSpec: spec-first, policy-safe services.", no_args_is_help=True)
spec_app = typer.Typer(help="Inspect specs.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")


def load_registry(target: str) -> SpecRegistry:
    """Import `MODULE:OBJECT` and return the `SpecRegistry` it names (or that a callable returns).

    Raises:
        ConfigurationError: Malformed target, import failure, or not a registry.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"expected MODULE:OBJECT (e.g. myapp.spec:registry), got {target!r}"
        )
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if callable(obj) and not isinstance(obj, SpecRegistry):
        obj = obj()
    if not isinstance(obj, SpecRegistry):
        raise ConfigurationError(f"{target} is a {type(obj).__name__}, not a SpecRegistry")
    return obj


@spec_app.command("list")
def spec_list(
    target: str = typer.Argument(..., help="MODULE:OBJECT naming a SpecRegistry"),
) -> None:
    """List every spec of a registry: kind, name@version, and a one-line summary."""
    try:
        registry = load_registry(target)
    except ContractSpecError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None
    for spec in registry:
        kind = getattr(spec, "kind", "operation")
        kind = kind.value if hasattr(kind, "value") else kind
        summary = (getattr(spec, "description", "") or "").strip().splitlines()
        typer.echo(
            f"{kind:<9} {spec.name}@{spec.version}  {summary[0] if summary else ''}".rstrip()
        )


def main() -> None:
    """Entry point of the `contractspec` script."""
    app()
