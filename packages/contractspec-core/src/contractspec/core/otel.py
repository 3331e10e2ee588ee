"""OpenTelemetry tracing for the `Executor`: one live span around each call.

Install with `pip install 'contractspec-core[otel]'` (only `opentelemetry-api`; the app chooses
and configures the SDK and its exporters). `instrument(executor)` makes every
`executor.execute(...)` open a span named after the operation (`crm.deal.create`) *before* the
call runs and make it the current span while the call's stages and handler run, so spans created
inside — SQLAlchemy statements traced by `opentelemetry-instrumentation-sqlalchemy`, HTTP clients
a handler calls — become its children:

```python
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

from contractspec.core.otel import instrument

instrument(executor)  # the global tracer provider, or tracer_provider=...
SQLAlchemyInstrumentor().instrument(engine=engine.sync_engine)
```

The span has kind `INTERNAL`: the server span belongs to the transport (an ASGI/HTTP
instrumentation, or the HTTP-sample spans of `contractspec.evolution.otel`) and, when one is
current, the operation span is its child. Its attributes (names in `ATTRIBUTES`):

| attribute | value |
|---|---|
| `contractspec.operation` | operation name (`crm.deal.create`) |
| `contractspec.operation.version` | version that ran (after variant resolution) |
| `contractspec.org_id` | tenant of the call, when it names one |
| `contractspec.actor.kind` | `user`, `service`, `agent`, `system` or `anonymous` |
| `contractspec.channel` | where the call came from (`api`, `http`, `job`, ...) |
| `contractspec.variant` | version chosen by the `VariantResolver`, when one chose |
| `contractspec.outcome` | `ok`, `denied` (`PolicyDeniedError`) or `error` |
| `contractspec.error.code`, `error.type` | the error's stable `code` (`conflict`, ...) |

A failed call sets the span status to `ERROR` (description: the error code) and records an
`exception` event with the exception type and the stack frames, but **never the message**:
messages can quote input values (personal data). For an `InternalError` the event describes the
handler's own exception (type and frames), not the wrapper.

Without `instrument`, the executor pays one attribute check per call; importing
`contractspec.core` never imports OpenTelemetry.

SQL statements: `SqlBackend` normally sends a call's buffered INSERT/UPDATE statements on the
driver connection, bypassing SQLAlchemy's execution pipeline (its write hot path). When the engine
has statement listeners (`before_cursor_execute`/`after_cursor_execute`, which the SQLAlchemy
instrumentation installs), that fast path is off and every statement goes through SQLAlchemy, so
each one becomes a child span. Tracing statements therefore costs the fast path's speed-up; the
operation span alone costs one span per call.

`opentelemetry-instrumentation-sqlalchemy` declares support for SQLAlchemy < 2.1; with
SQLAlchemy 2.1 pass `skip_dep_check=True` to `instrument` (it works unchanged).
"""

from __future__ import annotations

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import (
        NonRecordingSpan,
        Span,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
        Tracer,
        TracerProvider,
    )
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.core.otel needs OpenTelemetry: pip install 'contractspec-core[otel]'"
    ) from exc

import os
import re
import traceback
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Final

from contractspec.core.context import CallContext
from contractspec.core.errors import (
    ConfigurationError,
    ContractSpecError,
    InternalError,
    PolicyDeniedError,
)

if TYPE_CHECKING:
    from contractspec.core.executor import Executor
    from contractspec.core.specs import OperationSpec

__all__ = [
    "ATTRIBUTES",
    "CallSpan",
    "OtelTracing",
    "instrument",
    "remote_parent",
    "uninstrument",
]

#: Attribute names of the operation spans (the evolution bridge uses the same ones).
ATTRIBUTES: Final = {
    "operation": "contractspec.operation",
    "version": "contractspec.operation.version",
    "org_id": "contractspec.org_id",
    "actor_kind": "contractspec.actor.kind",
    "channel": "contractspec.channel",
    "variant": "contractspec.variant",
    "outcome": "contractspec.outcome",
    "error_code": "contractspec.error.code",
    "error_type": "error.type",
}

_OPERATION = ATTRIBUTES["operation"]
_VERSION = ATTRIBUTES["version"]
_ORG = ATTRIBUTES["org_id"]
_ACTOR = ATTRIBUTES["actor_kind"]
_CHANNEL = ATTRIBUTES["channel"]
_VARIANT = ATTRIBUTES["variant"]
_OUTCOME = ATTRIBUTES["outcome"]
_CODE = ATTRIBUTES["error_code"]
_ERROR_TYPE = ATTRIBUTES["error_type"]
_HEX32 = re.compile(r"[0-9a-f]{32}")

try:
    _VERSION_STRING = version("contractspec-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION_STRING = "0"


def remote_parent(trace_id: str | None) -> otel_context.Context | None:
    """A context whose parent is a remote span of `trace_id`, so new spans join that trace.

    Args:
        trace_id: A W3C trace id (32 lowercase hex digits), e.g. `CallContext.trace_id`.

    Returns:
        The context to start a span in, or `None` when `trace_id` is not a W3C trace id.
    """
    if not trace_id or not _HEX32.fullmatch(trace_id) or trace_id == "0" * 32:
        return None
    parent = SpanContext(
        trace_id=int(trace_id, 16),
        span_id=int.from_bytes(os.urandom(8), "big") or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent))


class CallSpan:
    """The span of one call, current (attached to the context) until `end`."""

    __slots__ = ("_token", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def end(
        self,
        spec: OperationSpec | None,
        variant: int | None,
        error: BaseException | None,
        ok: bool,
    ) -> None:
        """Set the outcome attributes, detach the context and end the span.

        Args:
            spec: The spec that ran (`None` when the operation was not found).
            variant: The version the `VariantResolver` chose, if it chose one.
            error: The error the call raised (`None` when it returned or was cancelled).
            ok: Whether the call returned its output.
        """
        span = self.span
        try:
            if span.is_recording():
                if spec is not None:
                    span.set_attribute(_VERSION, spec.version)
                if variant is not None:
                    span.set_attribute(_VARIANT, variant)
                if ok:
                    span.set_attribute(_OUTCOME, "ok")
                else:
                    _set_error(span, error)
        finally:
            otel_context.detach(self._token)
            span.end()


def _set_error(span: Span, error: BaseException | None) -> None:
    """Outcome, error code, status and a message-free `exception` event."""
    if error is None:  # cancelled, or a BaseException such as KeyboardInterrupt
        code = "cancelled"
        recorded: BaseException | None = None
    else:
        code = error.code if isinstance(error, ContractSpecError) else type(error).__name__
        recorded = error
        if isinstance(error, InternalError) and error.__cause__ is not None:
            recorded = error.__cause__
    span.set_attribute(_OUTCOME, "denied" if isinstance(error, PolicyDeniedError) else "error")
    span.set_attribute(_CODE, code)
    span.set_attribute(_ERROR_TYPE, code)
    span.set_status(Status(StatusCode.ERROR, code))
    if recorded is not None:
        kind = type(recorded)
        span.add_event(
            "exception",
            {
                "exception.type": f"{kind.__module__}.{kind.__qualname__}",
                # Frames only (file, line, function, source line): never the message.
                "exception.stacktrace": "".join(traceback.format_tb(recorded.__traceback__)),
            },
        )


class OtelTracing:
    """Opens the operation span of each call (install it with `instrument`).

    Args:
        tracer_provider: The tracer provider (default: the global one).
    """

    __slots__ = ("tracer",)

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        self.tracer: Tracer = trace.get_tracer(
            "contractspec.core", _VERSION_STRING, tracer_provider=tracer_provider
        )

    def start(self, name: str, call: CallContext) -> CallSpan:
        """Start the span of a call to `name` and make it current.

        The span is a child of the current span; without one, of the call's `trace_id` when it
        is a W3C trace id (see `remote_parent`).

        Args:
            name: The operation name.
            call: The caller's context (tenant, actor, channel, trace id).

        Returns:
            The call's span; the executor calls `CallSpan.end` when the call finishes.
        """
        attributes: dict[str, Any] = {
            _OPERATION: name,
            _ACTOR: call.actor.kind.value,
            _CHANNEL: call.channel,
        }
        if call.org_id is not None:
            attributes[_ORG] = call.org_id
        parent = None
        if call.trace_id is not None and not trace.get_current_span().get_span_context().is_valid:
            parent = remote_parent(call.trace_id)
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.INTERNAL, attributes=attributes
        )
        return CallSpan(span)


def instrument(executor: Executor, *, tracer_provider: TracerProvider | None = None) -> OtelTracing:
    """Trace every call of `executor` with a live OpenTelemetry span (see the module docs).

    Args:
        executor: The executor to trace (calling `instrument` again replaces its tracer).
        tracer_provider: The tracer provider (default: the global one).

    Returns:
        The installed `OtelTracing`.

    Raises:
        ConfigurationError: `executor` is not an `Executor`.
    """
    from contractspec.core.executor import Executor

    if not isinstance(executor, Executor):
        raise ConfigurationError(
            f"instrument() needs the Executor whose calls to trace, got {type(executor).__name__}"
        )
    tracing = OtelTracing(tracer_provider)
    executor._tracing = tracing
    return tracing


def uninstrument(executor: Executor) -> None:
    """Stop tracing `executor`'s calls."""
    executor._tracing = None
