"""Telemetry input: columnar batches of samples, and an ASGI middleware for plain HTTP apps.

The executor already reports one unsampled `TelemetrySample` per call through core's
`TelemetrySink` port: pass an `IntentAggregator` as `Executor(telemetry=...)`. For high volumes
(replays, log imports, other processes) hand the aggregator a `TelemetryBatch` of numpy columns
instead of objects. Plain ASGI apps (FastAPI, Starlette, ...) report through
`TelemetryASGIMiddleware`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from datetime import UTC, datetime
from time import perf_counter
from typing import Any

import numpy as np
import numpy.typing as npt
from attrs import define, field

from contractspec.core import (
    Clock,
    FanOutTelemetrySink,
    SpecValidationError,
    SystemClock,
    TelemetrySample,
    TelemetrySink,
)

__all__ = ["FanOutSink", "TelemetryASGIMiddleware", "TelemetryBatch"]


def _bad(field_name: str, message: str) -> SpecValidationError:
    return SpecValidationError(
        f"invalid telemetry batch: {field_name}: {message}",
        errors=[{"field": field_name, "loc": [field_name], "msg": message, "type": "value_error"}],
        details={"field": field_name},
    )


def _codes(
    name: str, codes: Any, categories: Sequence[Any], n: int, *, allow_missing: bool
) -> npt.NDArray[np.int64]:
    arr = np.asarray(codes)
    if arr.shape != (n,):
        raise _bad(name, f"must be a 1-D array of {n} codes, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise _bad(name, f"must hold integer codes into the category list, got dtype {arr.dtype}")
    out = arr.astype(np.int64, copy=False)
    low = -1 if allow_missing else 0
    if out.size and (out.min() < low or out.max() >= len(categories)):
        raise _bad(
            name,
            f"codes must be in [{low}, {len(categories) - 1}] (indexes into the category list"
            + (", -1 for none" if allow_missing else "")
            + ")",
        )
    return out


@define(frozen=True, eq=False)
class TelemetryBatch:
    """Many samples as numpy columns, with categorical columns as codes into category lists.

    Build one with `from_samples()` or `from_arrays()` (which validate); the aggregator's
    columnar path (`IntentAggregator.ingest`) is what reaches millions of samples per second.

    Attributes:
        timestamp_s: Call start times, seconds since the Unix epoch (UTC), `float64`.
        duration_ms: Durations in milliseconds, finite and non-negative, `float64`.
        success: Whether each call succeeded, `bool`.
        operation: Codes into `operations`, `int64`.
        operations: Operation names.
        org: Codes into `orgs`, `int64`.
        orgs: Tenant ids (`None` for calls without a tenant).
        error: Codes into `error_codes`, `-1` for none, `int64`.
        error_codes: Error codes (`validation_error`, ...).
        trace_ids: Trace id of each sample (`None` when unknown); used for workflow sequences.
    """

    timestamp_s: npt.NDArray[np.float64]
    duration_ms: npt.NDArray[np.float64]
    success: npt.NDArray[np.bool_]
    operation: npt.NDArray[np.int64]
    operations: tuple[str, ...]
    org: npt.NDArray[np.int64]
    orgs: tuple[str | None, ...]
    error: npt.NDArray[np.int64]
    error_codes: tuple[str, ...]
    trace_ids: tuple[str | None, ...] | None = field(default=None)

    def __len__(self) -> int:
        return int(self.timestamp_s.shape[0])

    @classmethod
    def from_arrays(
        cls,
        *,
        timestamp_s: npt.ArrayLike,
        duration_ms: npt.ArrayLike,
        success: npt.ArrayLike,
        operation: npt.ArrayLike,
        operations: Sequence[str],
        org: npt.ArrayLike | None = None,
        orgs: Sequence[str | None] = (None,),
        error: npt.ArrayLike | None = None,
        error_codes: Sequence[str] = (),
        trace_ids: Sequence[str | None] | None = None,
    ) -> TelemetryBatch:
        """Validate and wrap columns.

        Args:
            timestamp_s: Epoch seconds (UTC) of each call start.
            duration_ms: Milliseconds, finite and `>= 0`.
            success: Booleans.
            operation: Integer codes into `operations`.
            operations: Operation names (non-empty strings).
            org: Integer codes into `orgs`; `None` means every sample has `orgs[0]`.
            orgs: Tenant ids, `None` for "no tenant" (default: one category, `None`).
            error: Integer codes into `error_codes`, `-1` for none; `None` means no error codes.
            error_codes: Error code names.
            trace_ids: Optional trace id per sample.

        Returns:
            The batch.

        Raises:
            SpecValidationError: A column has the wrong length or type, a code is out of range, a
                duration is negative or not finite, a timestamp is not finite. The message names the
                field.
        """
        ts = np.asarray(timestamp_s, dtype=np.float64)
        if ts.ndim != 1:
            raise _bad("timestamp_s", f"must be a 1-D array, got shape {ts.shape}")
        n = ts.shape[0]
        if n and not np.all(np.isfinite(ts)):
            raise _bad("timestamp_s", "must be finite epoch seconds")
        dur = np.asarray(duration_ms, dtype=np.float64)
        if dur.shape != (n,):
            raise _bad("duration_ms", f"must have {n} values, got shape {dur.shape}")
        if n and (not np.all(np.isfinite(dur)) or dur.min() < 0):
            raise _bad("duration_ms", "must be finite, non-negative milliseconds")
        ok = np.asarray(success)
        if ok.shape != (n,) or (n and ok.dtype != np.bool_):
            raise _bad("success", f"must be {n} booleans, got dtype {ok.dtype} shape {ok.shape}")
        ops = tuple(operations)
        if not ops or any(not isinstance(o, str) or not o for o in ops):
            raise _bad("operations", "must list the operation names (non-empty strings)")
        op = _codes("operation", operation, ops, n, allow_missing=False)
        tenants = tuple(orgs)
        if not tenants or any(t is not None and not isinstance(t, str) for t in tenants):
            raise _bad("orgs", "must list tenant ids (strings, or None for no tenant)")
        org_codes = (
            np.zeros(n, dtype=np.int64)
            if org is None
            else _codes("org", org, tenants, n, allow_missing=False)
        )
        codes = tuple(error_codes)
        if any(not isinstance(c, str) or not c for c in codes):
            raise _bad("error_codes", "must list error codes (non-empty strings)")
        err = (
            np.full(n, -1, dtype=np.int64)
            if error is None
            else _codes("error", error, codes, n, allow_missing=True)
        )
        traces = None
        if trace_ids is not None:
            traces = tuple(trace_ids)
            if len(traces) != n:
                raise _bad("trace_ids", f"must have {n} values, got {len(traces)}")
        return cls(
            ts,
            dur,
            ok.astype(np.bool_, copy=False),
            op,
            ops,
            org_codes,
            tenants,
            err,
            codes,
            traces,
        )

    @classmethod
    def from_samples(cls, samples: Iterable[TelemetrySample]) -> TelemetryBatch:
        """Columns from `TelemetrySample` objects (the executor's form).

        Raises:
            SpecValidationError: A sample has a naive timestamp, a negative or non-finite
                duration, or an empty operation name.
        """
        ts: list[float] = []
        dur: list[float] = []
        ok: list[bool] = []
        op: list[int] = []
        org: list[int] = []
        err: list[int] = []
        traces: list[str | None] = []
        ops: dict[str, int] = {}
        orgs: dict[str | None, int] = {}
        errors: dict[str, int] = {}
        for i, s in enumerate(samples):
            if s.timestamp.tzinfo is None:
                raise _bad(f"samples[{i}].timestamp", "must be timezone-aware (UTC)")
            ts.append(s.timestamp.timestamp())
            dur.append(s.duration_ms)
            ok.append(bool(s.success))
            op.append(ops.setdefault(s.operation, len(ops)))
            org.append(orgs.setdefault(s.org_id, len(orgs)))
            err.append(-1 if s.error_code is None else errors.setdefault(s.error_code, len(errors)))
            traces.append(s.trace_id)
        return cls.from_arrays(
            timestamp_s=np.asarray(ts, dtype=np.float64),
            duration_ms=np.asarray(dur, dtype=np.float64),
            success=np.asarray(ok, dtype=np.bool_),
            operation=np.asarray(op, dtype=np.int64),
            operations=tuple(ops) or ("unknown.operation",),
            org=np.asarray(org, dtype=np.int64),
            orgs=tuple(orgs) or (None,),
            error=np.asarray(err, dtype=np.int64),
            error_codes=tuple(errors),
            trace_ids=traces if any(t is not None for t in traces) else None,
        )


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _traceparent_id(value: str) -> str | None:
    """The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), or `None`."""
    parts = value.strip().split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        trace = parts[1].lower()
        if trace != "0" * 32 and all(c in "0123456789abcdef" for c in trace):
            return trace
    return None


class TelemetryASGIMiddleware:
    """Reports one `TelemetrySample` per HTTP request of a plain ASGI app to a `TelemetrySink`.

    The operation is `"<METHOD> <route>"`, with the route template when the framework put one in
    the scope (Starlette and FastAPI set `scope["route"].path`), else `route_name(scope)`, else the
    raw path. A response status of 500 or more (or an exception) is a failure with error code
    `http_<status>`; 4xx responses are failures of the caller, coded the same way; `success` is
    `status < 400`. The trace id comes from the W3C `traceparent` header, the tenant from
    `org_header` (default `x-org-id`), the payload size from `content-length`.

    Args:
        app: The ASGI application to wrap.
        sink: Where samples go (an `IntentAggregator`, or any `TelemetrySink`).
        channel: The sample's channel (default `http`).
        org_header: Request header holding the tenant id (lowercase).
        route_name: Optional `scope -> operation name` function (e.g. to use your own route ids).
        clock: Source of the sample timestamps.
    """

    def __init__(
        self,
        app: ASGIApp,
        sink: TelemetrySink,
        *,
        channel: str = "http",
        org_header: str = "x-org-id",
        route_name: Callable[[Scope], str | None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self.sink = sink
        self.channel = channel
        self.org_header = org_header.lower().encode("latin-1")
        self.route_name = route_name
        self.clock: Clock = clock or SystemClock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started_at = self.clock.now()
        started = perf_counter()
        status = 500
        headers = {k.lower(): v for k, v in scope.get("headers") or ()}

        async def send_wrapper(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            status = 500
            raise
        finally:
            self._report(scope, headers, status, started_at, started)

    def _operation(self, scope: Scope) -> str:
        method = str(scope.get("method", "GET")).upper()
        if self.route_name is not None:
            name = self.route_name(scope)
            if name:
                return name
        route = scope.get("route")
        template = getattr(route, "path", None) or getattr(route, "path_format", None)
        return f"{method} {template or scope.get('path', '/')}"

    def _report(
        self,
        scope: Scope,
        headers: dict[bytes, bytes],
        status: int,
        started_at: datetime,
        started: float,
    ) -> None:
        try:
            duration_ms = (perf_counter() - started) * 1000.0
            size_raw = headers.get(b"content-length")
            size = int(size_raw) if size_raw and size_raw.isdigit() else None
            org = headers.get(self.org_header)
            trace = headers.get(b"traceparent")
            ts = started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
            self.sink.record(
                TelemetrySample(
                    operation=self._operation(scope),
                    version=1,
                    variant=None,
                    org_id=org.decode("latin-1") if org else None,
                    actor_id=None,
                    channel=self.channel,
                    duration_ms=duration_ms if math.isfinite(duration_ms) else 0.0,
                    success=status < 400,
                    error_code=None if status < 400 else f"http_{status}",
                    payload_size=size,
                    trace_id=_traceparent_id(trace.decode("latin-1")) if trace else None,
                    timestamp=ts,
                )
            )
        except Exception:  # telemetry must never fail a request
            return


#: A `TelemetrySink` handing every sample to several sinks (one failing never stops the others);
#: the same as core's `FanOutTelemetrySink` (also what `Executor(telemetry=[...])` builds).
FanOutSink = FanOutTelemetrySink
