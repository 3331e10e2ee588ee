"""Events across processes and machines: the outbox relayed to NATS JetStream.

The outbox stays the source of truth (an event exists iff its transaction committed); JetStream is
the clustered, persistent transport between services. Install with
`pip install 'contractspec-bus[nats]'` (the `nats-py` client).

```python
nc = await nats.connect("nats://127.0.0.1:4222")
js = nc.jetstream()
streams = JetStreamSpec.from_registry(registry, name="CRM", prefix="cs.events")
await streams.ensure(js)                                      # idempotent, at start-up
relay = OutboxRelay(SqlOutboxStore(engine), JetStreamPublisher(js, streams), batch_size=100)
await relay.run(stop=stop)                                    # process 1: the relay

subscriber = JetStreamSubscriber(js, streams, durable="billing", handler=consumer, org_id="org-1",
                                 dead_letters=SqlDeadLetterStore(engine), registry=registry)
await subscriber.run(stop=stop)                               # processes 2..N: the consumers
```

Subjects are `<prefix>.<org>.<event name>`, e.g. `cs.events.org-1.crm.deal.created`; see
`subject_for` for how org ids are escaped. Each message carries the event's JSON form
(`EventEnvelope.to_dict()`) as its body and `Nats-Msg-Id: <event id>`, so the broker drops a
re-publication within the stream's duplicate window (a relay that crashed after the publish and
before marking the row).
"""

from __future__ import annotations

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext, api
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.bus.nats needs nats-py: pip install 'contractspec-bus[nats]'"
    ) from exc

import asyncio
import contextlib
import json
import random
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from attrs import define

from contractspec.bus._retry import RetryPolicy
from contractspec.bus.bus import DeliveryOutcome, DeliveryReport, EventBus, envelope_from_dict
from contractspec.bus.outbox import OutboxRelay, _Lease, message_to_envelope
from contractspec.bus.stores import DeadLetter, DeadLetterStore, OutboxMessage
from contractspec.core import (
    Clock,
    ConfigurationError,
    ContractSpecError,
    EventEnvelope,
    SpecRegistry,
    SpecValidationError,
    SystemClock,
    Transaction,
)
from contractspec.core._log import get_logger

__all__ = [
    "CONTENT_TYPE",
    "HEADER_CONTENT_TYPE",
    "HEADER_EVENT",
    "HEADER_VERSION",
    "JetStreamPublisher",
    "JetStreamRelay",
    "JetStreamSpec",
    "JetStreamSubscriber",
    "SubscriberStats",
    "org_token",
    "subject_for",
]

_log = get_logger(__name__)

#: Header with the event's name (`crm.deal.created`).
HEADER_EVENT = "Contractspec-Event"
#: Header with the event spec's version (`1`).
HEADER_VERSION = "Contractspec-Event-Version"
#: Header with the body's content type.
HEADER_CONTENT_TYPE = "Content-Type"
#: The body: the event's JSON form (`EventEnvelope.to_dict()`), UTF-8.
CONTENT_TYPE = "application/json"

_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\Z")
_NAME = re.compile(r"^[A-Za-z0-9_-]+\Z")
#: The org token of events without a tenant (`~` never results from escaping an org id).
NO_ORG = "~"


def org_token(org_id: str | None) -> str:
    """The subject token of a tenant: its id with every character outside `[A-Za-z0-9_-]` escaped.

    NATS subjects use `.` to separate tokens and `*`/`>` as wildcards, so an org id such as
    `acme.eu` or `*` must not reach a subject as is: each UTF-8 byte of such a character becomes
    `%XX` (upper-case hex, as in URL percent-encoding), so distinct org ids always give distinct
    tokens and no org id can widen a subscription. Events without an org use `~`.

    Example: `org_token("acme.eu") == "acme%2Eeu"`, `org_token(None) == "~"`.
    """
    if org_id is None:
        return NO_ORG
    if not isinstance(org_id, str) or not org_id:
        raise ConfigurationError(
            f"org_id must be a non-empty string or None, got {org_id!r}",
            details={"field": "org_id"},
        )
    return _SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), org_id)


def subject_for(prefix: str, org_id: str | None, event_name: str) -> str:
    """`<prefix>.<org token>.<event name>`, e.g. `cs.events.org-1.crm.deal.created`.

    The event name keeps its dots, so `cs.events.org-1.crm.>` selects one tenant's `crm` events
    and `cs.events.*.crm.deal.created` one event of every tenant.

    Raises:
        ConfigurationError: `prefix` or an event-name segment is not made of `[A-Za-z0-9_-]`
            tokens separated by dots.
    """
    _check_prefix(prefix)
    if not isinstance(event_name, str) or not _PREFIX.match(event_name):
        raise ConfigurationError(
            f"event name {event_name!r} cannot be a subject: use dotted [A-Za-z0-9_-] segments",
            details={"field": "event_name"},
        )
    return f"{prefix}.{org_token(org_id)}.{event_name}"


def _check_prefix(prefix: str) -> None:
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ConfigurationError(
            f"subject prefix {prefix!r} is not valid: use dotted [A-Za-z0-9_-] tokens such as "
            "'cs.events' (no wildcards, no empty tokens)",
            details={"field": "prefix"},
        )


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigurationError(
            f"{what} {value!r} is not valid: use letters, digits, '_' and '-' only",
            details={"field": what},
        )


_RETENTION = {
    "limits": api.RetentionPolicy.LIMITS,
    "interest": api.RetentionPolicy.INTEREST,
    "work_queue": api.RetentionPolicy.WORK_QUEUE,
}


@define(frozen=True)
class JetStreamSpec:
    """One JetStream stream declared in code: its subjects, retention, replicas and max age.

    Build it with `from_registry` so the stream follows the event specs: its subjects are
    `<prefix>.*.<event name>` for every registered event, and its `max_age` is the longest
    `retention` of those events (unlimited if any event has none). `ensure` creates the stream or
    updates it in place, so every process can call it at start-up.

    Attributes:
        name: Stream name (`[A-Za-z0-9_-]`).
        prefix: Subject prefix (`cs.events`).
        events: Event names carried (subjects `<prefix>.*.<name>`); empty: `<prefix>.>`.
        retention: `limits` (default: kept until `max_age`, every durable consumer reads all),
            `interest` or `work_queue` (one consumer group, messages deleted once acked).
        replicas: Copies in the cluster (1, or 3/5 on a cluster for fail-over).
        max_age: Oldest message kept, or `None` for no limit.
        duplicate_window: How long the broker remembers `Nats-Msg-Id`s to drop re-publications
            (default 2 minutes; keep it longer than a relay's lease plus its restart time).
        storage: `file` (default, survives restarts) or `memory`.

    Raises:
        ConfigurationError: A field is out of range (the message names it).
    """

    name: str
    prefix: str = "cs.events"
    events: tuple[str, ...] = ()
    retention: str = "limits"
    replicas: int = 1
    max_age: timedelta | None = None
    duplicate_window: timedelta = timedelta(minutes=2)
    storage: str = "file"

    def __attrs_post_init__(self) -> None:
        _check_name(self.name, "name")
        _check_prefix(self.prefix)
        if self.retention not in _RETENTION:
            raise ConfigurationError(
                f"retention must be one of {sorted(_RETENTION)}, got {self.retention!r}",
                details={"field": "retention"},
            )
        if isinstance(self.replicas, bool) or self.replicas not in (1, 2, 3, 4, 5):
            raise ConfigurationError(
                f"replicas must be 1 to 5 (JetStream's limit), got {self.replicas!r}",
                details={"field": "replicas"},
            )
        if self.storage not in ("file", "memory"):
            raise ConfigurationError(
                f"storage must be 'file' or 'memory', got {self.storage!r}",
                details={"field": "storage"},
            )
        for what, value in (("max_age", self.max_age), ("duplicate_window", self.duplicate_window)):
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
                raise ConfigurationError(
                    f"{what} must be a positive timedelta, got {value!r}", details={"field": what}
                )
        for event in self.events:
            subject_for(self.prefix, None, event)  # validates the name

    @classmethod
    def from_registry(
        cls,
        registry: SpecRegistry,
        *,
        name: str,
        prefix: str = "cs.events",
        retention: str = "limits",
        replicas: int = 1,
        duplicate_window: timedelta = timedelta(minutes=2),
        storage: str = "file",
    ) -> JetStreamSpec:
        """The stream of every event in `registry` (max age: the longest event `retention`)."""
        specs = registry.events()
        names = tuple(sorted({s.name for s in specs}))
        ages = [s.retention for s in specs]
        max_age = None if not ages or any(a is None for a in ages) else max(ages)  # type: ignore[type-var]
        return cls(
            name,
            prefix,
            names,
            retention,
            replicas,
            max_age,
            duplicate_window,
            storage,
        )

    @property
    def subjects(self) -> list[str]:
        """The stream's subjects."""
        if not self.events:
            return [f"{self.prefix}.>"]
        return [f"{self.prefix}.*.{e}" for e in self.events]

    def config(self) -> api.StreamConfig:
        """The `nats-py` `StreamConfig` (durations in seconds, as nats-py takes them)."""
        return api.StreamConfig(
            name=self.name,
            subjects=self.subjects,
            retention=_RETENTION[self.retention],
            num_replicas=self.replicas,
            max_age=None if self.max_age is None else self.max_age.total_seconds(),
            duplicate_window=self.duplicate_window.total_seconds(),
            storage=api.StorageType.FILE if self.storage == "file" else api.StorageType.MEMORY,
        )

    async def ensure(self, js: JetStreamContext) -> api.StreamInfo:
        """Create the stream, or update it to this declaration; safe to call from every process.

        Raises:
            ConfigurationError: JetStream refused the declaration (e.g. more replicas than
                servers, or a retention change, which JetStream does not allow in place).
        """
        config = self.config()
        try:
            try:
                await js.stream_info(self.name)
            except nats.js.errors.NotFoundError:
                try:
                    return await js.add_stream(config)
                except nats.js.errors.BadRequestError:
                    pass  # created by another process in between: update it below
            return await js.update_stream(config)
        except nats.js.errors.APIError as exc:
            raise ConfigurationError(
                f"JetStream refused stream {self.name!r}: {exc.description} "
                f"(error code {exc.err_code})",
                details={"field": "stream"},
            ) from exc

    def subject(self, event: EventEnvelope) -> str:
        """The subject `event` is published to."""
        return subject_for(self.prefix, event.org_id, event.name)


def _headers(event: EventEnvelope) -> dict[str, str]:
    return {
        "Nats-Msg-Id": event.id,
        HEADER_EVENT: event.name,
        HEADER_VERSION: str(event.version),
        HEADER_CONTENT_TYPE: CONTENT_TYPE,
    }


class JetStreamPublisher(EventBus):
    """The delivery target of an `OutboxRelay` that publishes to JetStream instead of in process.

    `OutboxRelay(outbox, JetStreamPublisher(js, stream))` keeps all of the relay's machinery —
    leases with heartbeats, `FOR UPDATE SKIP LOCKED` claims on PostgreSQL, backoff for failed
    rows — and only changes what "delivered" means: the event was published with
    `Nats-Msg-Id = event id` and JetStream acknowledged it (stored, on `replicas` servers).
    The row is marked delivered only after that acknowledgement; a publish that fails or times
    out raises, and the relay retries the row later.

    Per-key order: the relay hands rows over one at a time in outbox order and waits for each
    acknowledgement before the next, so the events of one key are stored in the stream in commit
    order; a failed row blocks the rest of its key in that batch, and the relay's claims never
    give one key to two relays at once. (Publishing a batch without waiting for each ack would be
    faster but could store a later event of a key before a failed earlier one.) A relay that
    dies after a publish and before marking re-publishes on restart; the broker drops the copy
    within `JetStreamSpec.duplicate_window`.

    Args:
        js: The `nats-py` JetStream context (`nc.jetstream()`).
        stream: The `JetStreamSpec` the subjects belong to (its `ensure` must have run).
        timeout: Seconds to wait for each publish acknowledgement.

    Raises:
        ConfigurationError: A non-positive `timeout`.
    """

    def __init__(
        self, js: JetStreamContext, stream: JetStreamSpec, *, timeout: float = 5.0
    ) -> None:
        super().__init__(timeout=None)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}",
                details={"field": "timeout"},
            )
        self.js = js
        self.stream = stream
        self.publish_timeout = float(timeout)
        #: Publications the broker reported as duplicates (re-publications after a crash).
        self.duplicates = 0

    def _add(self, pattern: str, *args: Any, **kwargs: Any) -> Any:
        raise ConfigurationError(
            "a JetStreamPublisher publishes to JetStream and has no in-process subscribers; "
            "subscribe with JetStreamSubscriber in the consuming process",
            details={"field": "pattern"},
        )

    async def deliver(
        self, event: EventEnvelope, *, only: str | None = None, tx: Transaction | None = None
    ) -> DeliveryReport:
        """Publish `event` and wait for JetStream's acknowledgement.

        Raises:
            nats.errors.Error: The publish failed or was not acknowledged in time (the relay
                retries the row).
        """
        body = json.dumps(event.to_dict(), separators=(",", ":"), default=str).encode()
        ack = await self.js.publish(
            self.stream.subject(event),
            body,
            timeout=self.publish_timeout,
            stream=self.stream.name,
            headers=_headers(event),
        )
        if ack.duplicate:
            self.duplicates += 1
        return DeliveryReport(event.id, event.name, (DeliveryOutcome(self.stream.name, True, 1),))


class JetStreamRelay(OutboxRelay):
    """An `OutboxRelay` that publishes each batch in waves: one row per ordering key at a time.

    The plain `OutboxRelay` with a `JetStreamPublisher` waits for each acknowledgement before
    the next publish. This relay publishes the first row of every key in the batch (and every
    row without a key) concurrently, waits for all their acknowledgements, then the second row of
    every key, and so on: a key's next event is only published once the previous one is stored,
    so per-key order holds exactly as with one publish at a time, while a batch of `k` distinct
    keys costs about one round trip instead of `k`. A failed publish blocks the rest of its key in
    the batch (the rows stay leased and come back in order); leases, heartbeats, retries and the
    `mark_delivered`-after-ack rule are the `OutboxRelay`'s.

    After a batch that was not full the relay lingers (`linger`, default 20 ms or
    `poll_interval` if shorter, as a `JetStreamSubscriber` waits up to 20 ms to fill its batch)
    before claiming again, so a relay that keeps up with its writers claims and marks rows in
    batches of dozens rather than a few: two statements per batch instead of per handful.
    Pass `linger=0` to claim again at once.

    In `run()`, the marks of a batch travel with the next claim (`mark_and_claim`: one
    statement on PostgreSQL instead of two per batch); they are sent on their own when `run()`
    stops. Until then the rows stay pending, leased to this relay: one that dies first
    re-publishes them once the lease ends, and the broker drops the copies within
    `JetStreamSpec.duplicate_window` (keep it longer than the lease). `run_once()` and
    `drain()` mark each batch at once.

    Args:
        outbox: The `OutboxStore`.
        publisher: The `JetStreamPublisher`.
        **kwargs: As for `OutboxRelay` (`batch_size`, `lease`, `retry`, `poll_interval`,
            `linger`, ...).
    """

    _carries_marks = True

    def __init__(self, outbox: Any, publisher: JetStreamPublisher, **kwargs: Any) -> None:
        if not isinstance(publisher, JetStreamPublisher):
            raise ConfigurationError(
                f"JetStreamRelay needs a JetStreamPublisher, got {type(publisher).__name__}",
                details={"field": "publisher"},
            )
        if "linger" not in kwargs:
            poll = kwargs.get("poll_interval", 0.5)
            kwargs["linger"] = min(0.02, poll) if isinstance(poll, int | float) else 0.0
        super().__init__(outbox, publisher, **kwargs)

    async def _deliver(self, batch: list[OutboxMessage], lease: _Lease) -> bool:
        loop = asyncio.get_running_loop()
        blocked: set[Any] = set()  # keys whose earlier row failed in this batch
        pending = list(batch)
        while pending:
            wave: list[OutboxMessage] = []
            later: list[OutboxMessage] = []
            keys: set[Any] = set()
            for message in pending:
                okey = message.ordering_key
                if okey is not None and okey in blocked:
                    continue  # stays leased; claimed again behind the failed row
                if okey is not None and okey in keys:
                    later.append(message)
                    continue
                if okey is not None:
                    keys.add(okey)
                wave.append(message)
            pending = later
            if not wave:
                break
            if loop.time() >= lease.deadline - self.margin or any(
                m.position not in lease.held for m in wave
            ):
                self._lost(lease, wave[0])
                return True
            ready: list[tuple[OutboxMessage, EventEnvelope]] = []
            for message in wave:
                try:
                    ready.append((message, message_to_envelope(message, self.registry)))
                except ContractSpecError as exc:
                    await self._fail(message, f"{type(exc).__name__}: {exc.message}", lease, True)
            if not ready:
                continue
            lease.current = ready[0][0].position
            try:
                async with asyncio.timeout_at(lease.deadline - self.margin) as scope:
                    lease.scope = scope
                    results = await asyncio.gather(
                        *(self.bus.deliver(event) for _, event in ready), return_exceptions=True
                    )
            except TimeoutError:
                if scope.expired():
                    self._lost(lease, ready[0][0])  # the lease ran out or was taken over
                    return True
                raise
            finally:
                lease.scope = None
                lease.current = None
            for (message, _), result in zip(ready, results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, Exception):
                        raise result
                    await self._fail(message, f"{type(result).__name__}: {result}", lease, False)
                    if message.ordering_key is not None:
                        blocked.add(message.ordering_key)
                else:
                    lease.done.append(message.position)
        return False


@define
class SubscriberStats:
    """Counters of one `JetStreamSubscriber` since it started.

    Attributes:
        handled: Messages whose handler succeeded (then acked).
        failed: Handler failures (nak'ed with backoff, or dead-lettered on the last attempt).
        dead_lettered: Messages written to the dead-letter store and terminated.
    """

    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0


Handler = Callable[[EventEnvelope], Awaitable[Any]]


class JetStreamSubscriber:
    """A durable JetStream pull consumer that runs one handler per event, in any process.

    Every process that builds a subscriber with the same `durable` name shares one JetStream
    consumer (a work queue): each message goes to one of them, so N processes share the load.
    For each message the subscriber validates it against the spec (headers and body, payload
    through the registry), awaits `handler(event)` — typically an `IdempotentConsumer`, whose
    transaction has committed when it returns — and only then acks it (an ack lost on the way
    means one more delivery, which the idempotent consumer skips). A failure is nak'ed with the `retry` policy's backoff; on attempt
    `max_deliver` (JetStream's delivery count) the event becomes a dead letter in
    `dead_letters` with the subscriber's `durable` name and is terminated. A process that dies
    mid-handler never acks: JetStream redelivers after `ack_wait`, and the idempotent consumer
    keeps the effect single. A message that does not match its spec (unknown event or version,
    a payload that does not validate, headers that contradict the body) is dead-lettered at once.

    Dead letters use the bus's store and API: `replay_dead_letters` runs the handler again for
    them, like `EventBus.replay_dead_letters`.

    Args:
        js: The `nats-py` JetStream context.
        stream: The `JetStreamSpec` to consume from (`ensure` must have run).
        durable: Consumer name shared by every process of this subscriber (`[A-Za-z0-9_-]`).
        handler: `async def handler(event)`; raise to have the event redelivered.
        events: Event names to receive (default: every event of the stream).
        org_id: Only this tenant's events (a server-side subject filter; events of other orgs
            never reach this process). `None` with `all_orgs=True`: every tenant.
        all_orgs: Required to consume every tenant's events, so no subscriber does by accident.
        registry: Validates payloads into their models; events it does not know are dead letters.
        dead_letters: Durable `DeadLetterStore` (`SqlDeadLetterStore(engine)`).
        max_deliver: Attempts before an event becomes a dead letter.
        retry: Backoff between attempts (only `delay()` is used; default 0.5 s doubling to 30 s).
        ack_wait: Seconds JetStream waits for an ack before redelivering (a handler that takes
            longer sends progress notices, so set it above a crash-recovery time you accept).
        batch: Most messages handled per `run_once`. A pull waits (up to `wait`) only for the
            first message, then takes what else is there within `linger`, so a partial batch is
            handled at once instead of when the pull expires.
        linger: Seconds the pull for the rest of a batch may wait for more messages (default
            0.02): the longest a message that has arrived waits for its batch to fill.
        handler_timeout: Seconds a handler may run before it is cancelled and counts as failed.
        clock: Time source for dead letters.
        bind: `True`: the durable consumer already exists (an admin created it with
            `js.add_consumer(stream.name, subscriber.consumer_config())`); `start` only checks
            that it exists with this subscriber's filter and binds to it, never creates or
            updates it. For tenant credentials that may only read their own consumer (see
            "Tenant isolation" in the scaling-out docs); needs publish permission for
            `$JS.API.CONSUMER.INFO.<stream>.<durable>`.

    Raises:
        ConfigurationError: Invalid names or numbers, or neither `org_id` nor `all_orgs`.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: JetStreamSpec,
        *,
        durable: str,
        handler: Handler,
        dead_letters: DeadLetterStore,
        events: Sequence[str] = (),
        org_id: str | None = None,
        all_orgs: bool = False,
        registry: SpecRegistry | None = None,
        max_deliver: int = 5,
        retry: RetryPolicy | None = None,
        ack_wait: float = 30.0,
        batch: int = 50,
        handler_timeout: float = 25.0,
        linger: float = 0.02,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        bind: bool = False,
    ) -> None:
        _check_name(durable, "durable")
        if not callable(handler):
            raise ConfigurationError("handler must be callable", details={"field": "handler"})
        if (org_id is None) == (not all_orgs):
            raise ConfigurationError(
                "pass org_id='...' to consume one tenant's events, or all_orgs=True for every "
                "tenant (not both)",
                details={"field": "org_id"},
            )
        for what, value in (("max_deliver", max_deliver), ("batch", batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"{what} must be a positive integer, got {value!r}", details={"field": what}
                )
        for what, number in (
            ("ack_wait", ack_wait),
            ("handler_timeout", handler_timeout),
            ("linger", linger),
        ):
            if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                raise ConfigurationError(
                    f"{what} must be a positive number of seconds, got {number!r}",
                    details={"field": what},
                )
        if handler_timeout >= ack_wait:
            raise ConfigurationError(
                f"handler_timeout ({handler_timeout:g} s) must be shorter than ack_wait "
                f"({ack_wait:g} s), or JetStream redelivers while the handler still runs",
                details={"field": "handler_timeout"},
            )
        self.js = js
        self.stream = stream
        self.durable = durable
        self.handler = handler
        self.dead_letters = dead_letters
        self.org_id = org_id
        self.registry = registry
        self.max_deliver = max_deliver
        self.retry = retry or RetryPolicy(max_attempts=max_deliver, base_delay=0.5, max_delay=30.0)
        self.ack_wait = float(ack_wait)
        self.batch = batch
        self.linger = float(linger)
        self.handler_timeout = float(handler_timeout)
        self.clock: Clock = clock or SystemClock()
        self.stats = SubscriberStats()
        if not isinstance(bind, bool):
            raise ConfigurationError(
                f"bind must be True or False, got {bind!r}", details={"field": "bind"}
            )
        self.bind = bind
        self._rng = rng or random.Random()
        names = tuple(events) or stream.events
        token = "*" if org_id is None else org_token(org_id)
        self.filter_subjects = (
            [f"{stream.prefix}.{token}.{n}" for n in names]
            if names
            else [f"{stream.prefix}.{token}.>"]
        )
        for name in names:
            subject_for(stream.prefix, None, name)  # validates the event names
        self._sub: JetStreamContext.PullSubscription | None = None
        self._flowing = False  # the last pull got messages: pull a whole batch first
        # The bus is only used for its dead-letter replay (same API as in-process subscribers).
        self._bus = EventBus(
            dead_letters=dead_letters, registry=registry, retry=RetryPolicy(max_attempts=1)
        )
        self._bus.subscribe("*", handler, name=durable, timeout=self.handler_timeout)

    def consumer_config(self) -> api.ConsumerConfig:
        """The durable consumer's configuration (explicit acks; redelivery is driven by naks)."""
        subjects = self.filter_subjects
        return api.ConsumerConfig(
            durable_name=self.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=-1,  # the subscriber dead-letters at max_deliver itself
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
            max_ack_pending=max(1000, self.batch * 4),
        )

    async def start(self) -> None:
        """Create or update the durable consumer and bind to it (idempotent).

        With `bind=True`, only check that the consumer exists with this subscriber's filter,
        then bind to it.

        Raises:
            ConfigurationError: JetStream refused the consumer; with `bind=True`, the consumer
                does not exist or filters other subjects than this subscriber.
            nats.errors.TimeoutError: No answer; also what a request the credentials may not
                publish gives (the server reports the permissions violation to the connection's
                `error_cb`).
        """
        if self._sub is not None:
            return
        if self.bind:
            await self._check_bound_consumer()
            self._sub = await self.js.pull_subscribe_bind(self.durable, self.stream.name)
            return
        try:
            await self.js.add_consumer(self.stream.name, self.consumer_config())
        except nats.js.errors.APIError as exc:
            raise ConfigurationError(
                f"JetStream refused consumer {self.durable!r} on {self.stream.name!r}: "
                f"{exc.description} (error code {exc.err_code}); a consumer's filter cannot "
                "change in place: delete it or pick a new durable name",
                details={"field": "durable"},
            ) from exc
        self._sub = await self.js.pull_subscribe_bind(self.durable, self.stream.name)

    async def _check_bound_consumer(self) -> None:
        create = (
            f"create it with admin credentials: await js.add_consumer({self.stream.name!r}, "
            "subscriber.consumer_config())"
        )
        try:
            info = await self.js.consumer_info(self.stream.name, self.durable)
        except nats.js.errors.NotFoundError:
            raise ConfigurationError(
                f"bind=True but JetStream has no consumer {self.durable!r} on stream "
                f"{self.stream.name!r}: {create}",
                details={"field": "durable"},
            ) from None
        config = info.config
        found = sorted(config.filter_subjects or ([config.filter_subject or ">"]))
        if found != sorted(self.filter_subjects):
            raise ConfigurationError(
                f"consumer {self.durable!r} on {self.stream.name!r} filters {found}, this "
                f"subscriber expects {sorted(self.filter_subjects)}: delete the consumer and "
                f"{create}",
                details={"field": "durable"},
            )

    async def stop(self) -> None:
        """Unbind (the durable consumer and its unacked messages stay on the server)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def run_once(self, *, wait: float = 1.0) -> int:
        """Fetch up to `batch` messages and process them in order; return how many.

        Waits up to `wait` seconds for the first message, then up to `linger` for the rest of
        the batch. (One pull of `batch` messages would keep collecting, while messages keep
        arriving, until `wait` is over: every message would wait for its batch.) While messages
        keep coming (the previous call got some), one pull of `batch` within `linger` comes
        first.
        """
        await self.start()
        sub = self._sub
        assert sub is not None
        msgs: list[Msg] = []
        if self._flowing:
            with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                msgs = await sub.fetch(self.batch, timeout=self.linger)
        if not msgs:
            try:
                msgs = await sub.fetch(1, timeout=wait)
            except (nats.errors.TimeoutError, TimeoutError):
                self._flowing = False
                return 0
            if self.batch > 1:
                with contextlib.suppress(nats.errors.TimeoutError, TimeoutError):
                    msgs += await sub.fetch(self.batch - 1, timeout=self.linger)
        self._flowing = True
        for msg in msgs:
            await self._process(msg)
        return len(msgs)

    async def run(self, *, stop: asyncio.Event | None = None, wait: float = 1.0) -> None:
        """Process messages until `stop` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        await self.start()
        while not stop.is_set():
            try:
                await self.run_once(wait=wait)
            except Exception:
                _log.exception("contractspec.bus.jetstream_fetch_failed", durable=self.durable)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)

    def _decode(self, msg: Msg) -> tuple[dict[str, Any], EventEnvelope]:
        try:
            data = json.loads(msg.data)
        except ValueError as exc:
            raise SpecValidationError(f"message body is not JSON: {exc}") from None
        if not isinstance(data, dict) or not {"id", "name", "version"} <= data.keys():
            raise SpecValidationError("message body is not an event (needs id, name, version)")
        headers = msg.headers or {}
        expected = {
            HEADER_EVENT: str(data["name"]),
            HEADER_VERSION: str(data["version"]),
            HEADER_CONTENT_TYPE: CONTENT_TYPE,
        }
        wrong = {k: headers.get(k) for k, v in expected.items() if headers.get(k) != v}
        if wrong:
            raise SpecValidationError(f"message headers do not match its body: {wrong}")
        if self.registry is not None:
            try:
                self.registry.get_event(str(data["name"]), int(data["version"]))
            except (LookupError, ContractSpecError):
                raise SpecValidationError(
                    f"event {data['name']}@{data['version']} is not in this consumer's registry; "
                    "deploy the spec before its producers"
                ) from None
        event = envelope_from_dict(data, self.registry)
        if self.org_id is not None and event.org_id != self.org_id:
            raise SpecValidationError(
                f"event of org {event.org_id!r} reached a subscriber bound to {self.org_id!r}"
            )
        return data, event

    async def _process(self, msg: Msg) -> None:
        attempt = msg.metadata.num_delivered or 1
        try:
            data, event = self._decode(msg)
        except ContractSpecError as exc:
            await self._dead_letter(msg, _raw(msg), f"{type(exc).__name__}: {exc.message}", attempt)
            return
        if attempt > self.max_deliver:  # the process handling the last attempt died
            await self._dead_letter(
                msg, data, f"no outcome after {self.max_deliver} deliveries", attempt
            )
            return
        try:
            async with asyncio.timeout(self.handler_timeout):
                await self.handler(event)
        except Exception as exc:
            self.stats.failed += 1
            error = f"{type(exc).__name__}: {exc}"
            _log.warning(
                "contractspec.bus.jetstream_handler_failed",
                subscriber=self.durable,
                event_id=event.id,
                event_name=event.name,
                attempt=attempt,
                error=error,
            )
            if attempt >= self.max_deliver:
                await self._dead_letter(msg, data, error, attempt)
            else:
                await msg.nak(delay=self.retry.delay(attempt, self._rng))
            return
        await msg.ack()  # a lost ack means a redelivery, which the idempotent consumer skips
        self.stats.handled += 1

    async def _dead_letter(
        self, msg: Msg, event: dict[str, Any], error: str, attempts: int
    ) -> None:
        """Store the dead letter (once per subscriber and event), then terminate the message."""
        letter_id = f"{self.durable}:{event.get('id') or msg.metadata.sequence.stream}"
        if await self.dead_letters.get(letter_id) is None:
            await self.dead_letters.add(
                DeadLetter(
                    id=letter_id,
                    event=event,
                    subscriber=self.durable,
                    error=error,
                    attempts=attempts,
                    failed_at=self.clock.now(),
                )
            )
        self.stats.dead_lettered += 1
        _log.error(
            "contractspec.bus.dead_lettered",
            subscriber=self.durable,
            event_id=event.get("id"),
            dead_letter_id=letter_id,
        )
        await msg.term()

    async def replay_dead_letters(
        self, *, ids: Sequence[str] | None = None, limit: int = 100
    ) -> list[DeliveryReport]:
        """Run the handler again for this subscriber's dead letters (as `EventBus` does).

        A successful replay marks the letter replayed; a failure leaves a new dead letter.

        Raises:
            NotFoundError: An id in `ids` does not exist.
        """
        return await self._bus.replay_dead_letters(ids=ids, subscriber=self.durable, limit=limit)


def _raw(msg: Msg) -> dict[str, Any]:
    """A message that is not a valid event, kept as much as possible for the dead letter."""
    with contextlib.suppress(ValueError):
        data = json.loads(msg.data)
        if isinstance(data, dict):
            return {"id": str(data.get("id", "")), **data}
    return {
        "id": (msg.headers or {}).get("Nats-Msg-Id", ""),
        "name": (msg.headers or {}).get(HEADER_EVENT, ""),
        "version": 0,
        "payload": {"raw": msg.data.decode("utf-8", "replace")},
    }
