"""`contractspec jobs worker|scheduler MODULE:OBJECT` in a real process, stopped by a real SIGTERM
(issue 14): running jobs finish within `shutdown_grace` or are released, and the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

pytest.importorskip("typer", reason="the jobs CLI needs contractspec-core[cli]")

from jobs_cli_app import SPECS, nap
from typer.testing import CliRunner

from contractspec.core.sql import sqlite_engine
from contractspec.jobs import JobStatus
from contractspec.jobs.cli import app
from contractspec.jobs.sql import SqlJobQueue

TESTS = Path(__file__).parent


def contractspec_command() -> list[str]:
    """The installed `contractspec` script (with `jobs` mounted through its entry point)."""
    script = Path(sys.executable).with_name("contractspec")
    if not script.exists():
        pytest.skip("the contractspec script is not installed (contractspec-core[cli])")
    return [str(script)]


async def until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    try:
        async with asyncio.timeout(seconds):
            while not await check():  # noqa: ASYNC110 - polls the database
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {seconds}s waiting for {what}")


async def start(role: str, target: str, tmp_path: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "CLI_DB": str(tmp_path / "jobs.db"),
        "CLI_RUNS": str(tmp_path / "runs.txt"),
    }
    return await asyncio.create_subprocess_exec(
        *contractspec_command(),
        "jobs",
        role,
        target,
        cwd=TESTS,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM; the exit code and output (killed, and the test fails, after 20 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        pytest.fail(f"the process ignored SIGTERM for 20 s: {out.decode()}")
    assert proc.returncode is not None
    return proc.returncode, out.decode()


@pytest.mark.slow
async def test_worker_sigterm_finishes_short_jobs_releases_long_ones_and_exits_0(
    tmp_path: Path,
) -> None:
    """SIGTERM to `contractspec jobs worker`: a job that ends within `shutdown_grace` (1.5 s)
    succeeds, one that would not is cancelled and released (queued, attempt not counted), a
    queued job is not started, and the process exits with status 0."""
    engine = sqlite_engine(tmp_path / "jobs.db")
    try:
        queue = SqlJobQueue(engine, SPECS)
        await queue.create_all()
        short = await queue.enqueue(nap, {"seconds": 0.8}, priority=10)
        long = await queue.enqueue(nap, {"seconds": 60}, priority=10)
        proc = await start("worker", "jobs_cli_app:serve", tmp_path)

        async def both_running() -> bool:
            return len(await queue.list(status="running")) == 2

        await until(both_running, 20, "the worker to lease both jobs")
        later = await queue.enqueue(nap, {"seconds": 0}, delay=0)
        code, out = await stop(proc)
        jobs = {job.id: job for job in await queue.list()}
    finally:
        await engine.dispose()
    assert code == 0, out
    runs = (tmp_path / "runs.txt").read_text().split("\n")
    assert f"finished {short}" in runs
    assert f"cancelled {long}" in runs
    assert (jobs[short].status, jobs[short].attempts) == (JobStatus.SUCCEEDED, 1)
    assert (jobs[long].status, jobs[long].attempts) == (JobStatus.QUEUED, 0)
    assert jobs[long].lease_token is None
    # Started before SIGTERM or not at all; if it ran, it finished.
    assert jobs[later].status in (JobStatus.QUEUED, JobStatus.SUCCEEDED)
    assert "contractspec.jobs.released" in out


@pytest.mark.slow
async def test_scheduler_sigterm_exits_0(tmp_path: Path) -> None:
    """`contractspec jobs scheduler` enqueues fires until SIGTERM, then exits with status 0."""
    engine = sqlite_engine(tmp_path / "jobs.db")
    try:
        queue = SqlJobQueue(engine, SPECS)
        await queue.create_all()
        proc = await start("scheduler", "jobs_cli_app:schedule", tmp_path)

        async def fired() -> bool:
            return len(await queue.list()) >= 2

        await until(fired, 20, "two fires of the one-second schedule")
        code, out = await stop(proc)
    finally:
        await engine.dispose()
    assert code == 0, out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("jobs_cli_app", "expected MODULE:OBJECT"),
        ("no_such_module_here:worker", "cannot import 'no_such_module_here'"),
        ("jobs_cli_app:missing", "has no attribute 'missing'"),
        ("jobs_cli_app:not_a_worker", "gave a int, not a Worker"),
        ("jobs_cli_app:schedule", "gave a Scheduler, not a Worker"),
        ("json:dumps", "cannot be called without arguments"),
    ],
)
def test_a_bad_target_exits_2_naming_the_problem(
    target: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target that is not (and does not build) a Worker: status 2 and one line saying why."""
    monkeypatch.chdir(TESTS)
    monkeypatch.setenv("CLI_DB", str(tmp_path / "jobs.db"))
    result = CliRunner().invoke(app, ["worker", target])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_contractspec_command_mounts_jobs() -> None:
    """The core CLI lists `jobs` among its commands (the `contractspec.cli` entry point)."""
    import typer

    from contractspec.core.cli import mount_plugins

    root = typer.Typer()
    root.command("noop")(lambda: None)
    assert "jobs" in mount_plugins(root)
    result = CliRunner().invoke(root, ["jobs", "--help"])
    assert result.exit_code == 0
    assert "worker" in result.output
    assert "scheduler" in result.output


def test_a_missing_database_driver_exits_2_naming_the_extra(tmp_path: Path) -> None:
    """A worker on PostgreSQL without psycopg installed: status 2 and one line (real process)."""
    import subprocess

    code = (
        "import sys\n"
        "sys.modules['psycopg'] = None  # as if psycopg were not installed\n"
        "from contractspec.core.cli import main\n"
        "sys.argv = ['contractspec', 'jobs', 'worker', 'jobs_cli_app:serve_postgres']\n"
        "main()\n"
    )
    env = {**os.environ, "CLI_DSN": "postgresql+psycopg://postgres@127.0.0.1:1/postgres"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "error: the PostgreSQL driver psycopg is not installed: "
        "pip install 'contractspec-jobs[postgres]'\n"
    )
