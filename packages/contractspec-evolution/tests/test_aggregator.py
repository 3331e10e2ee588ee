"""IntentAggregator: per-minute buckets rolled into windows, per tenant and for all tenants."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from evolution_support import T0, minute_samples, sample

from contractspec.core import ConfigurationError
from contractspec.evolution import (
    ALL_TENANTS,
    DEFAULT_MAPPING,
    IntentAggregator,
    TelemetryBatch,
    WindowStats,
)


def rep(x: float) -> float:
    """The value the 1 % histogram reports for `x`."""
    return float(DEFAULT_MAPPING.value(DEFAULT_MAPPING.index([x]))[0])


def feed(agg: IntentAggregator, samples: list) -> None:
    for s in samples:
        agg.record(s)


def test_a_window_closes_after_its_lateness_with_exact_counts_and_quantiles() -> None:
    """Minutes 0-14 form one window, closed once a sample of minute 16 arrives (lateness 1)."""
    agg = IntentAggregator(window_minutes=15, lateness_minutes=1)
    feed(agg, minute_samples("crm.deal.create", 0, range(1, 51), errors=2))
    feed(agg, minute_samples("crm.deal.create", 14, range(51, 101), errors=1,
                             error_code="validation_error"))  # fmt: skip
    feed(agg, minute_samples("crm.deal.create", 15, [5.0]))
    assert agg.pop_closed() == []
    feed(agg, minute_samples("crm.deal.create", 16, [5.0]))
    closed = agg.pop_closed()
    assert [(s.org_id, s.calls, s.errors) for s in closed] == [
        (ALL_TENANTS, 103, 3),
        ("org-1", 103, 3),
    ]
    whole = closed[0]
    assert (whole.start, whole.end) == (T0, T0 + timedelta(minutes=15))
    # successful durations 1..100: ranks floor(q * 99) -> 50, 95, 99
    assert (whole.p50_ms, whole.p95_ms, whole.p99_ms) == (rep(50), rep(95), rep(99))
    assert dict(whole.error_codes) == {"internal_error": 2, "validation_error": 1}
    assert whole.error_rate == 3 / 103
    assert whole.throughput_per_min == 103 / 15
    assert whole.to_dict()["error_codes"] == {"internal_error": 2, "validation_error": 1}
    assert agg.pop_closed() == []


def test_tenants_are_separate_series_and_rolled_up() -> None:
    """Each tenant has its own window stats; ALL_TENANTS merges their histograms exactly."""
    agg = IntentAggregator(window_minutes=5, lateness_minutes=0)
    feed(agg, minute_samples("crm.deal.move", 1, [10.0] * 9, org_id="org-a"))
    feed(agg, minute_samples("crm.deal.move", 2, [1000.0], errors=1, org_id="org-b"))
    feed(agg, minute_samples("crm.deal.move", 2, [3.0], org_id=None))
    closed = agg.advance(T0 + timedelta(minutes=5))
    by_org = {s.org_id: s for s in closed}
    assert set(by_org) == {ALL_TENANTS, None, "org-a", "org-b"}
    assert (by_org["org-a"].calls, by_org["org-a"].p99_ms) == (9, rep(10))
    assert (by_org["org-b"].calls, by_org["org-b"].errors, by_org["org-b"].p50_ms) == (
        2,
        1,
        rep(1000),
    )
    assert by_org[None].calls == 1
    merged = by_org[ALL_TENANTS]
    # 11 successful durations: 3, nine 10s, 1000 -> p50 rank 5 = 10, p99 rank 9 = 10
    assert (merged.calls, merged.errors, merged.p50_ms, merged.p99_ms) == (12, 1, rep(10), rep(10))
    assert agg.series() == [
        ("crm.deal.move", ALL_TENANTS), ("crm.deal.move", None),
        ("crm.deal.move", "org-a"), ("crm.deal.move", "org-b"),
    ]  # fmt: skip


def test_only_failures_give_nan_latency() -> None:
    """A window where every call failed reports NaN quantiles (latency is of successful calls)."""
    agg = IntentAggregator(window_minutes=1, lateness_minutes=0)
    feed(agg, minute_samples("crm.x.y", 0, [], errors=4))
    (whole, _tenant) = agg.advance(T0 + timedelta(minutes=1))
    assert (whole.calls, whole.errors) == (4, 4)
    assert math.isnan(whole.p50_ms)
    assert whole.to_dict()["p50_ms"] is None


def test_late_samples_are_counted_and_dropped() -> None:
    """Samples older than the oldest open window are dropped and counted in late_samples."""
    agg = IntentAggregator(window_minutes=5, lateness_minutes=0)
    feed(agg, minute_samples("crm.a.b", 0, [1.0]))
    agg.advance(T0 + timedelta(minutes=5))
    feed(agg, minute_samples("crm.a.b", 3, [1.0, 2.0]))
    feed(agg, minute_samples("crm.a.b", 6, [1.0]))
    agg.flush()
    assert (agg.late_samples, agg.samples) == (2, 2)


def test_bad_samples_are_dropped_without_raising() -> None:
    """record() never raises: naive timestamps and negative or NaN durations are dropped."""
    agg = IntentAggregator()
    agg.record(sample(duration_ms=-1.0))
    agg.record(sample(duration_ms=float("nan")))
    agg.record(sample(at=T0.replace(tzinfo=None)))
    agg.record(sample(duration_ms=3.0))
    agg.flush()
    assert (agg.dropped_samples, agg.samples) == (3, 1)


def test_record_buffers_until_buffer_size() -> None:
    """record() ingests in batches of buffer_size; reads flush the rest."""
    agg = IntentAggregator(buffer_size=3)
    feed(agg, minute_samples("crm.a.b", 0, [1.0, 2.0]))
    assert agg.samples == 0
    agg.record(sample("crm.a.b", at=10))
    assert agg.samples == 3
    agg.record(sample("crm.a.b", at=11))
    assert agg.operations == ["crm.a.b"]
    assert agg.samples == 4


def test_columnar_and_record_paths_agree() -> None:
    """ingest(TelemetryBatch) and record() produce identical windows."""
    rng = np.random.default_rng(5)
    samples = [
        sample(
            f"crm.op{i % 3}.run", at=float(rng.uniform(0, 1800)),
            duration_ms=float(rng.lognormal(2, 1)), success=bool(rng.random() > 0.1),
            org_id=f"org-{i % 4}",
        )
        for i in range(400)
    ]  # fmt: skip
    a = IntentAggregator(window_minutes=10)
    feed(a, samples)
    b = IntentAggregator(window_minutes=10)
    b.ingest(TelemetryBatch.from_samples(samples))
    end = T0 + timedelta(hours=1)
    assert [w.to_dict() for w in a.advance(end)] == [w.to_dict() for w in b.advance(end)]
    closed = a.pop_closed()
    # 3 windows x 3 operations x (4 tenants + all), then one zero window per operation
    assert len(closed) == 3 * (3 * 5) + 3
    assert [(w.operation, w.calls) for w in closed[-3:]] == [
        ("crm.op0.run", 0), ("crm.op1.run", 0), ("crm.op2.run", 0),
    ]  # fmt: skip


def test_minute_counts_cover_closed_and_open_minutes() -> None:
    """Per-minute calls and errors (for burn rates) include closed windows and open minutes."""
    agg = IntentAggregator(window_minutes=5, lateness_minutes=0)
    feed(agg, minute_samples("crm.a.b", 0, [1.0, 1.0], errors=1))
    feed(agg, minute_samples("crm.a.b", 4, [1.0]))
    feed(agg, minute_samples("crm.a.b", 6, [1.0], errors=2, org_id="org-2"))
    counts = agg.minute_counts("crm.a.b")
    base = int(T0.timestamp() // 60)
    assert (counts.minutes - base).tolist() == [0, 4, 6]
    assert counts.calls.tolist() == [3, 1, 3]
    assert counts.errors.tolist() == [1, 0, 2]
    assert counts.totals(base, base + 5) == (4, 1)
    org2 = agg.minute_counts("crm.a.b", "org-2")
    assert (org2.calls.tolist(), org2.errors.tolist()) == ([3], [2])
    assert len(agg.minute_counts("crm.unknown.op").minutes) == 0


def test_counters_and_history_are_bounded() -> None:
    """Closed windows keep history_windows per series and counters keep counter_minutes."""
    agg = IntentAggregator(
        window_minutes=1, lateness_minutes=0, history_windows=3, counter_minutes=4
    )
    for minute in range(10):
        feed(agg, minute_samples("crm.a.b", minute, [float(minute + 1)]))
    agg.advance(T0 + timedelta(minutes=10))
    hist = agg.history("crm.a.b")
    assert [h.start for h in hist] == [T0 + timedelta(minutes=m) for m in (7, 8, 9)]
    assert [h.p50_ms for h in hist] == [rep(8), rep(9), rep(10)]
    base = int(T0.timestamp() // 60)
    assert (agg.minute_counts("crm.a.b").minutes - base).tolist() == [6, 7, 8, 9]


def test_buckets_round_trip_merges_exactly() -> None:
    """Two processes' minute buckets merged into a third give the windows of all samples."""
    rng = np.random.default_rng(9)
    samples = [
        sample("crm.a.b", at=float(rng.uniform(0, 600)), duration_ms=float(rng.lognormal(1, 1)),
               success=bool(rng.random() > 0.2), org_id=f"org-{i % 2}")
        for i in range(300)
    ]  # fmt: skip
    one, two, merged, whole = (IntentAggregator(window_minutes=10) for _ in range(4))
    feed(one, samples[:150])
    feed(two, samples[150:])
    feed(whole, samples)
    buckets = one.buckets() + two.buckets()
    assert sum(b.calls for b in buckets) == 300
    assert merged.ingest_buckets(buckets) == 300
    end = T0 + timedelta(minutes=30)
    assert [w.to_dict() for w in merged.advance(end)] == [w.to_dict() for w in whole.advance(end)]
    first = one.buckets(since=T0, until=T0 + timedelta(minutes=1))
    assert all(b.minute == T0 for b in first)


def test_foreign_bucket_index_is_refused() -> None:
    """A bucket from another mapping is refused with the fix in the message."""
    from contractspec.evolution import TelemetryBucket

    agg = IntentAggregator()
    bad = TelemetryBucket(minute=T0, operation="crm.a.b", org_id=None, calls=1, errors=0,
                          histogram={5000: 1})  # fmt: skip
    with pytest.raises(ConfigurationError, match="same LogBucketMapping"):
        agg.ingest_buckets([bad])


def test_trace_sequences_are_bounded() -> None:
    """Each trace keeps its last max_sequence_length operations; the oldest traces are evicted."""
    agg = IntentAggregator(max_traces=2, max_sequence_length=3)
    for i, op in enumerate(["crm.a.one", "crm.a.two", "crm.a.three", "crm.a.four"]):
        agg.record(sample(op, at=i, trace_id="t1"))
    agg.record(sample("crm.b.one", at=10, trace_id="t2"))
    agg.record(sample("crm.c.one", at=11, trace_id="t3"))
    assert agg.sequences() == [("crm.b.one",), ("crm.c.one",)]
    agg2 = IntentAggregator(max_sequence_length=3)
    for i, op in enumerate(["crm.a.one", "crm.a.two", "crm.a.three", "crm.a.four"]):
        agg2.record(sample(op, at=i, trace_id="t1"))
    assert agg2.sequences() == [("crm.a.two", "crm.a.three", "crm.a.four")]


def test_last_seen_and_open_stats() -> None:
    """last_seen gives the last minute with a call per operation; open_stats the partial window."""
    agg = IntentAggregator(window_minutes=5, lateness_minutes=0)
    feed(agg, minute_samples("crm.b.b", 1, [2.0]))
    feed(agg, minute_samples("crm.a.a", 7, [4.0]))
    assert agg.last_seen() == {
        "crm.a.a": T0 + timedelta(minutes=7),
        "crm.b.b": T0 + timedelta(minutes=1),
    }
    partial = agg.open_stats()
    assert [(s.operation, s.org_id, s.calls) for s in partial] == [
        ("crm.a.a", ALL_TENANTS, 1), ("crm.a.a", "org-1", 1),
    ]  # fmt: skip
    assert agg.watermark == T0 + timedelta(minutes=7)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window_minutes": 0}, "window_minutes"),
        ({"history_windows": -1}, "history_windows"),
        ({"lateness_minutes": -1}, "lateness_minutes"),
        ({"buffer_size": True}, "buffer_size"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict, field: str) -> None:
    """Invalid sizes raise ConfigurationError naming the argument."""
    with pytest.raises(ConfigurationError, match=field):
        IntentAggregator(**kwargs)


def test_window_stats_properties() -> None:
    """Derived rates of a WindowStats."""
    s = WindowStats("crm.a.b", "o", T0, T0 + timedelta(minutes=10), 20, 5, 1.0, 2.0, 3.0)
    assert (s.minutes, s.error_rate, s.success_rate, s.throughput_per_min) == (
        10.0,
        0.25,
        0.75,
        2.0,
    )
    empty = WindowStats("crm.a.b", "o", T0, T0 + timedelta(minutes=1), 0, 0, 1.0, 1.0, 1.0)
    assert empty.error_rate == 0.0


def test_a_stopped_operation_gets_one_zero_window_then_quiet_windows_are_skipped() -> None:
    """After its last call an operation reports calls=0 once; far-future samples jump ahead."""
    agg = IntentAggregator(window_minutes=5, lateness_minutes=0)
    feed(agg, minute_samples("crm.a.b", 0, [1.0, 2.0]))
    feed(agg, minute_samples("crm.c.d", 6, [1.0]))
    agg.advance(T0 + timedelta(days=365))
    closed = agg.pop_closed()
    assert [(w.operation, w.start, w.calls) for w in closed if w.org_id == ALL_TENANTS] == [
        ("crm.a.b", T0, 2),
        ("crm.a.b", T0 + timedelta(minutes=5), 0),
        ("crm.c.d", T0 + timedelta(minutes=5), 1),
        ("crm.c.d", T0 + timedelta(minutes=10), 0),
    ]
    zero = next(w for w in closed if w.calls == 0)
    assert (zero.operation, math.isnan(zero.p95_ms)) == ("crm.a.b", True)
