"""`PolicySync`: keep a `PolicyEngine` fresh when other processes write the same database.

Every identity write bumps the store's identity version in its own transaction (see
`contractspec.identity.stores`). A `PolicySync` runs next to your app (one per process):

* it loads the engine when it starts;
* every `poll_interval_s` seconds (1 s by default) it reads the committed version, and reloads
  the engine from one consistent snapshot when another process has moved it on;
* on PostgreSQL it also `LISTEN`s on the store's channel: writes `NOTIFY` their version when
  they commit, and the engine reloads at once (typically within milliseconds), the poll staying
  as the safety net for a lost connection;
* if it cannot confirm the engine is fresh for `max_staleness_s` seconds (the database is
  unreachable, a reload keeps failing), the engine **fails closed** — every decision denies —
  until a refresh succeeds again.

**The bound.** A change committed by another process is honoured by this process's engine within
`poll_interval_s` plus one reload on SQLite (and on PostgreSQL if notifications are lost), and
within one notification plus one reload on PostgreSQL; changes this process commits apply at
commit. A reload reads every membership, binding and group membership (about 0.1 s per 10,000
memberships); versions the engine already holds cost one indexed read per poll.

```python
identity = register_identity(registry, SqlIdentityStore(backend.tables))
executor = Executor(registry, backend=backend, policy=identity.engine)
async with identity.sync(executor.unit_of_work, poll_interval_s=1.0):
    ...  # serve requests
```
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any

from contractspec.core import ConfigurationError, UnitOfWork
from contractspec.core._log import get_logger
from contractspec.identity.engine import PolicyEngine
from contractspec.identity.stores import IdentityStore

__all__ = ["PolicySync"]

_log = get_logger(__name__)


class PolicySync:
    """Keeps a `PolicyEngine` within a bounded staleness of its store, across processes.

    Args:
        engine: The engine to keep fresh.
        store: The identity store (memory stores live in one process: nothing to sync, but the
            loop works the same).
        unit_of_work: Begins the read-only transactions of version checks and reloads
            (`executor.unit_of_work`).
        poll_interval_s: Seconds between version checks (the bound on SQLite).
        max_staleness_s: After this many seconds without confirming the engine is fresh, the
            engine fails closed (every decision denies) until a refresh succeeds; `None` never
            fails closed. Must exceed `poll_interval_s`.
        listen: On PostgreSQL, also `LISTEN` for the `NOTIFY` of identity writes (near-immediate
            refresh). Ignored on other backends.

    Raises:
        ConfigurationError: `poll_interval_s` is not positive, or `max_staleness_s` is not above
            it.

    Attributes:
        refreshes: How many reloads installed a newer snapshot (for tests and metrics).
        checked_at: `time.monotonic()` of the last successful check (`None` before the first).
    """

    def __init__(
        self,
        engine: PolicyEngine,
        store: IdentityStore,
        unit_of_work: UnitOfWork,
        *,
        poll_interval_s: float = 1.0,
        max_staleness_s: float | None = 10.0,
        listen: bool = True,
    ) -> None:
        if not poll_interval_s > 0:
            raise ConfigurationError(
                f"poll_interval_s must be positive (seconds), got {poll_interval_s!r}"
            )
        if max_staleness_s is not None and not max_staleness_s > poll_interval_s:
            raise ConfigurationError(
                f"max_staleness_s ({max_staleness_s!r} s) must exceed poll_interval_s "
                f"({poll_interval_s!r} s), or the engine would fail closed between two polls"
            )
        self.engine = engine
        self.store = store
        self.unit_of_work = unit_of_work
        self.poll_interval_s = float(poll_interval_s)
        self.max_staleness_s = max_staleness_s
        self.listen = listen
        self.refreshes = 0
        self.checked_at: float | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._deadline: asyncio.TimerHandle | None = None
        self._failed_closed = False
        self._failing = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the engine (a full reload), then keep it fresh in background tasks.

        The first reload's errors propagate unchanged (the app should not serve without policy
        data): a `ContractSpecError` from the store, or the driver's error when the database
        cannot be reached.
        """
        if self._tasks:
            return
        await self.refresh(force=True)
        self._tasks.append(asyncio.create_task(self._poll(), name="contractspec-policy-sync"))
        engine = getattr(self.unit_of_work, "engine", None)
        channel = getattr(self.store, "channel", None)
        if (
            self.listen
            and channel is not None
            and engine is not None
            and getattr(engine.dialect, "name", "") == "postgresql"
        ):
            self._tasks.append(
                asyncio.create_task(
                    self._listen(engine, str(channel)), name="contractspec-policy-listen"
                )
            )

    async def stop(self) -> None:
        """Stop the background tasks (the engine keeps its data and stops being refreshed)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def __aenter__(self) -> PolicySync:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- refreshing -----------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> bool:
        """Check the committed version and reload the engine if it is behind (or if `force`).

        Concurrent calls share the work (one runs, the others wait for it and re-check).

        Returns:
            Whether a newer snapshot was installed.
        """
        async with self._lock:
            started = time.monotonic()
            current = self.engine.version
            if not force and current is not None:
                tx = await self.unit_of_work.begin(readonly=True)
                try:
                    committed = await self.store.version(tx)
                finally:
                    await tx.rollback()
                if committed <= current:
                    self._confirmed(started)
                    return False
            installed = await self.engine.reload(self.store, self.unit_of_work)
            if installed:
                self.refreshes += 1
            self._confirmed(started)
            return installed

    def _confirmed(self, at: float) -> None:
        """The engine held everything committed before `at`: restart the staleness clock."""
        self.checked_at = at
        if self._failed_closed:
            self._failed_closed = False
            self.engine.fail_closed(None)
            _log.info("contractspec.identity.policy_sync_recovered")
        if self.max_staleness_s is None:
            return
        if self._deadline is not None:
            self._deadline.cancel()
        remaining = max(0.0, at + self.max_staleness_s - time.monotonic())
        self._deadline = asyncio.get_running_loop().call_later(remaining, self._too_stale)

    def _too_stale(self) -> None:
        self._deadline = None
        self._failed_closed = True
        reason = (
            f"its data could not be confirmed fresh for {self.max_staleness_s:g} s "
            "(max_staleness_s of PolicySync): the identity store is unreachable or reloads fail"
        )
        self.engine.fail_closed(reason)
        _log.warning("contractspec.identity.policy_sync_failed_closed", reason=reason)

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
            self._wake.clear()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive: the staleness deadline fails closed
                if not self._failing:  # log once per state change, not once per poll
                    self._failing = True
                    _log.warning("contractspec.identity.policy_sync_refresh_failed", exc_info=True)
            else:
                if self._failing:
                    self._failing = False
                    _log.info("contractspec.identity.policy_sync_refresh_recovered")

    async def _listen(self, engine: Any, channel: str) -> None:
        """`LISTEN` on `channel` (PostgreSQL) and wake the poll loop for every newer version."""
        backoff = 0.05
        while True:
            conn = None
            try:
                conn = await engine.connect()
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                raw = await conn.get_raw_connection()
                pg = raw.driver_connection
                await pg.execute(f'LISTEN "{channel}"')
                backoff = 0.05
                self._wake.set()  # catch up on anything committed before LISTEN
                async for note in pg.notifies():
                    try:
                        version = int(note.payload)
                    except ValueError:
                        version = None
                    known = self.engine.version
                    if version is None or known is None or version > known:
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.warning("contractspec.identity.policy_listen_failed", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.poll_interval_s)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.invalidate())
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close())
