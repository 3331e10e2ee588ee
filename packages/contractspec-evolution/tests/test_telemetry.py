"""Telemetry batches (validation) and the ASGI middleware."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from evolution_support import T0, sample
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.core import MemoryTelemetrySink, SpecValidationError
from contractspec.core.testing import FakeClock
from contractspec.evolution import TelemetryASGIMiddleware, TelemetryBatch


def good(**over: Any) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "timestamp_s": [1.0, 2.0],
        "duration_ms": [3.0, 4.0],
        "success": np.array([True, False]),
        "operation": [0, 0],
        "operations": ["crm.a.b"],
    }
    cols.update(over)
    return cols


def test_from_samples_builds_categorical_columns() -> None:
    """Samples become columns with codes into category lists."""
    batch = TelemetryBatch.from_samples(
        [
            sample("crm.a.b", at=0, org_id="o1"),
            sample(
                "crm.c.d", at=60, org_id=None, success=False, error_code="conflict", trace_id="t"
            ),
        ]
    )
    assert len(batch) == 2
    assert batch.operations == ("crm.a.b", "crm.c.d")
    assert batch.operation.tolist() == [0, 1]
    assert batch.orgs == ("o1", None)
    assert batch.error.tolist() == [-1, 0]
    assert batch.error_codes == ("conflict",)
    assert batch.trace_ids == (None, "t")
    assert batch.timestamp_s.tolist() == [T0.timestamp(), T0.timestamp() + 60]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"timestamp_s": [[1.0, 2.0]]}, "timestamp_s"),
        ({"timestamp_s": [1.0, float("inf")]}, "timestamp_s"),
        ({"duration_ms": [1.0]}, "duration_ms"),
        ({"duration_ms": [1.0, -2.0]}, "duration_ms"),
        ({"success": [1, 0]}, "success"),
        ({"operation": [0, 1]}, "operation"),
        ({"operation": [0.0, 0.0]}, "operation"),
        ({"operations": []}, "operations"),
        ({"orgs": [3]}, "orgs"),
        ({"org": [0, 2], "orgs": ["a", "b"]}, "org"),
        ({"error": [0, -2], "error_codes": ["x"]}, "error"),
        ({"error_codes": [""]}, "error_codes"),
        ({"trace_ids": ["t"]}, "trace_ids"),
    ],
)
def test_bad_columns_name_the_field(over: dict[str, Any], field: str) -> None:
    """Every invalid column raises SpecValidationError naming it."""
    with pytest.raises(SpecValidationError) as info:
        TelemetryBatch.from_arrays(**good(**over))
    assert info.value.details["field"] == field
    assert info.value.errors[0]["field"] == field


def test_naive_sample_timestamp_is_refused() -> None:
    """from_samples refuses naive timestamps, naming the sample."""
    with pytest.raises(SpecValidationError, match=r"samples\[0\].timestamp"):
        TelemetryBatch.from_samples([sample(at=T0.replace(tzinfo=None))])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=5),
    st.lists(st.integers(-3, 3), min_size=1, max_size=5),
)
def test_arbitrary_columns_validate_or_raise_validation_errors(
    durations: list[float], codes: list[int]
) -> None:
    """Arbitrary durations and codes either validate or raise SpecValidationError, never crash."""
    n = len(durations)
    codes = (codes * n)[:n]
    valid = all(np.isfinite(d) and d >= 0 for d in durations) and all(c in (0, 1) for c in codes)
    kwargs: dict[str, Any] = {
        "timestamp_s": np.zeros(n), "duration_ms": durations,
        "success": np.ones(n, dtype=bool), "operation": codes, "operations": ["crm.a.b", "crm.c.d"],
    }  # fmt: skip
    if valid:
        batch = TelemetryBatch.from_arrays(**kwargs)
        assert batch.operation.tolist() == codes
    else:
        with pytest.raises(SpecValidationError) as info:
            TelemetryBatch.from_arrays(**kwargs)
        assert info.value.details["field"] in {"duration_ms", "operation"}


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    status = 404 if scope["path"] == "/missing" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class _Route:
    path = "/deals/{deal_id}"


async def _call(mw: TelemetryASGIMiddleware, path: str, headers: list, route: Any = None) -> list:
    sent: list = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "post", "path": path, "headers": headers}
    if route is not None:
        scope["route"] = route
    await mw(scope, receive, send)
    return sent


async def test_asgi_middleware_reports_one_sample_per_request() -> None:
    """Route template, status, tenant header, traceparent and content-length become a sample."""
    sink = MemoryTelemetrySink()
    clock = FakeClock(T0)
    mw = TelemetryASGIMiddleware(_app, sink, clock=clock)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    sent = await _call(
        mw, "/deals/42",
        [(b"x-org-id", b"org-9"), (b"traceparent", f"00-{trace}-00f067aa0ba902b7-01".encode()),
         (b"content-length", b"17")],
        route=_Route(),
    )  # fmt: skip
    assert sent[0]["status"] == 200
    await _call(mw, "/missing", [(b"traceparent", b"garbage")])
    with pytest.raises(RuntimeError):
        await _call(mw, "/boom", [])
    ok, missing, boom = sink.samples
    assert (ok.operation, ok.org_id, ok.trace_id, ok.payload_size, ok.success, ok.error_code) == (
        "POST /deals/{deal_id}", "org-9", trace, 17, True, None,
    )  # fmt: skip
    assert (ok.channel, ok.timestamp) == ("http", T0)
    assert ok.duration_ms >= 0
    assert (missing.operation, missing.success, missing.error_code, missing.trace_id) == (
        "POST /missing", False, "http_404", None,
    )  # fmt: skip
    assert (boom.success, boom.error_code) == (False, "http_500")


async def test_asgi_middleware_passes_other_scopes_and_uses_route_name() -> None:
    """Lifespan scopes pass through untouched; route_name overrides the operation name."""
    sink = MemoryTelemetrySink()
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 201})

    mw = TelemetryASGIMiddleware(app, sink, route_name=lambda scope: "crm.deal.create")
    await mw({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    await _call(mw, "/x", [])
    assert seen == ["lifespan", "http"]
    assert [s.operation for s in sink.samples] == ["crm.deal.create"]
