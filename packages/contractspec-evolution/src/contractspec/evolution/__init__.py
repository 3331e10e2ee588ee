"""Telemetry, intent detection and reviewed spec suggestions for ContractSpec.

```python
from contractspec.evolution import (
    EvolutionPipeline, IntentAggregator, IntentDetector, SpecGenerator,
    SpecSuggestionOrchestrator,
)
```

The loop: the executor reports one unsampled `TelemetrySample` per call to an `IntentAggregator`
(core's `TelemetrySink` port); closed windows go to the `IntentDetector`; intents become
`SpecSuggestion`s (each with its breaking-change diff) in the `SpecGenerator`; the
`SpecSuggestionOrchestrator` routes them through contractspec-agent's `ApprovalWorkflow` and writes
approved ones out for review. SQL stores live in `contractspec.evolution.sql`, the NAB-style
evaluation in `contractspec.evolution.evaluation`, the jobs integration in
`contractspec.evolution.jobs`.
"""

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
from contractspec.evolution.analyzer import Anomaly, OperationUsage, SpecAnalyzer, UsageReport
from contractspec.evolution.detector import (
    BurnRateRule,
    DetectorConfig,
    Ewma,
    Intent,
    IntentDetector,
    IntentKind,
    IntentSeverity,
    RobustZ,
    robust_z,
)
from contractspec.evolution.events import (
    EVOLUTION_EVENTS,
    intent_detected,
    suggestion_created,
    suggestion_decided,
)
from contractspec.evolution.orchestrator import SpecSuggestionOrchestrator, SubmitResult
from contractspec.evolution.pipeline import EvolutionPipeline, PipelineRun, TelemetryExporter
from contractspec.evolution.policies import (
    OperationPolicyMiddleware,
    OperationTimeoutError,
    RateLimitedError,
)
from contractspec.evolution.sketch import DEFAULT_MAPPING, LogBucketMapping
from contractspec.evolution.stores import (
    IntentStore,
    MemoryIntentStore,
    MemorySuggestionStore,
    MemoryTelemetryBucketStore,
    SuggestionStore,
    TelemetryBucketStore,
)
from contractspec.evolution.suggestions import (
    POLICY_KIND,
    OperationPolicy,
    SpecGenerator,
    SpecSuggestion,
    SuggestionKind,
    SuggestionPriority,
    SuggestionStatus,
    ValidationErrorSampler,
    apply_patch,
    define_operation_policy,
)
from contractspec.evolution.telemetry import FanOutSink, TelemetryASGIMiddleware, TelemetryBatch

try:
    __version__ = version("contractspec-evolution")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "ALL_TENANTS",
    "DEFAULT_MAPPING",
    "EVOLUTION_EVENTS",
    "POLICY_KIND",
    "QUANTILES",
    "Anomaly",
    "BurnRateRule",
    "DetectorConfig",
    "EvolutionPipeline",
    "Ewma",
    "FanOutSink",
    "Intent",
    "IntentAggregator",
    "IntentDetector",
    "IntentKind",
    "IntentSeverity",
    "IntentStore",
    "LogBucketMapping",
    "MemoryIntentStore",
    "MemorySuggestionStore",
    "MemoryTelemetryBucketStore",
    "MinuteCounts",
    "OperationPolicy",
    "OperationPolicyMiddleware",
    "OperationTimeoutError",
    "OperationUsage",
    "PipelineRun",
    "RateLimitedError",
    "RobustZ",
    "SpecAnalyzer",
    "SpecGenerator",
    "SpecSuggestion",
    "SpecSuggestionOrchestrator",
    "SubmitResult",
    "SuggestionKind",
    "SuggestionPriority",
    "SuggestionStatus",
    "SuggestionStore",
    "TelemetryASGIMiddleware",
    "TelemetryBatch",
    "TelemetryBucket",
    "TelemetryBucketStore",
    "TelemetryExporter",
    "UsageReport",
    "ValidationErrorSampler",
    "WindowStats",
    "__version__",
    "apply_patch",
    "define_operation_policy",
    "intent_detected",
    "robust_z",
    "suggestion_created",
    "suggestion_decided",
]
