"""`execute_sync` in a real Jupyter kernel: calls in separate cells share one pooled connection.

A kernel runs an event loop, so `asyncio.run` refuses to start there; `execute_sync` runs every
call of an executor on the executor's own loop thread. Three cells of sync calls on a SQLite file
and on PostgreSQL (a pool of one connection) write and read back, and leave the connection
checked in. (psycopg's async connections happen to survive a change of loop between sequential
calls, so this does not prove the one-loop-per-object design; the executor's own tests do.)
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contractspec.core.testing import postgres_dsn
from contractspec.core.testing.docs import run_python_blocks_in_kernel

SETUP = """
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from contractspec.core import (
    AllowAll, CallContext, Executor, HandlerCtx, SpecRegistry, define_command, define_entity,
    define_query, public,
)
from contractspec.core.sql import SqlBackend, sqlite_engine
from contractspec.core.sync import run_sync


class Note(BaseModel):
    id: str
    text: str


class Write(BaseModel):
    text: str


class Nothing(BaseModel):
    pass


class Count(BaseModel):
    notes: int


notes = define_entity("app.note", Note)
write = define_command("app.note.write", input=Write, output=Note, auth=public())
count = define_query("app.note.count", input=Nothing, output=Count, auth=public())
registry = SpecRegistry(notes, write, count)


@registry.handler(write)
async def handle_write(inp: Write, ctx: HandlerCtx) -> Note:
    return await ctx.repo(notes).add(Note(id=ctx.new_id(), text=inp.text))


@registry.handler(count)
async def handle_count(inp: Nothing, ctx: HandlerCtx) -> Count:
    return Count(notes=await ctx.repo(notes).count())


if KIND == "sqlite":
    engine = sqlite_engine("notes.db")
else:  # one pooled connection, in the schema the test created
    engine = create_async_engine(
        DSN, pool_size=1, max_overflow=0, connect_args={"options": f"-csearch_path={SCHEMA}"}
    )
backend = SqlBackend(engine, registry)


async def create_tables() -> None:
    await backend.create_all()
    await engine.dispose()  # the executor's loop opens its own connections


run_sync(create_tables())
executor = Executor(registry, backend=backend, policy=AllowAll())
ctx = CallContext(org_id="acme")
"""

FIRST = """
first = executor.execute_sync("app.note.write", {"text": "first cell"}, ctx)
"""

SECOND = """
second = executor.execute_sync("app.note.write", {"text": "second cell"}, ctx)
"""

REPORT = """
import json
result = executor.execute_sync("app.note.count", {}, ctx)
pool = engine.pool.status()
print(json.dumps({"notes": result.notes, "texts": [first.text, second.text], "pool": pool}))
"""


def _page(directory: Path, kind: str, dsn: str, schema: str) -> Path:
    settings = f"KIND = {kind!r}\nDSN = {dsn!r}\nSCHEMA = {schema!r}\n"
    cells = [settings + SETUP, FIRST, SECOND, REPORT]
    page = directory / "sync.md"
    page.write_text("".join(f"```python\n{c.strip()}\n```\n\n" for c in cells), encoding="utf-8")
    return page


@pytest.fixture
async def schema(sql_kind: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL schema for `postgres` (dropped afterwards); `""` for SQLite."""
    if sql_kind != "postgres":
        yield ""
        return
    name = f"cs_kernel_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(str(postgres_dsn()))
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{name}"'))
        yield name
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
    finally:
        await admin.dispose()


async def test_execute_sync_cells_share_the_executor_loop_and_its_pool(
    sql_kind: str, schema: str, tmp_path: Path
) -> None:
    """Three cells of `execute_sync` on one pooled connection write and read back both notes
    (fails if a sync call cannot run inside the kernel's loop or keeps the connection)."""
    page = _page(tmp_path, sql_kind, postgres_dsn() or "", schema)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    notebook = run_python_blocks_in_kernel(page, cwd=tmp_path, env=env, timeout=120)
    [out] = notebook.cells[3].outputs
    report = json.loads(str(out["text"]))
    assert report["notes"] == 2
    assert report["texts"] == ["first cell", "second cell"]
    if sql_kind == "postgres":  # one connection, opened in cell 2, checked in after cell 4's call
        assert "Current Checked out connections: 0" in report["pool"]
        assert "Pool size: 1" in report["pool"]
