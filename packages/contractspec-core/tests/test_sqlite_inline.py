"""The inline SQLite driver shares the event loop: long batches let other tasks run, and two
writers of one process take turns instead of one starving the other."""

from __future__ import annotations

import asyncio
from pathlib import Path

from core_app import POLICY_GRANTS, build_registry

from contractspec.core import Actor, CallContext, Executor, RolePermissions
from contractspec.core.sql import SqlBackend, sqlite_engine

CTX = CallContext(actor=Actor.user("u1", roles="sales"), org_id="org-1")


async def _executor(path: Path) -> tuple[Executor, SqlBackend]:
    registry = build_registry()
    backend = SqlBackend(sqlite_engine(path), registry)
    await backend.create_all()
    return Executor(registry, backend=backend, policy=RolePermissions(POLICY_GRANTS)), backend


async def test_a_long_batch_lets_other_tasks_run(tmp_path: Path) -> None:
    """While 400 calls run in one batch, a task that only yields gets to run many times."""
    ex, backend = await _executor(tmp_path / "app.db")
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        async with ex.batch(commit_every=100):
            for i in range(400):
                await ex.execute("crm.contact.create", {"id": f"c{i}", "name": "n"}, CTX)
        done = True
        await task
    finally:
        await backend.engine.dispose()
    assert ticks >= 400 // 32


async def test_two_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    """Two tasks importing 200 contacts each in batches of 20: the second commits its first
    group long before the first has finished, and every call succeeds."""
    ex, backend = await _executor(tmp_path / "app.db")
    commits: list[str] = []

    async def writer(name: str) -> int:
        ok = 0
        async with ex.batch(commit_every=20) as batch:
            for i in range(200):
                await ex.execute("crm.contact.create", {"id": f"{name}{i}", "name": "n"}, CTX)
                ok += 1
                if batch.pending == 0:
                    commits.append(name)
        return ok

    try:
        results = await asyncio.wait_for(asyncio.gather(writer("a"), writer("b")), 60)
    finally:
        await backend.engine.dispose()
    assert results == [200, 200]
    assert commits.count("a") == commits.count("b") == 10
    assert commits.index("b") < len(commits) - commits[::-1].index("a") - 1  # interleaved


async def test_a_plain_read_after_a_write_call_does_not_wait_for_the_write_lock(
    tmp_path: Path,
) -> None:
    """The unit of work begins write transactions with `BEGIN IMMEDIATE`; the pooled connection
    must not keep that mode: the app's own `engine.connect()` read on it later runs a deferred
    `BEGIN` and reads while another connection holds the write lock (it waited ~10 s, then
    failed with 'database is locked', when the mode stuck to the connection)."""
    ex, backend = await _executor(tmp_path / "app.db")
    engine = backend.engine
    try:
        await ex.execute("crm.contact.create", {"id": "c1", "name": "n"}, CTX)
        # Another process's writer (its own engine) holds the database's write lock.
        other = sqlite_engine(tmp_path / "app.db")
        writer = await other.connect()
        await writer.exec_driver_sql("UPDATE crm_contact SET name = 'm'")
        try:
            for _ in range(3):  # whichever pooled connection comes back, including the call's
                async with engine.connect() as conn:
                    rows = (
                        await asyncio.wait_for(
                            conn.exec_driver_sql("SELECT count(*) FROM crm_contact"), timeout=2
                        )
                    ).all()
                    assert rows == [(1,)]
        finally:
            await writer.rollback()
            await writer.close()
            await other.dispose()
    finally:
        await backend.engine.dispose()
