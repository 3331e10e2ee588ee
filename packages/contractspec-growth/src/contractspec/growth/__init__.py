"""Feature flags, GrowthBook-compatible experiments, a stats engine, guarded rollouts and analytics.

```python
from contractspec.growth import ExperimentRegistry, ExperimentRunner, define_experiment
```
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("contractspec-growth")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "ActivityProfile",
    "Assignment",
    "AssignmentReason",
    "Assignments",
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
    "Lift",
    "LinearIGW",
    "MemoryDecisionLog",
    "MemoryRolloutStore",
    "MemoryTrackingStore",
    "MetricEvent",
    "MetricSeries",
    "Namespace",
    "RolloutPlan",
    "RolloutState",
    "RolloutStatus",
    "RolloutStore",
    "SpecExperimentController",
    "SqlDecisionLog",
    "SqlRolloutStore",
    "SqlTrackingStore",
    "SrmResult",
    "SufficientStats",
    "ThompsonSampling",
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
