"""The CLI's shared error handling (`user_errors`), `--version` and `progress_bar`."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

typer = pytest.importorskip("typer", reason="the CLI needs contractspec-core[cli]")

from rich.console import Console  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from contractspec.core import ConfigurationError  # noqa: E402
from contractspec.core.cli import (  # noqa: E402
    app,
    installed_versions,
    progress_bar,
    user_error_message,
    user_errors,
)


def sqlite_error(path: Path) -> BaseException:
    """The real error SQLAlchemy raises for a SQLite file in a directory that does not exist."""
    from sqlalchemy import text

    from contractspec.core.sql import sqlite_engine

    async def run() -> BaseException:
        engine = sqlite_engine(path)
        try:
            async with engine.connect() as conn:
                await conn.execute(text("select 1"))
        except Exception as exc:
            return exc
        finally:
            await engine.dispose()
        raise AssertionError("connecting should have failed")

    return asyncio.run(run())


def test_user_error_messages_are_one_line_and_name_the_fix(tmp_path: Path) -> None:
    """Each user-error class maps to one line; the driver hint names the package's extra."""
    assert user_error_message(ConfigurationError("bad\n  --store value")) == "bad --store value"
    missing = ModuleNotFoundError("No module named 'psycopg'", name="psycopg")
    assert user_error_message(missing, package="contractspec-jobs") == (
        "the PostgreSQL driver psycopg is not installed: pip install 'contractspec-jobs[postgres]'"
    )
    aiosqlite = ModuleNotFoundError("No module named 'aiosqlite'", name="aiosqlite")
    assert user_error_message(aiosqlite) == (
        "the SQLite driver aiosqlite is not installed: pip install 'contractspec-core[sql]'"
    )
    hinted = ImportError("the CLI needs typer: pip install 'contractspec-core[cli]'")
    assert user_error_message(hinted) == str(hinted)
    with pytest.raises(OSError) as missing_dir:
        (tmp_path / "nope" / "x.json").write_text("{}")
    assert user_error_message(missing_dir.value) == (
        f"No such file or directory: {tmp_path}/nope/x.json"
    )
    opened = user_error_message(sqlite_error(tmp_path / "nope" / "t.db"))
    assert opened == (
        "cannot use the database: unable to open database file "
        "(check that the file's directory exists and is writable)"
    )


def test_bugs_are_not_user_errors() -> None:
    """Anything else (a bug, an unrelated import failure) keeps its traceback."""
    assert user_error_message(ValueError("boom")) is None
    assert user_error_message(KeyError("x")) is None
    assert user_error_message(ModuleNotFoundError("No module named 'x'", name="x")) is None
    mixed = ExceptionGroup("two", [ConfigurationError("fix me"), ValueError("bug")])
    assert user_error_message(mixed) is None
    only_users = ExceptionGroup("two", [ConfigurationError("fix me"), ConfigurationError("b")])
    assert user_error_message(only_users) == "fix me"


def test_user_errors_exits_2_for_user_errors_and_reraises_bugs() -> None:
    """A ContractSpecError becomes Exit(2); a ValueError and typer.Exit(1) pass through."""
    with pytest.raises(typer.Exit) as exited, user_errors():
        raise ConfigurationError("--store: no such file")
    assert exited.value.exit_code == 2
    with pytest.raises(ValueError, match="bug"), user_errors():
        raise ValueError("bug")
    with pytest.raises(typer.Exit) as passed, user_errors():
        raise typer.Exit(1)
    assert passed.value.exit_code == 1


def test_a_decorated_command_prints_one_line_on_stderr() -> None:
    """`@user_errors()` under `@app.command()` keeps the signature and explains the error."""
    demo = typer.Typer()

    @demo.command()
    @user_errors("contractspec-demo")
    def run(name: str) -> None:
        raise ConfigurationError(f"name {name!r} is not known: pass one of a, b")

    @demo.command()
    def other() -> None:  # a second command makes `run` a sub-command
        """Unused."""

    result = CliRunner().invoke(demo, ["run", "zed"])
    assert result.exit_code == 2
    assert result.stderr == "error: name 'zed' is not known: pass one of a, b\n"


def test_spec_export_into_a_missing_directory_exits_2(tmp_path: Path) -> None:
    """An OSError from writing the lock is one line naming the path (no traceback)."""
    result = CliRunner().invoke(
        app, ["spec", "export", "core_app:build_registry", "-o", str(tmp_path / "no" / "l.json")]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: No such file or directory: ")
    assert result.stderr.count("\n") == 1


def test_version_lists_every_installed_contractspec_package() -> None:
    """`contractspec --version` prints `name version` lines from the installed metadata."""
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert f"contractspec-core {version('contractspec-core')}" in result.stdout.splitlines()
    assert result.stdout == "".join(f"{n} {v}\n" for n, v in installed_versions())


def test_progress_bar_draws_nothing_without_a_terminal() -> None:
    """A non-terminal console gets no output; `report` is a no-op."""
    out = io.StringIO()
    with progress_bar("replaying", console=Console(file=out, force_terminal=False)) as report:
        report(1, 3)
        report(3, 3)
    assert out.getvalue() == ""


def test_progress_bar_draws_counts_on_a_terminal() -> None:
    """On a (forced) terminal the bar shows the description and `done/total`."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with progress_bar("replaying x@1", console=console) as report:
        report(0, 3)
        report(3, 3)
    drawn = out.getvalue()
    assert "replaying x@1" in drawn
    assert "3/3" in drawn


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def test_main_is_a_backstop_for_commands_without_user_errors() -> None:
    """A plugin command that raises a ContractSpecError still exits 2 with one line (real process)."""
    code = (
        "import sys\n"
        "from contractspec.core import ConfigurationError\n"
        "from contractspec.core.cli import app, main\n"
        "@app.command('boom')\n"
        "def boom() -> None:\n"
        "    raise ConfigurationError('--level: must be 1-3, got 9')\n"
        "sys.argv = ['contractspec', 'boom']\n"
        "main()\n"
    )
    result = run_python(code)
    assert result.returncode == 2, result.stderr
    assert result.stderr == "error: --level: must be 1-3, got 9\n"


def test_version_in_a_real_process() -> None:
    """The entry point prints versions and exits 0."""
    code = "import sys\nfrom contractspec.core.cli import main\nsys.argv = ['contractspec', '--version']\nmain()\n"
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert f"contractspec-core {version('contractspec-core')}\n" in result.stdout
