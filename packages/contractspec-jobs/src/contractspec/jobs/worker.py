"""Workers: lease jobs, run their handlers with timeouts and heartbeats, retry or dead-letter them.

```python
from contractspec.jobs import JobHandlers, Worker

handlers = JobHandlers()

@handlers.handler(send_reminder)
async def send(payload: SendReminder, ctx: JobContext) -> None:
    ...

worker = Worker(queue, handlers, concurrency=10)
await worker.run(handle_signals=True)   # until SIGTERM / SIGINT or worker.stop()
```
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from attrs import define
from pydantic import BaseModel, ValidationError

from contractspec.core import ConfigurationError, SpecDefinitionError, SpecValidationError
from contractspec.core._log import get_logger
from contractspec.jobs._health import DatabaseHealth, describe_error
from contractspec.jobs.errors import JobTimeoutError, LeaseLostError
from contractspec.jobs.queue import Job, JobQueue, JobStatus
from contractspec.jobs.specs import JobSpec

__all__ = ["JobContext", "JobHandler", "JobHandlers", "Worker", "WorkerStats"]

_log = get_logger(__name__)

#: `async def handler(payload: Model, ctx: JobContext) -> result`
JobHandler = Callable[[Any, "JobContext"], Awaitable[Any]]
H = TypeVar("H", bound=Callable[..., Awaitable[Any]])


class JobHandlers:
    """Binds handlers to job specs (what a `Worker` can run).

    Example:
        ```python
        handlers = JobHandlers()

        @handlers.handler(nightly_report)
        async def report(payload: NightlyReport, ctx: JobContext) -> ReportResult:
            ...
        ```
    """

    def __init__(self, bindings: Mapping[JobSpec[Any], JobHandler] | None = None) -> None:
        self._by_type: dict[str, tuple[JobSpec[Any], JobHandler]] = {}
        for spec, fn in (bindings or {}).items():
            self.bind(spec, fn)

    def bind(self, spec: JobSpec[Any], handler: JobHandler) -> None:
        """Bind `handler` (an `async def (payload, ctx)`) to `spec`.

        Raises:
            SpecDefinitionError: Not a job spec, not an async callable taking two arguments, or
                the job already has another handler.
        """
        if not isinstance(spec, JobSpec):
            raise SpecDefinitionError(
                f"bind() needs a JobSpec made by define_job(), got {spec!r}",
                details={"field": "spec"},
            )
        fn_call = getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
        if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(fn_call)):
            raise SpecDefinitionError(
                f"the handler of job {spec.ref} must be an async function: "
                f"async def handler(payload: {spec.payload.__name__}, ctx: JobContext)",
                details={"job": spec.ref},
            )
        try:
            params = [
                p
                for p in inspect.signature(handler).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            ]
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            params = []
        if params and len(params) < 2 and params[0].kind is not params[0].VAR_POSITIONAL:
            raise SpecDefinitionError(
                f"the handler of job {spec.ref} must take two arguments (payload, ctx)",
                details={"job": spec.ref},
            )
        current = self._by_type.get(spec.name)
        if current is not None and current[1] is not handler:
            raise SpecDefinitionError(
                f"job {spec.name!r} already has a handler ({getattr(current[1], '__qualname__', current[1])}); "
                "bind one handler per job type",
                details={"job": spec.ref},
            )
        self._by_type[spec.name] = (spec, handler)

    def handler(self, spec: JobSpec[Any]) -> Callable[[H], H]:
        """Decorator form of `bind`."""

        def decorate(fn: H) -> H:
            self.bind(spec, fn)
            return fn

        return decorate

    def get(self, job_type: str) -> tuple[JobSpec[Any], JobHandler] | None:
        """`(spec, handler)` for a job type, or `None`."""
        return self._by_type.get(job_type)

    def specs(self) -> list[JobSpec[Any]]:
        """Bound job specs, by name."""
        return [self._by_type[n][0] for n in sorted(self._by_type)]

    def __len__(self) -> int:
        return len(self._by_type)


class JobContext:
    """What a job handler receives besides its payload.

    Attributes:
        job: The leased `Job` (`job.attempts` is this run's number, starting at 1).
        spec: The job's spec.
        queue: The queue (enqueue follow-up jobs with `ctx.enqueue`).
        worker_id: The worker running the job.
    """

    __slots__ = ("job", "queue", "spec", "worker_id")

    def __init__(self, job: Job, spec: JobSpec[Any], queue: JobQueue, worker_id: str) -> None:
        self.job = job
        self.spec = spec
        self.queue = queue
        self.worker_id = worker_id

    @property
    def attempt(self) -> int:
        """This run's attempt number (1 for the first run)."""
        return self.job.attempts

    @property
    def log(self) -> Any:
        """A structlog logger bound to the job id, type and attempt."""
        return _log.bind(job_id=self.job.id, job_type=self.job.type, attempt=self.job.attempts)

    async def enqueue(
        self, job_type: str | JobSpec[Any], payload: BaseModel | dict[str, Any], **options: Any
    ) -> str:
        """Enqueue a follow-up job (its own transaction)."""
        return await self.queue.enqueue(job_type, payload, **options)


@define
class _Outcome:
    """A finished run whose outcome is not stored yet: its lease is held (and extended) until it is.

    `kind` is `complete` (with `result`), `fail` (with `error` and `retry_at`) or `release`.
    """

    job: Job
    token: str
    kind: Literal["complete", "fail", "release"]
    log: Any
    result: Any = None
    error: str = ""
    retry_at: datetime | None = None


@define
class WorkerStats:
    """Counters of one worker run.

    Attributes:
        succeeded: Jobs completed.
        retried: Failed runs that were scheduled again.
        dead: Jobs sent to dead letter.
        released: Jobs given back unrun at shutdown.
        lost: Runs whose lease was lost (expired or cancelled) before they finished.
        recovered: Expired leases this worker requeued or dead-lettered.
    """

    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0
    lost: int = 0
    recovered: int = 0


class Worker:
    """Runs jobs from a queue, `concurrency` at a time, until stopped.

    Each run is supervised: a heartbeat extends the lease every `heartbeat_every` seconds (a
    worker that dies stops heartbeating, its leases expire and any worker requeues the jobs); a
    run longer than the spec's `timeout` is cancelled (`asyncio` cancellation: the handler's
    `await` raises `CancelledError`) and counted as a failed attempt; a job cancelled by an
    operator is cancelled at the next heartbeat. Failed runs are retried after the spec's backoff
    until `max_attempts`, then dead-lettered. A job whose type has no handler here, or whose
    payload no longer validates, goes to dead letter at once with a message saying why.

    Args:
        queue: The `JobQueue`.
        handlers: `JobHandlers` or a mapping `{spec: handler}`.
        concurrency: Jobs run at once (>= 1).
        queues: Queue names to serve (default: the queues of the handlers' specs).
        lease_for: Lease length; a killed worker's jobs are retried this long after it died.
        heartbeat_every: Seconds between heartbeats (default: a third of `lease_for`).
        poll_interval: Longest idle wait in seconds before polling again (LISTEN/NOTIFY or an
            in-process enqueue wakes the worker sooner).
        recover_every: Seconds between sweeps for expired leases (default: half of `lease_for`).
        shutdown_grace: Seconds `stop()` waits for running jobs before cancelling and releasing
            them.
        worker_id: Identifier stored on leased jobs (default `host:pid:random`).
        rng: Randomness for backoff jitter (seed it in tests).

    Raises:
        ConfigurationError: Invalid settings.
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: JobHandlers | Mapping[JobSpec[Any], JobHandler],
        *,
        concurrency: int = 10,
        queues: Sequence[str] | None = None,
        lease_for: timedelta | float = timedelta(seconds=30),
        heartbeat_every: float | None = None,
        poll_interval: float = 1.0,
        recover_every: float | None = None,
        shutdown_grace: float = 30.0,
        worker_id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.handlers = handlers if isinstance(handlers, JobHandlers) else JobHandlers(handlers)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        self.concurrency = concurrency
        lease = lease_for if isinstance(lease_for, timedelta) else timedelta(seconds=lease_for)
        if lease <= timedelta(0):
            raise ConfigurationError(f"lease_for must be positive, got {lease_for!r}")
        self.lease_for = lease
        seconds = lease.total_seconds()
        self.heartbeat_every = heartbeat_every if heartbeat_every is not None else seconds / 3
        if not 0 < self.heartbeat_every < seconds:
            raise ConfigurationError(
                f"heartbeat_every must be between 0 and lease_for ({seconds}s), got "
                f"{heartbeat_every!r}"
            )
        self.poll_interval = poll_interval
        self.recover_every = recover_every if recover_every is not None else seconds / 2
        self.shutdown_grace = shutdown_grace
        if queues is None:
            queues = sorted({s.queue for s in self.handlers.specs()}) or None
        self.queues = list(queues) if queues is not None else None
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.rng = rng or random.Random()
        self.stats = WorkerStats()
        self._stop = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._running: dict[str, tuple[Job, asyncio.Task[None]]] = {}
        self._lost: dict[str, bool] = {}
        self._outcomes: dict[str, _Outcome] = {}
        self._finished = 0  # runs ended so far: `until_idle` must not miss a retry stored mid-lease
        self._flushing: set[str] = set()
        #: False after a failed database call, until every held lease was extended again.
        self._leases_extended = True
        self._shutting_down = False
        self._log = _log.bind(worker_id=self.worker_id, queues=self.queues)
        self._health = DatabaseHealth(
            self._log,
            base=min(poll_interval, self.heartbeat_every),
            cap=self.heartbeat_every,
            stall_after=self.heartbeat_every,
            rng=self.rng,
        )

    # -- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no new leases; running jobs get `shutdown_grace` seconds."""
        self._stop.set()

    @property
    def running(self) -> int:
        """Jobs running now."""
        return len(self._running)

    @property
    def unrecorded(self) -> int:
        """Finished runs whose outcome is not stored yet (the database did not answer); their
        leases are still held and extended."""
        return len(self._outcomes)

    async def run(self, *, handle_signals: bool = False, until_idle: bool = False) -> WorkerStats:
        """Lease and run jobs until `stop()` (or SIGTERM/SIGINT with `handle_signals=True`).

        When the database does not answer, the worker logs `contractspec.jobs.database_unavailable`
        once, retries with exponential backoff (from `poll_interval` up to `heartbeat_every`), keeps
        extending the leases of running jobs and of finished jobs whose outcome is not stored yet,
        and logs `contractspec.jobs.database_available` once its calls have succeeded, with no
        failure, for `heartbeat_every`; it sweeps for expired leases only after the database has
        answered promptly for a whole `lease_for`.

        Args:
            handle_signals: Install SIGTERM and SIGINT handlers that stop gracefully (main
                thread only).
            until_idle: Return once no job is due and none is running (tests, batch scripts).

        Returns:
            The run's `WorkerStats`.
        """
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
        self._stop.clear()
        log = self._log
        health = self._health
        log.info("contractspec.jobs.worker_started", concurrency=self.concurrency)
        lease_s = self.lease_for.total_seconds()
        next_recover = 0.0
        beats = asyncio.create_task(self._heartbeats(), name="contractspec.jobs.heartbeats")
        try:
            while not self._stop.is_set():
                try:
                    if not self._leases_extended:
                        await self._beat(raise_errors=True)  # extend every lease we hold first
                    await self._flush_outcomes()
                    now = loop.time()
                    if now >= next_recover and health.settled(lease_s):
                        next_recover = now + self.recover_every
                        self.stats.recovered += await health.track(self.queue.recover_expired())
                    free = self.concurrency - len(self._running)
                    finished_before = self._finished
                    jobs = []
                    if free > 0:
                        jobs = await health.track(
                            self.queue.lease(
                                worker_id=self.worker_id,
                                limit=free,
                                lease_for=self.lease_for,
                                queues=self.queues,
                            )
                        )
                except Exception:  # logged once by `health`; back off, our leases are extended
                    self._leases_extended = False
                    await self._pause(health.retry_delay())
                    continue
                if free > 0:
                    for job in jobs:
                        self._start(job)
                    if len(jobs) == free:
                        await asyncio.sleep(0)
                        continue
                    if (
                        until_idle
                        and not jobs
                        and not self._running
                        and not self._outcomes
                        # A run that ended during the lease may have stored a retry (or enqueued
                        # a job) that the lease's snapshot did not see: look again.
                        and self._finished == finished_before
                    ):
                        break
                    if not jobs:
                        until_recover = next_recover - loop.time()
                        await self._idle(until_recover if until_recover > 0 else self.poll_interval)
                        continue
                await self._wait_slot()
        finally:
            deadline = loop.time() + self.shutdown_grace
            try:
                await self._shutdown()
                await self._drain_outcomes(deadline)
            finally:
                beats.cancel()
                await asyncio.gather(beats, return_exceptions=True)
            for sig in installed:
                loop.remove_signal_handler(sig)
            try:
                await self.queue.close()
            except Exception as exc:  # the database is gone: nothing left to release
                log.warning("contractspec.jobs.close_failed", error=describe_error(exc))
            log.info("contractspec.jobs.worker_stopped", stats=str(self.stats))
        return self.stats

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the worker is asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _idle(self, until_recover: float) -> None:
        if self._outcomes:
            return  # results wait to be written: go round the loop now
        timeout = max(0.01, min(self.poll_interval, until_recover))
        stop = asyncio.ensure_future(self._stop.wait())
        other: asyncio.Future[Any]
        if self._running:
            # Jobs are running: wake when one finishes (a free slot) or after the poll interval.
            other = asyncio.ensure_future(self._slot_free.wait())
        else:
            other = asyncio.ensure_future(self.queue.wait_for_jobs(timeout))
        try:
            await asyncio.wait({other, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (other, stop):
                fut.cancel()
            await asyncio.gather(other, stop, return_exceptions=True)
            self._slot_free.clear()

    async def _wait_slot(self) -> None:
        if self.concurrency - len(self._running) > 0:
            return
        slot = asyncio.ensure_future(self._slot_free.wait())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({slot, stop}, return_when=asyncio.FIRST_COMPLETED)
        for fut in (slot, stop):
            fut.cancel()
        await asyncio.gather(slot, stop, return_exceptions=True)
        self._slot_free.clear()
        await asyncio.sleep(0)  # let other finishing jobs free their slots: lease in batches

    # -- leases -----------------------------------------------------------------------------------

    def _held(self) -> list[tuple[str, str]]:
        """`(job_id, lease_token)` of every lease this worker holds: running jobs and finished
        jobs whose outcome is not stored yet."""
        held = [
            (job.id, job.lease_token or "")
            for job, task in list(self._running.values())
            if not task.done()
        ]
        held.extend((o.job.id, o.token) for o in list(self._outcomes.values()))
        return held

    async def _heartbeats(self) -> None:
        """Extend every held lease in one call per `heartbeat_every`, during outages too (the
        call fails until the database answers, then extends the leases at once)."""
        while True:
            await asyncio.sleep(self.heartbeat_every)
            await self._beat()

    async def _beat(self, *, raise_errors: bool = False) -> None:
        """Extend every held lease; cancel runs (and drop outcomes) whose lease is gone (expired
        and taken over, or cancelled by an operator)."""
        held = self._held()
        if not held:
            self._leases_extended = True
            return
        try:
            lost = await self._health.track(
                self.queue.heartbeat_many(held, lease_for=self.lease_for)
            )
        except Exception:  # logged once by `health`; the next beat may succeed within the lease
            self._leases_extended = False
            if raise_errors:
                raise
            return
        self._leases_extended = True
        for job_id in lost:
            entry = self._running.get(job_id)
            if entry is not None and not entry[1].done():
                self._lost[job_id] = True
                entry[1].cancel()
            elif job_id not in self._flushing and self._outcomes.pop(job_id, None) is not None:
                self.stats.lost += 1
                self._log.warning("contractspec.jobs.lease_lost", job_id=job_id)

    # -- outcomes ---------------------------------------------------------------------------------

    async def _flush_outcomes(self) -> None:
        """Store the outcomes of finished runs: completions in one statement (group commit of
        results), then failures and releases that could not be stored when they happened.

        Raises:
            Exception: The database did not answer (the outcomes stay pending).
        """
        if not self._outcomes:
            return
        pending = list(self._outcomes.values())
        completed = [o for o in pending if o.kind == "complete"]
        if completed:
            self._flushing.update(o.job.id for o in completed)
            try:
                lost = await self._health.track(
                    self.queue.complete_many([(o.job.id, o.token, o.result) for o in completed])
                )
            finally:
                self._flushing.clear()
            for o in completed:
                self._outcomes.pop(o.job.id, None)
            self.stats.succeeded += len(completed) - len(lost)
            self.stats.lost += len(lost)
            for job_id in lost:
                self._log.warning("contractspec.jobs.lease_lost_on_complete", job_id=job_id)
        for outcome in pending:
            if outcome.kind != "complete":
                await self._apply(outcome)
                self._outcomes.pop(outcome.job.id, None)

    async def _drain_outcomes(self, deadline: float) -> None:
        """At shutdown: store pending outcomes, retrying until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        while self._outcomes:
            try:
                await self._flush_outcomes()
            except Exception:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    self._log.error(
                        "contractspec.jobs.outcomes_not_recorded",
                        jobs=sorted(self._outcomes),
                        detail="the database did not answer before shutdown_grace ran out; "
                        "these jobs run again when their leases expire",
                    )
                    self._outcomes.clear()
                    return
                await asyncio.sleep(min(self._health.retry_delay(), remaining))

    async def _record(self, outcome: _Outcome) -> None:
        """Store a failure or release now; if the database does not answer, keep it pending
        (its lease stays extended) for the main loop to store."""
        if self._health.available:
            try:
                await self._apply(outcome)
                return
            except Exception:  # logged once by `health`
                pass
        self._outcomes[outcome.job.id] = outcome
        self._slot_free.set()

    async def _apply(self, outcome: _Outcome) -> None:
        """Store a failure or release.

        Raises:
            Exception: The database did not answer.
        """
        job, log = outcome.job, outcome.log
        try:
            if outcome.kind == "release":
                await self._health.track(self.queue.release(job.id, outcome.token))
                self.stats.released += 1
                log.info("contractspec.jobs.released")
                return
            status = await self._health.track(
                self.queue.fail(job.id, outcome.token, outcome.error, retry_at=outcome.retry_at)
            )
        except LeaseLostError:
            self.stats.lost += 1
            return
        if status is JobStatus.DEAD:
            self.stats.dead += 1
            log.error("contractspec.jobs.dead_lettered", error=outcome.error)
        else:
            self.stats.retried += 1
            log.info(
                "contractspec.jobs.retry_scheduled",
                retry_at=str(outcome.retry_at),
                error=outcome.error,
            )

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._supervise(job), name=f"job:{job.type}:{job.id}")
        self._running[job.id] = (job, task)

        def done(finished: asyncio.Task[None]) -> None:
            self._running.pop(job.id, None)
            self._finished += 1
            self._slot_free.set()
            if not finished.cancelled() and finished.exception() is not None:
                # A bug, not the database (its errors keep the outcome pending): the lease
                # expires and the job runs again.
                _log.error(
                    "contractspec.jobs.outcome_not_recorded",
                    job_id=job.id,
                    exc_info=finished.exception(),
                )

        task.add_done_callback(done)

    async def _shutdown(self) -> None:
        if not self._running:
            return
        self._shutting_down = True
        tasks = [t for _, t in self._running.values()]
        _, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace)
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)
        self._shutting_down = False

    # -- one job ----------------------------------------------------------------------------------

    async def _supervise(self, job: Job) -> None:
        token = job.lease_token or ""
        log = _log.bind(job_id=job.id, job_type=job.type, attempt=job.attempts)
        entry = self.handlers.get(job.type)
        if entry is None:
            known = ", ".join(s.name for s in self.handlers.specs()) or "none"
            await self._finish_failed(
                job,
                token,
                f"no handler is registered for job type {job.type!r} on worker {self.worker_id} "
                f"(it serves {known}); bind one with JobHandlers.bind() or route the job to a "
                "queue that a worker with the handler serves",
                retry=False,
                log=log,
            )
            return
        spec, fn = entry
        try:
            payload = spec.validate_payload(job.payload)
        except SpecValidationError as exc:
            await self._finish_failed(
                job, token, f"stored payload no longer validates: {exc.message}", False, log
            )
            return
        ctx = JobContext(job, spec, self.queue, self.worker_id)
        try:
            result = await self._call(fn, payload, ctx, spec.timeout)
        except asyncio.CancelledError:
            if self._lost.pop(job.id, False):
                # The heartbeat found the lease gone (expired and taken over, or cancelled).
                self.stats.lost += 1
                log.warning("contractspec.jobs.lease_lost")
                return
            if not self._shutting_down:
                raise
            # Cancelled by shutdown after the grace period: give the job back unrun.
            await self._record(_Outcome(job, token, "release", log=log))
            return
        except JobTimeoutError as exc:
            await self._finish_failed(job, token, exc.message, True, log)
            return
        except Exception as exc:
            log.warning("contractspec.jobs.job_failed", exc_info=exc)
            await self._finish_failed(job, token, f"{type(exc).__name__}: {exc}", True, log)
            return
        try:
            stored = self._result_json(spec, result)
        except (ValidationError, TypeError) as exc:
            await self._finish_failed(
                job, token, f"the handler returned an invalid result: {exc}", True, log
            )
            return
        self._outcomes[job.id] = _Outcome(job, token, "complete", log=log, result=stored)

    @staticmethod
    async def _call(fn: Any, payload: Any, ctx: JobContext, limit_s: float | None) -> Any:
        if limit_s is None:
            return await fn(payload, ctx)
        cm = asyncio.timeout(limit_s)
        try:
            async with cm:
                return await fn(payload, ctx)
        except TimeoutError:
            if cm.expired():
                raise JobTimeoutError(
                    f"job {ctx.spec.ref} timed out after {limit_s:g}s and was cancelled "
                    f"(attempt {ctx.attempt}/{ctx.job.max_attempts})",
                    details={"job_id": ctx.job.id, "timeout": limit_s},
                ) from None
            raise

    @staticmethod
    def _result_json(spec: JobSpec[Any], result: Any) -> Any:
        if spec.result is not None:
            model = spec.result
            value = (
                result
                if type(result) is model
                else model.model_validate(
                    result.model_dump() if isinstance(result, BaseModel) else result
                )
            )
            return value.model_dump(mode="json")
        if isinstance(result, BaseModel):
            return result.model_dump(mode="json")
        if result is None or isinstance(result, str | int | float | bool | list | dict):
            return result
        raise TypeError(
            f"{type(result).__name__} is not JSON; return a pydantic model, a dict, a list, a "
            "scalar or None (or declare result= on the job spec)"
        )

    async def _finish_failed(self, job: Job, token: str, error: str, retry: bool, log: Any) -> None:
        retry_at = None
        if retry and job.attempts < job.max_attempts:
            spec_entry = self.handlers.get(job.type)
            assert spec_entry is not None
            retry_at = self.queue.clock.now() + spec_entry[0].backoff.delay(job.attempts, self.rng)
        await self._record(_Outcome(job, token, "fail", log=log, error=error, retry_at=retry_at))
