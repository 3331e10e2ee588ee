"""contractspec.core.otel: a live span per call, with the SQL statements it runs as children."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from core_app import build_registry
from opentelemetry import trace
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    ActorKind,
    CallContext,
    ConfigurationError,
    ConflictError,
    Executor,
    HandlerCtx,
    InternalError,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    define_command,
    public,
)
from contractspec.core.otel import instrument, uninstrument
from contractspec.core.sql import SqlBackend
from contractspec.core.testing import temporary_sql_engine

SALES = CallContext(actor=Actor.user("u-sales", roles="sales"), org_id="org-1", channel="http")
POLICY = RolePermissions({"sales": ["deal.*", "contact.*"]})


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider that keeps finished spans in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


class _In(BaseModel):
    key: str


class _Out(BaseModel):
    ok: bool


def _by_name(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in finished if s.name == name]
    return span


async def test_sql_statements_are_children_of_the_operation_span(
    sql_kind: str, tmp_path: Path, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """Every statement of a call (entity, audit and outbox writes included) nests under its span."""
    provider, exporter = spans
    registry = build_registry()
    async with temporary_sql_engine(sql_kind, tmp_path) as engine:
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        instrumentor = SQLAlchemyInstrumentor()
        # skip_dep_check: the instrumentation declares SQLAlchemy < 2.1 but works with 2.1.
        instrumentor.instrument(
            engine=engine.sync_engine, tracer_provider=provider, skip_dep_check=True
        )
        try:
            executor = Executor(registry, backend=backend, policy=POLICY)
            instrument(executor, tracer_provider=provider)
            await executor.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, SALES)
            exporter.clear()
            await executor.execute(
                "crm.deal.create", {"contact_id": "c1", "title": "Big", "amount": "12.50"}, SALES
            )
        finally:
            instrumentor.uninstrument()
    finished = exporter.get_finished_spans()
    operation = _by_name(finished, "crm.deal.create")
    assert operation.kind is SpanKind.INTERNAL
    assert operation.parent is None
    assert dict(operation.attributes or {}) == {
        "contractspec.operation": "crm.deal.create",
        "contractspec.operation.version": 1,
        "contractspec.org_id": "org-1",
        "contractspec.actor.kind": "user",
        "contractspec.channel": "http",
        "contractspec.outcome": "ok",
    }
    assert operation.status.status_code is StatusCode.UNSET
    statements = [s for s in finished if s is not operation]
    assert statements
    for span in statements:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == operation.context.span_id
        assert span.context.trace_id == operation.context.trace_id
    sql = [str((s.attributes or {}).get("db.statement", "")) for s in statements]
    # The buffered writes too: with statement listeners the driver fast path is off.
    for table in ("crm_deal", "cs_outbox", "cs_audit_log"):
        assert any(text.startswith(f"INSERT INTO {table} ") for text in sql), (table, sql)


async def test_denied_call_is_an_error_span_with_outcome_denied(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A denial sets outcome=denied, the error code, status ERROR and a message-free event."""
    provider, exporter = spans
    executor = Executor(build_registry(), policy=POLICY)
    instrument(executor, tracer_provider=provider)
    stranger = CallContext(actor=Actor("billing-bot", ActorKind.SERVICE), org_id="org-7")
    with pytest.raises(PolicyDeniedError):
        await executor.execute(
            "crm.deal.create", {"contact_id": "c1", "title": "T", "amount": 1}, stranger
        )
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes["contractspec.outcome"] == "denied"
    assert attributes["contractspec.error.code"] == "policy_denied"
    assert attributes["error.type"] == "policy_denied"
    assert attributes["contractspec.actor.kind"] == "service"
    assert attributes["contractspec.org_id"] == "org-7"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "policy_denied"
    (event,) = span.events
    assert event.name == "exception"
    assert dict(event.attributes or {}).keys() == {"exception.type", "exception.stacktrace"}
    assert (event.attributes or {})["exception.type"] == (
        "contractspec.core.errors.PolicyDeniedError"
    )


async def test_span_never_carries_the_error_message(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """An error whose message quotes the input leaves no input value in the span (PII stays out)."""
    provider, exporter = spans
    claim = define_command("demo.claim", input=_In, output=_Out, auth=public())
    registry = SpecRegistry(claim)

    @registry.handler(claim)
    async def _claim(inp: _In, ctx: HandlerCtx) -> _Out:
        raise ConflictError(f"{inp.key} is already taken")

    executor = Executor(registry)
    instrument(executor, tracer_provider=provider)
    with pytest.raises(ConflictError, match=r"ada\.lovelace@example\.com is already taken"):
        await executor.execute("demo.claim", {"key": "ada.lovelace@example.com"})
    (span,) = exporter.get_finished_spans()
    dumped = json.dumps(
        {
            "attributes": dict(span.attributes or {}),
            "events": [dict(e.attributes or {}) for e in span.events],
            "status": span.status.description,
        }
    )
    assert "ada.lovelace" not in dumped
    assert (span.attributes or {})["contractspec.error.code"] == "conflict"
    assert (span.attributes or {})["contractspec.outcome"] == "error"
    assert span.events[0].attributes is not None
    assert span.events[0].attributes["exception.type"] == "contractspec.core.errors.ConflictError"


async def test_internal_error_records_the_handlers_exception_type_and_frames(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """An unexpected handler failure: error code internal_error, the cause's type and frames."""
    provider, exporter = spans
    lookup = define_command("demo.lookup", input=_In, output=_Out, auth=public())
    registry = SpecRegistry(lookup)

    @registry.handler(lookup)
    async def _lookup(inp: _In, ctx: HandlerCtx) -> _Out:
        return _Out(ok={"known": True}[inp.key])

    executor = Executor(registry)
    instrument(executor, tracer_provider=provider)
    with pytest.raises(InternalError):
        await executor.execute("demo.lookup", {"key": "private-value"})
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["contractspec.error.code"] == "internal_error"
    assert (span.attributes or {})["contractspec.actor.kind"] == "anonymous"
    (event,) = span.events
    event_attributes = dict(event.attributes or {})
    assert event_attributes["exception.type"] == "builtins.KeyError"
    assert "_lookup" in str(event_attributes["exception.stacktrace"])
    assert "private-value" not in json.dumps(event_attributes)


async def test_span_joins_the_current_span_or_the_callers_trace_id(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """Under a current (server) span the call is its child; without one it joins ctx.trace_id."""
    provider, exporter = spans
    executor = Executor(build_registry(), policy=POLICY)
    instrument(executor, tracer_provider=provider)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /deals", kind=SpanKind.SERVER) as server:
        await executor.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, SALES)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    await executor.execute(
        "crm.contact.create", {"id": "c2", "name": "Bob"}, SALES.replace(trace_id=trace_id)
    )
    first, _, second = exporter.get_finished_spans()
    assert first.parent is not None
    assert first.parent.span_id == server.get_span_context().span_id
    assert second.context.trace_id == int(trace_id, 16)
    assert second.parent is not None
    assert second.parent.is_remote
    assert trace.get_current_span() is trace.INVALID_SPAN  # the context was detached


async def test_uninstrument_stops_tracing(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """After uninstrument the executor opens no span."""
    provider, exporter = spans
    executor = Executor(build_registry(), policy=POLICY)
    instrument(executor, tracer_provider=provider)
    uninstrument(executor)
    await executor.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, SALES)
    assert exporter.get_finished_spans() == ()


def test_instrument_needs_an_executor() -> None:
    """Passing something else (the registry, say) is a ConfigurationError naming the fix."""
    with pytest.raises(ConfigurationError, match=r"instrument\(\) needs the Executor"):
        instrument(build_registry())  # type: ignore[arg-type]


def test_core_runs_calls_without_importing_opentelemetry() -> None:
    """`import contractspec.core` and an untraced call never import OpenTelemetry."""
    code = (
        "import asyncio, sys\n"
        "from pydantic import BaseModel\n"
        "from contractspec.core import Executor, SpecRegistry, define_command, public\n"
        "class M(BaseModel):\n"
        "    n: int\n"
        "op = define_command('demo.echo', input=M, output=M, auth=public())\n"
        "registry = SpecRegistry(op)\n"
        "async def echo(inp, ctx):\n"
        "    return inp\n"
        "registry.handler(op)(echo)\n"
        "print(asyncio.run(Executor(registry).execute('demo.echo', {'n': 1})).n)\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["1", "[]"]


def test_execute_sync_span_is_a_child_of_the_callers_span(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """execute_sync runs on the executor's loop thread, yet under the calling thread's span."""
    provider, exporter = spans
    executor = Executor(build_registry(), policy=POLICY)
    instrument(executor, tracer_provider=provider)
    try:
        with provider.get_tracer("test").start_as_current_span("nightly-import") as job:
            executor.execute_sync("crm.contact.create", {"id": "c1", "name": "Ada"}, SALES)
    finally:
        executor.close()
    operation = _by_name(exporter.get_finished_spans(), "crm.contact.create")
    assert operation.parent is not None
    assert operation.parent.span_id == job.get_span_context().span_id


async def test_cancelled_call_ends_its_span_and_restores_the_context(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    """A call cancelled inside its handler ends its span (outcome error, code cancelled)."""
    provider, exporter = spans
    wait = define_command("demo.wait", input=_In, output=_Out, auth=public())
    registry = SpecRegistry(wait)
    entered = asyncio.Event()

    @registry.handler(wait)
    async def _wait(inp: _In, ctx: HandlerCtx) -> _Out:
        entered.set()
        await asyncio.Event().wait()
        return _Out(ok=True)

    executor = Executor(registry)
    instrument(executor, tracer_provider=provider)
    after: list[object] = []

    async def caller() -> None:  # awaits execute directly: it shares the call's context
        try:
            await executor.execute("demo.wait", {"key": "k"})
        except asyncio.CancelledError:
            after.append(trace.get_current_span())
            raise

    task = asyncio.create_task(caller())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == [trace.INVALID_SPAN]  # the call's span is no longer current
    (span,) = exporter.get_finished_spans()
    assert (span.attributes or {})["contractspec.outcome"] == "error"
    assert (span.attributes or {})["contractspec.error.code"] == "cancelled"
    assert span.status.status_code is StatusCode.ERROR
    assert span.events == ()
