"""Feature flags, GrowthBook-compatible experiments, a stats engine, guarded rollouts and analytics.

```python
from contractspec.growth import ExperimentRegistry, ExperimentRunner, define_experiment
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contractspec.growth.analytics import (
        ActivityProfile,
        ChurnPredictor,
        ChurnScore,
        CohortTable,
        CohortTracker,
        ExperimentIdea,
        FunnelAnalyzer,
        FunnelResult,
        GrowthHypothesisGenerator,
        MetricSeries,
        Transactions,
        load_cdnow,
    )
    from contractspec.growth.bandits import (
        BanditDecision,
        BanditPolicy,
        BanditService,
        DecisionLog,
        LinearIGW,
        MemoryDecisionLog,
        ThompsonSampling,
        ips_estimate,
    )
    from contractspec.growth.bandits_sql import SqlDecisionLog
    from contractspec.growth.bucketing import (
        choose_variation,
        equal_weights,
        get_bucket_ranges,
        in_namespace,
    )
    from contractspec.growth.conditions import check_condition, eval_condition
    from contractspec.growth.experiments import (
        Assignment,
        AssignmentReason,
        Assignments,
        ExperimentRegistry,
        ExperimentRunner,
        ExperimentSpec,
        Namespace,
        Variation,
        define_experiment,
        subject_attributes,
    )
    from contractspec.growth.flags import (
        FlagEvaluator,
        FlagResult,
        FlagRule,
        FlagSpec,
        define_flag,
        experiment_rule,
        force,
        rollout,
        target,
    )
    from contractspec.growth.hashing import bucket_hash, bucket_hash_many, fnv1a32, fnv1a32_many
    from contractspec.growth.journeys import (
        BackfillReport,
        Enrollment,
        EventCondition,
        JourneyAnalytics,
        JourneyCheck,
        JourneyEngine,
        JourneyEvent,
        JourneyNudge,
        JourneyStore,
        MemoryJourneyStore,
        MigrationReport,
        Module,
        Notifier,
        Nudge,
        Step,
        StepCompletion,
        StepState,
        TrackProgress,
        TrackSpec,
        define_track,
    )
    from contractspec.growth.journeys_sql import SqlJourneyStore
    from contractspec.growth.results import (
        Comparison,
        ExperimentResult,
        Lift,
        SrmResult,
    )
    from contractspec.growth.rollouts import (
        Guardrails,
        MemoryRolloutStore,
        RolloutPlan,
        RolloutState,
        RolloutStatus,
        RolloutStore,
        SpecExperimentController,
        SqlRolloutStore,
        VariantRouter,
        create_variant_resolver,
    )
    from contractspec.growth.stats import (
        CovariateStats,
        SufficientStats,
        WelchArrays,
        adjust_pvalues,
        analyze_experiment,
        cuped_theta,
        sequential_ttest,
        srm_check,
        welch_ttest,
        welch_ttest_from_stats,
    )
    from contractspec.growth.tracking import (
        ExperimentTracker,
        Exposure,
        MemoryTrackingStore,
        MetricEvent,
        SqlTrackingStore,
        TrackingStore,
    )

# Public names -> the module defining them, imported on first use (PEP 562), so that
# `import contractspec.growth.flags` (a service that only evaluates flags) does not load scipy,
# the analytics or SQLAlchemy.
_LAZY: dict[str, str] = {
    "ActivityProfile": "contractspec.growth.analytics",
    "Assignment": "contractspec.growth.experiments",
    "AssignmentReason": "contractspec.growth.experiments",
    "Assignments": "contractspec.growth.experiments",
    "BackfillReport": "contractspec.growth.journeys",
    "BanditDecision": "contractspec.growth.bandits",
    "BanditPolicy": "contractspec.growth.bandits",
    "BanditService": "contractspec.growth.bandits",
    "ChurnPredictor": "contractspec.growth.analytics",
    "ChurnScore": "contractspec.growth.analytics",
    "CohortTable": "contractspec.growth.analytics",
    "CohortTracker": "contractspec.growth.analytics",
    "Comparison": "contractspec.growth.results",
    "CovariateStats": "contractspec.growth.stats",
    "DecisionLog": "contractspec.growth.bandits",
    "Enrollment": "contractspec.growth.journeys",
    "EventCondition": "contractspec.growth.journeys",
    "ExperimentIdea": "contractspec.growth.analytics",
    "ExperimentRegistry": "contractspec.growth.experiments",
    "ExperimentResult": "contractspec.growth.results",
    "ExperimentRunner": "contractspec.growth.experiments",
    "ExperimentSpec": "contractspec.growth.experiments",
    "ExperimentTracker": "contractspec.growth.tracking",
    "Exposure": "contractspec.growth.tracking",
    "FlagEvaluator": "contractspec.growth.flags",
    "FlagResult": "contractspec.growth.flags",
    "FlagRule": "contractspec.growth.flags",
    "FlagSpec": "contractspec.growth.flags",
    "FunnelAnalyzer": "contractspec.growth.analytics",
    "FunnelResult": "contractspec.growth.analytics",
    "GrowthHypothesisGenerator": "contractspec.growth.analytics",
    "Guardrails": "contractspec.growth.rollouts",
    "JourneyAnalytics": "contractspec.growth.journeys",
    "JourneyCheck": "contractspec.growth.journeys",
    "JourneyEngine": "contractspec.growth.journeys",
    "JourneyEvent": "contractspec.growth.journeys",
    "JourneyNudge": "contractspec.growth.journeys",
    "JourneyStore": "contractspec.growth.journeys",
    "Lift": "contractspec.growth.results",
    "LinearIGW": "contractspec.growth.bandits",
    "MemoryDecisionLog": "contractspec.growth.bandits",
    "MemoryJourneyStore": "contractspec.growth.journeys",
    "MemoryRolloutStore": "contractspec.growth.rollouts",
    "MemoryTrackingStore": "contractspec.growth.tracking",
    "MetricEvent": "contractspec.growth.tracking",
    "MetricSeries": "contractspec.growth.analytics",
    "MigrationReport": "contractspec.growth.journeys",
    "Module": "contractspec.growth.journeys",
    "Namespace": "contractspec.growth.experiments",
    "Notifier": "contractspec.growth.journeys",
    "Nudge": "contractspec.growth.journeys",
    "RolloutPlan": "contractspec.growth.rollouts",
    "RolloutState": "contractspec.growth.rollouts",
    "RolloutStatus": "contractspec.growth.rollouts",
    "RolloutStore": "contractspec.growth.rollouts",
    "SpecExperimentController": "contractspec.growth.rollouts",
    "SqlDecisionLog": "contractspec.growth.bandits_sql",
    "SqlJourneyStore": "contractspec.growth.journeys_sql",
    "SqlRolloutStore": "contractspec.growth.rollouts",
    "SqlTrackingStore": "contractspec.growth.tracking",
    "SrmResult": "contractspec.growth.results",
    "Step": "contractspec.growth.journeys",
    "StepCompletion": "contractspec.growth.journeys",
    "StepState": "contractspec.growth.journeys",
    "SufficientStats": "contractspec.growth.stats",
    "ThompsonSampling": "contractspec.growth.bandits",
    "TrackProgress": "contractspec.growth.journeys",
    "TrackSpec": "contractspec.growth.journeys",
    "TrackingStore": "contractspec.growth.tracking",
    "Transactions": "contractspec.growth.analytics",
    "VariantRouter": "contractspec.growth.rollouts",
    "Variation": "contractspec.growth.experiments",
    "WelchArrays": "contractspec.growth.stats",
    "adjust_pvalues": "contractspec.growth.stats",
    "analyze_experiment": "contractspec.growth.stats",
    "bucket_hash": "contractspec.growth.hashing",
    "bucket_hash_many": "contractspec.growth.hashing",
    "check_condition": "contractspec.growth.conditions",
    "choose_variation": "contractspec.growth.bucketing",
    "create_variant_resolver": "contractspec.growth.rollouts",
    "cuped_theta": "contractspec.growth.stats",
    "define_experiment": "contractspec.growth.experiments",
    "define_flag": "contractspec.growth.flags",
    "define_track": "contractspec.growth.journeys",
    "equal_weights": "contractspec.growth.bucketing",
    "eval_condition": "contractspec.growth.conditions",
    "experiment_rule": "contractspec.growth.flags",
    "fnv1a32": "contractspec.growth.hashing",
    "fnv1a32_many": "contractspec.growth.hashing",
    "force": "contractspec.growth.flags",
    "get_bucket_ranges": "contractspec.growth.bucketing",
    "in_namespace": "contractspec.growth.bucketing",
    "ips_estimate": "contractspec.growth.bandits",
    "load_cdnow": "contractspec.growth.analytics",
    "rollout": "contractspec.growth.flags",
    "sequential_ttest": "contractspec.growth.stats",
    "srm_check": "contractspec.growth.stats",
    "subject_attributes": "contractspec.growth.experiments",
    "target": "contractspec.growth.flags",
    "welch_ttest": "contractspec.growth.stats",
    "welch_ttest_from_stats": "contractspec.growth.stats",
}


_SUBMODULES = frozenset(module.rsplit(".", 1)[1] for module in _LAZY.values())


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # `contractspec.growth.stats` after `import contractspec.growth`
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__version__":
        # importlib.metadata costs ~30 ms at import; read the version only when asked.
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("contractspec-growth")
        except PackageNotFoundError:  # pragma: no cover - source tree without metadata
            found = "0+unknown"
        globals()["__version__"] = found
        return found
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})


__all__ = [
    "ActivityProfile",
    "Assignment",
    "AssignmentReason",
    "Assignments",
    "BackfillReport",
    "BanditDecision",
    "BanditPolicy",
    "BanditService",
    "ChurnPredictor",
    "ChurnScore",
    "CohortTable",
    "CohortTracker",
    "Comparison",
    "CovariateStats",
    "DecisionLog",
    "Enrollment",
    "EventCondition",
    "ExperimentIdea",
    "ExperimentRegistry",
    "ExperimentResult",
    "ExperimentRunner",
    "ExperimentSpec",
    "ExperimentTracker",
    "Exposure",
    "FlagEvaluator",
    "FlagResult",
    "FlagRule",
    "FlagSpec",
    "FunnelAnalyzer",
    "FunnelResult",
    "GrowthHypothesisGenerator",
    "Guardrails",
    "JourneyAnalytics",
    "JourneyCheck",
    "JourneyEngine",
    "JourneyEvent",
    "JourneyNudge",
    "JourneyStore",
    "Lift",
    "LinearIGW",
    "MemoryDecisionLog",
    "MemoryJourneyStore",
    "MemoryRolloutStore",
    "MemoryTrackingStore",
    "MetricEvent",
    "MetricSeries",
    "MigrationReport",
    "Module",
    "Namespace",
    "Notifier",
    "Nudge",
    "RolloutPlan",
    "RolloutState",
    "RolloutStatus",
    "RolloutStore",
    "SpecExperimentController",
    "SqlDecisionLog",
    "SqlJourneyStore",
    "SqlRolloutStore",
    "SqlTrackingStore",
    "SrmResult",
    "Step",
    "StepCompletion",
    "StepState",
    "SufficientStats",
    "ThompsonSampling",
    "TrackProgress",
    "TrackSpec",
    "TrackingStore",
    "Transactions",
    "VariantRouter",
    "Variation",
    "WelchArrays",
    "__version__",
    "adjust_pvalues",
    "analyze_experiment",
    "bucket_hash",
    "bucket_hash_many",
    "check_condition",
    "choose_variation",
    "create_variant_resolver",
    "cuped_theta",
    "define_experiment",
    "define_flag",
    "define_track",
    "equal_weights",
    "eval_condition",
    "experiment_rule",
    "fnv1a32",
    "fnv1a32_many",
    "force",
    "get_bucket_ranges",
    "in_namespace",
    "ips_estimate",
    "load_cdnow",
    "rollout",
    "sequential_ttest",
    "srm_check",
    "subject_attributes",
    "target",
    "welch_ttest",
    "welch_ttest_from_stats",
]
