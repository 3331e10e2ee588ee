"""A batch call that reads the outbox and then fails does not take earlier calls' events with it."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import (
    Actor,
    AllowAll,
    CallContext,
    Executor,
    HandlerCtx,
    NotFoundError,
    SpecRegistry,
    define_command,
    define_event,
    requires,
)
from contractspec.core.sql import SqlBackend, audit_table, outbox_table, sql_transaction


class Ping(BaseModel):
    n: int


pinged = define_event("t.pinged", payload=Ping)
ping = define_command("t.ping", input=Ping, output=Ping, emits=[pinged], auth=requires("t"))
peek = define_command("t.peek", input=Ping, output=Ping, emits=[pinged], auth=requires("t"))
CTX = CallContext(actor=Actor.user("u1"), org_id="o1")


def _registry() -> SpecRegistry:
    registry = SpecRegistry(pinged, ping, peek)

    @registry.handler(ping)
    async def _ping(inp: Ping, ctx: HandlerCtx) -> Ping:
        ctx.emit(pinged, inp)
        return inp

    @registry.handler(peek)
    async def _peek(inp: Ping, ctx: HandlerCtx) -> Ping:
        ctx.emit(pinged, inp)
        sql = sql_transaction(ctx.tx)
        await sql.execute(select(func.count()).select_from(outbox_table))  # flushes own rows
        raise NotFoundError("peeked, then failed")

    return registry


async def test_a_failing_call_that_reads_the_outbox_keeps_earlier_events(
    sql_engine: AsyncEngine,
) -> None:
    """ping, peek (reads cs_outbox, fails), ping: exactly the two pings' events and audit
    entries are stored and the chain verifies."""
    registry = _registry()
    backend = SqlBackend(sql_engine, registry)
    await backend.create_all()
    ex = Executor(registry, backend=backend, policy=AllowAll())
    async with ex.batch(commit_every=100):
        await ex.execute("t.ping", {"n": 1}, CTX)
        with pytest.raises(NotFoundError):
            await ex.execute("t.peek", {"n": 2}, CTX)
        await ex.execute("t.ping", {"n": 3}, CTX)
    async with sql_engine.connect() as conn:
        events = (await conn.execute(select(outbox_table.c.payload))).scalars().all()
        audits = (await conn.execute(select(audit_table.c.action))).scalars().all()
    assert sorted(e["n"] for e in events) == [1, 3]
    assert audits == ["t.ping", "t.ping"]
    assert await backend.audit.verify("o1")
