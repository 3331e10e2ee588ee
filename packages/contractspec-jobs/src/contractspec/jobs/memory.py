"""In-memory job queue and schedule store: tests, prototypes and single-process apps.

Nothing survives the process; use `SqlJobQueue` for durable jobs.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from attrs import evolve
from pydantic import BaseModel

from contractspec.core import Clock, IdGenerator, SpecRegistry, Transaction
from contractspec.jobs.errors import LeaseLostError
from contractspec.jobs.queue import (
    Job,
    JobFactory,
    JobStatus,
    NewJob,
    check_limit,
    check_status,
    lease_error,
)
from contractspec.jobs.specs import JobSpec

__all__ = ["MemoryJobQueue", "MemoryScheduleStore"]

_LEASABLE = (JobStatus.QUEUED, JobStatus.FAILED)


class MemoryJobQueue:
    """A `JobQueue` held in a dict: the reference behaviour of every adapter.

    With a transaction, `enqueue` adds the job only when the transaction commits.

    Args:
        specs: `SpecRegistry` or job specs used to validate payloads (`None`: no validation).
        clock: Time source (e.g. `FakeClock` in tests).
        ids: Id source.
    """

    def __init__(
        self,
        specs: SpecRegistry | Sequence[JobSpec[Any]] | None = None,
        *,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        self._factory = JobFactory(specs, clock, ids)
        self._jobs: dict[str, Job] = {}
        #: `(org_id or "", unique_key) -> job id`: keys are unique per org.
        self._keys: dict[tuple[str, str], str] = {}
        self._seq = 0
        self._order: dict[str, int] = {}
        self._event: asyncio.Event | None = None
        self._schedules = MemoryScheduleStore()

    def schedule_store(self) -> MemoryScheduleStore:
        """The schedule store shared by every scheduler of this queue."""
        return self._schedules

    @property
    def clock(self) -> Clock:
        """The queue's clock."""
        return self._factory.clock

    @property
    def factory(self) -> JobFactory:
        """Validation and defaults shared with the other adapters."""
        return self._factory

    # -- enqueue --------------------------------------------------------------------------------

    def _store(self, new: NewJob) -> str:
        if new.unique_key is not None:
            scoped = (new.org_id or "", new.unique_key)
            existing = self._keys.get(scoped)
            if existing is not None and existing in self._jobs:
                return existing
            self._keys[scoped] = new.id
        self._jobs[new.id] = Job(
            id=new.id,
            type=new.type,
            payload=new.payload,
            status=JobStatus.QUEUED,
            queue=new.queue,
            priority=new.priority,
            attempts=0,
            max_attempts=new.max_attempts,
            scheduled_at=new.scheduled_at,
            created_at=new.created_at,
            unique_key=new.unique_key,
            org_id=new.org_id,
        )
        self._seq += 1
        self._order[new.id] = self._seq
        self._notify()
        return new.id

    def _store_committed(self, new: NewJob) -> None:
        self._store(new)

    def _notify(self) -> None:
        if self._event is not None:
            self._event.set()

    async def enqueue(
        self,
        job_type: str | JobSpec[Any],
        payload: BaseModel | dict[str, Any],
        *,
        tx: Transaction | None = None,
        **options: Any,
    ) -> str:
        """Validate and store a job (see `JobQueue.enqueue`); with `tx`, on commit."""
        return (await self.enqueue_many([(job_type, payload)], tx=tx, **options))[0]

    async def enqueue_many(
        self,
        jobs: Sequence[tuple[str | JobSpec[Any], BaseModel | dict[str, Any]]],
        *,
        tx: Transaction | None = None,
        **options: Any,
    ) -> list[str]:
        """Enqueue several jobs at once (all validated before any is stored)."""
        built = [self._factory.build(t, p, options) for t, p in jobs]
        if tx is None:
            return [self._store(new) for new in built]
        ids: list[str] = []
        for new in built:
            existing = (
                self._keys.get((new.org_id or "", new.unique_key))
                if new.unique_key is not None
                else None
            )
            if existing is not None and existing in self._jobs:
                ids.append(existing)
                continue
            tx.on_commit(functools.partial(self._store_committed, new))
            ids.append(new.id)
        return ids

    # -- workers ------------------------------------------------------------------------------

    async def lease(
        self,
        *,
        worker_id: str,
        limit: int = 1,
        lease_for: timedelta = timedelta(seconds=30),
        queues: Sequence[str] | None = None,
    ) -> list[Job]:
        """Lease up to `limit` due jobs: highest priority, then earliest `scheduled_at`."""
        check_limit(limit)
        now = self.clock.now()
        due = [
            j
            for j in self._jobs.values()
            if j.status in _LEASABLE
            and j.scheduled_at <= now
            and (queues is None or j.queue in queues)
        ]
        due.sort(key=lambda j: (-j.priority, j.scheduled_at, self._order[j.id]))
        token = self._factory.ids.new_id()
        leased: list[Job] = []
        for job in due[:limit]:
            updated = evolve(
                job,
                status=JobStatus.RUNNING,
                attempts=job.attempts + 1,
                leased_until=now + lease_for,
                lease_token=token,
                worker_id=worker_id,
            )
            self._jobs[job.id] = updated
            leased.append(updated)
        return leased

    def _held(self, job_id: str, lease_token: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNING or job.lease_token != lease_token:
            raise LeaseLostError(
                f"job {job_id!r} is no longer held by this lease (it expired and was taken over, "
                "or was cancelled); its result is dropped",
                details={"job_id": job_id},
            )
        return job

    async def heartbeat(self, job_id: str, lease_token: str, *, lease_for: timedelta) -> bool:
        """Extend the lease; `False` when it was lost."""
        try:
            job = self._held(job_id, lease_token)
        except LeaseLostError:
            return False
        self._jobs[job_id] = evolve(job, leased_until=self.clock.now() + lease_for)
        return True

    async def heartbeat_many(
        self, held: Sequence[tuple[str, str]], *, lease_for: timedelta
    ) -> builtins.list[str]:
        """Extend several leases; returns the ids that were lost."""
        return [
            job_id
            for job_id, token in held
            if not await self.heartbeat(job_id, token, lease_for=lease_for)
        ]

    async def complete(self, job_id: str, lease_token: str, result: Any = None) -> None:
        """Mark the job succeeded."""
        job = self._held(job_id, lease_token)
        self._jobs[job_id] = evolve(
            job,
            status=JobStatus.SUCCEEDED,
            result=result,
            leased_until=None,
            lease_token=None,
            finished_at=self.clock.now(),
        )

    async def complete_many(self, done: Sequence[tuple[str, str, Any]]) -> builtins.list[str]:
        """Complete several jobs; returns the ids whose lease was lost."""
        lost: builtins.list[str] = []
        for job_id, token, result in done:
            try:
                await self.complete(job_id, token, result)
            except LeaseLostError:
                lost.append(job_id)
        return lost

    async def fail(
        self, job_id: str, lease_token: str, error: str, *, retry_at: datetime | None
    ) -> JobStatus:
        """Record a failed run; `failed` with a retry time, or `dead`."""
        job = self._held(job_id, lease_token)
        dead = retry_at is None or job.attempts >= job.max_attempts
        status = JobStatus.DEAD if dead else JobStatus.FAILED
        self._jobs[job_id] = evolve(
            job,
            status=status,
            last_error=lease_error(error),
            leased_until=None,
            lease_token=None,
            scheduled_at=job.scheduled_at if dead or retry_at is None else retry_at,
            finished_at=self.clock.now() if dead else None,
        )
        if not dead:
            self._notify()
        return status

    async def release(self, job_id: str, lease_token: str) -> None:
        """Put the job back unrun."""
        job = self._held(job_id, lease_token)
        self._jobs[job_id] = evolve(
            job,
            status=JobStatus.QUEUED,
            attempts=max(job.attempts - 1, 0),
            leased_until=None,
            lease_token=None,
        )
        self._notify()

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not finished."""
        job = self._jobs.get(job_id)
        if job is None or job.status not in (*_LEASABLE, JobStatus.RUNNING):
            return False
        self._jobs[job_id] = evolve(
            job,
            status=JobStatus.CANCELLED,
            leased_until=None,
            lease_token=None,
            finished_at=self.clock.now(),
        )
        return True

    async def retry(
        self, job_id: str, *, delay: timedelta | None = None, tx: Transaction | None = None
    ) -> bool:
        """Requeue a dead, cancelled or failed job with fresh attempts (undone if `tx` rolls back)."""
        job = self._jobs.get(job_id)
        if job is None or job.status not in (
            JobStatus.DEAD,
            JobStatus.CANCELLED,
            JobStatus.FAILED,
        ):
            return False
        if tx is not None:
            tx.undo_item(self._jobs, job_id)
        self._jobs[job_id] = evolve(
            job,
            status=JobStatus.QUEUED,
            attempts=0,
            scheduled_at=self.clock.now() + (delay or timedelta(0)),
            finished_at=None,
        )
        if tx is not None:
            tx.on_commit(self._notify)
        else:
            self._notify()
        return True

    async def discard(self, job_id: str, *, tx: Transaction | None = None) -> bool:
        """Cancel a dead or failed job (an operator gave up on it); undone if `tx` rolls back."""
        job = self._jobs.get(job_id)
        if job is None or job.status not in (JobStatus.DEAD, JobStatus.FAILED):
            return False
        if tx is not None:
            tx.undo_item(self._jobs, job_id)
        self._jobs[job_id] = evolve(job, status=JobStatus.CANCELLED, finished_at=self.clock.now())
        return True

    async def recover_expired(self) -> int:
        """Requeue (or dead-letter) running jobs whose lease expired."""
        now = self.clock.now()
        count = 0
        for job in builtins.list(self._jobs.values()):
            expired = job.leased_until is not None and job.leased_until < now
            if job.status is JobStatus.RUNNING and expired:
                dead = job.attempts >= job.max_attempts
                self._jobs[job.id] = evolve(
                    job,
                    status=JobStatus.DEAD if dead else JobStatus.QUEUED,
                    leased_until=None,
                    lease_token=None,
                    last_error=_expired_message(job),
                    finished_at=now if dead else None,
                )
                count += 1
        if count:
            self._notify()
        return count

    # -- inspection -----------------------------------------------------------------------------

    async def get(self, job_id: str, *, tx: Transaction | None = None) -> Job | None:
        """The job, or `None` (`tx` changes nothing: memory writes are visible at once)."""
        return self._jobs.get(job_id)

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs matching the filters, oldest first."""
        wanted = check_status(status)
        check_limit(limit)
        found = [
            j
            for j in self._jobs.values()
            if (wanted is None or j.status is wanted)
            and (job_type is None or j.type == job_type)
            and (queue is None or j.queue == queue)
        ]
        found.sort(key=lambda j: (j.created_at, self._order[j.id]))
        return found[:limit]

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
        """Jobs of one tenant, newest first, after the keyset cursor `before`."""
        wanted = check_status(status)
        check_limit(limit)
        found = [
            j
            for j in self._jobs.values()
            if j.org_id == org_id
            and (wanted is None or j.status is wanted)
            and (job_type is None or j.type == job_type)
            and (before is None or (j.created_at, j.id) < before)
        ]
        found.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return found[:limit]

    async def counts(self, *, queue: str | None = None) -> dict[JobStatus, int]:
        """Jobs per status."""
        result = dict.fromkeys(JobStatus, 0)
        for job in self._jobs.values():
            if queue is None or job.queue == queue:
                result[job.status] += 1
        return result

    async def purge(
        self,
        *,
        older_than: timedelta,
        statuses: Sequence[JobStatus] = (JobStatus.SUCCEEDED, JobStatus.CANCELLED),
    ) -> int:
        """Delete finished jobs older than `older_than`."""
        cutoff = self.clock.now() - older_than
        doomed = [
            j.id
            for j in self._jobs.values()
            if j.status in statuses and j.finished_at is not None and j.finished_at < cutoff
        ]
        for job_id in doomed:
            job = self._jobs.pop(job_id)
            self._order.pop(job_id, None)
            scoped = (job.org_id or "", job.unique_key or "")
            if job.unique_key is not None and self._keys.get(scoped) == job_id:
                del self._keys[scoped]
        return len(doomed)

    async def wait_for_jobs(self, max_wait: float) -> None:
        """Return when a job may have become available, or after `timeout` seconds."""
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), max_wait)
        except TimeoutError:
            pass
        finally:
            self._event.clear()

    async def close(self) -> None:
        """Nothing to release."""

    async def next_due(self, queues: Sequence[str] | None = None) -> datetime | None:
        """Earliest `scheduled_at` of a leasable job, or `None`."""
        times = [
            j.scheduled_at
            for j in self._jobs.values()
            if j.status in _LEASABLE and (queues is None or j.queue in queues)
        ]
        return min(times, default=None)


def _expired_message(job: Job) -> str:
    return (
        f"lease expired at {job.leased_until.isoformat() if job.leased_until else '?'} while "
        f"worker {job.worker_id!r} ran attempt {job.attempts}/{job.max_attempts} (the worker "
        "died or stalled); "
        + ("no attempts left" if job.attempts >= job.max_attempts else "requeued")
    )


class MemoryScheduleStore:
    """Next fire time per schedule, in memory (see `ScheduleStore`)."""

    def __init__(self) -> None:
        self._next: dict[str, datetime | None] = {}

    async def load(self, name: str) -> tuple[bool, datetime | None]:
        """`(known, next_fire_at)` of a schedule."""
        if name in self._next:
            return True, self._next[name]
        return False, None

    async def advance(
        self,
        name: str,
        expected: datetime | None,
        known: bool,
        next_fire_at: datetime | None,
        enqueue: list[tuple[JobSpec[Any], dict[str, Any], dict[str, Any]]],
        queue: Any,
    ) -> bool:
        """Move a schedule to `next_fire_at` if it is still at `expected`, enqueueing `enqueue`."""
        current_known = name in self._next
        if current_known != known or (known and self._next[name] != expected):
            return False
        for spec, payload, options in enqueue:
            await queue.enqueue(spec, payload, **options)
        self._next[name] = next_fire_at
        return True
