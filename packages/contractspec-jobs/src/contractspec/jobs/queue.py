"""The `JobQueue` protocol, the job record, and what every adapter shares.

A job moves through these statuses:

```text
queued --lease--> running --complete--> succeeded
   ^                 |  \\--fail, attempts left--> failed --(retry time)--> running ...
   |                 |   \\-fail, none left / no handler--> dead
   |                 \\--lease expired (worker lost)--> queued (or dead when out of attempts)
   \\--release (graceful shutdown)
queued/failed/running --cancel--> cancelled;  dead/cancelled/failed --retry--> queued
```
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from attrs import define
from pydantic import BaseModel

from contractspec.core import (
    Clock,
    IdGenerator,
    SpecRegistry,
    SpecValidationError,
    SystemClock,
    Transaction,
    UuidGenerator,
)
from contractspec.jobs.errors import UnknownJobTypeError
from contractspec.jobs.specs import _QUEUE, DEFAULT_QUEUE, JobSpec

__all__ = ["ACTIVE_STATUSES", "FINAL_STATUSES", "Job", "JobQueue", "JobStatus", "NewJob"]


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    """Waiting for its scheduled time and a free worker."""
    RUNNING = "running"
    """Leased by a worker until `leased_until`."""
    SUCCEEDED = "succeeded"
    """Finished; `result` holds the handler's return value."""
    FAILED = "failed"
    """The last attempt failed; it runs again at `scheduled_at` (retry with backoff)."""
    DEAD = "dead"
    """Out of attempts, or not runnable (no handler, invalid payload): the dead letter."""
    CANCELLED = "cancelled"
    """Cancelled by an operator or the application."""


#: Statuses a worker may still lease (or is running).
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.RUNNING})
#: Statuses that never change without an operator's `retry()`.
FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED})


@define(frozen=True)
class Job:
    """One job as stored by a queue.

    Attributes:
        id: Unique id (UUIDv7 by default).
        type: The job type (`JobSpec.name`).
        payload: JSON form of the validated payload.
        status: Current `JobStatus`.
        queue: Queue name.
        priority: Higher runs first.
        attempts: Runs started so far (incremented when leased).
        max_attempts: Runs allowed before dead letter.
        scheduled_at: Earliest time (UTC) it may run; the retry time after a failure.
        created_at: When it was enqueued (UTC).
        leased_until: When the current lease expires (running jobs), else `None`.
        lease_token: Token of the current lease; `complete`/`fail`/`heartbeat` must present it.
        worker_id: The worker holding (or last holding) the job.
        unique_key: Deduplication key, if any.
        org_id: Tenant the job belongs to, if any.
        last_error: Message of the last failure.
        result: JSON result of a succeeded job.
        finished_at: When it reached succeeded, dead or cancelled (UTC).
    """

    id: str
    type: str
    payload: dict[str, Any]
    status: JobStatus
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    leased_until: datetime | None = None
    lease_token: str | None = None
    worker_id: str | None = None
    unique_key: str | None = None
    org_id: str | None = None
    last_error: str | None = None
    result: Any = None
    finished_at: datetime | None = None


@define(frozen=True)
class NewJob:
    """A validated job ready to be stored (what `enqueue` builds; adapters persist it)."""

    id: str
    type: str
    payload: dict[str, Any]
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    unique_key: str | None
    org_id: str | None


@runtime_checkable
class JobQueue(Protocol):
    """A durable queue of jobs. `MemoryJobQueue` and `SqlJobQueue` implement it.

    Every queue is also core's `JobEnqueuer`, so `Executor(jobs=queue)` lets handlers call
    `ctx.enqueue(...)` inside their transaction.
    """

    @property
    def clock(self) -> Clock:
        """The queue's clock (UTC): scheduled times and leases are computed with it."""
        ...

    async def enqueue(
        self,
        job_type: str | JobSpec[Any],
        payload: BaseModel | dict[str, Any],
        *,
        tx: Transaction | None = None,
        **options: Any,
    ) -> str:
        """Validate and store a job; return its id (the existing job's id for a taken unique key).

        Options: `delay` (timedelta or seconds), `scheduled_at` (aware datetime), `priority`,
        `queue`, `unique_key`, `max_attempts`, `org_id`.

        Raises:
            SpecValidationError: Invalid payload or option.
            UnknownJobTypeError: The type is not registered.
        """
        ...

    async def enqueue_many(
        self,
        jobs: Sequence[tuple[str | JobSpec[Any], BaseModel | dict[str, Any]]],
        *,
        tx: Transaction | None = None,
        **options: Any,
    ) -> list[str]:
        """Enqueue several jobs in one transaction (one round trip per table on SQL)."""
        ...

    async def lease(
        self,
        *,
        worker_id: str,
        limit: int = 1,
        lease_for: timedelta = timedelta(seconds=30),
        queues: Sequence[str] | None = None,
    ) -> list[Job]:
        """Lease up to `limit` due jobs (highest priority, then oldest), marking them running.

        Each leased job's `attempts` is incremented and `leased_until = now + lease_for`.
        """
        ...

    async def heartbeat(self, job_id: str, lease_token: str, *, lease_for: timedelta) -> bool:
        """Extend a lease; `False` when it was lost (expired and taken over, or cancelled)."""
        ...

    async def heartbeat_many(
        self, held: Sequence[tuple[str, str]], *, lease_for: timedelta
    ) -> list[str]:
        """Extend several leases (`(job_id, lease_token)` pairs); returns the ids that were lost."""
        ...

    async def complete(self, job_id: str, lease_token: str, result: Any = None) -> None:
        """Mark a leased job succeeded with its JSON result.

        Raises:
            LeaseLostError: The caller no longer holds the job.
        """
        ...

    async def complete_many(self, done: Sequence[tuple[str, str, Any]]) -> list[str]:
        """Complete several leased jobs at once: `(job_id, lease_token, result)` triples.

        Returns the ids whose lease was lost (their results are dropped); never raises for them.
        """
        ...

    async def fail(
        self, job_id: str, lease_token: str, error: str, *, retry_at: datetime | None
    ) -> JobStatus:
        """Record a failed run: `failed` (runs again at `retry_at`) or `dead` (`retry_at=None`,
        or no attempts left). Returns the new status.

        Raises:
            LeaseLostError: The caller no longer holds the job.
        """
        ...

    async def release(self, job_id: str, lease_token: str) -> None:
        """Give a leased job back unrun (graceful shutdown): queued again, attempt not counted."""
        ...

    async def cancel(self, job_id: str) -> bool:
        """Cancel a queued, failed or running job; `False` if it already finished or is unknown.

        A running job's worker notices at its next heartbeat and cancels the handler.
        """
        ...

    async def retry(
        self, job_id: str, *, delay: timedelta | None = None, tx: Transaction | None = None
    ) -> bool:
        """Requeue a dead, cancelled or failed job now (or after `delay`) with fresh attempts.

        With `tx` (a handler's `ctx.tx`), the change commits or rolls back with the call.
        """
        ...

    async def discard(self, job_id: str, *, tx: Transaction | None = None) -> bool:
        """Give up on a dead or failed job: it becomes `cancelled` (finished now) and never runs
        again unless retried; `False` if it is in another status or unknown. With `tx`, the
        change commits or rolls back with the call."""
        ...

    async def recover_expired(self) -> int:
        """Requeue running jobs whose lease expired (their worker died); dead-letter those out
        of attempts. Workers call it periodically; returns how many jobs were recovered."""
        ...

    async def get(self, job_id: str, *, tx: Transaction | None = None) -> Job | None:
        """The job, or `None`; with `tx`, as that transaction sees it."""
        ...

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Jobs filtered by status, type and queue, oldest first (at most `limit`)."""
        ...

    async def browse(
        self,
        *,
        org_id: str | None,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        before: tuple[datetime, str] | None = None,
        tx: Transaction | None = None,
    ) -> builtins.list[Job]:
        """Jobs of exactly one tenant, newest first (`created_at`, then `id`, descending).

        Args:
            org_id: The tenant; `None` selects the jobs enqueued without an org (never all).
            status: Only jobs in this status.
            job_type: Only jobs of this type.
            limit: At most this many (1..10000).
            before: Keyset cursor: only jobs strictly older than this `(created_at, id)`, i.e.
                the last job of the previous page.
            tx: Read inside this transaction (a handler's `ctx.tx`) instead of a new connection.

        Raises:
            SpecValidationError: Unknown status or a limit outside 1..10000.
        """
        ...

    async def counts(self, *, queue: str | None = None) -> dict[JobStatus, int]:
        """Number of jobs per status (every status present, zero when none)."""
        ...

    async def purge(self, *, older_than: timedelta, statuses: Sequence[JobStatus] = ...) -> int:
        """Delete finished jobs (default: succeeded and cancelled) that finished before
        `now - older_than`; returns how many were deleted."""
        ...

    async def wait_for_jobs(self, max_wait: float) -> None:
        """Return when jobs may have become available, or after `max_wait` seconds."""
        ...

    async def close(self) -> None:
        """Release connections held for waiting (never the engine)."""
        ...


_OPTIONS = frozenset(
    {"delay", "scheduled_at", "priority", "queue", "unique_key", "max_attempts", "org_id"}
)


class JobFactory:
    """Validates `enqueue` calls into `NewJob`s (shared by every adapter).

    Args:
        specs: A `SpecRegistry` (its `job` specs), job specs, or `None` to accept any type with
            a JSON-object payload and no validation.
        clock: Time source (UTC).
        ids: Id source (UUIDv7 by default).
    """

    __slots__ = ("_registry", "_specs", "clock", "ids")

    def __init__(
        self,
        specs: SpecRegistry | Sequence[JobSpec[Any]] | None,
        clock: Clock | None,
        ids: IdGenerator | None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self._registry = specs if isinstance(specs, SpecRegistry) else None
        self._specs: dict[str, JobSpec[Any]] | None = None
        if specs is not None and not isinstance(specs, SpecRegistry):
            self._specs = {s.name: s for s in specs}

    def spec(self, job_type: str) -> JobSpec[Any] | None:
        """The spec of `job_type` (latest version), `None` in untyped mode.

        Raises:
            UnknownJobTypeError: Typed mode and the type is not registered.
        """
        if self._registry is not None:
            versions = self._registry.versions(job_type, kind="job")
            if versions:
                spec = self._registry.get_spec("job", job_type, versions[-1])
                assert isinstance(spec, JobSpec)
                return spec
            known = sorted(s.name for s in self._registry.specs("job"))
        elif self._specs is not None:
            found = self._specs.get(job_type)
            if found is not None:
                return found
            known = sorted(self._specs)
        else:
            return None
        raise UnknownJobTypeError(
            f"unknown job type {job_type!r}; register its spec (define_job) in the queue's "
            f"registry (registered: {', '.join(known) or 'none'})",
            details={"job": job_type},
        )

    def build(
        self, job_type: str | JobSpec[Any], payload: Any, options: Mapping[str, Any]
    ) -> NewJob:
        """Validate a payload and options into a `NewJob`.

        Raises:
            SpecValidationError: Invalid payload or option (the message names it).
            UnknownJobTypeError: Unknown type.
        """
        if isinstance(job_type, JobSpec):
            spec: JobSpec[Any] | None = job_type
            job_type = job_type.name
        else:
            spec = self.spec(job_type)
        unknown = set(options) - _OPTIONS
        if unknown:
            raise SpecValidationError(
                f"unknown enqueue option(s) {', '.join(sorted(unknown))} for {job_type!r}; "
                f"use {', '.join(sorted(_OPTIONS))}",
                details={"job": job_type, "field": sorted(unknown)[0]},
            )
        if spec is not None:
            value = spec.validate_payload(payload)
            data = value.model_dump(mode="json")
            key = spec.key_for(value)
            queue, priority, attempts = spec.queue, spec.priority, spec.max_attempts
        else:
            if isinstance(payload, BaseModel):
                data = payload.model_dump(mode="json")
            elif isinstance(payload, Mapping):
                data = dict(payload)
            else:
                raise SpecValidationError(
                    f"the payload of {job_type!r} must be a pydantic model or a mapping, got "
                    f"{type(payload).__name__}",
                    details={"job": job_type, "field": "payload"},
                )
            key, queue, priority, attempts = None, DEFAULT_QUEUE, 0, 5
        now = self.clock.now()
        scheduled = now
        if options.get("scheduled_at") is not None:
            when = options["scheduled_at"]
            if not isinstance(when, datetime) or when.tzinfo is None:
                raise _option_error(job_type, "scheduled_at", "a timezone-aware datetime", when)
            scheduled = when
        if options.get("delay") is not None:
            delay = options["delay"]
            if isinstance(delay, int | float) and not isinstance(delay, bool):
                delay = timedelta(seconds=delay)
            if not isinstance(delay, timedelta) or delay < timedelta(0):
                raise _option_error(
                    job_type, "delay", "a non-negative timedelta or number of seconds", delay
                )
            scheduled = scheduled + delay
        if options.get("queue") is not None:
            queue = options["queue"]
            if not isinstance(queue, str) or not _QUEUE.match(queue):
                raise _option_error(job_type, "queue", "1-100 letters, digits or '_.:-'", queue)
        if options.get("priority") is not None:
            priority = options["priority"]
            if (
                isinstance(priority, bool)
                or not isinstance(priority, int)
                or abs(priority) > 2**31 - 1
            ):
                raise _option_error(job_type, "priority", "a 32-bit integer", priority)
        if options.get("max_attempts") is not None:
            attempts = options["max_attempts"]
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
                raise _option_error(job_type, "max_attempts", "an integer >= 1", attempts)
        if options.get("unique_key") is not None:
            key = options["unique_key"]
            if not isinstance(key, str) or not key or len(key) > 200:
                raise _option_error(job_type, "unique_key", "a string of 1-200 characters", key)
        org_id = options.get("org_id")
        if org_id is not None and (not isinstance(org_id, str) or len(org_id) > 200):
            raise _option_error(job_type, "org_id", "a string of at most 200 characters", org_id)
        return NewJob(
            id=self.ids.new_id(),
            type=job_type,
            payload=data,
            queue=queue,
            priority=priority,
            max_attempts=attempts,
            scheduled_at=scheduled,
            created_at=now,
            unique_key=key,
            org_id=org_id,
        )


def _option_error(job_type: str, name: str, expected: str, got: object) -> SpecValidationError:
    return SpecValidationError(
        f"enqueue option {name}= of {job_type!r} must be {expected}, got {got!r}",
        details={"job": job_type, "field": name},
    )


def check_limit(limit: object) -> int:
    """Validate a `limit` argument.

    Raises:
        SpecValidationError: Not an integer in 1..10000.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise SpecValidationError(
            f"limit must be an integer between 1 and 10000, got {limit!r}",
            details={"field": "limit"},
        )
    return limit


def check_status(status: JobStatus | str | None) -> JobStatus | None:
    """Validate a status filter.

    Raises:
        SpecValidationError: Not a `JobStatus` value.
    """
    if status is None:
        return None
    try:
        return JobStatus(status)
    except ValueError:
        raise SpecValidationError(
            f"status {status!r} is not one of {', '.join(s.value for s in JobStatus)}",
            details={"field": "status"},
        ) from None


def lease_error(error: str) -> str:
    """Trim an error message for storage (at most 4000 characters)."""
    return error if len(error) <= 4000 else error[:3997] + "..."
