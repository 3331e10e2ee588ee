"""Evaluate detection on labelled series: replay them as telemetry and score NAB-style.

The Numenta Anomaly Benchmark (Lavin and Ahmad, "Evaluating Real-time Anomaly Detection
Algorithms - the Numenta Anomaly Benchmark", IEEE ICMLA 2015) labels anomalies as *windows*
around each event and credits a detector once per window. `score_alerts` counts the same way:

* an **alert** is the start of a run of consecutive flagged windows (one incident, one page);
* a **true positive** is a labelled window containing at least one alert; only its first alert
  counts, later alerts inside the same labelled window are ignored (neither true nor false),
  as NAB does;
* a **false positive** is an alert outside every labelled window;
* a **false negative** is a labelled window without an alert.

`precision = TP / (TP + FP)`, `recall = TP / windows`. NAB's sigmoid-weighted score is not
reproduced: the counts above are what an on-call engineer experiences.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from attrs import define

from contractspec.core import ConfigurationError
from contractspec.evolution.detector import Intent, IntentKind
from contractspec.evolution.telemetry import TelemetryBatch

__all__ = [
    "WindowScore",
    "alerts_from_intents",
    "read_series",
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


def alerts_from_intents(
    intents: Iterable[Intent],
    *,
    kinds: Iterable[IntentKind] | None = None,
    operation: str | None = None,
) -> list[datetime]:
    """Alert times: the start of each run of consecutive flagged windows.

    Args:
        intents: Window intents (sequence intents are ignored).
        kinds: Only these kinds (default: all window kinds).
        operation: Only this operation.

    Returns:
        Sorted alert times (window starts).
    """
    wanted = set(kinds) if kinds is not None else None
    spans = sorted(
        {
            (i.window_start, i.window_end)
            for i in intents
            if i.kind is not IntentKind.WORKFLOW_SEQUENCE
            and (wanted is None or i.kind in wanted)
            and (operation is None or i.operation == operation)
        }
    )
    alerts: list[datetime] = []
    previous_end: datetime | None = None
    for start, end in spans:
        if previous_end is None or start > previous_end:
            alerts.append(start)
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


def read_series(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a NAB-style CSV (`timestamp,value`, timestamps `YYYY-MM-DD HH:MM:SS` in UTC).

    Returns:
        `(epoch_seconds, values)` as `float64` arrays.

    Raises:
        ConfigurationError: The file does not have `timestamp` and `value` columns.
    """
    times: list[float] = []
    values: list[float] = []
    with open(path, newline="") as handle:
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
