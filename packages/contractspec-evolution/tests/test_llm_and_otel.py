"""Optional integrations: the LLM rationale writer (offline models) and the OpenTelemetry bridge."""

from __future__ import annotations

from datetime import timedelta

import pytest
from evolution_app import POLICY, build_registry
from evolution_support import T0, sample
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from contractspec.agent.messages import ModelRequest
from contractspec.agent.testing import FunctionModel, ScriptedModel, call
from contractspec.core import (
    Actor,
    CallContext,
    ConfigurationError,
    Executor,
    MemoryTelemetrySink,
    SpecValidationError,
)
from contractspec.evolution import ALL_TENANTS, FanOutSink, SpecGenerator
from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity
from contractspec.evolution.llm import SYSTEM_PROMPT, LLMRationaleWriter
from contractspec.evolution.otel import OpenTelemetrySink, instrument


def a_suggestion():  # type: ignore[no-untyped-def]
    intent = Intent(
        id="i-1", kind=IntentKind.LATENCY_REGRESSION, operation="shop.deal.move",
        org_id=ALL_TENANTS, window_start=T0, window_end=T0 + timedelta(minutes=15),
        detected_at=T0, confidence=0.8, severity=IntentSeverity.CRITICAL, summary="slow",
        evidence={"baseline_p95_ms": 10.0, "p95_ms": 50.0},
    )  # fmt: skip
    (s,) = SpecGenerator(build_registry()).suggest([intent])
    return s


async def test_model_writes_the_rationale_and_the_facts_stay_computed() -> None:
    """The model's text replaces the rationale; patch, diff and breaking flag are unchanged."""
    seen: list[ModelRequest] = []

    def reply(request: ModelRequest) -> str:
        seen.append(request)
        return "p95 rose fivefold; a 40 ms timeout bounds waiting. Not breaking."

    s = a_suggestion()
    out = await LLMRationaleWriter(FunctionModel(reply, model_name="offline")).rewrite(s)
    assert out.rationale == "p95 rose fivefold; a 40 ms timeout bounds waiting. Not breaking."
    assert (out.patch, out.diff, out.breaking, out.fingerprint) == (
        s.patch,
        s.diff,
        s.breaking,
        s.fingerprint,
    )
    assert out.evidence["rationale_by"] == "offline"
    assert out.evidence["computed_rationale"] == s.rationale
    (request,) = seen
    assert request.messages[0].content == SYSTEM_PROMPT
    assert '"breaking": false' in request.messages[1].content


@pytest.mark.parametrize(
    "reply",
    ["", "x" * 2000, call("do_something"), RuntimeError("provider down")],
    ids=["empty", "too-long", "tool-call", "failure"],
)
async def test_bad_model_answers_keep_the_computed_rationale(reply: object) -> None:
    """Empty, over-long, tool-calling or failing models leave the suggestion as computed."""
    s = a_suggestion()
    out = await LLMRationaleWriter(ScriptedModel([reply]), max_chars=1500).rewrite(s)  # type: ignore[list-item]
    assert out == s


def test_writer_configuration_is_checked() -> None:
    """Non-positive limits are refused."""
    with pytest.raises(ConfigurationError):
        LLMRationaleWriter(ScriptedModel([]), max_chars=0)


async def test_otel_sink_reports_spans_and_histograms() -> None:
    """HTTP samples become SERVER spans (HTTP conventions, trace joined); executor calls get the
    live span of `instrument` and an `rpc.server.duration` point per call."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    sink = OpenTelemetrySink(tracer_provider=tracer_provider, meter_provider=meter_provider)
    memory = MemoryTelemetrySink()
    fan = FanOutSink(sink, memory)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    fan.record(sample("POST /deals/{deal_id}", duration_ms=120.0, success=False,
                      error_code="http_503", trace_id=trace_id))  # fmt: skip
    executor = Executor(build_registry(), policy=POLICY, telemetry=fan)
    instrument(executor, tracer_provider=tracer_provider)
    sales = CallContext(actor=Actor.user("u-1", roles="sales"), org_id="org-1")
    created = await executor.execute("shop.deal.create", {"title": "Big", "amount": 5}, sales)
    with pytest.raises(SpecValidationError):  # the handler rejects a non-positive amount
        await executor.execute("shop.deal.create", {"title": "Free", "amount": 0}, sales)
    assert len(memory.samples) == 3
    http_span, ok, failed = spans.get_finished_spans()
    assert (http_span.name, http_span.kind) == ("POST /deals/{deal_id}", SpanKind.SERVER)
    assert http_span.attributes["http.route"] == "/deals/{deal_id}"
    assert http_span.attributes["http.request.method"] == "POST"
    assert http_span.attributes["http.response.status_code"] == 503
    assert http_span.attributes["error.type"] == "503"
    assert http_span.context.trace_id == int(trace_id, 16)
    assert http_span.end_time - http_span.start_time == 120_000_000
    assert http_span.status.status_code is StatusCode.ERROR
    # Executor calls: one live INTERNAL span each, from contractspec.core.otel (not rebuilt here).
    assert (ok.name, ok.kind) == ("shop.deal.create", SpanKind.INTERNAL)
    assert ok.attributes["contractspec.outcome"] == "ok"
    assert ok.status.status_code is StatusCode.UNSET
    assert (failed.name, failed.kind) == ("shop.deal.create", SpanKind.INTERNAL)
    assert failed.attributes["error.type"] == "validation_error"
    assert failed.attributes["contractspec.org_id"] == "org-1"
    assert failed.status.status_code is StatusCode.ERROR
    metrics = {
        m.name: m
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    (http_point,) = metrics["http.server.request.duration"].data.data_points
    assert (http_point.count, http_point.sum) == (1, 0.12)
    assert metrics["http.server.request.duration"].unit == "s"
    rpc_points = {
        (p.attributes["rpc.method"], p.attributes.get("error.type")): p.count
        for p in metrics["rpc.server.duration"].data.data_points
    }
    assert rpc_points == {
        ("shop.deal.create", None): 1,
        ("shop.deal.create", "validation_error"): 1,
    }
    assert created.id
    tracer_provider.shutdown()
    meter_provider.shutdown()
