"""`files.collect_orphans` as a contractspec-jobs schedule, and the specs of the file operations
without a runtime."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from files_support import PDF, SECRET, App, chunks, docs_slot, images_slot, project

from contractspec.core import SpecDefinitionError, SpecRegistry
from contractspec.files import (
    Files,
    LocalFileStorage,
    MemoryFileStore,
    file_operation_specs,
    register_file_operations,
)


@pytest.fixture
def jobs() -> Any:
    """contractspec.jobs (the isolation session installs contractspec-files without it)."""
    return pytest.importorskip("contractspec.jobs", reason="the orphan job runs on it")


async def make_queue(jobs: Any, app: App, registry: SpecRegistry) -> Any:
    """A job queue on the app's backend (memory, or the app's own SQL engine)."""
    if app.engine is None:
        return jobs.MemoryJobQueue(registry, clock=app.clock)
    from contractspec.jobs.sql import SqlJobQueue

    queue = SqlJobQueue(app.engine, registry, clock=app.clock)
    await queue.create_all()
    return queue


async def test_the_schedule_enqueues_a_run_that_deletes_only_orphans(app: App, jobs: Any) -> None:
    """A staged upload never committed leaves an orphan blob; the scheduled job, run by a real
    worker once the grace period is over, deletes it and keeps the committed file's blob."""
    from contractspec.files.jobs import COLLECT_ORPHANS, schedule_orphan_collection

    registry = SpecRegistry()
    handlers = jobs.JobHandlers()
    schedule = schedule_orphan_collection(
        registry, handlers, app.files, interval=timedelta(minutes=30), batch=2
    )
    assert registry.specs("job") == [COLLECT_ORPHANS]
    assert registry.specs("schedule") == [schedule]
    queue = await make_queue(jobs, app, registry)
    try:
        await app.project()
        kept = await app.upload(PDF)
        await app.files.stage(
            "project.docs", chunks(PDF + b"orphan"), org_id="org-1", actor_id="u-1"
        )
        assert len(app.blobs()) == 2
        grace = app.files.upload_ttl + app.files.orphan_margin
        app.clock.set(datetime.now(UTC) + grace + timedelta(seconds=1))
        scheduler = jobs.Scheduler(queue, registry)
        assert await scheduler.tick() == []  # the first pass records the next fire
        due = await scheduler.next_wakeup()
        assert due is not None
        app.clock.set(due + timedelta(seconds=1))
        assert [f.enqueued for f in await scheduler.tick()] == [True]
        await jobs.Worker(queue, handlers, poll_interval=0.05).run(until_idle=True)
        (job,) = await queue.list()
        assert (job.type, job.status, job.result) == (
            "files.collect_orphans",
            jobs.JobStatus.SUCCEEDED,
            {"deleted": 1},
        )
        assert app.blobs() == [kept.file.key]
    finally:
        close = getattr(queue, "close", None)
        if close is not None:
            await close()


def test_the_schedule_refuses_a_bad_period(tmp_path: Path, jobs: Any) -> None:
    """Both a cron and an interval, or a batch out of range, fail at definition."""
    from contractspec.files.jobs import schedule_orphan_collection

    registry, handlers = SpecRegistry(), jobs.JobHandlers()
    files = runtime_files(tmp_path)
    with pytest.raises(SpecDefinitionError, match="cron"):
        schedule_orphan_collection(
            registry, handlers, files, interval=timedelta(hours=1), cron="0 * * * *"
        )
    with pytest.raises(SpecDefinitionError, match="payload"):
        schedule_orphan_collection(registry, handlers, files, batch=0)
    assert registry.kinds() == []


def runtime_files(tmp_path: Path) -> Files:
    """A `Files` runtime on memory records (nothing is uploaded)."""
    return Files(
        storage=LocalFileStorage(tmp_path / "blobs"), store=MemoryFileStore(), secret=SECRET,
        slots=[docs_slot, images_slot],
    )  # fmt: skip


def test_operation_specs_without_a_runtime_describe_the_same_operations(tmp_path: Path) -> None:
    """A spec-only registry's IR equals the IR of one where register_file_operations ran."""
    spec_only = SpecRegistry(project, docs_slot, images_slot, *file_operation_specs().specs)
    runtime = SpecRegistry(project)
    files = runtime_files(tmp_path)
    register_file_operations(runtime, files)
    assert spec_only.to_ir() == runtime.to_ir()
    both = SpecRegistry(project, *file_operation_specs().specs)
    register_file_operations(both, files)  # equal specs register once
    assert both.to_ir() == runtime.to_ir()
