"""OpenTelemetry bridge: forward every `TelemetrySample` as a span and a duration measurement.

Install with `pip install 'contractspec-evolution[otel]'`. `OpenTelemetrySink` is a core
`TelemetrySink`; combine it with an `IntentAggregator` through `FanOutSink`:

```python
executor = Executor(registry, telemetry=FanOutSink(aggregator, OpenTelemetrySink()))
```

Attributes follow the OpenTelemetry semantic conventions:

* samples of HTTP requests (operations named `"METHOD /route"`, as `TelemetryASGIMiddleware`
  reports them) become `SERVER` spans named `"METHOD /route"` with `http.request.method`,
  `http.route`, `http.response.status_code` and `error.type`, and a point of the
  `http.server.request.duration` histogram (seconds);
* executor calls become `SERVER` spans named after the operation with `rpc.system=contractspec`,
  `rpc.method` and `error.type`, and a point of `rpc.server.duration` (milliseconds).

Both carry `contractspec.operation.version`, `contractspec.channel` and, when known,
`contractspec.org_id` and `contractspec.variant`. A sample with a 32-hex trace id becomes a child
of that trace (a remote parent), so the spans join the caller's trace.
"""

from __future__ import annotations

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import (
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.evolution.otel needs OpenTelemetry: pip install 'contractspec-evolution[otel]'"
    ) from exc

import os
import re
from typing import Any

from contractspec.core import HTTP_STATUS, TelemetrySample
from contractspec.evolution.telemetry import FanOutSink

__all__ = ["FanOutSink", "OpenTelemetrySink"]

_HTTP = re.compile(r"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|TRACE|CONNECT) (/\S*)\Z")
_HEX32 = re.compile(r"^[0-9a-f]{32}\Z")
#: Bucket boundaries the HTTP semantic conventions advise for `http.server.request.duration` (s).
HTTP_DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


class OpenTelemetrySink:
    """A `TelemetrySink` that reports samples to OpenTelemetry (never raises).

    Args:
        tracer_provider: Tracer provider (default: the global one).
        meter_provider: Meter provider (default: the global one).
    """

    def __init__(
        self, *, tracer_provider: Any | None = None, meter_provider: Any | None = None
    ) -> None:
        self.tracer = trace.get_tracer("contractspec.evolution", tracer_provider=tracer_provider)
        meter = metrics.get_meter("contractspec.evolution", meter_provider=meter_provider)
        self.http_duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(HTTP_DURATION_BUCKETS_S),
        )
        self.rpc_duration = meter.create_histogram(
            "rpc.server.duration", unit="ms", description="Duration of ContractSpec operations."
        )

    def record(self, sample: TelemetrySample) -> None:
        """Report one sample as a span and a histogram point."""
        try:
            self._record(sample)
        except Exception:  # a sink must never fail a call
            return

    def _record(self, sample: TelemetrySample) -> None:
        start_ns = int(sample.timestamp.timestamp() * 1e9)
        end_ns = start_ns + int(sample.duration_ms * 1e6)
        common: dict[str, Any] = {
            "contractspec.operation.version": sample.version,
            "contractspec.channel": sample.channel,
        }
        if sample.org_id is not None:
            common["contractspec.org_id"] = sample.org_id
        if sample.variant is not None:
            common["contractspec.variant"] = sample.variant
        match = _HTTP.match(sample.operation)
        if match is not None:
            status = _http_status(sample)
            metric_attrs: dict[str, Any] = {
                "http.request.method": match.group(1),
                "http.route": match.group(2),
                "http.response.status_code": status,
            }
            if not sample.success:
                metric_attrs["error.type"] = str(status)
            name = sample.operation
            self.http_duration.record(sample.duration_ms / 1000.0, metric_attrs)
        else:
            metric_attrs = {"rpc.system": "contractspec", "rpc.method": sample.operation}
            if not sample.success:
                metric_attrs["error.type"] = sample.error_code or "_OTHER"
            name = sample.operation
            self.rpc_duration.record(sample.duration_ms, metric_attrs)
        context = None
        if sample.trace_id and _HEX32.match(sample.trace_id):
            parent = SpanContext(
                trace_id=int(sample.trace_id, 16),
                span_id=int.from_bytes(os.urandom(8), "big") or 1,
                is_remote=True,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        span = self.tracer.start_span(
            name,
            context=context,
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes={**common, **metric_attrs},
        )
        if not sample.success:
            span.set_status(Status(StatusCode.ERROR, sample.error_code or "error"))
        span.end(end_time=end_ns)


def _http_status(sample: TelemetrySample) -> int:
    if sample.success:
        return 200
    code = sample.error_code or ""
    if code.startswith("http_") and code[5:].isdigit():
        return int(code[5:])
    return HTTP_STATUS.get(code, 500)
