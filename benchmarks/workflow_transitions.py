"""Workflow transitions vs a hand-written state-change command, through the same executor.

(a) `wf.submit` of a `define_workflow` spec: load the instance, check the source state and the
    guard, update the instance (record version), insert a history step, emit `<wf>.transitioned`,
    audit record;
(b) a hand-written command doing the same state change on a plain entity: `repo.get`, check the
    state, `repo.update`, emit one event, audit record (no history row).

Each round starts N instances (not timed), then times N transitions one after another. Backends:
memory and a SQLite file (`--pg` adds PostgreSQL from CONTRACTSPEC_TEST_POSTGRES_DSN). We print
the median transitions/s of the rounds and the ratio (b)/(a): what the workflow's history, guard
and bookkeeping cost over the minimal hand-written change.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    HandlerCtx,
    MemoryBackend,
    SpecRegistry,
    define_command,
    define_entity,
    define_event,
    define_workflow,
    transition,
)

ROUNDS = 3
N = {"memory": 2000, "sqlite": 300, "postgres": 300}


class Ticket(BaseModel):
    id: str
    state: str


class Move(BaseModel):
    id: str


class Moved(BaseModel):
    id: str
    state: str


ticket = define_entity("bench.ticket", Ticket)
moved = define_event("bench.ticket.moved", payload=Moved)
submit_plain = define_command("bench.ticket.submit", input=Move, output=Ticket, emits=[moved])
create_plain = define_command("bench.ticket.create", input=Move, output=Ticket)

flow = define_workflow(
    "bench.flow",
    states=["draft", "submitted", "done"],
    initial="draft",
    final=["done"],
    transitions=[
        transition("submit", source="draft", target="submitted", guard=lambda i, _x: True),
        transition("finish", source="submitted", target="done"),
    ],
)


def build() -> SpecRegistry:
    registry = SpecRegistry(ticket, moved, submit_plain, create_plain, flow)

    @registry.handler(create_plain)
    async def create(inp: Move, ctx: HandlerCtx) -> Ticket:
        return await ctx.repo(ticket).add(Ticket(id=inp.id, state="draft"))

    @registry.handler(submit_plain)
    async def submit(inp: Move, ctx: HandlerCtx) -> Ticket:
        repo = ctx.repo(ticket)
        row = await repo.require(inp.id)
        if row.state != "draft":
            raise ValueError("not a draft")
        row = await repo.update(row.model_copy(update={"state": "submitted"}))
        ctx.emit(moved, {"id": row.id, "state": row.state})
        return row

    return registry


CTX = CallContext(actor=Actor.user("bench"), org_id="org-1")


async def one_round(ex: Executor, n: int, tag: str) -> tuple[float, float]:
    ids = []
    for i in range(n):
        out = await ex.execute("bench.flow.start", {}, CTX)
        ids.append(out.model_dump()["id"])
        await ex.execute("bench.ticket.create", {"id": f"{tag}-{i}"}, CTX)
    started = time.perf_counter()
    for iid in ids:
        await ex.execute("bench.flow.submit", {"instance_id": iid}, CTX)
    wf_rate = n / (time.perf_counter() - started)
    started = time.perf_counter()
    for i in range(n):
        await ex.execute("bench.ticket.submit", {"id": f"{tag}-{i}"}, CTX)
    plain_rate = n / (time.perf_counter() - started)
    return wf_rate, plain_rate


async def run(kind: str, backend: Backend, registry: SpecRegistry) -> None:
    ex = Executor(registry, backend=backend)
    results = [await one_round(ex, N[kind], f"r{r}") for r in range(ROUNDS)]
    wf = statistics.median(r[0] for r in results)
    plain = statistics.median(r[1] for r in results)
    print(
        f"{kind:8s} workflow {wf:8.0f} transitions/s   hand-written {plain:8.0f}/s   "
        f"ratio {plain / wf:4.2f}x"
    )


async def main() -> None:
    registry = build()
    await run("memory", MemoryBackend(), registry)
    from contractspec.core.sql import SqlBackend, sqlite_engine

    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(Path(tmp) / "bench.db")
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        await run("sqlite", sql, registry)
        await engine.dispose()
    if "--pg" in sys.argv:
        from contractspec.core.testing import temporary_postgres_engine

        async with temporary_postgres_engine() as pg:
            sql = SqlBackend(pg, registry)
            await sql.create_all()
            await run("postgres", sql, registry)


if __name__ == "__main__":
    print(sys.version.split()[0], "| rounds:", ROUNDS, "| N per round:", N)
    asyncio.run(main())
