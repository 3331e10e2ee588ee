"""Detection on real NAB series replayed as telemetry, scored when an alert could have fired.

The EC2 request-latency series is replayed as latency (20 calls per 5-minute point, lasting the
point's value in ms), the ELB request-count series as calls (one call per counted request) and
the 18,050-point CPU series as latency (a utilisation gauge, reported separately). An intent about
a window exists once the window closes, so alerts are timestamped at the window's end.

The detector configuration is **tuned on a split that excludes the evaluated series**: for each
series, the configuration of `GRID` with the best NAB standard score on the *other two* series
is chosen (leave one series out), then scored on the held-out series. The floors below sit
slightly under the measured figures (printed by the tests, documented in
docs/evolution/detection.md): they keep today's honest figures, not a target.
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from functools import cache, reduce
from operator import add
from pathlib import Path

import pytest

from contractspec.core import ConfigurationError
from contractspec.evolution import evaluation as ev
from contractspec.evolution.detector import DetectorConfig, Intent, IntentKind, IntentSeverity

NAB = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "nab"
needs_nab = pytest.mark.skipif(not NAB.exists(), reason=f"NAB data not found at {NAB}")

SERIES = {
    "ec2_latency": ("ec2_request_latency_system_failure.csv", "realKnownCause/", "latency"),
    "elb_count": ("elb_request_count_8c0756.csv", "realAWSCloudwatch/", "count"),
    "cpu": ("cpu_utilization_asg_misconfiguration.csv", "realKnownCause/", "latency"),
}
KINDS = frozenset(
    {IntentKind.LATENCY_REGRESSION, IntentKind.THROUGHPUT_DROP, IntentKind.THROUGHPUT_SPIKE}
)


def candidate(window: int, history_h: int, z: float, cooldown_h: int) -> tuple[int, DetectorConfig]:
    """(window minutes, detector configuration) with history and cooldown in hours."""
    config = DetectorConfig(
        history_windows=history_h * 60 // window, cooldown_windows=cooldown_h * 60 // window,
        z_threshold=z, per_tenant=False, kinds=KINDS,
    )  # fmt: skip
    return window, config


#: The tuning grid: window length, baseline length, z threshold and alert cooldown.
GRID = [
    candidate(w, h, z, c)
    for w, h, z, c in itertools.product((30, 60), (24, 72), (3.5, 5.0, 7.0), (2, 8))
]
#: The configuration documented before issue 15, chosen by looking at the evaluated series.
HAND_PICKED = candidate(60, 72, 3.5, 8)


@cache
def labelled(key: str) -> tuple[list[float], list[tuple[datetime, datetime]]]:
    """The series' record times (epoch seconds) and labelled windows."""
    name, folder, _as = SERIES[key]
    labels = json.loads((NAB / "anomaly_windows.json").read_text())[folder + name]
    ts, _values = ev.read_series(NAB / name)
    return ts.tolist(), ev.windows_from_labels(labels)


@cache
def intents(key: str, window: int) -> dict[DetectorConfig, list[Intent]]:
    """Intents of every grid configuration with this window length (one replay per window)."""
    name, _folder, as_ = SERIES[key]
    ts, values = ev.read_series(NAB / name)
    batch = ev.replay_series(ts, values, as_=as_, operation="nab.series.read")  # type: ignore[arg-type]
    configs = [c for w, c in {*GRID, HAND_PICKED} if w == window]
    return dict(zip(configs, ev.replay_intents(batch, configs, window_minutes=window), strict=True))


def scores(key: str, cand: tuple[int, DetectorConfig]) -> tuple[ev.WindowScore, list[ev.NabScore]]:
    """Window counts and the NAB score of each profile, at detection time."""
    found = intents(key, cand[0])[cand[1]]
    ts, windows = labelled(key)
    counts = ev.score_alerts(ev.alerts_from_intents(found), windows)
    detections = ev.detection_times(found)
    return counts, [ev.nab_score(detections, ts, windows, p) for p in ev.NAB_PROFILES]


def chosen_for(held_out: str) -> tuple[int, DetectorConfig]:
    """The grid configuration with the best NAB standard score on the other series."""
    tuning = [k for k in SERIES if k != held_out]

    def objective(k: int) -> tuple[float, int]:
        total = reduce(add, (scores(key, GRID[k])[1][0] for key in tuning))
        return total.normalized, -k  # ties go to the earlier grid entry

    return GRID[max(range(len(GRID)), key=objective)]


def held_out(keys: tuple[str, ...]) -> tuple[ev.WindowScore, list[ev.NabScore]]:
    """Each series scored with the configuration tuned without it, added up."""
    per = [scores(key, chosen_for(key)) for key in keys]
    counts = reduce(add, (p[0] for p in per))
    nab = [reduce(add, (p[1][k] for p in per)) for k in range(len(ev.NAB_PROFILES))]
    return counts, nab


def report(label: str, counts: ev.WindowScore, nab: list[ev.NabScore]) -> str:
    profiles = " ".join(f"{n.profile.name}={n.normalized:.1f}" for n in nab)
    return (
        f"{label}: TP={counts.true_positives} FP={counts.false_positives} "
        f"FN={counts.false_negatives} precision={counts.precision:.2f} "
        f"recall={counts.recall:.2f}; NAB {profiles}"
    )


@needs_nab
def test_held_out_latency_and_count_series_meet_the_floors() -> None:
    """EC2 latency + ELB counts, each with a configuration tuned without it, at detection time:
    precision >= 0.35, recall >= 0.75, NAB standard >= 60 (measured 0.40, 0.80, 63.0)."""
    for key in ("ec2_latency", "elb_count"):
        window, config = chosen_for(key)
        print(f"\n{key}: tuned on the others -> window={window} min "
              f"history={config.history_windows} z={config.z_threshold} "
              f"cooldown={config.cooldown_windows}")  # fmt: skip
        print(report(key, *scores(key, (window, config))))
    counts, nab = held_out(("ec2_latency", "elb_count"))
    print(report("latency + count, held out", counts, nab))
    assert counts.precision >= 0.35
    assert counts.recall >= 0.75
    standard, low_fp, low_fn = (n.normalized for n in nab)
    assert standard >= 60.0
    assert low_fp >= 55.0
    assert low_fn >= 65.0


@needs_nab
def test_held_out_cpu_series_raises_no_false_alert_and_misses_its_window() -> None:
    """The 18,050-point CPU series with a configuration tuned on EC2 + ELB: no alert at all,
    so its one labelled window is missed (NAB standard 0, the score of never firing)."""
    counts, nab = scores("cpu", chosen_for("cpu"))
    print("\n" + report("cpu, held out", counts, nab))
    assert (counts.true_positives, counts.false_positives, counts.false_negatives) == (0, 0, 1)
    assert nab[0].normalized == 0.0


@needs_nab
def test_hand_picked_configuration_scored_at_detection_time() -> None:
    """The configuration picked on the evaluated series before issue 15, scored when alerts
    could fire: latency + count precision 0.38 and recall 0.60; 12 false alerts on the CPU."""
    both = [scores(key, HAND_PICKED) for key in ("ec2_latency", "elb_count")]
    counts = both[0][0] + both[1][0]
    nab = [both[0][1][k] + both[1][1][k] for k in range(len(ev.NAB_PROFILES))]
    cpu_counts, cpu_nab = scores("cpu", HAND_PICKED)
    print("\n" + report("hand-picked, latency + count", counts, nab))
    print(report("hand-picked, cpu", cpu_counts, cpu_nab))
    assert (counts.true_positives, counts.false_positives, counts.false_negatives) == (3, 5, 2)
    assert (round(counts.precision, 2), counts.recall) == (0.38, 0.6)
    assert (cpu_counts.true_positives, cpu_counts.false_positives) == (0, 12)


def test_alerts_are_timestamped_when_their_window_closes() -> None:
    """An intent about [10:00, 11:00) alerts at 11:00 (plus lateness), never at 10:00."""
    t = datetime(2024, 1, 1, tzinfo=UTC)

    def flagged(start_h: int) -> Intent:
        return Intent(
            id=f"i{start_h}", kind=IntentKind.LATENCY_REGRESSION, operation="op", org_id="*",
            window_start=t + timedelta(hours=start_h), window_end=t + timedelta(hours=start_h + 1),
            detected_at=t, confidence=0.9, severity=IntentSeverity.WARNING, summary="slow",
        )  # fmt: skip

    found = [flagged(10), flagged(11), flagged(15)]  # a run of two windows, then one window
    hours = [t + timedelta(hours=h) for h in (11, 16)]
    assert ev.alerts_from_intents(found) == hours
    assert ev.alerts_from_intents(found, lateness=timedelta(minutes=1)) == [
        h + timedelta(minutes=1) for h in hours
    ]
    assert ev.detection_times(found) == [t + timedelta(hours=h) for h in (11, 12, 16)]
    # a labelled window [10:00, 10:59] is missed: the first alert comes at 11:00
    score = ev.score_alerts(ev.alerts_from_intents(found), [(t + timedelta(hours=10),
                                                            t + timedelta(hours=10, minutes=59))])  # fmt: skip
    assert (score.true_positives, score.false_positives, score.false_negatives) == (0, 2, 1)


def test_score_alerts_counts_like_nab() -> None:
    """First alert per window is a TP, later ones in it are ignored, outside ones are FPs."""
    t = datetime(2024, 1, 1, tzinfo=UTC)
    windows = [(t, t + timedelta(hours=2)), (t + timedelta(hours=10), t + timedelta(hours=11))]
    alerts = [t + timedelta(minutes=30), t + timedelta(minutes=90), t + timedelta(hours=5)]
    score = ev.score_alerts(alerts, windows)
    assert (score.true_positives, score.false_positives, score.false_negatives) == (1, 1, 1)
    assert score.delays_minutes == (30.0,)
    assert (score.precision, score.recall) == (0.5, 0.5)
    assert ev.score_alerts([], []).precision == 1.0


def a(y: float) -> float:
    """NAB's scaled sigmoid written independently: 2 / (1 + e^(5y)) - 1 = -tanh(5y / 2)."""
    return -1.0 if y >= 3 else -math.tanh(2.5 * y)


T = datetime(2024, 1, 1, tzinfo=UTC)
RECORDS = [T + timedelta(minutes=5 * i) for i in range(40)]


def at(i: float) -> datetime:
    """The time of record `i` (fractions fall between records)."""
    return T + timedelta(minutes=5 * i)


def test_nab_score_weights_early_detection_and_distance_of_false_positives() -> None:
    """The published formula: window records 10..14, an early TP earns 1, a late one less; an FP
    before any window costs A_FP, one 3 records after the window A(3/4) A_FP."""
    window = [(at(10), at(14))]
    standard, low_fp, low_fn = ev.NAB_PROFILES
    early = ev.nab_score([at(10)], RECORDS, window, standard, probationary_percent=0)
    assert early.raw == pytest.approx(1.0)
    assert (early.null, early.perfect, early.normalized) == (-1.0, 1.0, pytest.approx(100.0))
    late = ev.nab_score([at(12.5)], RECORDS, window, standard, probationary_percent=0)
    # 12.5 lands on record 13: position -(14 - 13 + 1) / 5 = -0.4
    assert late.raw == pytest.approx(a(-0.4) / a(-1.0))
    noisy = ev.nab_score([at(2), at(10), at(11), at(17)], RECORDS, window, low_fp,
                         probationary_percent=0)  # fmt: skip
    assert noisy.raw == pytest.approx(1.0 - 0.22 + a(3 / 4) * 0.22)
    assert (noisy.true_positives, noisy.false_positives, noisy.false_negatives) == (1, 2, 0)
    missed = ev.nab_score([at(30)], RECORDS, window, low_fn, probationary_percent=0)
    assert missed.raw == pytest.approx(-2.0 + a(16 / 4) * 0.11)
    assert missed.normalized == pytest.approx(100 * (missed.raw + 2.0) / 3.0)  # perfect = A_TP


def test_nab_score_probation_records_and_corpus_normalisation() -> None:
    """The first 15 % of records are not scored, a detection after the last record is not scored,
    and scores of several series add up before normalising."""
    window = [(at(10), at(14))]
    # 40 records: records 0..5 are probationary, so the FP at record 3 is ignored
    probation = ev.nab_score([at(3), at(45)], RECORDS, window)
    assert (probation.raw, probation.false_positives, probation.false_negatives) == (-1.0, 0, 1)
    assert probation.normalized == 0.0
    hit = ev.nab_score([at(10)], RECORDS, window)
    corpus = hit + probation
    assert (corpus.raw, corpus.null, corpus.perfect) == (pytest.approx(0.0), -2.0, 2.0)
    assert corpus.normalized == pytest.approx(50.0)
    assert [(p.name, p.tp_weight, p.fp_weight, p.fn_weight) for p in ev.NAB_PROFILES] == [
        ("standard", 1.0, 0.11, 1.0),
        ("reward_low_FP_rate", 1.0, 0.22, 1.0),
        ("reward_low_FN_rate", 1.0, 0.11, 2.0),
    ]
    with pytest.raises(ConfigurationError, match="profiles"):
        _ = hit + ev.nab_score([], RECORDS, window, ev.NAB_PROFILES[1])
    with pytest.raises(ConfigurationError, match="overlaps"):
        ev.nab_score([], RECORDS, [(at(10), at(14)), (at(12), at(20))])
    assert math.isnan(ev.nab_score([at(10)], RECORDS, []).normalized)


def test_read_series_names_the_missing_file_and_where_to_get_nab(tmp_path: Path) -> None:
    """A missing CSV is a ConfigurationError with the absolute path tried and NAB's download page."""
    missing = tmp_path / "nab" / "ec2_request_latency_system_failure.csv"
    with pytest.raises(ConfigurationError) as caught:
        ev.read_series(missing)
    message = str(caught.value)
    assert f"path={str(missing)!r}" in message
    assert "https://github.com/numenta/NAB/tree/master/data" in message
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_read_series_reads_epoch_seconds_and_values_and_rejects_other_columns(
    tmp_path: Path,
) -> None:
    """Timestamps are UTC epoch seconds; a file without timestamp,value columns is refused."""
    good = tmp_path / "good.csv"
    good.write_text("timestamp,value\n2014-03-07 03:41:00,45.868\n2014-03-07 03:46:00,47.0\n")
    times, values = ev.read_series(good)
    start = datetime(2014, 3, 7, 3, 41, tzinfo=UTC).timestamp()
    assert (times.tolist(), values.tolist()) == ([start, start + 300], [45.868, 47.0])
    bad = tmp_path / "bad.csv"
    bad.write_text("time,value\n2014-03-07 03:41:00,1\n")
    with pytest.raises(ConfigurationError, match="expected columns timestamp,value"):
        ev.read_series(bad)
