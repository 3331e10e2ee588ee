"""Background jobs, durable queues, workers and schedules for ContractSpec.

```python
from contractspec.jobs import (
    JobHandlers, MemoryJobQueue, Scheduler, Worker, define_job, define_schedule, exponential,
)
from contractspec.jobs.sql import SqlJobQueue   # SQLite / PostgreSQL
```
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.jobs.errors import JobTimeoutError, LeaseLostError, UnknownJobTypeError
from contractspec.jobs.memory import MemoryJobQueue, MemoryScheduleStore
from contractspec.jobs.queue import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Job,
    JobQueue,
    JobStatus,
    NewJob,
)
from contractspec.jobs.scheduler import Fire, Scheduler, ScheduleStore
from contractspec.jobs.specs import (
    DEFAULT_QUEUE,
    Backoff,
    EventTrigger,
    JobSpec,
    ScheduleSpec,
    define_job,
    define_schedule,
    exponential,
    fixed,
    on_event,
)
from contractspec.jobs.triggers import EventJobs
from contractspec.jobs.worker import JobContext, JobHandler, JobHandlers, Worker, WorkerStats

try:
    __version__ = version("contractspec-jobs")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "ACTIVE_STATUSES",
    "DEFAULT_QUEUE",
    "FINAL_STATUSES",
    "Backoff",
    "EventJobs",
    "EventTrigger",
    "Fire",
    "Job",
    "JobContext",
    "JobHandler",
    "JobHandlers",
    "JobQueue",
    "JobSpec",
    "JobStatus",
    "JobTimeoutError",
    "LeaseLostError",
    "MemoryJobQueue",
    "MemoryScheduleStore",
    "NewJob",
    "ScheduleSpec",
    "ScheduleStore",
    "Scheduler",
    "UnknownJobTypeError",
    "Worker",
    "WorkerStats",
    "__version__",
    "define_job",
    "define_schedule",
    "exponential",
    "fixed",
    "on_event",
]
