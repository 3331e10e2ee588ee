"""Learning-track specs: validation errors naming the field, the IR, the registry, progress rules."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from contractspec.core.errors import SpecDefinitionError
from contractspec.core.ir import dumps_ir
from contractspec.core.registry import SpecRegistry
from contractspec.growth.journeys import (
    Enrollment,
    EventCondition,
    JourneyEvent,
    Module,
    Nudge,
    Step,
    compute_progress,
    define_track,
)

T0 = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def _step(key: str, event: str = "x.done", **kw: Any) -> Step:
    return Step(key, f"Do {key}.", completion=EventCondition(event), **kw)


def test_duplicate_step_keys_across_modules_are_refused() -> None:
    """Two steps with one key (in different modules) raise SpecDefinitionError on `steps`."""
    with pytest.raises(SpecDefinitionError) as info:
        define_track("t", 1, modules=[Module("a", [_step("s1")]), Module("b", [_step("s1")])])
    assert info.value.details == {"field": "steps", "track": "t", "step": "s1"}
    assert "'s1' is used twice" in info.value.message


def test_duplicate_module_keys_are_refused() -> None:
    """Two modules with one key raise SpecDefinitionError on `modules`."""
    with pytest.raises(SpecDefinitionError) as info:
        define_track("t", 1, modules=[Module("a", [_step("s1")]), Module("a", [_step("s2")])])
    assert info.value.details["field"] == "modules"


def test_unknown_prerequisites_are_named() -> None:
    """A prerequisite naming no step raises SpecDefinitionError listing it and the known steps."""
    with pytest.raises(SpecDefinitionError) as info:
        define_track("t", 1, modules=[Module("a", [_step("s1", prerequisites=["nope", "s1x"])])])
    assert info.value.details["field"] == "prerequisites"
    assert info.value.details["unknown"] == ["nope", "s1x"]
    assert "'nope'" in info.value.message
    assert "(s1)" in info.value.message


def test_prerequisite_cycles_are_refused_with_the_cycle() -> None:
    """a -> b -> c -> a raises SpecDefinitionError whose details give the cycle."""
    steps = [
        _step("a", prerequisites=["c"]),
        _step("b", prerequisites=["a"]),
        _step("c", prerequisites=["b"]),
    ]
    with pytest.raises(SpecDefinitionError) as info:
        define_track("t", 1, modules=[Module("m", steps)])
    cycle = info.value.details["cycle"]
    assert info.value.details["field"] == "prerequisites"
    assert cycle[0] == cycle[-1]
    assert set(cycle) == {"a", "b", "c"}


def test_a_step_requiring_itself_is_refused() -> None:
    """A self-prerequisite raises SpecDefinitionError on `prerequisites`."""
    with pytest.raises(SpecDefinitionError) as info:
        _step("a", prerequisites=["a"])
    assert info.value.details["field"] == "prerequisites"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: EventCondition(""), "event"),
        (lambda: EventCondition("e", count=0), "count"),
        (lambda: EventCondition("e", count=True), "count"),
        (lambda: EventCondition("e", within=dt.timedelta(0)), "EventCondition.within"),
        (lambda: EventCondition("e", by="team"), "by"),  # type: ignore[arg-type]
        (lambda: Nudge(dt.timedelta(seconds=-1), "t"), "Nudge.after"),
        (lambda: Nudge(DAY, ""), "template"),
        (lambda: Step("Bad Key", completion=EventCondition("e")), "Step.key"),
        (lambda: Step("s"), "completion"),
        (lambda: Step("s", completion=EventCondition("e"), deadline=5), "step 's': deadline"),
        (lambda: Module("m", []), "steps"),
        (lambda: define_track("t", 0, modules=[Module("m", [_step("s")])]), "version"),
        (lambda: define_track("t", 1, modules=[]), "modules"),
    ],
)
def test_malformed_fields_raise_spec_definition_errors_naming_them(make: Any, field: str) -> None:
    """Each malformed field raises SpecDefinitionError with `details["field"]` naming it."""
    with pytest.raises(SpecDefinitionError) as info:
        make()
    assert info.value.details["field"] == field


def test_steps_are_ordered_so_prerequisites_come_first() -> None:
    """A step declared before its prerequisite is ordered after it; otherwise order is kept."""
    track = define_track(
        "t",
        1,
        modules=[
            Module("m1", [_step("late", prerequisites=["early"]), _step("free")]),
            Module("m2", [_step("early")]),
        ],
    )
    assert track.step_keys == ("free", "early", "late")
    kept = define_track("t", 1, modules=[Module("m", [_step("b"), _step("a")])])
    assert kept.step_keys == ("b", "a")


def test_tracks_register_in_the_spec_registry_and_appear_in_the_ir() -> None:
    """A SpecRegistry accepts a track (kind learning_track) and its IR carries steps and rules."""
    track = define_track(
        "onboarding",
        2,
        modules=[
            Module(
                "basics",
                [
                    Step(
                        "invoices",
                        "Send **three** invoices.",
                        action="billing.invoice.send",
                        completion=EventCondition("invoice.sent", count=3, within=7 * DAY),
                        deadline=14 * DAY,
                        nudges=[Nudge(3 * DAY, "journey.invoices.reminder")],
                    )
                ],
            )
        ],
    )
    registry = SpecRegistry(track)
    registry.register(track)  # the same object again is a no-op
    ir = json.loads(dumps_ir(registry.to_ir()))
    [entry] = ir["specs"]["learning_track"]
    assert entry["name"] == "onboarding"
    assert entry["version"] == 2
    step = entry["modules"][0]["steps"][0]
    assert step["completion"] == {
        "event": "invoice.sent",
        "count": 3,
        "within_seconds": 604800.0,
        "by": "actor",
    }
    assert step["action"] == "billing.invoice.send"
    assert step["nudges"] == [{"after_seconds": 259200.0, "template": "journey.invoices.reminder"}]
    assert step["deadline_seconds"] == 1209600.0


def _events(*items: tuple[str, str, str | None, dt.datetime]) -> list[JourneyEvent]:
    return [JourneyEvent(i, t, a, "org", at) for i, t, a, at in items]


def test_count_within_is_a_sliding_window_over_event_times() -> None:
    """3 events within 7 days complete at the third event inside a 7-day span, not before."""
    cond = EventCondition("invoice.sent", count=3, within=7 * DAY)
    assert cond.satisfied_at([T0, T0 + 5 * DAY, T0 + 8 * DAY]) is None
    assert cond.satisfied_at([T0 + 8 * DAY, T0, T0 + 5 * DAY, T0 + 11 * DAY]) == T0 + 11 * DAY
    assert cond.satisfied_at([T0, T0 + 7 * DAY, T0 + 3 * DAY]) == T0 + 7 * DAY  # inclusive edge
    assert EventCondition("e", count=2).satisfied_at([T0 + DAY, T0, T0 + 9 * DAY]) == T0 + DAY


def test_events_before_a_prerequisite_count_but_completion_waits_for_it() -> None:
    """Invoices sent before the first deal count; the step completes when the deal step does."""
    track = define_track(
        "t",
        1,
        modules=[
            Module(
                "m",
                [
                    _step("deal", "crm.deal.created"),
                    Step(
                        "invoices",
                        completion=EventCondition("invoice.sent", count=2),
                        prerequisites=["deal"],
                    ),
                ],
            )
        ],
    )
    enrollment = Enrollment("org", "u1", "t", 1, T0)
    events = _events(
        ("i1", "invoice.sent", "u1", T0 + DAY),
        ("i2", "invoice.sent", "u1", T0 + 2 * DAY),
        ("i2", "invoice.sent", "u1", T0 + 2 * DAY),  # a duplicate id counts once
        ("x", "invoice.sent", "u2", T0 + DAY),  # another actor does not count
    )
    states = compute_progress(track, enrollment, events)
    assert states["deal"].completed_at is None
    assert states["invoices"] == type(states["invoices"])("invoices", None, None, 2)
    events += _events(("d1", "crm.deal.created", "u1", T0 + 5 * DAY))
    states = compute_progress(track, enrollment, events)
    assert states["deal"].completed_at == T0 + 5 * DAY
    assert states["invoices"].started_at == T0 + 5 * DAY
    assert states["invoices"].completed_at == T0 + 5 * DAY


def test_org_conditions_count_anyone_in_the_org_but_not_other_orgs() -> None:
    """`by="org"` counts teammates' events; events of another org never count."""
    track = define_track(
        "t",
        1,
        modules=[Module("m", [Step("team", completion=EventCondition("e", count=2, by="org"))])],
    )
    enrollment = Enrollment("org", "u1", "t", 1, T0)
    events = [
        JourneyEvent("1", "e", "u2", "org", T0 + DAY),
        JourneyEvent("2", "e", "u3", "other", T0 + DAY),
    ]
    assert compute_progress(track, enrollment, events)["team"].completed_at is None
    events.append(JourneyEvent("3", "e", None, "org", T0 + 2 * DAY))
    assert compute_progress(track, enrollment, events)["team"].completed_at == T0 + 2 * DAY


def test_naive_event_times_are_refused() -> None:
    """A naive occurred_at raises SpecValidationError naming the field."""
    from contractspec.core.errors import SpecValidationError

    with pytest.raises(SpecValidationError) as info:
        JourneyEvent("1", "e", "u", "o", dt.datetime(2025, 1, 1))
    assert info.value.details["field"] == "JourneyEvent.occurred_at"


def test_journeys_import_without_numpy_or_sqlalchemy() -> None:
    """`import contractspec.growth.journeys` loads neither numpy, SQLAlchemy nor pandas, and
    `import contractspec.growth` does not load the journeys module (lazy exports)."""
    import subprocess
    import sys

    code = (
        "import sys, contractspec.growth as g\n"
        "assert 'contractspec.growth.journeys' not in sys.modules\n"
        "assert g.define_track.__module__ == 'contractspec.growth.journeys'\n"
        "print(sorted(m for m in ('numpy', 'sqlalchemy', 'pandas', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_engine_reads_tracks_from_a_registry_and_refuses_conflicting_versions() -> None:
    """JourneyEngine(registry) publishes its learning tracks; a second, different track under the
    same key and version is refused by the registry and by publish()."""
    from contractspec.core.errors import ConfigurationError
    from contractspec.growth.journeys import JourneyEngine, MemoryJourneyStore

    track = define_track("t", 1, modules=[Module("m", [_step("a")])])
    other = define_track("t", 1, modules=[Module("m", [_step("b")])])
    same = define_track("t", 1, modules=[Module("m", [_step("a")])])
    registry = SpecRegistry(track)
    registry.register(same)  # an equal definition is a no-op
    with pytest.raises(SpecDefinitionError):
        registry.register(other)
    engine = JourneyEngine(registry, MemoryJourneyStore())
    assert engine.tracks == [track]
    with pytest.raises(ConfigurationError) as info:
        engine.publish(other)
    assert info.value.details["field"] == "tracks"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"id": ""}, "JourneyEvent.id"),
        ({"id": "x" * 201}, "JourneyEvent.id"),
        ({"type": 5}, "JourneyEvent.type"),
        ({"actor_id": ""}, "JourneyEvent.actor_id"),
        ({"org_id": ""}, "JourneyEvent.org_id"),
        ({"occurred_at": "2025-01-01T00:00:00Z"}, "JourneyEvent.occurred_at"),
    ],
)
def test_malformed_events_are_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """A bad id, type, actor, org or time raises SpecValidationError naming the field."""
    from contractspec.core.errors import SpecValidationError

    fields: dict[str, Any] = {
        "id": "e1",
        "type": "t",
        "actor_id": "u",
        "org_id": "o",
        "occurred_at": T0,
    }
    with pytest.raises(SpecValidationError) as info:
        JourneyEvent(**(fields | kwargs))
    assert info.value.details["field"] == field


async def test_the_engine_refuses_other_objects_and_bad_batch_sizes() -> None:
    """handle() of a dict and backfill(batch_size=0) raise SpecValidationError; nothing is stored."""
    from contractspec.core.errors import SpecValidationError
    from contractspec.growth.journeys import JourneyEngine, MemoryJourneyStore

    store = MemoryJourneyStore()
    engine = JourneyEngine([define_track("t", 1, modules=[Module("m", [_step("a")])])], store)
    with pytest.raises(SpecValidationError) as info:
        await engine.handle({"id": "e1", "type": "x.done"})  # type: ignore[arg-type]
    assert info.value.details["field"] == "event"
    with pytest.raises(SpecValidationError) as info:
        await engine.backfill([], batch_size=0)
    assert info.value.details["field"] == "batch_size"
    assert await store.events("", ["x.done"]) == []


def test_the_spec_diff_flags_an_in_place_edit_of_a_track() -> None:
    """Editing track t@1 in place is a `spec-changed` warning; publishing t@2 is `spec-added`."""
    from contractspec.core.diff import diff_ir

    v1 = define_track("t", 1, modules=[Module("m", [_step("a")])])
    edited = define_track(
        "t", 1, modules=[Module("m", [Step("a", completion=EventCondition("x.done", count=2))])]
    )
    v2 = define_track("t", 2, modules=[Module("m", [_step("a")])])
    before = SpecRegistry(v1).to_ir()
    [change] = diff_ir(before, SpecRegistry(edited).to_ir()).changes
    assert (change.rule, change.severity.value, change.spec) == ("spec-changed", "warning", "t@1")
    [added] = diff_ir(before, SpecRegistry(v1, v2).to_ir()).changes
    assert (added.rule, added.spec) == ("spec-added", "t@2")


async def test_subscribe_registers_handle_once_per_event_name() -> None:
    """subscribe(bus) adds one subscription per listened event; again after publishing a track
    with a new event, only that one is added."""
    from contractspec.growth.journeys import JourneyEngine, MemoryJourneyStore

    class FakeBus:
        def __init__(self) -> None:
            self.subs: list[tuple[str, Any, str]] = []

        def subscribe(self, pattern: str, handler: Any, *, name: str) -> str:
            self.subs.append((pattern, handler, name))
            return name

    engine = JourneyEngine(
        [define_track("t", 1, modules=[Module("m", [_step("a", "e.one"), _step("b", "e.two")])])],
        MemoryJourneyStore(),
    )
    bus = FakeBus()
    assert engine.subscribe(bus) == ["growth.journeys:e.one", "growth.journeys:e.two"]
    assert all(handler == engine.handle for _, handler, _ in bus.subs)
    engine.publish(define_track("u", 1, modules=[Module("m", [_step("c", "e.three")])]))
    assert engine.subscribe(bus) == ["growth.journeys:e.three"]
    assert [p for p, _, _ in bus.subs] == ["e.one", "e.two", "e.three"]


def test_check_names_unknown_actions_and_events_with_the_closest_name() -> None:
    """check(registry) refuses an action naming no operation and an event naming no event."""
    from pydantic import BaseModel

    from contractspec.core import define_command, define_event

    class DealIn(BaseModel):
        title: str

    created = define_event("crm.deal.created", payload=DealIn)
    create = define_command("crm.deal.create", input=DealIn, output=DealIn, emits=[created])
    registry = SpecRegistry(create)

    def track(action: str, event: str) -> Any:
        step = Step("s", action=action, completion=EventCondition(event))
        return define_track("t", 1, modules=[Module("m", [step])])

    track("crm.deal.create", "crm.deal.created").check(registry)
    with pytest.raises(SpecDefinitionError) as info:
        track("crm.deal.creat", "crm.deal.created").check(registry)
    assert info.value.details["field"] == "action"
    assert "did you mean 'crm.deal.create'" in info.value.message
    with pytest.raises(SpecDefinitionError) as info:
        track("crm.deal.create", "invoice.sent").check(registry)
    assert info.value.details["field"] == "completion.event"
    assert info.value.details["event"] == "invoice.sent"
