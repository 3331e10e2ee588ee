"""Group commit on SQLite: a call with at most one write that may fail runs without its own
savepoint (counted on the sqlite3 connection), and a failing call still leaves nothing behind
(checked on memory, a SQLite file and PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConflictError,
    Executor,
    HandlerCtx,
    Index,
    SpecRegistry,
    define_command,
    define_entity,
    public,
)

CTX = CallContext(actor=Actor.user("u1"), org_id="org-1")


class Item(BaseModel):
    id: str
    n: int = 0
    code: str | None = None


class Add(BaseModel):
    id: str
    code: str | None = None


class BumpAdd(BaseModel):
    bump: str
    add: str
    code: str | None = None


class AddTwo(BaseModel):
    first: str
    second: str


ITEM = define_entity("t.item", Item, indexes=[Index(("code",), unique=True)])
ADD = define_command("t.item.add", input=Add, output=Item, auth=public())
BUMP_ADD = define_command("t.item.bump_add", input=BumpAdd, output=Item, auth=public())
BUMP_CODE = define_command("t.item.bump_code", input=BumpAdd, output=Item, auth=public())
ADD_TWO = define_command("t.item.add_two", input=AddTwo, output=Item, auth=public())


async def add(inp: Add, ctx: HandlerCtx) -> Item:
    return await ctx.repo(ITEM).add(Item(id=inp.id, code=inp.code))


async def bump_add(inp: BumpAdd, ctx: HandlerCtx) -> Item:
    """Update a row (written earlier in the batch: cannot fail), then insert one (may fail)."""
    repo = ctx.repo(ITEM)
    item = await repo.require(inp.bump)
    await repo.update(item.model_copy(update={"n": item.n + 1}))
    return await repo.add(Item(id=inp.add, code=inp.code))


async def bump_code(inp: BumpAdd, ctx: HandlerCtx) -> Item:
    """Update a row's unique column (may fail) and another written row (cannot fail)."""
    repo = ctx.repo(ITEM)
    other = await repo.require(inp.add)
    await repo.update(other.model_copy(update={"n": other.n + 1}))
    item = await repo.require(inp.bump)
    return await repo.update(item.model_copy(update={"code": inp.code}))


async def add_two(inp: AddTwo, ctx: HandlerCtx) -> Item:
    """Two inserts: both may fail, so the call needs its savepoint."""
    repo = ctx.repo(ITEM)
    await repo.add(Item(id=inp.first))
    return await repo.add(Item(id=inp.second))


@pytest.fixture
def registry() -> SpecRegistry:
    """Overrides conftest's registry so the `backend` fixture creates the item table."""
    registry = SpecRegistry(ITEM, ADD, BUMP_ADD, BUMP_CODE, ADD_TWO)
    registry.bind(ADD, add)
    registry.bind(BUMP_ADD, bump_add)
    registry.bind(BUMP_CODE, bump_code)
    registry.bind(ADD_TWO, add_two)
    return registry


class Tracer:
    """Records the statements of the engine's sqlite3 connections while `recording()` runs
    (installed on every new connection; the pool is emptied first)."""

    def __init__(self) -> None:
        self.seen: list[str] | None = None

    def _on(self, statement: str) -> None:
        if self.seen is not None:
            self.seen.append(statement)

    async def install(self, engine: AsyncEngine) -> None:
        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            raw = dbapi_connection.driver_connection
            conn = getattr(raw, "_conn", raw)
            assert isinstance(conn, sqlite3.Connection), conn
            conn.set_trace_callback(self._on)

        await engine.dispose()
        event.listen(engine.sync_engine, "connect", on_connect)

    @contextmanager
    def recording(self) -> Iterator[list[str]]:
        self.seen = seen = []
        try:
            yield seen
        finally:
            self.seen = None


async def _rows(backend: Backend) -> dict[str, dict[str, Any]]:
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        found = await backend.entities.repository(ITEM, tx, "org-1").find()
    finally:
        await tx.rollback()
    return {i.id: i.model_dump() for i in found}


def _savepoints(statements: list[str]) -> list[str]:
    return [s for s in statements if "SAVEPOINT" in s.upper()]


async def test_a_call_whose_only_failable_write_is_one_row_opens_no_savepoint(
    registry: SpecRegistry, sql_kind: str, sql_engine: AsyncEngine
) -> None:
    """SQLite, in a batch: `bump_add` (an update of a row the batch wrote + one insert) and
    `bump_code` (a certain update + an update of a unique column, run first) run without
    SAVEPOINT; `add_two` (two inserts, both may fail) still opens one. Fails if the per-call
    savepoint comes back for the first kinds."""
    if sql_kind != "sqlite":
        pytest.skip("the inline SQLite driver's per-call savepoint (PostgreSQL sends it batched)")
    from contractspec.core.sql import SqlBackend

    tracer = Tracer()
    await tracer.install(sql_engine)
    backend = SqlBackend(sql_engine, registry)
    await backend.create_all()
    ex = Executor(registry, backend=backend)
    async with ex.batch(commit_every=100):
        await ex.execute("t.item.add", {"id": "a"}, CTX)
        with tracer.recording() as lone:
            await ex.execute("t.item.bump_add", {"bump": "a", "add": "b"}, CTX)
            await ex.execute("t.item.bump_add", {"bump": "a", "add": "c"}, CTX)
        with tracer.recording() as two:
            await ex.execute("t.item.add_two", {"first": "d", "second": "e"}, CTX)
        with tracer.recording() as unique:
            await ex.execute("t.item.bump_code", {"bump": "a", "add": "b", "code": "x"}, CTX)
    assert _savepoints(lone) == []
    assert [s for s in lone if s.upper().startswith(("INSERT", "UPDATE"))], lone  # traced
    assert _savepoints(two) == ["SAVEPOINT cs_call", "RELEASE SAVEPOINT cs_call"]
    # One failable row (the unique column) and one certain update: no savepoint, and the
    # failable update runs first (if it fails, nothing of the call was written).
    assert _savepoints(unique) == []
    writes = [w for w in unique if w.upper().startswith("UPDATE")]
    assert len(writes) == 2
    assert "code" in writes[0]
    assert "code" not in writes[1]
    rows = await _rows(backend)
    assert {k: (v["n"], v["code"]) for k, v in rows.items()} == {
        "a": (2, "x"), "b": (1, None), "c": (0, None), "d": (0, None), "e": (0, None)
    }  # fmt: skip


async def test_a_failing_call_leaves_nothing_and_the_batch_goes_on(
    registry: SpecRegistry, backend: Backend
) -> None:
    """In a batch: `bump_add` whose insert conflicts (taken id, taken unique code) raises
    ConflictError and its update of `a` is not kept; so do two inserts of which the second
    conflicts, and `bump_code` whose unique column is taken (the other row's bump is not kept);
    the calls around them commit (memory, SQLite file, PostgreSQL)."""
    ex = Executor(registry, backend=backend)
    async with ex.batch(commit_every=100):
        await ex.execute("t.item.add", {"id": "a"}, CTX)
        await ex.execute("t.item.add", {"id": "z", "code": "taken"}, CTX)
        await ex.execute("t.item.bump_add", {"bump": "a", "add": "b"}, CTX)
        with pytest.raises(ConflictError):
            await ex.execute("t.item.bump_add", {"bump": "a", "add": "b"}, CTX)
        with pytest.raises(ConflictError):
            await ex.execute("t.item.bump_add", {"bump": "a", "add": "c", "code": "taken"}, CTX)
        with pytest.raises(ConflictError):
            await ex.execute("t.item.add_two", {"first": "d", "second": "a"}, CTX)
        with pytest.raises(ConflictError):  # b's bump must not stay when a's code is refused
            await ex.execute("t.item.bump_code", {"bump": "a", "add": "b", "code": "taken"}, CTX)
        await ex.execute("t.item.bump_add", {"bump": "a", "add": "f"}, CTX)
    rows = await _rows(backend)
    assert {k: (v["n"], v["code"]) for k, v in rows.items()} == {
        "a": (2, None), "b": (0, None), "f": (0, None), "z": (0, "taken")
    }  # fmt: skip
