"""The in-process event bus: subscriptions by name, glob or all; retries; dead letters.

```python
from contractspec.bus import EventBus

bus = EventBus()

@bus.on("crm.deal.*")
async def log_deal(event: EventEnvelope) -> None:
    print(event.name, event.payload)
```

`EventBus` is also an `EventPublisher`: pass it as `Executor(events=bus)` and events are delivered
after the call commits (never for a call that rolls back). For durable delivery use the SQL
outbox (`contractspec.bus.sql.SqlOutboxStore`) and an `OutboxRelay` that delivers to the bus.
"""

from __future__ import annotations

import asyncio
import fnmatch
import inspect
import math
import random
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from attrs import define, field
from pydantic import BaseModel, ConfigDict, ValidationError

from contractspec.bus._retry import RetryPolicy
from contractspec.bus.stores import DeadLetter, DeadLetterStore, MemoryDeadLetterStore
from contractspec.core import (
    Clock,
    ConfigurationError,
    EventEnvelope,
    IdGenerator,
    NotFoundError,
    SpecRegistry,
    SpecValidationError,
    SystemClock,
    Transaction,
    UuidGenerator,
)
from contractspec.core._log import get_logger

__all__ = [
    "DeliveryOutcome",
    "DeliveryReport",
    "EventBus",
    "EventFilter",
    "EventHandler",
    "FilteredEventBus",
    "RawPayload",
    "Subscription",
    "envelope_from_dict",
]

_log = get_logger(__name__)

#: `def handler(event)` or `async def handler(event)`; the return value is ignored.
EventHandler = Callable[[EventEnvelope], Awaitable[Any] | Any]
#: A predicate over an envelope.
EventFilter = Callable[[EventEnvelope], bool]
H = TypeVar("H", bound=Callable[..., Any])

_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]!-]+\Z")
_MISSING = object()


class RawPayload(BaseModel):
    """Payload of an event whose spec is unknown to the bus: fields are kept as attributes."""

    model_config = ConfigDict(extra="allow", frozen=True)


def envelope_from_dict(
    data: Mapping[str, Any], registry: SpecRegistry | None = None
) -> EventEnvelope:
    """Rebuild an `EventEnvelope` from its JSON form (`to_dict()`, an outbox row, a dead letter).

    The payload is validated against the event spec from `registry`; without a registry (or for an
    event it does not know) it becomes a `RawPayload`.

    Raises:
        SpecValidationError: The payload does not match the registered event spec.
    """
    name, version = str(data["name"]), int(data["version"])
    payload_data = data.get("payload") or {}
    payload: BaseModel
    spec = None
    if registry is not None:
        try:
            spec = registry.get_event(name, version)
        except LookupError:
            spec = None
    if spec is not None:
        try:
            payload = spec.payload.model_validate(payload_data)
        except ValidationError as exc:
            raise SpecValidationError(
                f"stored payload of {name}@{version} (event {data.get('id')!r}) no longer matches "
                f"its spec: {exc.error_count()} error(s); fix the data or add an upcaster",
                errors=[
                    {"field": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]}
                    for e in exc.errors(include_url=False)
                ],
            ) from None
    else:
        payload = RawPayload.model_validate(payload_data)
    occurred = data["occurred_at"]
    if isinstance(occurred, str):
        occurred = datetime.fromisoformat(occurred)
    return EventEnvelope(
        id=str(data["id"]),
        name=name,
        version=version,
        occurred_at=occurred,
        payload=payload,
        org_id=data.get("org_id"),
        actor_id=data.get("actor_id"),
        actor_kind=data.get("actor_kind"),
        trace_id=data.get("trace_id"),
        correlation_id=data.get("correlation_id"),
        causation_id=data.get("causation_id"),
        request_id=data.get("request_id"),
        key=data.get("key"),
        operation=data.get("operation"),
    )


def _lookup(event: EventEnvelope, path: str) -> Any:
    """Value at a dotted path of the envelope (`org_id`, `payload.stage`, `payload.items.0`)."""
    current: Any = event
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part, _MISSING)
        elif isinstance(current, list | tuple) and part.isdigit():
            index = int(part)
            current = current[index] if index < len(current) else _MISSING
        else:
            current = getattr(current, part, _MISSING)
        if current is _MISSING:
            return _MISSING
    return current


def where_filter(where: Mapping[str, Any]) -> EventFilter:
    """A filter from `{"dotted.path": expected}`: equal values, or a callable returning a bool.

    Paths start at the envelope: `org_id`, `actor_id`, `payload.amount`, `payload.stage`. Enum
    members compare equal to their values.

    Raises:
        ConfigurationError: `where` is empty or a key is not a dotted path.
    """
    if not where:
        raise ConfigurationError("where= needs at least one condition, e.g. {'org_id': 'org-1'}")
    items = list(where.items())
    for path, _ in items:
        if not isinstance(path, str) or not path or any(not p for p in path.split(".")):
            raise ConfigurationError(
                f"where key {path!r} is not a dotted path such as 'payload.amount'",
                details={"field": "where"},
            )

    def check(event: EventEnvelope) -> bool:
        for path, expected in items:
            value = _lookup(event, path)
            if value is _MISSING:
                return False
            if callable(expected):
                if not expected(value):
                    return False
            elif value != expected and getattr(value, "value", _MISSING) != expected:
                return False
        return True

    return check


def _all_of(filters: Sequence[EventFilter]) -> EventFilter | None:
    if not filters:
        return None
    if len(filters) == 1:
        return filters[0]
    fs = tuple(filters)
    return lambda event: all(f(event) for f in fs)


@define(frozen=True)
class Subscription:
    """One subscriber.

    Attributes:
        name: Unique subscriber name (dead letters and replays refer to it).
        pattern: Event name, glob (`crm.*`, `*.created`) or `*` for all events.
        handler: Sync or async callable taking the envelope.
        filter: Extra predicate; the handler only sees events for which it returns `True`.
        retry: Retry policy for this subscriber.
        timeout: Seconds one call of an async handler may take before it is cancelled and
            counted as a failed attempt (`None`: no limit).
    """

    name: str
    pattern: str
    handler: EventHandler
    filter: EventFilter | None = None
    retry: RetryPolicy = field(factory=RetryPolicy)
    timeout: float | None = None

    @property
    def is_glob(self) -> bool:
        """True when `pattern` contains glob characters."""
        return any(c in self.pattern for c in "*?[")

    def matches_name(self, event_name: str) -> bool:
        """Whether the pattern matches `event_name` (case-sensitive, `*` crosses dots)."""
        if not self.is_glob:
            return self.pattern == event_name
        return fnmatch.fnmatchcase(event_name, self.pattern)


@define(frozen=True)
class DeliveryOutcome:
    """What happened for one subscriber.

    Attributes:
        subscriber: Subscriber name.
        ok: Whether the handler eventually succeeded.
        attempts: Attempts made.
        error: `Type: message` of the last failure, or `None`.
        dead_letter_id: Id of the dead letter written when it gave up.
    """

    subscriber: str
    ok: bool
    attempts: int
    error: str | None = None
    dead_letter_id: str | None = None


@define(frozen=True)
class DeliveryReport:
    """Result of delivering one event to its subscribers."""

    event_id: str
    event_name: str
    outcomes: tuple[DeliveryOutcome, ...] = ()

    @property
    def ok(self) -> bool:
        """True if every subscriber succeeded (vacuously true without subscribers)."""
        return all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> tuple[DeliveryOutcome, ...]:
        """Outcomes that ended in a dead letter."""
        return tuple(o for o in self.outcomes if not o.ok)

    @property
    def delivered_to(self) -> tuple[str, ...]:
        """Names of subscribers that succeeded."""
        return tuple(o.subscriber for o in self.outcomes if o.ok)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class EventBus:
    """In-process publish/subscribe for `EventEnvelope`s.

    Subscribers are matched by exact name, glob pattern or `*`, then by their filter. One failing
    subscriber never fails the publisher or the other subscribers: each is retried with its
    `RetryPolicy` (exponential backoff with jitter) and, past the limit, lands in the dead-letter
    store with its error, from which `replay_dead_letters` delivers it again. A call of an async
    subscriber that takes longer than its `timeout` is cancelled and counts as a failed attempt.

    Dead letters are durable by default with a SQL database: a bus created without
    `dead_letters=` keeps them in memory only until it learns about the database, which happens
    when an `OutboxRelay` over a `SqlOutboxStore` is built on it, or when it publishes in a SQL
    transaction (`Executor(events=bus)` with a `SqlBackend`). From then on it writes them to
    that database's `cs_dead_letters` (`SqlDeadLetterStore`; create the table with
    `contractspec.bus.sql.create_bus_tables` or your migrations).

    Args:
        dead_letters: Where failed deliveries go. Default: memory with the memory backend, the
            database's `SqlDeadLetterStore` with a SQL one (see above).
        retry: Default retry policy of subscribers (3 attempts, 50 ms base, full jitter).
        timeout: Default seconds one call of an async subscriber may take (30 s); `None` for no
            limit. Synchronous subscribers run on the event loop and cannot be interrupted.
        registry: Used to validate payloads when replaying dead letters.
        clock: Time and id sources.
        ids: Time and id sources.
        sleep: Awaitable sleep used between attempts (tests pass a fast one).
        rng: Random source for jitter.

    Example:
        ```python
        bus = EventBus()
        bus.subscribe("crm.deal.created", send_welcome)
        bus.subscribe("*.created", count_creations, name="metrics")
        executor = Executor(registry, events=bus)
        ```
    """

    def __init__(
        self,
        *,
        dead_letters: DeadLetterStore | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = 30.0,
        registry: SpecRegistry | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.dead_letters: DeadLetterStore = (
            dead_letters if dead_letters is not None else MemoryDeadLetterStore()
        )
        #: True while the dead-letter store is the in-memory default (replaced by the database's).
        self._default_dead_letters = dead_letters is None
        self.retry = retry if retry is not None else RetryPolicy()
        self.timeout = _check_timeout(timeout, "timeout")
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._subs: dict[str, Subscription] = {}
        self._exact: dict[str, list[Subscription]] = {}
        self._globs: list[Subscription] = []
        self._cache: dict[str, tuple[Subscription, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- subscriptions --------------------------------------------------------------------------

    def subscribe(
        self,
        pattern: str,
        handler: EventHandler,
        *,
        name: str | None = None,
        where: Mapping[str, Any] | None = None,
        filter: EventFilter | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Subscribe `handler` to events whose name matches `pattern`.

        Args:
            pattern: `crm.deal.created`, `crm.*`, `*.created` or `*` (all events).
            handler: `def f(event)` or `async def f(event)`.
            name: Unique subscriber name; defaults to the handler's module and qualified name.
            where: Equality filter on dotted envelope paths (`{"payload.stage": "won"}`).
            filter: Predicate on the envelope; combined with `where` (both must hold).
            retry: Override the bus's default retry policy.
            timeout: Seconds one call may take (async handlers), overriding the bus's default;
                `math.inf` for no limit.

        Returns:
            The `Subscription`.

        Raises:
            ConfigurationError: Invalid pattern, a handler that is not callable, a name already
                taken, or a timeout that is not a positive number.
        """
        filters = [f for f in (where_filter(where) if where else None, filter) if f is not None]
        return self._add(pattern, handler, name=name, filters=filters, retry=retry, timeout=timeout)

    def _add(
        self,
        pattern: str,
        handler: EventHandler,
        *,
        name: str | None,
        filters: Sequence[EventFilter],
        retry: RetryPolicy | None,
        timeout: float | None = None,
    ) -> Subscription:
        if not isinstance(pattern, str) or not _PATTERN.match(pattern):
            raise ConfigurationError(
                f"subscription pattern {pattern!r} is not valid: use an event name "
                "('crm.deal.created'), a glob ('crm.*', '*.created') or '*'",
                details={"field": "pattern"},
            )
        if not callable(handler):
            raise ConfigurationError(
                f"handler for {pattern!r} must be callable, got {type(handler).__name__}",
                details={"field": "handler"},
            )
        sub_name = name or f"{getattr(handler, '__module__', '?')}.{_qualname(handler)}"
        if sub_name in self._subs:
            raise ConfigurationError(
                f"a subscriber named {sub_name!r} already exists; pass name= to subscribe()",
                details={"field": "name"},
            )
        limit = self.timeout if timeout is None else _check_timeout(timeout, "timeout")
        if limit is not None and math.isinf(limit):
            limit = None
        sub = Subscription(sub_name, pattern, handler, _all_of(filters), retry or self.retry, limit)
        self._subs[sub_name] = sub
        if sub.is_glob:
            self._globs.append(sub)
        else:
            self._exact.setdefault(pattern, []).append(sub)
        self._cache.clear()
        return sub

    def on(
        self,
        pattern: str,
        *,
        name: str | None = None,
        where: Mapping[str, Any] | None = None,
        filter: EventFilter | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Callable[[H], H]:
        """Decorator form of `subscribe`."""

        def decorate(fn: H) -> H:
            self.subscribe(
                pattern, fn, name=name, where=where, filter=filter, retry=retry, timeout=timeout
            )
            return fn

        return decorate

    def unsubscribe(self, name: str) -> bool:
        """Remove the subscriber called `name`; `False` if there is none."""
        sub = self._subs.pop(name, None)
        if sub is None:
            return False
        if sub.is_glob:
            self._globs.remove(sub)
        else:
            self._exact[sub.pattern].remove(sub)
        self._cache.clear()
        return True

    @property
    def subscriptions(self) -> list[Subscription]:
        """Every subscription, in subscription order."""
        return list(self._subs.values())

    def subscribers_for(self, event_name: str) -> tuple[Subscription, ...]:
        """Subscriptions whose pattern matches `event_name` (filters not applied), in order."""
        found = self._cache.get(event_name)
        if found is None:
            matched = {s.name for s in self._exact.get(event_name, ())}
            matched |= {s.name for s in self._globs if s.matches_name(event_name)}
            found = tuple(s for s in self._subs.values() if s.name in matched)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[event_name] = found
        return found

    def filtered(
        self, where: Mapping[str, Any] | None = None, *, filter: EventFilter | None = None
    ) -> FilteredEventBus:
        """A view whose subscriptions only see events matching `where`/`filter`."""
        return FilteredEventBus(self, where=where, filter=filter)

    # -- delivery -------------------------------------------------------------------------------

    async def deliver(
        self, event: EventEnvelope, *, only: str | None = None, tx: Transaction | None = None
    ) -> DeliveryReport:
        """Deliver `event` to every matching subscriber (or only to the one named `only`).

        Subscribers run concurrently; each is retried on failure and dead-lettered past its
        limit. This never raises for a subscriber's failure. With `tx` (a handler's `ctx.tx`),
        dead letters are written in that transaction (they vanish if it rolls back).

        Returns:
            A `DeliveryReport` with one outcome per subscriber that matched.

        Raises:
            Exception: Only if the dead-letter store itself fails.
        """
        subs = self.subscribers_for(event.name)
        if only is not None:
            subs = tuple(s for s in subs if s.name == only)
        targets = [s for s in subs if s.filter is None or self._passes(s, event)]
        if not targets:
            return DeliveryReport(event.id, event.name)
        if len(targets) == 1:
            outcomes: tuple[DeliveryOutcome, ...] = (await self._run(targets[0], event, tx),)
        else:
            outcomes = tuple(await asyncio.gather(*(self._run(s, event, tx) for s in targets)))
        return DeliveryReport(event.id, event.name, outcomes)

    def _passes(self, sub: Subscription, event: EventEnvelope) -> bool:
        try:
            return bool(sub.filter(event))  # type: ignore[misc]  # checked by the caller
        except Exception:
            _log.exception(
                "contractspec.bus.filter_failed", subscriber=sub.name, event_name=event.name
            )
            return False

    async def _run(
        self, sub: Subscription, event: EventEnvelope, tx: Transaction | None = None
    ) -> DeliveryOutcome:
        policy = sub.retry
        attempt = 0
        error = ""
        while True:
            attempt += 1
            try:
                result = sub.handler(event)
                if inspect.isawaitable(result):
                    if sub.timeout is None:
                        await result
                    else:
                        await _bounded(result, sub)
                return DeliveryOutcome(sub.name, True, attempt)
            except Exception as exc:
                error = _describe(exc)
                _log.warning(
                    "contractspec.bus.handler_failed",
                    subscriber=sub.name,
                    event_name=event.name,
                    event_id=event.id,
                    attempt=attempt,
                    error=error,
                )
                if policy.gives_up_after(attempt):
                    break
                await self._sleep(policy.delay(attempt, self._rng))
        letter = DeadLetter(
            id=self.ids.new_id(),
            event=event.to_dict(),
            subscriber=sub.name,
            error=error,
            attempts=attempt,
            failed_at=self.clock.now(),
        )
        await (
            self.dead_letters.add(letter) if tx is None else self.dead_letters.add(letter, tx=tx)
        )
        _log.error(
            "contractspec.bus.dead_lettered",
            subscriber=sub.name,
            event_name=event.name,
            event_id=event.id,
            dead_letter_id=letter.id,
        )
        return DeliveryOutcome(sub.name, False, attempt, error, letter.id)

    async def deliver_many(self, events: Iterable[EventEnvelope]) -> list[DeliveryReport]:
        """Deliver events one after the other (keeps their order)."""
        return [await self.deliver(e) for e in events]

    # -- EventPublisher ---------------------------------------------------------------------------

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """`EventPublisher`: deliver `events`, in order, once `tx` commits (in the background).

        Delivery runs in a task of the current event loop; `await bus.drain()` waits for it.
        Nothing is delivered if `tx` rolls back. In a SQL transaction, a bus still on its
        default in-memory dead-letter store switches to the database's (see the class docs).
        """
        batch = list(events)
        if batch:
            if self._default_dead_letters:
                self._adopt_database_of(tx)
            tx.on_commit(lambda: self._spawn(batch))

    def _adopt_database_of(self, tx: Transaction) -> None:
        """Switch to the SQL dead-letter store of `tx`'s database, if `tx` is a SQL one."""
        uow = sys.modules.get("contractspec.core.sql._uow")
        if uow is None or not isinstance(tx, uow.SqlTransaction):
            return  # core.sql was never imported, so this cannot be a SQL transaction
        from contractspec.bus.sql import SqlDeadLetterStore

        current = self.dead_letters
        if isinstance(current, MemoryDeadLetterStore) and len(current):
            _log.warning(
                "contractspec.bus.dead_letters_stay_in_memory",
                reason="the in-memory default already holds dead letters",
            )
            return
        self.dead_letters = SqlDeadLetterStore(tx.connection.engine)
        self._default_dead_letters = False

    def _use_durable_dead_letters(self, make: Callable[[], DeadLetterStore], source: str) -> None:
        """Called by `OutboxRelay` over a SQL outbox: dead letters must live in the database.

        Raises:
            ConfigurationError: The bus was given a `MemoryDeadLetterStore`, or its in-memory
                default already holds dead letters.
        """
        current = self.dead_letters
        if self._default_dead_letters:
            if isinstance(current, MemoryDeadLetterStore) and len(current):
                raise ConfigurationError(
                    f"this EventBus already holds {len(current)} in-memory dead letter(s); build "
                    f"the OutboxRelay over {source} before delivering, or pass "
                    "dead_letters=SqlDeadLetterStore(engine)",
                    details={"field": "dead_letters"},
                )
            self.dead_letters = make()
            self._default_dead_letters = False
        elif isinstance(current, MemoryDeadLetterStore):
            raise ConfigurationError(
                f"an OutboxRelay over {source} marks rows delivered even when a subscriber "
                "failed, so its dead letters must be durable: pass "
                "dead_letters=SqlDeadLetterStore(engine) to the EventBus, or leave it out",
                details={"field": "dead_letters"},
            )

    def _spawn(self, batch: list[EventEnvelope]) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver_logged(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_logged(self, batch: list[EventEnvelope]) -> None:
        for event in batch:
            try:
                await self.deliver(event)
            except Exception:
                _log.exception(
                    "contractspec.bus.delivery_failed", event_name=event.name, id=event.id
                )

    async def drain(self) -> None:
        """Wait until every background delivery started by `publish` has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- dead letters ---------------------------------------------------------------------------

    async def replay_dead_letters(
        self,
        *,
        ids: Sequence[str] | None = None,
        subscriber: str | None = None,
        limit: int = 100,
        tx: Transaction | None = None,
    ) -> list[DeliveryReport]:
        """Deliver dead letters again, each to the subscriber that failed it.

        A successful replay marks the letter replayed; a failing one is retried with the
        subscriber's policy and, if it fails again, becomes a new dead letter.

        Args:
            ids: Replay exactly these dead letters.
            subscriber: Replay the still-dead letters of this subscriber (with `ids=None`).
            limit: Maximum number replayed (oldest first) when `ids` is not given.
            tx: Record the replays and new dead letters in this transaction (a handler's
                `ctx.tx`) instead of the store's own; the subscribers run either way.

        Raises:
            NotFoundError: An id in `ids` does not exist.
            ConfigurationError: The failed subscriber is no longer subscribed.
        """
        letters: list[DeadLetter] = []
        if ids is not None:
            for id in ids:
                letter = await (
                    self.dead_letters.get(id) if tx is None else self.dead_letters.get(id, tx=tx)
                )
                if letter is None:
                    raise NotFoundError(f"dead letter {id!r} does not exist")
                letters.append(letter)
        else:
            page = await self.dead_letters.list(subscriber=subscriber, limit=limit)
            letters = list(page.items)
        reports = []
        for letter in letters:
            if letter.subscriber not in self._subs:
                raise ConfigurationError(
                    f"dead letter {letter.id!r} belongs to subscriber {letter.subscriber!r}, "
                    "which is not subscribed to this bus; subscribe it (same name=) before replaying",
                    details={"field": "subscriber"},
                )
            event = envelope_from_dict(letter.event, self.registry)
            report = await self.deliver(event, only=letter.subscriber, tx=tx)
            if report.ok and tx is None:
                await self.dead_letters.mark_replayed(letter.id, self.clock.now())
            elif report.ok:
                await self.dead_letters.mark_replayed(letter.id, self.clock.now(), tx=tx)
            reports.append(report)
        return reports


def _check_timeout(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or value <= 0
    ):
        raise ConfigurationError(
            f"{name} must be a positive number of seconds (or None), got {value!r}",
            details={"field": name},
        )
    return float(value)


async def _bounded(result: Awaitable[Any], sub: Subscription) -> None:
    """Await a handler's result for at most `sub.timeout` seconds."""
    assert sub.timeout is not None
    try:
        async with asyncio.timeout(sub.timeout) as scope:
            await result
    except TimeoutError:
        if scope.expired():
            raise TimeoutError(
                f"subscriber {sub.name!r} did not finish within {sub.timeout:g} s"
            ) from None
        raise


def _qualname(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)


class FilteredEventBus:
    """A view of an `EventBus` whose subscriptions only see matching events.

    Made by `bus.filtered(...)`; views chain (`bus.filtered(a).filtered(b)` needs both).

    Example:
        ```python
        acme = bus.filtered({"org_id": "acme"})
        acme.subscribe("crm.deal.moved", notify_acme, where={"payload.to_stage": "won"})
        ```
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        where: Mapping[str, Any] | None = None,
        filter: EventFilter | None = None,
        _parents: Sequence[EventFilter] = (),
    ) -> None:
        own = [f for f in (where_filter(where) if where else None, filter) if f is not None]
        if not own:
            raise ConfigurationError(
                "FilteredEventBus needs where= or filter=", details={"field": "where"}
            )
        self.bus = bus
        self._filters: tuple[EventFilter, ...] = (*_parents, *own)

    def subscribe(
        self,
        pattern: str,
        handler: EventHandler,
        *,
        name: str | None = None,
        where: Mapping[str, Any] | None = None,
        filter: EventFilter | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Subscription:
        """Like `EventBus.subscribe`, with this view's filters added."""
        extra = [f for f in (where_filter(where) if where else None, filter) if f is not None]
        return self.bus._add(
            pattern,
            handler,
            name=name,
            filters=[*self._filters, *extra],
            retry=retry,
            timeout=timeout,
        )

    def on(
        self,
        pattern: str,
        *,
        name: str | None = None,
        where: Mapping[str, Any] | None = None,
        filter: EventFilter | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> Callable[[H], H]:
        """Decorator form of `subscribe`."""

        def decorate(fn: H) -> H:
            self.subscribe(
                pattern, fn, name=name, where=where, filter=filter, retry=retry, timeout=timeout
            )
            return fn

        return decorate

    def filtered(
        self, where: Mapping[str, Any] | None = None, *, filter: EventFilter | None = None
    ) -> FilteredEventBus:
        """A narrower view (both this view's and the new filters apply)."""
        return FilteredEventBus(self.bus, where=where, filter=filter, _parents=self._filters)
