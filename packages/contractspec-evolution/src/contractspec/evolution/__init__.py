"""Telemetry, intent detection and reviewed spec suggestions for ContractSpec."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.evolution.aggregator import (
    ALL_TENANTS,
    QUANTILES,
    IntentAggregator,
    MinuteCounts,
    TelemetryBucket,
    WindowStats,
)
from contractspec.evolution.sketch import DEFAULT_MAPPING, LogBucketMapping
from contractspec.evolution.telemetry import TelemetryASGIMiddleware, TelemetryBatch

try:
    __version__ = version("contractspec-evolution")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "ALL_TENANTS",
    "DEFAULT_MAPPING",
    "QUANTILES",
    "IntentAggregator",
    "LogBucketMapping",
    "MinuteCounts",
    "TelemetryASGIMiddleware",
    "TelemetryBatch",
    "TelemetryBucket",
    "WindowStats",
    "__version__",
]
