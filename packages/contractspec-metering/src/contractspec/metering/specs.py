"""Meters, plans and metered operations: the metering part of a spec.

A **meter** says what is counted and how (`define_meter`): its unit, how events of one window
combine (`sum`, `count`, `max`, `unique_count`, `latest`), the window (`hour`, `day`, `month`, in
UTC) and where values come from (an event payload path, or the operations bound to it with
`meter_operation`). A **plan** (`define_plan`) grants entitlements (boolean `Feature`s and numeric
`Limit`s per window) and prices (`Price`, with flat, graduated or volume tiers). Every spec has a
`to_ir()`, so meters, plans and bindings appear in `registry.to_ir()` and in the spec diff.

The vocabulary follows OpenMeter (meters, aggregations, windows: <https://openmeter.io/docs>),
Lago and Orb (billable metrics and charges) and Stripe metered billing (tiers:
<https://docs.stripe.com/products-prices/pricing-models>).
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from attrs import define, field
from pydantic import BaseModel

from contractspec.core import OperationSpec, SpecDefinitionError, SpecValidationError

__all__ = [
    "Aggregation",
    "Feature",
    "Limit",
    "LimitKind",
    "Meter",
    "MeteredOperation",
    "Overage",
    "Plan",
    "Price",
    "Tier",
    "TiersMode",
    "Window",
    "define_meter",
    "define_plan",
    "meter_operation",
    "resolve_path",
    "to_decimal",
    "window_bounds",
]

#: Digits after the decimal point a usage value or limit may have (SQLite stores micro-units).
VALUE_PLACES = 6

_KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


class Aggregation(enum.StrEnum):
    """How the usage events of one window combine (OpenMeter's meter aggregations).

    * `sum` — the sum of values;
    * `count` — the number of events (values are ignored);
    * `max` — the largest value;
    * `unique_count` — the number of distinct `unique_key`s (e.g. active users);
    * `latest` — the value of the event with the latest timestamp (ties: the one recorded last),
      for gauges such as seats or storage in use.
    """

    SUM = "sum"
    COUNT = "count"
    MAX = "max"
    UNIQUE_COUNT = "unique_count"
    LATEST = "latest"


class Window(enum.StrEnum):
    """A tumbling UTC window: `hour`, `day` or calendar `month`."""

    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class LimitKind(enum.StrEnum):
    """`hard`: a plan allowance (over it → HTTP 402, upgrade the plan); `rate`: a rate limit
    (over it → HTTP 429 with `Retry-After` = seconds until the window ends)."""

    HARD = "hard"
    RATE = "rate"


class Overage(enum.StrEnum):
    """What happens past a limit: `deny` the call, or `allow` it (the usage is billed by price)."""

    DENY = "deny"
    ALLOW = "allow"


class TiersMode(enum.StrEnum):
    """How a price turns a quantity into an amount (Stripe's pricing models).

    * `flat` — per unit: `quantity * unit_amount` (Stripe `billing_scheme=per_unit`);
    * `graduated` — each unit is priced by the tier it falls in, plus the `flat_amount` of every
      tier reached (Stripe `tiers_mode=graduated`);
    * `volume` — every unit is priced by the one tier the total quantity falls in, plus that
      tier's `flat_amount` (Stripe `tiers_mode=volume`).
    """

    FLAT = "flat"
    GRADUATED = "graduated"
    VOLUME = "volume"


#: The window `window_bounds` returned last, per window kind: calls in a row (every metered call
#: of the current hour, day or month) reuse it after two comparisons. Bounds are pure values, so a
#: stale entry is only a miss.
_LAST_BOUNDS: dict[Window, tuple[datetime, datetime]] = {}


def window_bounds(window: Window | str, at: datetime) -> tuple[datetime, datetime]:
    """The `[start, end)` of the UTC `window` that contains `at`.

    Raises:
        SpecValidationError: `at` is naive (no timezone).
    """
    if at.tzinfo is None:
        raise SpecValidationError(
            f"timestamp {at.isoformat()} has no timezone; pass an aware datetime (UTC)",
            details={"field": "timestamp"},
        )
    w = window if type(window) is Window else Window(window)
    last = _LAST_BOUNDS.get(w)
    if last is not None and last[0] <= at < last[1]:  # aware comparisons work across zones
        return last
    t = at if at.tzinfo is UTC else at.astimezone(UTC)
    if w is Window.HOUR:
        start = datetime(t.year, t.month, t.day, t.hour, tzinfo=UTC)
        bounds = start, start + timedelta(hours=1)
    elif w is Window.DAY:
        start = datetime(t.year, t.month, t.day, tzinfo=UTC)
        bounds = start, start + timedelta(days=1)
    else:
        start = datetime(t.year, t.month, 1, tzinfo=UTC)
        bounds = (
            start,
            (
                datetime(t.year + 1, 1, 1, tzinfo=UTC)
                if t.month == 12
                else datetime(t.year, t.month + 1, 1, tzinfo=UTC)
            ),
        )
    _LAST_BOUNDS[w] = bounds
    return bounds


def to_decimal(value: object, what: str) -> Decimal:
    """`value` as an exact, finite `Decimal` with at most 6 decimal places.

    Floats are converted through `str` (so `0.1` is `Decimal("0.1")`), bools are refused.

    Raises:
        SpecValidationError: Not a number, not finite, or more than 6 decimal places.
    """
    if type(value) is Decimal and value.is_finite():  # the hot path: already a Decimal
        exp = value.as_tuple().exponent
        if isinstance(exp, int) and exp >= -VALUE_PLACES and value.adjusted() < 30:
            return value
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise SpecValidationError(
            f"{what} must be a number, got {type(value).__name__} {value!r}",
            details={"field": what},
        )
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise SpecValidationError(
            f"{what} must be a number, got {value!r}", details={"field": what}
        ) from None
    if not number.is_finite():
        raise SpecValidationError(f"{what} must be finite, got {value!r}", details={"field": what})
    exponent = number.as_tuple().exponent
    if (
        isinstance(exponent, int)
        and exponent < -VALUE_PLACES
        and number != number.quantize(Decimal(1).scaleb(-VALUE_PLACES))
    ):
        raise SpecValidationError(
            f"{what} {value!r} has more than {VALUE_PLACES} decimal places; round it or use a "
            "smaller unit",
            details={"field": what},
        )
    if abs(number) >= Decimal(10) ** 30:
        raise SpecValidationError(
            f"{what} {value!r} is too large (at most 30 integer digits)", details={"field": what}
        )
    return number


def resolve_path(data: Any, path: str) -> Any:
    """The value at a dotted `path` in `data` (mappings, pydantic models, objects, list indexes).

    `"payload.items.0.qty"` reads `data["payload"]["items"][0]["qty"]`.

    Raises:
        SpecValidationError: A segment is missing, naming the path and the segment.
    """
    current = data
    for segment in path.split("."):
        if isinstance(current, Mapping):
            if segment not in current:
                raise SpecValidationError(
                    f"path {path!r}: no {segment!r} in the data", details={"field": path}
                )
            current = current[segment]
        elif isinstance(current, Sequence) and not isinstance(current, str | bytes):
            try:
                current = current[int(segment)]
            except (ValueError, IndexError):
                raise SpecValidationError(
                    f"path {path!r}: no item {segment!r} in the list", details={"field": path}
                ) from None
        elif hasattr(current, segment) and not segment.startswith("_"):
            current = getattr(current, segment)
        else:
            raise SpecValidationError(
                f"path {path!r}: no {segment!r} in the data", details={"field": path}
            )
    return current


def _check_key(key: object, what: str) -> str:
    if not isinstance(key, str) or not _KEY.match(key):
        raise SpecDefinitionError(
            f"{what} key must be a dotted lowercase name such as 'api.calls', got {key!r}",
            details={"field": "key"},
        )
    return key


def _check_path(path: object, what: str) -> str | None:
    if path is None:
        return None
    if not isinstance(path, str) or not path or any(not s for s in path.split(".")):
        raise SpecDefinitionError(
            f"{what} must be a dotted path such as 'size_bytes' or 'items.0.qty', got {path!r}",
            details={"field": what},
        )
    return path


def _enum(cls: type[enum.StrEnum], value: object, what: str) -> Any:
    try:
        return cls(str(value)) if isinstance(value, str) else cls(value)  # type: ignore[arg-type]
    except ValueError:
        choices = ", ".join(m.value for m in cls)
        raise SpecDefinitionError(
            f"{what} must be one of {choices}; got {value!r}", details={"field": what}
        ) from None


def _limit(value: object) -> Decimal:
    return _spec_decimal(value, "limit")


def _up_to(value: object) -> Decimal | None:
    return None if value is None else _spec_decimal(value, "up_to")


def _unit_amount(value: object) -> Decimal:
    return _spec_decimal(value, "unit_amount")


def _flat_amount(value: object) -> Decimal:
    return _spec_decimal(value, "flat_amount")


def _window(value: object) -> Window:
    return _enum(Window, value, "window")  # type: ignore[no-any-return]


def _limit_kind(value: object) -> LimitKind:
    return _enum(LimitKind, value, "kind")  # type: ignore[no-any-return]


def _overage(value: object) -> Overage:
    return _enum(Overage, value, "overage")  # type: ignore[no-any-return]


def _mode(value: object) -> TiersMode:
    return _enum(TiersMode, value, "mode")  # type: ignore[no-any-return]


def _spec_decimal(value: object, what: str) -> Decimal:
    try:
        return to_decimal(value, what)
    except SpecValidationError as exc:
        raise SpecDefinitionError(exc.message, details={"field": what}) from None


# --------------------------------------------------------------------------------------------
# Meters
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class Meter:
    """A meter: what is counted, how it aggregates per window, and where values come from.

    Attributes:
        key: Dotted name (`api.calls`), also the spec name.
        unit: Unit of the values (`call`, `byte`, `token`, `seat`).
        aggregation: How events of one window combine.
        window: The tumbling UTC window usage is grouped by.
        event: Name of the event that feeds this meter (`files.file.uploaded`), or `None` when
            only operations feed it (`meter_operation`).
        value: Dotted path of the value in the event payload (`size_bytes`). For `unique_count`
            meters it is the path of the distinct key (`user_id`). `None` for `count` meters.
        subject: Dotted payload path of the subject usage is attributed to (`project_id`), or
            `None` to use the event name.
        description: Reference-doc paragraph.
        version: Spec version (default 1).
    """

    key: str
    unit: str
    aggregation: Aggregation = Aggregation.SUM
    window: Window = Window.MONTH
    event: str | None = None
    value: str | None = None
    subject: str | None = None
    description: str = ""
    version: int = 1

    @property
    def kind(self) -> str:
        """Spec kind in the registry: `meter`."""
        return "meter"

    @property
    def name(self) -> str:
        """The key (spec name)."""
        return self.key

    @property
    def additive(self) -> bool:
        """Whether the window total is a running sum (`sum`, `count`): only those can be limited."""
        return self.aggregation in (Aggregation.SUM, Aggregation.COUNT)

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        return {
            "unit": self.unit,
            "aggregation": self.aggregation.value,
            "window": self.window.value,
            "event": self.event,
            "value": self.value,
            "subject": self.subject,
            "description": self.description,
        }


def define_meter(
    key: str,
    *,
    unit: str,
    aggregation: Aggregation | str = Aggregation.SUM,
    window: Window | str = Window.MONTH,
    event: str | None = None,
    value: str | None = None,
    subject: str | None = None,
    description: str = "",
    version: int = 1,
) -> Meter:
    """Declare a meter.

    Args:
        key: Dotted lowercase name (`api.calls`, `storage.bytes`).
        unit: Unit of the values, for documents and exports (`call`, `byte`).
        aggregation: `sum` (default), `count`, `max`, `unique_count` or `latest`.
        window: `hour`, `day` or `month` (default), in UTC.
        event: Event name whose payloads feed the meter through `Metering.ingest`.
        value: Payload path of the value (`size_bytes`); required with `event` unless the
            aggregation is `count`. For `unique_count`, the path of the distinct key.
        subject: Payload path of the subject (`project_id`); default: the event name.
        description: Reference-doc paragraph.
        version: Spec version.

    Returns:
        A frozen `Meter`; register it in the `SpecRegistry`.

    Raises:
        SpecDefinitionError: A malformed key, unknown aggregation or window, or an `event` meter
            without the `value` path its aggregation needs.

    Example:
        ```python
        api_calls = define_meter("api.calls", unit="call", aggregation="count", window="day")
        storage = define_meter(
            "storage.bytes", unit="byte", event="files.file.uploaded", value="size_bytes"
        )
        ```
    """
    _check_key(key, "meter")
    if not isinstance(unit, str) or not unit:
        raise SpecDefinitionError(
            f"meter {key}: unit must be a non-empty string such as 'call'",
            details={"field": "unit"},
        )
    agg = _enum(Aggregation, aggregation, "aggregation")
    win = _enum(Window, window, "window")
    if event is not None and (not isinstance(event, str) or not event):
        raise SpecDefinitionError(
            f"meter {key}: event must be an event name, got {event!r}", details={"field": "event"}
        )
    value = _check_path(value, "value")
    subject = _check_path(subject, "subject")
    if event is not None and value is None and agg is not Aggregation.COUNT:
        raise SpecDefinitionError(
            f"meter {key}: a {agg.value} meter fed by {event!r} needs value= (the payload path "
            "of the value, e.g. value='size_bytes')",
            details={"field": "value"},
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"meter {key}: version must be a positive integer", details={"field": "version"}
        )
    return Meter(key, unit, agg, win, event, value, subject, description, version)


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class Feature:
    """A boolean entitlement: the plan includes `key` (`sso`, `audit_export`)."""

    key: str = field()

    @key.validator
    def _check(self, _attr: object, value: object) -> None:
        _check_key(value, "feature")

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        return {"type": "feature", "key": self.key}


@define(frozen=True)
class Limit:
    """A numeric entitlement: at most `limit` units of `meter` per `window`.

    Attributes:
        meter: Key of a `sum` or `count` meter.
        limit: Allowed units per window (exact decimal, ≥ 0).
        window: The UTC window the allowance resets with (`hour`, `day`, `month`).
        kind: `hard` (HTTP 402 when exceeded) or `rate` (HTTP 429 with `Retry-After`).
        overage: `deny` (default) refuses the call that would exceed the limit; `allow` lets it
            through (the usage past the limit is billed by the plan's price).
    """

    meter: str
    limit: Decimal = field(converter=_limit)
    window: Window = field(default=Window.MONTH, converter=_window)
    kind: LimitKind = field(default=LimitKind.HARD, converter=_limit_kind)
    overage: Overage = field(default=Overage.DENY, converter=_overage)

    def __attrs_post_init__(self) -> None:
        _check_key(self.meter, "limit meter")
        if self.limit < 0:
            raise SpecDefinitionError(
                f"limit of {self.meter} must be >= 0, got {self.limit}", details={"field": "limit"}
            )

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        return {
            "type": "limit",
            "meter": self.meter,
            "limit": str(self.limit),
            "window": self.window.value,
            "kind": self.kind.value,
            "overage": self.overage.value,
        }


@define(frozen=True)
class Tier:
    """One price tier: units up to `up_to` (inclusive; `None` = infinity) cost `unit_amount`
    each, plus `flat_amount` once (Stripe's `tiers[].up_to`, `unit_amount_decimal`,
    `flat_amount_decimal`)."""

    up_to: Decimal | None = field(converter=_up_to)
    unit_amount: Decimal = field(default=Decimal(0), converter=_unit_amount)
    flat_amount: Decimal = field(default=Decimal(0), converter=_flat_amount)

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        return {
            "up_to": None if self.up_to is None else str(self.up_to),
            "unit_amount": str(self.unit_amount),
            "flat_amount": str(self.flat_amount),
        }


@define(frozen=True)
class Price:
    """How usage of `meter` in a billing period is charged.

    Attributes:
        meter: Meter key.
        mode: `flat` (`quantity * unit_amount`), `graduated` or `volume` (see `TiersMode`).
        unit_amount: Price per unit for `flat` (in `currency` units, e.g. `"0.002"` dollars).
        tiers: For `graduated` and `volume`: ascending `up_to`, the last one `None` (infinity).
        currency: ISO 4217 code, lowercase (`usd`).
        decimals: Minor-unit digits the line total is rounded to (2 for USD/EUR, 0 for JPY).

    Raises:
        SpecDefinitionError: Tiers missing, unordered, or not ending with `up_to=None`; tiers
            given with `flat`; a negative amount.
    """

    meter: str
    mode: TiersMode = field(default=TiersMode.FLAT, converter=_mode)
    unit_amount: Decimal = field(default=Decimal(0), converter=_unit_amount)
    tiers: tuple[Tier, ...] = field(default=(), converter=tuple)
    currency: str = "usd"
    decimals: int = 2

    def __attrs_post_init__(self) -> None:
        _check_key(self.meter, "price meter")
        where = f"price of {self.meter}"
        if self.mode is TiersMode.FLAT:
            if self.tiers:
                raise SpecDefinitionError(
                    f"{where}: a flat price takes unit_amount=, not tiers; use "
                    "mode='graduated' or 'volume' for tiers",
                    details={"field": "tiers"},
                )
        else:
            if not self.tiers or not all(isinstance(t, Tier) for t in self.tiers):
                raise SpecDefinitionError(
                    f"{where}: mode={self.mode.value!r} needs tiers=[Tier(up_to, unit_amount), "
                    "..., Tier(None, unit_amount)]",
                    details={"field": "tiers"},
                )
            bounds = [t.up_to for t in self.tiers]
            if bounds[-1] is not None or any(b is None for b in bounds[:-1]):
                raise SpecDefinitionError(
                    f"{where}: only the last tier may (and must) have up_to=None (infinity)",
                    details={"field": "tiers"},
                )
            finite = [b for b in bounds if b is not None]
            if any(b <= 0 for b in finite) or any(a >= b for a, b in itertools.pairwise(finite)):
                raise SpecDefinitionError(
                    f"{where}: tier bounds must be positive and strictly ascending, got "
                    f"{[str(b) for b in finite]}",
                    details={"field": "tiers"},
                )
        amounts = [self.unit_amount, *(t.unit_amount for t in self.tiers)]
        amounts += [t.flat_amount for t in self.tiers]
        if any(a < 0 for a in amounts):
            raise SpecDefinitionError(f"{where}: amounts must be >= 0", details={"field": "tiers"})
        if not re.fullmatch(r"[a-z]{3}", self.currency):
            raise SpecDefinitionError(
                f"{where}: currency must be a lowercase ISO 4217 code such as 'usd', got "
                f"{self.currency!r}",
                details={"field": "currency"},
            )
        if (
            isinstance(self.decimals, bool)
            or not isinstance(self.decimals, int)
            or not (0 <= self.decimals <= 6)
        ):
            raise SpecDefinitionError(
                f"{where}: decimals must be an integer 0..6", details={"field": "decimals"}
            )

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        return {
            "meter": self.meter,
            "mode": self.mode.value,
            "unit_amount": str(self.unit_amount),
            "tiers": [t.to_ir() for t in self.tiers],
            "currency": self.currency,
            "decimals": self.decimals,
        }


@define(frozen=True)
class Plan:
    """A plan: the entitlements and prices an org gets when it is assigned this plan.

    Attributes:
        key: Dotted name (`pro`, `team.annual`), also the spec name.
        features: Keys of the boolean features the plan includes.
        limits: Numeric limits, at most one per (meter, window).
        prices: Usage prices, at most one per meter.
    """

    key: str
    features: frozenset[str] = frozenset()
    limits: tuple[Limit, ...] = ()
    prices: tuple[Price, ...] = ()
    description: str = ""
    version: int = 1

    @property
    def kind(self) -> str:
        """Spec kind in the registry: `plan`."""
        return "plan"

    @property
    def name(self) -> str:
        """The key (spec name)."""
        return self.key

    def has_feature(self, key: str) -> bool:
        """Whether the plan includes feature `key`."""
        return key in self.features

    def limits_for(self, meter: str) -> tuple[Limit, ...]:
        """The limits on `meter`."""
        return tuple(limit for limit in self.limits if limit.meter == meter)

    def price_for(self, meter: str) -> Price | None:
        """The price of `meter`, or `None`."""
        for price in self.prices:
            if price.meter == meter:
                return price
        return None

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        return {
            "features": sorted(self.features),
            "limits": [limit.to_ir() for limit in self.limits],
            "prices": [price.to_ir() for price in self.prices],
            "description": self.description,
        }


def define_plan(
    key: str,
    *,
    entitlements: Iterable[Feature | Limit] = (),
    prices: Iterable[Price] = (),
    description: str = "",
    version: int = 1,
) -> Plan:
    """Declare a plan with its entitlements and prices.

    Args:
        key: Dotted lowercase name (`free`, `pro`).
        entitlements: `Feature(key)` and `Limit(meter, limit, window, kind, overage)` items.
        prices: `Price(meter, ...)` items, at most one per meter.
        description: Reference-doc paragraph.
        version: Spec version.

    Returns:
        A frozen `Plan`; register it in the `SpecRegistry` and assign it to orgs with
        `Metering.assign_plan`.

    Raises:
        SpecDefinitionError: A malformed key, an item that is not a `Feature`/`Limit`, two limits
            on one (meter, window), or two prices for one meter.

    Example:
        ```python
        pro = define_plan(
            "pro",
            entitlements=[Feature("sso"), Limit("api.calls", 10_000, window="month")],
            prices=[Price("api.calls", mode="graduated", tiers=[Tier(1000, 0), Tier(None, "0.002")])],
        )
        ```
    """
    _check_key(key, "plan")
    features: set[str] = set()
    limits: list[Limit] = []
    for item in entitlements:
        if isinstance(item, Feature):
            features.add(item.key)
        elif isinstance(item, Limit):
            if any((x.meter, x.window) == (item.meter, item.window) for x in limits):
                raise SpecDefinitionError(
                    f"plan {key}: two limits on {item.meter} per {item.window.value}; keep one",
                    details={"field": "entitlements"},
                )
            limits.append(item)
        else:
            raise SpecDefinitionError(
                f"plan {key}: entitlements must be Feature(...) or Limit(...), got {item!r}",
                details={"field": "entitlements"},
            )
    price_list = list(prices)
    seen: set[str] = set()
    for price in price_list:
        if not isinstance(price, Price):
            raise SpecDefinitionError(
                f"plan {key}: prices must be Price(...), got {price!r}", details={"field": "prices"}
            )
        if price.meter in seen:
            raise SpecDefinitionError(
                f"plan {key}: two prices for {price.meter}; keep one", details={"field": "prices"}
            )
        seen.add(price.meter)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"plan {key}: version must be a positive integer", details={"field": "version"}
        )
    return Plan(key, frozenset(features), tuple(limits), tuple(price_list), description, version)


# --------------------------------------------------------------------------------------------
# Operations that consume a meter or need a feature
# --------------------------------------------------------------------------------------------

#: `amount(input, output)` of a metered operation.
AmountFn = Callable[[BaseModel, BaseModel], object]


@define(frozen=True)
class MeteredOperation:
    """Binds an operation to the meter it consumes and/or the feature it needs.

    Attributes:
        operation: Operation name (every version).
        meter: Meter key, or `None` for a feature gate only.
        amount: Units per call: a number, a path (`input.count`, `output.tokens`), or a function
            `(input, output) -> number`.
        feature: Feature key the caller's plan must include, or `None`.
        subject: Path (`input.project_id`) of the subject, or `None` for the operation name.
    """

    operation: str
    meter: str | None = None
    amount: Decimal | str | AmountFn = Decimal(1)
    feature: str | None = None
    subject: str | None = None
    version: int = 1

    @property
    def kind(self) -> str:
        """Spec kind in the registry: `metered_operation`."""
        return "metered_operation"

    @property
    def name(self) -> str:
        """The operation name (spec name)."""
        return self.operation

    @property
    def static_amount(self) -> Decimal | None:
        """The amount when it does not depend on the call, else `None`."""
        return self.amount if isinstance(self.amount, Decimal) else None

    def amount_of(self, inp: BaseModel, out: BaseModel) -> Decimal:
        """Units consumed by one call.

        Raises:
            SpecValidationError: The amount is not a number with at most 6 decimal places.
        """
        amount = self.amount
        if isinstance(amount, Decimal):
            return amount
        if isinstance(amount, str):
            role, _, rest = amount.partition(".")
            raw = resolve_path(inp if role == "input" else out, rest)
        else:
            raw = amount(inp, out)
        return to_decimal(raw, f"amount of {self.operation}")

    def subject_of(self, inp: BaseModel, out: BaseModel) -> str:
        """The subject of one call's usage."""
        if self.subject is None:
            return self.operation
        role, _, rest = self.subject.partition(".")
        return str(resolve_path(inp if role == "input" else out, rest))

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        amount = self.amount
        shown = (
            str(amount)
            if isinstance(amount, Decimal | str)
            else f"{getattr(amount, '__module__', '?')}.{getattr(amount, '__qualname__', '?')}"
        )
        return {
            "operation": self.operation,
            "meter": self.meter,
            "amount": shown,
            "feature": self.feature,
            "subject": self.subject,
        }


def meter_operation(
    operation: OperationSpec | str,
    *,
    meter: Meter | str | None = None,
    amount: object = 1,
    feature: Feature | str | None = None,
    subject: str | None = None,
) -> MeteredOperation:
    """Declare that `operation` consumes `meter` (and/or needs `feature`).

    With `Metering.middleware()` on the executor, every successful call records a usage event in
    the call's transaction, after checking the caller's plan limits atomically; a call whose
    plan lacks `feature` is refused before its handler runs.

    Consuming a meter writes (usage and counters, in the call's transaction), so an operation
    with `meter=` must be a command; `feature=` alone also gates queries.

    Args:
        operation: The `OperationSpec` or its name (all versions are metered).
        meter: The meter (or its key) the call consumes.
        amount: Units per call: a number (default 1), a path starting with `input.` or
            `output.` (`"output.tokens"`), or a function `(input, output) -> number`. A `count`
            meter counts one per call whatever the amount; a `unique_count` meter counts the
            distinct callers (`user_id`).
        feature: A feature the caller's plan must include.
        subject: A path starting with `input.`/`output.` naming the subject; default: the
            operation name.

    Returns:
        A `MeteredOperation` spec; register it in the `SpecRegistry`.

    Raises:
        SpecDefinitionError: Neither meter nor feature, a malformed path, or a bad amount.
    """
    name = operation.name if isinstance(operation, OperationSpec) else operation
    if not isinstance(name, str) or not name:
        raise SpecDefinitionError(
            f"meter_operation needs an operation or its name, got {operation!r}",
            details={"field": "operation"},
        )
    meter_key = meter.key if isinstance(meter, Meter) else meter
    feature_key = feature.key if isinstance(feature, Feature) else feature
    if meter_key is None and feature_key is None:
        raise SpecDefinitionError(
            f"meter_operation({name!r}) needs meter= and/or feature=", details={"field": "meter"}
        )
    if meter_key is not None:
        _check_key(meter_key, "meter")
    if feature_key is not None:
        _check_key(feature_key, "feature")
    for what, path in (("amount", amount), ("subject", subject)):
        if isinstance(path, str) and not path.startswith(("input.", "output.")):
            raise SpecDefinitionError(
                f"meter_operation({name!r}): {what} path must start with 'input.' or 'output.', "
                f"got {path!r}",
                details={"field": what},
            )
    resolved: Decimal | str | AmountFn
    if isinstance(amount, str):
        _check_path(amount, "amount")
        resolved = amount
    elif callable(amount):
        resolved = amount
    else:
        resolved = _spec_decimal(amount, "amount")
    return MeteredOperation(name, meter_key, resolved, feature_key, subject)
