"""IntentDetector: robust z on MAD, EWMA after comparison, burn rates, guards and sequences."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from evolution_support import T0, minute_samples, sample
from hypothesis import given
from hypothesis import strategies as st

from contractspec.core import ConfigurationError
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.evolution import ALL_TENANTS, IntentAggregator
from contractspec.evolution.detector import (
    BurnRateRule,
    DetectorConfig,
    Ewma,
    Intent,
    IntentDetector,
    IntentKind,
    IntentSeverity,
    robust_z,
)

OP = "crm.deal.move"


def detector(**cfg: object) -> IntentDetector:
    return IntentDetector(
        DetectorConfig(**cfg),
        clock=FakeClock(T0),
        ids=SequentialIds("intent"),  # type: ignore[arg-type]
    )


def run_windows(
    det: IntentDetector,
    windows: list[tuple[list[float], int]],
    *,
    window_minutes: int = 1,
    per_minute_extra: int = 0,
) -> list[Intent]:
    """Feed one window per entry (durations, errors) and evaluate after each."""
    agg = IntentAggregator(window_minutes=window_minutes, lateness_minutes=0)
    out: list[Intent] = []
    for i, (durations, errors) in enumerate(windows):
        for s in minute_samples(OP, i * window_minutes, durations, errors=errors):
            agg.record(s)
        agg.advance(T0 + timedelta(minutes=(i + 1) * window_minutes))
        out.extend(det.evaluate(agg))
    return out


def test_robust_z_uses_mad_then_meanad_then_constant() -> None:
    """MAD when it is positive, MeanAD when the MAD is 0, +-inf when there is no spread."""
    mad = robust_z([1, 2, 3, 4, 100], 10)
    assert (mad.median, mad.spread, mad.method) == (3.0, 1.0, "mad")
    assert mad.z == pytest.approx(0.6745 * 7)
    meanad = robust_z([5, 5, 5, 5, 9], 9)
    assert meanad.method == "meanad"
    assert meanad.z == pytest.approx(4 / (1.253314 * 0.8))
    flat = robust_z([2, 2, 2], 2)
    assert (flat.z, flat.method) == (0.0, "constant")
    assert robust_z([2, 2, 2], 3).z == math.inf
    assert robust_z([2, 2, 2], 1).z == -math.inf
    with pytest.raises(ConfigurationError):
        robust_z([], 1.0)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.floats(-1e6, 1e6))
def test_robust_z_is_never_nan(history: list[float], value: float) -> None:
    """Whatever the history, the score is a number or an infinity (safe when MAD = 0)."""
    assert not math.isnan(robust_z(history, value).z)


def test_ewma_scores_before_it_updates() -> None:
    """The baseline used to judge a value never contains it (West's incremental variance)."""
    e = Ewma(alpha=0.5)
    assert e.score(10.0) == 0.0
    e.update(10.0)
    assert e.score(10.0) == 0.0
    assert e.score(12.0) == math.inf
    e.update(12.0)
    assert (e.mean, e.var, e.n) == (11.0, 1.0, 2)
    assert e.score(13.0) == 2.0


def test_latency_regression_is_detected_with_evidence() -> None:
    """A p95 jump far outside the MAD baseline is one latency intent with its statistics."""
    steady = [([10.0 + (i % 3)] * 40, 0) for i in range(10)]
    intents = run_windows(detector(kinds=frozenset({IntentKind.LATENCY_REGRESSION})),
                          [*steady, ([40.0] * 40, 0)])  # fmt: skip
    whole = [i for i in intents if i.org_id == ALL_TENANTS]
    assert len(whole) == 1
    (intent,) = whole
    assert intent.kind is IntentKind.LATENCY_REGRESSION
    assert intent.severity is IntentSeverity.CRITICAL
    assert intent.window_start == T0 + timedelta(minutes=10)
    ev = intent.evidence
    assert ev["methods"] == ["robust_z_mad", "ewma"]
    assert ev["history_windows"] == 10
    assert ev["baseline_p95_ms"] == pytest.approx(10.95, rel=0.02)
    assert ev["relative_change"] == pytest.approx(40 / 10.95 - 1, rel=0.03)
    assert 0.5 < intent.confidence < 1.0
    assert intent.id == "intent-000001"
    assert Intent.from_dict(intent.to_dict()).to_dict() == intent.to_dict()


def test_guards_keep_small_or_thin_windows_quiet() -> None:
    """Too few calls, too little history or a change under 20 % raise nothing."""
    cfg = {"kinds": frozenset({IntentKind.LATENCY_REGRESSION})}
    steady = [([10.0] * 40, 0) for _ in range(10)]
    assert run_windows(detector(**cfg), [*steady, ([40.0] * 5, 0)]) == []  # min_calls
    assert run_windows(detector(**cfg), [*steady[:3], ([40.0] * 40, 0)]) == []  # min_history
    assert run_windows(detector(**cfg), [*steady, ([11.5] * 40, 0)]) == []  # effect size


def test_error_spike_from_a_zero_baseline_needs_min_errors() -> None:
    """With MAD = 0 (no errors before), 4 errors stay quiet and 8 errors are a spike."""
    cfg = {"kinds": frozenset({IntentKind.ERROR_SPIKE}), "per_tenant": False}
    steady = [([5.0] * 50, 0) for _ in range(10)]
    assert run_windows(detector(**cfg), [*steady, ([5.0] * 50, 4)]) == []
    (intent,) = run_windows(detector(**cfg), [*steady, ([5.0] * 50, 8)])
    assert intent.kind is IntentKind.ERROR_SPIKE
    assert intent.evidence["spread_method"] == "constant"
    assert intent.evidence["robust_z"] == math.inf
    assert intent.evidence["top_error_codes"] == {"internal_error": 8}
    assert intent.severity is IntentSeverity.CRITICAL  # 8 / 58 > 5 %


def test_throughput_drop_and_spike() -> None:
    """Calls per window far below or above the baseline are drops and spikes."""
    cfg = {"kinds": frozenset({IntentKind.THROUGHPUT_DROP, IntentKind.THROUGHPUT_SPIKE}),
           "per_tenant": False}  # fmt: skip
    steady = [([5.0] * (100 + (i % 5)), 0) for i in range(10)]
    (drop,) = run_windows(detector(**cfg), [*steady, ([5.0] * 30, 0)])
    assert drop.kind is IntentKind.THROUGHPUT_DROP
    assert drop.evidence["calls"] == 30
    assert drop.evidence["baseline_calls"] == 102.0
    (spike,) = run_windows(detector(**cfg), [*steady, ([5.0] * 400, 0)])
    assert spike.kind is IntentKind.THROUGHPUT_SPIKE


def test_cooldown_reports_a_long_regression_once() -> None:
    """Consecutive flagged windows of one series give one intent within the cooldown."""
    cfg = {"kinds": frozenset({IntentKind.LATENCY_REGRESSION}), "per_tenant": False,
           "cooldown_windows": 4}  # fmt: skip
    steady = [([10.0 + (i % 3)] * 40, 0) for i in range(10)]
    slow = [([40.0] * 40, 0) for _ in range(3)]
    intents = run_windows(detector(**cfg), [*steady, *slow])
    assert [i.window_start for i in intents] == [T0 + timedelta(minutes=10)]
    loud = run_windows(detector(**{**cfg, "cooldown_windows": 0}), [*steady, *slow])
    assert len(loud) == 3


def test_slo_burn_rate_multiwindow() -> None:
    """14.4x over 1 h and 5 min of a 99.9 % SLO pages; a burst only in the last minutes does not."""
    cfg = DetectorConfig(kinds=frozenset({IntentKind.SLO_BURN}), per_tenant=False,
                         burn_rules=(BurnRateRule(60, 5, 14.4),))  # fmt: skip
    agg = IntentAggregator(window_minutes=5, lateness_minutes=0)
    det = IntentDetector(cfg, clock=FakeClock(T0), ids=SequentialIds())
    for minute in range(60):
        for s in minute_samples(OP, minute, [5.0] * 98, errors=2):  # 2 % errors = 20x burn
            agg.record(s)
    agg.advance(T0 + timedelta(minutes=60))
    intents = det.evaluate(agg)
    # the first window already burns 20x; the cooldown (4 windows) repeats it every 20 minutes
    assert [i.window_start for i in intents] == [T0 + timedelta(minutes=m) for m in (0, 20, 40)]
    last = intents[-1]
    assert last.kind is IntentKind.SLO_BURN
    assert last.evidence["burn_rate_long"] == pytest.approx(20.0)
    assert last.evidence["burn_rate_short"] == pytest.approx(20.0)
    assert last.evidence["long_calls"] == 4500
    assert intents[0].evidence["long_calls"] == 500
    # a fresh service with errors only in its last 5 minutes: short burns, long does not
    agg2 = IntentAggregator(window_minutes=5, lateness_minutes=0)
    det2 = IntentDetector(cfg, clock=FakeClock(T0))
    for minute in range(60):
        for s in minute_samples(OP, minute, [5.0] * 100, errors=5 if minute >= 55 else 0):
            agg2.record(s)
    agg2.advance(T0 + timedelta(minutes=60))
    assert det2.evaluate(agg2) == []


def test_sequences_need_support_and_confidence_and_are_reported_once() -> None:
    """A pair in enough traces with high confidence is a workflow; a pair seen once is not."""
    agg = IntentAggregator()
    for t in range(10):
        for k, op in enumerate(["crm.contact.create", "crm.deal.create", "crm.deal.move"]):
            agg.record(sample(op, at=t * 10 + k, trace_id=f"t{t}"))
    agg.record(sample("crm.task.create", at=200, trace_id="lonely"))
    agg.record(sample("crm.task.complete", at=201, trace_id="lonely"))
    det = detector(min_support=5, min_confidence=0.6)
    intents = det.evaluate(agg)
    seqs = [i.sequence for i in intents]
    assert seqs == [
        ("crm.contact.create", "crm.deal.create"),
        ("crm.contact.create", "crm.deal.create", "crm.deal.move"),
        ("crm.deal.create", "crm.deal.move"),
    ]
    first = intents[0]
    assert first.evidence["support"] == 10
    assert first.evidence["traces"] == 11
    assert first.evidence["rule_confidence"] == 1.0
    assert first.confidence == round(10 / 15, 4)
    assert det.evaluate(agg) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"z_threshold": 0}, "z_threshold"),
        ({"min_calls": 1.5}, "min_calls"),
        ({"ewma_alpha": 0}, "ewma_alpha"),
        ({"slo_objective": 1.0}, "slo_objective"),
        ({"min_confidence": 2}, "min_confidence"),
        ({"sequence_lengths": (1,)}, "sequence_lengths"),
        ({"cooldown_windows": -1}, "cooldown_windows"),
        ({"burn_rules": (BurnRateRule(5, 60, 14.4),)}, "short_minutes"),
    ],
)
def test_bad_detector_config_names_the_field(kwargs: dict, field: str) -> None:
    """Each invalid threshold raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=field):
        DetectorConfig(**kwargs)


def test_an_operation_that_stops_is_a_throughput_drop() -> None:
    """When calls stop, the zero window the aggregator reports is judged a throughput drop."""
    cfg = {"kinds": frozenset({IntentKind.THROUGHPUT_DROP}), "per_tenant": False}
    steady = [([5.0] * (100 + (i % 5)), 0) for i in range(10)]
    (drop,) = run_windows(detector(**cfg), [*steady, ([], 0)])
    assert (drop.kind, drop.evidence["calls"], drop.evidence["baseline_calls"]) == (
        IntentKind.THROUGHPUT_DROP, 0, 102.0,
    )  # fmt: skip
    assert drop.window_start == T0 + timedelta(minutes=10)
