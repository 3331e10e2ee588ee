"""Tracing overhead: the same command with and without `contractspec.core.otel.instrument`.

Memory ports (the executor's own cost):

(a) not instrumented (the hook is one attribute check);
(b) instrumented, no SDK installed as provider (the API's no-op tracer: non-recording spans);
(c) instrumented with an SDK `TracerProvider` whose `BatchSpanProcessor` exports to a no-op
    exporter (spans are recorded, attributes set, queued and dropped).

SQLite file (`SqlBackend`, `executor.batch()` off, one call per transaction):

(d) not instrumented: buffered writes take the driver fast path;
(e) a no-op `before_cursor_execute` listener on the engine, no tracing: the fast path is off
    (what any statement listener costs);
(f) `instrument` plus `opentelemetry-instrumentation-sqlalchemy` on the engine (same SDK setup):
    every statement goes through SQLAlchemy and gets a span.

All in one process, alternating rounds; we print the median executions/s and the cost per call.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider
from pydantic import BaseModel
from sqlalchemy import event

from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    HandlerCtx,
    RolePermissions,
    SpecRegistry,
    define_command,
    define_entity,
    requires,
)
from contractspec.core.otel import instrument
from contractspec.core.sql import SqlBackend, sqlite_engine

ROUNDS = 5
N = 5_000
N_SQL = 1_000


class Note(BaseModel):
    id: str
    text: str


class AddNote(BaseModel):
    text: str


note = define_entity("bench.note", Note)
add_note = define_command("bench.note.add", input=AddNote, output=Note, auth=requires("note.*"))


class Dropping(SpanExporter):
    """Accepts every batch and drops it (the export cost is the collector's, not ours)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def build_registry() -> SpecRegistry:
    registry = SpecRegistry(note, add_note)

    @registry.handler(add_note)
    async def _add(inp: AddNote, ctx: HandlerCtx) -> Note:
        return await ctx.repo(note).add(Note(id=ctx.new_id(), text=inp.text))

    return registry


async def rate(executor: Executor, ctx: CallContext, n: int) -> float:
    execute = executor.execute
    raw = {"text": "hello"}
    started = time.perf_counter()
    for _ in range(n):
        await execute("bench.note.add", raw, ctx)
    return n / (time.perf_counter() - started)


async def main() -> None:
    policy = RolePermissions({"writer": ["note.*"]})
    ctx = CallContext(actor=Actor.user("u1", roles="writer"), org_id="o1")
    sdk = TracerProvider()
    sdk.add_span_processor(BatchSpanProcessor(Dropping(), max_queue_size=65_536))

    def memory(provider: Any) -> Executor:
        executor = Executor(build_registry(), policy=policy)
        if provider is not None:
            instrument(executor, tracer_provider=provider)
        return executor

    memory_configs = {
        "(a) memory, not instrumented": lambda: memory(None),
        "(b) memory, instrument, no-op API tracer": lambda: memory(NoOpTracerProvider()),
        "(c) memory, instrument, SDK (batch, dropped)": lambda: memory(sdk),
    }
    rates: dict[str, list[float]] = {name: [] for name in memory_configs}
    for make in memory_configs.values():
        await rate(make(), ctx, 1_000)  # warm up
    for _ in range(ROUNDS):
        for name, make in memory_configs.items():
            rates[name].append(await rate(make(), ctx, N))

    with tempfile.TemporaryDirectory() as tmp:
        registry = build_registry()
        plain_engine = sqlite_engine(Path(tmp) / "plain.db")
        listened_engine = sqlite_engine(Path(tmp) / "listened.db")
        traced_engine = sqlite_engine(Path(tmp) / "traced.db")
        event.listen(listened_engine.sync_engine, "before_cursor_execute", lambda *args: None)
        plain = SqlBackend(plain_engine, registry)
        listened = SqlBackend(listened_engine, registry)
        traced = SqlBackend(traced_engine, registry)
        for backend in (plain, listened, traced):
            await backend.create_all()
        sqlalchemy_tracing = SQLAlchemyInstrumentor()
        sqlalchemy_tracing.instrument(
            engine=traced_engine.sync_engine, tracer_provider=sdk, skip_dep_check=True
        )
        plain_executor = Executor(registry, backend=plain, policy=policy)
        listened_executor = Executor(registry, backend=listened, policy=policy)
        traced_executor = Executor(registry, backend=traced, policy=policy)
        instrument(traced_executor, tracer_provider=sdk)
        sql_configs = {
            "(d) SQLite file, not instrumented": plain_executor,
            "(e) SQLite file, a no-op statement listener": listened_executor,
            "(f) SQLite file, instrument + SQLAlchemy spans": traced_executor,
        }
        for name, executor in sql_configs.items():
            rates[name] = []
            await rate(executor, ctx, 200)  # warm up
        for _ in range(ROUNDS):
            for name, executor in sql_configs.items():
                rates[name].append(await rate(executor, ctx, N_SQL))
        sqlalchemy_tracing.uninstrument()
        for engine in (plain_engine, listened_engine, traced_engine):
            await engine.dispose()
    sdk.shutdown()

    print(f"otel_overhead  python {sys.version.split()[0]}  {ROUNDS} rounds (median)")
    baselines = {"(a)": "(a)", "(b)": "(a)", "(c)": "(a)", "(d)": "(d)", "(e)": "(d)", "(f)": "(d)"}
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, r in medians.items():
        base = next(v for k, v in medians.items() if k.startswith(baselines[name[:3]]))
        extra = 1e6 / r - 1e6 / base
        print(f"  {name:<48}: {r:>9,.0f} executions/s  ({1e6 / r:7.2f} us/call, +{extra:6.2f} us)")


if __name__ == "__main__":
    asyncio.run(main())
