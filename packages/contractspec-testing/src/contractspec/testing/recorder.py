"""`TrafficRecorder`: the `TrafficSink` that samples, redacts and stores real calls.

```python
from contractspec.core import Executor
from contractspec.testing import JsonlTrafficStore, TrafficRecorder

recorder = TrafficRecorder(JsonlTrafficStore("traffic.jsonl"), sample_rate=0.05)
executor = Executor(registry, traffic=recorder)
...
await recorder.aclose()          # flush what is buffered
```

The executor hands every finished call (`CallRecord`) to `record()`, synchronously and after the
call committed. `record()` decides, in this order:

1. **Sampling.** Errors are always kept. Other calls are kept when the trace's sampling fraction
   (BLAKE2b of the trace id, as a number in [0, 1)) is below the operation's rate, so every call
   of one trace is kept or dropped together, and a trace kept at rate *r* is kept by every
   operation whose rate is at least *r* (consistent sampling, as in OpenTelemetry's
   `TraceIdRatioBased` sampler). Calls without a trace id fall back to the request id, then to a
   random draw.
2. **Serialisation** of the input/output models to JSON form.
3. **Redaction** (`Redactor.redact_record`) of the input, output, error and the payloads of the
   events the call committed: spec `pii` paths (the operation's and each declared event's) and
   every echo of their values, secret-named keys and detector findings; then the user's
   `sanitize` hook, which may rewrite or drop (`None`) the snapshot.
4. **Buffering.** Snapshots wait in memory and are written in batches by a background task on the
   running event loop (`batch_size` at a time), or when you `await flush()` / `aclose()`. The
   buffer is bounded (`max_pending`): beyond it the oldest snapshots are dropped and counted.

`record()` never raises: a failure is logged and counted in `stats`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from contractspec.core import (
    CallRecord,
    ConfigurationError,
    EventSpec,
    IdGenerator,
    OperationSpec,
    UuidGenerator,
)
from contractspec.core._log import get_logger
from contractspec.testing._snapshot import Snapshot
from contractspec.testing.redaction import Redactor
from contractspec.testing.stores import MemoryTrafficStore, TrafficStore

__all__ = ["RecorderStats", "TrafficRecorder", "sampling_fraction"]

_log = get_logger(__name__)
_TWO_64 = float(2**64)

Sanitizer = Callable[[Snapshot], Snapshot | None]


def sampling_fraction(key: str) -> float:
    """The deterministic sampling fraction of a trace id: a float in `[0, 1)`.

    The first 8 bytes of `BLAKE2b(key)` read as a big-endian unsigned integer, divided by 2**64.
    A call is sampled at rate `r` when its fraction is `< r`.
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_64


def _check_rate(rate: object, what: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ConfigurationError(
            f"{what} must be a fraction between 0.0 and 1.0 (0.05 = 5%), got {rate!r}",
            details={"field": what},
        )
    return float(rate)


@define
class RecorderStats:
    """Counters of a `TrafficRecorder` (all since it was created).

    Attributes:
        seen: Calls handed to `record()`.
        sampled: Calls kept by sampling (before the sanitize hook).
        dropped_by_sanitizer: Snapshots the `sanitize` hook dropped.
        stored: Snapshots written to the store.
        dropped: Snapshots lost: buffer overflow or a failed store write.
        failed: `record()` calls that failed (serialisation, redaction, a raising hook).
    """

    seen: int = 0
    sampled: int = 0
    dropped_by_sanitizer: int = 0
    stored: int = 0
    dropped: int = 0
    failed: int = 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, str | bytes | bytearray):
        try:
            return json.loads(value)
        except (ValueError, UnicodeDecodeError):
            return value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
    return to_jsonable_python(value, fallback=repr, inf_nan_mode="strings")


class TrafficRecorder:
    """A `TrafficSink` that keeps a redacted sample of real calls in a `TrafficStore`.

    Args:
        store: Where snapshots go (`MemoryTrafficStore`, `JsonlTrafficStore`,
            `contractspec.testing.sql.SqlTrafficStore`, or your own `TrafficStore`).
        sample_rate: Fraction of traces kept, 0.0-1.0 (default 0.05 = 5%).
        overrides: Per-operation rates, by name (`"crm.deal.create"`) or `name@version`; the
            more specific key wins.
        keep_errors: Keep every failed call whatever the rate (default `True`).
        redact: Redact before storage (default `True`). Turning it off is for synthetic traffic.
        redactor: A configured `Redactor` (detectors, secret keys, extra paths).
        sanitize: Called with each redacted `Snapshot`; return it (changed or not) to keep it, or
            `None` to drop it.
        ids: Snapshot id source (UUIDv7 by default).
        batch_size: Snapshots per store write (background flush starts at this many).
        max_pending: Bound of the in-memory buffer; the oldest are dropped beyond it.

    Raises:
        ConfigurationError: A rate outside [0, 1], or a non-positive `batch_size`/`max_pending`.
    """

    def __init__(
        self,
        store: TrafficStore,
        *,
        sample_rate: float = 0.05,
        overrides: Mapping[str, float] | None = None,
        keep_errors: bool = True,
        redact: bool = True,
        redactor: Redactor | None = None,
        sanitize: Sanitizer | None = None,
        ids: IdGenerator | None = None,
        batch_size: int = 200,
        max_pending: int = 50_000,
    ) -> None:
        self.store = store
        self.sample_rate = _check_rate(sample_rate, "sample_rate")
        self.overrides = {
            key: _check_rate(rate, f"overrides[{key!r}]") for key, rate in (overrides or {}).items()
        }
        for name, size in (("batch_size", batch_size), ("max_pending", max_pending)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigurationError(
                    f"{name} must be a positive integer, got {size!r}", details={"field": name}
                )
        self.keep_errors = keep_errors
        self.redactor = (redactor or Redactor()) if redact else None
        self.sanitize = sanitize
        self.ids: IdGenerator = ids or UuidGenerator()
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.stats = RecorderStats()
        self._pending: deque[Snapshot] = deque()
        self._task: asyncio.Task[None] | None = None
        self._direct = isinstance(store, MemoryTrafficStore)
        self._rates: dict[tuple[str, int], float] = {}
        self._event_pii_cache: dict[tuple[str, int], dict[str, frozenset[str]]] = {}
        self._random = random.Random()

    # -- sampling -------------------------------------------------------------------------------

    def rate_for(self, operation: str, version: int) -> float:
        """The sampling rate that applies to `operation@version`."""
        key = (operation, version)
        rate = self._rates.get(key)
        if rate is None:
            overrides = self.overrides
            rate = overrides.get(
                f"{operation}@{version}", overrides.get(operation, self.sample_rate)
            )
            self._rates[key] = rate
        return rate

    def is_sampled(self, call: CallRecord) -> bool:
        """Whether `call` is kept: always for errors (with `keep_errors`), else by trace."""
        if call.error is not None and self.keep_errors:
            return True
        spec = call.spec
        rate = self.rate_for(spec.name, spec.version)
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        key = call.trace_id or call.request_id
        fraction = sampling_fraction(key) if key else self._random.random()
        return fraction < rate

    # -- the TrafficSink port -----------------------------------------------------------------

    def wants(self, spec: OperationSpec, trace_id: str | None) -> bool:
        """Whether a *successful* call would be kept, asked before the executor builds its record.

        Deterministic cases are answered here (rate 0, rate 1, a trace id); without a trace id the
        decision is left to `record()`. Failed calls are always handed over by the executor.
        """
        if self.sample_rate <= 0.0 and not self.overrides:
            return False  # recording off: the executor builds nothing
        rate = self.rate_for(spec.name, spec.version)
        if rate <= 0.0:
            return False
        if rate >= 1.0 or trace_id is None:
            return True
        return sampling_fraction(trace_id) < rate

    def record(self, call: CallRecord) -> None:
        """Sample, serialise, redact and buffer one call. Never raises."""
        self.stats.seen += 1
        if call.error is None and not self.overrides and self.sample_rate <= 0.0:
            return  # the common "recording off" path: nothing to compute
        try:
            if not self.is_sampled(call):
                return
            self.stats.sampled += 1
            snapshot = self.snapshot(call)
            if self.sanitize is not None:
                sanitized = self.sanitize(snapshot)
                if sanitized is None:
                    self.stats.dropped_by_sanitizer += 1
                    return
                snapshot = sanitized
        except Exception:
            self.stats.failed += 1
            _log.exception("contractspec.traffic.record_failed", operation=call.spec.ref)
            return
        self._buffer(snapshot)

    def snapshot(self, call: CallRecord) -> Snapshot:
        """The redacted `Snapshot` of `call` (no sampling, no sanitize hook)."""
        spec = call.spec
        error = call.error
        err: dict[str, Any] | None = None
        if error is not None:
            err = {"code": error.code, "type": type(error).__name__, "message": error.message}
        inp = _jsonable(call.input)
        out = None if call.output is None else call.output.model_dump(mode="json")
        events: list[dict[str, Any]] = [
            {"type": e.name, "version": e.version, "payload": e.payload_json()} for e in call.events
        ]
        if self.redactor is not None:
            done = self.redactor.redact_record(
                inp, out, err, events=events, pii=spec.pii, event_pii=self._event_pii(spec)
            )
            inp, out, err, events = done.input, done.output, done.error, done.events
        return Snapshot(
            id=self.ids.new_id(),
            operation=spec.name,
            version=spec.version,
            recorded_at=call.started_at,
            input=inp,
            output=out,
            error=err,
            events=tuple(events),
            duration_ms=round(call.duration_ms, 3),
            org_id=call.org_id,
            actor_id=call.actor_id,
            trace_id=call.trace_id,
            request_id=call.request_id,
            channel=call.channel,
            variant=call.variant,
        )

    def _event_pii(self, spec: OperationSpec) -> dict[str, frozenset[str]]:
        """`{"name@version": pii paths}` of the events `spec` declares (cached per spec)."""
        key = (spec.name, spec.version)
        found = self._event_pii_cache.get(key)
        if found is None:
            found = {
                f"{event.name}@{event.version}": event.pii
                for event in spec.emits
                if isinstance(event, EventSpec) and event.pii
            }
            self._event_pii_cache[key] = found
        return found

    # -- buffering and flushing -----------------------------------------------------------------

    def _buffer(self, snapshot: Snapshot) -> None:
        if self._direct:
            self.store.append_nowait([snapshot])  # type: ignore[attr-defined]  # MemoryTrafficStore, checked in __init__
            self.stats.stored += 1
            return
        pending = self._pending
        if len(pending) >= self.max_pending:
            pending.popleft()
            self.stats.dropped += 1
        pending.append(snapshot)
        if len(pending) >= self.batch_size and (self._task is None or self._task.done()):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop: flushed by the next flush()/aclose()
            self._task = loop.create_task(self._drain())

    @property
    def pending(self) -> int:
        """Snapshots buffered and not yet written."""
        return len(self._pending)

    async def _drain(self) -> None:
        try:
            while self._pending:
                await self._write_batch()
        except Exception:  # logged and counted in _write_batch
            return

    async def _write_batch(self) -> int:
        batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
        if not batch:
            return 0
        try:
            await self.store.append(batch)
        except Exception:
            self.stats.dropped += len(batch)
            _log.exception("contractspec.traffic.store_failed", snapshots=len(batch))
            raise
        self.stats.stored += len(batch)
        return len(batch)

    async def flush(self) -> int:
        """Write everything buffered now; return how many snapshots were written.

        Raises:
            Exception: Whatever the store raised (those snapshots are counted as dropped).
        """
        task = self._task
        if task is not None and not task.done():
            await asyncio.shield(task)
        written = 0
        while self._pending:
            written += await self._write_batch()
        return written

    async def aclose(self) -> None:
        """Flush the buffer; call it when the application shuts down."""
        await self.flush()

    async def __aenter__(self) -> TrafficRecorder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
