"""Feature flags, GrowthBook-compatible experiments, a stats engine, guarded rollouts and analytics.

```python
from contractspec.growth import ExperimentRegistry, ExperimentRunner, define_experiment
```
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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
from contractspec.growth.hashing import bucket_hash, bucket_hash_many, fnv1a32, fnv1a32_many

try:
    __version__ = version("contractspec-growth")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "Assignment",
    "AssignmentReason",
    "Assignments",
    "ExperimentRegistry",
    "ExperimentRunner",
    "ExperimentSpec",
    "Namespace",
    "Variation",
    "__version__",
    "bucket_hash",
    "bucket_hash_many",
    "check_condition",
    "choose_variation",
    "define_experiment",
    "equal_weights",
    "eval_condition",
    "fnv1a32",
    "fnv1a32_many",
    "get_bucket_ranges",
    "in_namespace",
    "subject_attributes",
]
