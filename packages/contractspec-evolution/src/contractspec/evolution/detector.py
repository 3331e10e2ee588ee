"""`IntentDetector`: what matters in the windows the aggregator closed, with standard methods.

Each closed window of a series (operation and tenant, or all tenants) is compared with that
series' previous windows, never with itself:

* **Robust z-score on the MAD** (Iglewicz and Hoaglin, "How to Detect and Handle Outliers", 1993):
  `z = 0.6745 (x - median) / MAD`, flagged when `|z| > 3.5`. When the MAD is 0 (more than half
  the history identical, e.g. an error rate that is usually 0) the mean absolute deviation is used
  instead (`z = (x - median) / (1.253314 MeanAD)`), and when that is 0 too, any change is an
  infinite z and only the volume and effect-size guards decide.
* **EWMA baseline** (Roberts 1959; NIST/SEMATECH e-Handbook 6.3.2.4): exponentially weighted mean
  and variance (West 1979 incremental form) per series and metric, compared first and **updated
  after** the comparison, so a window never judges itself.
* **SLO burn rate** (Google, The Site Reliability Workbook, chapter 5, "Alerting on SLOs"): the
  error rate divided by the error budget `1 - objective`, over a long and a short window that must
  both exceed the factor: 14.4x over 1 h and 5 min (2 % of a 30-day budget in an hour, page) and
  6x over 6 h and 30 min (5 % in six hours, ticket) by default.
* **Sequential workflows**: consecutive operation pairs and triples in the aggregator's trace
  buffer, counted once per trace (support) with association-rule confidence
  `support(A->B) / support(A->any)`; a sequence needs `min_support` traces, a `min_support_fraction`
  of all traces and `min_confidence`, so a sequence seen once is never a pattern.

Guards: a window needs `min_calls` calls (latency: successful calls) and `min_history` earlier
windows; an error spike needs `min_errors` errors; a change smaller than `min_relative_change`
(20 % by default) of the baseline, or a p95 increase under `min_latency_change_ms` (1 ms), is not
flagged however unusual it is. Latency is compared on
`log(p95)` (latency is multiplicative), errors on the error rate, throughput on calls per window.

Every `Intent` carries the methods that fired, their statistics (the evidence) and a confidence in
[0, 1]: each method contributes `|z| / (|z| + threshold)` (0.5 at the threshold, tending to 1),
methods combine as `1 - prod(1 - s_i)`, and the result is weighted by the volume `n / (n +
min_calls)`. It is a ranking score, not a probability.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final

import numpy as np
from attrs import define, field

from contractspec.core import (
    Clock,
    ConfigurationError,
    IdGenerator,
    SystemClock,
    UuidGenerator,
)
from contractspec.evolution.aggregator import ALL_TENANTS, IntentAggregator, WindowStats

__all__ = [
    "BurnRateRule",
    "DetectorConfig",
    "Ewma",
    "Intent",
    "IntentDetector",
    "IntentKind",
    "IntentSeverity",
    "RobustZ",
    "robust_z",
]

#: Iglewicz-Hoaglin constant: 0.6745 = Phi^-1(0.75), so MAD / 0.6745 estimates sigma.
_MAD_K: Final = 0.6745
#: MeanAD fallback constant: sqrt(pi / 2), so 1.253314 MeanAD estimates sigma.
_MEANAD_K: Final = 1.253314


class IntentKind(enum.StrEnum):
    """What was detected."""

    ERROR_SPIKE = "error_spike"
    LATENCY_REGRESSION = "latency_regression"
    THROUGHPUT_DROP = "throughput_drop"
    THROUGHPUT_SPIKE = "throughput_spike"
    SLO_BURN = "slo_burn"
    WORKFLOW_SEQUENCE = "workflow_sequence"


class IntentSeverity(enum.StrEnum):
    """How urgent: `critical` pages, `warning` opens a ticket, `info` is for review."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@define(frozen=True)
class Intent:
    """One detected signal, with the evidence that produced it.

    Attributes:
        id: Unique id.
        kind: What was detected.
        operation: Operation name (the first operation of a workflow sequence).
        org_id: Tenant, `None`, or `ALL_TENANTS` (`"*"`) for the roll-up.
        window_start, window_end: The window judged (for sequences: the trace buffer's span).
        detected_at: When the detector produced it.
        confidence: Ranking score in [0, 1] (see the module docstring).
        severity: `info`, `warning` or `critical`.
        summary: One sentence for humans.
        evidence: Methods that fired and their statistics (observed value, baseline, z, threshold,
            volume, ...), JSON-compatible.
        sequence: The operations of a workflow sequence, else empty.
    """

    id: str
    kind: IntentKind
    operation: str
    org_id: str | None
    window_start: datetime
    window_end: datetime
    detected_at: datetime
    confidence: float
    severity: IntentSeverity
    summary: str
    evidence: Mapping[str, Any] = field(factory=dict)
    sequence: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Deduplication key: kind, operation, tenant and sequence."""
        tail = ">".join(self.sequence)
        return f"{self.kind.value}:{self.operation}:{self.org_id}:{tail}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the `intent.detected` event payload and the stored snapshot)."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "operation": self.operation,
            "org_id": self.org_id,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
            "detected_at": self.detected_at.isoformat(),
            "confidence": self.confidence,
            "severity": self.severity.value,
            "summary": self.summary,
            "evidence": _jsonable(dict(self.evidence)),
            "sequence": list(self.sequence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Intent:
        """Rebuild from `to_dict()` output."""
        return cls(
            id=data["id"],
            kind=IntentKind(data["kind"]),
            operation=data["operation"],
            org_id=data.get("org_id"),
            window_start=datetime.fromisoformat(data["window_start"]),
            window_end=datetime.fromisoformat(data["window_end"]),
            detected_at=datetime.fromisoformat(data["detected_at"]),
            confidence=float(data["confidence"]),
            severity=IntentSeverity(data["severity"]),
            summary=data.get("summary", ""),
            evidence=dict(data.get("evidence") or {}),
            sequence=tuple(data.get("sequence") or ()),
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return round(value, 6)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@define(frozen=True)
class RobustZ:
    """A robust z-score and its ingredients.

    Attributes:
        z: The score (`inf`/`-inf` when the history has no spread and the value differs).
        median: Median of the history.
        spread: The MAD, or the MeanAD when the MAD is 0, or 0.
        method: `mad`, `meanad` or `constant`.
        n: History length.
    """

    z: float
    median: float
    spread: float
    method: str
    n: int


def robust_z(history: Sequence[float] | np.ndarray, value: float) -> RobustZ:
    """Modified z-score of `value` against `history` (Iglewicz and Hoaglin, 1993).

    `z = 0.6745 (value - median) / MAD`; with a zero MAD, `z = (value - median) / (1.253314
    MeanAD)`; with no spread at all, `0` for the median itself and `+-inf` otherwise.

    Raises:
        ConfigurationError: Empty history.
    """
    h = np.asarray(history, dtype=np.float64)
    if h.size == 0:
        raise ConfigurationError("robust_z needs a non-empty history")
    med = float(np.median(h))
    dev = np.abs(h - med)
    mad = float(np.median(dev))
    diff = value - med
    if mad > 0:
        return RobustZ(_MAD_K * diff / mad, med, mad, "mad", int(h.size))
    mean_ad = float(np.mean(dev))
    if mean_ad > 0:
        return RobustZ(diff / (_MEANAD_K * mean_ad), med, mean_ad, "meanad", int(h.size))
    z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return RobustZ(z, med, 0.0, "constant", int(h.size))


@define
class Ewma:
    """Exponentially weighted mean and variance (West 1979 incremental form).

    Call `score(x)` to compare, then `update(x)`: the baseline never includes the value it judges.

    Attributes:
        alpha: Weight of the newest value (0 < alpha <= 1).
        mean, var: Current estimates (`None` before the first update).
        n: Values seen.
    """

    alpha: float = 0.2
    mean: float | None = None
    var: float = 0.0
    n: int = 0

    def score(self, x: float) -> float:
        """`(x - mean) / sqrt(var)`; `0` without history, `+-inf` with zero variance and a change."""
        if self.mean is None:
            return 0.0
        diff = x - self.mean
        if self.var > 0:
            return diff / math.sqrt(self.var)
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)

    def update(self, x: float) -> None:
        """Fold `x` into the baseline."""
        self.n += 1
        if self.mean is None:
            self.mean = x
            return
        diff = x - self.mean
        incr = self.alpha * diff
        self.mean += incr
        self.var = (1.0 - self.alpha) * (self.var + diff * incr)


@define(frozen=True)
class BurnRateRule:
    """One multiwindow burn-rate alert: both windows must burn faster than `factor`.

    Attributes:
        long_minutes, short_minutes: The two windows.
        factor: Burn-rate threshold (14.4 = 2 % of a 30-day budget per hour).
        severity: Severity of the alert.
    """

    long_minutes: int
    short_minutes: int
    factor: float
    severity: IntentSeverity = IntentSeverity.CRITICAL


def _default_burn_rules() -> tuple[BurnRateRule, ...]:
    return (
        BurnRateRule(60, 5, 14.4, IntentSeverity.CRITICAL),
        BurnRateRule(360, 30, 6.0, IntentSeverity.WARNING),
    )


def _positive(name: str, value: float, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
        and (not integer or float(value).is_integer())
    )
    if not ok:
        kind = "integer" if integer else "number"
        raise ConfigurationError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}"
        )


@define(frozen=True)
class DetectorConfig:
    """Thresholds and guards of the detector (defaults follow the cited sources).

    Attributes:
        z_threshold: Robust z-score threshold (3.5, Iglewicz and Hoaglin).
        ewma_alpha: EWMA weight of the newest window.
        ewma_threshold: EWMA z threshold (3.0, a 3-sigma control limit).
        ewma_alone: Whether the EWMA may flag a window on its own; by default it corroborates
            the robust z-score (raising the confidence) but does not flag alone.
        cooldown_windows: After an intent, the same kind on the same series is not reported again
            for this many windows (alert de-duplication, like Alertmanager's repeat interval);
            every window still updates the baselines.
        min_history: Earlier windows a series needs before it is judged.
        history_windows: At most this many earlier windows form the baseline.
        min_calls: Calls (successful calls, for latency) a window needs to be judged.
        min_errors: Errors an error spike needs.
        min_relative_change: Smallest change relative to the baseline that is flagged (0.2 = 20 %).
        min_latency_change_ms: Smallest absolute p95 increase flagged as a latency regression
            (sub-millisecond jitter of very fast operations is not a regression).
        slo_objective: Availability objective for burn rates (0.999 = 99.9 %).
        burn_rules: Multiwindow burn-rate rules.
        min_support: Traces a workflow sequence must appear in.
        min_support_fraction: Fraction of buffered traces it must appear in.
        min_confidence: Association-rule confidence it needs.
        sequence_lengths: Lengths of sequences mined (pairs and triples).
        per_tenant: Also judge each tenant's series (not only the all-tenant roll-up).
        kinds: Which kinds to detect.

    Raises:
        ConfigurationError: A threshold is not a positive number (the message names it).
    """

    z_threshold: float = 3.5
    ewma_alpha: float = 0.2
    ewma_threshold: float = 3.0
    min_history: int = 8
    history_windows: int = 96
    min_calls: int = 30
    min_errors: int = 5
    min_relative_change: float = 0.2
    min_latency_change_ms: float = 1.0
    slo_objective: float = 0.999
    burn_rules: tuple[BurnRateRule, ...] = field(factory=_default_burn_rules)
    min_support: int = 5
    min_support_fraction: float = 0.01
    min_confidence: float = 0.6
    sequence_lengths: tuple[int, ...] = (2, 3)
    per_tenant: bool = True
    kinds: frozenset[IntentKind] = frozenset(IntentKind)
    cooldown_windows: int = 4
    ewma_alone: bool = False

    def __attrs_post_init__(self) -> None:
        for name in ("z_threshold", "ewma_threshold", "min_relative_change"):
            _positive(name, getattr(self, name))
        _positive("min_latency_change_ms", self.min_latency_change_ms, allow_zero=True)
        for name in ("min_history", "history_windows", "min_calls", "min_errors", "min_support"):
            _positive(name, getattr(self, name), integer=True)
        _positive("cooldown_windows", self.cooldown_windows, integer=True, allow_zero=True)
        if not 0 < self.ewma_alpha <= 1:
            raise ConfigurationError(f"ewma_alpha must be in (0, 1], got {self.ewma_alpha!r}")
        if not 0 < self.slo_objective < 1:
            raise ConfigurationError(
                f"slo_objective must be a fraction in (0, 1) such as 0.999, got {self.slo_objective!r}"
            )
        for name in ("min_support_fraction", "min_confidence"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigurationError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if not self.sequence_lengths or any(n < 2 for n in self.sequence_lengths):
            raise ConfigurationError(
                f"sequence_lengths must list lengths >= 2, got {self.sequence_lengths!r}"
            )
        for rule in self.burn_rules:
            if rule.short_minutes >= rule.long_minutes or rule.factor <= 0:
                raise ConfigurationError(
                    f"burn rule {rule!r}: short_minutes must be below long_minutes and factor > 0"
                )


def _strength(z: float, threshold: float) -> float:
    a = abs(z)
    return 1.0 if math.isinf(a) else a / (a + threshold)


class IntentDetector:
    """Turns closed windows (and the trace buffer) into `Intent`s.

    Args:
        config: Thresholds and guards (`DetectorConfig()` by default).
        clock: Source of `detected_at`.
        ids: Source of intent ids.

    Example:
        ```python
        detector = IntentDetector()
        intents = detector.evaluate(aggregator)   # consumes aggregator.pop_closed()
        ```
    """

    def __init__(
        self,
        config: DetectorConfig | None = None,
        *,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        self.config = config or DetectorConfig()
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self._ewma: dict[tuple[str, str | None, str], Ewma] = {}
        self._reported_sequences: set[tuple[str, ...]] = set()
        self._last_alert: dict[str, datetime] = {}
        self._history: dict[tuple[str, str | None], deque[WindowStats]] = {}

    # -- entry points ---------------------------------------------------------------------------

    def evaluate(self, aggregator: IntentAggregator) -> list[Intent]:
        """Judge every window the aggregator closed since the last call, then the trace buffer.

        Returns:
            Intents ordered by window, operation and tenant (sequences last).
        """
        out: list[Intent] = []
        for stats in aggregator.pop_closed():
            out.extend(self.evaluate_window(aggregator, stats))
        if IntentKind.WORKFLOW_SEQUENCE in self.config.kinds:
            out.extend(self.evaluate_sequences(aggregator.sequences(), aggregator.watermark))
        return out

    def evaluate_window(self, aggregator: IntentAggregator, stats: WindowStats) -> list[Intent]:
        """Judge one closed window against the earlier windows of its series.

        The detector keeps its own baseline of the last `history_windows` windows it judged per
        series, so windows must be judged in order (a window starting before the last judged
        window's end is skipped). Burn rates read the aggregator's per-minute counters, which are
        kept for `counter_minutes`: judge windows at least that often.
        """
        cfg = self.config
        if stats.org_id != ALL_TENANTS and not cfg.per_tenant:
            return []
        series = (stats.operation, stats.org_id)
        earlier = self._history.get(series)
        if earlier is None:
            earlier = self._history[series] = deque(maxlen=cfg.history_windows)
        if earlier and stats.start < earlier[-1].end:
            return []  # already judged (or out of order)
        out = self._judge_window(aggregator, stats, list(earlier))
        earlier.append(stats)
        kept = []
        for intent in out:
            last = self._last_alert.get(intent.key)
            quiet = last is not None and stats.start < last + cfg.cooldown_windows * (
                stats.end - stats.start
            )
            if not quiet:
                self._last_alert[intent.key] = stats.start
                kept.append(intent)
        return kept

    def _judge_window(
        self, aggregator: IntentAggregator, stats: WindowStats, earlier: list[WindowStats]
    ) -> list[Intent]:
        cfg = self.config
        out: list[Intent] = []
        kinds = cfg.kinds
        if IntentKind.LATENCY_REGRESSION in kinds:
            out.extend(self._latency(stats, earlier))
        if IntentKind.ERROR_SPIKE in kinds:
            out.extend(self._errors(stats, earlier))
        if kinds & {IntentKind.THROUGHPUT_DROP, IntentKind.THROUGHPUT_SPIKE}:
            out.extend(self._throughput(stats, earlier))
        if IntentKind.SLO_BURN in kinds and stats.org_id == ALL_TENANTS:
            out.extend(self._burn(aggregator, stats))
        return out

    # -- window methods ---------------------------------------------------------------------------

    def _ewma_for(self, stats: WindowStats, metric: str) -> Ewma:
        key = (stats.operation, stats.org_id, metric)
        ewma = self._ewma.get(key)
        if ewma is None:
            ewma = self._ewma[key] = Ewma(self.config.ewma_alpha)
        return ewma

    def _judge(
        self,
        stats: WindowStats,
        metric: str,
        value: float,
        history: list[float],
        *,
        direction: int,
        volume: int,
        effect: float,
    ) -> tuple[list[str], dict[str, Any], float]:
        """Compare with robust z and EWMA (then update the EWMA). Returns fired methods."""
        cfg = self.config
        ewma = self._ewma_for(stats, metric)
        ewma_ready = ewma.n >= cfg.min_history
        ez = ewma.score(value)
        ewma_mean = ewma.mean
        ewma.update(value)  # after the comparison
        if len(history) < cfg.min_history:
            return [], {}, 0.0
        rz = robust_z(history, value)
        fired: list[str] = []
        strengths: list[float] = []
        evidence: dict[str, Any] = {
            "metric": metric,
            "observed": value,
            "baseline_median": rz.median,
            "robust_z": rz.z,
            "spread": rz.spread,
            "spread_method": rz.method,
            "z_threshold": cfg.z_threshold,
            "history_windows": rz.n,
            "volume": volume,
            "relative_change": effect,
            "min_relative_change": cfg.min_relative_change,
        }
        big_enough = effect >= cfg.min_relative_change
        if big_enough and rz.z * direction > cfg.z_threshold:
            fired.append("robust_z_mad")
            strengths.append(_strength(rz.z, cfg.z_threshold))
        if ewma_ready and ewma_mean is not None:
            evidence.update(ewma_mean=ewma_mean, ewma_z=ez, ewma_threshold=cfg.ewma_threshold)
            if big_enough and ez * direction > cfg.ewma_threshold and (fired or cfg.ewma_alone):
                fired.append("ewma")
                strengths.append(_strength(ez, cfg.ewma_threshold))
        if not fired:
            return [], evidence, 0.0
        combined = 1.0 - math.prod(1.0 - s for s in strengths)
        confidence = combined * volume / (volume + cfg.min_calls)
        evidence["methods"] = fired
        return fired, evidence, round(confidence, 4)

    def _intent(
        self,
        kind: IntentKind,
        stats: WindowStats,
        confidence: float,
        severity: IntentSeverity,
        summary: str,
        evidence: dict[str, Any],
    ) -> Intent:
        return Intent(
            id=self.ids.new_id(),
            kind=kind,
            operation=stats.operation,
            org_id=stats.org_id,
            window_start=stats.start,
            window_end=stats.end,
            detected_at=self.clock.now(),
            confidence=confidence,
            severity=severity,
            summary=summary,
            evidence=evidence,
        )

    def _latency(self, stats: WindowStats, earlier: list[WindowStats]) -> list[Intent]:
        cfg = self.config
        ok_calls = stats.calls - stats.errors
        if ok_calls < cfg.min_calls or not math.isfinite(stats.p95_ms) or stats.p95_ms <= 0:
            return []
        hist = [
            math.log(h.p95_ms)
            for h in earlier
            if h.calls - h.errors >= cfg.min_calls and math.isfinite(h.p95_ms) and h.p95_ms > 0
        ]
        value = math.log(stats.p95_ms)
        baseline = math.exp(float(np.median(hist))) if hist else stats.p95_ms
        effect = stats.p95_ms / baseline - 1.0
        absolute = stats.p95_ms - baseline
        guarded = effect if absolute >= cfg.min_latency_change_ms else 0.0
        fired, evidence, confidence = self._judge(
            stats, "log_p95_ms", value, hist, direction=1, volume=ok_calls, effect=guarded
        )
        if not fired:
            return []
        evidence.update(p95_ms=stats.p95_ms, baseline_p95_ms=baseline, p50_ms=stats.p50_ms,
                        p99_ms=stats.p99_ms, relative_change=effect,
                        absolute_change_ms=absolute)  # fmt: skip
        severity = IntentSeverity.CRITICAL if effect >= 1.0 else IntentSeverity.WARNING
        return [
            self._intent(
                IntentKind.LATENCY_REGRESSION, stats, confidence, severity,
                f"{stats.operation} p95 latency {stats.p95_ms:.1f} ms vs baseline "
                f"{baseline:.1f} ms (+{effect:.0%})",
                evidence,
            )
        ]  # fmt: skip

    def _errors(self, stats: WindowStats, earlier: list[WindowStats]) -> list[Intent]:
        cfg = self.config
        if stats.calls < cfg.min_calls or stats.errors < cfg.min_errors:
            self._ewma_for(stats, "error_rate").update(stats.error_rate)
            return []
        hist = [h.error_rate for h in earlier if h.calls >= cfg.min_calls]
        baseline = float(np.median(hist)) if hist else 0.0
        # effect: relative increase; from a zero baseline any guarded increase counts
        effect = math.inf if baseline == 0 else stats.error_rate / baseline - 1.0
        fired, evidence, confidence = self._judge(
            stats, "error_rate", stats.error_rate, hist, direction=1, volume=stats.calls,
            effect=effect,
        )  # fmt: skip
        if not fired:
            return []
        evidence.update(errors=stats.errors, calls=stats.calls,
                        top_error_codes=dict(list(stats.error_codes.items())[:5]))  # fmt: skip
        severity = IntentSeverity.CRITICAL if stats.error_rate >= 0.05 else IntentSeverity.WARNING
        return [
            self._intent(
                IntentKind.ERROR_SPIKE, stats, confidence, severity,
                f"{stats.operation} error rate {stats.error_rate:.2%} vs baseline {baseline:.2%}",
                evidence,
            )
        ]  # fmt: skip

    def _throughput(self, stats: WindowStats, earlier: list[WindowStats]) -> list[Intent]:
        cfg = self.config
        hist = [float(h.calls) for h in earlier]
        value = float(stats.calls)
        baseline = float(np.median(hist)) if hist else value
        if baseline < cfg.min_calls and value < cfg.min_calls:
            self._ewma_for(stats, "calls").update(value)
            return []
        change = value / baseline - 1.0 if baseline > 0 else math.inf
        direction = -1 if change < 0 else 1
        kind = IntentKind.THROUGHPUT_DROP if direction < 0 else IntentKind.THROUGHPUT_SPIKE
        fired, evidence, confidence = self._judge(
            stats, "calls", value, hist, direction=direction,
            volume=int(max(baseline, value)), effect=abs(change),
        )  # fmt: skip
        if not fired or kind not in cfg.kinds:
            return []
        evidence.update(calls=stats.calls, baseline_calls=baseline)
        severity = IntentSeverity.CRITICAL if abs(change) >= 0.5 else IntentSeverity.WARNING
        word = "dropped" if direction < 0 else "rose"
        return [
            self._intent(
                kind, stats, confidence, severity,
                f"{stats.operation} calls {word} to {stats.calls} per window vs baseline "
                f"{baseline:.0f} ({change:+.0%})",
                evidence,
            )
        ]  # fmt: skip

    def _burn(self, aggregator: IntentAggregator, stats: WindowStats) -> list[Intent]:
        cfg = self.config
        counts = aggregator.minute_counts(stats.operation, ALL_TENANTS, include_open=False)
        end = math.floor(stats.end.timestamp() / 60)
        budget = 1.0 - cfg.slo_objective
        for rule in cfg.burn_rules:  # most severe first
            long_calls, long_errors = counts.totals(end - rule.long_minutes, end)
            short_calls, short_errors = counts.totals(end - rule.short_minutes, end)
            if long_calls < cfg.min_calls or short_calls == 0 or long_errors < cfg.min_errors:
                continue
            burn_long = long_errors / long_calls / budget
            burn_short = short_errors / short_calls / budget
            if burn_long >= rule.factor and burn_short >= rule.factor:
                weakest = min(burn_long, burn_short)
                confidence = round(
                    weakest / (weakest + rule.factor) * long_calls / (long_calls + cfg.min_calls), 4
                )
                evidence = {
                    "methods": ["slo_burn_rate"],
                    "slo_objective": cfg.slo_objective,
                    "error_budget": budget,
                    "burn_rate_long": burn_long,
                    "burn_rate_short": burn_short,
                    "factor": rule.factor,
                    "long_minutes": rule.long_minutes,
                    "short_minutes": rule.short_minutes,
                    "long_calls": long_calls,
                    "long_errors": long_errors,
                    "short_calls": short_calls,
                    "short_errors": short_errors,
                }
                return [
                    self._intent(
                        IntentKind.SLO_BURN, stats, confidence, rule.severity,
                        f"{stats.operation} burns its {cfg.slo_objective:.3%} SLO error budget "
                        f"{burn_long:.1f}x over {rule.long_minutes} min and {burn_short:.1f}x over "
                        f"{rule.short_minutes} min (threshold {rule.factor}x)",
                        evidence,
                    )
                ]  # fmt: skip
        return []

    # -- sequences --------------------------------------------------------------------------------

    def evaluate_sequences(
        self, sequences: Iterable[Sequence[str]], as_of: datetime | None = None
    ) -> list[Intent]:
        """Mine frequent consecutive operation sequences from per-trace sequences.

        Each new sequence passing the support and confidence thresholds is reported once.

        Args:
            sequences: One operation sequence per trace (`IntentAggregator.sequences()`).
            as_of: Time the buffer describes (window end of the intent).

        Returns:
            One `workflow_sequence` intent per newly frequent sequence, most supported first.
        """
        cfg = self.config
        traces = [tuple(s) for s in sequences if s]
        total = len(traces)
        if total == 0:
            return []
        support: Counter[tuple[str, ...]] = Counter()
        for seq in traces:
            found: set[tuple[str, ...]] = set()
            for n in (1, *cfg.sequence_lengths):
                for i in range(len(seq) - n + 1):
                    gram = seq[i : i + n]
                    if n > 1 and len(set(gram)) == 1:
                        continue  # repeating one operation is not a workflow
                    found.add(gram)
            # prefixes followed by something (association-rule denominators)
            for n in cfg.sequence_lengths:
                for i in range(len(seq) - n + 1):
                    found.add((*seq[i : i + n - 1], "\x00"))
            support.update(found)
        now = self.clock.now()
        when = as_of or now
        out: list[Intent] = []
        for gram, count in sorted(support.items(), key=lambda kv: (-kv[1], kv[0])):
            if len(gram) < 2 or gram[-1] == "\x00" or len(gram) not in cfg.sequence_lengths:
                continue
            fraction = count / total
            antecedent = support.get((*gram[:-1], "\x00"), 0)
            confidence_rule = count / antecedent if antecedent else 0.0
            if (
                count < cfg.min_support
                or fraction < cfg.min_support_fraction
                or confidence_rule < cfg.min_confidence
                or gram in self._reported_sequences
            ):
                continue
            self._reported_sequences.add(gram)
            confidence = round(confidence_rule * count / (count + cfg.min_support), 4)
            out.append(
                Intent(
                    id=self.ids.new_id(),
                    kind=IntentKind.WORKFLOW_SEQUENCE,
                    operation=gram[0],
                    org_id=ALL_TENANTS,
                    window_start=when,
                    window_end=when,
                    detected_at=now,
                    confidence=confidence,
                    severity=IntentSeverity.INFO,
                    summary=f"{' -> '.join(gram)} runs as one workflow in {count} of {total} "
                    f"traces (confidence {confidence_rule:.0%})",
                    evidence={
                        "methods": ["sequence_support"],
                        "support": count,
                        "support_fraction": fraction,
                        "rule_confidence": confidence_rule,
                        "antecedent_support": antecedent,
                        "traces": total,
                        "min_support": cfg.min_support,
                        "min_support_fraction": cfg.min_support_fraction,
                        "min_confidence": cfg.min_confidence,
                    },
                    sequence=gram,
                )
            )
        return out
