"""Whether the database answers: backoff, one log line per state change, and when leases may be
judged expired.

Workers and schedulers wrap every database call in `DatabaseHealth.track`. The first failure logs
`contractspec.jobs.database_unavailable` (one line, never a line per retry) and the first success
after it logs `contractspec.jobs.database_available`; in between, callers wait `retry_delay()`
(exponential, with jitter, capped) before trying again. The database counts as back only once its
calls have succeeded for `cap` seconds with no failure: a database that answers some calls and
fails others (say, heartbeats work but results cannot be stored) stays one outage — one warning, a
backoff that keeps growing — instead of a warning and a recovery per call.

`settled()` tells a worker whether it may sweep for expired leases. A lease that expired while the
database was unreachable (or answering too slowly to extend it) says nothing about its holder: every
worker lost the database at the same time. So a worker sweeps only after the database has answered
it promptly for a whole lease period; by then every live worker has extended its leases again (each
one heartbeats every `heartbeat_every < lease_for`).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable
from typing import Any, TypeVar

from contractspec.core import ConcurrentUpdateError

__all__ = ["DatabaseHealth", "describe_error"]

T = TypeVar("T")

_DRIVER_MODULES = ("sqlalchemy", "psycopg", "sqlite3", "aiosqlite", "asyncpg")


def is_database_error(exc: BaseException) -> bool:
    """Whether `exc` comes from the database or the network (not from a bug in the caller)."""
    if isinstance(exc, OSError | TimeoutError | ConcurrentUpdateError):
        return True
    return any(
        klass.__module__.split(".")[0] in _DRIVER_MODULES for klass in type(exc).__mro__[:-1]
    )


def describe_error(exc: BaseException) -> str:
    """`Type: message` on one line, at most 300 characters (driver messages span several)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


class DatabaseHealth:
    """Tracks whether the database answers one component (a worker, a scheduler).

    Args:
        log: The structlog logger to report state changes on (bound to the component).
        base: First retry delay in seconds.
        cap: Largest retry delay in seconds.
        stall_after: A call slower than this many seconds counts as an interruption (for
            `settled`), like a failure.
        rng: Randomness for the jitter.
    """

    def __init__(
        self,
        log: Any,
        *,
        base: float,
        cap: float,
        stall_after: float = math.inf,
        rng: random.Random | None = None,
    ) -> None:
        self.log = log
        self.base = max(base, 0.01)
        self.cap = max(cap, self.base)
        self.stall_after = stall_after
        self.rng = rng or random.Random()
        self.failures = 0
        self._down_since: float | None = None
        self._answering_since: float | None = None
        self._interrupted_at = -math.inf
        self._in_flight: dict[int, float] = {}
        self._next_call = 0

    @property
    def available(self) -> bool:
        """`False` from a failed call until calls have succeeded for `cap` seconds."""
        return self._down_since is None

    async def track(self, call: Awaitable[T]) -> T:
        """Await one database call, recording its failure or success (and slowness).

        Raises:
            Exception: Whatever the call raised (after recording it).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._next_call += 1
        key = self._next_call
        self._in_flight[key] = started
        try:
            result = await call
        except Exception as exc:
            self.failed(exc)
            raise
        finally:
            del self._in_flight[key]
        now = loop.time()
        if now - started > self.stall_after:
            self._interrupted_at = now
        self.succeeded()
        return result

    def failed(self, exc: BaseException) -> None:
        """Record a failed call; log `database_unavailable` if the database was available."""
        now = asyncio.get_running_loop().time()
        self._interrupted_at = now
        self.failures += 1
        self._answering_since = None
        if self._down_since is not None:
            return
        self._down_since = now
        extra: dict[str, Any] = {} if is_database_error(exc) else {"exc_info": exc}  # a bug: trace
        self.log.warning(
            "contractspec.jobs.database_unavailable", error=describe_error(exc), **extra
        )

    def succeeded(self) -> None:
        """Record a successful call; log `database_available` if it was unavailable and calls
        have succeeded, with no failure, for `cap` seconds."""
        if self._down_since is None:
            return
        now = asyncio.get_running_loop().time()
        self._interrupted_at = now
        if self._answering_since is None:
            self._answering_since = now
        if now - self._answering_since < self.cap:
            return
        self.log.info(
            "contractspec.jobs.database_available",
            unavailable_for_s=round(now - self._down_since, 3),
            failed_calls=self.failures,
        )
        self._down_since = None
        self._answering_since = None
        self.failures = 0

    def retry_delay(self) -> float:
        """Seconds to wait before the next attempt: `base * 2**(failures - 1)`, at most `cap`,
        minus up to a quarter of itself at random (so many workers do not retry in step)."""
        exponent = min(max(self.failures, 1) - 1, 60)
        delay = min(self.cap, self.base * 2.0**exponent)
        return delay * (1.0 - 0.25 * self.rng.random())

    def settled(self, period: float) -> bool:
        """Whether every call of the last `period` seconds succeeded promptly and none is stalled
        now: only then may expired leases be taken as a sign that their worker died."""
        now = asyncio.get_running_loop().time()
        if self._down_since is not None or now - self._interrupted_at < period:
            return False
        return all(now - started <= self.stall_after for started in self._in_flight.values())
