"""`contractspec test ...` user errors: one `error:` line on stderr, exit 2, nothing written.

Each failure class runs once through `CliRunner` (fast, exact messages) and once in a real
process started like the `contractspec` script, where the whole of stderr must be one line (no
traceback) and the exit status 2. A progress bar appears only on a terminal.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

pytest.importorskip("typer", reason="the testing CLI needs contractspec-testing[cli]")

from testing_app import build_registry, ctx, make_executor
from typer.testing import CliRunner

from contractspec.core.testing import postgres_dsn
from contractspec.testing import JsonlTrafficStore, TrafficRecorder
from contractspec.testing.cli import app

TESTS = Path(__file__).parent
QUOTE = {
    "customer_email": "ann@acme.io",
    "lines": [{"sku": "A", "quantity": 2, "unit_price": "5.00"}],
    "plan": "pro",
}
#: Nothing listens on port 1: connecting is refused at once, without any server.
REFUSED = "postgresql+psycopg://postgres@127.0.0.1:1/postgres"


def record(path: Path) -> None:
    """Record two quotes that make two golden cases (plans pro and free) into a JSONL store."""

    async def run() -> None:
        recorder = TrafficRecorder(JsonlTrafficStore(path), sample_rate=1.0)
        executor = make_executor(build_registry(), traffic=recorder)
        await executor.execute("billing.invoice.quote", QUOTE, ctx("a"))
        await executor.execute("billing.invoice.quote", {**QUOTE, "plan": "free"}, ctx("b"))
        await recorder.aclose()

    asyncio.run(run())


def generate_args(store: str, output: Path | str, *extra: str) -> list[str]:
    return [
        "generate", "--registry", "testing_app:build_registry", "--operation",
        "billing.invoice.quote", "--output", str(output), "--store", store, *extra,
    ]  # fmt: skip


def run_cli(args: list[str], cwd: Path, *, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run `contractspec test ARGS` in a fresh interpreter (as the installed script does)."""
    code = (
        f"import sys\n{prelude}\nfrom contractspec.core.cli import main\n"
        "sys.argv = ['contractspec', *sys.argv[1:]]\nmain()\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("FORCE_COLOR", None)
    return subprocess.run(
        [sys.executable, "-c", code, "test", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ")
    assert expected in result.stderr
    assert result.stdout == ""


# -- CliRunner: exact messages ----------------------------------------------------------------


def test_a_missing_jsonl_store_exits_2_instead_of_listing_nothing(tmp_path: Path) -> None:
    """`--store jsonl:PATH` whose file does not exist is an error (it used to exit 0 silently)."""
    result = CliRunner().invoke(app, ["operations", "--store", f"jsonl:{tmp_path}/nope.jsonl"])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: traffic store 'jsonl:{tmp_path}/nope.jsonl' does not exist (no file at "
        f"{tmp_path}/nope.jsonl): fix the path, or record traffic into it first\n"
    )
    assert not (tmp_path / "nope.jsonl").exists()


def test_a_sqlite_store_in_a_missing_directory_exits_2(tmp_path: Path) -> None:
    """`sqlite:///DIR/t.db` with no DIR: one line naming the path, no directory created."""
    url = f"sqlite:///{tmp_path}/nope/t.db"
    result = CliRunner().invoke(app, ["operations", "--store", url])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: traffic store '{url}' does not exist (no file at {tmp_path}/nope/t.db): "
        "fix the path, or record traffic into it first\n"
    )
    assert not (tmp_path / "nope").exists()


def test_a_missing_postgres_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without psycopg, a PostgreSQL store says `pip install 'contractspec-testing[postgres]'`."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails as if absent
    result = CliRunner().invoke(app, ["operations", "--store", REFUSED])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: the PostgreSQL driver psycopg is not installed: "
        "pip install 'contractspec-testing[postgres]'\n"
    )


def test_an_unreachable_database_exits_2_with_the_drivers_reason() -> None:
    """A refused connection is one line with psycopg's reason, not SQLAlchemy's traceback."""
    result = CliRunner().invoke(app, ["operations", "--store", REFUSED])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot use the database: connection failed:")
    assert "port 1 failed: Connection refused" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_missing_database_on_the_real_server_exits_2() -> None:
    """On the real PostgreSQL server, a missing database or a bad connection option: one line."""
    dsn = postgres_dsn()
    if dsn is None:
        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "CONTRACTSPEC_REQUIRE_POSTGRES=1 but CONTRACTSPEC_TEST_POSTGRES_DSN is unset"
            )
        pytest.skip("needs CONTRACTSPEC_TEST_POSTGRES_DSN")
    url = dsn.rsplit("/", 1)[0] + "/contractspec_no_such_db"
    result = CliRunner().invoke(app, ["operations", "--store", url])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot use the database: connection failed:")
    assert 'database "contractspec_no_such_db" does not exist' in result.stderr
    bad_option = CliRunner().invoke(app, ["operations", "--store", f"{dsn}?no_such_option=1"])
    assert bad_option.exit_code == 2
    assert bad_option.stderr == (
        'error: cannot use the database: invalid connection option "no_such_option"\n'
    )


def test_generate_from_a_missing_store_writes_nothing(tmp_path: Path) -> None:
    """generate against a store that does not exist: exit 2, no module."""
    target = tmp_path / "test_quote.py"
    result = CliRunner().invoke(app, generate_args(f"jsonl:{tmp_path}/none.jsonl", target))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    assert not target.exists()


def test_generate_from_an_empty_store_writes_nothing(tmp_path: Path) -> None:
    """An existing store without snapshots of the operation: exit 2, never an empty module."""
    (tmp_path / "empty.jsonl").touch()
    target = tmp_path / "test_quote.py"
    result = CliRunner().invoke(app, generate_args(f"jsonl:{tmp_path}/empty.jsonl", target))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: no snapshot of billing.invoice.quote@1 in jsonl:{tmp_path}/empty.jsonl from the "
        "last 7 day(s) (after --sample-rate 1): nothing written; widen --days or record traffic\n"
    )
    assert not target.exists()


def test_generate_output_without_py_is_refused_with_the_fix(tmp_path: Path) -> None:
    """`--output t` (not a directory, no .py) exits 2 suggesting `t.py`; no file `t` appears."""
    traffic = tmp_path / "traffic.jsonl"
    record(traffic)
    result = CliRunner().invoke(
        app, generate_args(f"jsonl:{traffic}", tmp_path / "t", "--days", "100000")
    )
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: --output {tmp_path}/t: name an existing directory or a module ending in .py "
        f"(e.g. --output {tmp_path}/t.py)\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["traffic.jsonl"]


def test_contractspec_test_version_lists_installed_packages() -> None:
    """`contractspec-test --version` prints `contractspec-testing X` (from package metadata)."""
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert f"contractspec-testing {version('contractspec-testing')}" in lines
    assert f"contractspec-core {version('contractspec-core')}" in lines
    assert all(line.startswith("contractspec-") for line in lines)


# -- progress -----------------------------------------------------------------------------------


def test_no_progress_bar_when_stderr_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Piped (CliRunner), generate prints its summary and nothing else on stderr."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    traffic = tmp_path / "traffic.jsonl"
    record(traffic)
    result = CliRunner().invoke(
        app, generate_args(f"jsonl:{traffic}", tmp_path / "g.py", "--days", "100000")
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.startswith(f"{tmp_path / 'g.py'}: 2 case(s) added")


def test_progress_bar_is_drawn_on_a_forced_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a terminal (forced through rich's FORCE_COLOR), replaying draws `replaying ... 2/2`."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    traffic = tmp_path / "traffic.jsonl"
    record(traffic)
    result = CliRunner().invoke(
        app, generate_args(f"jsonl:{traffic}", tmp_path / "g.py", "--days", "100000")
    )
    assert result.exit_code == 0, result.output
    assert "replaying billing.invoice.quote@1" in result.stderr
    assert "2/2" in result.stderr
    assert result.stdout.startswith(f"{tmp_path / 'g.py'}: 2 case(s) added")


# -- real processes: whole stderr is one line -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "prelude", "expected"),
    [
        pytest.param(["operations", "--store", "sqlite:///nope/t.db"], "", "does not exist", id="sqlite-dir-missing"),
        pytest.param(["operations", "--store", "jsonl:/nope/traffic.jsonl"], "", "does not exist", id="jsonl-missing"),
        pytest.param(["operations", "--store", "ftp://x"], "", "unknown traffic store URL", id="bad-url"),
        pytest.param(
            ["operations", "--store", REFUSED], "sys.modules['psycopg'] = None",
            "pip install 'contractspec-testing[postgres]'", id="driver-missing",
        ),
        pytest.param(["operations", "--store", REFUSED], "", "Connection refused", id="unreachable"),
        pytest.param(generate_args("jsonl:none.jsonl", "out.py"), "", "does not exist", id="generate-missing-store"),
        pytest.param(generate_args("jsonl:empty.jsonl", "out.py"), "", "nothing written", id="generate-empty-store"),
        pytest.param(generate_args("jsonl:empty.jsonl", "t"), "", "ending in .py", id="generate-out-without-py"),
    ],
)  # fmt: skip
def test_each_user_error_is_one_line_and_exit_2_in_a_real_process(
    args: list[str], prelude: str, expected: str, tmp_path: Path
) -> None:
    """The real entry point: exit 2, stderr is exactly one `error:` line, nothing written."""
    (tmp_path / "empty.jsonl").touch()
    result = run_cli(args, tmp_path, prelude=prelude)
    assert_one_line_exit_2(result, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]
