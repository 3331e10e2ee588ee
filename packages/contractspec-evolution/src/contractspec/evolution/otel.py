"""OpenTelemetry bridge: duration histograms for every `TelemetrySample`, spans for HTTP samples.

Install with `pip install 'contractspec-evolution[otel]'` (it brings `contractspec-core[otel]`).
Executor calls are traced by `contractspec.core.otel.instrument` — a live span around each call,
current while the handler runs, so database spans nest under it; this module re-exports
`instrument`. `OpenTelemetrySink` is a core `TelemetrySink` that adds the metrics; combine it with
an `IntentAggregator` through `FanOutSink`:

```python
from contractspec.evolution.otel import OpenTelemetrySink, instrument

executor = Executor(registry, telemetry=FanOutSink(aggregator, OpenTelemetrySink()))
instrument(executor)  # one live span per call
```

Attributes follow the OpenTelemetry semantic conventions:

* samples of HTTP requests (operations named `"METHOD /route"`, as `TelemetryASGIMiddleware`
  reports them) become `SERVER` spans named `"METHOD /route"` with `http.request.method`,
  `http.route`, `http.response.status_code` and `error.type`, and a point of the
  `http.server.request.duration` histogram (seconds). These spans are built when the sample
  arrives (after the request), from its timestamp and duration;
* executor calls become a point of `rpc.server.duration` (milliseconds) with
  `rpc.system=contractspec`, `rpc.method` and `error.type`; their spans come from
  `instrument`, live, instead of being rebuilt here after the call.

Both carry `contractspec.operation.version`, `contractspec.channel` and, when known,
`contractspec.org_id` and `contractspec.variant` (the names of `contractspec.core.otel.ATTRIBUTES`).
An HTTP sample with a 32-hex trace id becomes a child of that trace (a remote parent), so its span
joins the caller's trace.
"""

from __future__ import annotations

try:
    from opentelemetry import metrics, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    from contractspec.core.otel import ATTRIBUTES, instrument, remote_parent, uninstrument
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.evolution.otel needs OpenTelemetry: pip install 'contractspec-evolution[otel]'"
    ) from exc

import re
from typing import Any

from contractspec.core import HTTP_STATUS, TelemetrySample
from contractspec.evolution.telemetry import FanOutSink

__all__ = ["FanOutSink", "OpenTelemetrySink", "instrument", "uninstrument"]

_HTTP = re.compile(r"^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|TRACE|CONNECT) (/\S*)\Z")
#: Bucket boundaries the HTTP semantic conventions advise for `http.server.request.duration` (s).
HTTP_DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


class OpenTelemetrySink:
    """A `TelemetrySink` that reports samples to OpenTelemetry (never raises).

    Every sample becomes a duration histogram point; HTTP samples also become `SERVER` spans.
    Executor calls get their spans from `instrument(executor)` (see the module docs).

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
        """Report one sample as a histogram point (and, for an HTTP sample, a span)."""
        try:
            self._record(sample)
        except Exception:  # a sink must never fail a call
            return

    def _record(self, sample: TelemetrySample) -> None:
        common: dict[str, Any] = {
            ATTRIBUTES["version"]: sample.version,
            ATTRIBUTES["channel"]: sample.channel,
        }
        if sample.org_id is not None:
            common[ATTRIBUTES["org_id"]] = sample.org_id
        if sample.variant is not None:
            common[ATTRIBUTES["variant"]] = sample.variant
        match = _HTTP.match(sample.operation)
        if match is None:  # an executor call: its span is the live one of `instrument`
            attrs: dict[str, Any] = {"rpc.system": "contractspec", "rpc.method": sample.operation}
            if not sample.success:
                attrs["error.type"] = sample.error_code or "_OTHER"
            self.rpc_duration.record(sample.duration_ms, attrs)
            return
        status = _http_status(sample)
        attrs = {
            "http.request.method": match.group(1),
            "http.route": match.group(2),
            "http.response.status_code": status,
        }
        if not sample.success:
            attrs["error.type"] = str(status)
        self.http_duration.record(sample.duration_ms / 1000.0, attrs)
        start_ns = int(sample.timestamp.timestamp() * 1e9)
        span = self.tracer.start_span(
            sample.operation,
            context=remote_parent(sample.trace_id),
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes={**common, **attrs},
        )
        if not sample.success:
            span.set_status(Status(StatusCode.ERROR, str(status)))
        span.end(end_time=start_ns + int(sample.duration_ms * 1e6))


def _http_status(sample: TelemetrySample) -> int:
    if sample.success:
        return 200
    code = sample.error_code or ""
    if code.startswith("http_") and code[5:].isdigit():
        return int(code[5:])
    return HTTP_STATUS.get(code, 500)
