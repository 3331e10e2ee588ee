"""The guarantees across processes: two app processes on one SQLite file or PostgreSQL database,
and a process that dies (`os._exit`) inside a batch."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from core_guarantees_app import (
    ORG,
    build_app,
    call_ctx,
    chain_verifies,
    counter_entity,
    deal_entity,
    make_executor,
)
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core.sql import SqlBackend, audit_table

HERE = Path(__file__).parent


@pytest.fixture
async def shared(sql_engine: AsyncEngine) -> tuple[AsyncEngine, SqlBackend]:
    """A database with the app's tables, a contact `seed` and a counter `ctr` at 0."""
    app = build_app()
    backend = SqlBackend(sql_engine, app.registry)
    await backend.create_all()
    ex = make_executor(app, backend)
    await ex.execute("crm.contact.create", {"id": "seed", "name": "Seed"}, call_ctx("seed-c"))
    await ex.execute("ops.counter.create", {"id": "ctr"}, call_ctx("seed-ctr"))
    return sql_engine, backend


async def _spawn(engine: AsyncEngine, tmp: Path, name: str, **spec: Any) -> dict[str, Any]:
    """Run core_process_worker.py with `spec`; return its report (and its exit code)."""
    schema = ""
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
    report = tmp / f"{name}.json"
    spec_file = tmp / f"{name}-spec.json"
    spec_file.write_text(
        json.dumps(
            {
                "url": engine.url.render_as_string(hide_password=False),
                "schema": schema,
                "name": name,
                "report": str(report),
                **spec,
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "core_process_worker.py"),
        str(spec_file),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    data: dict[str, Any] = json.loads(report.read_text()) if report.exists() else {}
    data["returncode"] = proc.returncode
    data["stderr"] = err.decode()[-2000:]
    return data


async def _counter(backend: SqlBackend) -> int:
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        found = await backend.entities.repository(counter_entity, tx, ORG).get("ctr")
    finally:
        await tx.rollback()
    assert found is not None
    return int(found.value)  # type: ignore[attr-defined]


async def test_two_processes_lose_no_update_and_run_each_idempotency_key_once(
    shared: tuple[AsyncEngine, SqlBackend], tmp_path: Path
) -> None:
    """Two processes increment one counter and race on the same idempotency keys: the counter
    equals the increments both reported ok, each key made one deal that both callers received,
    every ok call has one success audit entry, and the chain verifies."""
    engine, backend = shared
    keys = [f"k{i}" for i in range(6)]
    a, b = await asyncio.gather(
        _spawn(engine, tmp_path, "a", increments=30, keys=keys),
        _spawn(engine, tmp_path, "b", increments=30, keys=keys),
    )
    assert (a["returncode"], b["returncode"]) == (0, 0), a["stderr"] + b["stderr"]
    outcomes = a["outcomes"] + b["outcomes"]
    assert {code for _, _, code, _ in outcomes} <= {"ok", "concurrent_update"}
    increments_ok = sum(1 for _, op, code, _ in outcomes if "increment" in op and code == "ok")
    assert increments_ok >= 30  # the locked half never conflicts
    assert await _counter(backend) == increments_ok
    for key in keys:
        got = {out["id"] for rid, op, code, out in outcomes if rid.endswith(f"idem-{key}") and out}
        assert len(got) == 1, (key, got)
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        deals = await backend.entities.repository(deal_entity, tx, ORG).count()
    finally:
        await tx.rollback()
    assert deals == len(keys)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_table.c.request_id, audit_table.c.outcome).where(
                    audit_table.c.org_key == ORG
                )
            )
        ).all()
    audited = {(rid, outcome) for rid, outcome in rows}
    for rid, op, code, _ in outcomes:
        if code == "ok" and "increment" in op:
            assert (rid, "success") in audited, rid
    replays = sum(1 for _, outcome in rows if outcome == "replayed")
    assert replays == len(keys)  # each key: one caller ran the handler, the other replayed
    assert await chain_verifies(backend)


async def test_a_process_dying_inside_a_batch_leaves_only_committed_calls(
    shared: tuple[AsyncEngine, SqlBackend], tmp_path: Path
) -> None:
    """`os._exit` after 23 calls of a batch committing every 5: exactly the 20 committed
    increments are stored, with one audit entry each; the chain verifies and the next process
    continues the chain."""
    engine, backend = shared
    report = await _spawn(engine, tmp_path, "dies", exit_after=23, commit_every=5)
    assert report["returncode"] == 1, report["stderr"]
    assert report["committed"] == 20
    assert await _counter(backend) == 20
    async with engine.connect() as conn:
        batch_entries = (
            await conn.execute(
                select(func.count())
                .select_from(audit_table)
                .where(audit_table.c.request_id.like("dies-b-%"))
            )
        ).scalar_one()
    assert batch_entries == 20
    assert await chain_verifies(backend)
    after = await _spawn(engine, tmp_path, "after", increments=4)
    assert after["returncode"] == 0, after["stderr"]
    assert await _counter(backend) == 20 + sum(
        1 for _, _, code, _ in after["outcomes"] if code == "ok"
    )
    assert await chain_verifies(backend)
