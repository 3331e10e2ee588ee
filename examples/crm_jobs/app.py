"""Wiring: the CRM executor and backend, a SQL job queue on the same database, handlers, scheduler.

```text
Scheduler ──(03:00 daily, 08:00 weekdays)──> cs_jobs ──> Worker
   crm.report.nightly   -> executor.execute("crm.report.summary") -> job result
   crm.task.remind_due  -> open tasks due by tomorrow -> crm.task.notify (one per task, unique)
   crm.task.notify      -> the reminder channel (here: an in-memory outbox you can inspect)
```
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from attrs import define, field
from crm_pipeline.models import ReportSummary, SummaryRequest, task_entity
from crm_pipeline.spec import policy, registry
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import Actor, CallContext, Clock, Executor, SystemClock
from contractspec.core.sql import SqlBackend
from contractspec.jobs import JobContext, JobHandlers, Scheduler, Worker
from contractspec.jobs.sql import SqlJobQueue
from crm_jobs.jobs import (
    NightlyReport,
    NotifyTask,
    RemindDueTasks,
    RemindersSent,
    jobs_registry,
    nightly_report,
    notify_task,
    remind_due_tasks,
)

__all__ = ["REPORTER", "CrmJobsApp", "build_app"]

#: The service identity the jobs act as (the CRM's `viewer` role may read reports).
REPORTER = Actor.system("crm-jobs", roles="viewer")


@define
class CrmJobsApp:
    """The CRM app with its background jobs.

    Attributes:
        backend: The CRM's SQL backend.
        executor: Runs CRM operations.
        queue: The durable job queue (`cs_jobs`) on the same engine.
        handlers: Job handlers bound to the job specs.
        sent: Reminders "sent" by `crm.task.notify` (stand-in for an email/chat channel).
    """

    backend: SqlBackend
    executor: Executor
    queue: SqlJobQueue
    clock: Clock
    handlers: JobHandlers = field(factory=JobHandlers)
    sent: list[NotifyTask] = field(factory=list)

    def scheduler(self) -> Scheduler:
        """A scheduler for the CRM schedules (run one or several: fires are enqueued once)."""
        return Scheduler(self.queue, jobs_registry)

    def worker(self, **options: Any) -> Worker:
        """A worker for every CRM job queue."""
        options.setdefault("poll_interval", 0.2)
        return Worker(self.queue, self.handlers, **options)

    async def nightly(self, payload: NightlyReport, ctx: JobContext) -> ReportSummary:
        """Run the summary query as the reporting service, for one org."""
        call = CallContext(actor=REPORTER, org_id=payload.org_id, request_id=f"job:{ctx.job.id}")
        summary = await self.executor.execute(
            "crm.report.summary", SummaryRequest(top=payload.top), call
        )
        assert isinstance(summary, ReportSummary)
        return summary

    async def remind(self, payload: RemindDueTasks, ctx: JobContext) -> RemindersSent:
        """Fan out one `crm.task.notify` job per open task due by `as_of + days_ahead`."""
        as_of = ctx.job.scheduled_at.date()  # the fire time, not the (possibly late) run time
        horizon = as_of + timedelta(days=payload.days_ahead)
        tx = await self.backend.unit_of_work.begin(readonly=True)
        try:
            tasks = await self.backend.entities.repository(task_entity, tx, payload.org_id).find(
                {"done": False}, order_by="id"
            )
        finally:
            await tx.rollback()
        due = [t for t in tasks if t.due_on is not None and t.due_on <= horizon]
        ids = await self.queue.enqueue_many(
            [
                (
                    notify_task,
                    NotifyTask(
                        org_id=payload.org_id,
                        task_id=t.id,
                        deal_id=t.deal_id,
                        title=t.title,
                        due_on=t.due_on,
                    ),
                )
                for t in due
            ],
            org_id=payload.org_id,
        )
        return RemindersSent(as_of=as_of, due_tasks=len(due), enqueued=ids)

    async def notify(self, payload: NotifyTask, ctx: JobContext) -> dict[str, str]:
        """Deliver one reminder (here: append to `sent`)."""
        self.sent.append(payload)
        return {"task_id": payload.task_id, "channel": "in-memory"}


async def build_app(engine: AsyncEngine, *, clock: Clock | None = None) -> CrmJobsApp:
    """Create the CRM tables and the job tables on `engine` and wire everything.

    Args:
        engine: SQLite (`contractspec.core.sql.sqlite_engine`) or PostgreSQL engine; not disposed.
        clock: Time source for the executor, queue and scheduler (a `FakeClock` in tests).
    """
    clock = clock or SystemClock()
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    queue = SqlJobQueue(engine, jobs_registry, clock=clock)
    await queue.create_all()
    executor = Executor(registry, backend=backend, policy=policy(), jobs=queue, clock=clock)
    app = CrmJobsApp(backend=backend, executor=executor, queue=queue, clock=clock)
    app.handlers.bind(nightly_report, app.nightly)
    app.handlers.bind(remind_due_tasks, app.remind)
    app.handlers.bind(notify_task, app.notify)
    return app
