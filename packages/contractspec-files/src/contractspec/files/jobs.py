"""Orphan collection as a scheduled job (contractspec-jobs).

Install with `pip install contractspec-jobs` next to `contractspec-files`.

```py
from contractspec.jobs import JobHandlers, Scheduler, Worker
from contractspec.files.jobs import schedule_orphan_collection

handlers = JobHandlers()
schedule_orphan_collection(registry, handlers, files, interval=timedelta(hours=1))
Scheduler(queue, registry)        # enqueues files.collect_orphans every hour
Worker(queue, handlers)           # runs it: Files.collect_orphans()
```

A crash between storing a blob and committing its record leaves an orphan blob; the job deletes
blobs no `File` record refers to once no staged upload can commit any more (see
`Files.collect_orphans`). Its `unique_key` keeps one run pending at a time, so a slow run and the
next fire never overlap into two sweeps.
"""

from __future__ import annotations

try:
    from contractspec.jobs import (
        JobContext,
        JobHandlers,
        JobSpec,
        ScheduleSpec,
        define_job,
        define_schedule,
    )
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.files.jobs needs contractspec-jobs: pip install contractspec-jobs"
    ) from exc

from datetime import timedelta

from pydantic import BaseModel, Field

from contractspec.core import SpecRegistry
from contractspec.files.service import Files

__all__ = [
    "COLLECT_ORPHANS",
    "CollectOrphans",
    "OrphansCollected",
    "schedule_orphan_collection",
]


class CollectOrphans(BaseModel):
    """Payload of `files.collect_orphans`."""

    batch: int = Field(500, ge=1, le=10_000, description="Blob keys checked per store query.")


class OrphansCollected(BaseModel):
    """Result of `files.collect_orphans`."""

    deleted: int = Field(description="Orphan blobs deleted by this run.")


#: The job: one sweep of `Files.collect_orphans` (one pending run at a time).
COLLECT_ORPHANS: JobSpec[CollectOrphans] = define_job(
    "files.collect_orphans",
    payload=CollectOrphans,
    result=OrphansCollected,
    max_attempts=3,
    unique_key="files.collect_orphans",
    tags=("files",),
    description="Delete blobs that no file record refers to (left by uploads that crashed "
    "between storing the blob and committing the record).",
)


def schedule_orphan_collection(
    registry: SpecRegistry,
    handlers: JobHandlers,
    files: Files,
    *,
    interval: timedelta | None = None,
    cron: str | None = None,
    batch: int = 500,
) -> ScheduleSpec:
    """Register `files.collect_orphans`, schedule it and bind its handler to `files`.

    Args:
        registry: The app's registry: the job and schedule specs are registered in it (the
            `Scheduler` and the job queue read them from there).
        handlers: The worker's `JobHandlers`; the handler calls `files.collect_orphans`.
        files: The `Files` runtime whose storage is swept.
        interval: Period between runs (default one hour when `cron` is not given).
        cron: A cron expression instead (`"17 * * * *"`), read in UTC.
        batch: Blob keys checked per store query.

    Returns:
        The registered `ScheduleSpec` (named `files.collect_orphans`).

    Raises:
        SpecDefinitionError: Both `interval` and `cron`, a malformed cron, a non-positive interval
            or a `batch` outside 1..10,000 (from `define_schedule`).
    """
    if interval is None and cron is None:
        interval = timedelta(hours=1)
    schedule = define_schedule(
        COLLECT_ORPHANS,
        interval=interval,
        cron=cron,
        payload={"batch": batch},
        description="Sweep orphan blobs of contractspec-files.",
    )
    registry.register(COLLECT_ORPHANS, schedule)

    async def collect(payload: CollectOrphans, ctx: JobContext) -> OrphansCollected:
        deleted = await files.collect_orphans(batch=payload.batch)
        ctx.log.info("contractspec.files.orphans_collected", deleted=deleted)
        return OrphansCollected(deleted=deleted)

    handlers.bind(COLLECT_ORPHANS, collect)
    return schedule
