"""The `contractspec-test` command line (install `contractspec-testing[cli]`).

```bash
contractspec-test generate --registry myapp.spec:registry --operation billing.invoice.create \\
    --output tests/golden/ --store sqlite:///traffic.db --days 7 --sample-rate 0.05
contractspec-test operations --store traffic.jsonl
```

`app` is a Typer application, so the core CLI can mount it as `contractspec test ...`.

A mistake (a store that does not exist or cannot be reached, a missing database driver, a bad
registry reference, no traffic to generate from) prints one `error: ...` line and exits with
status 2; nothing is written. On a terminal, replaying recorded calls shows a progress bar.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from contractspec.core import ConfigurationError, SpecRegistry
from contractspec.testing._literal import identifier
from contractspec.testing.errors import TrafficStoreError
from contractspec.testing.generator import (
    GoldenTestGenerator,
    _read_if_exists,
    _write_atomically,
)
from contractspec.testing.golden import load_registry, utcnow
from contractspec.testing.recorder import sampling_fraction
from contractspec.testing.stores import open_store

__all__ = ["app", "main"]

try:
    import typer

    from contractspec.core.cli import VersionOption, progress_bar, user_errors
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "the contractspec-test CLI needs typer: pip install 'contractspec-testing[cli]'"
    ) from exc

PACKAGE = "contractspec-testing"

app = typer.Typer(
    help="Record traffic, generate and update golden pytest suites.", no_args_is_help=True
)


@app.callback()
def _root(version: VersionOption = False) -> None:
    """Record traffic, generate and update golden pytest suites."""


def _target(output: Path, operation: str) -> Path:
    """The module to write: `DIR/test_<operation>.py` for an existing directory, else a .py path.

    Raises:
        ConfigurationError: `output` is neither an existing directory nor a `.py` path.
    """
    if output.is_dir():
        return output / f"test_{identifier(operation)}.py"
    if output.suffix != ".py":
        raise ConfigurationError(
            f"--output {output}: name an existing directory or a module ending in .py "
            f"(e.g. --output {output}.py)",
            details={"field": "output"},
        )
    return output


@app.command("generate")
def generate(
    operation: Annotated[str, typer.Option("--operation", "-o", help="Operation name.")],
    output: Annotated[
        Path, typer.Option(help="Module to write (merged if it exists), or a directory.")
    ],
    store: Annotated[
        str,
        typer.Option(
            help="Traffic store URL: jsonl:PATH, sqlite:///PATH, postgresql+psycopg://..."
        ),
    ],
    registry: Annotated[
        str, typer.Option("--registry", "-r", help="MODULE:OBJECT of the SpecRegistry.")
    ],
    days: Annotated[float, typer.Option(min=0.0, help="Use snapshots of the last N days.")] = 7.0,
    sample_rate: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Keep this fraction of stored traces (errors always kept)."
        ),
    ] = 1.0,
    version: Annotated[
        int | None, typer.Option(help="Operation version (default: latest).")
    ] = None,
    max_cases: Annotated[int, typer.Option(min=1, help="Most new cases per run.")] = 50,
    mask: Annotated[
        list[str] | None, typer.Option(help="Extra masked output path (repeatable).")
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Replay and drop cases that differ.")
    ] = True,
) -> None:
    """Generate (or extend) the golden pytest module of one operation from recorded traffic.

    Exits 2 without writing anything when the store does not exist or holds no usable case.
    """
    with user_errors(PACKAGE):
        reg = load_registry(registry)
        spec = reg.get(operation, version)
        target = _target(output, spec.name)
        result = asyncio.run(
            _generate(
                reg, registry, spec.name, spec.version, target=target, store=store, days=days,
                sample_rate=sample_rate, max_cases=max_cases, mask=mask or [], verify=verify,
            )
        )  # fmt: skip
    typer.echo(result)


async def _generate(
    reg: SpecRegistry,
    registry: str,
    operation: str,
    version: int,
    *,
    target: Path,
    store: str,
    days: float,
    sample_rate: float,
    max_cases: int,
    mask: list[str],
    verify: bool,
) -> str:
    spec = reg.get(operation, version)
    since = utcnow() - timedelta(days=days)
    async with open_store(store, create=False, must_exist=True) as traffic:
        snapshots = await traffic.query(operation=spec.name, version=spec.version, since=since)
    if sample_rate < 1.0:
        snapshots = [
            s
            for s in snapshots
            if s.error is not None or sampling_fraction(s.trace_id or s.id) < sample_rate
        ]
    generator = GoldenTestGenerator(
        reg,
        registry_ref=registry,
        max_cases=max_cases,
        mask={spec.name: mask},
        verify=verify,
    )
    existing = await asyncio.to_thread(_read_if_exists, target)
    if not snapshots and existing is None:
        raise TrafficStoreError(
            f"no snapshot of {spec.ref} in {store} from the last {days:g} day(s) (after "
            f"--sample-rate {sample_rate:g}): nothing written; widen --days or record traffic",
            details={"field": "store"},
        )
    with progress_bar(f"replaying {spec.ref}") as report:
        result = await generator.build(
            snapshots, spec.name, spec.version, existing=existing, path=str(target),
            progress=report,
        )  # fmt: skip
    if not result.cases:
        reasons = "; ".join(f"{sid}: {why}" for sid, why in result.skipped[:3])
        raise TrafficStoreError(
            f"no golden case for {spec.ref} from {len(snapshots)} snapshot(s) in {store}: "
            f"nothing written ({reasons or 'all were excluded or duplicates'})",
            details={"field": "store"},
        )
    if existing != result.source:
        await asyncio.to_thread(_write_atomically, target, result.source)
    lines = [
        f"{target}: {len(result.added)} case(s) added, {len(result.kept)} kept, "
        f"{len(result.skipped)} left out, from {len(snapshots)} snapshot(s) of {spec.ref}"
    ]
    lines += [f"  left out {sid}: {reason}" for sid, reason in result.skipped]
    return "\n".join(lines)


@app.command("operations")
@user_errors(PACKAGE)
def operations(store: Annotated[str, typer.Option(help="Traffic store URL.")]) -> None:
    """List the operations recorded in a store, with their snapshot counts."""

    async def run() -> list[Any]:
        async with open_store(store, create=False, must_exist=True) as traffic:
            return await traffic.operations()

    rows = asyncio.run(run())
    for name, ver, count in rows:
        typer.echo(f"{name}@{ver}  {count}")


def main() -> None:
    """Entry point of the `contractspec-test` script."""
    app()
