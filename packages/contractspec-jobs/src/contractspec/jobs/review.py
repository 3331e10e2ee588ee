"""Review queues of dead and failed jobs as spec operations (list, show, retry, discard).

```python
from contractspec.jobs.review import register_review_operations

review = register_review_operations(registry, queue=queue)   # adds 8 operations + 4 events
executor = Executor(registry, policy=RolePermissions({"ops": {"jobs.review.*"}}), jobs=queue)
page = await executor.execute("jobs.review.dead.list", {"limit": 20}, ctx)
```

Two queues, one per status a reviewer acts on:

| operation | kind | permission | effect |
|---|---|---|---|
| `jobs.review.dead.list` / `jobs.review.failed.list` | query | `jobs.review.read` | newest first, `{items, next_cursor}` |
| `jobs.review.dead.show` / `jobs.review.failed.show` | query | `jobs.review.read` | one job |
| `jobs.review.dead.retry` / `jobs.review.failed.retry` | command | `jobs.review.act` | `JobQueue.retry`: queued now, fresh attempts |
| `jobs.review.dead.discard` / `jobs.review.failed.discard` | command | `jobs.review.act` | `JobQueue.discard`: cancelled for good |

Each action emits `jobs.review.<queue>.retried` / `.discarded` (so the audit trail and the outbox
record who acted, on which job, with which comment). Everything is scoped to the caller's tenant
(`ctx.org_id`): a job of another org is reported as not found; a caller without an org sees only
the jobs enqueued without one.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any

from attrs import define
from pydantic import BaseModel, Field

from contractspec.core import (
    PII,
    ConflictError,
    HandlerCtx,
    NotFoundError,
    SpecRegistry,
    SpecValidationError,
    define_command,
    define_event,
    define_query,
    requires,
)
from contractspec.core.specs import EventSpec, OperationSpec
from contractspec.jobs.queue import Job, JobQueue, JobStatus

__all__ = [
    "ACT_PERMISSION",
    "READ_PERMISSION",
    "JobActionInput",
    "JobActionResult",
    "JobReviewed",
    "ReviewJob",
    "ReviewJobList",
    "ReviewJobListInput",
    "ReviewJobShowInput",
    "ReviewOperations",
    "register_review_operations",
]

#: Permission of the list and show queries.
READ_PERMISSION = "jobs.review.read"
#: Permission of the retry and discard commands.
ACT_PERMISSION = "jobs.review.act"

_QUEUES = {"dead": JobStatus.DEAD, "failed": JobStatus.FAILED}
_TAGS = ("jobs", "review")


class ReviewJob(BaseModel):
    """A job as a reviewer sees it.

    Timestamps are UTC. `payload` and `last_error` may carry personal data and are redacted in
    audit records and recorded traffic.
    """

    id: str
    type: str
    status: JobStatus
    queue: str
    priority: int
    attempts: int = Field(description="Runs started since the last (re)queue.")
    max_attempts: int
    org_id: str | None
    created_at: datetime
    scheduled_at: datetime = Field(description="For a failed job: when it runs again.")
    finished_at: datetime | None
    last_error: Annotated[str | None, PII]
    payload: Annotated[dict[str, Any], PII]


class ReviewJobListInput(BaseModel):
    """Input of `jobs.review.<queue>.list`."""

    limit: int = Field(50, ge=1, le=200, description="Page size (1..200).")
    cursor: str | None = Field(
        None, max_length=400, description="`next_cursor` of the previous page; omit for the first."
    )
    job_type: str | None = Field(None, max_length=200, description="Only jobs of this type.")


class ReviewJobList(BaseModel):
    """One page of jobs, newest first."""

    items: list[ReviewJob]
    next_cursor: str | None = Field(description="Pass back as `cursor`; `None` on the last page.")


class ReviewJobShowInput(BaseModel):
    """Input of `jobs.review.<queue>.show`."""

    job_id: str = Field(min_length=1, max_length=64)


class JobActionInput(BaseModel):
    """Input of `jobs.review.<queue>.retry` and `.discard`."""

    job_id: str = Field(min_length=1, max_length=64)
    comment: str | None = Field(
        None, max_length=2000, description="Why; recorded in the emitted event."
    )


class JobActionResult(BaseModel):
    """The job after the action."""

    job: ReviewJob


class JobReviewed(BaseModel):
    """Payload of `jobs.review.<queue>.retried` and `.discarded`."""

    job_id: str
    job_type: str
    previous_status: JobStatus
    status: JobStatus
    comment: str | None = Field(None, description="The reviewer's reason (kept in the audit).")


@define(frozen=True)
class ReviewOperations:
    """What `register_review_operations` added to the registry.

    Attributes:
        operations: The operation specs (queries then commands), by name.
        events: The event specs the commands emit, by name.
        permissions: `(read, act)`: `jobs.review.read` and `jobs.review.act`.
    """

    operations: dict[str, OperationSpec]
    events: dict[str, EventSpec]
    permissions: tuple[str, str] = (READ_PERMISSION, ACT_PERMISSION)


def _specs(name: str) -> tuple[list[OperationSpec], list[EventSpec]]:
    prefix = f"jobs.review.{name}"
    retried = define_event(
        f"{prefix}.retried",
        payload=JobReviewed,
        key="job_id",
        tags=_TAGS,
        description=f"A reviewer requeued a {name} job.",
    )
    discarded = define_event(
        f"{prefix}.discarded",
        payload=JobReviewed,
        key="job_id",
        tags=_TAGS,
        description=f"A reviewer gave up on a {name} job (it is cancelled).",
    )
    ops = [
        define_query(
            f"{prefix}.list",
            input=ReviewJobListInput,
            output=ReviewJobList,
            auth=requires(READ_PERMISSION, resource="jobs.job"),
            tags=_TAGS,
            description=f"{name.capitalize()} jobs of the caller's org, newest first.",
        ),
        define_query(
            f"{prefix}.show",
            input=ReviewJobShowInput,
            output=ReviewJob,
            auth=requires(READ_PERMISSION, resource="jobs.job"),
            errors=[NotFoundError],
            tags=_TAGS,
            description=f"One {name} job of the caller's org, with its payload and last error.",
        ),
        define_command(
            f"{prefix}.retry",
            input=JobActionInput,
            output=JobActionResult,
            auth=requires(ACT_PERMISSION, resource="jobs.job"),
            emits=[retried],
            idempotent=True,
            errors=[NotFoundError, ConflictError],
            tags=_TAGS,
            description=f"Requeue a {name} job now with fresh attempts.",
        ),
        define_command(
            f"{prefix}.discard",
            input=JobActionInput,
            output=JobActionResult,
            auth=requires(ACT_PERMISSION, resource="jobs.job"),
            emits=[discarded],
            idempotent=True,
            errors=[NotFoundError, ConflictError],
            tags=_TAGS,
            description=f"Give up on a {name} job: it becomes cancelled and never runs again.",
        ),
    ]
    return ops, [retried, discarded]


def _item(job: Job) -> ReviewJob:
    return ReviewJob(
        id=job.id,
        type=job.type,
        status=job.status,
        queue=job.queue,
        priority=job.priority,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        org_id=job.org_id,
        created_at=job.created_at,
        scheduled_at=job.scheduled_at,
        finished_at=job.finished_at,
        last_error=job.last_error,
        payload=dict(job.payload),
    )


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, _, job_id = base64.urlsafe_b64decode(cursor.encode("ascii")).decode().partition("|")
        when = datetime.fromisoformat(at)
    except (ValueError, UnicodeError, binascii.Error):
        when, job_id = None, ""
    if when is None or when.tzinfo is None or not job_id:
        raise SpecValidationError(
            f"cursor {cursor!r} is not valid: pass back the next_cursor of a previous page "
            "(or omit it for the first page)",
            details={"field": "cursor"},
        )
    return when, job_id


def register_review_operations(registry: SpecRegistry, *, queue: JobQueue) -> ReviewOperations:
    """Register the dead- and failed-job review operations and their handlers in `registry`.

    The handlers act through `queue`'s public API (`browse`, `get`, `retry`, `discard`), always
    within the caller's org (`ctx.org_id`). Grant `jobs.review.read` to see the queues and
    `jobs.review.act` to retry or discard (`RolePermissions({"ops": {"jobs.review.*"}})`).

    Args:
        registry: The application's registry (its executor runs the operations).
        queue: The job queue to review (`MemoryJobQueue` or `SqlJobQueue`).

    Returns:
        The registered operation and event specs.

    Raises:
        SpecDefinitionError: Operations of these names are already registered.
    """
    operations: dict[str, OperationSpec] = {}
    events: dict[str, EventSpec] = {}
    for name, status in _QUEUES.items():
        ops, emitted = _specs(name)
        registry.register(*emitted, *ops)
        operations.update((op.name, op) for op in ops)
        events.update((e.name, e) for e in emitted)
        _bind(registry, queue, name, status, ops, emitted)
    return ReviewOperations(operations=operations, events=events)


def _bind(
    registry: SpecRegistry,
    queue: JobQueue,
    name: str,
    status: JobStatus,
    ops: list[OperationSpec],
    emitted: list[EventSpec],
) -> None:
    list_op, show_op, retry_op, discard_op = ops
    retried, discarded = emitted

    async def find(job_id: str, ctx: HandlerCtx) -> Job:
        job = await queue.get(job_id, tx=ctx.tx)
        if job is None or job.org_id != ctx.org_id:
            raise NotFoundError(
                f"job {job_id!r} does not exist in this org", details={"field": "job_id"}
            )
        return job

    @registry.handler(list_op)
    async def list_jobs(inp: ReviewJobListInput, ctx: HandlerCtx) -> ReviewJobList:
        before = _decode_cursor(inp.cursor) if inp.cursor is not None else None
        jobs = await queue.browse(
            org_id=ctx.org_id,
            status=status,
            job_type=inp.job_type,
            limit=inp.limit + 1,
            before=before,
            tx=ctx.tx,
        )
        page = jobs[: inp.limit]
        more = len(jobs) > inp.limit
        return ReviewJobList(
            items=[_item(j) for j in page], next_cursor=_encode_cursor(page[-1]) if more else None
        )

    @registry.handler(show_op)
    async def show_job(inp: ReviewJobShowInput, ctx: HandlerCtx) -> ReviewJob:
        job = await find(inp.job_id, ctx)
        if job.status is not status:
            raise NotFoundError(
                f"job {inp.job_id!r} is {job.status.value}, not {status.value}",
                details={"field": "job_id"},
            )
        return _item(job)

    async def act(inp: JobActionInput, ctx: HandlerCtx, *, retry: bool) -> JobActionResult:
        job = await find(inp.job_id, ctx)
        done = (
            await queue.retry(job.id, tx=ctx.tx)
            if job.status is status and retry
            else await queue.discard(job.id, tx=ctx.tx)
            if job.status is status
            else False
        )
        if not done:
            verb = "retried" if retry else "discarded"
            raise ConflictError(
                f"job {job.id!r} is {job.status.value}, not {status.value}: only {name} jobs "
                f"can be {verb} from this queue",
                details={"field": "job_id", "status": job.status.value},
            )
        after = await queue.get(job.id, tx=ctx.tx)
        assert after is not None
        ctx.emit(
            retried if retry else discarded,
            JobReviewed(
                job_id=job.id,
                job_type=job.type,
                previous_status=job.status,
                status=after.status,
                comment=inp.comment,
            ),
        )
        ctx.log.info(
            "contractspec.jobs.review", job_id=job.id, action="retry" if retry else "discard"
        )
        return JobActionResult(job=_item(after))

    @registry.handler(retry_op)
    async def retry_job(inp: JobActionInput, ctx: HandlerCtx) -> JobActionResult:
        return await act(inp, ctx, retry=True)

    @registry.handler(discard_op)
    async def discard_job(inp: JobActionInput, ctx: HandlerCtx) -> JobActionResult:
        return await act(inp, ctx, retry=False)
