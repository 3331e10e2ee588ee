"""Usage records, the `MeteringStore` port and its in-memory adapter.

A store keeps three things per tenant (`org_id`): usage events (idempotent by `(org_id, id)`),
quota counters (the running total of an additive meter per limit window, updated atomically with
a limit check) and plan assignments. Writes happen inside a `Transaction` (the operation's, so a
rolled-back call leaves no usage); reads see committed data, plus the transaction's own writes
when they are given its `tx` (`total`, `counter`, `plan_of`), never another's uncommitted ones.

`MemoryMeteringStore` and `contractspec.metering.sql.SqlMeteringStore` pass one conformance suite
(memory, SQLite, PostgreSQL). Like a database, the memory store makes a second transaction that
records the same event id or updates the same counter wait until the first one ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from attrs import define, field

from contractspec.core import MemoryUnitOfWork, SpecValidationError, Transaction, UnitOfWork
from contractspec.metering.specs import Aggregation, Meter, Window, to_decimal, window_bounds

__all__ = [
    "Counter",
    "MemoryMeteringStore",
    "MeteringStore",
    "PlanAssignment",
    "Recorded",
    "UsageAggregate",
    "UsageEvent",
    "clean_decimal",
]

_ZERO = Decimal(0)

#: How long a memory transaction waits for another holding the same event id or counter.
LOCK_WAIT_S = 10.0


def clean_decimal(value: Decimal) -> Decimal:
    """`value` without trailing zeros and never in exponent form (`5.000000` → `5`, `1E+3` → `1000`)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def _check_text(value: object, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > 255 or "\x00" in value:
        raise SpecValidationError(
            f"usage event {what} must be a non-empty string of at most 255 characters without "
            f"NUL, got {value!r}",
            details={"field": what},
        )


def _value(value: object) -> Decimal:
    return to_decimal(value, "value")


def _utc(value: object) -> datetime:
    if type(value) is datetime and value.tzinfo is UTC:  # the hot path: already UTC
        return value
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise SpecValidationError(
            f"usage event timestamp must be a timezone-aware datetime, got {value!r}",
            details={"field": "timestamp"},
        )
    return value.astimezone(UTC)


@define(frozen=True)
class UsageEvent:
    """One unit of usage: `value` units of `meter` by `org_id`/`user_id` on `subject` at
    `timestamp`.

    Events are idempotent by `(org_id, id)`: recording an id again is a no-op that returns the
    stored event. The event lands in the window of its `timestamp`, however late it arrives.

    Attributes:
        id: Unique per org (an event id, an operation call's id).
        org_id: The tenant.
        user_id: The user (or service) that caused the usage, or `None`.
        subject: What the usage is attributed to inside the org (a project, an API key, the
            operation name).
        meter: Meter key.
        value: Units (exact `Decimal`, at most 6 decimal places; `1` for `count` meters).
        timestamp: When the usage happened (UTC).
        unique_key: For `unique_count` meters, the distinct value counted (a user id).

    Raises:
        SpecValidationError: An empty or over-long string, a naive timestamp, or a value that is
            not a finite number with at most 6 decimal places.
    """

    id: str
    org_id: str
    user_id: str | None
    subject: str
    meter: str
    value: Decimal = field(converter=_value)
    timestamp: datetime = field(converter=_utc)
    unique_key: str | None = None

    def __attrs_post_init__(self) -> None:
        # the hot path (plain loops: no generator per field); otherwise say which field is wrong
        ok = True
        for v in (self.id, self.org_id, self.subject, self.meter):
            if type(v) is not str or not 0 < len(v) <= 255 or "\x00" in v:
                ok = False
                break
        if ok:
            for o in (self.user_id, self.unique_key):
                if o is not None and (type(o) is not str or not 0 < len(o) <= 255 or "\x00" in o):
                    ok = False
                    break
        if ok:
            return
        _check_text(self.id, "id")
        _check_text(self.org_id, "org_id")
        _check_text(self.user_id, "user_id", optional=True)
        _check_text(self.subject, "subject")
        _check_text(self.meter, "meter")
        _check_text(self.unique_key, "unique_key", optional=True)


@define(frozen=True)
class UsageAggregate:
    """The aggregated usage of one meter for one org, (subject) and window.

    Attributes:
        subject: The subject, or `None` when aggregated over all subjects.
        window_start, window_end: The UTC window `[start, end)`.
        value: The meter's aggregation over the window's events.
    """

    org_id: str
    meter: str
    subject: str | None
    window_start: datetime
    window_end: datetime
    value: Decimal


@define(frozen=True)
class Counter:
    """A quota counter to update with an event: the meter's running total per `window`, checked
    against `limit` (`None`: no check, the usage is only counted)."""

    window: Window
    limit: Decimal | None = None


@define(frozen=True)
class Recorded:
    """What `MeteringStore.record` did.

    Attributes:
        event: The stored event (the earlier one for a duplicate id).
        created: `False` for a duplicate (nothing was written).
        exceeded: The first counter whose limit the event would pass (the caller must roll the
            transaction back), else `None`.
        used: For `exceeded`, the counter's value before this event.
    """

    event: UsageEvent
    created: bool
    exceeded: Counter | None = None
    used: Decimal = Decimal(0)


@define(frozen=True)
class PlanAssignment:
    """Which plan an org is on, since when."""

    org_id: str
    plan: str
    assigned_at: datetime


@runtime_checkable
class MeteringStore(Protocol):
    """Usage events, quota counters and plan assignments (memory or SQL)."""

    @property
    def unit_of_work(self) -> UnitOfWork:
        """A unit of work for writes made outside an operation (ingestion, plan changes)."""
        ...

    async def record(
        self, tx: Transaction, event: UsageEvent, meter: Meter, counters: Sequence[Counter] = ()
    ) -> Recorded:
        """Store `event` in `tx` unless its `(org_id, id)` exists, then add its value (1 for
        `count` meters) to each counter of the event's window, checking limits atomically.

        Raises:
            SpecValidationError: The event names another meter than `meter`.
        """
        ...

    async def record_many(
        self,
        tx: Transaction,
        events: Sequence[UsageEvent],
        meter: Meter,
        windows: Sequence[Window] = (),
    ) -> list[UsageEvent]:
        """`record` for many events of one meter (bulk ingestion): no limit checks, the counters
        of `windows` grow by what was new.

        Returns:
            The stored events in order (the earlier one for a duplicate id, also within `events`).
        """
        ...

    async def counter(
        self,
        org_id: str,
        meter: str,
        window: Window,
        window_start: datetime,
        *,
        tx: Transaction | None = None,
    ) -> Decimal:
        """A counter's committed value (0 when absent), read in `tx` when given (no lock)."""
        ...

    async def get(self, org_id: str, id: str) -> UsageEvent | None:
        """One committed event."""
        ...

    async def events(
        self, org_id: str, meter: str, start: datetime, end: datetime
    ) -> list[UsageEvent]:
        """Committed events of a meter with `start <= timestamp < end`, oldest first."""
        ...

    async def aggregate(
        self,
        meter: Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        by_subject: bool = True,
        subject: str | None = None,
    ) -> list[UsageAggregate]:
        """Usage per (subject,) meter window in `[start, end)`, ordered by subject then window;
        windows without events are absent."""
        ...

    async def total(
        self,
        meter: Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        subject: str | None = None,
        tx: Transaction | None = None,
    ) -> Decimal:
        """The meter's aggregation over all events in `[start, end)` (0 when there are none);
        in `tx` when given, so the transaction's own usage counts."""
        ...

    async def lock_gauge(self, tx: Transaction, org_id: str, meter: str) -> None:
        """Hold the org's gauge `meter` until `tx` ends: another transaction locking it waits
        (a row lock on PostgreSQL, the single writer on SQLite, a claim in memory)."""
        ...

    async def assign_plan(
        self, assignment: PlanAssignment, *, tx: Transaction | None = None
    ) -> None:
        """Set (or replace) the org's plan, in `tx` when given."""
        ...

    async def plan_of(self, org_id: str, *, tx: Transaction | None = None) -> PlanAssignment | None:
        """The org's committed plan assignment (or `tx`'s own uncommitted one), or `None`."""
        ...


def check_event(event: UsageEvent, meter: Meter) -> None:
    """Refuse an event that does not fit its meter (shared by the adapters)."""
    if event.meter != meter.key:
        raise SpecValidationError(
            f"usage event {event.id} is for meter {event.meter!r}, not {meter.key!r}",
            details={"field": "meter"},
        )
    if meter.aggregation is Aggregation.UNIQUE_COUNT and event.unique_key is None:
        raise SpecValidationError(
            f"usage event {event.id}: meter {meter.key} counts distinct keys, so the event needs "
            "unique_key=",
            details={"field": "unique_key"},
        )


def counted(event: UsageEvent, meter: Meter) -> Decimal:
    """What an event adds to a running total: 1 for `count` meters, else its value."""
    return Decimal(1) if meter.aggregation is Aggregation.COUNT else event.value


def combine(aggregation: Aggregation, rows: Iterable[tuple[UsageEvent, int]]) -> Decimal:
    """Aggregate `(event, arrival sequence)` pairs (the memory adapter's GROUP BY)."""
    items = list(rows)
    if not items:
        return Decimal(0)
    if aggregation is Aggregation.SUM:
        total = sum((e.value for e, _ in items), Decimal(0))
    elif aggregation is Aggregation.COUNT:
        total = Decimal(len(items))
    elif aggregation is Aggregation.MAX:
        total = max(e.value for e, _ in items)
    elif aggregation is Aggregation.UNIQUE_COUNT:
        total = Decimal(len({e.unique_key for e, _ in items}))
    else:
        total = max(items, key=lambda pair: (pair[0].timestamp, pair[1]))[0].value
    return clean_decimal(total)


@define
class _Claim:
    """An uncommitted write of one transaction: an event, or a counter delta."""

    tx: Transaction
    event: UsageEvent | None = None
    delta: Decimal = Decimal(0)


class MemoryMeteringStore:
    """`MeteringStore` in process memory (tests, single-process apps, the docs).

    Writes stay private to their transaction until it commits; a transaction that records the
    same event id or updates the same counter as an open one waits for it to end, so concurrent
    quota checks admit exactly the allowed number, as on PostgreSQL.
    """

    __slots__ = ("_claims", "_counters", "_events", "_info_key", "_plans", "_uow")

    def __init__(self) -> None:
        self._uow = MemoryUnitOfWork()
        #: (org_id, id) -> event, in arrival (commit) order: a key is inserted once and never
        #: removed, so the dict's insertion order is the arrival sequence (no per-event tuple)
        self._events: dict[tuple[str, str], UsageEvent] = {}
        #: (org_id, meter, window value, window start) -> committed total; the window as its
        #: text (`"month"`): hashing the enum member runs Python code (`Enum.__hash__`)
        self._counters: dict[tuple[str, str, str, datetime], Decimal] = {}
        self._claims: dict[tuple[object, ...], _Claim] = {}
        self._plans: dict[str, PlanAssignment] = {}
        self._info_key = f"contractspec.metering.memory.{id(self)}"

    @property
    def unit_of_work(self) -> UnitOfWork:
        """A `MemoryUnitOfWork`."""
        return self._uow

    def _try_claim(self, tx: Transaction, key: tuple[object, ...]) -> _Claim | Transaction:
        """The claim of `key` for `tx`, or the open transaction holding it."""
        claim = self._claims.get(key)
        if claim is None:
            claim = self._claims[key] = _Claim(tx)
            held: list[tuple[object, ...]] | None = tx.info.get(self._info_key)
            if held is None:
                held = tx.info[self._info_key] = []
                claims = self._claims

                def release(held: list[tuple[object, ...]] = held) -> None:
                    for k in held:
                        c = claims.get(k)
                        if c is not None and c.tx is tx:
                            del claims[k]

                tx.on_end(release)
            held.append(key)
            return claim
        if claim.tx is tx:
            return claim
        return claim.tx

    async def _claim(self, tx: Transaction, key: tuple[object, ...], what: str) -> _Claim:
        while True:
            got = self._try_claim(tx, key)
            if isinstance(got, _Claim):
                return got
            await tx.wait_for(got, what, LOCK_WAIT_S)

    async def record(
        self, tx: Transaction, event: UsageEvent, meter: Meter, counters: Sequence[Counter] = ()
    ) -> Recorded:
        """See `MeteringStore.record`."""
        check_event(event, meter)
        tx.check_writable("recording usage")
        key = (event.org_id, event.id)
        stored = self._events.get(key)
        if stored is not None:
            return Recorded(stored, False)
        ekey = ("event", *key)
        claim = self._try_claim(tx, ekey)
        if not isinstance(claim, _Claim):  # another open transaction records this id: wait
            claim = await self._claim(tx, ekey, f"usage event {event.id}")
            stored = self._events.get(key)
            if stored is not None:  # committed while this transaction waited
                return Recorded(stored, False)
        if claim.event is not None:
            return Recorded(claim.event, False)
        claim.event = event
        amount = counted(event, meter)
        raised: list[tuple[tuple[str, str, str, datetime], _Claim]] = []

        def undo() -> None:
            claim.event = None
            for _, c in raised:
                c.delta -= amount

        tx.add_undo(undo)
        for counter in counters:
            start, _ = window_bounds(counter.window, event.timestamp)
            ckey = (event.org_id, meter.key, counter.window.value, start)
            cclaim = self._try_claim(tx, ("counter", *ckey))
            if not isinstance(cclaim, _Claim):
                cclaim = await self._claim(tx, ("counter", *ckey), f"the {meter.key} quota counter")
            used = self._counters.get(ckey, _ZERO) + cclaim.delta
            if counter.limit is not None and used + amount > counter.limit:
                return Recorded(event, True, counter, clean_decimal(used))
            cclaim.delta += amount
            raised.append((ckey, cclaim))

        def commit() -> None:
            self._events[key] = event
            for ckey, _ in raised:
                self._counters[ckey] = self._counters.get(ckey, _ZERO) + amount

        tx.on_commit(commit)
        return Recorded(event, True)

    async def record_many(
        self,
        tx: Transaction,
        events: Sequence[UsageEvent],
        meter: Meter,
        windows: Sequence[Window] = (),
    ) -> list[UsageEvent]:
        """See `MeteringStore.record_many`."""
        counters = [Counter(w) for w in windows]
        return [(await self.record(tx, e, meter, counters)).event for e in events]

    async def counter(
        self,
        org_id: str,
        meter: str,
        window: Window,
        window_start: datetime,
        *,
        tx: Transaction | None = None,
    ) -> Decimal:
        """See `MeteringStore.counter`."""
        kind = window.value if type(window) is Window else Window(window).value
        return clean_decimal(self._counters.get((org_id, meter, kind, window_start), _ZERO))

    async def get(self, org_id: str, id: str) -> UsageEvent | None:
        """See `MeteringStore.get`."""
        return self._events.get((org_id, id))

    def _rows(
        self,
        org_id: str,
        meter: str,
        start: datetime,
        end: datetime,
        subject: str | None,
        tx: Transaction | None = None,
    ) -> list[tuple[UsageEvent, int]]:
        events: Iterable[UsageEvent] = self._events.values()
        if tx is not None:  # the transaction's own uncommitted events come after the committed
            mine = [c.event for c in self._claims.values() if c.tx is tx and c.event is not None]
            events = [*events, *mine]
        return [
            (e, seq)
            for seq, e in enumerate(events)
            if e.org_id == org_id
            and e.meter == meter
            and start <= e.timestamp < end
            and (subject is None or e.subject == subject)
        ]

    async def events(
        self, org_id: str, meter: str, start: datetime, end: datetime
    ) -> list[UsageEvent]:
        """See `MeteringStore.events`."""
        rows = self._rows(org_id, meter, start, end, None)
        return [e for e, _ in sorted(rows, key=lambda r: (r[0].timestamp, r[1]))]

    async def aggregate(
        self,
        meter: Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        by_subject: bool = True,
        subject: str | None = None,
    ) -> list[UsageAggregate]:
        """See `MeteringStore.aggregate`."""
        groups: dict[tuple[str | None, datetime], list[tuple[UsageEvent, int]]] = {}
        for e, seq in self._rows(org_id, meter.key, start, end, subject):
            wstart, _ = window_bounds(meter.window, e.timestamp)
            groups.setdefault((e.subject if by_subject else None, wstart), []).append((e, seq))
        out = []
        for (subj, wstart), rows in sorted(
            groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        ):
            _, wend = window_bounds(meter.window, wstart)
            out.append(
                UsageAggregate(
                    org_id, meter.key, subj, wstart, wend, combine(meter.aggregation, rows)
                )
            )
        return out

    async def total(
        self,
        meter: Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        subject: str | None = None,
        tx: Transaction | None = None,
    ) -> Decimal:
        """See `MeteringStore.total`."""
        return combine(meter.aggregation, self._rows(org_id, meter.key, start, end, subject, tx))

    async def lock_gauge(self, tx: Transaction, org_id: str, meter: str) -> None:
        """See `MeteringStore.lock_gauge`."""
        await self._claim(tx, ("gauge", org_id, meter), f"the {meter} gauge of org {org_id}")

    def _pending_plans(self, tx: Transaction) -> dict[str, PlanAssignment]:
        key = f"{self._info_key}.plans"
        pending: dict[str, PlanAssignment] | None = tx.info.get(key)
        if pending is None:
            pending = tx.info[key] = {}
            plans = self._plans

            def commit(pending: dict[str, PlanAssignment] = pending) -> None:
                plans.update(pending)

            tx.on_commit(commit)
        return pending

    async def assign_plan(
        self, assignment: PlanAssignment, *, tx: Transaction | None = None
    ) -> None:
        """See `MeteringStore.assign_plan` (in `tx`: visible to others once it commits)."""
        if tx is None:
            self._plans[assignment.org_id] = assignment
            return
        tx.check_writable("assigning a plan")
        self._pending_plans(tx)[assignment.org_id] = assignment

    async def plan_of(self, org_id: str, *, tx: Transaction | None = None) -> PlanAssignment | None:
        """See `MeteringStore.plan_of`."""
        if tx is not None:
            pending: dict[str, PlanAssignment] | None = tx.info.get(f"{self._info_key}.plans")
            if pending is not None and org_id in pending:
                return pending[org_id]
        return self._plans.get(org_id)
