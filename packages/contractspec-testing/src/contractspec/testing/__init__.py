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
    "Detector",
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
    "open_store",
    "sampling_fraction",
]
