"""`contractspec jobs worker|scheduler MODULE:OBJECT`: run a worker or a scheduler as a process.

The core CLI (`contractspec-core[cli]`) mounts this Typer application as `contractspec jobs` through
the `contractspec.cli` entry-point group; `python -m contractspec.jobs.cli` runs it alone.

```bash
contractspec jobs worker myapp.jobs:worker        # a Worker, or a function building one
contractspec jobs scheduler myapp.jobs:scheduler  # a Scheduler, or a function building one
```

`OBJECT` is a `Worker` (`Scheduler`), or a function returning one, an awaitable of one, or an async
context manager yielding one (`@asynccontextmanager`, to create and dispose the engine around the
run). Functions are called inside the process's event loop. SIGTERM and SIGINT stop gracefully: a
worker leases nothing more, gives running jobs `shutdown_grace` seconds, releases the rest (queued
again without counting the attempt), stores pending outcomes, and the process exits with status 0.
A target that cannot be loaded, or a database driver that is not installed, exits with status 2
and one line on stderr (no traceback); a database that is down once the worker runs is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import sys
from typing import Annotated, Any, TypeVar

from contractspec.core import ConfigurationError
from contractspec.jobs.scheduler import Scheduler
from contractspec.jobs.worker import Worker

__all__ = ["app", "load_target", "main"]

try:
    import typer

    from contractspec.core.cli import user_errors
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "the contractspec jobs CLI needs typer: pip install 'contractspec-core[cli]'"
    ) from exc

T = TypeVar("T", Worker, Scheduler)

app = typer.Typer(help="Run job workers and schedulers.", no_args_is_help=True)


def _import(target: str) -> Any:
    """The object `MODULE:OBJECT` names (`OBJECT` may be dotted).

    Raises:
        ConfigurationError: Malformed target, import failure, or no such attribute.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"expected MODULE:OBJECT (e.g. myapp.jobs:worker), got {target!r}",
            details={"field": "target"},
        )
    if "" not in sys.path:
        sys.path.insert(0, "")  # the current directory, as `python -m` does
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"cannot import {module_name!r}: {exc}", details={"field": "target"}
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigurationError(
                f"{module_name!r} has no attribute {attr!r}", details={"field": "target"}
            )
        obj = getattr(obj, part)
    return obj


def _check(target: str, obj: Any, kind: type[T]) -> T:
    if not isinstance(obj, kind):
        raise ConfigurationError(
            f"{target} gave a {type(obj).__name__}, not a {kind.__name__}: name a {kind.__name__}, "
            f"or a function returning one (or an async context manager yielding one)",
            details={"field": "target"},
        )
    return obj


@contextlib.asynccontextmanager
async def load_target(target: str, kind: type[T]) -> Any:
    """Yield the `Worker` or `Scheduler` that `target` (`MODULE:OBJECT`) names or builds.

    Must be entered inside the event loop that will run it. A function is called; an awaitable
    it returns is awaited; an async context manager it returns is entered (and exited when this
    one exits).

    Raises:
        ConfigurationError: The target cannot be imported or is not (and does not build) a
            `kind`.
    """
    obj = _import(target)
    if isinstance(obj, kind):
        yield obj
        return
    if not callable(obj):
        yield _check(target, obj, kind)
        return
    try:
        inspect.signature(obj).bind()
    except TypeError as exc:
        raise ConfigurationError(
            f"{target} cannot be called without arguments ({exc}): name a {kind.__name__}, or a "
            "function taking no arguments that returns one (or an async context manager)",
            details={"field": "target"},
        ) from exc
    except ValueError:  # no signature (some builtins): let the call itself decide
        pass
    built = obj()
    if hasattr(built, "__aenter__") and hasattr(built, "__aexit__"):
        async with built as inner:
            yield _check(target, inner, kind)
        return
    if inspect.isawaitable(built):
        built = await built
    yield _check(target, built, kind)


async def _serve(target: str, kind: type[T], *, until_idle: bool = False) -> None:
    async with load_target(target, kind) as runner:
        if isinstance(runner, Worker):
            await runner.run(handle_signals=True, until_idle=until_idle)
        else:
            await runner.run(handle_signals=True)


def _run(target: str, kind: type[T], *, until_idle: bool = False) -> None:
    with user_errors("contractspec-jobs"):
        asyncio.run(_serve(target, kind, until_idle=until_idle))


@app.command("worker")
def worker(
    target: Annotated[
        str,
        typer.Argument(help="MODULE:OBJECT naming a Worker, or a function building one."),
    ],
    until_idle: Annotated[
        bool,
        typer.Option("--until-idle", help="Exit (status 0) once no job is due and none runs."),
    ] = False,
) -> None:
    """Run a job worker until SIGTERM/SIGINT (graceful: running jobs finish or are released)."""
    _run(target, Worker, until_idle=until_idle)


@app.command("scheduler")
def scheduler(
    target: Annotated[
        str,
        typer.Argument(help="MODULE:OBJECT naming a Scheduler, or a function building one."),
    ],
) -> None:
    """Run a scheduler (enqueues each schedule's fires) until SIGTERM/SIGINT."""
    _run(target, Scheduler)


def main() -> None:
    """Run the jobs CLI alone (`python -m contractspec.jobs.cli`)."""
    app()


if __name__ == "__main__":
    main()
