"""Detection on real NAB series replayed as telemetry: precision and recall against the labels.

The EC2 request-latency series is replayed as latency (20 calls per 5-minute point, lasting the
point's value in ms) and the ELB request-count series as calls (one call per counted request);
the CPU series is a long replay (18,050 points) reported separately (it is a utilisation gauge,
not a latency or a count). Alerts are counted NAB-style (`contractspec.evolution.evaluation`).
Figures are printed and documented in docs/evolution/detection.md; the floors below keep them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from contractspec.evolution import IntentAggregator
from contractspec.evolution.detector import DetectorConfig, IntentDetector, IntentKind
from contractspec.evolution.evaluation import (
    WindowScore,
    alerts_from_intents,
    read_series,
    replay_series,
    score_alerts,
    windows_from_labels,
)

NAB = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "nab"
pytestmark = pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")

LATENCY = ("ec2_request_latency_system_failure.csv", "realKnownCause/", "latency")
COUNT = ("elb_request_count_8c0756.csv", "realAWSCloudwatch/", "count")
CPU = ("cpu_utilization_asg_misconfiguration.csv", "realKnownCause/", "latency")

#: The evaluated configuration: 1-hour windows, a 3-day baseline, 8-hour alert cooldown.
WINDOW_MINUTES = 60
CONFIG = DetectorConfig(
    history_windows=72, cooldown_windows=8, per_tenant=False,
    kinds=frozenset({IntentKind.LATENCY_REGRESSION, IntentKind.THROUGHPUT_DROP,
                     IntentKind.THROUGHPUT_SPIKE}),
)  # fmt: skip


def replay(series: tuple[str, str, str], config: DetectorConfig, window: int) -> WindowScore:
    name, folder, as_ = series
    labels = json.loads((NAB / "anomaly_windows.json").read_text())[folder + name]
    ts, values = read_series(NAB / name)
    batch = replay_series(ts, values, as_=as_, operation="nab.series.read")  # type: ignore[arg-type]
    agg = IntentAggregator(
        window_minutes=window, lateness_minutes=0, history_windows=config.history_windows
    )
    detector = IntentDetector(config)
    agg.ingest(batch)
    agg.advance(datetime.fromtimestamp(float(ts[-1]), UTC) + timedelta(hours=2))
    intents = detector.evaluate(agg)
    return score_alerts(alerts_from_intents(intents), windows_from_labels(labels))


def test_latency_and_request_count_series_meet_the_floor() -> None:
    """EC2 latency + ELB counts: precision >= 0.5 and recall >= 0.8 over the 5 labelled windows."""
    latency = replay(LATENCY, CONFIG, WINDOW_MINUTES)
    count = replay(COUNT, CONFIG, WINDOW_MINUTES)
    total = latency + count
    print(
        f"\nNAB latency: TP={latency.true_positives} FP={latency.false_positives} "
        f"FN={latency.false_negatives}; count: TP={count.true_positives} "
        f"FP={count.false_positives} FN={count.false_negatives}; "
        f"precision={total.precision:.2f} recall={total.recall:.2f} f1={total.f1:.2f}"
    )
    assert (latency.true_positives, latency.false_positives, latency.false_negatives) == (2, 1, 1)
    assert (count.true_positives, count.false_positives, count.false_negatives) == (2, 3, 0)
    assert total.precision >= 0.5
    assert total.recall >= 0.8


def test_long_cpu_series_finds_its_window() -> None:
    """The 18,050-point CPU series: the misconfiguration window is found; false alerts stay few."""
    cpu = replay(CPU, CONFIG, WINDOW_MINUTES)
    print(f"\nNAB cpu: TP={cpu.true_positives} FP={cpu.false_positives} FN={cpu.false_negatives}")
    assert cpu.true_positives == 1
    assert cpu.false_positives <= 11


def test_score_alerts_counts_like_nab() -> None:
    """First alert per window is a TP, later ones in it are ignored, outside ones are FPs."""
    t = datetime(2024, 1, 1, tzinfo=UTC)
    windows = [(t, t + timedelta(hours=2)), (t + timedelta(hours=10), t + timedelta(hours=11))]
    alerts = [t + timedelta(minutes=30), t + timedelta(minutes=90), t + timedelta(hours=5)]
    score = score_alerts(alerts, windows)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (1, 1, 1)
    assert score.delays_minutes == (30.0,)
    assert (score.precision, score.recall) == (0.5, 0.5)
    assert score_alerts([], []).precision == 1.0
