"""Two processes replaying the same events on one database report each completion exactly once."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.growth.journeys import JourneyEngine, MemoryJourneyStore
from contractspec.growth.journeys_sql import SqlJourneyStore

#: The track and the shared history (40 events of 5 learners), defined once for the test and the
#: children.
DEFS = r"""
import datetime as dt
from contractspec.growth.journeys import (
    EventCondition, JourneyEngine, JourneyEvent, Module, Step, define_track,
)
T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
TRACK = define_track("onboarding", 1, modules=[Module("m", [
    Step("deal", completion=EventCondition("deal")),
    Step("invoices", completion=EventCondition("invoice", count=3, within=dt.timedelta(days=2)),
         prerequisites=["deal"]),
    Step("team", completion=EventCondition("deal", count=4, by="org")),
])])
HISTORY = [
    JourneyEvent(f"e{i}", "deal" if i % 3 == 0 else "invoice", f"u{i % 5}", "acme",
                 T0 + dt.timedelta(hours=7 * i))
    for i in range(40)
]
"""

#: Run by each child: handle every event of the history (shuffled by the seed), then print the
#: completions this process reported as JSON.
CHILD = (
    DEFS
    + r"""
import asyncio, json, random, sys
from sqlalchemy.ext.asyncio import create_async_engine
from contractspec.core.sql import sqlite_engine
from contractspec.growth.journeys_sql import SqlJourneyStore

kind, where, schema, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    engine = (sqlite_engine(where) if kind == "sqlite" else create_async_engine(
        where, connect_args={"options": f"-csearch_path={schema}"}))
    try:
        journeys = JourneyEngine([TRACK], SqlJourneyStore(engine))
        events = HISTORY[:]
        random.Random(seed).shuffle(events)
        done = []
        for e in events:
            done += [(c.learner_id, c.step) for c in await journeys.handle(e)]
        print(json.dumps(done))
    finally:
        await engine.dispose()

asyncio.run(main())
"""
)


async def _where(sql_engine: AsyncEngine, sql_kind: str) -> tuple[str, str]:
    if sql_kind == "sqlite":
        return str(sql_engine.url.database), "-"
    async with sql_engine.connect() as conn:
        schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
    return sql_engine.url.render_as_string(hide_password=False), schema


async def test_two_processes_complete_each_step_once(
    sql_engine: AsyncEngine, sql_kind: str, tmp_path: Path
) -> None:
    """Two processes handling the same 40 events in different orders on one SQLite file or
    PostgreSQL schema report every completed step exactly once between them, and the stored
    progress equals a single in-memory run."""
    store = SqlJourneyStore(sql_engine)
    await store.create_all()
    where, schema = await _where(sql_engine, sql_kind)
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            sql_kind,
            where,
            schema,
            str(seed),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    outputs = await asyncio.wait_for(
        asyncio.gather(*(child.communicate() for child in children)), timeout=300
    )
    reported: list[tuple[str, str]] = []
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()
        reported += [(who, step) for who, step in json.loads(out)]
    namespace: dict[str, Any] = {}
    exec(DEFS, namespace)
    reference = JourneyEngine([namespace["TRACK"]], MemoryJourneyStore())
    expected = []
    for e in namespace["HISTORY"]:
        expected += [(c.learner_id, c.step) for c in await reference.handle(e)]
    assert sorted(reported) == sorted(expected)
    assert len(reported) == len(set(reported))
    mine = JourneyEngine([namespace["TRACK"]], store)
    for learner in sorted({who for who, _ in expected}):
        assert await mine.progress("acme", learner, "onboarding") == await reference.progress(
            "acme", learner, "onboarding"
        )
