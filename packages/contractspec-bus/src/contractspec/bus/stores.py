"""Store protocols, their records, and the in-memory adapters.

Every store is a `typing.Protocol` with an in-memory adapter (here) and a SQLAlchemy adapter
(`contractspec.bus.sql`); both pass one conformance suite on memory, SQLite and PostgreSQL.

| store | what it keeps |
|---|---|
| `OutboxStore` | events committed with the writes that caused them, until a relay delivers them |
| `DeadLetterStore` | deliveries that failed past their retry limit, visible and replayable |
| `ProcessedEventStore` | which consumer already handled which event (idempotent consumers) |
| `InAppStore` | in-app notifications with read/unread state |
| `PreferenceStore` | per-user and per-org opt-in/opt-out per channel and notification |
| `DeliveryLogStore` | one row per (notification, event, recipient, channel): queued/sent/failed |
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, runtime_checkable

from attrs import define, evolve, field

from contractspec.core import (
    ConfigurationError,
    ConflictError,
    EventEnvelope,
    NotFoundError,
    Transaction,
)

__all__ = [
    "DeadLetter",
    "DeadLetterStore",
    "DeliveryLogStore",
    "DeliveryRecord",
    "DeliveryStatus",
    "InAppNotification",
    "InAppStore",
    "MemoryDeadLetterStore",
    "MemoryDeliveryLog",
    "MemoryInAppStore",
    "MemoryOutboxStore",
    "MemoryPreferenceStore",
    "MemoryProcessedEventStore",
    "OrderingKey",
    "OutboxMessage",
    "OutboxStatus",
    "OutboxStore",
    "Page",
    "Preference",
    "PreferenceStore",
    "ProcessedEventStore",
    "accept_in_key_order",
    "check_page",
    "envelope_to_row",
    "new_lease_token",
    "ordering_key",
]

OutboxStatus = Literal["pending", "delivered", "failed"]
DeliveryStatus = Literal["queued", "sent", "failed"]
#: Any channel or any notification type in a `Preference`.
ANY = "*"


def _now(now: datetime | None) -> datetime:
    """`now`, or the current UTC time (the clock every relay of an in-memory store shares)."""
    return datetime.now(UTC) if now is None else now


def check_page(limit: int, *, maximum: int = 1000) -> int:
    """Validate a page size.

    Raises:
        ConfigurationError: `limit` is not an integer in `[1, maximum]`.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= maximum:
        raise ConfigurationError(
            f"limit must be an integer between 1 and {maximum}, got {limit!r}",
            details={"field": "limit"},
        )
    return limit


@define(frozen=True)
class Page:
    """One page of results with an opaque cursor for the next one.

    Attributes:
        items: The results, in the order requested.
        next_cursor: Pass it back as `cursor=` for the next page; `None` on the last page.
    """

    items: tuple[Any, ...]
    next_cursor: str | None = None

    def __iter__(self) -> Any:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


# --------------------------------------------------------------------------------------------
# Outbox
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class OutboxMessage:
    """One row of the outbox, in its stored JSON form.

    Attributes:
        position: Monotonic position (delivery order).
        id: Event id.
        name, version: The event spec.
        org_id: Tenant.
        key: Ordering key (`aggregate_key`); rows with the same key are delivered in order.
        payload: Payload as JSON data.
        headers: Actor, trace, correlation, causation, request ids and the operation.
        occurred_at: UTC time the event was emitted.
        status: `pending`, `delivered` or `failed` (gave up; see `last_error`).
        attempts: Delivery attempts so far (claims).
        available_at: Not claimed again before this UTC time (lease or backoff).
        delivered_at: UTC time of delivery.
        last_error: Error of the last failed attempt.
        lease_token: Token of the claim that leases the row (`None` once it is settled); the
            relay renews and settles rows only while they still carry its token.
    """

    position: int
    id: str
    name: str
    version: int
    org_id: str | None
    key: str | None
    payload: Mapping[str, Any]
    headers: Mapping[str, Any]
    occurred_at: datetime
    status: OutboxStatus = "pending"
    attempts: int = 0
    available_at: datetime | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None
    lease_token: str | None = None

    @property
    def ordering_key(self) -> OrderingKey | None:
        """`(org_id, key)`: rows with the same ordering key are delivered in position order."""
        return None if self.key is None else (self.org_id, self.key)


#: Rows are ordered per `(org_id, key)`: the same key in two tenants is two queues.
OrderingKey = tuple[str | None, str]


def ordering_key(org_id: str | None, key: str | None) -> OrderingKey | None:
    """The ordering key of a row: `(org_id, key)`, or `None` for a row without a key."""
    return None if key is None else (org_id, key)


def new_lease_token() -> str:
    """A fresh, unguessable lease token (32 hex characters)."""
    return uuid.uuid4().hex


def envelope_to_row(env: EventEnvelope) -> dict[str, Any]:
    """The JSON form of an envelope's payload and headers, as the outbox stores them."""
    return {
        "payload": env.payload_json(),
        "headers": {
            "actor_id": env.actor_id,
            "actor_kind": env.actor_kind,
            "trace_id": env.trace_id,
            "correlation_id": env.correlation_id,
            "causation_id": env.causation_id,
            "request_id": env.request_id,
            "operation": env.operation,
        },
    }


def accept_in_key_order(
    candidates: Sequence[OutboxMessage], pending_by_key: Mapping[OrderingKey, Sequence[int]]
) -> list[OutboxMessage]:
    """Keep the candidates that may be delivered now without breaking per-key order.

    A candidate with a key is accepted only if every pending row of its ordering key
    `(org_id, key)` before it is accepted too, i.e. the accepted rows of a key are a prefix of
    its pending queue. Rows that another relay holds (leased, or locked and skipped) are pending
    but not candidates, so they block the rows of their key that follow them. Rows without a
    key are always accepted. The same key in two orgs is two independent queues.

    Args:
        candidates: Claimable rows in position order.
        pending_by_key: For each candidate's ordering key, the positions of all its pending rows
            up to the last candidate, ascending.

    Returns:
        The accepted rows, in position order.
    """
    by_position = {m.position: m for m in candidates}
    accepted: set[int] = set()
    for queue in pending_by_key.values():
        for position in queue:
            if position not in by_position:
                break
            accepted.add(position)
    return [m for m in candidates if m.key is None or m.position in accepted]


@runtime_checkable
class OutboxStore(Protocol):
    """Transactional outbox: `publish` stages events in the caller's transaction; a relay claims,
    delivers and marks them.

    Claims are leases: a claimed row carries the claim's `lease_token` and is not claimed again
    before `now + lease`, so a relay that dies mid-batch loses nothing (its rows come back when
    the lease ends: at-least-once). The relay renews the lease with `extend` while it works and
    settles rows (`mark_delivered`, `mark_failed`) only while they still carry its token.

    `now=None` means the database's clock (PostgreSQL's `now()`; the local clock for SQLite and
    memory, which share the machine's clock with every relay), so relays on machines whose
    clocks disagree still agree on when a lease ends.
    """

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Stage `events` in `tx` (they exist iff `tx` commits)."""
        ...

    async def claim(
        self, limit: int, now: datetime | None, lease: timedelta
    ) -> list[OutboxMessage]:
        """Lease up to `limit` deliverable rows in position order, respecting per-key order.

        Every returned row carries the same new `lease_token` and `available_at = now + lease`.
        """
        ...

    async def extend(
        self, positions: Sequence[int], token: str, now: datetime | None, lease: timedelta
    ) -> list[int]:
        """Renew the lease `token` holds on `positions` to `now + lease`.

        Returns:
            The positions still held (pending and carrying `token`), ascending; a row missing
            from the answer was settled or claimed by another relay after the lease ran out.
        """
        ...

    async def mark_delivered(
        self, positions: Sequence[int], at: datetime, *, token: str | None = None
    ) -> int:
        """Mark rows delivered (with `token`: only those still carrying it); return how many."""
        ...

    async def mark_failed(
        self, position: int, error: str, retry_at: datetime | None, *, token: str | None = None
    ) -> None:
        """Record a failed attempt; retry at `retry_at`, or give up (`failed`) when `None`.

        With `token`, nothing happens unless the row still carries it.
        """
        ...

    async def requeue(self, positions: Sequence[int] | None, now: datetime) -> int:
        """Put `failed` rows (all with `None`) back to `pending`; return how many."""
        ...

    async def messages(
        self, *, status: OutboxStatus | None = None, limit: int = 100, after: int = 0
    ) -> list[OutboxMessage]:
        """Rows by status (all with `None`) in position order, after position `after`."""
        ...

    async def purge_delivered(self, before: datetime) -> int:
        """Delete rows delivered before `before`; return how many."""
        ...


class MemoryOutboxStore:
    """`OutboxStore` in memory: rows appear when the publishing transaction commits."""

    __slots__ = ("_positions", "_rows")

    def __init__(self) -> None:
        self._rows: dict[int, OutboxMessage] = {}
        self._positions = itertools.count(1)

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Add one pending row per event when `tx` commits, in emission order."""
        batch = list(events)

        def commit() -> None:
            for env in batch:
                position = next(self._positions)
                data = envelope_to_row(env)
                self._rows[position] = OutboxMessage(
                    position=position,
                    id=env.id,
                    name=env.name,
                    version=env.version,
                    org_id=env.org_id,
                    key=env.key,
                    payload=data["payload"],
                    headers=data["headers"],
                    occurred_at=env.occurred_at,
                    available_at=env.occurred_at,
                )

        tx.on_commit(commit)

    async def claim(
        self, limit: int, now: datetime | None, lease: timedelta
    ) -> list[OutboxMessage]:
        """Lease up to `limit` rows (see `accept_in_key_order`)."""
        check_page(limit, maximum=10_000)
        now = _now(now)
        pending = [m for m in self._rows.values() if m.status == "pending"]
        candidates: list[OutboxMessage] = []
        for m in pending:
            if len(candidates) >= limit:
                break
            if m.available_at is None or m.available_at <= now:
                candidates.append(m)
        if not candidates:
            return []
        last = candidates[-1].position
        queues: dict[OrderingKey, list[int]] = {}
        for m in candidates:
            if (okey := m.ordering_key) is not None:
                queues[okey] = []
        for m in pending:
            okey = m.ordering_key
            if okey is not None and okey in queues and m.position <= last:
                queues[okey].append(m.position)
        accepted = accept_in_key_order(candidates, queues)
        token = new_lease_token()
        out = []
        for m in accepted:
            leased = evolve(m, attempts=m.attempts + 1, available_at=now + lease, lease_token=token)
            self._rows[m.position] = leased
            out.append(leased)
        return out

    async def extend(
        self, positions: Sequence[int], token: str, now: datetime | None, lease: timedelta
    ) -> list[int]:
        """Renew the lease on the rows that still carry `token`."""
        until = _now(now) + lease
        held = []
        for p in sorted(set(positions)):
            m = self._rows.get(p)
            if m is not None and m.status == "pending" and m.lease_token == token:
                self._rows[p] = evolve(m, available_at=until)
                held.append(p)
        return held

    async def mark_delivered(
        self, positions: Sequence[int], at: datetime, *, token: str | None = None
    ) -> int:
        """Mark rows delivered (with `token`: only those still carrying it)."""
        n = 0
        for p in positions:
            m = self._rows.get(p)
            if m is not None and (token is None or m.lease_token == token):
                self._rows[p] = evolve(
                    m, status="delivered", delivered_at=at, last_error=None, lease_token=None
                )
                n += 1
        return n

    async def mark_failed(
        self, position: int, error: str, retry_at: datetime | None, *, token: str | None = None
    ) -> None:
        """Record the error; back off until `retry_at` or give up."""
        m = self._rows.get(position)
        if m is None or (token is not None and m.lease_token != token):
            return
        if retry_at is None:
            self._rows[position] = evolve(m, status="failed", last_error=error, lease_token=None)
        else:
            self._rows[position] = evolve(
                m, available_at=retry_at, last_error=error, lease_token=None
            )

    async def requeue(self, positions: Sequence[int] | None, now: datetime) -> int:
        """Failed rows back to pending, available now."""
        n = 0
        for p, m in list(self._rows.items()):
            if m.status == "failed" and (positions is None or p in positions):
                self._rows[p] = evolve(
                    m, status="pending", available_at=now, attempts=0, lease_token=None
                )
                n += 1
        return n

    async def messages(
        self, *, status: OutboxStatus | None = None, limit: int = 100, after: int = 0
    ) -> list[OutboxMessage]:
        """Rows in position order."""
        check_page(limit, maximum=10_000)
        rows = [
            m
            for p, m in sorted(self._rows.items())
            if p > after and (status is None or m.status == status)
        ]
        return rows[:limit]

    async def purge_delivered(self, before: datetime) -> int:
        """Forget delivered rows older than `before`."""
        doomed = [
            p
            for p, m in self._rows.items()
            if m.status == "delivered" and m.delivered_at is not None and m.delivered_at < before
        ]
        for p in doomed:
            del self._rows[p]
        return len(doomed)


# --------------------------------------------------------------------------------------------
# Dead letters
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class DeadLetter:
    """A delivery that failed past its retry limit.

    Attributes:
        id: Unique id of the dead letter.
        event: The event in JSON form (`EventEnvelope.to_dict()`).
        subscriber: Name of the subscriber that failed.
        error: `ExceptionType: message` of the last failure.
        attempts: Attempts made.
        failed_at: UTC time it was dead-lettered.
        replayed_at: UTC time of the last successful replay, or `None` while it is still dead.
    """

    id: str
    event: Mapping[str, Any]
    subscriber: str
    error: str
    attempts: int
    failed_at: datetime
    replayed_at: datetime | None = None

    @property
    def event_id(self) -> str:
        """The event's id."""
        return str(self.event["id"])

    @property
    def event_name(self) -> str:
        """The event's name."""
        return str(self.event["name"])

    @property
    def org_id(self) -> str | None:
        """The event's tenant."""
        org: str | None = self.event.get("org_id")
        return org


@runtime_checkable
class DeadLetterStore(Protocol):
    """Failed deliveries: visible (`list`) and replayable (`EventBus.replay_dead_letters`)."""

    async def add(self, letter: DeadLetter, *, tx: Transaction | None = None) -> None:
        """Store a dead letter (inside `tx`, when given, so it commits or rolls back with it)."""
        ...

    async def get(self, id: str, *, tx: Transaction | None = None) -> DeadLetter | None:
        """One dead letter, or `None`; with `tx`, as that transaction sees it."""
        ...

    async def list(
        self,
        *,
        subscriber: str | None = None,
        org_id: str | None = None,
        event_name: str | None = None,
        include_replayed: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Dead letters, oldest first, filtered and paginated."""
        ...

    async def browse(
        self,
        *,
        org_id: str | None,
        subscriber: str | None = None,
        event_name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tx: Transaction | None = None,
    ) -> Page:
        """Still-dead letters of exactly one tenant, newest first, paginated.

        Args:
            org_id: The tenant; `None` selects the letters of events without an org (never all).
            subscriber: Only letters of this subscriber.
            event_name: Only letters of this event name.
            limit: Page size (1..1000).
            cursor: `next_cursor` of the previous page.
            tx: Read inside this transaction (a handler's `ctx.tx`) instead of a new connection.

        Raises:
            ConfigurationError: A limit out of range or a cursor not from a previous page.
        """
        ...

    async def mark_replayed(self, id: str, at: datetime, *, tx: Transaction | None = None) -> None:
        """Record a successful replay (inside `tx`, when given)."""
        ...

    async def discard(self, id: str, *, tx: Transaction | None = None) -> bool:
        """Delete a dead letter nobody will replay; `False` if it does not exist."""
        ...

    async def count(self, *, include_replayed: bool = False) -> int:
        """How many dead letters there are."""
        ...


class MemoryDeadLetterStore:
    """`DeadLetterStore` in a dictionary (insertion order)."""

    __slots__ = ("_letters", "_order")

    def __init__(self) -> None:
        self._letters: dict[str, DeadLetter] = {}
        self._order: dict[str, int] = {}

    def __len__(self) -> int:
        """How many dead letters are stored (replayed ones included)."""
        return len(self._letters)

    async def add(self, letter: DeadLetter, *, tx: Transaction | None = None) -> None:
        """Store; `ConflictError` if the id exists. With `tx`, removed again if it rolls back."""
        if letter.id in self._letters:
            raise ConflictError(f"dead letter {letter.id!r} already exists")
        if tx is not None:
            tx.undo_item(self._letters, letter.id)
        self._order[letter.id] = len(self._order) + 1
        self._letters[letter.id] = letter

    async def get(self, id: str, *, tx: Transaction | None = None) -> DeadLetter | None:
        """One dead letter, or `None` (`tx` changes nothing: memory writes are visible at once)."""
        return self._letters.get(id)

    async def list(
        self,
        *,
        subscriber: str | None = None,
        org_id: str | None = None,
        event_name: str | None = None,
        include_replayed: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Oldest first; the cursor is the position of the last item returned."""
        check_page(limit)
        after = _cursor(cursor)
        out: list[DeadLetter] = []
        more = False
        for id, letter in self._letters.items():
            if self._order[id] <= after:
                continue
            if subscriber is not None and letter.subscriber != subscriber:
                continue
            if org_id is not None and letter.org_id != org_id:
                continue
            if event_name is not None and letter.event_name != event_name:
                continue
            if not include_replayed and letter.replayed_at is not None:
                continue
            if len(out) == limit:
                more = True
                break
            out.append(letter)
        next_cursor = str(self._order[out[-1].id]) if more and out else None
        return Page(tuple(out), next_cursor)

    async def browse(
        self,
        *,
        org_id: str | None,
        subscriber: str | None = None,
        event_name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        tx: Transaction | None = None,
    ) -> Page:
        """Newest first; the cursor is the position of the last item returned."""
        check_page(limit)
        below = _cursor(cursor) if cursor is not None else None
        out: list[DeadLetter] = []
        more = False
        for id in sorted(self._letters, key=self._order.__getitem__, reverse=True):
            letter = self._letters[id]
            if below is not None and self._order[id] >= below:
                continue
            if letter.org_id != org_id or letter.replayed_at is not None:
                continue
            if subscriber is not None and letter.subscriber != subscriber:
                continue
            if event_name is not None and letter.event_name != event_name:
                continue
            if len(out) == limit:
                more = True
                break
            out.append(letter)
        next_cursor = str(self._order[out[-1].id]) if more and out else None
        return Page(tuple(out), next_cursor)

    async def mark_replayed(self, id: str, at: datetime, *, tx: Transaction | None = None) -> None:
        """Record a successful replay; `NotFoundError` if unknown."""
        letter = self._letters.get(id)
        if letter is None:
            raise NotFoundError(f"dead letter {id!r} does not exist")
        if tx is not None:
            tx.undo_item(self._letters, id)
        self._letters[id] = evolve(letter, replayed_at=at)

    async def discard(self, id: str, *, tx: Transaction | None = None) -> bool:
        """Delete; `False` if unknown. With `tx`, restored if it rolls back."""
        if id not in self._letters:
            return False
        if tx is not None:
            tx.undo_item(self._letters, id)
        del self._letters[id]
        return True

    async def count(self, *, include_replayed: bool = False) -> int:
        """How many (still dead, unless `include_replayed`)."""
        return sum(1 for d in self._letters.values() if include_replayed or d.replayed_at is None)


def _cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise ConfigurationError(
            f"cursor {cursor!r} is not valid: pass back the next_cursor of a previous page",
            details={"field": "cursor"},
        )
    return int(cursor)


# --------------------------------------------------------------------------------------------
# Processed events (idempotent consumers)
# --------------------------------------------------------------------------------------------


@runtime_checkable
class ProcessedEventStore(Protocol):
    """Which consumer processed which event, recorded in the consumer's own transaction."""

    async def mark(self, tx: Transaction, consumer: str, event_id: str, at: datetime) -> bool:
        """Record that `consumer` processes `event_id` in `tx`.

        Returns:
            `True` the first time; `False` if it was already recorded (then skip the effect).
        """
        ...

    async def seen(self, consumer: str, event_id: str) -> bool:
        """Whether `consumer` has (committed) processing `event_id`."""
        ...


class MemoryProcessedEventStore:
    """`ProcessedEventStore` in a set; a mark is undone when its transaction rolls back."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], datetime] = {}

    async def mark(self, tx: Transaction, consumer: str, event_id: str, at: datetime) -> bool:
        """`True` the first time, `False` for a repeat."""
        key = (consumer, event_id)
        if key in self._seen:
            return False
        self._seen[key] = at

        def undo() -> None:
            self._seen.pop(key, None)

        tx.add_undo(undo)
        return True

    async def seen(self, consumer: str, event_id: str) -> bool:
        """Whether the pair is recorded."""
        return (consumer, event_id) in self._seen


# --------------------------------------------------------------------------------------------
# In-app notifications
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class InAppNotification:
    """A notification shown inside the app.

    Attributes:
        id: Unique id.
        org_id: Tenant.
        user_id: Recipient.
        notification: Notification type (`crm.deal_won`).
        title, body: Rendered text.
        event_id: Event that caused it.
        created_at: UTC creation time.
        read_at: UTC time it was read, or `None` while unread.
        data: Extra JSON data (links, ids).
    """

    id: str
    org_id: str | None
    user_id: str
    notification: str
    title: str
    body: str
    event_id: str | None
    created_at: datetime
    read_at: datetime | None = None
    data: Mapping[str, Any] = field(factory=dict)

    @property
    def unread(self) -> bool:
        """True until marked read."""
        return self.read_at is None


@runtime_checkable
class InAppStore(Protocol):
    """In-app notifications per (org, user), newest first, with read/unread state."""

    async def add(self, item: InAppNotification) -> None:
        """Store a notification; `ConflictError` if its id exists."""
        ...

    async def list(
        self,
        org_id: str | None,
        user_id: str,
        *,
        unread_only: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """The user's notifications in this org, newest first."""
        ...

    async def mark_read(self, org_id: str | None, user_id: str, id: str, at: datetime) -> bool:
        """Mark one read; `False` if it does not exist for that user (or was already read)."""
        ...

    async def mark_all_read(self, org_id: str | None, user_id: str, at: datetime) -> int:
        """Mark every unread one read; return how many."""
        ...

    async def unread_count(self, org_id: str | None, user_id: str) -> int:
        """How many unread."""
        ...


class MemoryInAppStore:
    """`InAppStore` in memory."""

    __slots__ = ("_items", "_seq")

    def __init__(self) -> None:
        self._items: dict[str, tuple[int, InAppNotification]] = {}
        self._seq = itertools.count(1)

    async def add(self, item: InAppNotification) -> None:
        """Store; `ConflictError` on a duplicate id."""
        if item.id in self._items:
            raise ConflictError(f"in-app notification {item.id!r} already exists")
        self._items[item.id] = (next(self._seq), item)

    def _mine(self, org_id: str | None, user_id: str) -> list[tuple[int, InAppNotification]]:
        return sorted(
            (
                (seq, item)
                for seq, item in self._items.values()
                if item.org_id == org_id and item.user_id == user_id
            ),
            key=lambda pair: -pair[0],
        )

    async def list(
        self,
        org_id: str | None,
        user_id: str,
        *,
        unread_only: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Newest first; the cursor is the sequence of the last item returned."""
        check_page(limit)
        before = _cursor(cursor) if cursor is not None else None
        rows = [
            (seq, item)
            for seq, item in self._mine(org_id, user_id)
            if (before is None or seq < before) and (not unread_only or item.read_at is None)
        ]
        page = rows[:limit]
        more = len(rows) > limit
        return Page(tuple(i for _, i in page), str(page[-1][0]) if more and page else None)

    async def mark_read(self, org_id: str | None, user_id: str, id: str, at: datetime) -> bool:
        """Mark one read."""
        found = self._items.get(id)
        if found is None:
            return False
        seq, item = found
        if item.org_id != org_id or item.user_id != user_id or item.read_at is not None:
            return False
        self._items[id] = (seq, evolve(item, read_at=at))
        return True

    async def mark_all_read(self, org_id: str | None, user_id: str, at: datetime) -> int:
        """Mark all read."""
        n = 0
        for seq, item in self._mine(org_id, user_id):
            if item.read_at is None:
                self._items[item.id] = (seq, evolve(item, read_at=at))
                n += 1
        return n

    async def unread_count(self, org_id: str | None, user_id: str) -> int:
        """How many unread."""
        return sum(1 for _, i in self._mine(org_id, user_id) if i.read_at is None)


# --------------------------------------------------------------------------------------------
# Preferences
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class Preference:
    """One opt-in or opt-out.

    Attributes:
        org_id: Tenant.
        user_id: The user, or `None` for the org-wide default.
        notification: Notification type, or `"*"` for all.
        channel: Channel name (`email`, `in_app`, `webhook`), or `"*"` for all.
        enabled: `True` opts in, `False` opts out.
    """

    org_id: str | None
    user_id: str | None
    notification: str
    channel: str
    enabled: bool

    @property
    def specificity(self) -> tuple[bool, bool, bool]:
        """Sort key: user beats org, a named notification beats `*`, a named channel beats `*`."""
        return (
            self.user_id is not None,
            self.notification != ANY,
            self.channel != ANY,
        )


def resolve_preference(
    prefs: Iterable[Preference], user_id: str, notification: str, channel: str
) -> bool | None:
    """The most specific matching preference's `enabled`, or `None` when none matches."""
    best: Preference | None = None
    for p in prefs:
        if p.user_id not in (None, user_id):
            continue
        if p.notification not in (ANY, notification) or p.channel not in (ANY, channel):
            continue
        if best is None or p.specificity > best.specificity:
            best = p
    return None if best is None else best.enabled


@runtime_checkable
class PreferenceStore(Protocol):
    """Notification preferences per org and user."""

    async def set(self, pref: Preference) -> None:
        """Insert or replace the preference for its (org, user, notification, channel)."""
        ...

    async def remove(
        self, org_id: str | None, user_id: str | None, notification: str, channel: str
    ) -> bool:
        """Delete one; `False` if absent."""
        ...

    async def for_user(self, org_id: str | None, user_id: str) -> list[Preference]:
        """The user's own preferences plus the org-wide ones."""
        ...


class MemoryPreferenceStore:
    """`PreferenceStore` in a dictionary."""

    __slots__ = ("_prefs",)

    def __init__(self) -> None:
        self._prefs: dict[tuple[str | None, str | None, str, str], Preference] = {}

    async def set(self, pref: Preference) -> None:
        """Upsert."""
        self._prefs[(pref.org_id, pref.user_id, pref.notification, pref.channel)] = pref

    async def remove(
        self, org_id: str | None, user_id: str | None, notification: str, channel: str
    ) -> bool:
        """Delete one."""
        return self._prefs.pop((org_id, user_id, notification, channel), None) is not None

    async def for_user(self, org_id: str | None, user_id: str) -> list[Preference]:
        """User's and org-wide preferences, sorted by (user, notification, channel)."""
        found = [
            p for p in self._prefs.values() if p.org_id == org_id and p.user_id in (None, user_id)
        ]
        return sorted(found, key=lambda p: (p.user_id or "", p.notification, p.channel))


# --------------------------------------------------------------------------------------------
# Delivery log
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class DeliveryRecord:
    """One notification delivery to one recipient on one channel.

    Idempotency key: (`notification`, `event_id`, `recipient_id`, `channel`).

    Attributes:
        id: Unique id.
        org_id: Tenant.
        notification: Notification type.
        event_id: Triggering event.
        recipient_id: Recipient.
        channel: Channel name.
        status: `queued`, `sent` or `failed` (gave up).
        attempts: Attempts so far.
        message: The rendered message (`subject`, `body`, `address`, ...), kept for retries.
        created_at: UTC time it was queued.
        next_attempt_at: When a queued delivery is due (after backoff), or `None`.
        sent_at: UTC time it was sent.
        last_error: Error of the last failed attempt.
    """

    id: str
    org_id: str | None
    notification: str
    event_id: str
    recipient_id: str
    channel: str
    status: DeliveryStatus
    attempts: int
    message: Mapping[str, Any]
    created_at: datetime
    next_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    last_error: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The idempotency key."""
        return (self.notification, self.event_id, self.recipient_id, self.channel)


@runtime_checkable
class DeliveryLogStore(Protocol):
    """The notification delivery log."""

    async def create(self, record: DeliveryRecord) -> DeliveryRecord | None:
        """Insert a `queued` record; `None` if one with the same key exists (idempotency)."""
        ...

    async def get(self, id: str) -> DeliveryRecord | None:
        """One record, or `None`."""
        ...

    async def find(
        self, notification: str, event_id: str, recipient_id: str, channel: str
    ) -> DeliveryRecord | None:
        """The record with this idempotency key, or `None`."""
        ...

    async def mark_sent(self, id: str, at: datetime, attempts: int) -> None:
        """Record success."""
        ...

    async def mark_failed(
        self, id: str, error: str, attempts: int, next_attempt_at: datetime | None
    ) -> None:
        """Record a failed attempt; retry at `next_attempt_at`, or give up (`failed`) if `None`."""
        ...

    async def due(self, now: datetime, limit: int = 100) -> list[DeliveryRecord]:
        """Queued records whose `next_attempt_at` has passed, oldest first."""
        ...

    async def list(
        self,
        *,
        org_id: str | None = None,
        status: DeliveryStatus | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Records, oldest first, filtered."""
        ...


class MemoryDeliveryLog:
    """`DeliveryLogStore` in memory."""

    __slots__ = ("_by_key", "_records")

    def __init__(self) -> None:
        self._records: dict[str, DeliveryRecord] = {}
        self._by_key: dict[tuple[str, str, str, str], str] = {}

    async def create(self, record: DeliveryRecord) -> DeliveryRecord | None:
        """Insert unless the key exists."""
        if record.key in self._by_key:
            return None
        if record.id in self._records:
            raise ConflictError(f"delivery {record.id!r} already exists")
        self._records[record.id] = record
        self._by_key[record.key] = record.id
        return record

    async def get(self, id: str) -> DeliveryRecord | None:
        """One record."""
        return self._records.get(id)

    async def find(
        self, notification: str, event_id: str, recipient_id: str, channel: str
    ) -> DeliveryRecord | None:
        """By idempotency key."""
        id = self._by_key.get((notification, event_id, recipient_id, channel))
        return None if id is None else self._records[id]

    def _update(self, id: str, **changes: Any) -> None:
        record = self._records.get(id)
        if record is None:
            raise NotFoundError(f"delivery {id!r} does not exist")
        self._records[id] = evolve(record, **changes)

    async def mark_sent(self, id: str, at: datetime, attempts: int) -> None:
        """Record success."""
        self._update(
            id, status="sent", sent_at=at, attempts=attempts, next_attempt_at=None, last_error=None
        )

    async def mark_failed(
        self, id: str, error: str, attempts: int, next_attempt_at: datetime | None
    ) -> None:
        """Record a failure."""
        self._update(
            id,
            status="queued" if next_attempt_at is not None else "failed",
            attempts=attempts,
            last_error=error,
            next_attempt_at=next_attempt_at,
        )

    async def due(self, now: datetime, limit: int = 100) -> list[DeliveryRecord]:
        """Queued and due, oldest first."""
        check_page(limit)
        rows = [
            r
            for r in self._records.values()
            if r.status == "queued" and r.next_attempt_at is not None and r.next_attempt_at <= now
        ]
        rows.sort(key=lambda r: (r.next_attempt_at or r.created_at, r.created_at))
        return rows[:limit]

    async def list(
        self,
        *,
        org_id: str | None = None,
        status: DeliveryStatus | None = None,
        event_id: str | None = None,
        limit: int = 100,
    ) -> list[DeliveryRecord]:
        """Filtered, in insertion order."""
        check_page(limit)
        rows = [
            r
            for r in self._records.values()
            if (org_id is None or r.org_id == org_id)
            and (status is None or r.status == status)
            and (event_id is None or r.event_id == event_id)
        ]
        return rows[:limit]
