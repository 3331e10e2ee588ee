"""Learning journeys: onboarding tracks whose steps complete on real product events.

A *track* (`define_track`) is a versioned spec: modules of steps, each step with Markdown content,
an optional bound product action (an operation name), a completion condition on product events
(`EventCondition`: "`crm.deal.created` by this user", "3 x `invoice.sent` within 7 days"),
prerequisites, an optional deadline and nudges.

```python
from datetime import timedelta
from contractspec.growth.journeys import (
    EventCondition, JourneyEngine, MemoryJourneyStore, Module, Nudge, Step, define_track,
)

onboarding = define_track("onboarding", 1, modules=[
    Module("basics", steps=[
        Step("first_deal", "Create your first deal.", action="crm.deal.create",
             completion=EventCondition("crm.deal.created")),
        Step("invoicing", "Send three invoices in a week.",
             completion=EventCondition("invoice.sent", count=3, within=timedelta(days=7)),
             prerequisites=["first_deal"], deadline=timedelta(days=14),
             nudges=[Nudge(timedelta(days=3), "journey.invoicing.reminder")]),
    ]),
])
engine = JourneyEngine([onboarding], MemoryJourneyStore())
await engine.handle(event)          # an EventEnvelope from the bus, or a JourneyEvent
```

**How progress is computed.** The engine keeps the product events that some track listens to
(one row per `(org, event id)`: a redelivered or replayed event is stored once) and derives each
learner's progress as a pure function of that *set* of events, so the result does not depend on
delivery order, duplicates or batching: live processing (`handle`), a backfill from history
(`backfill`) and any mix of the two give the same progress. For each step:

* the matching events are the distinct events of the condition's type by the learner (`by="actor"`)
  or by anyone in the learner's org (`by="org"`);
* the condition holds at the time `t` of the `count`-th matching event (in event time) or, with
  `within=w`, at the earliest event time `t` such that `count` matching events lie in `[t - w, t]`
  (a sliding window over event times);
* a step *starts* when the learner enrolled and every prerequisite is complete (its start time is
  the latest of those times) and is *complete* at `max(start, t)`. Events that happened before a
  prerequisite completed **count** (the friendlier choice: a user who sent invoices before
  finishing the first step is not asked to send them again); the step just cannot complete before
  it starts.

Stored completion times only move earlier (a late event can reveal an earlier completion), and a
step is reported completed **once**: the store marks it with a conditional write
(`completed_at IS NULL`), so replays and concurrent handlers never double-complete.

**Versions.** A learner is enrolled (explicitly with `enroll`, or on their first event a track
listens to) in the newest version the engine knows and keeps it; `migrate` moves learners to another
version with a declared step mapping, carrying their completions.

**Deadlines and nudges** go through core's `JobEnqueuer` port: when a step with a deadline or
nudges starts, one `JOURNEY_CHECK_JOB` job per nudge and deadline is enqueued at its due time;
the app binds `JourneyEngine.run_check` as that job type's handler (with `contractspec-jobs`). A
due check whose step is still incomplete sends a `journey_nudge_event` envelope through the
`Notifier` port, which the bus package's `NotificationCenter` satisfies as it is.

Stores: `MemoryJourneyStore` here and `SqlJourneyStore` in `contractspec.growth.journeys_sql`
(SQLite, PostgreSQL); both pass one conformance suite.
"""

from __future__ import annotations

import datetime as dt
import functools
import graphlib
import math
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import attrs
from pydantic import BaseModel, ConfigDict

from contractspec.core.errors import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    SpecDefinitionError,
    SpecValidationError,
)
from contractspec.core.ports import AuditSink, Clock, IdGenerator, JobEnqueuer, SystemClock
from contractspec.core.records import AuditRecord, EventEnvelope
from contractspec.core.sync import SyncRunner

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from contractspec.core.registry import SpecRegistry
    from contractspec.growth._figure import NotebookFigure

__all__ = [
    "JOURNEY_CHECK_JOB",
    "JOURNEY_NUDGE_EVENT",
    "BackfillReport",
    "Enrollment",
    "EventCondition",
    "JourneyAnalytics",
    "JourneyCheck",
    "JourneyEngine",
    "JourneyEvent",
    "JourneyNudge",
    "JourneyStore",
    "MemoryJourneyStore",
    "MigrationReport",
    "Module",
    "Notifier",
    "Nudge",
    "Step",
    "StepChanges",
    "StepCompletion",
    "StepRecord",
    "StepState",
    "TrackProgress",
    "TrackSpec",
    "compute_progress",
    "define_track",
    "journey_nudge_event",
]

#: Job type of deadline and nudge checks (payload `JourneyCheck`); bind `JourneyEngine.run_check`.
JOURNEY_CHECK_JOB = "growth.journey.check"
#: Name of the event a due nudge or a missed deadline sends through the `Notifier`.
JOURNEY_NUDGE_EVENT = "growth.journey.nudged"

_KEY = re.compile(r"^[a-z][a-z0-9_]*(?:[.\-][a-z0-9_]+)*$")
_MAX_KEY = 200
_NUDGE_NAMESPACE = uuid.UUID("6f1c1b0e-6a53-4f0e-9d0c-3c9f3a6d2b71")


def _check_key(value: Any, field: str) -> str:
    if not isinstance(value, str) or not _KEY.match(value) or len(value) > _MAX_KEY:
        raise SpecDefinitionError(
            f"{field} must be a lowercase key of letters, digits, '_', '.' or '-' starting with "
            f"a letter (at most {_MAX_KEY} characters), got {value!r}; e.g. 'first_deal'.",
            details={"field": field},
        )
    return value


def _check_delta(value: Any, field: str, *, optional: bool = True) -> dt.timedelta | None:
    if value is None and optional:
        return None
    if not isinstance(value, dt.timedelta) or value <= dt.timedelta(0):
        raise SpecDefinitionError(
            f"{field} must be a positive datetime.timedelta, got {value!r}.",
            details={"field": field},
        )
    return value


def _check_time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise SpecValidationError(
            f"{field} must be a timezone-aware datetime (UTC), got {value!r}; use "
            "datetime.now(UTC) or datetime(..., tzinfo=UTC).",
            details={"field": field},
        )
    return value.astimezone(dt.UTC)


def _check_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_KEY:
        raise SpecValidationError(
            f"{field} must be a non-empty string of at most {_MAX_KEY} characters, got {value!r}.",
            details={"field": field},
        )
    return value


# --------------------------------------------------------------------------- spec


@attrs.frozen
class EventCondition:
    """A step's completion condition: `count` distinct events of type `event`.

    Args:
        event: Event name (`crm.deal.created`), as in `EventEnvelope.name`.
        count: Distinct events needed (>= 1); events are told apart by their id.
        within: All `count` events must fall within this span of event time (a sliding window),
            or `None` for no limit.
        by: `"actor"`: only events whose actor is the learner count; `"org"`: events by anyone
            in the learner's org count ("your team created 3 deals").

    Raises:
        SpecDefinitionError: An empty event name, `count < 1`, a non-positive `within` or an
            unknown `by`, naming the field.
    """

    event: str
    count: int = 1
    within: dt.timedelta | None = None
    by: Literal["actor", "org"] = "actor"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event.strip():
            raise SpecDefinitionError(
                f"EventCondition.event must be an event name such as 'crm.deal.created', got "
                f"{self.event!r}.",
                details={"field": "event"},
            )
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise SpecDefinitionError(
                f"EventCondition.count must be an integer >= 1, got {self.count!r}.",
                details={"field": "count"},
            )
        _check_delta(self.within, "EventCondition.within")
        if self.by not in ("actor", "org"):
            raise SpecDefinitionError(
                f"EventCondition.by must be 'actor' or 'org', got {self.by!r}.",
                details={"field": "by"},
            )

    def satisfied_at(self, times: Sequence[dt.datetime]) -> dt.datetime | None:
        """The earliest event time at which the condition holds, or `None`.

        Args:
            times: Times of the distinct matching events, in any order.

        Returns:
            The `count`-th earliest time, or with `within` the earliest time `t` (an event's
            time) such that `count` of the times lie in `[t - within, t]`.
        """
        ordered = sorted(times)
        n = self.count
        if len(ordered) < n:
            return None
        if self.within is None:
            return ordered[n - 1]
        for j in range(n - 1, len(ordered)):
            if ordered[j] - ordered[j - n + 1] <= self.within:
                return ordered[j]
        return None


@attrs.frozen
class Nudge:
    """A reminder sent `after` a step started if the step is still incomplete then.

    Args:
        after: Time after the step's start (positive `timedelta`).
        template: Name of the message template, carried in the nudge event's payload so a
            notification rule can pick its text (e.g. `journey.invoicing.reminder`).
    """

    after: dt.timedelta
    template: str

    def __attrs_post_init__(self) -> None:
        _check_delta(self.after, "Nudge.after", optional=False)
        if not isinstance(self.template, str) or not self.template.strip():
            raise SpecDefinitionError(
                f"Nudge.template must be a template name, got {self.template!r}.",
                details={"field": "template"},
            )


def _tuple_of(value: Any, field: str, kind: type) -> tuple[Any, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise SpecDefinitionError(
            f"{field} must be a list of {kind.__name__}, got {value!r}.", details={"field": field}
        )
    items = tuple(value)
    for item in items:
        if not isinstance(item, kind):
            raise SpecDefinitionError(
                f"{field} must contain {kind.__name__} objects, got {type(item).__name__}.",
                details={"field": field},
            )
    return items


# Typed converters: with `converter=tuple` the attrs plugin types the argument from `tuple`'s
# overloads and mypy --strict refuses a list; these accept any iterable of the element type.
def _keys(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _nudges(value: Iterable[Nudge]) -> tuple[Nudge, ...]:
    return tuple(value)


def _steps(value: Iterable[Step]) -> tuple[Step, ...]:
    return tuple(value)


@attrs.frozen
class Step:
    """One step of a track.

    Args:
        key: Step key, unique in its track (`first_deal`).
        content_md: The step's content in Markdown.
        action: Name of the product operation the step invites the learner to call
            (`crm.deal.create`), or `None`; the IR carries it so a UI can link the step.
        completion: The `EventCondition` that completes the step.
        prerequisites: Keys of steps that must be complete before this step starts.
        deadline: Time after the step's start by which it should be complete, or `None`.
        deadline_template: Template name of the overdue message (default `journey.overdue`).
        nudges: Reminders sent while the step is incomplete.

    Raises:
        SpecDefinitionError: A malformed field, naming it.
    """

    key: str
    content_md: str = ""
    action: str | None = None
    completion: EventCondition = attrs.field(default=None)  # required: checked below
    prerequisites: tuple[str, ...] = attrs.field(default=(), converter=_keys)
    deadline: dt.timedelta | None = None
    deadline_template: str = "journey.overdue"
    nudges: tuple[Nudge, ...] = attrs.field(default=(), converter=_nudges)

    def __attrs_post_init__(self) -> None:
        _check_key(self.key, "Step.key")
        where = f"step {self.key!r}"
        if not isinstance(self.content_md, str):
            raise SpecDefinitionError(
                f"{where}: content_md must be Markdown text, got {type(self.content_md).__name__}.",
                details={"field": "content_md", "step": self.key},
            )
        if self.action is not None and (not isinstance(self.action, str) or not self.action):
            raise SpecDefinitionError(
                f"{where}: action must be an operation name such as 'crm.deal.create' or None.",
                details={"field": "action", "step": self.key},
            )
        if not isinstance(self.completion, EventCondition):
            raise SpecDefinitionError(
                f"{where}: completion must be an EventCondition, e.g. "
                "EventCondition('crm.deal.created'), got "
                f"{type(self.completion).__name__}.",
                details={"field": "completion", "step": self.key},
            )
        for p in self.prerequisites:
            if not isinstance(p, str):
                raise SpecDefinitionError(
                    f"{where}: prerequisites must be step keys (strings), got {p!r}.",
                    details={"field": "prerequisites", "step": self.key},
                )
        if self.key in self.prerequisites:
            raise SpecDefinitionError(
                f"{where} lists itself as a prerequisite; remove it.",
                details={"field": "prerequisites", "step": self.key},
            )
        _check_delta(self.deadline, f"{where}: deadline")
        _tuple_of(self.nudges, f"{where}: nudges", Nudge)


@attrs.frozen
class Module:
    """A group of steps (a chapter of the track).

    Args:
        key: Module key, unique in its track.
        steps: The module's steps, in display order.
        title: Display title (defaults to the key).
    """

    key: str
    steps: tuple[Step, ...] = attrs.field(converter=_steps)
    title: str = ""

    def __attrs_post_init__(self) -> None:
        _check_key(self.key, "Module.key")
        _tuple_of(self.steps, f"module {self.key!r}: steps", Step)
        if not self.steps:
            raise SpecDefinitionError(
                f"module {self.key!r} has no steps; give it at least one Step.",
                details={"field": "steps", "module": self.key},
            )


@attrs.frozen(eq=False)
class TrackSpec:
    """A versioned learning track: modules of steps. Build it with `define_track`.

    A `SpecRegistry` accepts it (kind `learning_track`) and `registry.to_ir()` describes it.

    Attributes:
        key: Track key (also its spec `name`).
        version: Positive integer version.
        modules: Modules in display order.
        title: Display title.
    """

    key: str
    version: int
    modules: tuple[Module, ...]
    title: str = ""
    _steps: dict[str, Step] = attrs.field(factory=dict, repr=False, alias="_steps")
    _order: tuple[str, ...] = attrs.field(default=(), repr=False, alias="_order")

    @property
    def kind(self) -> str:
        """Spec kind in a `SpecRegistry`: `learning_track`."""
        return "learning_track"

    @property
    def name(self) -> str:
        """Spec name: the track key."""
        return self.key

    @property
    def ref(self) -> str:
        """`key@version`."""
        return f"{self.key}@{self.version}"

    @property
    def steps(self) -> tuple[Step, ...]:
        """Every step, modules in order, prerequisites before the steps needing them."""
        return tuple(self._steps[k] for k in self._order)

    @property
    def step_keys(self) -> tuple[str, ...]:
        """Keys of `steps`, in the same order."""
        return self._order

    def step(self, key: str) -> Step:
        """The step `key`.

        Raises:
            NotFoundError: No such step in this track version.
        """
        try:
            return self._steps[key]
        except KeyError:
            raise NotFoundError(
                f"track {self.ref} has no step {key!r}; steps: {', '.join(self._order)}.",
                details={"field": "step", "track": self.key, "version": self.version},
            ) from None

    def module_of(self, step_key: str) -> str:
        """Key of the module holding `step_key`."""
        for m in self.modules:
            if any(s.key == step_key for s in m.steps):
                return m.key
        raise NotFoundError(f"track {self.ref} has no step {step_key!r}.")

    @property
    def event_types(self) -> frozenset[str]:
        """Event names some step's condition listens to."""
        return frozenset(s.completion.event for s in self.steps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrackSpec):
            return NotImplemented
        return self.to_ir() == other.to_ir()

    def __hash__(self) -> int:
        return hash((self.key, self.version))

    def check(self, registry: SpecRegistry) -> None:
        """Check the track against the app's specs: each step's `action` names a registered
        operation and each completion event a registered event.

        Call it where the registry is complete (app start-up, a test), since a track may be
        defined before the specs it refers to.

        Raises:
            SpecDefinitionError: The first unknown name, with the step, the field and the
                closest registered name.
        """
        import difflib

        operations = sorted({op.name for op in registry.specs("operation")})
        events = sorted({ev.name for ev in registry.specs("event")})
        for step in self.steps:
            checks = [("completion.event", step.completion.event, events, "event")]
            if step.action is not None:
                checks.insert(0, ("action", step.action, operations, "operation"))
            for field, value, known, what in checks:
                if value in known:
                    continue
                close = difflib.get_close_matches(value, known, n=1, cutoff=0.75)
                hint = f"; did you mean {close[0]!r}?" if close else f"; register the {what}."
                raise SpecDefinitionError(
                    f"track {self.ref}, step {step.key!r}: {field} {value!r} is not a registered "
                    f"{what}{hint}",
                    details={"field": field, "track": self.key, "step": step.key, what: value},
                )

    def to_ir(self) -> dict[str, Any]:
        """The track as JSON data for the spec IR (modules, steps, conditions in seconds)."""

        def secs(d: dt.timedelta | None) -> float | None:
            return None if d is None else d.total_seconds()

        return {
            "title": self.title,
            "modules": [
                {
                    "key": m.key,
                    "title": m.title,
                    "steps": [
                        {
                            "key": s.key,
                            "content_md": s.content_md,
                            "action": s.action,
                            "completion": {
                                "event": s.completion.event,
                                "count": s.completion.count,
                                "within_seconds": secs(s.completion.within),
                                "by": s.completion.by,
                            },
                            "prerequisites": list(s.prerequisites),
                            "deadline_seconds": secs(s.deadline),
                            "deadline_template": s.deadline_template,
                            "nudges": [
                                {"after_seconds": secs(n.after), "template": n.template}
                                for n in s.nudges
                            ],
                        }
                        for s in m.steps
                    ],
                }
                for m in self.modules
            ],
        }


def define_track(
    key: str,
    version: int = 1,
    *,
    modules: Sequence[Module],
    title: str = "",
) -> TrackSpec:
    """Declare a learning track.

    Args:
        key: Track key (`onboarding`): lowercase letters, digits, `_`, `.`, `-`.
        version: Positive integer version; publish changes as a new version.
        modules: The track's modules, each with its steps.
        title: Display title (defaults to the key).

    Returns:
        A validated `TrackSpec`.

    Raises:
        SpecDefinitionError: A bad key or version, no modules, a duplicate module or step key, a
            prerequisite naming no step of the track, or a prerequisite cycle (the message names
            the field and the steps involved).
    """
    _check_key(key, "track key")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"track {key!r}: version must be an integer >= 1, got {version!r}.",
            details={"field": "version", "track": key},
        )
    mods = _tuple_of(modules, f"track {key!r}: modules", Module)
    if not mods:
        raise SpecDefinitionError(
            f"track {key!r} has no modules; give it at least one Module.",
            details={"field": "modules", "track": key},
        )
    seen_modules: set[str] = set()
    steps: dict[str, Step] = {}
    for m in mods:
        if m.key in seen_modules:
            raise SpecDefinitionError(
                f"track {key!r}: module key {m.key!r} is used twice; module keys must be unique.",
                details={"field": "modules", "track": key, "module": m.key},
            )
        seen_modules.add(m.key)
        for s in m.steps:
            if s.key in steps:
                raise SpecDefinitionError(
                    f"track {key!r}: step key {s.key!r} is used twice; step keys must be unique "
                    "across the track's modules.",
                    details={"field": "steps", "track": key, "step": s.key},
                )
            steps[s.key] = s
    for s in steps.values():
        unknown = [p for p in s.prerequisites if p not in steps]
        if unknown:
            raise SpecDefinitionError(
                f"track {key!r}: step {s.key!r} has unknown prerequisite(s) "
                f"{', '.join(map(repr, unknown))}; prerequisites must be step keys of this track "
                f"({', '.join(steps)}).",
                details={"field": "prerequisites", "track": key, "step": s.key, "unknown": unknown},
            )
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for s in steps.values():
        sorter.add(s.key, *s.prerequisites)
    try:
        topo = list(sorter.static_order())
    except graphlib.CycleError as exc:
        cycle = list(exc.args[1])
        raise SpecDefinitionError(
            f"track {key!r}: prerequisites form a cycle {' -> '.join(cycle)}; remove one of them.",
            details={"field": "prerequisites", "track": key, "cycle": cycle},
        ) from None
    if _declaration_respects(steps):
        order = tuple(steps)
    else:  # a step declared before its prerequisites: order by depth, then declaration
        rank = {k: i for i, k in enumerate(steps)}
        depth: dict[str, int] = {}
        for k in topo:
            depth[k] = 1 + max((depth[p] for p in steps[k].prerequisites), default=-1)
        order = tuple(sorted(steps, key=lambda k: (depth[k], rank[k])))
    return TrackSpec(key, version, mods, title or key, _steps=steps, _order=order)


def _declaration_respects(steps: Mapping[str, Step]) -> bool:
    seen: set[str] = set()
    for k, s in steps.items():
        if any(p not in seen for p in s.prerequisites):
            return False
        seen.add(k)
    return True


# --------------------------------------------------------------------------- events and records


@attrs.frozen
class JourneyEvent:
    """A product event as the journey engine sees it.

    Attributes:
        id: Unique event id (replays carry the same id).
        type: Event name (`crm.deal.created`).
        actor_id: Who caused it (the learner for `by="actor"` conditions), or `None`.
        org_id: Tenant; `None` in single-tenant apps (stored as `""`).
        occurred_at: Event time, timezone-aware (converted to UTC).
    """

    id: str
    type: str
    actor_id: str | None
    org_id: str | None
    occurred_at: dt.datetime

    def __attrs_post_init__(self) -> None:
        _check_id(self.id, "JourneyEvent.id")
        _check_id(self.type, "JourneyEvent.type")
        if self.actor_id is not None:
            _check_id(self.actor_id, "JourneyEvent.actor_id")
        if self.org_id is not None:
            _check_id(self.org_id, "JourneyEvent.org_id")
        object.__setattr__(
            self, "occurred_at", _check_time(self.occurred_at, "JourneyEvent.occurred_at")
        )

    @property
    def org_key(self) -> str:
        """`org_id`, or `""` without one."""
        return self.org_id or ""

    @classmethod
    def of(cls, event: JourneyEvent | EventEnvelope) -> JourneyEvent:
        """A `JourneyEvent` from itself or from a bus `EventEnvelope`.

        Raises:
            SpecValidationError: Anything else, or a malformed field.
        """
        if isinstance(event, JourneyEvent):
            return event
        if isinstance(event, EventEnvelope):
            return cls(event.id, event.name, event.actor_id, event.org_id, event.occurred_at)
        raise SpecValidationError(
            f"JourneyEngine takes JourneyEvent or EventEnvelope objects, got "
            f"{type(event).__name__}.",
            details={"field": "event"},
        )


@attrs.frozen
class Enrollment:
    """A learner's enrollment in one version of a track.

    Attributes:
        org_id: Tenant (`""` without one).
        learner_id: The learner (an actor id).
        track: Track key.
        version: The version the learner follows.
        enrolled_at: When the learner started (the earliest of explicit enrollment and their
            first event the track listens to).
        credits: Step key -> completion time carried over by `migrate`.
        migrated_from: The version the learner was migrated from, or `None`.
    """

    org_id: str
    learner_id: str
    track: str
    version: int
    enrolled_at: dt.datetime
    credits: Mapping[str, dt.datetime] = attrs.field(factory=dict)
    migrated_from: int | None = None


@attrs.frozen
class StepState:
    """Progress of one learner on one step.

    Attributes:
        step: Step key.
        started_at: When the step became available (prerequisites complete), or `None`.
        completed_at: When it was completed, or `None`.
        count: Distinct matching events seen so far (for "2 of 3").
    """

    step: str
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    count: int


@attrs.frozen
class StepRecord:
    """A stored `StepState` with its learner and track (rows for analytics).

    Attributes:
        org_id, learner_id, track, version: Whose progress, on which track version.
        state: The step's state.
    """

    org_id: str
    learner_id: str
    track: str
    version: int
    state: StepState


@attrs.frozen
class StepChanges:
    """What one `JourneyStore.save_steps` call changed.

    Attributes:
        started: Step keys whose `started_at` was set by this call (they had none).
        completed: Step keys whose `completed_at` was set by this call (they had none): each
            step of each learner appears here once, ever.
    """

    started: tuple[str, ...] = ()
    completed: tuple[str, ...] = ()


@attrs.frozen
class StepCompletion:
    """A step completed (reported once per learner, track and step).

    Attributes:
        org_id, learner_id, track, version, step: Who completed what.
        completed_at: Completion time (event time).
    """

    org_id: str
    learner_id: str
    track: str
    version: int
    step: str
    completed_at: dt.datetime


@attrs.frozen
class TrackProgress:
    """A learner's progress on a track.

    Attributes:
        enrollment: The enrollment (track version, start).
        steps: State per step key, in the track's step order.
        total: Steps in the track version.
    """

    enrollment: Enrollment
    steps: Mapping[str, StepState]
    total: int

    @property
    def completed(self) -> tuple[str, ...]:
        """Keys of completed steps."""
        return tuple(k for k, s in self.steps.items() if s.completed_at is not None)

    @property
    def fraction(self) -> float:
        """Completed steps / total (0.0-1.0)."""
        return len(self.completed) / self.total if self.total else 0.0

    @property
    def is_complete(self) -> bool:
        """Every step is complete."""
        return len(self.completed) == self.total

    @property
    def completed_at(self) -> dt.datetime | None:
        """When the last step was completed, if all are."""
        if not self.is_complete:
            return None
        return max(s.completed_at for s in self.steps.values() if s.completed_at is not None)


@attrs.frozen
class MigrationReport:
    """What `JourneyEngine.migrate` did.

    Attributes:
        track: Track key.
        from_version, to_version: The versions.
        learners: `(org_id, learner_id)` of every learner moved.
        carried: Step completions carried, as `(org_id, learner_id, old_step, new_step)`.
        dropped: Completions not carried (old step mapped to `None` or absent from the new
            version), as `(org_id, learner_id, old_step)`.
    """

    track: str
    from_version: int
    to_version: int
    learners: tuple[tuple[str, str], ...]
    carried: tuple[tuple[str, str, str, str], ...]
    dropped: tuple[tuple[str, str, str], ...]


# --------------------------------------------------------------------------- progress function


def compute_progress(
    track: TrackSpec,
    enrollment: Enrollment,
    events: Iterable[JourneyEvent],
) -> dict[str, StepState]:
    """Progress of one learner on one track version from a set of events (a pure function).

    Args:
        track: The track version the learner follows.
        enrollment: The learner's enrollment (start time, carried credits).
        events: Events of the learner's org; duplicates (same id) count once, order is ignored.
            Events of other orgs or types are ignored.

    Returns:
        Step key -> `StepState`, in the track's step order. See the module docstring for the
        rules (sliding windows, prerequisites, start before completion).
    """
    by_type: dict[str, dict[str, JourneyEvent]] = {}
    for e in events:
        if e.org_key != enrollment.org_id:
            continue
        by_type.setdefault(e.type, {})[e.id] = e
    out: dict[str, StepState] = {}
    for step in track.steps:
        cond = step.completion
        matching = [
            e.occurred_at
            for e in by_type.get(cond.event, {}).values()
            if cond.by == "org" or e.actor_id == enrollment.learner_id
        ]
        prereq_done = [out[p].completed_at for p in step.prerequisites]
        started: dt.datetime | None = None
        if all(t is not None for t in prereq_done):
            started = max([enrollment.enrolled_at, *(t for t in prereq_done if t is not None)])
        credit = enrollment.credits.get(step.key)
        completed: dt.datetime | None
        if credit is not None:
            completed = credit
            started = credit if started is None or credit < started else started
        else:
            sat = cond.satisfied_at(matching)
            completed = None if sat is None or started is None else max(sat, started)
        out[step.key] = StepState(step.key, started, completed, len(matching))
    return out


# --------------------------------------------------------------------------- store port


@runtime_checkable
class JourneyStore(Protocol):
    """Where journeys keep events, enrollments and step progress (memory or SQL).

    Every method is scoped by org (`org_id`, `""` without one). Implementations must make
    `add_events` idempotent per `(org_id, event id)`, keep the earliest `enrolled_at`, and make
    `save_steps` report a step as newly completed at most once, also under concurrent callers.
    """

    async def add_events(self, events: Sequence[JourneyEvent]) -> int:
        """Store events not stored yet (by org and id); return how many were new."""
        ...

    async def events(
        self, org_id: str, types: Collection[str], *, actor_id: str | None = None
    ) -> list[JourneyEvent]:
        """Stored events of `org_id` with a type in `types` (by `actor_id` if given)."""
        ...

    async def enroll(self, enrollment: Enrollment) -> Enrollment:
        """Create the enrollment, or return the stored one with `enrolled_at` lowered to the
        earlier of both (the version of a stored enrollment never changes here)."""
        ...

    async def enrollment(self, org_id: str, learner_id: str, track: str) -> Enrollment | None:
        """The learner's enrollment in `track`, or `None`."""
        ...

    async def enrollments(
        self, org_id: str | None, track: str, *, version: int | None = None
    ) -> list[Enrollment]:
        """Enrollments in `track` (of one org, or of every org with `org_id=None`)."""
        ...

    async def save_steps(self, enrollment: Enrollment, states: Sequence[StepState]) -> StepChanges:
        """Merge computed states into the stored ones (times only move earlier, counts up).

        Returns:
            The steps whose start or completion this call recorded first.

        Raises:
            ConflictError: The enrollment moved to another version meanwhile (retry).
        """
        ...

    async def steps(self, org_id: str, learner_id: str, track: str) -> list[StepState]:
        """Stored step states of a learner's enrollment."""
        ...

    async def step_records(
        self, org_id: str | None, track: str, *, version: int | None = None
    ) -> list[StepRecord]:
        """Stored step states of every learner of `track` (one org or all)."""
        ...

    async def move(self, enrollment: Enrollment, from_version: int) -> bool:
        """Replace a learner's enrollment (new version and credits) and their step rows by
        rows for the credited steps; `False` if the stored version is not `from_version`."""
        ...


def _min_time(a: dt.datetime | None, b: dt.datetime | None) -> dt.datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


class MemoryJourneyStore:
    """In-memory `JourneyStore` (dicts), for tests, notebooks and single-process services.

    Each method runs without awaiting, so concurrent coroutines see every call as atomic.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], JourneyEvent] = {}
        self._enrollments: dict[tuple[str, str, str], Enrollment] = {}
        self._steps: dict[tuple[str, str, str], dict[str, StepState]] = {}

    async def add_events(self, events: Sequence[JourneyEvent]) -> int:
        """Store events not stored yet; return how many were new."""
        new = 0
        for e in events:
            key = (e.org_key, e.id)
            if key not in self._events:
                self._events[key] = e
                new += 1
        return new

    async def events(
        self, org_id: str, types: Collection[str], *, actor_id: str | None = None
    ) -> list[JourneyEvent]:
        """Stored events of `org_id` with a type in `types` (by `actor_id` if given)."""
        wanted = set(types)
        return [
            e
            for (org, _), e in self._events.items()
            if org == org_id and e.type in wanted and (actor_id is None or e.actor_id == actor_id)
        ]

    async def enroll(self, enrollment: Enrollment) -> Enrollment:
        """Create the enrollment or lower the stored `enrolled_at`; return the stored one."""
        key = (enrollment.org_id, enrollment.learner_id, enrollment.track)
        stored = self._enrollments.get(key)
        if stored is None:
            self._enrollments[key] = enrollment
            return enrollment
        if enrollment.enrolled_at < stored.enrolled_at:
            stored = attrs.evolve(stored, enrolled_at=enrollment.enrolled_at)
            self._enrollments[key] = stored
        return stored

    async def enrollment(self, org_id: str, learner_id: str, track: str) -> Enrollment | None:
        """The learner's enrollment in `track`, or `None`."""
        return self._enrollments.get((org_id, learner_id, track))

    async def enrollments(
        self, org_id: str | None, track: str, *, version: int | None = None
    ) -> list[Enrollment]:
        """Enrollments in `track`, sorted by org then learner."""
        return sorted(
            (
                e
                for (org, _, t), e in self._enrollments.items()
                if t == track
                and (org_id is None or org == org_id)
                and (version is None or e.version == version)
            ),
            key=lambda e: (e.org_id, e.learner_id),
        )

    async def save_steps(self, enrollment: Enrollment, states: Sequence[StepState]) -> StepChanges:
        """Merge states; report first starts and first completions."""
        key = (enrollment.org_id, enrollment.learner_id, enrollment.track)
        stored_enrollment = self._enrollments.get(key)
        if stored_enrollment is None or stored_enrollment.version != enrollment.version:
            raise ConflictError(
                f"learner {enrollment.learner_id!r} is not enrolled in "
                f"{enrollment.track}@{enrollment.version} any more; recompute their progress.",
                details={"field": "version"},
            )
        rows = self._steps.setdefault(key, {})
        started: list[str] = []
        completed: list[str] = []
        for s in states:
            old = rows.get(s.step)
            if old is None:
                old = StepState(s.step, None, None, 0)
            if old.started_at is None and s.started_at is not None:
                started.append(s.step)
            if old.completed_at is None and s.completed_at is not None:
                completed.append(s.step)
            rows[s.step] = StepState(
                s.step,
                _min_time(old.started_at, s.started_at),
                _min_time(old.completed_at, s.completed_at),
                max(old.count, s.count),
            )
        return StepChanges(tuple(started), tuple(completed))

    async def steps(self, org_id: str, learner_id: str, track: str) -> list[StepState]:
        """Stored step states of a learner's enrollment."""
        return list(self._steps.get((org_id, learner_id, track), {}).values())

    async def step_records(
        self, org_id: str | None, track: str, *, version: int | None = None
    ) -> list[StepRecord]:
        """Stored step states of every learner of `track`, sorted by org, learner, step."""
        out: list[StepRecord] = []
        for (org, learner, t), rows in self._steps.items():
            if t != track or (org_id is not None and org != org_id):
                continue
            enrollment = self._enrollments[(org, learner, t)]
            if version is not None and enrollment.version != version:
                continue
            out.extend(StepRecord(org, learner, t, enrollment.version, s) for s in rows.values())
        return sorted(out, key=lambda r: (r.org_id, r.learner_id, r.state.step))

    async def move(self, enrollment: Enrollment, from_version: int) -> bool:
        """Replace the enrollment and its step rows (credited steps only)."""
        key = (enrollment.org_id, enrollment.learner_id, enrollment.track)
        stored = self._enrollments.get(key)
        if stored is None or stored.version != from_version:
            return False
        self._enrollments[key] = enrollment
        self._steps[key] = {k: StepState(k, t, t, 0) for k, t in sorted(enrollment.credits.items())}
        return True


# --------------------------------------------------------------------------- notifier, jobs


class JourneyNudge(BaseModel):
    """Payload of the `growth.journey.nudged` event a due nudge or a missed deadline sends.

    Attributes:
        track, version, step: The step concerned.
        learner_id: Who should be reminded (also the envelope's `actor_id`).
        reason: `nudge` or `deadline`.
        template: Template name from the `Nudge` (or the step's `deadline_template`).
        started_at: When the step started.
        due_at: When the nudge or deadline was due.
        step_action: The step's bound operation, or `None`.
    """

    model_config = ConfigDict(frozen=True)

    track: str
    version: int
    step: str
    learner_id: str
    reason: Literal["nudge", "deadline"]
    template: str
    started_at: dt.datetime
    due_at: dt.datetime
    step_action: str | None = None


@functools.cache
def journey_nudge_event() -> Any:
    """The `growth.journey.nudged` event spec (payload `JourneyNudge`), for notification rules.

    Returns:
        An `EventSpec` made with core's `define_event` (the same object on every call); register it and write a notification
        (bus `define_notification`) on it to deliver nudges through the notification center.
    """
    from contractspec.core.specs import define_event

    return define_event(
        JOURNEY_NUDGE_EVENT,
        payload=JourneyNudge,
        description="A learner's journey step is still incomplete when a nudge or deadline "
        "was due.",
    )


@runtime_checkable
class Notifier(Protocol):
    """Receives nudge events. The bus package's `NotificationCenter` satisfies it as it is.

    `handle` must be idempotent per event id: a nudge event's id is derived from the learner,
    track, step and nudge, so a retried job sends nothing twice through a notification center.
    """

    async def handle(self, event: EventEnvelope) -> Any:
        """Deliver (or queue) the notifications `event` triggers."""
        ...


class JourneyCheck(BaseModel):
    """Payload of a `growth.journey.check` job: is this step still incomplete?

    Attributes:
        org_id: Tenant (`""` without one).
        learner_id, track, version, step: The step of a learner's enrollment to check.
        reason: `nudge` (index into `Step.nudges`) or `deadline`.
        index: Nudge index (0 for the deadline).
        started_at: The step's start time when the job was enqueued.
        due_at: When the check is due.
    """

    model_config = ConfigDict(frozen=True)

    org_id: str
    learner_id: str
    track: str
    version: int
    step: str
    reason: Literal["nudge", "deadline"]
    index: int = 0
    started_at: dt.datetime
    due_at: dt.datetime

    @property
    def unique_key(self) -> str:
        """The job's unique key: one check per learner, track version, step and nudge."""
        return (
            f"journey:{self.org_id}:{self.learner_id}:{self.track}@{self.version}:"
            f"{self.step}:{self.reason}:{self.index}"
        )


# --------------------------------------------------------------------------- engine


@attrs.frozen
class BackfillReport:
    """What `JourneyEngine.backfill` did.

    Attributes:
        events: Events read from the history.
        stored: Events the tracks listen to that were not stored yet.
        learners: Learners whose progress was recomputed.
        completions: Step completions recorded (first time only).
    """

    events: int
    stored: int
    learners: int
    completions: tuple[StepCompletion, ...]


class JourneyEngine:
    """Drives learners through tracks from the product event stream.

    Args:
        tracks: Track versions (`TrackSpec`s, or a `SpecRegistry` holding kind `learning_track`);
            new learners enroll in each key's newest version.
        store: `MemoryJourneyStore` or `SqlJourneyStore`.
        enqueuer: Core `JobEnqueuer` for deadline and nudge checks (e.g. a `contractspec-jobs`
            queue); `None` schedules nothing.
        notifier: Receives nudge events when a check is due (e.g. a bus `NotificationCenter`).
        audit: Core `AuditSink` that records migrations (`growth.journey.migrate`), or `None`.
        clock: Time source for "now" (scheduling, audit).
        ids: Id source for audit records.
        auto_enroll: Enroll an event's actor in each track listening to its type.

    Raises:
        ConfigurationError: Two different tracks share a key and version.
    """

    def __init__(
        self,
        tracks: Iterable[TrackSpec] | SpecRegistry,
        store: JourneyStore,
        *,
        enqueuer: JobEnqueuer | None = None,
        notifier: Notifier | None = None,
        audit: AuditSink | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        auto_enroll: bool = True,
    ) -> None:
        from contractspec.core.registry import SpecRegistry

        specs = (
            list(tracks.specs("learning_track"))
            if isinstance(tracks, SpecRegistry)
            else list(tracks)
        )
        self._tracks: dict[str, dict[int, TrackSpec]] = {}
        for spec in specs:
            self.publish(spec)
        self.store = store
        self.enqueuer = enqueuer
        self.notifier = notifier
        self.audit = audit
        self.clock: Clock = clock or SystemClock()
        self.ids = ids
        self.auto_enroll = auto_enroll
        self._runner = SyncRunner()
        self._subscribed: set[tuple[int, str]] = set()

    # -- tracks ---------------------------------------------------------------------------------

    def publish(self, track: TrackSpec) -> None:
        """Make a track version known; new learners of its key enroll in the newest version.

        Raises:
            ConfigurationError: Another track with the same key and version is known.
        """
        if not isinstance(track, TrackSpec):
            raise ConfigurationError(
                f"JourneyEngine takes TrackSpecs made by define_track, got {type(track).__name__}.",
                details={"field": "tracks"},
            )
        versions = self._tracks.setdefault(track.key, {})
        existing = versions.get(track.version)
        if existing is not None and existing != track:
            raise ConfigurationError(
                f"track {track.ref} is already published with other content; publish the "
                "change as a new version.",
                details={"field": "tracks", "track": track.key, "version": track.version},
            )
        versions[track.version] = track

    def track(self, key: str, version: int | None = None) -> TrackSpec:
        """A published track version (the newest by default).

        Raises:
            NotFoundError: Unknown key or version.
        """
        versions = self._tracks.get(key)
        if not versions or (version is not None and version not in versions):
            known = ", ".join(f"{k}@{v}" for k, vs in sorted(self._tracks.items()) for v in vs)
            raise NotFoundError(
                f"no published track {key}{'' if version is None else f'@{version}'}; "
                f"published: {known or 'none'}.",
                details={"field": "track", "track": key, "version": version},
            )
        return versions[max(versions) if version is None else version]

    @property
    def tracks(self) -> list[TrackSpec]:
        """Every published track version, by key then version."""
        return [v for _, vs in sorted(self._tracks.items()) for _, v in sorted(vs.items())]

    @property
    def event_names(self) -> list[str]:
        """Names of the events some published track listens to, sorted."""
        return sorted({t for spec in self.tracks for t in spec.event_types})

    def subscribe(self, bus: Any, *, name: str = "growth.journeys") -> list[Any]:
        """Subscribe `handle` to each event some track listens to on `bus` (the bus package's
        `EventBus`, or anything with `subscribe(pattern, handler, *, name=)`).

        Call it again after publishing a track that listens to new events: only the names not
        subscribed yet by this engine are added.

        Args:
            bus: The event bus.
            name: Prefix of the subscription names (`<name>:<event>`).

        Returns:
            The new subscriptions.
        """
        added = []
        for event_name in self.event_names:
            if (id(bus), event_name) in self._subscribed:
                continue
            added.append(bus.subscribe(event_name, self.handle, name=f"{name}:{event_name}"))
            self._subscribed.add((id(bus), event_name))
        return added

    def _listening(self, event_type: str) -> list[str]:
        return [
            key
            for key, versions in sorted(self._tracks.items())
            if any(event_type in t.event_types for t in versions.values())
        ]

    # -- enrollment and progress -----------------------------------------------------------------

    async def enroll(
        self,
        org_id: str | None,
        learner_id: str,
        track: str,
        *,
        at: dt.datetime | None = None,
    ) -> Enrollment:
        """Enroll a learner in the newest version of `track` (or keep their enrollment).

        Args:
            org_id: Tenant (`None` in single-tenant apps).
            learner_id: The learner's actor id.
            track: Track key.
            at: Enrollment time (default: now).

        Returns:
            The stored enrollment (with the version the learner keeps).

        Raises:
            NotFoundError: Unknown track.
            SpecValidationError: A bad id or a naive `at`.
        """
        spec = self.track(track)
        org = "" if org_id is None else _check_id(org_id, "org_id")
        learner = _check_id(learner_id, "learner_id")
        when = self.clock.now() if at is None else _check_time(at, "at")
        enrollment = await self.store.enroll(Enrollment(org, learner, spec.key, spec.version, when))
        await self._recompute([enrollment])
        return enrollment

    async def progress(self, org_id: str | None, learner_id: str, track: str) -> TrackProgress:
        """A learner's stored progress on `track`.

        Raises:
            NotFoundError: The learner is not enrolled in `track`.
        """
        org = org_id or ""
        enrollment = await self.store.enrollment(org, learner_id, track)
        if enrollment is None:
            raise NotFoundError(
                f"learner {learner_id!r} is not enrolled in track {track!r}"
                f"{f' in org {org!r}' if org else ''}.",
                details={"field": "learner_id", "track": track},
            )
        spec = self.track(track, enrollment.version)
        stored = {s.step: s for s in await self.store.steps(org, learner_id, track)}
        steps = {k: stored.get(k, StepState(k, None, None, 0)) for k in spec.step_keys}
        return TrackProgress(enrollment, steps, len(spec.step_keys))

    # -- event processing ------------------------------------------------------------------------

    async def handle(self, event: JourneyEvent | EventEnvelope) -> list[StepCompletion]:
        """Process one product event (idempotent: a replay of the same id changes nothing).

        Args:
            event: A `JourneyEvent` or a bus `EventEnvelope` (subscribe this method to the bus).

        Returns:
            Steps this call completed for the first time (empty on a replay).

        Raises:
            SpecValidationError: A malformed event.
        """
        return list((await self._process([JourneyEvent.of(event)])).completions)

    async def backfill(
        self,
        history: Iterable[JourneyEvent | EventEnvelope]
        | AsyncIterable[JourneyEvent | EventEnvelope],
        *,
        batch_size: int = 10_000,
    ) -> BackfillReport:
        """Compute progress from historical events with the same rules as `handle`.

        Call it after `publish`ing a track. Events may come in any order and may repeat or
        overlap events already handled; the result equals handling them one by one. Deadline
        and nudge checks already due are not scheduled (no reminders about the past).

        Args:
            history: Events (sync or async iterable).
            batch_size: Events read before they are stored and the learners they touch are
                recomputed (>= 1). Each learner is recomputed once per batch, so larger batches
                take fewer store round trips; memory grows with the batch.

        Returns:
            A `BackfillReport`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SpecValidationError(
                f"batch_size must be an integer >= 1, got {batch_size!r}.",
                details={"field": "batch_size"},
            )
        total = stored = 0
        learners: set[tuple[str, str, str]] = set()
        completions: list[StepCompletion] = []
        batch: list[JourneyEvent] = []

        async def flush() -> None:
            nonlocal stored
            result = await self._process(batch)
            stored += result.stored
            learners.update(result.learners)
            completions.extend(result.completions)
            batch.clear()

        if isinstance(history, AsyncIterable):
            async for item in history:
                batch.append(JourneyEvent.of(item))
                total += 1
                if len(batch) >= batch_size:
                    await flush()
        else:
            for item in history:
                batch.append(JourneyEvent.of(item))
                total += 1
                if len(batch) >= batch_size:
                    await flush()
        if batch:
            await flush()
        return BackfillReport(total, stored, len(learners), tuple(completions))

    async def _process(self, events: Sequence[JourneyEvent]) -> _Processed:
        relevant = [e for e in events if self._listening(e.type)]
        stored = await self.store.add_events(relevant) if relevant else 0
        # One store round trip per learner and track (not per event): the earliest event time
        # of each actor, and the orgs whose org-level steps the batch touches.
        first_seen: dict[tuple[str, str, str], dt.datetime] = {}
        org_wide: set[tuple[str, str]] = set()
        for e in relevant:
            for key in self._listening(e.type):
                if e.actor_id is not None:
                    who = (e.org_key, e.actor_id, key)
                    seen = first_seen.get(who)
                    first_seen[who] = e.occurred_at if seen is None else min(seen, e.occurred_at)
                if e.type in self._org_types(key):
                    org_wide.add((e.org_key, key))
        affected: dict[tuple[str, str, str], Enrollment] = {}
        for (org, actor, key), at in first_seen.items():
            existing = await self.store.enrollment(org, actor, key)
            if existing is None and self.auto_enroll:
                existing = await self.store.enroll(
                    Enrollment(org, actor, key, self.track(key).version, at)
                )
            elif existing is not None and at < existing.enrolled_at:
                existing = await self.store.enroll(attrs.evolve(existing, enrolled_at=at))
            if existing is not None:
                affected[(org, actor, key)] = existing
        for org, key in sorted(org_wide):
            for enr in await self.store.enrollments(org, key):
                affected.setdefault((enr.org_id, enr.learner_id, key), enr)
        completions = await self._recompute(list(affected.values()))
        return _Processed(stored, frozenset(affected), tuple(completions))

    def _org_types(self, key: str) -> frozenset[str]:
        """Event types some version of track `key` counts org-wide (`by="org"`)."""
        return frozenset(
            s.completion.event
            for t in self._tracks[key].values()
            for s in t.steps
            if s.completion.by == "org"
        )

    async def _recompute(self, enrollments: Sequence[Enrollment]) -> list[StepCompletion]:
        completions: list[StepCompletion] = []
        now = self.clock.now()
        # Many learners of one org and track (a backfill batch, an org-wide step): read the org's
        # events once and index them by actor, instead of one query per learner.
        crowd = Counter((e.org_id, e.track) for e in enrollments)
        pools: dict[tuple[str, str], _EventPool] = {}
        for enrollment in enrollments:
            current: Enrollment | None = enrollment
            for _attempt in range(3):
                if current is None:  # pragma: no cover - enrollments are never deleted
                    break
                spec = self.track(current.track, current.version)
                actor_types = {s.completion.event for s in spec.steps if s.completion.by == "actor"}
                org_types = {s.completion.event for s in spec.steps if s.completion.by == "org"}
                found: list[JourneyEvent] = []
                group = (current.org_id, current.track)
                if crowd[group] > _PREFETCH_ABOVE:
                    pool = pools.get(group)
                    if pool is None:
                        types = {
                            t for v in self._tracks[current.track].values() for t in v.event_types
                        }
                        pool = pools[group] = _EventPool.of(
                            await self.store.events(current.org_id, types)
                        )
                    found = pool.select(current.learner_id, actor_types, org_types)
                else:
                    if actor_types:
                        found += await self.store.events(
                            current.org_id, actor_types, actor_id=current.learner_id
                        )
                    if org_types:
                        found += await self.store.events(current.org_id, org_types)
                states = compute_progress(spec, current, found)
                try:
                    changes = await self.store.save_steps(current, list(states.values()))
                except ConflictError:  # migrated meanwhile: recompute on the new version
                    current = await self.store.enrollment(
                        enrollment.org_id, enrollment.learner_id, enrollment.track
                    )
                    continue
                for key in changes.completed:
                    done = states[key].completed_at
                    assert done is not None
                    completions.append(
                        StepCompletion(
                            current.org_id,
                            current.learner_id,
                            current.track,
                            current.version,
                            key,
                            done,
                        )
                    )
                for key in changes.started:
                    await self._schedule(spec, current, key, states[key], now)
                break
        return completions

    async def _schedule(
        self, spec: TrackSpec, enrollment: Enrollment, key: str, state: StepState, now: dt.datetime
    ) -> None:
        if self.enqueuer is None or state.started_at is None or state.completed_at is not None:
            return
        step = spec.step(key)
        due: list[tuple[Literal["nudge", "deadline"], int, dt.timedelta]] = [
            ("nudge", i, n.after) for i, n in enumerate(step.nudges)
        ]
        if step.deadline is not None:
            due.append(("deadline", 0, step.deadline))
        for reason, index, after in due:
            at = state.started_at + after
            if at <= now:
                continue
            check = JourneyCheck(
                org_id=enrollment.org_id,
                learner_id=enrollment.learner_id,
                track=enrollment.track,
                version=enrollment.version,
                step=key,
                reason=reason,
                index=index,
                started_at=state.started_at,
                due_at=at,
            )
            await self.enqueuer.enqueue(
                JOURNEY_CHECK_JOB,
                check,
                scheduled_at=at,
                unique_key=check.unique_key,
                org_id=enrollment.org_id or None,
            )

    async def run_check(self, check: JourneyCheck | Mapping[str, Any], ctx: Any = None) -> bool:
        """Job handler of `JOURNEY_CHECK_JOB`: nudge the learner if the step is still incomplete.

        Bind it with contractspec-jobs (`handlers.bind(define_job(JOURNEY_CHECK_JOB,
        payload=JourneyCheck), engine.run_check)`). The nudge event's id is derived from the
        check, so a retried job hands the notifier the same event (a `NotificationCenter`
        sends it once).

        Args:
            check: The job payload.
            ctx: The job context (unused).

        Returns:
            `True` if a nudge was sent, `False` if the step was complete, the learner moved to
            another version, or no notifier is configured.
        """
        payload = check if isinstance(check, JourneyCheck) else JourneyCheck.model_validate(check)
        enrollment = await self.store.enrollment(payload.org_id, payload.learner_id, payload.track)
        if enrollment is None or enrollment.version != payload.version:
            return False
        states = {
            s.step: s
            for s in await self.store.steps(payload.org_id, payload.learner_id, payload.track)
        }
        state = states.get(payload.step)
        if state is not None and state.completed_at is not None:
            return False
        if self.notifier is None:
            return False
        spec = self.track(payload.track, payload.version)
        step = spec.step(payload.step)
        template = (
            step.nudges[payload.index].template
            if payload.reason == "nudge" and payload.index < len(step.nudges)
            else step.deadline_template
        )
        nudge = JourneyNudge(
            track=payload.track,
            version=payload.version,
            step=payload.step,
            learner_id=payload.learner_id,
            reason=payload.reason,
            template=template,
            started_at=payload.started_at,
            due_at=payload.due_at,
            step_action=step.action,
        )
        envelope = EventEnvelope(
            id=str(uuid.uuid5(_NUDGE_NAMESPACE, payload.unique_key)),
            name=JOURNEY_NUDGE_EVENT,
            version=1,
            occurred_at=self.clock.now(),
            payload=nudge,
            org_id=payload.org_id or None,
            actor_id=payload.learner_id,
            actor_kind="user",
            key=f"{payload.learner_id}:{payload.track}",
        )
        await self.notifier.handle(envelope)
        return True

    # -- migration -------------------------------------------------------------------------------

    async def migrate(
        self,
        track_from: TrackSpec,
        track_to: TrackSpec,
        mapping: Mapping[str, str | None] | None = None,
        *,
        org_id: str | None = None,
    ) -> MigrationReport:
        """Move the learners of `track_from` to `track_to`, carrying completed steps.

        Each completed step of the old version is carried to `mapping[old]` (or to the step of
        the same key when `mapping` does not name it; `None` drops it) with its completion time;
        the rest of the new version's progress is then recomputed from the stored events.
        Recorded through the `audit` sink (one `growth.journey.migrate` record per learner) and
        returned as a report.

        Args:
            track_from: The version learners follow now.
            track_to: The version to move them to (same key, published on this engine).
            mapping: Old step key -> new step key (or `None`).
            org_id: Only learners of this org (default: every org).

        Returns:
            A `MigrationReport`.

        Raises:
            SpecValidationError: Different track keys, equal versions, or a mapping naming a
                step that is not in `track_from` (keys) or `track_to` (values).
            NotFoundError: A version not published on this engine.
        """
        if track_from.key != track_to.key:
            raise SpecValidationError(
                f"migrate moves learners between versions of one track, got {track_from.ref} "
                f"and {track_to.ref}.",
                details={"field": "track_to"},
            )
        if track_from.version == track_to.version:
            raise SpecValidationError(
                f"migrate needs two different versions, got {track_from.ref} twice.",
                details={"field": "track_to"},
            )
        self.track(track_from.key, track_from.version)
        self.track(track_to.key, track_to.version)
        mapping = dict(mapping or {})
        for old, new in mapping.items():
            if old not in track_from.step_keys:
                raise SpecValidationError(
                    f"mapping key {old!r} is not a step of {track_from.ref} "
                    f"({', '.join(track_from.step_keys)}).",
                    details={"field": "mapping", "step": old},
                )
            if new is not None and new not in track_to.step_keys:
                raise SpecValidationError(
                    f"mapping[{old!r}] = {new!r} is not a step of {track_to.ref} "
                    f"({', '.join(track_to.step_keys)}).",
                    details={"field": "mapping", "step": new},
                )
        learners: list[tuple[str, str]] = []
        carried: list[tuple[str, str, str, str]] = []
        dropped: list[tuple[str, str, str]] = []
        moved: list[Enrollment] = []
        for enr in await self.store.enrollments(org_id, track_from.key, version=track_from.version):
            credits: dict[str, dt.datetime] = {}
            mine_carried: list[tuple[str, str, str, str]] = []
            mine_dropped: list[tuple[str, str, str]] = []
            for s in await self.store.steps(enr.org_id, enr.learner_id, enr.track):
                if s.completed_at is None:
                    continue
                target = mapping.get(s.step, s.step if s.step in track_to.step_keys else None)
                if target is None:
                    mine_dropped.append((enr.org_id, enr.learner_id, s.step))
                    continue
                prior = credits.get(target)
                credits[target] = s.completed_at if prior is None else min(prior, s.completed_at)
                mine_carried.append((enr.org_id, enr.learner_id, s.step, target))
            target_enrollment = Enrollment(
                enr.org_id,
                enr.learner_id,
                enr.track,
                track_to.version,
                enr.enrolled_at,
                credits,
                track_from.version,
            )
            if not await self.store.move(target_enrollment, track_from.version):
                continue  # moved by a concurrent migration
            learners.append((enr.org_id, enr.learner_id))
            carried += mine_carried
            dropped += mine_dropped
            moved.append(target_enrollment)
            if self.audit is not None:
                await self.audit.record(
                    AuditRecord(
                        id=self.ids.new_id() if self.ids is not None else str(uuid.uuid4()),
                        occurred_at=self.clock.now(),
                        action="growth.journey.migrate",
                        outcome="success",
                        org_id=enr.org_id or None,
                        target_type="learning_track_enrollment",
                        target_id=f"{enr.learner_id}:{enr.track}",
                        details={
                            "track": enr.track,
                            "learner_id": enr.learner_id,
                            "from_version": track_from.version,
                            "to_version": track_to.version,
                            "carried": {o: n for _, _, o, n in mine_carried},
                            "dropped": [o for _, _, o in mine_dropped],
                        },
                    ),
                    None,
                )
        await self._recompute(moved)
        return MigrationReport(
            track_from.key,
            track_from.version,
            track_to.version,
            tuple(learners),
            tuple(carried),
            tuple(dropped),
        )

    # -- analytics -------------------------------------------------------------------------------

    async def analytics(
        self, track: str, *, org_id: str | None = None, version: int | None = None
    ) -> JourneyAnalytics:
        """Completion analytics of a track version (the newest by default) from the store.

        Raises:
            NotFoundError: Unknown track or version.
        """
        spec = self.track(track, version)
        enrollments = await self.store.enrollments(org_id, spec.key, version=spec.version)
        records = await self.store.step_records(org_id, spec.key, version=spec.version)
        return JourneyAnalytics(spec, tuple(enrollments), tuple(records))

    # -- sync conveniences -----------------------------------------------------------------------

    def handle_sync(self, event: JourneyEvent | EventEnvelope) -> list[StepCompletion]:
        """`handle` for scripts and notebooks."""
        return self._runner.run(self.handle(event))

    def backfill_sync(self, history: Iterable[JourneyEvent | EventEnvelope]) -> BackfillReport:
        """`backfill` for scripts and notebooks."""
        return self._runner.run(self.backfill(history))

    def progress_sync(self, org_id: str | None, learner_id: str, track: str) -> TrackProgress:
        """`progress` for scripts and notebooks."""
        return self._runner.run(self.progress(org_id, learner_id, track))

    def analytics_sync(
        self, track: str, *, org_id: str | None = None, version: int | None = None
    ) -> JourneyAnalytics:
        """`analytics` for scripts and notebooks."""
        return self._runner.run(self.analytics(track, org_id=org_id, version=version))


#: Above this many learners of one org and track in one recomputation, the org's events are
#: read once (and indexed by actor) rather than once per learner.
_PREFETCH_ABOVE = 8


@attrs.frozen
class _EventPool:
    """An org's events of a track's types, indexed by actor and by type."""

    by_actor: dict[str | None, list[JourneyEvent]]
    by_type: dict[str, list[JourneyEvent]]

    @classmethod
    def of(cls, events: Iterable[JourneyEvent]) -> _EventPool:
        by_actor: dict[str | None, list[JourneyEvent]] = {}
        by_type: dict[str, list[JourneyEvent]] = {}
        for e in events:
            by_actor.setdefault(e.actor_id, []).append(e)
            by_type.setdefault(e.type, []).append(e)
        return cls(by_actor, by_type)

    def select(
        self, learner: str, actor_types: Collection[str], org_types: Collection[str]
    ) -> list[JourneyEvent]:
        """The learner's events of `actor_types` and everyone's events of `org_types`."""
        found = [e for e in self.by_actor.get(learner, ()) if e.type in actor_types]
        for t in org_types:
            found += self.by_type.get(t, ())
        return found


@attrs.frozen
class _Processed:
    stored: int
    learners: frozenset[tuple[str, str, str]]
    completions: tuple[StepCompletion, ...]


# --------------------------------------------------------------------------- analytics


@attrs.frozen
class JourneyAnalytics:
    """Completion funnel, time to complete and drop-off of one track version.

    Built by `JourneyEngine.analytics`. The ordered funnel reuses growth's `FunnelAnalyzer`
    (entry = enrollment, then step completions in the track's step order, any window up to
    `window`); cohorts reuse `CohortTracker` (learners by enrollment month; "revenue" = steps
    completed, so `ltv` is steps completed per enrolled learner by month since enrollment).

    Attributes:
        track: The track version analysed.
        enrollments: Its learners.
        records: Their stored step states.
    """

    track: TrackSpec
    enrollments: tuple[Enrollment, ...]
    records: tuple[StepRecord, ...]

    def _completions(self) -> list[tuple[str, str, dt.datetime]]:
        keys = set(self.track.step_keys)
        return [
            (f"{r.org_id}/{r.learner_id}", r.state.step, r.state.completed_at)
            for r in self.records
            if r.state.completed_at is not None and r.state.step in keys
        ]

    def funnel(self, window: dt.timedelta = dt.timedelta(days=365)) -> Any:
        """The ordered completion funnel (`FunnelResult`): enrolled, then each step in order.

        A learner reaches step `k` when they completed steps `1..k` in that order within
        `window` of enrolling (steps completed out of order, e.g. parallel steps, stop the
        ordered funnel; `steps_frame()` counts each step on its own).
        """
        from contractspec.growth.analytics import FunnelAnalyzer

        subjects: list[str] = []
        names: list[str] = []
        times: list[dt.datetime] = []
        for e in self.enrollments:
            subjects.append(f"{e.org_id}/{e.learner_id}")
            names.append("enrolled")
            times.append(e.enrolled_at)
        for who, step, at in self._completions():
            subjects.append(who)
            names.append(step)
            times.append(at)
        analyzer = FunnelAnalyzer(["enrolled", *self.track.step_keys], window)
        return analyzer.analyze(subjects, names, [t.replace(tzinfo=None) for t in times])

    def steps_frame(self) -> pd.DataFrame:
        """One row per step: `module, step, started, completed, completion_rate, drop_off,
        median_hours_to_complete, p90_hours_to_complete` (a pandas DataFrame).

        `started`/`completed` count learners; `completion_rate` = completed / started;
        `drop_off` = started but not completed; hours are from the step's start to completion.

        Raises:
            ImportError: pandas is not installed (`pip install 'contractspec-growth[pandas]'`).
        """
        from contractspec.growth.analytics import _require_pandas

        pd_mod = _require_pandas("JourneyAnalytics.steps_frame()")
        rows = []
        for key in self.track.step_keys:
            states = [r.state for r in self.records if r.state.step == key]
            started = sum(1 for s in states if s.started_at is not None)
            done = [s for s in states if s.completed_at is not None]
            hours = sorted(
                (s.completed_at - s.started_at).total_seconds() / 3600.0
                for s in done
                if s.started_at is not None and s.completed_at is not None
            )
            rows.append(
                {
                    "module": self.track.module_of(key),
                    "step": key,
                    "started": started,
                    "completed": len(done),
                    "completion_rate": len(done) / started if started else math.nan,
                    "drop_off": started - len(done),
                    "median_hours_to_complete": _quantile(hours, 0.5),
                    "p90_hours_to_complete": _quantile(hours, 0.9),
                }
            )
        return pd_mod.DataFrame(rows)

    def learners_frame(self) -> pd.DataFrame:
        """One row per learner: `org_id, learner_id, enrolled_at, steps_completed, fraction,
        completed_at, hours_to_complete` (NaN/NaT while incomplete).

        Raises:
            ImportError: pandas is not installed.
        """
        from contractspec.growth.analytics import _require_pandas

        pd_mod = _require_pandas("JourneyAnalytics.learners_frame()")
        total = len(self.track.step_keys)
        by_learner: dict[tuple[str, str], list[StepState]] = {}
        for r in self.records:
            by_learner.setdefault((r.org_id, r.learner_id), []).append(r.state)
        rows = []
        for e in self.enrollments:
            done = [
                s.completed_at
                for s in by_learner.get((e.org_id, e.learner_id), [])
                if s.completed_at is not None and s.step in self.track.step_keys
            ]
            finished = max(done) if len(done) == total else None
            rows.append(
                {
                    "org_id": e.org_id,
                    "learner_id": e.learner_id,
                    "enrolled_at": e.enrolled_at,
                    "steps_completed": len(done),
                    "fraction": len(done) / total,
                    "completed_at": finished,
                    "hours_to_complete": (
                        math.nan
                        if finished is None
                        else (finished - e.enrolled_at).total_seconds() / 3600.0
                    ),
                }
            )
        frame = pd_mod.DataFrame(rows)
        if len(frame):
            frame["completed_at"] = pd_mod.to_datetime(frame["completed_at"], utc=True)
            frame["enrolled_at"] = pd_mod.to_datetime(frame["enrolled_at"], utc=True)
        return frame

    def cohorts(self) -> Any:
        """Learners by enrollment month (`CohortTable` of growth's `CohortTracker`).

        `active[c, k]` = learners of cohort `c` completing a step in month `k` after enrolling;
        `ltv[c, k]` = steps completed per enrolled learner up to month `k`.

        Raises:
            SpecValidationError: No learners yet.
        """
        from contractspec.growth.analytics import CohortTracker, Transactions

        ids: list[str] = []
        times: list[dt.datetime] = []
        amounts: list[float] = []
        for e in self.enrollments:
            ids.append(f"{e.org_id}/{e.learner_id}")
            times.append(e.enrolled_at.replace(tzinfo=None))
            amounts.append(0.0)
        for who, _, at in self._completions():
            ids.append(who)
            times.append(at.replace(tzinfo=None))
            amounts.append(1.0)
        tracker = CohortTracker()
        tracker.add(Transactions.from_records(ids, times, amounts))
        return tracker.table()

    def plot(self) -> NotebookFigure:
        """A figure: learners completing each step (bars, with drop-off) and hours to complete
        per step (box plot). Displays as PNG in Jupyter.

        Raises:
            ImportError: matplotlib is not installed (`contractspec-growth[plot]`).
        """
        try:
            from contractspec.growth._figure import NotebookFigure
        except ImportError as exc:  # pragma: no cover - exercised by the isolation session
            raise ImportError(
                "JourneyAnalytics.plot() needs matplotlib: pip install 'contractspec-growth[plot]'"
            ) from exc
        keys = list(self.track.step_keys)
        started = []
        completed = []
        hours: list[list[float]] = []
        for key in keys:
            states = [r.state for r in self.records if r.state.step == key]
            started.append(sum(1 for s in states if s.started_at is not None))
            completed.append(sum(1 for s in states if s.completed_at is not None))
            hours.append(
                [
                    (s.completed_at - s.started_at).total_seconds() / 3600.0
                    for s in states
                    if s.completed_at is not None and s.started_at is not None
                ]
            )
        fig = NotebookFigure(figsize=(9, 3.6))
        ax1, ax2 = fig.subplots(1, 2)
        xs = list(range(len(keys)))
        ax1.bar(xs, started, color="#c9d7f0", label="started")
        ax1.bar(xs, completed, color="#3a6fc4", label="completed")
        ax1.set_xticks(xs, keys, rotation=30, ha="right")
        ax1.set_ylabel("learners")
        ax1.set_title(f"{self.track.ref}: completion per step")
        ax1.legend()
        ax2.boxplot([h or [math.nan] for h in hours])
        ax2.set_xticks([x + 1 for x in xs], keys, rotation=30, ha="right")
        ax2.set_ylabel("hours from start to completion")
        ax2.set_title("time to complete")
        fig.tight_layout()
        return fig


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default method) of sorted `values`; NaN if empty."""
    if not values:
        return math.nan
    pos = (len(values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)
