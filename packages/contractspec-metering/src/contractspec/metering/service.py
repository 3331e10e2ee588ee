"""`Metering`: records usage, enforces entitlements in the executor, aggregates and bills.

```python
registry = SpecRegistry(api_calls, free, pro, meter_operation(search, meter=api_calls), ...)
metering = Metering(registry, MemoryMeteringStore())
executor = Executor(registry, middleware=[metering.middleware()])
await metering.assign_plan("org-1", "free")
```

Everything an operation's usage writes (its usage event and the quota counters) goes through the
call's transaction: a call that commits has its usage stored, one that fails or rolls back (also
inside `executor.batch()` or a joined transaction) leaves none and consumes no quota.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from attrs import define
from pydantic import BaseModel

from contractspec.core import (
    Clock,
    ConfigurationError,
    ContractSpecError,
    HandlerCtx,
    Invocation,
    NotFoundError,
    SpecDefinitionError,
    SpecRegistry,
    SpecValidationError,
    SystemClock,
    TenantScopeError,
    Transaction,
)
from contractspec.core.handler import NextFn
from contractspec.metering.errors import (
    FeatureNotEntitledError,
    QuotaExceededError,
    QuotaRateLimitedError,
)
from contractspec.metering.pricing import InvoiceLine, price_quantity
from contractspec.metering.specs import (
    Aggregation,
    Limit,
    LimitKind,
    Meter,
    MeteredOperation,
    Overage,
    Plan,
    Window,
    resolve_path,
    to_decimal,
    window_bounds,
)
from contractspec.metering.stores import (
    Counter,
    MeteringStore,
    PlanAssignment,
    UsageAggregate,
    UsageEvent,
)

__all__ = ["Invoice", "Metering", "QuotaMiddleware", "to_cloudevent"]

_WINDOW_ORDER = {Window.HOUR: 0, Window.DAY: 1, Window.MONTH: 2}
#: Meters whose value is a reading (a gauge), not a running total: a plan limit on one is a cap.
_GAUGES = frozenset({Aggregation.LATEST, Aggregation.MAX})
#: Start of "all time" for a `latest` gauge's previous reading.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _check_cap(plan: Plan, meter: Meter, limit: Limit) -> None:
    where = f"plan {plan.key}: the limit on gauge {meter.key} ({meter.aggregation.value})"
    if limit.kind is LimitKind.RATE:
        raise SpecDefinitionError(
            f"{where} is a cap on a reading, which no wait lowers; use kind='hard'",
            details={"field": "entitlements", "meter": meter.key},
        )
    if len(plan.limits_for(meter.key)) > 1:
        raise SpecDefinitionError(
            f"{where} is a cap, one value at any moment; declare a single Limit for it",
            details={"field": "entitlements", "meter": meter.key},
        )


def _latest(specs: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name not in out or spec.version > out[spec.name].version:
            out[spec.name] = spec
    return out


def _field(event: Any, name: str) -> Any:
    if isinstance(event, Mapping):
        return event.get(name)
    return getattr(event, name, None)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_cloudevent(
    event: UsageEvent,
    *,
    source: str = "contractspec.metering",
    type: str = "io.contractspec.metering.usage",
    unit: str | None = None,
) -> dict[str, Any]:
    """A usage event as a CloudEvents 1.0 structured-mode JSON object.

    Follows the CloudEvents 1.0 spec (<https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/spec.md>)
    and its JSON format: `specversion`, `id`, `source`, `type`, `subject`, `time` (RFC 3339, UTC),
    `datacontenttype` and `data`. As in OpenMeter's ingestion format, `subject` is the customer
    (`org_id`) and `data` holds the meter and its value; the value is a string so no precision is
    lost in JSON.

    Args:
        event: The usage event.
        source: The `source` URI-reference (your service).
        type: The event `type`.
        unit: The meter's unit, added to `data` when given.

    Returns:
        A JSON-compatible dict (`json.dumps` it for the wire).
    """
    data: dict[str, Any] = {
        "meter": event.meter,
        "value": str(event.value),
        "org_id": event.org_id,
        "subject": event.subject,
        "user_id": event.user_id,
    }
    if event.unique_key is not None:
        data["unique_key"] = event.unique_key
    if unit is not None:
        data["unit"] = unit
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": source,
        "type": type,
        "subject": event.org_id,
        "time": _iso(event.timestamp),
        "datacontenttype": "application/json",
        "data": data,
    }


@define(frozen=True)
class Invoice:
    """Usage charges of one org for a period `[period_start, period_end)`.

    Attributes:
        plan: The plan the lines were priced with.
        lines: One `InvoiceLine` per priced meter, in meter-key order.
        totals: Sum of line amounts per currency.
    """

    org_id: str
    plan: str
    period_start: datetime
    period_end: datetime
    lines: tuple[InvoiceLine, ...]
    totals: Mapping[str, Decimal]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (decimals as strings)."""
        return {
            "org_id": self.org_id,
            "plan": self.plan,
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "lines": [line.to_dict() for line in self.lines],
            "totals": {k: str(v) for k, v in sorted(self.totals.items())},
        }


class Metering:
    """The metering runtime over a registry's meters, plans and metered operations.

    Build it after registering every metering spec (it indexes them once, latest version of
    each name).

    Args:
        registry: Holds `define_meter`, `define_plan` and `meter_operation` specs.
        store: A `MeteringStore` (`MemoryMeteringStore`, `SqlMeteringStore`) on the database of
            the executor's backend.
        clock: Time source for plan assignments and usage recorded without a timestamp.
        default_plan: Plan of orgs that have none assigned (`None`: such orgs may not call
            metered or feature-gated operations).

    Raises:
        SpecDefinitionError: A metered operation, limit or price names an unknown meter, a limit
            is on a meter that is not `sum`/`count`, or `default_plan` is unknown.
    """

    def __init__(
        self,
        registry: SpecRegistry,
        store: MeteringStore,
        *,
        clock: Clock | None = None,
        default_plan: str | None = None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.clock: Clock = clock or SystemClock()
        self.meters: dict[str, Meter] = _latest(registry.specs("meter"))
        self.plans: dict[str, Plan] = _latest(registry.specs("plan"))
        self.bindings: dict[str, MeteredOperation] = _latest(registry.specs("metered_operation"))
        for binding in self.bindings.values():
            if binding.meter is not None:
                self._meter(binding.meter, f"meter_operation({binding.operation!r})")
                for version in registry.versions(binding.operation):
                    if not registry.get(binding.operation, version).is_command:
                        raise SpecDefinitionError(
                            f"meter_operation({binding.operation!r}): "
                            f"{binding.operation}@{version} is a query, but consuming a meter "
                            "writes usage in the call's transaction and queries run read-only; "
                            "declare it with define_command (feature= alone works on queries)",
                            details={"field": "operation", "operation": binding.operation},
                        )
        windows: dict[str, set[Window]] = {}
        for plan in self.plans.values():
            for limit in plan.limits:
                meter = self._meter(limit.meter, f"plan {plan.key}")
                if meter.aggregation in _GAUGES:
                    _check_cap(plan, meter, limit)
                    continue
                if not meter.additive:
                    raise SpecDefinitionError(
                        f"plan {plan.key}: a limit needs a sum or count meter (or, as a cap, a "
                        f"latest or max gauge); {meter.key} is {meter.aggregation.value}",
                        details={"field": "entitlements", "meter": meter.key},
                    )
                if limit.overage is Overage.DENY:
                    windows.setdefault(meter.key, set()).add(limit.window)
            for price in plan.prices:
                self._meter(price.meter, f"plan {plan.key}")
        #: Quota counter windows per meter (every window any plan limits it by).
        self._windows = {
            key: tuple(sorted(ws, key=_WINDOW_ORDER.__getitem__)) for key, ws in windows.items()
        }
        if default_plan is not None and default_plan not in self.plans:
            raise SpecDefinitionError(
                f"default_plan {default_plan!r} is not a registered plan; registered: "
                f"{', '.join(sorted(self.plans)) or 'none'}",
                details={"field": "default_plan"},
            )
        self.default_plan = default_plan
        self._counter_cache: dict[tuple[str, str | None], tuple[Counter, ...]] = {}
        self._by_event: dict[str, list[Meter]] = {}
        for meter in self.meters.values():
            if meter.event is not None:
                self._by_event.setdefault(meter.event, []).append(meter)

    def _meter(self, key: str, where: str) -> Meter:
        meter = self.meters.get(key)
        if meter is None:
            raise SpecDefinitionError(
                f"{where} names meter {key!r}, which is not registered; registered meters: "
                f"{', '.join(sorted(self.meters)) or 'none'}",
                details={"field": "meter", "meter": key},
            )
        return meter

    def meter(self, key: str | Meter) -> Meter:
        """The registered meter `key`.

        Raises:
            NotFoundError: No such meter.
        """
        name = key.key if isinstance(key, Meter) else key
        meter = self.meters.get(name)
        if meter is None:
            raise NotFoundError(
                f"unknown meter {name!r}; registered meters: {', '.join(sorted(self.meters))}",
                details={"meter": name},
            )
        return meter

    # -- plans ----------------------------------------------------------------------------------

    async def assign_plan(
        self, org_id: str, plan: str | Plan, *, tx: Transaction | None = None
    ) -> PlanAssignment:
        """Put `org_id` on `plan` (replacing its current plan), in `tx` when given.

        Usage counted so far in the current windows stays counted: limits of the new plan apply
        to the window's running total.

        Raises:
            NotFoundError: `plan` is not registered.
        """
        key = plan.key if isinstance(plan, Plan) else plan
        if key not in self.plans:
            raise NotFoundError(
                f"unknown plan {key!r}; registered plans: {', '.join(sorted(self.plans))}",
                details={"plan": key},
            )
        if not isinstance(org_id, str) or not org_id:
            raise SpecValidationError(
                "org_id must be a non-empty string", details={"field": "org_id"}
            )
        assignment = PlanAssignment(org_id, key, self.clock.now())
        await self.store.assign_plan(assignment, tx=tx)
        return assignment

    async def plan_of(self, org_id: str, *, tx: Transaction | None = None) -> Plan | None:
        """The org's plan (its assignment, else `default_plan`), or `None`."""
        assignment = await self.store.plan_of(org_id, tx=tx)
        key = assignment.plan if assignment is not None else self.default_plan
        if key is None:
            return None
        plan = self.plans.get(key)
        if plan is None:
            raise ConfigurationError(
                f"org {org_id} is assigned plan {key!r}, which is not registered; register it "
                "or assign another plan",
                details={"plan": key, "org_id": org_id},
            )
        return plan

    # -- recording ------------------------------------------------------------------------------

    def _counters(self, meter: Meter, plan: Plan | None) -> tuple[Counter, ...]:
        key = (meter.key, plan.key if plan is not None else None)
        cached = self._counter_cache.get(key)
        if cached is not None:
            return cached
        windows = self._windows.get(meter.key, ())
        limits = {
            limit.window: limit.limit
            for limit in (plan.limits_for(meter.key) if plan is not None else ())
            if limit.overage is Overage.DENY
        }
        counters = self._counter_cache[key] = tuple(Counter(w, limits.get(w)) for w in windows)
        return counters

    async def record(self, event: UsageEvent, *, tx: Transaction | None = None) -> UsageEvent:
        """Record one usage event (a no-op returning the stored event when its id exists).

        It lands in the window of its timestamp and counts toward the quota counters of that
        window, without a limit check (usage that already happened is never refused).

        Args:
            event: The usage event.
            tx: The operation's transaction (`ctx.tx`), so the usage commits with the call;
                without it the event is stored in a transaction of its own.

        Returns:
            The stored event (the earlier one for a duplicate id).

        Raises:
            NotFoundError: The event's meter is not registered.
            SpecValidationError: The event does not fit its meter (`unique_count` without
                `unique_key`).
        """
        return (await self.record_many([event], tx=tx))[0]

    async def record_many(
        self, events: Sequence[UsageEvent], *, tx: Transaction | None = None
    ) -> list[UsageEvent]:
        """Record several usage events in one transaction (`tx`, or one of their own).

        Returns:
            The stored events, in order.
        """
        by_meter: dict[str, list[int]] = {}
        for i, event in enumerate(events):
            if not isinstance(event, UsageEvent):
                raise SpecValidationError(
                    f"record() takes UsageEvent objects, got {type(event).__name__}",
                    details={"field": "event"},
                )
            by_meter.setdefault(self.meter(event.meter).key, []).append(i)
        own = tx is None
        work = await self.store.unit_of_work.begin() if tx is None else tx
        try:
            out: list[UsageEvent | None] = [None] * len(events)
            for key, positions in by_meter.items():
                stored = await self.store.record_many(
                    work,
                    [events[i] for i in positions],
                    self.meters[key],
                    self._windows.get(key, ()),
                )
                for i, event in zip(positions, stored, strict=True):
                    out[i] = event
            if own:
                await work.commit()
            return [e for e in out if e is not None]
        except BaseException:
            if own:
                await work.rollback()
            raise

    def usage_from_event(self, event: Any) -> list[UsageEvent]:
        """The usage events a delivered event yields: one per meter fed by its name.

        `event` is a core `EventEnvelope`, a bus message, or a mapping with `id`, `name`,
        `org_id`, `occurred_at` (datetime or ISO 8601 text), `payload` (model or mapping) and
        optionally `actor_id`. Each usage event's id is `<event id>:<meter key>`, so delivering
        the same event again records nothing new.

        Raises:
            SpecValidationError: A field is missing (`org_id`, `occurred_at`, a payload path).
        """
        name = _field(event, "name")
        meters = self._by_event.get(name, []) if isinstance(name, str) else []
        if not meters:
            return []
        event_id = _field(event, "id")
        org_id = _field(event, "org_id")
        if not isinstance(event_id, str) or not event_id:
            raise SpecValidationError(
                f"event {name} has no id; usage from events is idempotent by event id",
                details={"field": "id"},
            )
        if not isinstance(org_id, str) or not org_id:
            raise SpecValidationError(
                f"event {name} {event_id} has no org_id; usage is always attributed to an org",
                details={"field": "org_id"},
            )
        occurred = _field(event, "occurred_at")
        if isinstance(occurred, str):
            try:
                occurred = datetime.fromisoformat(occurred)
            except ValueError:
                occurred = None
        if not isinstance(occurred, datetime):
            raise SpecValidationError(
                f"event {name} {event_id} needs occurred_at (a datetime or ISO 8601 text): usage "
                "lands in the window of the event's time",
                details={"field": "occurred_at"},
            )
        payload = _field(event, "payload")
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="python")
        if not isinstance(payload, Mapping):
            raise SpecValidationError(
                f"event {name} {event_id} has no payload mapping", details={"field": "payload"}
            )
        actor = _field(event, "actor_id")
        out = []
        for meter in meters:
            unique_key: str | None = None
            if meter.aggregation is Aggregation.UNIQUE_COUNT:
                unique_key = str(resolve_path(payload, meter.value or ""))
                value = Decimal(1)
            elif meter.value is None:
                value = Decimal(1)
            else:
                value = to_decimal(resolve_path(payload, meter.value), f"{name}.{meter.value}")
            subject = str(resolve_path(payload, meter.subject)) if meter.subject else name
            out.append(
                UsageEvent(
                    id=f"{event_id}:{meter.key}",
                    org_id=org_id,
                    user_id=actor if isinstance(actor, str) and actor else None,
                    subject=subject,
                    meter=meter.key,
                    value=value,
                    timestamp=occurred,
                    unique_key=unique_key,
                )
            )
        return out

    async def ingest(self, event: Any, tx: Transaction | None = None) -> list[UsageEvent]:
        """Consume one delivered event: record the usage it yields (see `usage_from_event`).

        Fits both a bus subscriber (`async def handler(event)`) and the bus's
        `IdempotentConsumer` (`async def handler(event, tx)`); it is idempotent on its own, by
        event id. Events no meter listens to are ignored.

        Returns:
            The stored usage events.
        """
        usage = self.usage_from_event(event)
        if not usage:
            return []
        return await self.record_many(usage, tx=tx)

    # -- reading ----------------------------------------------------------------------------------

    async def usage(
        self,
        meter: str | Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        by_subject: bool = True,
        subject: str | None = None,
    ) -> list[UsageAggregate]:
        """Aggregated usage per (subject and) meter window in `[start, end)` (see the store)."""
        m = self.meter(meter)
        _check_period(start, end)
        return await self.store.aggregate(
            m, org_id, start, end, by_subject=by_subject, subject=subject
        )

    async def current(
        self,
        meter: str | Meter,
        org_id: str,
        *,
        subject: str | None = None,
        tx: Transaction | None = None,
        at: datetime | None = None,
    ) -> UsageAggregate:
        """The running total (or gauge reading) of the meter's window containing `at` (default:
        the clock's now), over all subjects unless `subject` is given.

        Args:
            meter: The meter or its key.
            org_id: The org.
            subject: Only this subject's usage.
            tx: Read in this transaction (an operation's `ctx.tx`): its own uncommitted usage
                counts, other transactions' uncommitted usage never does.
            at: An aware datetime inside the window to read (`ctx.now()` in an operation).

        Raises:
            NotFoundError: Unknown meter.
        """
        m = self.meter(meter)
        start, end = window_bounds(m.window, at if at is not None else self.clock.now())
        value = await self.store.total(m, org_id, start, end, subject=subject, tx=tx)
        return UsageAggregate(org_id, m.key, subject, start, end, value)

    def cap(self, plan: Plan | None, meter: str | Meter) -> Limit | None:
        """The plan's cap on a gauge meter (a `Limit` on a `latest`/`max` meter), or `None`."""
        m = self.meter(meter)
        if plan is None or m.aggregation not in _GAUGES:
            return None
        return next(iter(plan.limits_for(m.key)), None)

    async def gauge(
        self,
        ctx: HandlerCtx,
        meter: str | Meter,
        value: object | Callable[[], Awaitable[object]],
        *,
        org_id: str | None = None,
        subject: str | None = None,
    ) -> UsageEvent:
        """Record a gauge reading (seats in use, projects, storage held) in the call's
        transaction, checked against the org's plan cap at the moment of the call.

        The org's gauge is locked first (`MeteringStore.lock_gauge`: a row lock on PostgreSQL),
        then `value` is read, so concurrent calls that change what the gauge measures take
        their readings one after the other: pass a callable that counts (`lambda:
        count_seats(ctx)`) rather than a number counted before the call. A reading above the
        plan's cap (`Limit(meter, n)` on a `latest` or `max` meter, `overage="deny"`) that is
        also above the previous reading is refused: `QuotaExceededError` (HTTP 402), recorded
        as the call's denial, and the call rolls back. Readings that do not grow are always
        recorded, so an org over its cap after a downgrade can still shrink.

        Args:
            ctx: The operation's handler context (its transaction, clock, actor, id source).
            meter: A `latest` or `max` meter (or its key).
            value: The reading (a number), or an async callable returning it, called after the
                lock is held.
            org_id: The org measured (default `ctx.org_id`; e.g. a new org's id when the call
                that creates it runs outside any org).
            subject: Subject of the usage event (default: the meter key).

        Returns:
            The recorded `UsageEvent`.

        Raises:
            SpecValidationError: The meter is not a `latest`/`max` gauge, or the reading is not
                a number with at most 6 decimal places.
            TenantScopeError: No org (`org_id` not given and `ctx.org_id` is `None`).
            QuotaExceededError: The reading grows past the plan's cap.
        """
        m = self.meter(meter)
        if m.aggregation not in _GAUGES:
            raise SpecValidationError(
                f"gauge() records readings of a latest or max meter; {m.key} is "
                f"{m.aggregation.value} (use record() or meter_operation for running totals)",
                details={"field": "meter", "meter": m.key},
            )
        org = org_id if org_id is not None else ctx.org_id
        if org is None:
            raise TenantScopeError(
                f"gauge {m.key} needs an org: call it inside an org or pass org_id=",
                details={"field": "org_id", "meter": m.key},
            )
        if not callable(value):
            _reading(m, value)  # a bad number fails before any lock is taken
        tx = ctx.tx
        await self.store.lock_gauge(tx, org, m.key)
        reading = _reading(m, await value() if callable(value) else value)
        now = ctx.now()
        plan = await self.plan_of(org, tx=tx)
        cap = self.cap(plan, m)
        capped = plan is not None and cap is not None and cap.overage is Overage.DENY
        if plan is not None and cap is not None and capped and reading > cap.limit:
            # previous reading: a latest gauge's last one ever, a max gauge's window maximum
            start, end = window_bounds(m.window, now)
            since = _EPOCH if m.aggregation is Aggregation.LATEST else start
            previous = await self.store.total(m, org, since, end, tx=tx)
            if reading > previous:
                raise _refused(
                    ctx,
                    m.key,
                    QuotaExceededError(
                        f"org {org} on plan {plan.key!r} has {m.key} capped at {cap.limit} "
                        f"({m.unit}); this call would take it from {previous} to {reading}; "
                        f"upgrade the plan or bring {m.key} down first",
                        plan=plan.key,
                        meter=m.key,
                        window=m.window.value,
                        limit=cap.limit,
                        used=previous,
                        requested=reading - previous,
                        window_end=end,
                    ),
                )
        actor = ctx.actor
        event = UsageEvent(
            id=ctx.new_id(),
            org_id=org,
            user_id=None if actor.is_anonymous else actor.id,
            subject=subject or m.key,
            meter=m.key,
            value=reading,
            timestamp=now,
        )
        await self.store.record(tx, event, m, ())
        return event

    async def events(
        self, meter: str | Meter, org_id: str, start: datetime, end: datetime
    ) -> list[UsageEvent]:
        """The usage events of `[start, end)`, oldest first."""
        m = self.meter(meter)
        _check_period(start, end)
        return await self.store.events(org_id, m.key, start, end)

    async def export_cloudevents(
        self,
        meter: str | Meter,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        source: str = "contractspec.metering",
    ) -> list[dict[str, Any]]:
        """The period's usage events as CloudEvents 1.0 JSON objects (see `to_cloudevent`)."""
        m = self.meter(meter)
        return [
            to_cloudevent(e, source=source, unit=m.unit)
            for e in await self.events(m, org_id, start, end)
        ]

    async def invoice(
        self,
        org_id: str,
        start: datetime,
        end: datetime,
        *,
        plan: str | None = None,
        rounding: str = ROUND_HALF_EVEN,
    ) -> Invoice:
        """Invoice lines of the period `[start, end)`: each priced meter's aggregation over the
        period (`total`) * the plan's price (see `contractspec.metering.pricing`).

        Args:
            org_id: The org.
            start: Start of the billing period (aware datetime, inclusive).
            end: End of the billing period (exclusive).
            plan: Price with this plan instead of the org's current one.
            rounding: Rounding mode of each line total (default `ROUND_HALF_EVEN`).

        Raises:
            NotFoundError: The org has no plan (and none is given), or `plan` is unknown.
        """
        _check_period(start, end)
        chosen = self.plans.get(plan) if plan is not None else await self.plan_of(org_id)
        if chosen is None:
            raise NotFoundError(
                f"org {org_id} has no plan to price its usage with; assign one or pass plan=",
                details={"org_id": org_id, "plan": plan},
            )
        lines = []
        totals: dict[str, Decimal] = {}
        for price in sorted(chosen.prices, key=lambda p: p.meter):
            m = self.meters[price.meter]
            quantity = await self.store.total(m, org_id, start, end)
            line = price_quantity(price, quantity, unit=m.unit, rounding=rounding)
            lines.append(line)
            totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount
        return Invoice(org_id, chosen.key, start, end, tuple(lines), totals)

    # -- enforcement ------------------------------------------------------------------------------

    def middleware(self) -> QuotaMiddleware:
        """The executor middleware that gates features and enforces limits: pass it as
        `Executor(..., middleware=[metering.middleware()])`."""
        return QuotaMiddleware(self)


def _reading(meter: Meter, raw: object) -> Decimal:
    try:
        return to_decimal(raw, "value")
    except SpecValidationError as exc:
        raise SpecValidationError(
            f"gauge {meter.key}: {exc.message}", details={"field": "value", "meter": meter.key}
        ) from None


def _check_period(start: datetime, end: datetime) -> None:
    if not isinstance(start, datetime) or not isinstance(end, datetime):
        raise SpecValidationError("start and end must be datetimes", details={"field": "start"})
    if start.tzinfo is None or end.tzinfo is None:
        raise SpecValidationError(
            "start and end must be timezone-aware (UTC)", details={"field": "start"}
        )
    if end <= start:
        raise SpecValidationError(
            f"the period must end after it starts ({start.isoformat()} .. {end.isoformat()})",
            details={"field": "end"},
        )


def _quota_error(
    plan: Plan,
    meter: Meter,
    limit: Limit,
    used: Decimal,
    amount: Decimal,
    org_id: str,
    now: datetime,
) -> QuotaExceededError:
    _, end = window_bounds(limit.window, now)
    wait = max((end - now).total_seconds(), 0.0)
    rate = limit.kind is LimitKind.RATE
    message = (
        f"org {org_id} on plan {plan.key!r} has used {used} of {limit.limit} {meter.unit} per "
        f"{limit.window.value} on {meter.key} and this call needs {amount} more; "
        + (
            f"retry after {_iso(end)} ({wait:.0f} s)"
            if rate
            else f"upgrade the plan or wait until the {limit.window.value} ends at {_iso(end)}"
        )
    )
    cls = QuotaRateLimitedError if rate else QuotaExceededError
    return cls(
        message,
        plan=plan.key,
        meter=meter.key,
        window=limit.window.value,
        limit=limit.limit,
        used=used,
        requested=amount,
        window_end=end,
        retry_after_s=wait if rate else None,
    )


def _refused(ctx: HandlerCtx, action: str, error: ContractSpecError) -> ContractSpecError:
    """`error`, after recording it as the call's denial with `ctx.deny` (audited once, at the end).

    The denial's `permission` is `action` (the feature or meter key), its `reason` the error's
    message and its `matched_rule` the error's code.
    """
    ctx.deny(action, error.message, rule=error.code)
    return error


class QuotaMiddleware:
    """Executor middleware: feature gates and atomic limit checks for metered operations.

    For an operation bound with `meter_operation`:

    1. the org's plan must exist and include the binding's `feature`
       (`FeatureNotEntitledError`, before the handler runs);
    2. with a static amount, a call that would exceed a committed counter is refused before the
       handler runs (a fast path; the check that counts is step 4);
    3. the handler runs;
    4. the usage event is recorded in the call's transaction and every limit window's counter is
       raised only if it stays within the limit, in one atomic statement per counter; otherwise
       `QuotaExceededError` (hard limit, HTTP 402) or `QuotaRateLimitedError` (rate limit, HTTP
       429 with `Retry-After`) is raised and the whole call rolls back.

    An operation bound to a `latest` or `max` gauge reports a reading instead (its `amount`,
    e.g. `"output.seats"`): after the handler, `Metering.gauge` records it and refuses it past
    the plan's cap. The reading is computed by the handler before the gauge lock is taken, so
    for caps that concurrent calls race for, call `Metering.gauge` with a counting callable
    from the handler instead.

    Operations without a binding pass through untouched.

    Every refusal (steps 1, 2 and 4) is also recorded once in the audit trail as a denial, with
    the core mechanism of policy denials (`HandlerCtx.deny`): one `denied` record whose
    `matched_rule` is the error code (`feature_not_entitled`, `quota_exceeded`,
    `quota_rate_limited`), whose `permission` is the feature or meter key and whose `reason` is
    the error message. It is written when the call ends, after the call's rollback (so it never
    waits on the call's own locks), and the refused call leaves no usage and no counter change.
    Refusals of unauthenticated callers are counted, not audited, as core does for all denials.

    Raises:
        TenantScopeError: A metered operation was called without an `org_id`.
    """

    __slots__ = ("_metering",)

    def __init__(self, metering: Metering) -> None:
        self._metering = metering

    async def __call__(self, invocation: Invocation, call_next: NextFn) -> BaseModel:
        m = self._metering
        binding = m.bindings.get(invocation.spec.name)
        if binding is None:
            return await call_next(invocation)
        ctx = invocation.ctx
        org_id = ctx.org_id
        op = invocation.spec.ref
        if org_id is None:
            raise TenantScopeError(
                f"{op} is metered, so it needs the caller's org_id (usage and plans are per org)",
                details={"operation": op},
            )
        plan = await m.plan_of(org_id, tx=ctx.tx)
        if plan is None:
            raise _refused(
                ctx,
                binding.feature or binding.meter or invocation.spec.name,
                FeatureNotEntitledError(
                    f"org {org_id} has no plan, so it may not call {op}; assign a plan "
                    "(Metering.assign_plan) or configure default_plan",
                    plan=None,
                    feature=binding.feature,
                ),
            )
        if binding.feature is not None and binding.feature not in plan.features:
            raise _refused(
                ctx,
                binding.feature,
                FeatureNotEntitledError(
                    f"{op} needs feature {binding.feature!r}, which plan {plan.key!r} of org "
                    f"{org_id} does not include; move the org to a plan that does",
                    plan=plan.key,
                    feature=binding.feature,
                ),
            )
        if binding.meter is None:
            return await call_next(invocation)
        meter = m.meters[binding.meter]
        if meter.aggregation in _GAUGES:  # the call reports a reading: checked against the cap
            output = await call_next(invocation)
            reading = binding.amount_of(invocation.input, output)
            subject = binding.subject_of(invocation.input, output)
            await m.gauge(ctx, meter, reading, org_id=org_id, subject=subject)
            return output
        now = ctx.now()
        counters = m._counters(meter, plan)
        static = binding.static_amount
        if static is not None:
            amount = Decimal(1) if meter.aggregation is Aggregation.COUNT else static
            for counter in counters:
                if counter.limit is not None:
                    start, _ = window_bounds(counter.window, now)
                    used = await m.store.counter(
                        org_id, meter.key, counter.window, start, tx=ctx.tx
                    )
                    if used + amount > counter.limit:
                        limit = next(
                            x for x in plan.limits_for(meter.key) if x.window is counter.window
                        )
                        raise _refused(
                            ctx,
                            meter.key,
                            _quota_error(plan, meter, limit, used, amount, org_id, now),
                        )
        output = await call_next(invocation)
        amount = binding.amount_of(invocation.input, output)
        actor = ctx.actor
        user_id = None if actor.is_anonymous else actor.id
        event = UsageEvent(
            id=ctx.new_id(),
            org_id=org_id,
            user_id=user_id,
            subject=binding.subject_of(invocation.input, output),
            meter=meter.key,
            value=amount,
            timestamp=now,
            unique_key=user_id if meter.aggregation is Aggregation.UNIQUE_COUNT else None,
        )
        recorded = await m.store.record(ctx.tx, event, meter, counters)
        exceeded = recorded.exceeded
        if exceeded is not None:
            limit = next(x for x in plan.limits_for(meter.key) if x.window is exceeded.window)
            counted = Decimal(1) if meter.aggregation is Aggregation.COUNT else amount
            raise _refused(
                ctx,
                meter.key,
                _quota_error(plan, meter, limit, recorded.used, counted, org_id, now),
            )
        return output
