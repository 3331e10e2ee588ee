"""The CRM runs its nightly report and weekday reminders from schedules, on a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from crm_jobs.app import CrmJobsApp, build_app
from crm_jobs.demo import PARIS, run_demo, seed
from crm_jobs.jobs import jobs_registry, nightly_schedule, reminders_schedule

from contractspec.core.sql import sqlite_engine
from contractspec.core.testing import FakeClock
from contractspec.jobs import Fire, JobStatus


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[CrmJobsApp, FakeClock]]:
    """The CRM with its jobs on a SQLite file and a fake clock."""
    engine = sqlite_engine(tmp_path / "crm.db")
    clock = FakeClock()
    try:
        yield await build_app(engine, clock=clock), clock
    finally:
        await engine.dispose()


async def test_schedules_run_the_nightly_report_and_the_reminders(
    app: tuple[CrmJobsApp, FakeClock],
) -> None:
    """At 03:00 the nightly report runs the summary; at 08:00 due tasks get one reminder each."""
    crm, clock = app
    outcome = await run_demo(crm, clock)
    assert outcome.fires == [
        Fire("crm.report.nightly", datetime(2024, 6, 3, 3, tzinfo=PARIS), True),
        Fire("crm.task.remind_due", datetime(2024, 6, 3, 8, tzinfo=PARIS), True),
    ]
    assert (outcome.report["contacts"], outcome.report["deals"]) == (1, 2)
    assert Decimal(str(outcome.report["pipeline_value"])) == Decimal("12800.00")
    assert sorted(outcome.reminded) == ["Call Ada", "Send the quote"]
    assert outcome.statuses == {"succeeded": 4}
    (remind_job,) = await crm.queue.list(job_type="crm.task.remind_due")
    assert remind_job.result["as_of"] == "2024-06-03"
    assert remind_job.result["due_tasks"] == 2


async def test_reminders_are_not_sent_twice_for_the_same_due_date(
    app: tuple[CrmJobsApp, FakeClock],
) -> None:
    """Two scheduler instances and a manual re-run still send each task's reminder once."""
    crm, clock = app
    clock.set(datetime(2024, 6, 3, 7, 0, tzinfo=PARIS))
    await seed(crm, clock.now().astimezone(PARIS).date())
    first, second = crm.scheduler(), crm.scheduler()
    await first.tick()
    clock.set(datetime(2024, 6, 3, 8, 0, 3, tzinfo=PARIS))
    await asyncio.gather(first.tick(), second.tick())
    await crm.queue.enqueue("crm.task.remind_due", {"org_id": "acme"})  # an operator re-run
    await crm.worker().run(until_idle=True)
    assert sorted(t.title for t in crm.sent) == ["Call Ada", "Send the quote"]
    counts = await crm.queue.counts()
    assert (counts[JobStatus.SUCCEEDED], counts[JobStatus.DEAD]) == (4, 0)


async def test_a_late_scheduler_catches_up_within_the_misfire_grace(
    app: tuple[CrmJobsApp, FakeClock],
) -> None:
    """Down from 02:00 to 04:30, the scheduler still enqueues the 03:00 report (grace 2 h)."""
    crm, clock = app
    clock.set(datetime(2024, 6, 4, 2, 0, tzinfo=PARIS))
    scheduler = crm.scheduler()
    await scheduler.tick()
    clock.set(datetime(2024, 6, 4, 4, 30, tzinfo=PARIS))
    fires = await scheduler.tick()
    assert fires == [Fire("crm.report.nightly", datetime(2024, 6, 4, 3, tzinfo=PARIS), True)]


def test_jobs_and_schedules_are_specs() -> None:
    """The CRM jobs and schedules live in a SpecRegistry and render to the IR."""
    assert jobs_registry.kinds() == ["job", "schedule"]
    assert [s.name for s in jobs_registry.specs("job")] == [
        "crm.report.nightly",
        "crm.task.notify",
        "crm.task.remind_due",
    ]
    assert nightly_schedule.to_ir()["cron"] == "0 3 * * *"
    assert reminders_schedule.to_ir()["timezone"] == "Europe/Paris"
