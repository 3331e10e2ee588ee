"""Joining the caller's transaction: an endpoint's write plus one command, per request.

Three ways to write an app row and run `app.note.write` (an audited command with an event):

(a) joined: app INSERT, `execute(..., connection=conn)`, one COMMIT (atomic);
(b) two transactions: app INSERT + COMMIT, then `execute(...)` in its own transaction (what
    services did before: not atomic, one more COMMIT);
(c) on SQLite only, the issue's repro: app INSERT flushed, then `execute(...)` in its own
    transaction while the app's transaction holds the write lock. It waits for the lock until the
    busy timeout and fails with `database is locked` (timed once, with a 1 s timeout instead of
    the default 10 s).

SQLite file and, when `CONTRACTSPEC_TEST_POSTGRES_DSN` is set, PostgreSQL. Alternating rounds in
one process; we print the median requests/s of each way and the ratio.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import Column, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import (
    CallContext,
    ContractSpecError,
    Executor,
    HandlerCtx,
    SpecRegistry,
    define_command,
    define_entity,
    public,
)
from contractspec.core.sql import SqlBackend, sqlite_engine
from contractspec.core.testing import postgres_dsn, temporary_postgres_engine

ROUNDS = 5
N = 500


class Note(BaseModel):
    id: str
    text: str


class Write(BaseModel):
    text: str


notes = define_entity("app.note", Note)
write = define_command("app.note.write", input=Write, output=Note, auth=public())
app_metadata = MetaData()
orders = Table("bench_orders", app_metadata, Column("id", String(40), primary_key=True))


def build_registry() -> SpecRegistry:
    registry = SpecRegistry(notes, write)

    @registry.handler(write)
    async def handle(inp: Write, ctx: HandlerCtx) -> Note:
        return await ctx.repo(notes).add(Note(id=ctx.new_id(), text=inp.text))

    return registry


async def setup(engine: AsyncEngine) -> Executor:
    registry = build_registry()
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    async with engine.begin() as conn:
        await conn.run_sync(app_metadata.create_all)
    return Executor(registry, backend=backend)


CTX = CallContext(org_id="acme")


async def joined(engine: AsyncEngine, ex: Executor, i: int) -> None:
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(insert(orders).values(id=f"j{i}"))
        await ex.execute("app.note.write", {"text": "x"}, CTX, connection=conn)
        await conn.commit()


async def two_transactions(engine: AsyncEngine, ex: Executor, i: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(orders).values(id=f"t{i}"))
    await ex.execute("app.note.write", {"text": "x"}, CTX)


Way = Callable[[AsyncEngine, Executor, int], Awaitable[None]]


async def rate(engine: AsyncEngine, ex: Executor, way: Way, start: int) -> float:
    began = time.perf_counter()
    for i in range(start, start + N):
        await way(engine, ex, i)
    return N / (time.perf_counter() - began)


async def compare(label: str, engine: AsyncEngine) -> None:
    ex = await setup(engine)
    await rate(engine, ex, joined, 10**6)  # warm-up
    await rate(engine, ex, two_transactions, 10**6)
    results: dict[str, list[float]] = {"joined": [], "two transactions": []}
    for r in range(ROUNDS):
        results["joined"].append(await rate(engine, ex, joined, r * N))
        results["two transactions"].append(await rate(engine, ex, two_transactions, r * N))
    a = statistics.median(results["joined"])
    b = statistics.median(results["two transactions"])
    print(
        f"{label}: (a) joined {a:,.0f} req/s; (b) two transactions {b:,.0f} req/s; a/b {a / b:.2f}"
    )


async def repro(directory: Path) -> None:
    engine = sqlite_engine(directory / "repro.db", busy_timeout_ms=1_000)
    try:
        ex = await setup(engine)
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(insert(orders).values(id="r1"))
            began = time.perf_counter()
            try:
                await ex.execute("app.note.write", {"text": "x"}, CTX)
                outcome = "completed"
            except ContractSpecError as exc:
                cause = str(exc.__cause__).splitlines()[0] if exc.__cause__ else exc.code
                outcome = f"failed ({cause})"
            waited = time.perf_counter() - began
            await conn.rollback()
            began = time.perf_counter()
            await ex.execute("app.note.write", {"text": "x"}, CTX, connection=conn)
            joined_s = time.perf_counter() - began
            await conn.commit()
        print(
            f"sqlite repro: (c) own transaction while the app holds the lock: {outcome} after "
            f"{waited:.2f} s (busy timeout 1 s); joined: {joined_s * 1000:.2f} ms"
        )
    finally:
        await engine.dispose()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(Path(tmp) / "bench.db")
        try:
            await compare("sqlite file", engine)
        finally:
            await engine.dispose()
        await repro(Path(tmp))
    if postgres_dsn():
        async with temporary_postgres_engine() as engine:
            await compare("postgresql", engine)
    else:
        print("postgresql: skipped (set CONTRACTSPEC_TEST_POSTGRES_DSN)", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
