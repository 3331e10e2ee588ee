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
rows leased; once the lease ends another relay delivers them again. Make consumers idempotent
with `IdempotentConsumer`, which records processed event ids in the consumer's own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import structlog
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

__all__ = ["IdempotentConsumer", "OutboxRelay", "RelayStats", "idempotent_consumer"]

_log = structlog.get_logger(__name__)


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
        delivered: Rows delivered and marked.
        failed_attempts: Rows whose delivery raised (retried later).
        given_up: Rows marked `failed` (poison messages or out of retries).
    """

    batches: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    given_up: int = 0


class OutboxRelay:
    """Delivers outbox rows to an `EventBus`, in order per key, at-least-once.

    Each batch is claimed with a lease (on PostgreSQL with `FOR UPDATE SKIP LOCKED`, so several
    relays share the work without delivering the same row twice), delivered in position order,
    then marked delivered. Subscriber failures are the bus's business (retries, dead letters); a
    row is only retried here if delivery itself raised (e.g. the dead-letter store was down) or
    its payload no longer validates, which marks it `failed` at once.

    Args:
        outbox: The `OutboxStore` (`SqlOutboxStore` or `MemoryOutboxStore`).
        bus: Where events are delivered.
        registry: Validates payloads back into their models (without it: `RawPayload`).
        batch_size: Rows claimed per batch.
        lease: How long a claimed row stays invisible to other relays; longer than a batch takes.
        retry: Backoff for rows whose delivery raised; past `max_attempts` they become `failed`.
        poll_interval: Seconds `run()` sleeps when there was nothing to deliver.
        clock: Time source.

    Raises:
        ConfigurationError: `batch_size` < 1, a non-positive `lease` or `poll_interval`.
    """

    def __init__(
        self,
        outbox: OutboxStore,
        bus: EventBus,
        *,
        registry: SpecRegistry | None = None,
        batch_size: int = 100,
        lease: timedelta = timedelta(seconds=30),
        retry: RetryPolicy | None = None,
        poll_interval: float = 0.5,
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
        self.outbox = outbox
        self.bus = bus
        self.registry = registry if registry is not None else bus.registry
        self.batch_size = batch_size
        self.lease = lease
        self.retry = retry or RetryPolicy(max_attempts=10, base_delay=1.0, max_delay=300.0)
        self.poll_interval = float(poll_interval)
        self.clock: Clock = clock or SystemClock()
        self.stats = RelayStats()
        self._rng = rng or random.Random()

    async def run_once(self) -> int:
        """Claim one batch, deliver it in order and mark it; return how many were delivered."""
        batch = await self.outbox.claim(self.batch_size, self.clock.now(), self.lease)
        if not batch:
            return 0
        self.stats.batches += 1
        done: list[int] = []
        blocked: set[str] = set()  # keys whose earlier row failed in this batch: keep their order
        for message in batch:
            if message.key is not None and message.key in blocked:
                continue  # stays leased; claimed again behind the failed row once it is resolved
            try:
                event = message_to_envelope(message, self.registry)
            except ContractSpecError as exc:
                await self._fail(message, f"{type(exc).__name__}: {exc.message}", give_up=True)
                continue
            try:
                await self.bus.deliver(event)
            except Exception as exc:
                await self._fail(message, f"{type(exc).__name__}: {exc}", give_up=False)
                if message.key is not None:
                    blocked.add(message.key)
                continue
            done.append(message.position)
        if done:
            await self.outbox.mark_delivered(done, self.clock.now())
            self.stats.delivered += len(done)
        return len(done)

    async def _fail(self, message: OutboxMessage, error: str, *, give_up: bool) -> None:
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
        await self.outbox.mark_failed(message.position, error, retry_at)

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
        """Deliver until `stop` is set (or the task is cancelled), sleeping when idle."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                delivered = await self.run_once()
            except Exception:
                _log.exception("contractspec.bus.relay_batch_failed")
                delivered = 0
            if delivered == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.poll_interval)


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
