"""Seed a small CRM and let its schedules fire: the nightly report, then weekday reminders.

`run_demo` moves a fake clock from Monday 2024-06-03 02:30 (Paris) through 03:00 (nightly report)
and 08:00 (reminders) and runs a worker after each step; `serve` runs the real thing (scheduler and
worker until SIGTERM).
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from attrs import define
from crm_pipeline.models import CreateContact, CreateDeal, CreateTask, Task

from contractspec.core import Actor, CallContext
from contractspec.core.sql import sqlite_engine
from contractspec.core.testing import FakeClock
from contractspec.jobs import Fire, JobStatus
from crm_jobs.app import CrmJobsApp, build_app

__all__ = ["PARIS", "DemoOutcome", "run_demo", "seed", "serve"]

PARIS = ZoneInfo("Europe/Paris")
SALES = CallContext(actor=Actor.user("u-lead", roles="sales"), org_id="acme")


@define
class DemoOutcome:
    """What the demo observed."""

    fires: list[Fire]
    report: dict[str, object]
    reminded: list[str]
    statuses: dict[str, int]


async def seed(app: CrmJobsApp, today: date) -> list[Task]:
    """One contact, two deals and three tasks (due today, tomorrow, next week)."""
    ex = app.executor
    await ex.execute("crm.contact.create", CreateContact(id="c-ada", name="Ada Lovelace"), SALES)
    tasks = []
    for n, (title, amount) in enumerate((("Analytical engine", "12000.00"), ("Notes", "800.00"))):
        deal = await ex.execute(
            "crm.deal.create",
            CreateDeal(id=f"d-{n}", contact_id="c-ada", title=title, amount=Decimal(amount)),
            SALES,
        )
        assert deal is not None
    for title, due in (("Call Ada", 0), ("Send the quote", 1), ("Plan the demo", 7)):
        task = await ex.execute(
            "crm.task.create",
            CreateTask(deal_id="d-0", title=title, due_on=today + timedelta(days=due)),
            SALES,
        )
        assert isinstance(task, Task)
        tasks.append(task)
    return tasks


async def run_demo(app: CrmJobsApp, clock: FakeClock) -> DemoOutcome:
    """Fire the nightly report and the reminders on a fake Monday; return what happened."""
    start = datetime(2024, 6, 3, 2, 30, tzinfo=PARIS)
    clock.set(start)
    await seed(app, start.date())
    scheduler = app.scheduler()
    fires = await scheduler.tick()  # records the next fire times
    for hour in (3, 8):
        clock.set(datetime(2024, 6, 3, hour, 0, 1, tzinfo=PARIS))
        fires += await scheduler.tick()
        await app.worker().run(until_idle=True)
    (report_job,) = await app.queue.list(job_type="crm.report.nightly")
    counts = await app.queue.counts()
    return DemoOutcome(
        fires=fires,
        report=report_job.result,
        reminded=[t.title for t in app.sent],
        statuses={s.value: n for s, n in counts.items() if n},
    )


async def serve(path: str) -> None:
    """Run the scheduler and a worker against a SQLite file until SIGTERM / Ctrl-C."""
    engine = sqlite_engine(path)
    try:
        app = await build_app(engine)
        scheduler = app.scheduler()
        worker = app.worker(concurrency=4)
        task = asyncio.create_task(scheduler.run())
        await worker.run(handle_signals=True)
        scheduler.stop()
        await task
        print(
            {
                s.value: n
                for s, n in (await app.queue.counts()).items()
                if n and s != JobStatus.RUNNING
            }
        )
    finally:
        await engine.dispose()
