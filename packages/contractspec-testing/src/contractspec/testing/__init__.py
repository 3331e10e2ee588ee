"""Traffic recording, golden pytest suites and spec-driven Hypothesis strategies for ContractSpec.

```python
from contractspec.testing import JsonlTrafficStore, TrafficRecorder

recorder = TrafficRecorder(JsonlTrafficStore("traffic.jsonl"), sample_rate=0.05)
executor = Executor(registry, traffic=recorder)
```
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.testing._snapshot import Snapshot
from contractspec.testing.errors import GoldenUpdateError, SnapshotFormatError, TrafficStoreError
from contractspec.testing.generator import GeneratedSuite, GoldenTestGenerator
from contractspec.testing.golden import (
    NONDETERMINISTIC,
    CaseResult,
    Difference,
    GoldenCase,
    GoldenReport,
    GoldenSuite,
    golden_cases,
    run_golden_tests,
    run_golden_tests_sync,
)
from contractspec.testing.plugin import Golden
from contractspec.testing.recorder import RecorderStats, TrafficRecorder, sampling_fraction
from contractspec.testing.redaction import Detector, Placeholders, Redactor
from contractspec.testing.stores import (
    JsonlTrafficStore,
    MemoryTrafficStore,
    TrafficStore,
    open_store,
)

try:
    __version__ = version("contractspec-testing")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "NONDETERMINISTIC",
    "CaseResult",
    "Detector",
    "Difference",
    "GeneratedSuite",
    "Golden",
    "GoldenCase",
    "GoldenReport",
    "GoldenSuite",
    "GoldenTestGenerator",
    "GoldenUpdateError",
    "JsonlTrafficStore",
    "MemoryTrafficStore",
    "Placeholders",
    "RecorderStats",
    "Redactor",
    "Snapshot",
    "SnapshotFormatError",
    "TrafficRecorder",
    "TrafficStore",
    "TrafficStoreError",
    "__version__",
    "golden_cases",
    "open_store",
    "run_golden_tests",
    "run_golden_tests_sync",
    "sampling_fraction",
]
