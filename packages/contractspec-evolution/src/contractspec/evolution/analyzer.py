"""`SpecAnalyzer`: how each operation of a spec is used, and what is anomalous about it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
from attrs import define, field

from contractspec.core import SpecRegistry
from contractspec.evolution.aggregator import ALL_TENANTS, QUANTILES, IntentAggregator
from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity
from contractspec.evolution.sketch import grouped_quantiles

__all__ = ["Anomaly", "OperationUsage", "SpecAnalyzer", "UsageReport"]


@define(frozen=True)
class OperationUsage:
    """Usage of one operation over the aggregator's closed and open windows.

    Attributes:
        operation: Operation name.
        registered: Whether the registry declares it (telemetry may name others, e.g. HTTP routes).
        calls: Calls observed.
        errors: Failed calls.
        p50_ms, p95_ms, p99_ms: Latency quantiles of the successful calls of the whole period,
            read from the merged window histograms (DDSketch merges exactly: within 1 % of the
            exact quantile of all those calls, so one bad window shows); NaN without successful
            calls.
        top_errors: Most frequent error codes with counts (at most 5).
        last_seen: Start of the last minute with a call, or `None`.
        observed_minutes: Length of the observed period.
        unused: Registered, and no call over the observed period.
    """

    operation: str
    registered: bool
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    top_errors: tuple[tuple[str, int], ...]
    last_seen: datetime | None
    observed_minutes: float
    unused: bool

    @property
    def success_rate(self) -> float:
        """`1 - errors / calls` (1.0 without calls)."""
        return 1.0 - self.errors / self.calls if self.calls else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""

        def num(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 3)

        return {
            "operation": self.operation,
            "registered": self.registered,
            "calls": self.calls,
            "errors": self.errors,
            "success_rate": self.success_rate,
            "p50_ms": num(self.p50_ms),
            "p95_ms": num(self.p95_ms),
            "p99_ms": num(self.p99_ms),
            "top_errors": [list(e) for e in self.top_errors],
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "observed_minutes": self.observed_minutes,
            "unused": self.unused,
        }


@define(frozen=True)
class Anomaly:
    """An intent seen from the operation's side, with its severity.

    Attributes:
        operation: Operation name.
        kind: Intent kind.
        severity: `info`, `warning` or `critical`.
        summary: One sentence.
        confidence: The intent's confidence.
        intent_id: The intent.
    """

    operation: str
    kind: IntentKind
    severity: IntentSeverity
    summary: str
    confidence: float
    intent_id: str


@define(frozen=True)
class UsageReport:
    """What `SpecAnalyzer.analyze` returns.

    Attributes:
        operations: One entry per registered or observed operation, sorted by name.
        anomalies: Anomalies, most severe first.
        unused: Registered operations without calls.
    """

    operations: tuple[OperationUsage, ...]
    anomalies: tuple[Anomaly, ...] = ()
    unused: tuple[str, ...] = field(default=())

    def get(self, operation: str) -> OperationUsage:
        """The usage of one operation.

        Raises:
            KeyError: Unknown operation.
        """
        for u in self.operations:
            if u.operation == operation:
                return u
        raise KeyError(operation)


_SEVERITY_ORDER: Mapping[IntentSeverity, int] = {
    IntentSeverity.CRITICAL: 0,
    IntentSeverity.WARNING: 1,
    IntentSeverity.INFO: 2,
}


class SpecAnalyzer:
    """Per-operation usage statistics of a registry from an aggregator, plus anomalies.

    Args:
        registry: The spec whose operations are analysed.
        min_observed_minutes: An operation is only called unused once this much time was observed
            (default one day).
    """

    def __init__(self, registry: SpecRegistry, *, min_observed_minutes: float = 1440.0) -> None:
        self.registry = registry
        self.min_observed_minutes = min_observed_minutes

    def analyze(self, aggregator: IntentAggregator, intents: Iterable[Intent] = ()) -> UsageReport:
        """Usage per operation over the closed history and the open windows, and anomalies."""
        windows: dict[str, list[Any]] = {}
        for op, org in aggregator.series():
            if org == ALL_TENANTS:
                windows.setdefault(op, []).extend(aggregator.history(op, org))
        for s in aggregator.open_stats():
            if s.org_id == ALL_TENANTS:
                windows.setdefault(s.operation, []).append(s)
        starts = [w.start for ws in windows.values() for w in ws]
        ends = [w.end for ws in windows.values() for w in ws]
        observed = (max(ends) - min(starts)).total_seconds() / 60.0 if starts else 0.0
        last_seen = aggregator.last_seen()
        registered = {spec.name for spec in self.registry.operations()}
        out: list[OperationUsage] = []
        for name in sorted(registered | set(windows)):
            ws = windows.get(name, [])
            calls = sum(w.calls for w in ws)
            errors = sum(w.errors for w in ws)
            codes: dict[str, int] = {}
            for w in ws:
                for code, n in w.error_codes.items():
                    codes[code] = codes.get(code, 0) + n
            quantiles = _period_quantiles(aggregator, name)
            out.append(
                OperationUsage(
                    operation=name,
                    registered=name in registered,
                    calls=calls,
                    errors=errors,
                    p50_ms=quantiles[0],
                    p95_ms=quantiles[1],
                    p99_ms=quantiles[2],
                    top_errors=tuple(sorted(codes.items(), key=lambda kv: (-kv[1], kv[0]))[:5]),
                    last_seen=last_seen.get(name),
                    observed_minutes=observed,
                    unused=name in registered
                    and calls == 0
                    and observed >= self.min_observed_minutes,
                )
            )
        anomalies = sorted(
            (
                Anomaly(i.operation, i.kind, i.severity, i.summary, i.confidence, i.id)
                for i in intents
                if i.kind is not IntentKind.WORKFLOW_SEQUENCE
            ),
            key=lambda a: (_SEVERITY_ORDER[a.severity], -a.confidence, a.operation),
        )
        return UsageReport(
            operations=tuple(out),
            anomalies=tuple(anomalies),
            unused=tuple(u.operation for u in out if u.unused),
        )


def _period_quantiles(aggregator: IntentAggregator, operation: str) -> tuple[float, float, float]:
    """p50/p95/p99 of the operation's merged histogram (closed history and open windows)."""
    buckets, counts = aggregator.latency_histogram(operation)
    if not len(buckets):
        return (math.nan, math.nan, math.nan)
    groups = np.zeros(len(buckets), dtype=np.int64)
    _ids, _totals, values = grouped_quantiles(
        groups, buckets, counts, QUANTILES, aggregator.mapping, presorted=True
    )
    return (float(values[0, 0]), float(values[0, 1]), float(values[0, 2]))
