"""Outbox relay and idempotent consumers.

The write side is in core: with a SQL backend, `SqlOutbox` writes one `cs_outbox` row per event
in the call's transaction. The `OutboxRelay` here reads those rows and delivers them to an
`EventBus`:

```python
relay = OutboxRelay(SqlOutboxStore(engine), bus, registry=registry)
await relay.run_once()          # one batch; returns how many events were delivered
await relay.run(stop=stop)      # poll until `stop` is set
```

Delivery is **at-least-once**: a relay that dies after delivering and before marking leaves the
rows leased; once the lease ends another relay delivers them again. While it is alive, a relay
renews its lease (heartbeat) and stops before the lease could end, so no event is delivered by
two relays at the same time. Make consumers idempotent with `IdempotentConsumer`, which records
processed event ids in the consumer's own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from attrs import define

from contractspec.bus._retry import RetryPolicy
from contractspec.bus.bus import EventBus, envelope_from_dict
from contractspec.bus.stores import OutboxMessage, OutboxStore, ProcessedEventStore
from contractspec.core import (
    Clock,
    ConfigurationError,
    ContractSpecError,
    EventEnvelope,
    SpecRegistry,
    SystemClock,
    Transaction,
    UnitOfWork,
)
from contractspec.core._log import get_logger

__all__ = ["IdempotentConsumer", "OutboxRelay", "RelayStats", "idempotent_consumer"]

_log = get_logger(__name__)


def message_to_envelope(message: OutboxMessage, registry: SpecRegistry | None) -> EventEnvelope:
    """Rebuild the envelope of an outbox row (payload validated against the registry's spec).

    Raises:
        SpecValidationError: The stored payload does not match the registered event spec.
    """
    headers = message.headers
    return envelope_from_dict(
        {
            "id": message.id,
            "name": message.name,
            "version": message.version,
            "occurred_at": message.occurred_at,
            "payload": message.payload,
            "org_id": message.org_id,
            "key": message.key,
            **{k: headers.get(k) for k in _HEADER_KEYS},
        },
        registry,
    )


_HEADER_KEYS = (
    "actor_id",
    "actor_kind",
    "trace_id",
    "correlation_id",
    "causation_id",
    "request_id",
    "operation",
)


@define
class RelayStats:
    """Counters of one relay since it started.

    Attributes:
        batches: Claims that returned at least one row.
        delivered: Rows delivered (handed to the bus, which returned).
        failed_attempts: Rows whose delivery raised (retried later).
        given_up: Rows marked `failed` (poison messages or out of retries).
        heartbeats: Lease renewals that reached the database.
        leases_lost: Batches abandoned because the lease could not be renewed in time or another
            relay took rows over; their undelivered rows are left to the next claim.
    """

    batches: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    given_up: int = 0
    heartbeats: int = 0
    leases_lost: int = 0


class _Lease:
    """The lease of one claimed batch, as the relay holding it sees it.

    `deadline` is on the event loop's monotonic clock: the time the last successful claim or
    renewal was *sent*, plus the lease. The database stamped the lease's end no earlier than
    that, so the relay stops (and cancels its delivery) before any other relay can claim the
    rows, whatever the wall clocks of the machines say.
    """

    __slots__ = ("current", "deadline", "done", "held", "marked", "scope", "settled", "token")

    def __init__(self, token: str, positions: list[int], deadline: float) -> None:
        self.token = token
        self.held = set(positions)
        self.deadline = deadline
        self.done: list[int] = []  # delivered, in order
        self.marked: set[int] = set()  # delivered and marked by a heartbeat
        self.settled: set[int] = set()  # marked failed: no longer ours
        self.current: int | None = None  # position being delivered
        self.scope: asyncio.Timeout | None = None  # bounds the current delivery


class OutboxRelay:
    """Delivers outbox rows to an `EventBus`, in order per key, at-least-once.

    Each batch is claimed with a lease (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so several
    relays share the work without claiming the same row), delivered in position order, then
    marked delivered. While it works the relay renews the lease every `heartbeat` seconds (and
    marks what it has delivered so far), so a batch may take longer than `lease`; a relay whose
    renewals fail (database outage) or whose rows were taken over stops delivering before its
    lease can end: the delivery in progress is cancelled and the rest of the batch is left to
    the next claim. Together with the subscribers' timeouts (`EventBus(timeout=...)`), no event
    is ever being delivered by two relays at once.

    Subscriber failures are the bus's business (retries, dead letters, which are durable with a
    SQL outbox: see `EventBus`); a row is only retried here if delivery itself raised (e.g. the
    dead-letter store was down) or its payload no longer validates, which marks it `failed` at
    once.

    Args:
        outbox: The `OutboxStore` (`SqlOutboxStore` or `MemoryOutboxStore`).
        bus: Where events are delivered. If it was created without `dead_letters=` and the
            outbox is a `SqlOutboxStore`, the bus is given the database's `SqlDeadLetterStore`.
        registry: Validates payloads back into their models (without it: `RawPayload`).
        batch_size: Rows claimed per batch.
        lease: How long claimed rows stay invisible to other relays without a renewal.
        heartbeat: Seconds between renewals (default: a third of `lease`).
        retry: Backoff for rows whose delivery raised; past `max_attempts` they become `failed`.
        poll_interval: Seconds `run()` sleeps when there was nothing to deliver.
        linger: Seconds `run()` waits after a batch that was not full before claiming the
            next (0: claim again at once). A relay that has caught up with its writers
            otherwise claims and marks a handful of rows at a time, two statements per
            handful; lingering a few milliseconds lets rows gather into larger batches (fewer
            statements and commits per event) at the cost of up to `linger` of latency.
        clock: Time source. Without one, lease times come from the database's clock (see
            `OutboxStore`); with one (a `FakeClock` in tests), from it.

    Raises:
        ConfigurationError: `batch_size` < 1, a non-positive `lease`, `heartbeat` or
            `poll_interval`, a `heartbeat` not shorter than the lease, a negative `linger` or
            one longer than `poll_interval`, or a SQL outbox with a bus whose dead letters are
            in memory.
    """

    def __init__(
        self,
        outbox: OutboxStore,
        bus: EventBus,
        *,
        registry: SpecRegistry | None = None,
        batch_size: int = 100,
        lease: timedelta = timedelta(seconds=30),
        heartbeat: float | None = None,
        retry: RetryPolicy | None = None,
        poll_interval: float = 0.5,
        linger: float = 0.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(
                f"batch_size must be a positive integer, got {batch_size!r}",
                details={"field": "batch_size"},
            )
        if not isinstance(lease, timedelta) or lease <= timedelta(0):
            raise ConfigurationError(
                f"lease must be a positive timedelta, got {lease!r}", details={"field": "lease"}
            )
        if not isinstance(poll_interval, int | float) or poll_interval <= 0:
            raise ConfigurationError(
                f"poll_interval must be a positive number of seconds, got {poll_interval!r}",
                details={"field": "poll_interval"},
            )
        if (
            isinstance(linger, bool)
            or not isinstance(linger, int | float)
            or not 0 <= linger <= poll_interval
        ):
            raise ConfigurationError(
                f"linger must be a number of seconds between 0 and poll_interval "
                f"({poll_interval:g} s), got {linger!r}",
                details={"field": "linger"},
            )
        seconds = lease.total_seconds()
        if heartbeat is None:
            heartbeat = seconds / 3
        if (
            isinstance(heartbeat, bool)
            or not isinstance(heartbeat, int | float)
            or not 0 < heartbeat < seconds
        ):
            raise ConfigurationError(
                f"heartbeat must be a number of seconds between 0 and the lease ({seconds:g} s), "
                f"got {heartbeat!r}",
                details={"field": "heartbeat"},
            )
        durable = getattr(outbox, "dead_letter_store", None)
        if callable(durable):
            bus._use_durable_dead_letters(durable, type(outbox).__name__)
        self.outbox = outbox
        self.bus = bus
        self.registry = registry if registry is not None else bus.registry
        self.batch_size = batch_size
        self.lease = lease
        self.heartbeat = float(heartbeat)
        #: The relay stops delivering this long before its lease could end.
        self.margin = min(seconds / 10, 5.0)
        self.retry = retry or RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=300.0)
        self.poll_interval = float(poll_interval)
        self.linger = float(linger)
        #: Marks `run()` sends with its next claim: `(positions, lease token)` (see
        #: `_carries_marks`); only kept back when the outbox has `mark_and_claim`.
        self._unmarked: tuple[list[int], str] | None = None
        self._mark_and_claim: Callable[..., Awaitable[list[OutboxMessage]]] | None = getattr(
            outbox, "mark_and_claim", None
        )
        self._lease_clock = clock
        self.clock: Clock = clock or SystemClock()
        self.stats = RelayStats()
        self._rng = rng or random.Random()

    def _now(self) -> datetime | None:
        """Lease time: the given clock's, or `None` for the database's."""
        return None if self._lease_clock is None else self._lease_clock.now()

    #: Whether `run()` may send a batch's marks with its next claim (`mark_and_claim`, one
    #: statement on PostgreSQL) rather than in a statement of their own. Until then the rows
    #: stay leased to this relay, pending; a relay that dies first delivers them again once the
    #: lease ends. Off here: an in-process subscriber would see those events twice. On in
    #: `JetStreamRelay`, whose broker drops a re-published event (`Nats-Msg-Id`).
    _carries_marks = False

    async def run_once(self) -> int:
        """Claim one batch, deliver it in order and mark it; return how many were delivered."""
        return await self._run_batch(carry_marks=False)

    async def _claim(self) -> list[OutboxMessage]:
        """Claim the next batch, sending the marks `run()` kept back with it when it can."""
        unmarked, combined = self._unmarked, self._mark_and_claim
        if unmarked is None or combined is None:
            return await self.outbox.claim(self.batch_size, self._now(), self.lease)
        positions, token = unmarked
        batch = await combined(
            positions, token, self.clock.now(), self.batch_size, self._now(), self.lease
        )
        self._unmarked = None
        return batch

    async def _send_marks(self) -> None:
        """Mark what `run()` kept back for its next claim (when it stops)."""
        unmarked = self._unmarked
        if unmarked is not None:
            positions, token = unmarked
            await self.outbox.mark_delivered(positions, self.clock.now(), token=token or None)
            self._unmarked = None

    async def _run_batch(self, *, carry_marks: bool) -> int:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        batch = await self._claim()
        if not batch:
            return 0
        self.stats.batches += 1
        token = batch[0].lease_token or ""
        lease = _Lease(token, [m.position for m in batch], sent + self.lease.total_seconds())
        stop = asyncio.Event()
        beat = loop.create_task(self._heartbeat(lease, stop))
        try:
            lost = await self._deliver(batch, lease)
        finally:
            stop.set()
            await beat
        pending = [p for p in lease.done if p not in lease.marked]
        if pending and carry_marks and not lost and self._mark_and_claim is not None:
            self._unmarked = (pending, token)  # sent with the next claim
        elif pending:
            try:
                await self.outbox.mark_delivered(pending, self.clock.now(), token=token or None)
            except Exception:
                if not lost:
                    raise
                _log.warning(
                    "contractspec.bus.relay_mark_failed_after_lease_lost", rows=len(pending)
                )
        self.stats.delivered += len(lease.done)
        return len(lease.done)

    async def _deliver(self, batch: list[OutboxMessage], lease: _Lease) -> bool:
        """Deliver the batch in order while the lease holds; return whether it was lost."""
        loop = asyncio.get_running_loop()
        blocked: set[Any] = set()  # keys whose earlier row failed in this batch: keep their order
        for message in batch:
            okey = message.ordering_key
            if okey is not None and okey in blocked:
                continue  # stays leased; claimed again behind the failed row once it is resolved
            if message.position not in lease.held or loop.time() >= lease.deadline - self.margin:
                self._lost(lease, message)
                return True
            try:
                event = message_to_envelope(message, self.registry)
            except ContractSpecError as exc:
                await self._fail(message, f"{type(exc).__name__}: {exc.message}", lease, True)
                continue
            lease.current = message.position
            try:
                async with asyncio.timeout_at(lease.deadline - self.margin) as scope:
                    lease.scope = scope
                    await self.bus.deliver(event)
            except Exception as exc:
                if isinstance(exc, TimeoutError) and scope.expired():
                    self._lost(lease, message)  # the lease ran out or was taken over: stop
                    return True
                await self._fail(message, f"{type(exc).__name__}: {exc}", lease, False)
                if okey is not None:
                    blocked.add(okey)
                continue
            finally:
                lease.scope = None
                lease.current = None
            if loop.time() > lease.deadline:
                _log.warning(  # only a synchronous subscriber can block the loop this long
                    "contractspec.bus.relay_lease_overrun",
                    event_id=message.id,
                    hint="a synchronous subscriber blocked the event loop past the lease",
                )
            lease.done.append(message.position)
        return False

    def _lost(self, lease: _Lease, message: OutboxMessage) -> None:
        self.stats.leases_lost += 1
        _log.warning(
            "contractspec.bus.relay_lease_lost",
            event_id=message.id,
            position=message.position,
            delivered=len(lease.done),
        )

    async def _heartbeat(self, lease: _Lease, stop: asyncio.Event) -> None:
        """Renew the lease every `heartbeat` seconds (marking what is delivered) until `stop`."""
        loop = asyncio.get_running_loop()
        seconds = self.lease.total_seconds()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.heartbeat)
            if stop.is_set():
                return
            sent = loop.time()
            done = [p for p in lease.done if p not in lease.marked]
            rest = sorted(lease.held - lease.marked - lease.settled - set(done))
            try:
                if done:
                    await self.outbox.mark_delivered(done, self.clock.now(), token=lease.token)
                    lease.marked.update(done)
                held = await self.outbox.extend(rest, lease.token, self._now(), self.lease)
            except Exception as exc:
                _log.warning(
                    "contractspec.bus.relay_heartbeat_failed",
                    error=f"{type(exc).__name__}: {exc}",
                    seconds_left=round(lease.deadline - loop.time(), 3),
                )
                continue  # the deadline stands: the delivery is cancelled when it passes
            self.stats.heartbeats += 1
            lease.held = set(held) | lease.marked | set(done)
            lease.deadline = sent + seconds
            scope = lease.scope
            if scope is not None and not scope.expired():
                if lease.current is not None and lease.current not in lease.held:
                    scope.reschedule(loop.time())  # another relay owns it now: stop at once
                else:
                    scope.reschedule(lease.deadline - self.margin)

    async def _fail(self, message: OutboxMessage, error: str, lease: _Lease, give_up: bool) -> None:
        self.stats.failed_attempts += 1
        give_up = give_up or self.retry.gives_up_after(message.attempts)
        retry_at = (
            None if give_up else self.clock.now() + self.retry.backoff(message.attempts, self._rng)
        )
        if give_up:
            self.stats.given_up += 1
        _log.error(
            "contractspec.bus.relay_delivery_failed",
            event_name=message.name,
            event_id=message.id,
            position=message.position,
            attempts=message.attempts,
            gave_up=give_up,
            error=error,
        )
        await self.outbox.mark_failed(message.position, error, retry_at, token=lease.token or None)
        lease.settled.add(message.position)

    async def drain(self, *, max_batches: int | None = None) -> int:
        """Run batches until nothing is deliverable now; return how many were delivered."""
        total = 0
        batches = 0
        while max_batches is None or batches < max_batches:
            n = await self.run_once()
            batches += 1
            if n == 0:
                break
            total += n
        return total

    async def run(self, *, stop: asyncio.Event | None = None) -> None:
        """Deliver until `stop` is set (or the task is cancelled), sleeping when idle.

        A failing batch (e.g. the database is unreachable) is logged and retried after
        `poll_interval`.
        """
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set():
                try:
                    delivered = await self._run_batch(carry_marks=self._carries_marks)
                except Exception:
                    _log.exception("contractspec.bus.relay_batch_failed")
                    delivered = 0
                if delivered == 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.poll_interval)
                elif delivered < self.batch_size and self.linger > 0:  # caught up: let rows gather
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=self.linger)
        finally:
            try:
                await self._send_marks()
            except Exception:  # the rows stay leased; delivered again once the lease ends
                _log.exception("contractspec.bus.relay_mark_failed_on_stop")


ConsumerFn = Callable[[EventEnvelope, Transaction], Awaitable[Any]]


class IdempotentConsumer:
    """Wraps a consumer so its effect happens once per event, however often it is delivered.

    For each event it begins a transaction, records `(name, event.id)` in the processed-events
    store inside it, runs `handler(event, tx)` (which writes its effects through `tx`) and
    commits. A repeat finds the record and skips the handler; if the handler fails, the record
    rolls back with its effects, so the retry runs it again. This is the "idempotent consumer"
    pattern (Richardson, *Microservices Patterns*, ch. 3).

    Args:
        name: Consumer name (the processed-events key; keep it stable).
        handler: `async def handler(event, tx)`.
        unit_of_work: Begins the consumer's transactions (the SQL one for SQL effects).
        processed: The `ProcessedEventStore` (SQL: same database as the effects).
        clock: Time source for the processed-at column.

    Attributes:
        skipped: Events skipped as repeats since creation.
    """

    def __init__(
        self,
        name: str,
        handler: ConsumerFn,
        *,
        unit_of_work: UnitOfWork,
        processed: ProcessedEventStore,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                "IdempotentConsumer needs a non-empty name", details={"field": "name"}
            )
        self.name = name
        self.handler = handler
        self.unit_of_work = unit_of_work
        self.processed = processed
        self.clock: Clock = clock or SystemClock()
        self.skipped = 0
        self.__qualname__ = name

    async def __call__(self, event: EventEnvelope) -> bool:
        """Process `event` once; return `False` when it was a repeat."""
        tx = await self.unit_of_work.begin()
        try:
            first = await self.processed.mark(tx, self.name, event.id, self.clock.now())
            if not first:
                await tx.rollback()
                self.skipped += 1
                return False
            await self.handler(event, tx)
            await tx.commit()
            return True
        except BaseException:
            await tx.rollback()
            raise


def idempotent_consumer(
    name: str,
    *,
    unit_of_work: UnitOfWork,
    processed: ProcessedEventStore,
    clock: Clock | None = None,
) -> Callable[[ConsumerFn], IdempotentConsumer]:
    """Decorator form of `IdempotentConsumer`.

    Example:
        ```python
        @bus.on("crm.deal.created", name="crm.deal_counter")
        @idempotent_consumer("crm.deal_counter", unit_of_work=uow, processed=processed)
        async def count(event: EventEnvelope, tx: Transaction) -> None:
            ...
        ```
    """

    def decorate(fn: ConsumerFn) -> IdempotentConsumer:
        return IdempotentConsumer(
            name, fn, unit_of_work=unit_of_work, processed=processed, clock=clock
        )

    return decorate
