"""The `contractspec` command line (install `contractspec-core[cli]`)."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from contractspec.core.errors import ConfigurationError, ContractSpecError
from contractspec.core.registry import SpecRegistry

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "CLI_ENTRY_POINTS",
    "VersionOption",
    "app",
    "installed_versions",
    "load_ir_source",
    "load_registry",
    "main",
    "mount_plugins",
    "progress_bar",
    "user_error_message",
    "user_errors",
    "version_callback",
]

try:
    import typer
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "the contractspec CLI needs typer: pip install 'contractspec-core[cli]'"
    ) from exc

app = typer.Typer(help="ContractSpec: spec-first, policy-safe services.", no_args_is_help=True)
spec_app = typer.Typer(help="Inspect, lock and diff specs.", no_args_is_help=True)
app.add_typer(spec_app, name="spec")

# -- shared by every contractspec command line (core, testing, jobs) ------------------------------

#: Modules whose absence is an installation problem: (what it is, the extra that installs it).
_DRIVERS: dict[str, tuple[str, str]] = {
    "psycopg": ("the PostgreSQL driver psycopg", "postgres"),
    "psycopg_binary": ("the PostgreSQL driver psycopg", "postgres"),
    "aiosqlite": ("the SQLite driver aiosqlite", "sql"),
    "sqlalchemy": ("SQLAlchemy", "sql"),
    "greenlet": ("greenlet (SQLAlchemy's asyncio support)", "sql"),
}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def user_error_message(exc: BaseException, *, package: str = "contractspec-core") -> str | None:
    """The one-line explanation of an error the user can fix, or `None` for anything else.

    User errors are: any `ContractSpecError` (its message names the field and the fix); a missing
    database driver or SQLAlchemy (the message names the extra to install); an `ImportError`
    whose message already carries a `pip install` command; a database that cannot be opened or
    reached (SQLAlchemy `OperationalError`/`InterfaceError`, or any driver error raised while
    connecting, such as an unknown connection option) or a malformed database URL
    (`ArgumentError`); and an `OSError` such as a missing file or directory. An exception group
    counts when every exception in it does (the first one is explained).

    Args:
        exc: The exception a command raised.
        package: The distribution whose extras install the missing driver
            (`pip install 'PACKAGE[postgres]'`).

    Returns:
        One line without the `error:` prefix, or `None` when `exc` is not a user error (a bug:
        let its traceback show).
    """
    if isinstance(exc, BaseExceptionGroup):
        messages = [user_error_message(inner, package=package) for inner in exc.exceptions]
        return messages[0] if all(m is not None for m in messages) else None
    if isinstance(exc, ContractSpecError):
        return _one_line(exc.message)
    if isinstance(exc, ImportError):
        root = (exc.name or "").partition(".")[0]
        if root in _DRIVERS:
            what, extra = _DRIVERS[root]
            return f"{what} is not installed: pip install '{package}[{extra}]'"
        return _one_line(str(exc)) if "pip install" in str(exc) else None
    sa_exc = sys.modules.get("sqlalchemy.exc")
    if sa_exc is not None:
        # connection-level: any driver error without a statement (raised while connecting),
        # and OperationalError/InterfaceError (database gone, file unopenable, no such table)
        if isinstance(exc, sa_exc.DBAPIError) and (
            exc.statement is None
            or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
        ):
            reason = _one_line(str(exc.orig if exc.orig is not None else exc))
            hint = (
                " (check that the file's directory exists and is writable)"
                if "unable to open database file" in reason
                else ""
            )
            return f"cannot use the database: {reason}{hint}"
        if isinstance(exc, sa_exc.ArgumentError):
            return f"invalid database URL: {_one_line(str(exc))}"
    if isinstance(exc, OSError):
        if exc.filename is not None and exc.strerror:
            return f"{exc.strerror}: {exc.filename}"
        return _one_line(str(exc)) or type(exc).__name__
    return None


@contextlib.contextmanager
def user_errors(package: str = "contractspec-core") -> Iterator[None]:
    """Turn user errors into one `error: ...` line on stderr and exit status 2.

    Use it as a context manager around a command's work, or as a decorator under
    `@app.command()` (`@user_errors("contractspec-testing")`). What counts as a user error is
    `user_error_message`; any other exception (a bug) propagates with its traceback, and
    `typer.Exit` passes through untouched.

    Args:
        package: The distribution named in install hints for missing drivers.

    Raises:
        typer.Exit: With status 2, after printing the message, for a user error.
    """
    try:
        yield
    except Exception as exc:
        message = user_error_message(exc, package=package)
        if message is None:
            raise
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


def installed_versions() -> list[tuple[str, str]]:
    """`(distribution, version)` of every installed `contractspec-*` distribution, by name."""
    from importlib.metadata import distributions

    found: dict[str, str] = {}
    for dist in distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("contractspec-"):
            found.setdefault(name, dist.version)
    return sorted(found.items())


def version_callback(value: bool) -> None:
    """Typer callback of `--version`: print each installed contractspec package and exit 0.

    Raises:
        typer.Exit: Always, once the versions are printed (when `value` is true).
    """
    if value:
        for name, version in installed_versions():
            typer.echo(f"{name} {version}")
        raise typer.Exit()


#: The `--version` option of a Typer callback (`def _root(version: VersionOption = False)`):
#: prints every installed contractspec package (`version_callback`) and exits.
VersionOption = Annotated[
    bool,
    typer.Option(
        "--version",
        callback=version_callback,
        is_eager=True,
        help="Print the version of every installed contractspec package and exit.",
    ),
]


@contextlib.contextmanager
def progress_bar(
    description: str, *, console: Console | None = None
) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr while long work runs, only when stderr is a terminal.

    Yields a function `report(done, total)` to call as work advances (counts of items, e.g.
    snapshots replayed). When the console is not a terminal (a pipe, a CI log, `CliRunner`),
    nothing is drawn and `report` does nothing.

    Args:
        description: The label in front of the bar.
        console: The rich console to draw on (default: a console on stderr).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = console if console is not None else Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total: None
        return
    columns = (
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield report


@app.callback()
def _root(version: VersionOption = False) -> None:
    """ContractSpec: spec-first, policy-safe services."""


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
@user_errors()
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


def _fail(exc: ContractSpecError) -> typer.Exit:
    typer.echo(f"error: {exc.message}", err=True)
    return typer.Exit(2)


def load_ir_source(source: str) -> dict[str, Any]:
    """The IR of `source`: an IR/lock file path, or `MODULE:OBJECT` naming a registry.

    Raises:
        ConfigurationError: `MODULE:OBJECT` cannot be loaded.
        IRFormatError: The file is not valid IR.
    """
    from contractspec.core.ir import load_ir

    if Path(source).is_file() or ":" not in source:
        return load_ir(Path(source))
    return load_registry(source).to_ir()


@spec_app.command("export")
@user_errors()
def spec_export(
    target: str = typer.Argument(..., help="MODULE:OBJECT naming a SpecRegistry"),
    output: str = typer.Option(
        "contractspec.lock.json", "--output", "-o", help="File to write; '-' for stdout"
    ),
) -> None:
    """Write the canonical IR of a registry (commit it as contractspec.lock.json)."""
    from contractspec.core.ir import dumps_ir, write_lock

    try:
        registry = load_registry(target)
        if output == "-":
            typer.echo(dumps_ir(registry.to_ir()), nl=False)
            return
        path = write_lock(registry, output)
    except ContractSpecError as exc:
        raise _fail(exc) from None
    typer.echo(f"wrote {path} ({len(registry)} specs)")


@spec_app.command("check")
@user_errors()
def spec_check(
    target: str = typer.Argument(..., help="MODULE:OBJECT naming a SpecRegistry"),
    lock: str = typer.Option("contractspec.lock.json", "--lock", "-l", help="The committed lock"),
) -> None:
    """Exit 1 when the committed lock differs from the code (and show what changed)."""
    from contractspec.core.diff import check_lock

    try:
        status = check_lock(load_registry(target), lock)
    except ContractSpecError as exc:
        raise _fail(exc) from None
    if status.status == "up-to-date":
        typer.echo(f"{lock} is up to date")
        return
    if status.status == "missing":
        typer.echo(
            f"{lock} does not exist; create it with: contractspec spec export {target} -o {lock}"
        )
        raise typer.Exit(1)
    typer.echo(f"{lock} is stale; the code changed the spec:")
    typer.echo(status.diff.to_text() if status.diff else "only formatting differs\n", nl=False)
    typer.echo(f"update it with: contractspec spec export {target} -o {lock}")
    raise typer.Exit(1)


class OutputFormat(StrEnum):
    """`spec diff --format`."""

    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


class FailOn(StrEnum):
    """`spec diff --fail-on`."""

    BREAKING = "breaking"
    WARNING = "warning"
    INFO = "info"
    NEVER = "never"


@spec_app.command("diff")
@user_errors()
def spec_diff(
    old: str = typer.Argument(..., help="Old IR: a lock file or MODULE:OBJECT"),
    new: str = typer.Argument(..., help="New IR: a lock file or MODULE:OBJECT"),
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format")
    ] = OutputFormat.TEXT,
    fail_on: Annotated[
        FailOn, typer.Option("--fail-on", help="Exit 1 when a change reaches this severity")
    ] = FailOn.BREAKING,
) -> None:
    """Classify every change between two specs (breaking / warning / info)."""
    from contractspec.core.diff import diff_ir

    try:
        result = diff_ir(load_ir_source(old), load_ir_source(new))
    except ContractSpecError as exc:
        raise _fail(exc) from None
    typer.echo(result.format(fmt.value), nl=False)
    if result.fails(fail_on.value):
        raise typer.Exit(1)


@app.command("generate")
@user_errors()
def generate_command(
    target: Annotated[
        str,
        typer.Argument(
            help="MODULE:OBJECT naming a SpecRegistry, or a lock file; or `ui` followed by one "
            "of those for the web console's templates and router (contractspec-console)"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory of the generated package")],
    spec: Annotated[
        str | None, typer.Argument(help="After `ui`: MODULE:OBJECT or a lock file")
    ] = None,
    check: bool = typer.Option(False, "--check", help="Exit 1 when files on disk are stale"),
    title: str = typer.Option("ContractSpec API", "--title", help="API title"),
    plain: bool = typer.Option(
        False,
        "--plain",
        help="Routers that call your own functions and run without ContractSpec, "
        "instead of routers that run each operation on a ContractSpec Executor",
    ),
) -> None:
    """Render models, tables, FastAPI routers, OpenAPI and docs (deterministically).

    `contractspec generate ui MODULE:OBJECT --out DIR` renders the web console instead: Jinja
    templates and a Starlette router your app owns (needs `pip install contractspec-console`).
    """
    from contractspec.core.codegen import check_generated, generate

    if target == "ui" or spec is not None:
        _generate_ui(target, spec, out, check=check, title=title, plain=plain)
        return
    try:
        ir = load_ir_source(target)
        if check:
            drift = check_generated(ir, out, title=title, plain=plain)
            if drift:
                for item in drift:
                    typer.echo(f"{item.status:<8} {out / item.path}")
                typer.echo(
                    f"{len(drift)} generated file(s) out of date; run: contractspec generate "
                    f"{target} --out {out}{' --plain' if plain else ''}"
                )
                raise typer.Exit(1)
            typer.echo(f"{out} is up to date")
            return
        result = generate(ir, out, title=title, plain=plain)
    except ContractSpecError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"{out}: {len(result.written)} written, {len(result.unchanged)} unchanged, "
        f"{len(result.removed)} removed"
    )


def _generate_ui(
    target: str, spec: str | None, out: Path, *, check: bool, title: str, plain: bool
) -> None:
    """`contractspec generate ui SPEC --out DIR [--check]` (see `contractspec.console.codegen`)."""
    if target != "ui" or spec is None:
        raise _fail(
            ConfigurationError(
                f"unexpected second argument {spec!r}: use `contractspec generate SPEC --out DIR` "
                "or `contractspec generate ui SPEC --out DIR`"
                if target != "ui"
                else "`contractspec generate ui` needs the spec: contractspec generate ui "
                "MODULE:OBJECT --out DIR",
                details={"field": "spec"},
            )
        )
    if plain:
        raise _fail(
            ConfigurationError(
                "--plain applies to the API routers, not to `generate ui`; leave it out",
                details={"field": "plain"},
            )
        )
    try:
        codegen = importlib.import_module("contractspec.console.codegen")
    except ImportError as exc:
        if exc.name is not None and not exc.name.startswith("contractspec.console"):
            raise
        raise _fail(
            ConfigurationError(
                "`contractspec generate ui` renders the web console: pip install "
                "contractspec-console",
                details={"field": "target"},
            )
        ) from None
    ui_title = "ContractSpec" if title == "ContractSpec API" else title
    try:
        ir = load_ir_source(spec)
        if check:
            drift = codegen.check_ui(ir, out, title=ui_title)
            if drift:
                for item in drift:
                    typer.echo(f"{item.status:<8} {out / item.path}")
                typer.echo(
                    f"{len(drift)} generated file(s) out of date; run: contractspec generate ui "
                    f"{spec} --out {out}"
                )
                raise typer.Exit(1)
            typer.echo(f"{out} is up to date")
            return
        result = codegen.generate_ui(ir, out, title=ui_title)
    except ContractSpecError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"{out}: {len(result.written)} written, {len(result.unchanged)} unchanged, "
        f"{len(result.kept)} kept (yours), {len(result.removed)} removed"
    )


#: Entry-point group through which other packages add sub-commands (`contractspec test ...`).
CLI_ENTRY_POINTS = "contractspec.cli"


def mount_plugins(root: Any = None) -> list[str]:
    """Mount the typer apps other installed packages declare under `contractspec.cli`.

    A package adds `[project.entry-points."contractspec.cli"] test = "pkg.cli:app"`; a plugin that
    fails to import is skipped with a warning on stderr rather than breaking the whole CLI.

    Returns:
        The names of the mounted sub-commands.
    """
    from importlib.metadata import entry_points

    target = root if root is not None else app
    mounted: list[str] = []
    for ep in sorted(entry_points(group=CLI_ENTRY_POINTS), key=lambda e: e.name):
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken optional plugin must not break the CLI
            typer.echo(f"warning: cannot load contractspec {ep.name!r} commands: {exc}", err=True)
            continue
        target.add_typer(plugin, name=ep.name)
        mounted.append(ep.name)
    return mounted


def main() -> None:
    """Entry point of the `contractspec` script."""
    mount_plugins()
    try:
        with user_errors():  # a backstop for plugin commands that do not use it themselves
            app()
    except typer.Exit as exc:  # raised by user_errors, outside click's own exit handling
        sys.exit(exc.exit_code)
