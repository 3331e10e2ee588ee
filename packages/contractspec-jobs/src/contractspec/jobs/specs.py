"""Job, schedule and event-trigger specs: background work declared in the spec.

Specs are frozen `attrs` value objects with `kind`, `name` and `version`, so they register in core's
`SpecRegistry` next to operations and events:

```python
from datetime import timedelta
from pydantic import BaseModel
from contractspec.core import SpecRegistry
from contractspec.jobs import define_job, define_schedule, exponential, on_event

class SendReminder(BaseModel):
    invoice_id: str

send_reminder = define_job(
    "billing.send_reminder",
    payload=SendReminder,
    max_attempts=5,
    backoff=exponential(base=2.0, cap=600.0, jitter=0.5),
    timeout=timedelta(seconds=30),
    unique_key="reminder:{invoice_id}",
)
nightly = define_schedule(send_reminder, cron="0 3 * * *", timezone="Europe/Paris",
                          payload={"invoice_id": "all"})
overdue = on_event("billing.invoice.overdue", enqueue=send_reminder)
registry = SpecRegistry(send_reminder, nightly, overdue)
```
"""

from __future__ import annotations

import random
import re
import string
import typing
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, Final, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger
from attrs import define, field
from pydantic import BaseModel, ValidationError

from contractspec.core import EventEnvelope, EventSpec, SpecDefinitionError, SpecValidationError
from contractspec.jobs._cron import cron_trigger

__all__ = [
    "DEFAULT_QUEUE",
    "Backoff",
    "EventTrigger",
    "JobSpec",
    "ScheduleSpec",
    "define_job",
    "define_schedule",
    "exponential",
    "fixed",
    "on_event",
]

P = TypeVar("P", bound=BaseModel)

#: Queue used when a job spec names none.
DEFAULT_QUEUE: Final = "default"
#: Job types and schedule names: one or more dotted lowercase segments (`send_email`, `crm.report`).
_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")
_QUEUE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,100}\Z")
_RESERVED: Final = ("contractspec.", "cs.")
#: Fire times of interval schedules are aligned on this instant (unless `start` is given), so every
#: scheduler instance computes the same fire times and their unique keys collide as they must.
INTERVAL_ANCHOR: Final = datetime(2000, 1, 1, tzinfo=UTC)


def _check_name(name: object, what: str, example: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > 200:
        raise SpecDefinitionError(
            f"{what} name {name!r} is not valid: use lowercase dotted segments of letters, digits "
            f"and '_' (e.g. {example!r}), at most 200 characters",
            details={"field": "name"},
        )
    if name.startswith(_RESERVED):
        raise SpecDefinitionError(
            f"{what} name {name!r} uses a prefix reserved for ContractSpec's own specs; choose "
            "your own domain prefix, e.g. 'crm.'",
            details={"field": "name"},
        )
    return name


def _seconds(value: object, *, what: str, ref: str, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise SpecDefinitionError(
            f"{ref}: {what} must be a timedelta or a number of seconds, got {value!r}",
            details={"field": what},
        )
    if not seconds > 0 or seconds == float("inf"):
        raise SpecDefinitionError(
            f"{ref}: {what} must be positive and finite, got {value!r}", details={"field": what}
        )
    return seconds


# --------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class Backoff:
    """How long to wait before retry number `n` (1 for the retry after the first failure).

    `delay(n) = min(cap, base * factor ** (n - 1))`, then reduced by a random share of at most
    `jitter` of itself ("Exponential Backoff And Jitter", M. Brooker, AWS Architecture Blog, 2015:
    `jitter=1.0` is *full jitter*, `0.5` *equal jitter*, `0.0` none). Jitter spreads retries of
    jobs that failed together (an outage) so they do not hammer the recovering dependency at once.

    Attributes:
        base: First delay, in seconds.
        factor: Growth per retry (`2.0` doubles; `1.0` is a fixed delay).
        cap: Upper bound of any delay, in seconds.
        jitter: Fraction in `[0, 1]` of the delay that may be randomly taken off.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.5

    def delay(self, retry: int, rng: random.Random | None = None) -> timedelta:
        """Delay before retry number `retry` (>= 1).

        Args:
            retry: 1 for the first retry (after the first failed attempt), 2 for the next, ...
            rng: Source of randomness (default: the `random` module); pass a seeded one in tests.

        Returns:
            A non-negative `timedelta`, at most `cap` seconds.
        """
        exponent = max(retry, 1) - 1
        try:
            raw = self.base * self.factor**exponent
        except OverflowError:
            raw = self.cap
        seconds = min(self.cap, raw)
        if self.jitter:
            seconds -= seconds * self.jitter * (rng or random).random()
        return timedelta(seconds=max(seconds, 0.0))

    def to_ir(self) -> dict[str, Any]:
        """JSON form for the spec IR."""
        return {"base": self.base, "factor": self.factor, "cap": self.cap, "jitter": self.jitter}


def _check_backoff(base: object, factor: object, cap: object, jitter: object) -> Backoff:
    def number(value: object, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecDefinitionError(
                f"backoff {name} must be a number, got {value!r}", details={"field": "backoff"}
            )
        return float(value)

    b, f, c = number(base, "base"), number(factor, "factor"), number(cap, "cap")
    j = 1.0 if jitter is True else 0.0 if jitter is False else number(jitter, "jitter")
    if not (b >= 0 and c >= b and f >= 1 and 0 <= j <= 1) or c == float("inf"):
        raise SpecDefinitionError(
            f"backoff needs 0 <= base <= cap (finite seconds), factor >= 1 and 0 <= jitter <= 1; "
            f"got base={base!r}, factor={factor!r}, cap={cap!r}, jitter={jitter!r}",
            details={"field": "backoff"},
        )
    return Backoff(base=b, factor=f, cap=c, jitter=j)


def exponential(
    base: float = 1.0, cap: float = 300.0, jitter: float | bool = 0.5, *, factor: float = 2.0
) -> Backoff:
    """Exponential backoff: `base`, `2*base`, `4*base`, ... seconds, at most `cap`, with jitter.

    Args:
        base: First delay in seconds.
        cap: Largest delay in seconds.
        jitter: Fraction of each delay randomly taken off (`True` = 1.0, full jitter; `False` = 0).
        factor: Growth per retry.

    Raises:
        SpecDefinitionError: Negative or non-finite values, `cap < base`, `factor < 1`, jitter
            outside `[0, 1]`.
    """
    return _check_backoff(base, factor, cap, jitter)


def fixed(delay: float, *, jitter: float | bool = 0.0) -> Backoff:
    """The same delay (seconds) before every retry.

    Raises:
        SpecDefinitionError: A negative or non-finite delay, jitter outside `[0, 1]`.
    """
    return _check_backoff(delay, 1.0, delay, jitter)


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------

UniqueKey = str | Callable[[Any], str]


@define(frozen=True)
class JobSpec(Generic[P]):
    """A kind of background job: its payload schema and how it is run and retried.

    Attributes:
        name: The job type, e.g. `crm.report.nightly` (what `enqueue()` takes).
        version: Positive integer version of the payload shape.
        payload: pydantic model of the payload; validated at enqueue and again before running.
        result: Optional pydantic model the handler's return value is validated into.
        max_attempts: Runs before the job is dead-lettered (1 = never retried). A worker killed
            mid-job counts as an attempt, so a job that crashes its worker cannot loop forever.
        backoff: Delay policy between attempts.
        timeout: Seconds a run may take before it is cancelled and counted as failed (`None`:
            no limit).
        queue: Queue name; workers choose the queues they serve.
        unique_key: Template over payload fields (`"reminder:{invoice_id}"`) or a function of the
            payload returning the key. While a job with that key exists, enqueueing another returns
            the existing job's id instead of adding one.
        priority: Higher runs first among due jobs of a queue.
        description, owners, tags: Metadata for docs.
    """

    kind: typing.ClassVar[str] = "job"

    name: str
    payload: type[P]
    version: int = 1
    result: type[BaseModel] | None = None
    max_attempts: int = 5
    backoff: Backoff = field(factory=Backoff)
    timeout: float | None = None
    queue: str = DEFAULT_QUEUE
    unique_key: UniqueKey | None = field(default=None, eq=False)
    priority: int = 0
    description: str = ""
    owners: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    def validate_payload(self, payload: BaseModel | Mapping[str, Any] | Any) -> P:
        """Validate a payload (model instance, mapping or JSON text) into the payload model.

        Raises:
            SpecValidationError: The payload does not match; `errors` lists each field.
        """
        model = self.payload
        if type(payload) is model:
            return payload
        try:
            if isinstance(payload, str | bytes | bytearray):
                return model.model_validate_json(payload)
            if isinstance(payload, BaseModel):
                payload = payload.model_dump()
            return model.model_validate(payload)
        except ValidationError as exc:
            errors = [
                {
                    "field": ".".join(str(p) for p in err.get("loc", ())),
                    "msg": err.get("msg", "invalid"),
                    "type": err.get("type", "value_error"),
                    "loc": list(err.get("loc", ())),
                }
                for err in exc.errors(include_url=False)
            ]
            shown = "; ".join(f"{e['field'] or '(root)'}: {e['msg']}" for e in errors[:5])
            raise SpecValidationError(
                f"invalid payload for job {self.ref}: {shown}",
                errors=errors,
                details={"job": self.ref},
            ) from None

    def key_for(self, payload: BaseModel) -> str | None:
        """The unique key of a validated payload, or `None` when the spec declares none.

        Raises:
            SpecValidationError: The key template names a field the payload lacks, or the key
                function failed or returned something other than a non-empty string.
        """
        spec = self.unique_key
        if spec is None:
            return None
        try:
            key = spec.format(**payload.model_dump()) if isinstance(spec, str) else spec(payload)
        except (KeyError, AttributeError, IndexError, ValueError, TypeError) as exc:
            raise SpecValidationError(
                f"job {self.ref}: the unique_key could not be computed from the payload "
                f"({type(exc).__name__}: {exc}); fix the template or the key function",
                details={"job": self.ref, "field": "unique_key"},
            ) from None
        if not isinstance(key, str) or not key or len(key) > 200:
            raise SpecValidationError(
                f"job {self.ref}: unique_key must give a non-empty string of at most 200 "
                f"characters, got {key!r}",
                details={"job": self.ref, "field": "unique_key"},
            )
        return key

    def to_ir(self) -> dict[str, Any]:
        """This spec's part of the IR (`registry.to_ir()`): settings as JSON, and the payload and
        result models, which core turns into JSON Schemas under `schemas`."""
        models: dict[str, Any] = {"payload": self.payload}
        if self.result is not None:
            models["result"] = self.result
        return {
            **models,
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "max_attempts": self.max_attempts,
            "backoff": self.backoff.to_ir(),
            "timeout": self.timeout,
            "queue": self.queue,
            "unique_key": self.unique_key
            if isinstance(self.unique_key, str) or self.unique_key is None
            else f"<function {getattr(self.unique_key, '__qualname__', '?')}>",
            "priority": self.priority,
            "description": self.description,
            "owners": list(self.owners),
            "tags": list(self.tags),
        }


def _tuple(value: Iterable[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def define_job(
    name: str,
    *,
    payload: type[P],
    version: int = 1,
    result: type[BaseModel] | None = None,
    max_attempts: int = 5,
    backoff: Backoff | None = None,
    timeout: timedelta | float | None = None,
    queue: str = DEFAULT_QUEUE,
    unique_key: UniqueKey | None = None,
    priority: int = 0,
    description: str = "",
    owners: Iterable[str] | str | None = None,
    tags: Iterable[str] | str | None = None,
) -> JobSpec[P]:
    """Declare a kind of background job.

    Args:
        name: Job type: lowercase dotted segments (`crm.report.nightly`, `send_email`).
        payload: pydantic model of the payload.
        version: Positive integer version of the payload shape.
        result: Optional pydantic model of the handler's result.
        max_attempts: Total runs allowed (>= 1) before the job goes to dead letter.
        backoff: Retry delays (default `exponential(1.0, 300.0, 0.5)`).
        timeout: Longest run (timedelta or seconds), after which the run is cancelled.
        queue: Queue name (letters, digits, `_.:-`).
        unique_key: `"template:{field}"` over payload fields, or `fn(payload) -> str`.
        priority: Higher runs first (any integer, default 0).
        description: Reference-doc paragraph.
        owners: Owning teams or people.
        tags: Free-form tags.

    Returns:
        A frozen `JobSpec`.

    Raises:
        SpecDefinitionError: Invalid name, version, payload model, attempts, timeout, queue,
            priority, or a `unique_key` template naming a field the payload does not have.
    """
    _check_name(name, "job", "crm.report.nightly")
    ref = f"{name}@{version}"
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"{name}: version must be a positive integer, got {version!r}",
            details={"field": "version"},
        )
    for role, model in (("payload", payload), ("result", result)):
        if model is None and role == "result":
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise SpecDefinitionError(
                f"{ref}: {role} must be a pydantic model class, got {model!r}; wrap plain fields "
                f"in a model (class {role.title()}(BaseModel): ...)",
                details={"field": role},
            )
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise SpecDefinitionError(
            f"{ref}: max_attempts must be an integer >= 1, got {max_attempts!r}",
            details={"field": "max_attempts"},
        )
    if backoff is not None and not isinstance(backoff, Backoff):
        raise SpecDefinitionError(
            f"{ref}: backoff must come from exponential(...) or fixed(...), got {backoff!r}",
            details={"field": "backoff"},
        )
    if not isinstance(queue, str) or not _QUEUE.match(queue):
        raise SpecDefinitionError(
            f"{ref}: queue {queue!r} is not valid: 1-100 letters, digits or '_.:-'",
            details={"field": "queue"},
        )
    if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > 2**31 - 1:
        raise SpecDefinitionError(
            f"{ref}: priority must be a 32-bit integer, got {priority!r}",
            details={"field": "priority"},
        )
    if unique_key is not None:
        if isinstance(unique_key, str):
            fields = {f for _, f, _, _ in string.Formatter().parse(unique_key) if f is not None}
            missing = sorted(
                f for f in fields if f.split(".")[0].split("[")[0] not in payload.model_fields
            )
            if missing or not unique_key:
                raise SpecDefinitionError(
                    f"{ref}: unique_key {unique_key!r} names {', '.join(missing) or 'nothing'}, "
                    f"which is not a payload field; use {{field}} placeholders from "
                    f"{', '.join(payload.model_fields) or 'the payload'}",
                    details={"field": "unique_key"},
                )
        elif not callable(unique_key):
            raise SpecDefinitionError(
                f"{ref}: unique_key must be a template string or a function of the payload",
                details={"field": "unique_key"},
            )
    return JobSpec(
        name=name,
        payload=payload,
        version=version,
        result=result,
        max_attempts=max_attempts,
        backoff=backoff if backoff is not None else Backoff(),
        timeout=_seconds(timeout, what="timeout", ref=ref),
        queue=queue,
        unique_key=unique_key,
        priority=priority,
        description=description,
        owners=_tuple(owners),
        tags=_tuple(tags),
    )


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class ScheduleSpec:
    """Recurring work: enqueue `job` with `payload` at every fire time of a cron or interval.

    Attributes:
        name: Unique schedule name (defaults to the job's name); part of every fire's unique key.
        job: The job enqueued.
        payload: The payload enqueued at each fire (validated at definition).
        cron: Cron expression (standard 5-field syntax or a macro), or `None`.
        interval: Seconds between fires, or `None`.
        timezone: IANA zone name the cron is read in (default `UTC`).
        misfire_grace: Seconds after a fire time within which a late scheduler still enqueues it;
            later fires are skipped (`None`: always enqueue, however late).
        coalesce: When several fire times were missed, enqueue only the latest one.
        start: Anchor of interval schedules (fire times are `start + k * interval`).
        version: Positive integer version.
    """

    kind: typing.ClassVar[str] = "schedule"

    name: str
    job: JobSpec[Any]
    payload: dict[str, Any] = field(eq=False)
    cron: str | None = None
    interval: float | None = None
    timezone: str = "UTC"
    misfire_grace: float | None = 300.0
    coalesce: bool = True
    start: datetime = INTERVAL_ANCHOR
    version: int = 1
    description: str = ""

    def trigger(self) -> BaseTrigger:
        """A fresh APScheduler trigger computing this schedule's fire times."""
        zone = ZoneInfo(self.timezone)
        if self.cron is not None:
            return cron_trigger(self.cron, zone)
        assert self.interval is not None
        return IntervalTrigger(seconds=self.interval, start_date=self.start, timezone=zone)

    def next_fire_time(
        self, after: datetime, *, previous: datetime | None = None
    ) -> datetime | None:
        """The first fire time strictly after `after` (UTC), or `None` when the trigger ended.

        Args:
            after: Aware datetime.
            previous: The previous fire time, if known (interval triggers step from it).
        """
        trigger = self.trigger()
        probe = after + timedelta(microseconds=1)
        nxt: datetime | None = trigger.get_next_fire_time(previous, probe)
        while nxt is not None and nxt <= after:
            probe = nxt + timedelta(microseconds=1)
            nxt = trigger.get_next_fire_time(nxt, probe)
        return nxt.astimezone(UTC) if nxt is not None else None

    def unique_key(self, fire_time: datetime) -> str:
        """The unique key of the job enqueued for `fire_time`: `schedule:<name>:<UTC ISO time>`."""
        return f"schedule:{self.name}:{fire_time.astimezone(UTC).isoformat()}"

    def to_ir(self) -> dict[str, Any]:
        """This spec's part of the IR (`registry.to_ir()`), JSON-compatible."""
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "job": self.job.ref,
            "payload": self.payload,
            "cron": self.cron,
            "interval": self.interval,
            "timezone": self.timezone,
            "misfire_grace": self.misfire_grace,
            "coalesce": self.coalesce,
            "start": self.start.isoformat() if self.interval is not None else None,
            "description": self.description,
        }


def define_schedule(
    job: JobSpec[Any],
    *,
    cron: str | None = None,
    interval: timedelta | float | None = None,
    payload: BaseModel | Mapping[str, Any] | None = None,
    name: str | None = None,
    timezone: str | tzinfo = "UTC",
    misfire_grace: timedelta | float | None = timedelta(minutes=5),
    coalesce: bool = True,
    start: datetime | None = None,
    version: int = 1,
    description: str = "",
) -> ScheduleSpec:
    """Declare recurring work: enqueue `job` at every fire time of `cron` or `interval`.

    Fire times come from APScheduler 3.x triggers. Cron expressions follow standard cron: five
    fields with lists, ranges, steps and names (`*/15 9-17 * * mon-fri`), day-of-week 0 or 7 for
    Sunday, day-of-month *or* day-of-week when both are given, and the `@daily`-style macros.

    Args:
        job: The job spec to enqueue.
        cron: Cron expression (give exactly one of `cron` and `interval`).
        interval: Period as timedelta or seconds.
        payload: Payload for every fire (default: the payload model's defaults).
        name: Schedule name (default: the job name). Two schedules of one job need two names.
        timezone: IANA zone (`"Europe/Paris"`) or a `ZoneInfo`; crons are read in it.
        misfire_grace: How late (timedelta or seconds) a fire may still be enqueued; `None` for
            no limit. Fires missed by more are skipped and logged.
        coalesce: Enqueue only the latest of several missed fires.
        start: Anchor of interval fire times (aware; default 2000-01-01T00:00Z).
        version: Positive integer version.
        description: Reference-doc paragraph.

    Returns:
        A frozen `ScheduleSpec`.

    Raises:
        SpecDefinitionError: Neither or both of `cron`/`interval`, a malformed cron (the message
            names the field), an unknown time zone, a non-positive interval or grace, or a
            payload that does not validate against the job's payload model.
    """
    if not isinstance(job, JobSpec):
        raise SpecDefinitionError(
            f"define_schedule() needs a JobSpec made by define_job(), got {job!r}",
            details={"field": "job"},
        )
    sched_name = _check_name(name if name is not None else job.name, "schedule", "crm.nightly")
    if (cron is None) == (interval is None):
        raise SpecDefinitionError(
            f"schedule {sched_name!r}: give exactly one of cron='0 3 * * *' or interval=timedelta(...)",
            details={"field": "cron"},
        )
    zone_name = timezone if isinstance(timezone, str) else getattr(timezone, "key", None)
    if not isinstance(zone_name, str):
        raise SpecDefinitionError(
            f"schedule {sched_name!r}: timezone must be an IANA name like 'Europe/Paris' or a "
            f"ZoneInfo, got {timezone!r}",
            details={"field": "timezone"},
        )
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecDefinitionError(
            f"schedule {sched_name!r}: unknown time zone {zone_name!r}; use an IANA name such as "
            "'UTC' or 'Europe/Paris'",
            details={"field": "timezone"},
        ) from None
    if cron is not None:
        if not isinstance(cron, str):
            raise SpecDefinitionError(
                f"schedule {sched_name!r}: cron must be a string, got {cron!r}",
                details={"field": "cron"},
            )
        try:
            cron_trigger(cron, zone)
        except ValueError as exc:
            raise SpecDefinitionError(
                f"schedule {sched_name!r}: {exc}", details={"field": "cron"}
            ) from None
    seconds = _seconds(interval, what="interval", ref=f"schedule {sched_name!r}")
    grace = _seconds(misfire_grace, what="misfire_grace", ref=f"schedule {sched_name!r}")
    anchor = start if start is not None else INTERVAL_ANCHOR
    if anchor.tzinfo is None:
        raise SpecDefinitionError(
            f"schedule {sched_name!r}: start must be timezone-aware", details={"field": "start"}
        )
    try:
        value = job.validate_payload(payload if payload is not None else {})
    except SpecValidationError as exc:
        raise SpecDefinitionError(
            f"schedule {sched_name!r}: its payload is {exc.message.removeprefix('invalid ')}; "
            "pass payload= matching the job's payload model",
            details={"field": "payload", "errors": exc.errors},
        ) from None
    return ScheduleSpec(
        name=sched_name,
        job=job,
        payload=value.model_dump(mode="json"),
        cron=" ".join(cron.split()) if cron is not None else None,
        interval=seconds,
        timezone=zone_name,
        misfire_grace=grace,
        coalesce=bool(coalesce),
        start=anchor.astimezone(UTC),
        version=version,
        description=description,
    )


# --------------------------------------------------------------------------------------------
# Event triggers
# --------------------------------------------------------------------------------------------


@define(frozen=True)
class EventTrigger:
    """Enqueue a job whenever an event is published: `on_event("invoice.overdue", enqueue=job)`.

    Attributes:
        event: Event name (`billing.invoice.overdue`).
        job: Job spec enqueued.
        payload: `fn(envelope) -> payload`; by default the event payload's fields, validated into
            the job's payload model.
        name: `"<event> -> <job>"`, unique per registry.
        version: Always 1.
    """

    kind: typing.ClassVar[str] = "job_trigger"

    event: str
    job: JobSpec[Any]
    payload: Callable[[EventEnvelope], BaseModel | Mapping[str, Any]] | None = field(
        default=None, eq=False
    )
    version: int = 1

    @property
    def name(self) -> str:
        """`"<event> -> <job>"`."""
        return f"{self.event} -> {self.job.name}"

    def job_payload(self, envelope: EventEnvelope) -> BaseModel:
        """The job payload for one event, validated.

        Raises:
            SpecValidationError: The mapped payload does not fit the job's payload model.
        """
        raw: Any = (
            self.payload(envelope) if self.payload is not None else envelope.payload.model_dump()
        )
        value: BaseModel = self.job.validate_payload(raw)
        return value

    def to_ir(self) -> dict[str, Any]:
        """This spec's part of the IR (`registry.to_ir()`), JSON-compatible."""
        return {"kind": self.kind, "name": self.name, "event": self.event, "job": self.job.ref}


def on_event(
    event: str | EventSpec,
    *,
    enqueue: JobSpec[Any],
    payload: Callable[[EventEnvelope], BaseModel | Mapping[str, Any]] | None = None,
) -> EventTrigger:
    """Enqueue `enqueue` each time `event` is published (see `EventJobs`).

    Args:
        event: Event spec or name.
        enqueue: The job spec to enqueue.
        payload: Maps the event envelope to the job payload; default: the event's payload fields.

    Raises:
        SpecDefinitionError: `enqueue` is not a JobSpec or the event name is malformed.
    """
    name = event.name if isinstance(event, EventSpec) else event
    if not isinstance(name, str) or not _NAME.match(name):
        raise SpecDefinitionError(
            f"on_event() needs an event spec or dotted event name, got {event!r}",
            details={"field": "event"},
        )
    if not isinstance(enqueue, JobSpec):
        raise SpecDefinitionError(
            f"on_event({name!r}): enqueue= must be a JobSpec made by define_job(), got {enqueue!r}",
            details={"field": "enqueue"},
        )
    if payload is not None and not callable(payload):
        raise SpecDefinitionError(
            f"on_event({name!r}): payload= must be a function of the event envelope",
            details={"field": "payload"},
        )
    return EventTrigger(event=name, job=enqueue, payload=payload)
