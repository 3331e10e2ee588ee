"""Job specs and helpers shared by the contractspec-jobs tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from contractspec.core import SpecRegistry
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.jobs import JobQueue, MemoryJobQueue, define_job, fixed


class Email(BaseModel):
    to: Annotated[str, Field(min_length=3, max_length=200)]
    subject: str = "hello"


class Report(BaseModel):
    day: str


class ReportResult(BaseModel):
    rows: int


send_email = define_job("mail.send", payload=Email, max_attempts=3, backoff=fixed(0))
nightly_report = define_job(
    "crm.report.nightly", payload=Report, result=ReportResult, queue="reports", priority=5
)
invoice_reminder = define_job(
    "billing.reminder",
    payload=Email,
    unique_key="reminder:{to}",
    max_attempts=2,
    backoff=fixed(60),
)


def build_registry(*extra: Any) -> SpecRegistry:
    """A registry with the test jobs (plus `extra` specs)."""
    return SpecRegistry(send_email, nightly_report, invoice_reminder, *extra)


@asynccontextmanager
async def make_queue(
    kind: str, tmp_path: Path, registry: SpecRegistry, clock: FakeClock
) -> AsyncIterator[JobQueue]:
    """A queue of `kind` (memory, sqlite, postgres) with its tables created."""
    if kind == "memory":
        yield MemoryJobQueue(registry, clock=clock, ids=SequentialIds("job"))
        return
    from contractspec.jobs.sql import SqlJobQueue

    async with temporary_sql_engine(kind, tmp_path) as engine:
        queue = SqlJobQueue(engine, registry, clock=clock, ids=SequentialIds("job"))
        await queue.create_all()
        try:
            yield queue
        finally:
            await queue.close()
