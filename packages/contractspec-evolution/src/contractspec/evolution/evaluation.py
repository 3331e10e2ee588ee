"""Evaluate detection on labelled series: replay them as telemetry, score like NAB.

The Numenta Anomaly Benchmark (Lavin and Ahmad, "Evaluating Real-time Anomaly Detection
Algorithms - the Numenta Anomaly Benchmark", IEEE ICMLA 2015; scoring as in NAB v1.1's
`nab/sweeper.py` and `config/profiles.json`) labels anomalies as *windows* around each event.
Two scores are computed here, both from the moment a detector **could have fired**: a window of
the aggregator can only be judged once it closes, so an intent about the window
`[start, end)` is timestamped at `end` (plus the aggregator's lateness), never at `start`.

**Window counts** (`score_alerts`, what an on-call engineer experiences):

* an **alert** is the first detection of a run of consecutive flagged windows (one incident, one
  page), at the close of the run's first window;
* a **true positive** is a labelled window containing at least one alert; only its first alert
  counts, later alerts inside the same labelled window are ignored (neither true nor false),
  as NAB does;
* a **false positive** is an alert outside every labelled window;
* a **false negative** is a labelled window without an alert.

`precision = TP / (TP + FP)`, `recall = TP / windows`.

**NAB score** (`nab_score`), record by record as NAB defines it: every flagged window is a
detection on the first record of the series at or after its close. With `y` the relative
position of a record and the scaled sigmoid `A(y) = 2 / (1 + exp(5 y)) - 1` (`-1` for
`y >= 3`):

* a labelled window of `w` records ending at record `b` earns, for its earliest detection at
  record `i`, `A(-(b - i + 1) / w) / A(-1) * tp_weight` (`tp_weight` at the window's first record,
  close to 0 at its last: early detection pays), or `-fn_weight` without one;
* each detection outside every window costs `A((i - b) / (w - 1)) * fp_weight`, with `b` and `w`
  the end and length of the closest preceding window (a detection right after a window costs
  almost nothing, one far from it `fp_weight`), or `-fp_weight` before the first window;
* records of the probationary period (the first 15 % of the series, at most 750 records) are
  not scored;
* the normalised score is `100 (raw - null) / (perfect - null)`: `null` is the score of a
  detector that never fires (`-fn_weight` per window), `perfect` one detection at the start of
  every window (`tp_weight` per window). Scores of several series add up before normalising,
  as NAB scores a corpus.

The profiles are NAB's: `standard` (`A_FP = 0.11`), `reward_low_FP_rate` (`A_FP = 0.22`) and
`reward_low_FN_rate` (`A_FN = 2.0`).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import numpy as np
from attrs import define

from contractspec.core import ConfigurationError
from contractspec.evolution.aggregator import IntentAggregator
from contractspec.evolution.detector import DetectorConfig, Intent, IntentDetector, IntentKind
from contractspec.evolution.telemetry import TelemetryBatch

__all__ = [
    "NAB_PROFILES",
    "NabProfile",
    "NabScore",
    "WindowScore",
    "alerts_from_intents",
    "detection_times",
    "nab_score",
    "read_series",
    "replay_intents",
    "replay_series",
    "score_alerts",
    "windows_from_labels",
]


@define(frozen=True)
class WindowScore:
    """Window-based detection counts (see the module docstring for how they are counted).

    Attributes:
        true_positives: Labelled windows with an alert.
        false_positives: Alerts outside every labelled window.
        false_negatives: Labelled windows without an alert.
        alerts: Every alert considered.
        delays_minutes: Minutes from each detected window's start to its first alert.
    """

    true_positives: int
    false_positives: int
    false_negatives: int
    alerts: tuple[datetime, ...]
    delays_minutes: tuple[float, ...]

    @property
    def precision(self) -> float:
        """`TP / (TP + FP)` (1.0 without alerts)."""
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        """`TP / (TP + FN)` (1.0 without labelled windows)."""
        windows = self.true_positives + self.false_negatives
        return self.true_positives / windows if windows else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: WindowScore) -> WindowScore:
        return WindowScore(
            self.true_positives + other.true_positives,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
            self.alerts + other.alerts,
            self.delays_minutes + other.delays_minutes,
        )


def _flagged_spans(
    intents: Iterable[Intent], kinds: Iterable[IntentKind] | None, operation: str | None
) -> list[tuple[datetime, datetime]]:
    wanted = set(kinds) if kinds is not None else None
    return sorted(
        {
            (i.window_start, i.window_end)
            for i in intents
            if i.kind is not IntentKind.WORKFLOW_SEQUENCE
            and (wanted is None or i.kind in wanted)
            and (operation is None or i.operation == operation)
        }
    )


def detection_times(
    intents: Iterable[Intent],
    *,
    kinds: Iterable[IntentKind] | None = None,
    operation: str | None = None,
    lateness: timedelta = timedelta(0),
) -> list[datetime]:
    """When each flagged window could have been reported: its end plus the lateness.

    A window is judged when the aggregator closes it, `lateness_minutes` after its end; an
    intent about `[start, end)` therefore exists from `end + lateness` on (what `nab_score`
    scores).

    Args:
        intents: Window intents (sequence intents are ignored).
        kinds: Only these kinds (default: all window kinds).
        operation: Only this operation.
        lateness: The aggregator's `lateness_minutes` as a `timedelta`.

    Returns:
        Sorted, distinct detection times (one per flagged window).
    """
    return sorted({end + lateness for _start, end in _flagged_spans(intents, kinds, operation)})


def alerts_from_intents(
    intents: Iterable[Intent],
    *,
    kinds: Iterable[IntentKind] | None = None,
    operation: str | None = None,
    lateness: timedelta = timedelta(0),
) -> list[datetime]:
    """Alert times: the first detection of each run of consecutive flagged windows.

    The alert is timestamped when it could fire: at the end of the run's first window plus the
    aggregator's lateness, not at the window's start (that would credit the detector with data
    it had not seen).

    Args:
        intents: Window intents (sequence intents are ignored).
        kinds: Only these kinds (default: all window kinds).
        operation: Only this operation.
        lateness: The aggregator's `lateness_minutes` as a `timedelta`.

    Returns:
        Sorted alert times.
    """
    alerts: list[datetime] = []
    previous_end: datetime | None = None
    for start, end in _flagged_spans(intents, kinds, operation):
        if previous_end is None or start > previous_end:
            alerts.append(end + lateness)
        previous_end = end if previous_end is None else max(previous_end, end)
    return alerts


def score_alerts(
    alerts: Sequence[datetime], windows: Sequence[tuple[datetime, datetime]]
) -> WindowScore:
    """Score alerts against labelled windows (inclusive bounds), NAB-style.

    Raises:
        ConfigurationError: A window ends before it starts.
    """
    for start, end in windows:
        if end < start:
            raise ConfigurationError(f"labelled window {start} - {end} ends before it starts")
    ordered = sorted(alerts)
    tp = fp = 0
    delays: list[float] = []
    first_in: dict[int, datetime] = {}
    for alert in ordered:
        hit = next((k for k, (s, e) in enumerate(windows) if s <= alert <= e), None)
        if hit is None:
            fp += 1
        elif hit not in first_in:
            first_in[hit] = alert
    for k, alert in first_in.items():
        tp += 1
        delays.append((alert - windows[k][0]).total_seconds() / 60.0)
    return WindowScore(tp, fp, len(windows) - tp, tuple(ordered), tuple(delays))


@define(frozen=True)
class NabProfile:
    """A NAB application profile: the weights of true positives, false positives and misses.

    Attributes:
        name: NAB's name of the profile.
        tp_weight: `A_TP`, what a detection at the very start of a window earns.
        fp_weight: `A_FP`, what a detection far from every window costs.
        fn_weight: `A_FN`, what a missed window costs.
    """

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


#: NAB's three profiles (`config/profiles.json` of NAB v1.1): standard, reward low false
#: positive rate, reward low false negative rate.
NAB_PROFILES: Final = (
    NabProfile("standard", 1.0, 0.11, 1.0),
    NabProfile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    NabProfile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)


@define(frozen=True)
class NabScore:
    """A NAB score of one series (or, added up, of several) under one profile.

    Attributes:
        profile: The profile the weights come from.
        raw: The detector's raw score (sum of the window and false-positive terms).
        null: The raw score of a detector that never fires (`-fn_weight` per window).
        perfect: The raw score of one detection at the start of every window.
        true_positives: Scored windows with a detection.
        false_negatives: Scored windows without one.
        false_positives: Detections outside every window (after the probationary period).
    """

    profile: NabProfile
    raw: float
    null: float
    perfect: float
    true_positives: int
    false_negatives: int
    false_positives: int

    @property
    def normalized(self) -> float:
        """`100 (raw - null) / (perfect - null)`: 100 is perfect, 0 never firing (NaN without
        scored windows); NAB's reported figure."""
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span else math.nan

    def __add__(self, other: NabScore) -> NabScore:
        if other.profile != self.profile:
            raise ConfigurationError(
                f"cannot add NAB scores of profiles {self.profile.name!r} and "
                f"{other.profile.name!r}"
            )
        return NabScore(
            self.profile,
            self.raw + other.raw,
            self.null + other.null,
            self.perfect + other.perfect,
            self.true_positives + other.true_positives,
            self.false_negatives + other.false_negatives,
            self.false_positives + other.false_positives,
        )


def _scaled_sigmoid(position: float) -> float:
    """NAB's `A(y) = 2 / (1 + exp(5 y)) - 1`, and `-1` from `y = 3` on."""
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def _epoch_seconds(times: Sequence[datetime] | Sequence[float] | np.ndarray) -> np.ndarray:
    if isinstance(times, np.ndarray):
        return times.astype(np.float64)
    out: list[float] = []
    for t in times:
        if isinstance(t, datetime):
            if t.tzinfo is None:
                raise ConfigurationError(f"datetimes must be timezone-aware (UTC), got naive {t!r}")
            out.append(t.timestamp())
        else:
            out.append(float(t))
    return np.asarray(out, dtype=np.float64)


def nab_score(
    detections: Sequence[datetime],
    timestamps: Sequence[datetime] | Sequence[float] | np.ndarray,
    windows: Sequence[tuple[datetime, datetime]],
    profile: NabProfile = NAB_PROFILES[0],
    *,
    probationary_percent: float = 0.15,
) -> NabScore:
    """Score detections on one series with NAB's scaled-sigmoid scoring (module docstring).

    Args:
        detections: When the detector fired (`detection_times(intents)`); each lands on the
            first record at or after it (one after the last record is not scored: the series
            ended before it fired).
        timestamps: The series' record times, ascending: UTC datetimes or epoch seconds.
        windows: Labelled windows `(start, end)`, inclusive, in order and not overlapping.
        profile: One of `NAB_PROFILES` (or your own weights).
        probationary_percent: Leading fraction of the records that is not scored (at most
            `probationary_percent * 5000` records), as NAB.

    Returns:
        The raw score with its null and perfect references; `.normalized` is NAB's figure.

    Raises:
        ConfigurationError: No records, records out of order, windows out of order, overlapping
            or ending before they start, or a naive datetime.
    """
    ts = _epoch_seconds(timestamps)
    n = int(ts.size)
    if n == 0 or np.any(np.diff(ts) < 0):
        raise ConfigurationError("timestamps must be a non-empty, ascending series of records")
    spans: list[tuple[int, int]] = []
    previous_end = -math.inf
    for start, end in windows:
        a_s, b_s = _epoch_seconds([start, end]).tolist()
        if b_s < a_s or a_s <= previous_end:
            raise ConfigurationError(
                f"labelled window {start} - {end} ends before it starts, overlaps or is out of "
                "order"
            )
        previous_end = b_s
        a = int(np.searchsorted(ts, a_s, side="left"))
        b = int(np.searchsorted(ts, b_s, side="right")) - 1
        if b >= a:
            spans.append((a, b))
    probation = min(math.floor(probationary_percent * n), probationary_percent * 5000)
    at = np.searchsorted(ts, _epoch_seconds(list(detections)), side="left")
    flagged = sorted({int(i) for i in at.tolist() if probation <= i < n})
    max_tp = _scaled_sigmoid(-1.0)
    raw = 0.0
    scored = tp = fp = 0
    k = 0  # the first window not entirely before the current record
    for a, b in spans:
        if b < probation:
            continue  # inside the probationary period: not scored
        scored += 1
        width = b - a + 1
        hits = [i for i in flagged if a <= i <= b]
        if hits:
            tp += 1
            raw += _scaled_sigmoid(-(b - hits[0] + 1) / width) * profile.tp_weight / max_tp
        else:
            raw -= profile.fn_weight
    for i in flagged:
        while k < len(spans) and spans[k][1] < i:
            k += 1
        if k < len(spans) and spans[k][0] <= i:
            continue  # inside a window: counted above
        if k == 0:
            position = 3.0  # before the first window: a full false positive
        else:
            a, b = spans[k - 1]
            position = (i - b) / (b - a) if b > a else 3.0
        raw += _scaled_sigmoid(position) * profile.fp_weight
        fp += 1
    return NabScore(
        profile,
        raw,
        -profile.fn_weight * scored,
        profile.tp_weight * scored,
        tp,
        scored - tp,
        fp,
    )


def replay_intents(
    batch: TelemetryBatch,
    configs: Sequence[DetectorConfig],
    *,
    window_minutes: int,
) -> list[list[Intent]]:
    """Replay a batch through one aggregator and judge its windows with several detectors.

    The aggregator closes every window holding a sample once (lateness 0), up to the end of the
    window of the last sample and no further: the end of a recording is not a throughput drop.
    Each configuration's `IntentDetector` then judges the same windows in order, as it would
    have live. SLO burn rates read the aggregator's live per-minute counters and are not
    replayed.

    Args:
        batch: The samples (`replay_series(...)`).
        configs: Detector configurations to compare.
        window_minutes: The aggregator's window length.

    Returns:
        The intents of each configuration, in the order of `configs`.

    Raises:
        ConfigurationError: A configuration detects `IntentKind.SLO_BURN`.
    """
    for config in configs:
        if IntentKind.SLO_BURN in config.kinds:
            raise ConfigurationError(
                "replay_intents does not replay SLO burn rates (they read live per-minute "
                "counters): leave IntentKind.SLO_BURN out of DetectorConfig.kinds"
            )
    aggregator = IntentAggregator(window_minutes=window_minutes, lateness_minutes=0)
    aggregator.ingest(batch)
    if len(batch):
        last_minute = math.floor(float(batch.timestamp_s.max()) / 60.0)
        end_minute = last_minute - last_minute % window_minutes + window_minutes
        aggregator.advance(datetime.fromtimestamp(end_minute * 60.0, UTC))
    closed = aggregator.pop_closed()
    out: list[list[Intent]] = []
    for config in configs:
        detector = IntentDetector(config)
        intents: list[Intent] = []
        for stats in closed:
            intents.extend(detector.evaluate_window(aggregator, stats))
        out.append(intents)
    return out


def read_series(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NAB-style CSV (`timestamp,value`, timestamps `YYYY-MM-DD HH:MM:SS` in UTC).

    The Numenta Anomaly Benchmark's series are such files:
    <https://github.com/numenta/NAB/tree/master/data>.

    Args:
        path: The CSV file.

    Returns:
        `(epoch_seconds, values)` as `float64` arrays.

    Raises:
        ConfigurationError: No file at `path` (the message names the absolute path tried and
            where to download the NAB series), or the file does not have `timestamp` and `value`
            columns.
    """
    times: list[float] = []
    values: list[float] = []
    try:
        handle = open(path, newline="")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"read_series: no file at path={os.path.abspath(path)!r}. Pass the path of a CSV "
            "with timestamp,value columns; the NAB series (MIT) are at "
            "https://github.com/numenta/NAB/tree/master/data (e.g. "
            "data/realKnownCause/ec2_request_latency_system_failure.csv), and ContractSpec's own "
            "tests read them from ../shared/data/nab/ beside the repository"
        ) from exc
    with handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"timestamp", "value"} <= set(reader.fieldnames):
            raise ConfigurationError(f"{os.fspath(path)}: expected columns timestamp,value")
        for row in reader:
            when = datetime.fromisoformat(row["timestamp"]).replace(tzinfo=UTC)
            times.append(when.timestamp())
            values.append(float(row["value"]))
    return np.asarray(times), np.asarray(values)


def replay_series(
    timestamps_s: np.ndarray,
    values: np.ndarray,
    *,
    as_: Literal["latency", "count"],
    operation: str,
    interval_s: float | None = None,
    samples_per_point: int = 20,
    count_duration_ms: float = 10.0,
) -> TelemetryBatch:
    """Turn a metric series into telemetry samples.

    * `latency`: each point becomes `samples_per_point` successful calls lasting `value` ms,
      spread evenly over the point's interval;
    * `count`: each point becomes `round(value)` successful calls (of `count_duration_ms`),
      spread evenly over the interval, so calls per window follow the series.

    Args:
        timestamps_s: Epoch seconds of the points (ascending).
        values: The series values (non-negative).
        as_: How to read the values.
        operation: Operation name of the samples.
        interval_s: Spacing of the points (default: the median spacing).
        samples_per_point: Calls per point for `latency`.
        count_duration_ms: Duration of every call for `count`.

    Returns:
        A `TelemetryBatch` ordered by time.

    Raises:
        ConfigurationError: Mismatched lengths, negative values or an unknown `as_`.
    """
    ts = np.asarray(timestamps_s, dtype=np.float64)
    vs = np.asarray(values, dtype=np.float64)
    if ts.shape != vs.shape or ts.ndim != 1 or ts.size < 2:
        raise ConfigurationError(
            "timestamps_s and values must be 1-D arrays of the same length >= 2"
        )
    if np.any(vs < 0) or not np.all(np.isfinite(vs)):
        raise ConfigurationError("values must be finite and non-negative")
    step = float(interval_s) if interval_s is not None else float(np.median(np.diff(ts)))
    if as_ == "latency":
        reps = np.full(ts.size, samples_per_point, dtype=np.int64)
        durations = np.repeat(vs, reps)
    elif as_ == "count":
        reps = np.rint(vs).astype(np.int64)
        durations = np.full(int(reps.sum()), count_duration_ms)
    else:
        raise ConfigurationError(f"as_ must be 'latency' or 'count', got {as_!r}")
    starts = np.repeat(ts, reps)
    # position of each sample inside its point: (j + 0.5) / reps of the interval
    offsets = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
    frac = (offsets + 0.5) / np.repeat(np.maximum(reps, 1), reps)
    n = int(reps.sum())
    return TelemetryBatch.from_arrays(
        timestamp_s=starts + frac * step,
        duration_ms=durations,
        success=np.ones(n, dtype=np.bool_),
        operation=np.zeros(n, dtype=np.int64),
        operations=[operation],
    )


def windows_from_labels(labels: Sequence[Sequence[str]]) -> list[tuple[datetime, datetime]]:
    """NAB label windows (`[["2014-03-14 03:31:00.000000", "..."], ...]`) as UTC datetimes."""
    return [
        (
            datetime.fromisoformat(a).replace(tzinfo=UTC),
            datetime.fromisoformat(b).replace(tzinfo=UTC),
        )
        for a, b in labels
    ]
