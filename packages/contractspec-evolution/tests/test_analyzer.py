"""`SpecAnalyzer` period quantiles: read from the merged window sketches, never a median of windows."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from evolution_support import T0, minute_samples, sample
from pydantic import BaseModel

from contractspec.core import SpecRegistry, define_command
from contractspec.evolution import IntentAggregator, SpecAnalyzer


class Move(BaseModel):
    deal_id: str


REGISTRY = SpecRegistry(define_command("shop.deal.move", input=Move, output=Move))


def within(value: float, exact: float, accuracy: float = 0.01) -> bool:
    """DDSketch's guarantee: within 1 % of the exact value."""
    return abs(value / exact - 1.0) <= accuracy


def test_one_bad_window_shows_in_the_period_p95_and_p99() -> None:
    """Ten 1-hour windows of 100 calls at 10 ms and one of 100 calls at 1000 ms: the period's p95
    and p99 are 1000 ms (9 % of the calls are slow), its p50 10 ms."""
    agg = IntentAggregator(window_minutes=60, lateness_minutes=0)
    for hour in range(11):
        for s in minute_samples("shop.deal.move", hour * 60, [1000.0 if hour == 5 else 10.0] * 100):
            agg.record(s)
    agg.advance(T0 + timedelta(hours=11))
    usage = SpecAnalyzer(REGISTRY).analyze(agg).get("shop.deal.move")
    assert (usage.calls, usage.errors) == (1100, 0)
    assert within(usage.p50_ms, 10.0)
    assert within(usage.p95_ms, 1000.0)
    assert within(usage.p99_ms, 1000.0)


def test_period_quantiles_are_those_of_every_successful_call_closed_and_open() -> None:
    """Skewed windows, failures and an open window: p50/p95/p99 are within 1 % of the exact
    quantiles (rank floor(q (n - 1))) of all successful calls of the period."""
    rng = np.random.default_rng(15)
    agg = IntentAggregator(window_minutes=15, lateness_minutes=0)
    ok: list[float] = []
    for window in range(7):  # the last window stays open
        scale = 200.0 if window == 2 else 20.0
        durations = rng.lognormal(np.log(scale), 0.6, 300 + 100 * window)
        for k, ms in enumerate(durations.tolist()):
            failed = k % 10 == 0
            agg.record(sample("shop.deal.move", at=window * 900 + k % 800, duration_ms=ms,
                              success=not failed, org_id=f"org-{k % 3}"))  # fmt: skip
            if not failed:
                ok.append(ms)
    agg.advance(T0 + timedelta(minutes=6 * 15))
    assert len(agg.open_stats()) > 0
    usage = SpecAnalyzer(REGISTRY).analyze(agg).get("shop.deal.move")
    assert usage.calls - usage.errors == len(ok)
    exact = np.quantile(np.asarray(ok), [0.5, 0.95, 0.99], method="lower")
    for ours, want in zip((usage.p50_ms, usage.p95_ms, usage.p99_ms), exact, strict=True):
        assert within(ours, float(want)), (ours, want)


def test_latency_histogram_keeps_the_history_windows_and_skips_failures() -> None:
    """The merged histogram covers the retained history (`history_windows`) plus open windows."""
    agg = IntentAggregator(window_minutes=60, lateness_minutes=0, history_windows=2)
    for hour in range(4):
        for s in minute_samples("shop.deal.move", hour * 60, [5.0] * (hour + 1), errors=2):
            agg.record(s)
    agg.advance(T0 + timedelta(hours=3))  # hours 0-2 closed (two kept), hour 3 open
    _buckets, counts = agg.latency_histogram("shop.deal.move")
    assert int(counts.sum()) == 2 + 3 + 4
    _buckets, closed = agg.latency_histogram("shop.deal.move", include_open=False)
    assert int(closed.sum()) == 2 + 3
    assert [len(a) for a in agg.latency_histogram("shop.unknown.op")] == [0, 0]
