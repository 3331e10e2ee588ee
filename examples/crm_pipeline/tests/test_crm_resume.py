"""A rerun of the CDNOW import resumes, a killed import loses no acknowledged work.

The kill tests run `crm-pipeline` in a child process on a SQLite file and on PostgreSQL, end it
mid-run (SIGKILL from outside, or `os._exit` inside a call through `CRASH_AFTER_CALLS_ENV`), and
compare the database with what the child reported in its `--commit-log`.

The window. The importer commits whole purchases and writes a `committing` line before each group
commit and a `committed` line after it. So, per writer, the database holds exactly what its last
line says is committed; only when that last line is `committing` may it hold that group too (the
kill landed between the commit and its `committed` line). An `os._exit` inside a call happens
while no commit is in flight, so there the last line is never `committing` and the match is
exact. Nothing in between is allowed: no partial group, no partial call.

A rerun then completes the import, and the database equals a clean import of the same purchases
into another database (deals, stages, won value, contacts, tasks, events, audit entries).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from crm_pipeline.main import (
    CRASH_AFTER_CALLS_ENV,
    CRASH_EXIT_CODE,
    IMPORTER,
    ORG_ID,
    ImportEvent,
    Purchase,
    StoredState,
    Tally,
    data_file,
    import_purchases,
    load_state,
    main,
    read_purchases,
    run,
    target_stage,
    wants_thank_you,
)
from crm_pipeline.models import ReportSummary, Stage, SummaryRequest, task_entity
from crm_pipeline.spec import policy, registry
from pydantic import BaseModel
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contractspec.core import (
    Executor,
    InternalError,
    Invocation,
    MemoryBackend,
    OperationTimeoutError,
    Transaction,
)
from contractspec.core.sql import SqlBackend, audit_table, outbox_table, sqlite_engine
from contractspec.core.testing import postgres_dsn, temporary_sql_engine
from contractspec.core.transactions import MemoryTransaction

DATA = data_file()
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason=f"CDNOW data not found at {DATA}")

LIMIT = 3000
COMMIT_EVERY = 200
CHILD_TIMEOUT = 120


@pytest.fixture(scope="module")
def purchases() -> list[Purchase]:
    """The first LIMIT purchases of the CDNOW file."""
    return read_purchases(DATA, LIMIT)


# -- databases ----------------------------------------------------------------------------------


class Target:
    """One database the child and the test both reach: its CLI arguments and an engine factory."""

    def __init__(self, kind: str, args: list[str], url: str, connect_args: dict[str, Any]):
        self.kind = kind
        self.args = args
        self.url = url
        self.connect_args = connect_args

    def engine(self) -> AsyncEngine:
        """A new engine on the target (dispose it)."""
        if self.kind == "sqlite":
            return sqlite_engine(self.url)
        return create_async_engine(self.url, connect_args=self.connect_args)


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """A SQLite file, or a fresh PostgreSQL schema (dropped afterwards)."""
    if request.param == "sqlite":
        db = tmp_path / "crm.db"
        yield Target("sqlite", ["--db", str(db)], str(db), {})
        return
    dsn = postgres_dsn()
    if not dsn:
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    schema = f"crm_resume_{uuid.uuid4().hex[:10]}"
    await _admin(dsn, f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in dsn else "?"
    try:
        yield Target(
            "postgres",
            ["--postgres", f"{dsn}{sep}options=-csearch_path%3D{schema}"],
            dsn,
            {"options": f"-csearch_path={schema}"},
        )
    finally:
        await _admin(dsn, f'DROP SCHEMA "{schema}" CASCADE')


async def _admin(dsn: str, statement: str) -> None:
    engine = create_async_engine(dsn)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _executor(engine: AsyncEngine, *middleware: Any) -> tuple[Executor, SqlBackend]:
    backend = SqlBackend(engine, registry)
    return Executor(registry, backend=backend, policy=policy(), middleware=middleware), backend


async def snapshot(engine: AsyncEngine) -> dict[str, Any]:
    """What a database holds, by the figures a clean import is compared on."""
    executor, backend = _executor(engine)
    summary = await executor.execute("crm.report.summary", SummaryRequest(top=10), IMPORTER)
    assert isinstance(summary, ReportSummary)
    verified = await backend.audit.verify(ORG_ID)
    tasks = backend.table(task_entity)
    async with engine.connect() as conn:

        async def count(stmt: Any) -> int:
            return int((await conn.execute(stmt)).scalar_one())

        figures = {
            "tasks": await count(select(func.count()).select_from(tasks)),
            "tasks_done": await count(select(func.count()).select_from(tasks).where(tasks.c.done)),
            "events": await count(select(func.count()).select_from(outbox_table)),
            "audit_entries": await count(
                select(func.count()).select_from(audit_table).where(audit_table.c.org_key == ORG_ID)
            ),
        }
    return {
        "contacts": summary.contacts,
        "deals": summary.deals,
        "stages": {s.stage.value: (s.deals, s.value) for s in summary.stages},
        "won_value": summary.won_value,
        "pipeline_value": summary.pipeline_value,
        "top_customers": [(c.contact_id, c.won_value) for c in summary.top_customers],
        **figures,
        "verified": (verified.ok, verified.reason, verified.checked),
    }


async def stored_tally(engine: AsyncEngine, purchases: list[Purchase]) -> Tally:
    """The database's contents in the units the importer reports (`Tally`)."""
    executor, _ = _executor(engine)
    state = await load_state(executor)
    figures = await snapshot(engine)
    return Tally(
        calls=figures["audit_entries"],
        purchases=sum(1 for p in purchases if _complete(state, p)),
        contacts=figures["contacts"],
        deals=figures["deals"],
        tasks=figures["tasks"],
        events=figures["events"],
    )


def _complete(state: StoredState, p: Purchase) -> bool:
    deal = f"cdnow-{p.line}"
    if state.deals.get(deal) is not target_stage(p):
        return False
    return not wants_thank_you(p) or state.tasks.get(deal, ("", False))[1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def clean(
    purchases: list[Purchase], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The snapshot of a clean import of the same purchases, in a database of its own."""
    async with temporary_sql_engine("sqlite", tmp_path_factory.mktemp("clean")) as engine:
        stats, _, verified = await run(engine, purchases, show_progress=False)
        assert stats.ok, stats.errors
        assert verified
        return await snapshot(engine)


# -- the child process --------------------------------------------------------------------------


def _child(
    target: Target, log: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "crm_pipeline.main", *target.args, "--limit", str(LIMIT)]
    cmd += ["--commit-every", str(COMMIT_EVERY), "--no-progress", "--commit-log", str(log), *extra]
    child_env = {k: v for k, v in os.environ.items() if k != CRASH_AFTER_CALLS_ENV}
    child_env.update(env or {})
    return subprocess.Popen(
        cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=log.parent
    )


def _lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _finish(child: subprocess.Popen[bytes]) -> tuple[int, str]:
    out, _ = child.communicate(timeout=CHILD_TIMEOUT)
    return child.returncode, out.decode(errors="replace")


async def _wait_for_commits(child: subprocess.Popen[bytes], log: Path, commits: int) -> None:
    """Wait until the child reported `commits` group commits (it must still be running)."""
    deadline = time.monotonic() + CHILD_TIMEOUT
    while sum(1 for line in _lines(log) if line["phase"] == "committed") < commits:
        assert child.poll() is None, _finish(child)[1]
        assert time.monotonic() < deadline, "the child made no progress"
        await asyncio.sleep(0.005)


def _tally(record: dict[str, Any]) -> Tally:
    return Tally(**record)


def _windows(lines: list[dict[str, Any]]) -> tuple[list[list[Tally]], list[dict[str, Any]]]:
    """Per writer, the stored contents its last line allows, and the last lines themselves."""
    last: dict[int, dict[str, Any]] = {}
    for line in lines:
        if line["phase"] != "failed":
            last[line["writer"]] = line
    windows = []
    for line in last.values():
        committed = _tally(line["committed"])
        allowed = [committed]
        if line["phase"] == "committing":
            also = _tally(line["committed"])
            also.add(_tally(line["pending"]))
            allowed.append(also)
        windows.append(allowed)
    return windows, list(last.values())


def _sums(windows: list[list[Tally]]) -> list[Tally]:
    sums = []
    for choice in product(*windows):
        total = Tally()
        for part in choice:
            total.add(part)
        sums.append(total)
    return sums


async def _rerun_to_completion(
    target: Target, tmp_path: Path, purchases: list[Purchase], before: Tally, clean: dict[str, Any]
) -> None:
    """Rerun the child; it resumes, and the database then equals the clean import."""
    log = tmp_path / "rerun.jsonl"
    code, out = _finish(_child(target, log))
    assert code == 0, out
    final = _lines(log)[-1]
    assert final["phase"] == "committed"
    assert final["skipped"] == before.purchases  # whole purchases were committed: none partial
    assert final["resumed"] == 0
    assert (final["failures"], final["lost"]) == (0, 0)
    done = _tally(final["committed"])
    done.add(before)
    assert done.calls == clean["audit_entries"]
    assert done.events == clean["events"]
    engine = target.engine()
    try:
        assert await snapshot(engine) == clean
        assert await stored_tally(engine, purchases) == done
    finally:
        await engine.dispose()


# -- tests --------------------------------------------------------------------------------------


async def test_sigkill_mid_run_keeps_exactly_the_reported_commits_then_resumes(
    target: Target, tmp_path: Path, purchases: list[Purchase], clean: dict[str, Any]
) -> None:
    """SIGKILL mid-import: the chain verifies, the database holds what the child reported committed
    (or the one group it announced), and a rerun completes it to equal a clean import."""
    log = tmp_path / "killed.jsonl"
    child = _child(target, log)
    await _wait_for_commits(child, log, 3)
    child.send_signal(signal.SIGKILL)
    code, _ = _finish(child)
    assert code == -signal.SIGKILL
    windows, last = _windows(_lines(log))
    assert last[0]["settled"] < LIMIT  # killed mid-run, not after the end
    engine = target.engine()
    try:
        stored = await stored_tally(engine, purchases)
        figures = await snapshot(engine)
    finally:
        await engine.dispose()
    assert figures["verified"] == (True, None, stored.calls)
    assert stored in _sums(windows)
    await _rerun_to_completion(target, tmp_path, purchases, stored, clean)


@pytest.mark.parametrize("writers", [1, 4])
async def test_exit_inside_a_call_keeps_exactly_the_reported_commits_then_resumes(
    target: Target, writers: int, tmp_path: Path, purchases: list[Purchase], clean: dict[str, Any]
) -> None:
    """`os._exit` inside the 1,234th call: the database holds exactly what the writer reported
    committed (with 4 writers, another writer may be inside its commit: its announced group may
    be stored too); the chain verifies; a rerun completes it."""
    log = tmp_path / "crashed.jsonl"
    child = _child(target, log, "--writers", str(writers), env={CRASH_AFTER_CALLS_ENV: "1234"})
    code, out = _finish(child)
    assert code == CRASH_EXIT_CODE, out
    windows, last = _windows(_lines(log))
    assert 1 <= len(windows) <= writers  # a writer that never reported has committed nothing
    if writers == 1:  # the exit came from inside a call: no commit was in flight
        assert last[0]["phase"] == "committed"
        assert len(windows[0]) == 1
    engine = target.engine()
    try:
        stored = await stored_tally(engine, purchases)
        figures = await snapshot(engine)
    finally:
        await engine.dispose()
    assert figures["verified"] == (True, None, stored.calls)
    assert stored in _sums(windows)
    assert stored.calls < 1234 <= stored.calls + writers * (COMMIT_EVERY + 6)
    await _rerun_to_completion(target, tmp_path, purchases, stored, clean)


class FailSome:
    """Middleware: a seeded random tenth of the calls time out after their handler ran (a
    transient failure: the call leaves nothing, the purchase stops there)."""

    def __init__(self, seed: int, rate: float = 0.1) -> None:
        self.random = random.Random(seed)
        self.rate = rate

    async def __call__(self, invocation: Invocation, call_next: Any) -> BaseModel:
        output: BaseModel = await call_next(invocation)
        if self.random.random() < self.rate:
            raise OperationTimeoutError(f"injected failure of {invocation.spec.name}")
        return output


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_resume_finishes_purchases_stopped_between_any_two_calls(
    kind: str, tmp_path: Path, purchases: list[Purchase], clean: dict[str, Any]
) -> None:
    """Purchases left after their contact, their deal's creation, either move or the task's
    creation are finished by a rerun with exactly the missing calls; the result equals a clean
    import."""
    if kind == "postgres" and not postgres_dsn():
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    async with temporary_sql_engine(kind, tmp_path) as engine:
        executor, backend = _executor(engine, FailSome(13))
        await backend.create_all()
        first = await import_purchases(executor, purchases, commit_every=250)
        assert first.failures == first.incomplete > 0
        assert first.conflicts == first.lost == first.mismatched == 0
        assert first.pending == Tally()
        assert all("operation_timeout: injected failure" in e for e in first.errors)

        state = await load_state(_executor(engine)[0])
        left = {
            "no deal": 0,
            "lead, to be moved": 0,
            "qualified, to be closed": 0,
            "won, no task": 0,
            "task not done": 0,
        }
        for p in purchases:
            stage = state.deals.get(f"cdnow-{p.line}")
            task = state.tasks.get(f"cdnow-{p.line}")
            if stage is None:
                left["no deal"] += 1
            elif stage is Stage.LEAD and target_stage(p) is not Stage.LEAD:
                left["lead, to be moved"] += 1
            elif stage is Stage.QUALIFIED and target_stage(p) is not Stage.QUALIFIED:
                left["qualified, to be closed"] += 1
            elif wants_thank_you(p) and task is None:
                left["won, no task"] += 1
            elif wants_thank_you(p) and task is not None and not task[1]:
                left["task not done"] += 1
        assert all(left.values()), left
        assert sum(left.values()) == first.incomplete

        second = await import_purchases(_executor(engine)[0], purchases, commit_every=250)
        assert second.ok, second.errors
        assert second.resumed == first.incomplete - left["no deal"]
        assert second.skipped == LIMIT - first.incomplete
        assert first.committed.calls + second.committed.calls == clean["audit_entries"]
        assert second.calls == second.committed.calls
        assert await snapshot(engine) == clean

        third = await import_purchases(_executor(engine)[0], purchases)
        assert (third.calls, third.skipped, third.commits) == (0, LIMIT, 0)


async def test_two_importers_at_once_report_conflicts_and_lose_nothing(
    target: Target, tmp_path: Path, clean: dict[str, Any]
) -> None:
    """Two imports run together on one database: every call either committed or failed with a
    reported conflict, together they stored every purchase once, and the result equals a clean
    import."""
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    children = [_child(target, logs[0])]
    await _wait_for_commits(children[0], logs[0], 1)  # its tables exist, it is mid-run
    children.append(_child(target, logs[1]))
    results = [_finish(child) for child in children]
    finals = []
    for (code, out), log in zip(results, logs, strict=True):
        final = _lines(log)[-1] if _lines(log) else None
        failed = [line for line in _lines(log) if line["phase"] == "failed"]
        assert final is not None, out
        assert final["failures"] == final["conflicts"] == len(failed), out
        assert final["lost"] == 0
        assert code == (1 if final["failures"] else 0), out
        finals.append(final)
    total = Tally()
    for final in finals:
        total.add(_tally(final["committed"]))
    assert total.calls == clean["audit_entries"]
    assert total.deals == clean["deals"]
    assert total.events == clean["events"]
    engine = target.engine()
    try:
        assert await snapshot(engine) == clean
    finally:
        await engine.dispose()


async def test_rerun_in_memory_issues_no_call(purchases: list[Purchase]) -> None:
    """On the in-memory backend too, a second import finds everything stored and calls nothing."""
    executor = Executor(registry, policy=policy())
    first = await import_purchases(executor, purchases[:500])
    assert (first.calls, first.committed.purchases, first.ok) == (1657, 500, True)
    second = await import_purchases(executor, purchases[:500])
    assert (second.calls, second.skipped, second.commits, second.ok) == (0, 500, 0, True)


class FailingCommit(MemoryTransaction):
    """A memory transaction whose commit fails: it rolls back and raises, like a lost database."""

    __slots__ = ()

    async def commit(self) -> None:
        await self.rollback()
        raise InternalError("injected: the database went away during the commit")


class SecondCommitFails:
    """Unit of work whose second write transaction cannot commit."""

    def __init__(self) -> None:
        self.writes = 0

    async def begin(self, *, readonly: bool = False) -> Transaction:
        if not readonly:
            self.writes += 1
            if self.writes == 2:
                return FailingCommit()
        return MemoryTransaction(readonly=readonly)


async def test_a_failed_group_commit_stops_the_import_and_counts_the_lost_calls(
    purchases: list[Purchase],
) -> None:
    """When a group commit fails, the import stops, `lost` counts the calls that returned in that
    group, only the first group is stored, and a rerun completes the import."""
    backend = MemoryBackend()
    events: list[dict[str, Any]] = []

    def report(event: ImportEvent) -> None:
        events.append(event.to_json())  # the stats are live: take the figures now

    executor = Executor(
        registry, backend=backend, unit_of_work=SecondCommitFails(), policy=policy()
    )
    stats = await import_purchases(executor, purchases[:500], commit_every=300, on_report=report)
    committing = [e for e in events if e["phase"] == "committing"]
    assert [e["phase"] for e in events] == ["committing", "committed", "committing", "failed"]
    assert stats.aborted is not None
    assert "batch_commit_failed" in stats.aborted
    assert stats.commits == 1
    assert stats.committed == Tally(**committing[0]["pending"])
    assert stats.lost == committing[1]["pending"]["calls"] > 0
    assert stats.pending == Tally()
    assert not stats.ok
    stored = await load_state(executor)
    assert (len(stored.contacts), len(stored.deals)) == (
        stats.committed.contacts,
        stats.committed.deals,
    )

    rerun = await import_purchases(
        Executor(registry, backend=backend, policy=policy()), purchases[:500]
    )
    assert rerun.ok, rerun.errors
    assert rerun.skipped == stats.committed.purchases
    assert stats.committed.calls + rerun.committed.calls == 1657


def test_crm_pipeline_twice_on_one_database_does_nothing_the_second_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The second `crm-pipeline` run on the same SQLite file succeeds and reports nothing to do;
    `--fresh` imports everything again."""
    args = ["--db", str(tmp_path / "crm.db"), "--limit", "500", "--no-progress"]

    def printed() -> str:
        return " ".join(capsys.readouterr().out.split())  # as one line, whatever the width

    main(args)
    first = printed()
    assert "committed 1,657 operations in 2 group commits (500 purchases completed" in first
    main(args)
    second = printed()
    assert "all 500 purchases were already imported: nothing to do (0 operations" in second
    assert "1,657 audit entries, audit chain verified" in second
    main([*args, "--fresh"])
    third = printed()
    assert "committed 1,657 operations in 2 group commits (500 purchases completed" in third
    assert "1,657 audit entries, audit chain verified" in third
