"""Shared test app for the metering tests: a small API product with plans, per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from attrs import define
from pydantic import BaseModel

from contractspec.core import (
    Executor,
    HandlerCtx,
    MemoryBackend,
    SpecRegistry,
    define_command,
    define_entity,
)
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.metering import (
    Feature,
    Limit,
    MemoryMeteringStore,
    Metering,
    MeteringStore,
    Price,
    Tier,
    define_meter,
    define_plan,
    meter_operation,
)

T0 = datetime(2024, 3, 10, 12, 30, tzinfo=UTC)


class SearchIn(BaseModel):
    query: str
    fail: bool = False


class SearchOut(BaseModel):
    hits: int


class Note(BaseModel):
    id: str
    text: str


class AddNote(BaseModel):
    id: str
    text: str
    tokens: int = 1


class ExportIn(BaseModel):
    fmt: str = "csv"


class ExportOut(BaseModel):
    url: str


note = define_entity("app.note", Note)
search = define_command("app.search", input=SearchIn, output=SearchOut)
add_note = define_command("app.note.add", input=AddNote, output=Note)
burst = define_command("app.burst", input=SearchIn, output=SearchOut)
export = define_command("app.export", input=ExportIn, output=ExportOut)

api_calls = define_meter("api.calls", unit="call", aggregation="count", window="day")
tokens = define_meter("llm.tokens", unit="token", aggregation="sum", window="hour")
burst_calls = define_meter("api.burst", unit="call", aggregation="count", window="hour")
storage = define_meter(
    "storage.bytes",
    unit="byte",
    aggregation="sum",
    window="day",
    event="files.file.uploaded",
    value="size_bytes",
    subject="project_id",
)
active_users = define_meter(
    "users.active",
    unit="user",
    aggregation="unique_count",
    window="month",
    event="files.file.uploaded",
    value="uploader",
)
seats = define_meter("seats", unit="seat", aggregation="latest", window="month")
peak = define_meter("peak.rps", unit="rps", aggregation="max", window="day")

free = define_plan(
    "free",
    entitlements=[
        Limit("api.calls", 5, window="day"),
        Limit("llm.tokens", 100, window="month"),
        Limit("api.burst", 3, window="hour", kind="rate"),
    ],
    prices=[Price("api.calls", unit_amount="0.01")],
)
pro = define_plan(
    "pro",
    entitlements=[
        Feature("export"),
        Limit("api.calls", 1000, window="day"),
        Limit("llm.tokens", 10_000, window="month", overage="allow"),
    ],
    prices=[
        Price(
            "llm.tokens",
            mode="graduated",
            tiers=[Tier(100, 0), Tier(1000, "0.002"), Tier(None, "0.001", flat_amount=1)],
        ),
        Price("storage.bytes", mode="volume", tiers=[Tier(1000, "0.01"), Tier(None, "0.005")]),
    ],
)


def build_registry() -> SpecRegistry:
    """Operations with handlers, meters, plans and bindings."""
    registry = SpecRegistry(
        note,
        search,
        add_note,
        burst,
        export,
        api_calls,
        tokens,
        burst_calls,
        storage,
        active_users,
        seats,
        peak,
        free,
        pro,
        meter_operation(search, meter=api_calls),
        meter_operation(add_note, meter=tokens, amount="input.tokens", subject="input.id"),
        meter_operation(burst, meter=burst_calls),
        meter_operation(export, feature="export"),
    )

    @registry.handler(search)
    async def _search(inp: SearchIn, ctx: HandlerCtx) -> SearchOut:
        if inp.fail:
            raise RuntimeError("search backend down")
        return SearchOut(hits=len(inp.query))

    @registry.handler(add_note)
    async def _add(inp: AddNote, ctx: HandlerCtx) -> Note:
        return await ctx.repo(note).add(Note(id=inp.id, text=inp.text))

    @registry.handler(burst)
    async def _burst(inp: SearchIn, ctx: HandlerCtx) -> SearchOut:
        if inp.fail:
            raise RuntimeError("burst failed")
        return SearchOut(hits=1)

    @registry.handler(export)
    async def _export(inp: ExportIn, ctx: HandlerCtx) -> ExportOut:
        return ExportOut(url=f"https://example.test/export.{inp.fmt}")

    return registry


@define
class App:
    """A metering stack on one backend."""

    kind: str
    registry: SpecRegistry
    store: MeteringStore
    metering: Metering
    executor: Executor
    clock: FakeClock
    engine: Any = None


@asynccontextmanager
async def open_app(
    kind: str, directory: Path, *, clock: FakeClock | None = None, **metering_kwargs: Any
) -> AsyncIterator[App]:
    """The app on `memory`, `sqlite` (a file) or `postgres` (a fresh schema)."""
    clock = clock or FakeClock(T0)
    registry = build_registry()
    if kind == "memory":
        store: MeteringStore = MemoryMeteringStore()
        metering = Metering(registry, store, clock=clock, **metering_kwargs)
        executor = Executor(
            registry,
            backend=MemoryBackend(),
            clock=clock,
            ids=SequentialIds("call"),
            middleware=[metering.middleware()],
        )
        yield App(kind, registry, store, metering, executor, clock)
        return
    from contractspec.core.sql import SqlBackend, create_all
    from contractspec.core.sql import metadata as core_metadata
    from contractspec.metering.sql import SqlMeteringStore, metadata

    async with temporary_sql_engine(kind, directory) as engine:
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        await create_all(engine, core_metadata, metadata)
        store = SqlMeteringStore(engine)
        metering = Metering(registry, store, clock=clock, **metering_kwargs)
        executor = Executor(
            registry,
            backend=backend,
            clock=clock,
            ids=SequentialIds("call"),
            middleware=[metering.middleware()],
        )
        yield App(kind, registry, store, metering, executor, clock, engine)
