"""`IntentAggregator`: unsampled per-minute counts and latency histograms, rolled into windows.

Every sample lands in a one-minute bucket of its series (operation and tenant): a call count, an
error count, error codes, and a latency histogram with DDSketch's logarithmic buckets (1 %
relative accuracy, see `contractspec.evolution.sketch`). Minutes roll into tumbling windows of
`window_minutes` (default 15) aligned on the Unix epoch. A window closes once the event-time
watermark (the latest sample timestamp seen, or the time passed to `advance(now)`) is
`lateness_minutes` past its end; its `WindowStats` (calls, error rate, p50/p95/p99 latency of
successful calls, throughput) are kept for `history_windows` windows, per tenant and for all
tenants together (`org_id == ALL_TENANTS`). Samples older than the oldest open window are counted
in `late_samples` and dropped, as in any watermark-based stream processor.

Per-minute call and error counts are kept for `counter_minutes` (default 6 hours), which is what
the SLO burn-rate alerts read. Recent operation sequences are kept per trace in a bounded LRU
buffer (`max_traces` traces of at most `max_sequence_length` operations).

Ingestion is vectorised: `ingest(TelemetryBatch)` encodes (operation, tenant, failed, bucket,
minute of the window) into one integer key per sample (32-bit when the batch's key space fits),
sorts the keys once and counts the distinct ones per window; the `TelemetrySink.record(sample)`
path buffers samples and ingests them in batches. Windows that are due together are computed in
one numpy pass, and their rows built column by column.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from operator import itemgetter
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from attrs import define, field

from contractspec.core import ConfigurationError, TelemetrySample
from contractspec.core._log import get_logger
from contractspec.evolution.sketch import (
    DEFAULT_MAPPING,
    LogBucketMapping,
    grouped_quantiles,
)
from contractspec.evolution.telemetry import TelemetryBatch

__all__ = [
    "ALL_TENANTS",
    "QUANTILES",
    "IntentAggregator",
    "MinuteCounts",
    "TelemetryBucket",
    "WindowStats",
]

_log = get_logger(__name__)

#: `org_id` of the roll-up over every tenant of an operation.
ALL_TENANTS: Final = "*"
#: The latency quantiles every window reports.
QUANTILES: Final = (0.5, 0.95, 0.99)
#: Cells of the dense (window x operation x bucket) matrix windows closing together may use.
_DENSE_CELLS: Final = 1 << 21
_QS: Final = np.asarray(QUANTILES, dtype=np.float64)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_I64 = npt.NDArray[np.int64]


def _minute_dt(minute: int) -> datetime:
    return _EPOCH + timedelta(minutes=int(minute))


@define(frozen=True)
class WindowStats:
    """Statistics of one operation (for one tenant, or all) over one closed window.

    Attributes:
        operation: Operation name.
        org_id: Tenant id, `None` for calls without a tenant, or `ALL_TENANTS` (`"*"`).
        start, end: UTC window bounds (`end` exclusive).
        calls: Number of calls (unsampled).
        errors: Number of failed calls.
        p50_ms, p95_ms, p99_ms: Latency quantiles of the *successful* calls in milliseconds
            (DDSketch, 1 % relative accuracy; NaN when no call succeeded).
        error_codes: Failed calls per error code.
    """

    operation: str
    org_id: str | None
    start: datetime
    end: datetime
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    error_codes: Mapping[str, int] = field(factory=dict)

    @property
    def minutes(self) -> float:
        """Window length in minutes."""
        return (self.end - self.start).total_seconds() / 60.0

    @property
    def error_rate(self) -> float:
        """`errors / calls` (0.0 without calls)."""
        return self.errors / self.calls if self.calls else 0.0

    @property
    def success_rate(self) -> float:
        """`1 - error_rate` (1.0 without calls)."""
        return 1.0 - self.error_rate

    @property
    def throughput_per_min(self) -> float:
        """Calls per minute over the window."""
        return self.calls / self.minutes

    def to_dict(self) -> dict[str, Any]:
        """JSON form (NaN quantiles become `None`)."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return {
            "operation": self.operation,
            "org_id": self.org_id,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "calls": self.calls,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "throughput_per_min": self.throughput_per_min,
            "p50_ms": num(self.p50_ms),
            "p95_ms": num(self.p95_ms),
            "p99_ms": num(self.p99_ms),
            "error_codes": dict(self.error_codes),
        }


_new_object = object.__new__
#: The slot descriptors' setters of `WindowStats`' fields, in declaration order.
_FIELD_SETTERS: Final = tuple(
    WindowStats.__dict__[a.name].__set__ for a in WindowStats.__attrs_attrs__
)


def _gather(values: Sequence[Any], indexes: list[int]) -> Sequence[Any]:
    """`[values[i] for i in indexes]`, gathered in C (`operator.itemgetter`)."""
    if len(indexes) < 2:
        return [values[i] for i in indexes]
    picked: tuple[Any, ...] = itemgetter(*indexes)(values)
    return picked


def _window_stats_rows(n: int, columns: Sequence[Sequence[Any]]) -> list[WindowStats]:
    """`n` `WindowStats` from their field columns (in `_FIELD_SETTERS` order).

    The thousands of rows a window closes are built column by column: objects allocated, then
    each slot filled by `map` over its descriptor, so no bytecode runs per row. The values come
    computed and typed from the aggregator, there is nothing to validate.
    """
    assert all(len(column) == n for column in columns)  # `map` would stop at the shortest
    rows: list[WindowStats] = list(map(_new_object, repeat(WindowStats, n)))
    for setter, column in zip(_FIELD_SETTERS, columns, strict=True):
        deque(map(setter, rows, column), maxlen=0)
    return rows


@define(frozen=True)
class MinuteCounts:
    """Per-minute calls and errors of one series, oldest first (for burn rates and throughput).

    Attributes:
        minutes: UTC minute starts as epoch minutes (`int64`).
        calls: Calls per minute.
        errors: Failed calls per minute.
    """

    minutes: _I64
    calls: _I64
    errors: _I64

    def totals(self, since_minute: int, until_minute: int) -> tuple[int, int]:
        """`(calls, errors)` over epoch minutes `[since_minute, until_minute)`."""
        mask = (self.minutes >= since_minute) & (self.minutes < until_minute)
        return int(self.calls[mask].sum()), int(self.errors[mask].sum())


@define(frozen=True)
class TelemetryBucket:
    """One minute of one series: the persisted form (`cs_evolution_telemetry_buckets`).

    Attributes:
        minute: UTC start of the minute.
        operation: Operation name.
        org_id: Tenant (`None` for no tenant).
        calls, errors: Counts.
        histogram: Latency histogram of successful calls, `{bucket index: count}`.
        error_histogram: Latency histogram of failed calls.
        error_codes: Failed calls per error code.
    """

    minute: datetime
    operation: str
    org_id: str | None
    calls: int
    errors: int
    histogram: Mapping[int, int]
    error_histogram: Mapping[int, int] = field(factory=dict)
    error_codes: Mapping[str, int] = field(factory=dict)


class _Rows:
    """A growing table of numpy columns, compacted (summed by key) on demand."""

    __slots__ = ("chunks", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.chunks: list[tuple[_I64, ...]] = []

    def append(self, *cols: _I64) -> None:
        if len(cols[0]):
            self.chunks.append(cols)

    def columns(self) -> tuple[_I64, ...]:
        if not self.chunks:
            return tuple(np.empty(0, dtype=np.int64) for _ in self.names)
        if len(self.chunks) > 1:
            self.chunks = [tuple(np.concatenate(c) for c in zip(*self.chunks, strict=True))]
        return self.chunks[0]

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        cols = self.columns()
        self.chunks = [tuple(c[mask] for c in cols)] if len(cols[0]) else []

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self.chunks)


class _Windowed:
    """`_Rows` split by window (the first column is the epoch minute)."""

    __slots__ = ("names", "width", "windows")

    def __init__(self, names: tuple[str, ...], width: int) -> None:
        self.names = names
        self.width = width
        self.windows: dict[int, _Rows] = {}

    def append(self, *cols: _I64) -> None:
        """Append rows sorted by minute (as `np.unique` leaves them)."""
        minute = cols[0]
        if not len(minute):
            return
        first = int(minute[0]) - int(minute[0]) % self.width
        last = int(minute[-1]) - int(minute[-1]) % self.width
        edges = np.arange(first, last + self.width, self.width)
        cuts = np.searchsorted(minute, edges[1:], side="left").tolist()
        for w, a, b in zip(edges.tolist(), [0, *cuts], [*cuts, len(minute)], strict=True):
            if b > a:
                rows = self.windows.setdefault(w, _Rows(self.names))
                rows.append(*(c[a:b] for c in cols))

    def pop(self, window: int) -> tuple[_I64, ...]:
        rows = self.windows.pop(window, None)
        return rows.columns() if rows is not None else _Rows(self.names).columns()

    def get(self, window: int) -> tuple[_I64, ...]:
        rows = self.windows.get(window)
        return rows.columns() if rows is not None else _Rows(self.names).columns()

    def columns(self) -> tuple[_I64, ...]:
        parts = [self.windows[w].columns() for w in sorted(self.windows)]
        parts = [p for p in parts if len(p[0])]
        if not parts:
            return _Rows(self.names).columns()
        return tuple(np.concatenate(c) for c in zip(*parts, strict=True))


class _Chunk:
    """Sorted unique histogram keys of one ingest inside one window, with their layout.

    `key = ((((op * n_orgs + org) * 2 + failed) * n_b + bucket) * width + minute % width`: the
    minute is the least significant part, so `key // width` (the window's histogram cell) is
    already sorted and the minutes of a window merge without sorting again.
    """

    __slots__ = ("counts", "keys", "n_ops", "n_orgs")

    def __init__(self, keys: _I64, counts: _I64, n_ops: int, n_orgs: int) -> None:
        self.keys = keys
        self.counts = counts
        self.n_ops = n_ops
        self.n_orgs = n_orgs

    def decode(self, window: int, width: int, n_b: int) -> tuple[_I64, ...]:
        rest, m = np.divmod(self.keys, width)
        rest, b = np.divmod(rest, n_b)
        rest, f = np.divmod(rest, 2)
        o, g = np.divmod(rest, self.n_orgs)
        return m + window, o, g, f, b, self.counts


def _count_sorted(keys: npt.NDArray[Any]) -> tuple[_I64, _I64]:
    """Distinct values of sorted `keys` and how often each occurs (`np.unique` on sorted data)."""
    n = len(keys)
    first = np.empty(n, dtype=np.bool_)
    first[:1] = True
    np.not_equal(keys[1:], keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return keys[starts].astype(np.int64), np.diff(np.append(starts, n)).astype(np.int64)


class _HistStore:
    """Per-minute latency histograms of the open windows, as chunks of encoded keys per window,
    and their per-minute call and error counts (counted when the samples arrive)."""

    __slots__ = ("minutes", "n_b", "width", "windows")

    def __init__(self, width: int, n_b: int) -> None:
        self.width = width
        self.n_b = n_b
        self.windows: dict[int, list[_Chunk]] = {}
        # per window: `(series * width + minute % width, calls, errors, n_orgs)` chunks
        self.minutes: dict[int, list[tuple[_I64, _I64, _I64, int]]] = {}

    def discard(self, window: int) -> None:
        """Forget a closed window."""
        self.windows.pop(window, None)
        self.minutes.pop(window, None)

    def add(
        self,
        minute: _I64,
        op: _I64,
        org: _I64,
        failed: _I64,
        bucket: _I64,
        n_ops: int,
        n_orgs: int,
        counts: _I64 | None = None,
    ) -> None:
        """Count samples (or rows with `counts`) into per-window chunks of sorted unique keys."""
        if not len(minute):
            return
        width, n_b = self.width, self.n_b
        first = int(minute.min()) // width
        span = int(minute.max()) // width - first + 1
        stride = n_ops * n_orgs * 2 * n_b * width  # keys of one window
        if span * stride >= 2**62:  # split so the key fits in 63 bits
            mid = (first + span // 2) * width
            for part in (minute < mid, minute >= mid):
                self.add(
                    minute[part], op[part], org[part], failed[part], bucket[part], n_ops, n_orgs,
                    None if counts is None else counts[part],
                )  # fmt: skip
            return
        key = minute // width
        key -= first
        key *= n_ops
        key += op
        key *= n_orgs
        key += org
        minute_of_window = minute % width
        cell = key * width  # (window, operation, tenant, minute) for the per-minute counts
        cell += minute_of_window
        self._count_minutes(cell, failed, counts, first, span, n_ops * n_orgs, n_orgs)
        key *= 2
        key += failed
        key *= n_b
        key += bucket
        key *= width
        key += minute_of_window
        if counts is None:
            # sorting is the cost of a batch: 32-bit keys sort about twice as fast
            small = key.astype(np.uint32) if span * stride < 2**32 else key
            small.sort()
            uniq, summed = _count_sorted(small)
        else:
            order = np.argsort(key, kind="stable")
            ordered = key[order]
            uniq, _n = _count_sorted(ordered)
            starts = np.searchsorted(ordered, uniq)
            summed = np.add.reduceat(counts[order], starts).astype(np.int64)
        cuts = np.searchsorted(uniq, np.arange(1, span) * stride).tolist()
        for w, lo, hi in zip(range(span), [0, *cuts], [*cuts, len(uniq)], strict=True):
            if hi > lo:
                local = uniq[lo:hi] - w * stride if w else uniq[lo:hi]
                chunk = _Chunk(local, summed[lo:hi], n_ops, n_orgs)
                self.windows.setdefault((first + w) * width, []).append(chunk)

    def _count_minutes(
        self,
        cell: _I64,
        failed: _I64,
        counts: _I64 | None,
        first: int,
        span: int,
        n_series: int,
        n_orgs: int,
    ) -> None:
        """Calls and errors per `cell = (window - first, series, minute of window)`."""
        width = self.width
        bad = failed == 1
        size = span * n_series * width
        if size <= 4 * len(cell) + 4096:  # dense: one pass, no sort
            calls = np.bincount(cell, weights=counts, minlength=size)
            errors = np.bincount(
                cell[bad], weights=None if counts is None else counts[bad], minlength=size
            )
            uniq = np.flatnonzero(calls)
            calls, errors = calls[uniq], errors[uniq]
        else:
            uniq, inv = np.unique(cell, return_inverse=True)
            calls = np.bincount(inv, weights=counts, minlength=len(uniq))
            errors = np.bincount(
                inv[bad], weights=None if counts is None else counts[bad], minlength=len(uniq)
            )
        calls, errors = calls.astype(np.int64), errors.astype(np.int64)
        per_window = n_series * width
        cuts = np.searchsorted(uniq, np.arange(1, span) * per_window).tolist()
        for w, lo, hi in zip(range(span), [0, *cuts], [*cuts, len(uniq)], strict=True):
            if hi > lo:
                local = uniq[lo:hi] - w * per_window if w else uniq[lo:hi]
                part = (local, calls[lo:hi], errors[lo:hi], n_orgs)
                self.minutes.setdefault((first + w) * width, []).append(part)

    def rows(self, window: int | None = None) -> tuple[_I64, ...]:
        """Decoded `(minute, op, org, failed, bucket, count)` of one window (or all)."""
        picked = [window] if window is not None else sorted(self.windows)
        parts = [c.decode(w, self.width, self.n_b) for w in picked for c in self.windows.get(w, [])]
        if not parts:
            return tuple(np.empty(0, dtype=np.int64) for _ in range(6))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(c) for c in zip(*parts, strict=True))

    def minute_cells(self, window: int) -> tuple[_I64, ...]:
        """Per-minute `(minute, op, org, calls, errors)` of one window (unsorted, may repeat)."""
        parts: list[tuple[_I64, ...]] = []
        for cell, calls, errors, n_orgs in self.minutes.get(window, []):
            series, m = np.divmod(cell, self.width)
            o, g = np.divmod(series, n_orgs)
            parts.append((m + window, o, g, calls, errors))
        if not parts:
            return tuple(np.empty(0, dtype=np.int64) for _ in range(5))
        return tuple(np.concatenate(col) for col in zip(*parts, strict=True))

    def merged(self, window: int, n_ops: int, n_orgs: int) -> tuple[_I64, _I64]:
        """The window's minutes merged: `(key, count)` with `key = ((op * n_orgs + org) * 2 +
        failed) * n_b + bucket` in the current layout, sorted and unique."""
        chunks = self.windows.get(window, [])
        width, n_b = self.width, self.n_b
        keys: list[_I64] = []
        for c in chunks:
            if c.n_ops == n_ops and c.n_orgs == n_orgs:
                keys.append(c.keys // width)  # sorted: the minute was the lowest part
            else:  # the layout grew since this chunk was encoded: re-encode it
                _m, o, g, f, b, _n = c.decode(window, width, n_b)
                keys.append(((o * n_orgs + g) * 2 + f) * n_b + b)
        if not keys:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        if len(chunks) == 1 and chunks[0].n_ops == n_ops and chunks[0].n_orgs == n_orgs:
            key, count = keys[0], chunks[0].counts
        else:
            key = np.concatenate(keys)
            count = np.concatenate([c.counts for c in chunks])
            order = np.argsort(key, kind="stable")  # merges the sorted runs of the chunks
            key, count = key[order], count[order]
        first = np.empty(len(key), dtype=np.bool_)
        first[:1] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        return key[starts], np.add.reduceat(count, starts).astype(np.int64)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


class IntentAggregator:
    """Unsampled telemetry aggregation (a core `TelemetrySink`): minutes → windows per series.

    Args:
        window_minutes: Window length in minutes (default 15); windows are aligned on the epoch.
        lateness_minutes: How long after its end a window waits for late samples (default 1).
        history_windows: Closed windows kept per series (default 96 = one day of 15-minute windows).
        counter_minutes: Minutes of per-minute counts kept for burn-rate alerts (default 360).
        mapping: Histogram bucket mapping (default 1 % relative accuracy).
        max_traces: Traces whose operation sequence is kept (LRU, default 10,000).
        max_sequence_length: Operations kept per trace (most recent, default 16).
        buffer_size: Samples buffered by `record()` before they are ingested (default 4096).
        export_buckets: Keep the minutes of each closed window for `pop_sealed_buckets()` (what
            `TelemetryExporter` sends to a shared store).

    Raises:
        ConfigurationError: A size is not a positive integer.

    Example:
        ```python
        aggregator = IntentAggregator(window_minutes=15)
        executor = Executor(registry, telemetry=aggregator)
        ...
        closed = aggregator.advance(clock.now())      # WindowStats of every window that closed
        ```
    """

    def __init__(
        self,
        *,
        window_minutes: int = 15,
        lateness_minutes: int = 1,
        history_windows: int = 96,
        counter_minutes: int = 360,
        mapping: LogBucketMapping = DEFAULT_MAPPING,
        max_traces: int = 10_000,
        max_sequence_length: int = 16,
        buffer_size: int = 4096,
        export_buckets: bool = False,
    ) -> None:
        for name, value in (
            ("window_minutes", window_minutes),
            ("history_windows", history_windows),
            ("counter_minutes", counter_minutes),
            ("max_traces", max_traces),
            ("max_sequence_length", max_sequence_length),
            ("buffer_size", buffer_size),
        ):
            _check_positive(name, value)
        if (
            isinstance(lateness_minutes, bool)
            or not isinstance(lateness_minutes, int)
            or lateness_minutes < 0
        ):
            raise ConfigurationError(
                f"lateness_minutes must be a non-negative integer, got {lateness_minutes!r}"
            )
        self.window_minutes = window_minutes
        self.lateness_minutes = lateness_minutes
        self.history_windows = history_windows
        self.counter_minutes = counter_minutes
        self.mapping = mapping
        self.max_traces = max_traces
        self.max_sequence_length = max_sequence_length
        self.buffer_size = buffer_size
        self.export_buckets = export_buckets
        self._sealed: list[TelemetryBucket] = []
        self._active_ops: set[str] = set()
        self._ops: dict[str, int] = {}
        self._op_names: list[str] = []
        self._orgs: dict[str | None, int] = {}
        self._org_names: list[str | None] = []
        self._codes: dict[str, int] = {}
        self._code_names: list[str] = []
        # open minutes: latency histograms and error codes
        self._hist = _HistStore(window_minutes, mapping.bucket_count)
        self._errs = _Windowed(("minute", "op", "org", "code", "count"), window_minutes)
        # closed minutes: counters for burn rates
        self._counters = _Rows(("minute", "op", "org", "calls", "errors"))
        self._open_from: int | None = None  # first epoch minute of the oldest open window
        self._watermark: int | None = None  # latest epoch minute seen
        self._history: dict[tuple[str, str | None], deque[WindowStats]] = {}
        # latency histogram (successful calls, every tenant) of each window in `_history`,
        # `(bucket indexes, counts)`, aligned with the operation's all-tenant history
        self._sketches: dict[str, deque[tuple[_I64, _I64]]] = {}
        self._rank_cache: tuple[tuple[int, int], _I64, _I64] | None = None
        self._closed: list[WindowStats] = []
        self._traces: OrderedDict[str, list[str]] = OrderedDict()
        self._buffer: list[TelemetrySample] = []
        self._last_seen: _I64 = np.empty(0, dtype=np.int64)
        self.late_samples = 0
        self.dropped_samples = 0
        self.samples = 0

    # -- interning ----------------------------------------------------------------------------

    def _intern_ops(self, names: Sequence[str]) -> _I64:
        out = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            code = self._ops.get(name)
            if code is None:
                code = self._ops[name] = len(self._op_names)
                self._op_names.append(name)
            out[i] = code
        return out

    def _intern_orgs(self, names: Sequence[str | None]) -> _I64:
        out = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            code = self._orgs.get(name)
            if code is None:
                code = self._orgs[name] = len(self._org_names)
                self._org_names.append(name)
            out[i] = code
        return out

    def _intern_codes(self, names: Sequence[str]) -> _I64:
        out = np.empty(len(names), dtype=np.int64)
        for i, name in enumerate(names):
            code = self._codes.get(name)
            if code is None:
                code = self._codes[name] = len(self._code_names)
                self._code_names.append(name)
            out[i] = code
        return out

    # -- the TelemetrySink port ---------------------------------------------------------------

    def record(self, sample: TelemetrySample) -> None:
        """Accept one sample (core's `TelemetrySink` port): buffered, never raises.

        A sample with a naive timestamp or a negative or non-finite duration is dropped and
        counted in `dropped_samples`.
        """
        try:
            if (
                sample.timestamp.tzinfo is None
                or not math.isfinite(sample.duration_ms)
                or sample.duration_ms < 0
                or not sample.operation
            ):
                self.dropped_samples += 1
                return
            self._buffer.append(sample)
            if len(self._buffer) >= self.buffer_size:
                self.flush()
        except Exception:  # a sink must not raise into the executor
            self.dropped_samples += 1
            _log.exception("evolution.telemetry_record_failed")

    def flush(self) -> None:
        """Ingest the samples buffered by `record()` (reads call it first)."""
        if not self._buffer:
            return
        samples, self._buffer = self._buffer, []
        self.ingest(TelemetryBatch.from_samples(samples))

    # -- columnar ingestion -------------------------------------------------------------------

    def ingest(self, batch: TelemetryBatch) -> int:
        """Add a batch of samples; windows whose watermark passed are closed.

        Args:
            batch: Columns of samples (validated by `TelemetryBatch.from_arrays`).

        Returns:
            The number of samples accepted (late ones are counted in `late_samples`).
        """
        n = len(batch)
        if n == 0:
            return 0
        minute = np.floor(batch.timestamp_s * (1.0 / 60.0)).astype(np.int64)
        op = self._intern_ops(batch.operations)[batch.operation]
        org = self._intern_orgs(batch.orgs)[batch.org]
        failed = ~batch.success
        bucket = self.mapping.index(batch.duration_ms)
        error = batch.error
        if batch.trace_ids is not None:
            self._track(batch.trace_ids, batch.timestamp_s, op)
        if self._open_from is not None:
            late = minute < self._open_from
            n_late = int(late.sum())
            if n_late:
                self.late_samples += n_late
                keep = ~late
                minute, op, org, failed, bucket, error = (
                    minute[keep], op[keep], org[keep], failed[keep], bucket[keep], error[keep]
                )  # fmt: skip
        accepted = int(minute.shape[0])
        if accepted:
            self._add_hist(minute, op, org, failed.astype(np.int64), bucket)
            has_code = error >= 0
            if has_code.any():
                codes = self._intern_codes(batch.error_codes)[error[has_code]]
                self._add_errs(minute[has_code], op[has_code], org[has_code], codes)
            top = int(minute.max())
            if self._watermark is None or top > self._watermark:
                self._watermark = top
            if self._open_from is None:
                self._open_from = self._window_start(int(minute.min()))
            self.samples += accepted
            self._close_until(self._watermark)
        return accepted

    def _add_hist(self, minute: _I64, op: _I64, org: _I64, failed: _I64, bucket: _I64) -> None:
        self._hist.add(minute, op, org, failed, bucket, len(self._op_names), len(self._org_names))

    def _add_errs(self, minute: _I64, op: _I64, org: _I64, code: _I64) -> None:
        base = int(minute.min())
        n_ops, n_orgs, n_c = len(self._op_names), len(self._org_names), len(self._code_names)
        key = (((minute - base) * n_ops + op) * n_orgs + org) * n_c + code
        uniq, counts = np.unique(key, return_counts=True)
        rest, c = np.divmod(uniq, n_c)
        rest, g = np.divmod(rest, n_orgs)
        m, o = np.divmod(rest, n_ops)
        self._errs.append(m + base, o, g, c, counts.astype(np.int64))

    def _track(self, traces: Sequence[str | None], ts: npt.NDArray[np.float64], op: _I64) -> None:
        order = np.argsort(ts, kind="stable")
        names = self._op_names
        for i in order.tolist():
            trace = traces[i]
            if trace is None:
                continue
            seq = self._traces.get(trace)
            if seq is None:
                seq = self._traces[trace] = []
                if len(self._traces) > self.max_traces:
                    self._traces.popitem(last=False)
            else:
                self._traces.move_to_end(trace)
            seq.append(names[int(op[i])])
            if len(seq) > self.max_sequence_length:
                del seq[0]

    # -- buckets (persistence and multi-process aggregation) -----------------------------------

    def buckets(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[TelemetryBucket]:
        """The open minutes as `TelemetryBucket`s (a snapshot; see `pop_sealed_buckets`).

        Args:
            since: Optional UTC lower bound on the minute start (inclusive).
            until: Optional UTC upper bound on the minute start (exclusive).

        Returns:
            One bucket per minute and series, ordered by minute, operation and tenant.
        """
        self.flush()
        rows = self._hist.rows()
        mask = np.ones(len(rows[0]), dtype=np.bool_)
        if since is not None:
            mask &= rows[0] >= _epoch_minute(since)
        if until is not None:
            mask &= rows[0] < _epoch_minute(until)
        return self._to_buckets(tuple(c[mask] for c in rows), self._errs.columns())

    def pop_sealed_buckets(self) -> list[TelemetryBucket]:
        """Minutes of the windows closed since the last call (with `export_buckets=True`).

        Each minute is returned exactly once, when its window closes, so exporting these never
        double-counts (see `TelemetryExporter`).
        """
        self.flush()
        sealed, self._sealed = self._sealed, []
        return sealed

    def _to_buckets(self, rows: tuple[_I64, ...], errs: tuple[_I64, ...]) -> list[TelemetryBucket]:
        minute, op, org, failed, bucket, count = rows
        out: dict[tuple[int, int, int], dict[str, Any]] = {}
        for m, o, g, f, b, c in zip(
            minute.tolist(), op.tolist(), org.tolist(), failed.tolist(), bucket.tolist(),
            count.tolist(), strict=True,
        ):  # fmt: skip
            cell = out.setdefault((m, o, g), {"ok": {}, "err": {}, "codes": {}})
            hist = cell["err" if f else "ok"]
            hist[b] = hist.get(b, 0) + c
        em, eo, eg, ec, en = errs
        for m, o, g, c, k in zip(
            em.tolist(), eo.tolist(), eg.tolist(), ec.tolist(), en.tolist(), strict=True
        ):
            found = out.get((m, o, g))
            if found is not None:
                name = self._code_names[c]
                found["codes"][name] = found["codes"].get(name, 0) + k
        result = []
        for (m, o, g), cell in sorted(out.items()):
            errors = sum(cell["err"].values())
            result.append(
                TelemetryBucket(
                    minute=_minute_dt(m),
                    operation=self._op_names[o],
                    org_id=self._org_names[g],
                    calls=sum(cell["ok"].values()) + errors,
                    errors=errors,
                    histogram=dict(sorted(cell["ok"].items())),
                    error_histogram=dict(sorted(cell["err"].items())),
                    error_codes=dict(sorted(cell["codes"].items())),
                )
            )
        return result

    def ingest_buckets(self, buckets: Iterable[TelemetryBucket]) -> int:
        """Merge persisted or remote minutes (histograms add exactly).

        Returns:
            The number of samples the buckets represent that were accepted.

        Raises:
            ConfigurationError: A bucket index is outside this aggregator's mapping.
        """
        rows: list[tuple[int, str, str | None, int, int, int]] = []
        errs: list[tuple[int, str, str | None, str, int]] = []
        for bk in buckets:
            m = _epoch_minute(bk.minute)
            for flag, hist in ((0, bk.histogram), (1, bk.error_histogram)):
                for b, c in hist.items():
                    if not 0 <= int(b) < self.mapping.bucket_count:
                        raise ConfigurationError(
                            f"bucket index {b} of {bk.operation} is outside the mapping "
                            f"(0..{self.mapping.bucket_count - 1}); use the same LogBucketMapping "
                            "on every process"
                        )
                    rows.append((m, bk.operation, bk.org_id, flag, int(b), int(c)))
            errs.extend(
                (m, bk.operation, bk.org_id, code, int(c)) for code, c in bk.error_codes.items()
            )
        if not rows:
            return 0
        rows.sort(key=lambda r: r[0])
        errs.sort(key=lambda e: e[0])
        ops = self._intern_ops([r[1] for r in rows])
        orgs = self._intern_orgs([r[2] for r in rows])
        minute = np.asarray([r[0] for r in rows], dtype=np.int64)
        count = np.asarray([r[5] for r in rows], dtype=np.int64)
        keep = (
            minute >= self._open_from if self._open_from is not None else np.ones(len(rows), bool)
        )
        self.late_samples += int(count[~keep].sum())
        failed = np.asarray([r[3] for r in rows], dtype=np.int64)
        bucket = np.asarray([r[4] for r in rows], dtype=np.int64)
        if keep.any():
            self._hist.add(
                minute[keep], ops[keep], orgs[keep], failed[keep], bucket[keep],
                len(self._op_names), len(self._org_names), counts=count[keep],
            )  # fmt: skip
        if errs:
            em = np.asarray([e[0] for e in errs], dtype=np.int64)
            ek = em >= self._open_from if self._open_from is not None else np.ones(len(errs), bool)
            self._errs.append(
                em[ek],
                self._intern_ops([e[1] for e in errs])[ek],
                self._intern_orgs([e[2] for e in errs])[ek],
                self._intern_codes([e[3] for e in errs])[ek],
                np.asarray([e[4] for e in errs], dtype=np.int64)[ek],
            )
        accepted = int(count[keep].sum())
        if accepted:
            top = int(minute[keep].max())
            if self._watermark is None or top > self._watermark:
                self._watermark = top
            if self._open_from is None:
                self._open_from = self._window_start(int(minute[keep].min()))
            self.samples += accepted
            self._close_until(self._watermark)
        return accepted

    # -- windows --------------------------------------------------------------------------------

    def _window_start(self, minute: int) -> int:
        return minute - minute % self.window_minutes

    def advance(self, now: datetime) -> list[WindowStats]:
        """Move the watermark to `now` (quiet periods) and close every window that is due.

        Returns:
            Every window closed since the last `pop_closed()` (see there).
        """
        self.flush()
        minute = _epoch_minute(now)
        if self._watermark is None or minute > self._watermark:
            self._watermark = minute
        if self._open_from is None:
            self._open_from = self._window_start(minute)
        self._close_until(self._watermark)
        return list(self._closed)

    def pop_closed(self) -> list[WindowStats]:
        """Windows closed since the last call, ordered by window start, operation and tenant."""
        self.flush()
        closed, self._closed = self._closed, []
        return closed

    def _close_until(self, watermark: int) -> None:
        assert self._open_from is not None
        width = self.window_minutes
        last_due = watermark - width - self.lateness_minutes  # latest start that may close
        due: list[int] = []
        # a window with data closes; so does the window after one (a stopped operation gets one
        # zero window), then quiet windows are skipped up to the next window with data
        active = bool(self._active_ops)
        start = self._open_from
        while start <= last_due:
            if start in self._hist.windows or active:
                due.append(start)
                active = start in self._hist.windows
                start += width
                continue
            after = self._window_start(last_due) + width
            upcoming = [w for w in self._hist.windows if w > start]
            start = min(min(upcoming), after) if upcoming else after
        self._open_from = start
        if not due:
            return
        # the due windows are computed together: numpy's per-call cost is paid once, not once
        # per window (what dominates when windows are many and small)
        stats, sketches = self._windows_stats(due, with_sketches=True)
        for start, window_stats, window_sketches in zip(due, stats, sketches, strict=True):
            self._close_window(start, window_stats, window_sketches)

    def _close_window(
        self, start: int, stats: list[WindowStats], sketches: dict[int, tuple[_I64, _I64]]
    ) -> None:
        end = start + self.window_minutes
        # an operation that had calls in the previous window and none now gets one zero window,
        # so a stop is visible as a throughput drop (then quiet windows are skipped)
        present = {st.operation for st in stats if st.org_id == ALL_TENANTS}
        t0, t1 = _minute_dt(start), _minute_dt(end)
        stopped = sorted(self._active_ops - present)
        stats.extend(
            WindowStats(name, ALL_TENANTS, t0, t1, 0, 0, math.nan, math.nan, math.nan)
            for name in stopped
        )
        if stopped:
            stats.sort(key=lambda st: (st.operation, st.org_id != ALL_TENANTS, st.org_id or ""))
        self._active_ops = present
        if self.export_buckets:
            self._sealed.extend(self._to_buckets(self._hist.rows(start), self._errs.get(start)))
        m, o, g, calls, errors = self._hist.minute_cells(start)
        self._hist.discard(start)
        self._errs.pop(start)
        if len(m):
            self._counters.append(m, o, g, calls, errors)
            if len(self._last_seen) < len(self._op_names):
                grown = np.full(len(self._op_names), -1, dtype=np.int64)
                grown[: len(self._last_seen)] = self._last_seen
                self._last_seen = grown
            np.maximum.at(self._last_seen, o, m)
        # windows close in order, so the oldest counters are in the first chunk: trim (and
        # compact) only when it holds a minute older than `counter_minutes`
        chunks = self._counters.chunks
        cutoff = end - self.counter_minutes
        if chunks and int(chunks[0][0].min()) < cutoff:
            self._counters.keep(self._counters.columns()[0] >= cutoff)
        empty = np.empty(0, dtype=np.int64)
        history, keep = self._history, self.history_windows
        for st in stats:
            series = (st.operation, st.org_id)
            hist = history.get(series)
            if hist is None:
                hist = history[series] = deque(maxlen=keep)
            hist.append(st)
            if st.org_id == ALL_TENANTS:
                kept = self._sketches.get(st.operation)
                if kept is None:
                    kept = self._sketches[st.operation] = deque(maxlen=keep)
                kept.append(sketches.get(self._ops[st.operation], (empty, empty)))
        self._closed.extend(stats)

    def _windows_stats(
        self, starts: Sequence[int], *, with_sketches: bool = False
    ) -> tuple[list[list[WindowStats]], list[dict[int, tuple[_I64, _I64]]]]:
        """Statistics of the windows starting at `starts` (ascending), computed together.

        Returns:
            Per window: its rows (every tenant of each operation first, then one row per
            (operation, tenant), ordered by operation name and tenant id), and, with
            `with_sketches`, each operation's all-tenant latency histogram of successful calls
            as `(bucket indexes, counts)` keyed by operation code.
        """
        n_ops, n_orgs, n_b = len(self._op_names), len(self._org_names), self.mapping.bucket_count
        group = max(1, _DENSE_CELLS // max(1, n_ops * n_b))
        if len(starts) > group:  # keep the dense (window x operation x bucket) matrix small
            stats: list[list[WindowStats]] = []
            kept: list[dict[int, tuple[_I64, _I64]]] = []
            for i in range(0, len(starts), group):
                part = self._windows_stats(starts[i : i + group], with_sketches=with_sketches)
                stats.extend(part[0])
                kept.extend(part[1])
            return stats, kept
        k = len(starts)
        parts = [self._hist.merged(s, n_ops, n_orgs) for s in starts]
        sizes = [len(u) for u, _c in parts]
        sketches: list[dict[int, tuple[_I64, _I64]]] = [{} for _ in starts]
        if not any(sizes):
            return [[] for _ in starts], sketches
        uniq = np.concatenate([u for u, _c in parts])
        merged = np.concatenate([c for _u, c in parts])
        w = np.repeat(np.arange(k, dtype=np.int64), sizes)
        rest, b = np.divmod(uniq, n_b)
        series, f = rest >> 1, rest & 1
        n_series = n_ops * n_orgs
        gs = w * n_series + series  # (window, operation, tenant): sorted, as each window is
        ok = f == 0
        # per (window, operation, tenant)
        first = np.empty(len(gs), dtype=np.bool_)
        first[0] = True
        np.not_equal(gs[1:], gs[:-1], out=first[1:])
        cuts = np.flatnonzero(first)
        sids = gs[cuts]
        calls_t = np.add.reduceat(merged, cuts)
        errors_t = np.add.reduceat(merged * f, cuts)
        # quantiles of the successful calls, as `grouped_quantiles` reads them (rank
        # floor(q (n - 1))), without copying them out: a series' successful rows come first and
        # its failed rows count 0, so the first row whose cumulative count exceeds a rank is
        # always a successful one
        ok_counts = merged * (f ^ 1)
        ok_totals = calls_t - errors_t
        cum = np.cumsum(ok_counts)
        ranks = np.floor(_QS[None, :] * (np.maximum(ok_totals, 1) - 1)[:, None].astype(np.float64))
        at = np.searchsorted(cum, (cum[cuts] - ok_counts[cuts])[:, None] + ranks.astype(np.int64),
                             side="right")  # fmt: skip
        np.minimum(at, len(cum) - 1, out=at)
        q_t = self.mapping.value(b[at].ravel()).reshape(at.shape)
        q_t[ok_totals == 0] = math.nan  # no successful call
        # every tenant together: dense ((window, operation) x bucket) histograms
        wo = w * n_ops + series // n_orgs
        ok_b = b[ok]
        # only the buckets in use: from bucket `lo`, `used` buckets wide
        lo = int(ok_b.min()) if len(ok_b) else 0
        used = int(ok_b.max()) - lo + 1 if len(ok_b) else 1
        all_hist = np.bincount(
            wo[ok] * used + (ok_b - lo), weights=merged[ok], minlength=k * n_ops * used
        ).reshape(k * n_ops, used)
        all_calls = np.bincount(wo, weights=merged, minlength=k * n_ops)
        all_errors = np.bincount(wo, weights=merged * f, minlength=k * n_ops)
        cells = np.flatnonzero(all_calls)
        # quantiles and sketches from the non-empty cells: `nonzero` is row-major, so the
        # (cell, bucket) pairs come sorted as `grouped_quantiles` wants them
        rows, cols = np.nonzero(all_hist[cells])
        counts = all_hist[cells[rows], cols].astype(np.int64)
        cols = cols.astype(np.int64) + lo
        q_rows, _totals, q_all = grouped_quantiles(
            rows, cols, counts, QUANTILES, self.mapping, presorted=True
        )
        all_q = np.full((len(cells), len(QUANTILES)), math.nan)  # NaN: no successful call
        all_q[q_rows] = q_all
        if with_sketches:
            bounds = np.searchsorted(rows, np.arange(len(cells) + 1)).tolist()
            for j, cell in enumerate(cells.tolist()):
                lo, hi = bounds[j], bounds[j + 1]
                if hi > lo:
                    sketches[cell // n_ops][cell % n_ops] = (cols[lo:hi], counts[lo:hi])
        # rows of every window in one pass: ordered by (window, operation name, every tenant
        # first, tenant id), objects built once
        w_a, o_a = np.divmod(cells, n_ops)
        w_t, rest_t = np.divmod(sids, n_series)
        o_t, g_t = np.divmod(rest_t, n_orgs)
        op_rank, org_rank = self._ranks()
        per_op = n_orgs + 1
        per_window = n_ops * per_op
        order = np.argsort(
            np.concatenate(
                [
                    w_a * per_window + op_rank[o_a] * per_op,
                    w_t * per_window + op_rank[o_t] * per_op + 1 + org_rank[g_t],
                ]
            )
        )
        window_of = np.concatenate([w_a, w_t])[order]
        quantiles = np.concatenate([all_q, q_t])[order]
        calls = np.concatenate([all_calls[cells], calls_t])[order].astype(np.int64)
        errors = np.concatenate([all_errors[cells], errors_t])[order].astype(np.int64)
        op_codes = np.concatenate([o_a, o_t])[order].tolist()
        org_codes = np.concatenate([np.full(len(cells), -1, dtype=np.int64), g_t])[order].tolist()
        windows = window_of.tolist()
        codes_by_window = [self._window_codes(self._errs.get(s), n_orgs) for s in starts]
        error_codes: list[Mapping[str, int]] = [{} for _ in windows]
        for i in np.flatnonzero(errors).tolist():  # only rows with errors have error codes
            found = codes_by_window[windows[i]].get((op_codes[i], org_codes[i]))
            if found:
                error_codes[i] = found
        width = self.window_minutes
        built = _window_stats_rows(
            len(windows),
            (
                _gather(self._op_names, op_codes),
                _gather([*self._org_names, ALL_TENANTS], org_codes),
                _gather([_minute_dt(s) for s in starts], windows),
                _gather([_minute_dt(s + width) for s in starts], windows),
                calls.tolist(),
                errors.tolist(),
                quantiles[:, 0].tolist(),
                quantiles[:, 1].tolist(),
                quantiles[:, 2].tolist(),
                error_codes,
            ),
        )
        edges = np.searchsorted(window_of, np.arange(k + 1)).tolist()
        return [built[edges[i] : edges[i + 1]] for i in range(k)], sketches

    def _ranks(self) -> tuple[_I64, _I64]:
        """Rank of each operation code by name and of each tenant code by id (`None` as "")."""
        cached = self._rank_cache
        if cached is not None and cached[0] == (len(self._op_names), len(self._org_names)):
            return cached[1], cached[2]
        op_rank = np.empty(len(self._op_names), dtype=np.int64)
        op_rank[sorted(range(len(self._op_names)), key=self._op_names.__getitem__)] = np.arange(
            len(self._op_names)
        )
        org_rank = np.empty(len(self._org_names), dtype=np.int64)
        org_rank[sorted(range(len(self._org_names)), key=lambda g: self._org_names[g] or "")] = (
            np.arange(len(self._org_names))
        )
        self._rank_cache = ((len(self._op_names), len(self._org_names)), op_rank, org_rank)
        return op_rank, org_rank

    def _window_codes(
        self, errs: tuple[_I64, ...], n_orgs: int
    ) -> dict[tuple[int, int], dict[str, int]]:
        _em, eo, eg, ec, en = errs
        out: dict[tuple[int, int], dict[str, int]] = {}
        for o, g, c, k in zip(eo.tolist(), eg.tolist(), ec.tolist(), en.tolist(), strict=True):
            name = self._code_names[c]
            for cell in ((o, g), (o, -1)):
                codes = out.setdefault(cell, {})
                codes[name] = codes.get(name, 0) + k
        return {
            cell: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for cell, v in out.items()
        }

    # -- reads ----------------------------------------------------------------------------------

    @property
    def operations(self) -> list[str]:
        """Every operation seen, in order of first appearance."""
        self.flush()
        return list(self._op_names)

    @property
    def watermark(self) -> datetime | None:
        """Start of the latest minute seen (or passed to `advance`)."""
        self.flush()
        return None if self._watermark is None else _minute_dt(self._watermark)

    def history(self, operation: str, org_id: str | None = ALL_TENANTS) -> list[WindowStats]:
        """Closed windows of one series, oldest first (at most `history_windows`)."""
        self.flush()
        return list(self._history.get((operation, org_id), ()))

    def latency_histogram(
        self, operation: str, *, include_open: bool = True
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The merged latency histogram of an operation's successful calls, every tenant.

        It covers the same windows as `history(operation)` (the last `history_windows` closed
        windows) plus, with `include_open`, the open ones. DDSketch histograms merge exactly, so
        any quantile read from it (`sketch.grouped_quantiles`) is within the mapping's relative
        accuracy of the exact quantile of all those calls, however they spread over windows.

        Returns:
            `(bucket indexes, counts)`, ascending by bucket, in `self.mapping`; empty arrays for
            an unknown operation or one without successful calls.
        """
        self.flush()
        buckets = [b for b, _c in self._sketches.get(operation, ())]
        counts = [c for _b, c in self._sketches.get(operation, ())]
        code = self._ops.get(operation)
        if include_open and code is not None:
            _m, op, _g, failed, bucket, count = self._hist.rows()
            mine = (op == code) & (failed == 0)
            buckets.append(bucket[mine])
            counts.append(count[mine])
        if not buckets:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        merged = np.bincount(
            np.concatenate(buckets),
            weights=np.concatenate(counts),
            minlength=self.mapping.bucket_count,
        )
        nz = np.flatnonzero(merged)
        return nz.astype(np.int64), merged[nz].astype(np.int64)

    def series(self) -> list[tuple[str, str | None]]:
        """Every `(operation, org_id)` with closed windows (`org_id` may be `ALL_TENANTS`)."""
        self.flush()
        return sorted(self._history, key=lambda k: (k[0], k[1] != ALL_TENANTS, k[1] or ""))

    def open_stats(self) -> list[WindowStats]:
        """Statistics of the current open window(s) so far (partial windows)."""
        self.flush()
        if self._open_from is None or self._watermark is None:
            return []
        starts = sorted(w for w in self._hist.windows if self._open_from <= w <= self._watermark)
        return [st for window in self._windows_stats(starts)[0] for st in window]

    def minute_counts(
        self, operation: str, org_id: str | None = ALL_TENANTS, *, include_open: bool = True
    ) -> MinuteCounts:
        """Per-minute calls and errors of a series, oldest first.

        Args:
            operation: Operation name.
            org_id: Tenant, or `ALL_TENANTS` for every tenant together.
            include_open: Also count the minutes of open windows (decodes them: slower).
        """
        self.flush()
        op_code = self._ops.get(operation)
        empty = np.empty(0, dtype=np.int64)
        if op_code is None or (org_id != ALL_TENANTS and org_id not in self._orgs):
            return MinuteCounts(empty, empty, empty)
        cm, co, cg, cc, ce = self._counters.columns()
        empty6 = tuple(np.empty(0, dtype=np.int64) for _ in range(6))
        hm, ho, hg, hf, _hb, hc = self._hist.rows() if include_open else empty6
        sel_c = co == op_code
        sel_h = ho == op_code
        if org_id != ALL_TENANTS:
            g = self._orgs[org_id]
            sel_c &= cg == g
            sel_h &= hg == g
        minutes = np.concatenate([cm[sel_c], hm[sel_h]])
        calls = np.concatenate([cc[sel_c], hc[sel_h]])
        errors = np.concatenate([ce[sel_c], hc[sel_h] * hf[sel_h]])
        if not len(minutes):
            return MinuteCounts(empty, empty, empty)
        uniq, inv = np.unique(minutes, return_inverse=True)
        return MinuteCounts(
            uniq,
            np.bincount(inv, weights=calls).astype(np.int64),
            np.bincount(inv, weights=errors).astype(np.int64),
        )

    def sequences(self) -> list[tuple[str, ...]]:
        """The operation sequence of every buffered trace (oldest trace first)."""
        self.flush()
        return [tuple(seq) for seq in self._traces.values()]

    def last_seen(self) -> dict[str, datetime]:
        """Start of the last minute with a call, per operation (sorted by name)."""
        self.flush()
        seen: dict[int, int] = {o: int(m) for o, m in enumerate(self._last_seen.tolist()) if m >= 0}
        minute, op = self._hist.rows()[:2]
        for o in np.unique(op).tolist():
            seen[o] = max(seen.get(o, -1), int(minute[op == o].max()))
        return {
            self._op_names[o]: _minute_dt(m)
            for o, m in sorted(seen.items(), key=lambda kv: self._op_names[kv[0]])
        }


def _epoch_minute(when: datetime) -> int:
    if when.tzinfo is None:
        raise ConfigurationError(f"datetimes must be timezone-aware (UTC), got naive {when!r}")
    return math.floor(when.timestamp() / 60.0)
