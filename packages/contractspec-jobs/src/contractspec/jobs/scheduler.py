"""The scheduler: turns schedule specs into enqueued jobs at their fire times.

Fire times come from APScheduler 3.x triggers (`ScheduleSpec.trigger()`); the next fire time of
each schedule is persisted (`cs_job_schedules` on SQL), so a restarted scheduler knows what it
missed. Run one scheduler per app instance if you like: each fire is enqueued with the unique key
`schedule:<name>:<fire time>` in the same transaction that moves the schedule forward, so however
many instances race, every fire time is enqueued exactly once.

Misfires: a fire time that is already past when the scheduler gets to it (the app was down, the
event loop was blocked) is still enqueued if it is at most `misfire_grace` late; older ones are
skipped and logged. With `coalesce=True` (the default) several missed fires collapse into the
latest one, as in APScheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from attrs import define

from contractspec.core import ConfigurationError, SpecRegistry
from contractspec.core._log import get_logger
from contractspec.jobs._health import DatabaseHealth
from contractspec.jobs.queue import JobQueue
from contractspec.jobs.specs import JobSpec, ScheduleSpec

__all__ = ["Fire", "ScheduleStore", "Scheduler"]

_log = get_logger(__name__)
_TINY = timedelta(microseconds=1)


@runtime_checkable
class ScheduleStore(Protocol):
    """Persists each schedule's next fire time (`MemoryScheduleStore`, `SqlScheduleStore`)."""

    async def load(self, name: str) -> tuple[bool, datetime | None]:
        """`(known, next_fire_at)`; `known=False` for a schedule never seen."""
        ...

    async def advance(
        self,
        name: str,
        expected: datetime | None,
        known: bool,
        next_fire_at: datetime | None,
        enqueue: list[tuple[JobSpec[Any], dict[str, Any], dict[str, Any]]],
        queue: Any,
    ) -> bool:
        """Atomically move `name` from `expected` to `next_fire_at` and enqueue the fires;
        `False` (and nothing enqueued by this call) if another scheduler moved it first."""
        ...


@define(frozen=True)
class Fire:
    """One fire time handled by `Scheduler.tick()`.

    Attributes:
        schedule: Schedule name.
        fire_time: The fire time (UTC).
        enqueued: `True` if enqueued, `False` if skipped as a misfire (or coalesced away).
    """

    schedule: str
    fire_time: datetime
    enqueued: bool


class Scheduler:
    """Enqueues scheduled jobs at their fire times.

    Args:
        queue: The `JobQueue` fires are enqueued into.
        schedules: A `SpecRegistry` (its `schedule` specs) or schedule specs.
        store: Where next fire times live (default: `queue.schedule_store()` when the queue has
            one, as both built-in queues do).
        max_sleep: Longest sleep in seconds between passes, so schedule changes and other
            instances' progress are picked up; also the longest wait between retries while the
            database does not answer.

    Raises:
        ConfigurationError: Two schedules share a name, or no store is available.
    """

    def __init__(
        self,
        queue: JobQueue,
        schedules: SpecRegistry | Sequence[ScheduleSpec],
        *,
        store: ScheduleStore | None = None,
        max_sleep: float = 30.0,
    ) -> None:
        self.queue = queue
        specs = (
            schedules.specs("schedule") if isinstance(schedules, SpecRegistry) else list(schedules)
        )
        self.schedules: dict[str, ScheduleSpec] = {}
        for spec in specs:
            if spec.name in self.schedules and self.schedules[spec.name] != spec:
                raise ConfigurationError(
                    f"two schedules are named {spec.name!r}; give one of them name=",
                    details={"schedule": spec.name},
                )
            self.schedules[spec.name] = spec
        if store is None:
            factory = getattr(queue, "schedule_store", None)
            if factory is None:
                raise ConfigurationError(
                    f"{type(queue).__name__} has no schedule_store(); pass Scheduler(store=...)"
                )
            store = factory()
        assert store is not None
        self.store: ScheduleStore = store
        self.max_sleep = max_sleep
        self._stop = asyncio.Event()

    def stop(self) -> None:
        """Ask `run()` to return after the current pass."""
        self._stop.set()

    async def tick(self) -> list[Fire]:
        """One pass: enqueue every due fire of every schedule.

        Returns:
            The fire times handled (enqueued or skipped), by schedule then time.
        """
        fires: list[Fire] = []
        for name in sorted(self.schedules):
            fires.extend(await self._tick_one(self.schedules[name]))
        return fires

    async def _tick_one(self, spec: ScheduleSpec) -> list[Fire]:
        log = _log.bind(schedule=spec.name, job_type=spec.job.name)
        for _ in range(5):  # lost races re-read and retry; a handful is plenty
            now = self.queue.clock.now()
            known, next_at = await self.store.load(spec.name)
            if not known or (
                next_at is not None and spec.next_fire_time(next_at - _TINY) != next_at
            ):
                # New schedule, or its definition changed: start from the next fire after now.
                first = spec.next_fire_time(now)
                if await self.store.advance(spec.name, next_at, known, first, [], self.queue):
                    log.info("contractspec.jobs.schedule_initialised", next_fire_at=str(first))
                    return []
                continue
            if next_at is None or next_at > now:
                return []
            due: list[datetime] = []
            skipped: list[datetime] = []
            fire: datetime | None = next_at
            grace = spec.misfire_grace
            if grace is not None and next_at < now - timedelta(seconds=grace):
                # Far behind: skip straight to the first fire inside the grace window.
                skipped.append(next_at)
                fire = spec.next_fire_time(now - timedelta(seconds=grace) - _TINY)
            while fire is not None and fire <= now:
                due.append(fire)
                fire = spec.next_fire_time(fire, previous=fire)
            if spec.coalesce and len(due) > 1:
                skipped.extend(due[:-1])
                due = due[-1:]
            enqueue = [
                (
                    spec.job,
                    dict(spec.payload),
                    {"unique_key": spec.unique_key(t), "scheduled_at": t},
                )
                for t in due
            ]
            if await self.store.advance(spec.name, next_at, True, fire, enqueue, self.queue):
                if skipped:
                    log.warning(
                        "contractspec.jobs.schedule_misfired",
                        skipped_from=str(skipped[0]),
                        skipped=len(skipped),
                        misfire_grace=grace,
                    )
                for t in due:
                    log.info("contractspec.jobs.schedule_fired", fire_time=str(t))
                return [Fire(spec.name, t, False) for t in skipped] + [
                    Fire(spec.name, t, True) for t in due
                ]
        return []

    async def next_wakeup(self) -> datetime | None:
        """The earliest stored next fire time over all schedules, or `None`."""
        times = []
        for name in self.schedules:
            _, at = await self.store.load(name)
            if at is not None:
                times.append(at)
        return min(times, default=None)

    async def run(self, *, handle_signals: bool = False) -> None:
        """Tick, sleep until the next fire time (at most `max_sleep`), repeat until `stop()`.

        When the database does not answer, the scheduler logs
        `contractspec.jobs.database_unavailable` once, retries with exponential backoff (1 s, 2 s,
        4 s, ... up to `max_sleep`) and logs `contractspec.jobs.database_available` once its
        calls have succeeded, with no failure, for `max_sleep`; the fires it missed meanwhile are then enqueued (or skipped) by the
        schedules' `misfire_grace` and `coalesce` rules, each fire time at most once.

        Args:
            handle_signals: Stop on SIGTERM/SIGINT (main thread only).
        """
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self.stop)
                    installed.append(sig)
        self._stop.clear()
        health = DatabaseHealth(
            _log.bind(component="scheduler", schedules=len(self.schedules)),
            base=min(1.0, self.max_sleep),
            cap=self.max_sleep,
        )
        try:
            while not self._stop.is_set():
                try:
                    await health.track(self.tick())
                    wake = await health.track(self.next_wakeup())
                except Exception:  # logged once by `health`: back off, the fires are kept
                    delay = health.retry_delay()
                else:
                    delay = self.max_sleep
                    if wake is not None:
                        until = (wake - self.queue.clock.now()).total_seconds()
                        delay = min(delay, max(until, 0.0))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(delay, 0.01))
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
