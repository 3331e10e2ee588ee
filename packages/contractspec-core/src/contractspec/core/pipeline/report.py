"""Stage 4: after the call has ended, one telemetry sample and (when wanted) one traffic record.

Sinks must never fail a call: an exception from a sink is logged and swallowed. A traffic sink
that declares `wants(spec, trace_id)` is asked first, so a successful call nobody records costs no
`CallRecord` (failed calls are always handed over).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from time import perf_counter
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from contractspec.core._log import get_logger
from contractspec.core.context import CallContext
from contractspec.core.errors import ContractSpecError
from contractspec.core.ports import TelemetrySink, TrafficSink
from contractspec.core.records import CallRecord, EventEnvelope, TelemetrySample
from contractspec.core.specs import OperationSpec

if TYPE_CHECKING:
    from contractspec.core.executor import Executor

__all__ = [
    "FanOutTelemetrySink",
    "FanOutTrafficSink",
    "fan_out_telemetry",
    "fan_out_traffic",
    "report",
]

_log = get_logger("contractspec.core.executor")


def report(
    ex: Executor,
    spec: OperationSpec,
    call: CallContext,
    variant: int | None,
    started: float,
    started_at: datetime | None,
    value: Any,
    output: BaseModel | None,
    error: ContractSpecError | None,
    events: tuple[EventEnvelope, ...] = (),
) -> None:
    """Hand the finished call to the telemetry and traffic sinks (never raises)."""
    duration_ms = (perf_counter() - started) * 1000.0
    if started_at is None:
        started_at = ex.clock.now() - timedelta(milliseconds=duration_ms)
    try:
        if ex.telemetry is not None:
            size = call.attributes.get("payload_size")
            ex.telemetry.record(
                TelemetrySample(
                    operation=spec.name,
                    version=spec.version,
                    variant=variant,
                    org_id=call.org_id,
                    actor_id=call.actor.id,
                    channel=call.channel,
                    duration_ms=duration_ms,
                    success=error is None,
                    error_code=error.code if error is not None else None,
                    payload_size=size if isinstance(size, int) else None,
                    trace_id=call.trace_id,
                    timestamp=started_at,
                )
            )
        if ex.traffic is not None and (
            error is not None or ex._traffic_wants is None or ex._traffic_wants(spec, call.trace_id)
        ):
            ex.traffic.record(
                CallRecord(
                    spec=spec,
                    input=value,
                    output=output,
                    error=error,
                    org_id=call.org_id,
                    actor_id=call.actor.id,
                    trace_id=call.trace_id,
                    request_id=call.request_id,
                    channel=call.channel,
                    actor_kind=call.actor.kind.value,
                    actor_roles=call.actor.roles,
                    started_at=started_at,
                    duration_ms=duration_ms,
                    variant=variant,
                    events=events,
                )
            )
    except Exception:  # sinks must never fail a call
        _log.exception("contractspec.sink_failed", operation=spec.ref)


class FanOutTelemetrySink:
    """A `TelemetrySink` handing each sample to several sinks, in order.

    One sink that raises is logged and skipped; the others still get the sample.
    `Executor(telemetry=[a, b])` builds one for you.
    """

    __slots__ = ("sinks",)

    def __init__(self, *sinks: TelemetrySink) -> None:
        self.sinks: tuple[TelemetrySink, ...] = sinks

    def record(self, sample: TelemetrySample) -> None:
        """Hand `sample` to every sink."""
        for sink in self.sinks:
            try:
                sink.record(sample)
            except Exception:
                _log.exception("contractspec.sink_failed", sink=repr(sink))


class FanOutTrafficSink:
    """A `TrafficSink` handing each call record to the sinks that want it, in order.

    Its `wants()` is true when any sink wants the call; failed calls go to every sink.
    `Executor(traffic=[a, b])` builds one for you.
    """

    __slots__ = ("_wants", "sinks")

    def __init__(self, *sinks: TrafficSink) -> None:
        self.sinks: tuple[TrafficSink, ...] = sinks
        self._wants = [getattr(s, "wants", None) for s in self.sinks]

    def wants(self, spec: OperationSpec, trace_id: str | None) -> bool:
        """Whether any sink wants a successful call of `spec` with this trace id."""
        return any(w is None or w(spec, trace_id) for w in self._wants)

    def record(self, record: CallRecord) -> None:
        """Hand `record` to every sink that wants it."""
        for sink, wants in zip(self.sinks, self._wants, strict=True):
            try:
                if record.error is not None or wants is None or wants(record.spec, record.trace_id):
                    sink.record(record)
            except Exception:
                _log.exception("contractspec.sink_failed", sink=repr(sink))


def fan_out_telemetry(
    sinks: TelemetrySink | Sequence[TelemetrySink] | None,
) -> TelemetrySink | None:
    """One sink for `Executor(telemetry=...)`: the sink itself, a fan-out, or `None`."""
    if sinks is None or not isinstance(sinks, Sequence):
        return sinks
    items = list(sinks)
    if not items:
        return None
    return items[0] if len(items) == 1 else FanOutTelemetrySink(*items)


def fan_out_traffic(sinks: TrafficSink | Sequence[TrafficSink] | None) -> TrafficSink | None:
    """One sink for `Executor(traffic=...)`: the sink itself, a fan-out, or `None`."""
    if sinks is None or not isinstance(sinks, Sequence):
        return sinks
    items = list(sinks)
    if not items:
        return None
    return items[0] if len(items) == 1 else FanOutTrafficSink(*items)
