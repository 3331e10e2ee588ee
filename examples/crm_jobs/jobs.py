"""The CRM's background work, declared in the spec: jobs, their schedules, and their handlers.

* `crm.report.nightly` runs the `crm.report.summary` query at 03:00 (Europe/Paris) every day and keeps
  the summary as the job's result;
* `crm.task.remind_due` runs at 08:00 on weekdays, finds open tasks due by tomorrow and fans out one
  `crm.task.notify` job per task, deduplicated by the unique key `remind:<task id>:<due date>` so a
  task is never reminded twice for the same due date.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

from crm_pipeline.models import ReportSummary
from pydantic import BaseModel, Field

from contractspec.core import SpecRegistry
from contractspec.jobs import define_job, define_schedule, exponential

__all__ = [
    "NightlyReport",
    "NotifyTask",
    "RemindDueTasks",
    "RemindersSent",
    "jobs_registry",
    "nightly_report",
    "nightly_schedule",
    "notify_task",
    "remind_due_tasks",
    "reminders_schedule",
]


class NightlyReport(BaseModel):
    """Payload of `crm.report.nightly`."""

    org_id: Annotated[str, Field(min_length=1, max_length=64)]
    top: Annotated[int, Field(ge=1, le=100)] = 5


class RemindDueTasks(BaseModel):
    """Payload of `crm.task.remind_due`: remind tasks due within `days_ahead` days."""

    org_id: Annotated[str, Field(min_length=1, max_length=64)]
    days_ahead: Annotated[int, Field(ge=0, le=30)] = 1


class RemindersSent(BaseModel):
    """Result of `crm.task.remind_due`."""

    as_of: date
    due_tasks: int
    enqueued: list[str]


class NotifyTask(BaseModel):
    """Payload of `crm.task.notify`: one reminder for one task."""

    org_id: str
    task_id: str
    deal_id: str
    title: str
    due_on: date


nightly_report = define_job(
    "crm.report.nightly",
    payload=NightlyReport,
    result=ReportSummary,
    max_attempts=3,
    backoff=exponential(base=60, cap=900),
    timeout=timedelta(minutes=10),
    queue="reports",
    description="The sales summary of one org, computed every night and kept as the job result.",
    owners=("sales-platform",),
)
remind_due_tasks = define_job(
    "crm.task.remind_due",
    payload=RemindDueTasks,
    result=RemindersSent,
    max_attempts=5,
    timeout=timedelta(minutes=2),
    description="Find open tasks due soon and enqueue one reminder per task.",
    owners=("sales-platform",),
)
notify_task = define_job(
    "crm.task.notify",
    payload=NotifyTask,
    max_attempts=8,
    backoff=exponential(base=30, cap=3600),
    timeout=30,
    unique_key="remind:{task_id}:{due_on}",
    description="Send one task reminder (deduplicated per task and due date).",
    owners=("sales-platform",),
)

nightly_schedule = define_schedule(
    nightly_report,
    cron="0 3 * * *",
    timezone="Europe/Paris",
    payload=NightlyReport(org_id="acme"),
    misfire_grace=timedelta(hours=2),
    description="Every night at 03:00 Paris time.",
)
reminders_schedule = define_schedule(
    remind_due_tasks,
    cron="0 8 * * mon-fri",
    timezone="Europe/Paris",
    payload=RemindDueTasks(org_id="acme"),
    description="Weekdays at 08:00 Paris time.",
)

#: The jobs side of the CRM spec (the operations live in `crm_pipeline.spec.registry`).
jobs_registry = SpecRegistry(
    nightly_report, remind_due_tasks, notify_task, nightly_schedule, reminders_schedule
)
