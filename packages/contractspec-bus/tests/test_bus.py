"""The in-process event bus: matching, filters, sync/async handlers, retries, dead letters."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from bus_support import DealCreated, build_registry, envelope
from hypothesis import given
from hypothesis import strategies as st

from contractspec.bus import (
    EventBus,
    MemoryDeadLetterStore,
    RawPayload,
    RetryPolicy,
    envelope_from_dict,
)
from contractspec.bus.testing import capture
from contractspec.core import (
    Actor,
    CallContext,
    ConfigurationError,
    Executor,
    MemoryUnitOfWork,
    NotFoundError,
    RolePermissions,
)
from contractspec.core.testing import FakeClock, SequentialIds

NO_WAIT = RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0)


def make_bus(**kwargs: object) -> EventBus:
    return EventBus(
        retry=NO_WAIT,
        clock=FakeClock(),
        ids=SequentialIds("dl"),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_exact_glob_and_all_subscriptions_match_by_name() -> None:
    """Exact names, `crm.*`, `*.created` and `*` each receive exactly the events they match."""
    bus = make_bus()
    exact = capture(bus, "crm.deal.created")
    domain = capture(bus, "crm.*")
    suffix = capture(bus, "*.created")
    everything = capture(bus, "*")
    await bus.deliver(envelope(1))
    await bus.deliver(envelope(2, name="crm.deal.moved"))
    await bus.deliver(envelope(3, name="billing.invoice.created"))
    assert [e.id for e in exact] == ["ev-0001"]
    assert [e.id for e in domain] == ["ev-0001", "ev-0002"]
    assert [e.id for e in suffix] == ["ev-0001", "ev-0003"]
    assert [e.id for e in everything] == ["ev-0001", "ev-0002", "ev-0003"]


async def test_sync_and_async_handlers_both_run() -> None:
    """A plain function and a coroutine function are both called with the envelope."""
    bus = make_bus()
    seen: list[str] = []

    def sync_handler(event: object) -> None:
        seen.append("sync")

    async def async_handler(event: object) -> None:
        seen.append("async")

    bus.subscribe("crm.deal.created", sync_handler, name="s")
    bus.subscribe("crm.deal.created", async_handler, name="a")
    report = await bus.deliver(envelope(1))
    assert sorted(seen) == ["async", "sync"]
    assert report.delivered_to == ("s", "a")
    assert report.ok is True


async def test_where_and_filtered_bus_filter_on_payload_and_metadata() -> None:
    """`where=` and `FilteredEventBus` only pass events whose envelope paths match."""
    bus = make_bus()
    big: list[str] = []
    acme_won: list[str] = []
    bus.subscribe(
        "crm.deal.created",
        lambda e: big.append(e.id),
        name="big",
        where={"payload.amount": lambda a: a >= Decimal("100")},
    )
    acme = bus.filtered({"org_id": "acme"})
    acme.filtered(filter=lambda e: e.payload.to_stage == "won").subscribe(
        "crm.deal.moved", lambda e: acme_won.append(e.id), name="acme-won"
    )
    await bus.deliver(envelope(1, amount="50"))
    await bus.deliver(envelope(2, amount="150"))
    await bus.deliver(envelope(3, name="crm.deal.moved", org_id="acme", to_stage="won"))
    await bus.deliver(envelope(4, name="crm.deal.moved", org_id="acme", to_stage="lost"))
    await bus.deliver(envelope(5, name="crm.deal.moved", org_id="other", to_stage="won"))
    assert big == ["ev-0002"]
    assert acme_won == ["ev-0003"]


async def test_failing_subscriber_is_retried_then_dead_lettered_without_hurting_others() -> None:
    """A subscriber failing every attempt lands in dead letters; the others still get the event."""
    dead = MemoryDeadLetterStore()
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    bus = EventBus(
        dead_letters=dead,
        retry=RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=10.0, jitter="none"),
        clock=FakeClock(),
        ids=SequentialIds("dl"),
        sleep=fake_sleep,
    )
    calls = 0

    def broken(event: object) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("smtp down")

    bus.subscribe("crm.*", broken, name="broken")
    good = capture(bus, "crm.*", name="good")
    report = await bus.deliver(envelope(1))
    assert calls == 4
    assert sleeps == [0.5, 1.0, 2.0]
    assert [e.id for e in good] == ["ev-0001"]
    assert report.ok is False
    assert [(o.subscriber, o.ok, o.attempts) for o in report.outcomes] == [
        ("broken", False, 4),
        ("good", True, 1),
    ]
    page = await dead.list()
    assert [(d.id, d.subscriber, d.error, d.attempts, d.event_id) for d in page] == [
        ("dl-000001", "broken", "RuntimeError: smtp down", 4, "ev-0001")
    ]


async def test_flaky_subscriber_succeeds_on_retry_and_leaves_no_dead_letter() -> None:
    """A subscriber that fails once then succeeds is reported ok after 2 attempts."""
    bus = make_bus()
    attempts = 0

    def flaky(event: object) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("blip")

    bus.subscribe("*", flaky, name="flaky")
    report = await bus.deliver(envelope(1))
    assert [(o.ok, o.attempts) for o in report.outcomes] == [(True, 2)]
    assert await bus.dead_letters.count() == 0


async def test_dead_letters_are_replayed_to_the_failed_subscriber_only() -> None:
    """Replaying sends the stored event (payload re-validated) to that subscriber and marks it."""
    bus = make_bus(registry=build_registry())
    healthy = False
    got: list[object] = []

    def sometimes(event: object) -> None:
        if not healthy:
            raise RuntimeError("not yet")
        got.append(event)

    bus.subscribe("crm.deal.created", sometimes, name="sometimes")
    other = capture(bus, "*", name="other")
    await bus.deliver(envelope(7, amount="12.50"))
    assert await bus.dead_letters.count() == 1
    healthy = True
    reports = await bus.replay_dead_letters(subscriber="sometimes")
    assert [r.delivered_to for r in reports] == [("sometimes",)]
    assert len(other) == 1  # the other subscriber was not called again
    (event,) = got
    assert isinstance(event.payload, DealCreated)  # type: ignore[attr-defined]
    assert event.payload.amount == Decimal("12.50")  # type: ignore[attr-defined]
    assert await bus.dead_letters.count() == 0
    assert await bus.dead_letters.count(include_replayed=True) == 1
    with pytest.raises(NotFoundError):
        await bus.replay_dead_letters(ids=["dl-999999"])


async def test_replay_of_an_unsubscribed_subscriber_is_refused() -> None:
    """A dead letter of a subscriber that no longer exists cannot be replayed silently."""
    bus = make_bus()
    bus.subscribe("*", lambda e: 1 / 0, name="gone")
    await bus.deliver(envelope(1))
    bus.unsubscribe("gone")
    with pytest.raises(ConfigurationError, match="'gone', which is not subscribed"):
        await bus.replay_dead_letters()


async def test_bus_as_publisher_delivers_after_commit_and_never_after_rollback() -> None:
    """Executor(events=bus): committed calls are delivered; a failing call delivers nothing."""
    bus = make_bus()
    seen = capture(bus, "crm.*")
    registry = build_registry()
    ex = Executor(registry, events=bus, policy=RolePermissions({"sales": ["deal.*"]}))
    ctx = CallContext(actor=Actor.user("u-7", roles="sales"), org_id="org-1")
    await ex.execute("crm.deal.create", {"id": "d1", "title": "A", "amount": "5"}, ctx)
    with pytest.raises(NotFoundError):
        await ex.execute("crm.deal.move", {"deal_id": "missing", "to_stage": "won"}, ctx)
    await bus.drain()
    assert [(e.name, e.payload.deal_id, e.actor_id) for e in seen] == [  # type: ignore[attr-defined]
        ("crm.deal.created", "d1", "u-7")
    ]


async def test_publish_on_rollback_delivers_nothing() -> None:
    """Events published in a transaction that rolls back are never delivered."""
    bus = make_bus()
    seen = capture(bus)
    tx = await MemoryUnitOfWork().begin()
    await bus.publish([envelope(1)], tx)
    await tx.rollback()
    await bus.drain()
    assert seen == []


async def test_duplicate_subscriber_names_and_bad_patterns_are_rejected() -> None:
    """Names are unique and patterns must be event names or globs."""
    bus = make_bus()
    bus.subscribe("a.b", print, name="x")
    with pytest.raises(ConfigurationError, match="'x' already exists"):
        bus.subscribe("a.b", print, name="x")
    with pytest.raises(ConfigurationError, match="pattern 'a b' is not valid"):
        bus.subscribe("a b", print, name="y")
    with pytest.raises(ConfigurationError, match="must be callable"):
        bus.subscribe("a.b", "nope", name="z")  # type: ignore[arg-type]


@given(st.text(min_size=1).filter(lambda s: any(c in s for c in " /\\{}\"'$%#@;\n")))
def test_patterns_with_forbidden_characters_always_raise(pattern: str) -> None:
    """Any pattern containing spaces, slashes, quotes and the like is a ConfigurationError."""
    with pytest.raises(ConfigurationError) as info:
        EventBus().subscribe(pattern, print)
    assert info.value.details == {"field": "pattern"}


async def test_envelope_round_trips_through_its_json_form() -> None:
    """to_dict() → envelope_from_dict() restores the typed payload with a registry, raw without."""
    env = envelope(3, amount="9.99", contact_email="a@b.c")
    typed = envelope_from_dict(env.to_dict(), build_registry())
    assert typed == env
    raw = envelope_from_dict(env.to_dict())
    assert isinstance(raw.payload, RawPayload)
    assert raw.payload.model_dump() == {
        "deal_id": "d3",
        "title": "Deal 3",
        "amount": "9.99",
        "owner_id": "u-1",
        "contact_email": "a@b.c",
    }


def test_retry_policy_delays_grow_exponentially_and_are_capped() -> None:
    """Without jitter delays double and stop at max_delay; full jitter stays within [0, d]."""
    policy = RetryPolicy(max_attempts=6, base_delay=1.0, max_delay=5.0, jitter="none")
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(base_delay=1.0, max_delay=100.0, jitter="full")
    rng = random.Random(7)
    draws = [jittered.delay(3, rng) for _ in range(200)]
    assert min(draws) >= 0.0
    assert max(draws) <= 4.0
    equal = RetryPolicy(base_delay=1.0, max_delay=100.0, jitter="equal")
    assert all(2.0 <= equal.delay(3, rng) <= 4.0 for _ in range(200))
    assert policy.gives_up_after(6) is True
    assert policy.gives_up_after(5) is False


@given(
    st.sampled_from(["max_attempts", "base_delay", "max_delay", "multiplier", "jitter"]),
    st.one_of(st.integers(max_value=-1), st.just("x"), st.none(), st.just(True)),
)
def test_retry_policy_rejects_bad_values_naming_the_field(name: str, value: object) -> None:
    """Every invalid RetryPolicy field raises ConfigurationError with that field in details."""
    with pytest.raises(ConfigurationError) as info:
        RetryPolicy(**{name: value})  # type: ignore[arg-type]
    assert info.value.details == {"field": name}
