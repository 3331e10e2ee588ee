"""The dead-letter review queue as spec operations, through a real Executor with a policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from attrs import define, field
from bus_support import build_registry, envelope

from contractspec.bus import DeadLetterStore, EventBus, MemoryDeadLetterStore, RetryPolicy
from contractspec.bus.review import register_review_operations
from contractspec.core import (
    Actor,
    AuditRecord,
    Backend,
    CallContext,
    ConflictError,
    EventEnvelope,
    Executor,
    InternalError,
    MemoryBackend,
    NotFoundError,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
    Transaction,
)
from contractspec.core.http import create_app
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine

POLICY = RolePermissions({"ops": {"bus.review.*"}, "viewer": {"bus.review.read"}})
OPS = CallContext(actor=Actor.user("u-ops", roles="ops"), org_id="org-1")
VIEWER = CallContext(actor=Actor.user("u-view", roles="viewer"), org_id="org-1")
OTHER_ORG = CallContext(actor=Actor.user("u-ops2", roles="ops"), org_id="org-2")
NO_WAIT = RetryPolicy(max_attempts=2, base_delay=0.0, max_delay=0.0)


@define
class RecordedEvents:
    """An `EventPublisher` keeping what committed calls emitted."""

    events: list[EventEnvelope] = field(factory=list)
    broken: bool = False

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        if self.broken:
            raise ConnectionError("outbox unavailable")
        tx.on_commit(lambda: self.events.extend(events))


@define
class App:
    """The executor under test, the bus with a flaky `mailer` subscriber, and the recorders."""

    executor: Executor
    bus: EventBus
    events: RecordedEvents
    backend: Backend
    healthy: bool = False
    delivered: list[str] = field(factory=list)

    async def audit(self, org_id: str) -> list[AuditRecord]:
        if isinstance(self.backend, MemoryBackend):
            return [r for r in self.backend.audit.records if r.org_id == org_id]
        return [e.record for e in await self.backend.audit.entries(org_id)]  # type: ignore[union-attr]

    async def run(self, op: str, data: dict[str, Any], ctx: CallContext = OPS) -> Any:
        return (await self.executor.execute(op, data, ctx)).model_dump(mode="json")

    async def dead_letter(self, n: int, org_id: str | None = "org-1") -> str:
        """Deliver event `n` while the mailer is down: one dead letter, returned by id."""
        report = await self.bus.deliver(envelope(n, org_id=org_id))
        [outcome] = report.outcomes
        assert outcome.dead_letter_id is not None
        return outcome.dead_letter_id


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[App]:
    """Review operations over dead letters on memory, SQLite or PostgreSQL (executor on the same)."""
    registry = build_registry()
    clock = FakeClock()
    events = RecordedEvents()

    def make(store: DeadLetterStore, backend: Backend) -> App:
        bus = EventBus(
            retry=NO_WAIT,
            clock=clock,
            ids=SequentialIds("dl"),
            dead_letters=store,
            registry=registry,
        )
        register_review_operations(registry, bus=bus)
        executor = Executor(registry, backend=backend, policy=POLICY, events=events, clock=clock)
        app = App(executor, bus, events, backend)

        def mailer(event: EventEnvelope) -> None:
            if not app.healthy:
                raise ConnectionError("smtp down")
            app.delivered.append(event.id)

        bus.subscribe("crm.deal.created", mailer, name="mailer")
        return app

    if backend_kind == "memory":
        yield make(MemoryDeadLetterStore(), MemoryBackend())
        return
    from contractspec.bus.sql import SqlDeadLetterStore, create_bus_tables
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        await create_bus_tables(engine)
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        yield make(SqlDeadLetterStore(engine), sql)


async def test_a_replayed_dead_letter_reaches_its_subscriber_and_leaves_the_queue(app: App) -> None:
    """List and show a dead letter, replay it once the subscriber works: delivered, event emitted."""
    letter_id = await app.dead_letter(1)
    page = await app.run("bus.review.dead_letters.list", {})
    assert page["next_cursor"] is None
    [item] = page["items"]
    assert (item["id"], item["event_id"], item["event_name"], item["org_id"]) == (
        letter_id,
        "ev-0001",
        "crm.deal.created",
        "org-1",
    )
    assert (item["subscriber"], item["attempts"], item["error"]) == (
        "mailer",
        2,
        "ConnectionError: smtp down",
    )
    assert item["event"]["payload"]["title"] == "Deal 1"
    assert item["replayed_at"] is None
    assert await app.run("bus.review.dead_letters.show", {"dead_letter_id": letter_id}) == item

    app.healthy = True
    out = await app.run(
        "bus.review.dead_letters.replay", {"dead_letter_id": letter_id, "comment": "smtp back"}
    )
    assert out == {
        "dead_letter_id": letter_id,
        "delivered": True,
        "attempts": 1,
        "error": None,
        "new_dead_letter_id": None,
    }
    assert app.delivered == ["ev-0001"]
    assert (await app.run("bus.review.dead_letters.list", {}))["items"] == []
    shown = await app.run("bus.review.dead_letters.show", {"dead_letter_id": letter_id})
    assert shown["replayed_at"] is not None
    with pytest.raises(ConflictError, match="already replayed"):
        await app.run("bus.review.dead_letters.replay", {"dead_letter_id": letter_id})
    assert app.delivered == ["ev-0001"]

    [event] = app.events.events
    assert (event.name, event.org_id, event.actor_id) == (
        "bus.review.dead_letters.replayed",
        "org-1",
        "u-ops",
    )
    assert event.payload.model_dump() == {
        "dead_letter_id": letter_id,
        "event_id": "ev-0001",
        "event_name": "crm.deal.created",
        "subscriber": "mailer",
        "delivered": True,
        "new_dead_letter_id": None,
        "comment": "smtp back",
    }
    audit = [(r.action, r.outcome) for r in await app.audit("org-1")]
    assert ("bus.review.dead_letters.replay", "success") in audit


async def test_a_replay_that_fails_again_writes_a_new_dead_letter(app: App) -> None:
    """Replaying while the subscriber still fails reports it and queues a new dead letter."""
    first = await app.dead_letter(1)
    out = await app.run("bus.review.dead_letters.replay", {"dead_letter_id": first})
    assert (out["delivered"], out["attempts"], out["error"]) == (
        False,
        2,
        "ConnectionError: smtp down",
    )
    second = out["new_dead_letter_id"]
    assert second is not None
    assert second != first
    listed = (await app.run("bus.review.dead_letters.list", {}))["items"]
    assert [(i["id"], i["event_id"]) for i in listed] == [(second, "ev-0001"), (first, "ev-0001")]
    assert [e.payload.delivered for e in app.events.events] == [False]  # type: ignore[attr-defined]


async def test_discard_deletes_the_dead_letter_without_delivering_it(app: App) -> None:
    """Discard removes the letter for good and emits the discarded event; the subscriber is idle."""
    keep = await app.dead_letter(1)
    drop = await app.dead_letter(2)
    out = await app.run(
        "bus.review.dead_letters.discard", {"dead_letter_id": drop, "comment": "test data"}
    )
    assert (out["dead_letter"]["id"], out["dead_letter"]["event_id"]) == (drop, "ev-0002")
    assert await app.bus.dead_letters.get(drop) is None
    listed = (await app.run("bus.review.dead_letters.list", {}))["items"]
    assert [i["id"] for i in listed] == [keep]
    with pytest.raises(NotFoundError):
        await app.run("bus.review.dead_letters.discard", {"dead_letter_id": drop})
    assert app.delivered == []
    [event] = app.events.events
    assert (event.name, event.payload.dead_letter_id, event.payload.comment) == (  # type: ignore[attr-defined]
        "bus.review.dead_letters.discarded",
        drop,
        "test data",
    )


async def test_actions_need_the_act_permission_and_denials_are_audited(app: App) -> None:
    """A viewer lists but cannot replay or discard (PolicyDeniedError, audited); no role sees nothing."""
    letter_id = await app.dead_letter(1)
    app.healthy = True
    assert len((await app.run("bus.review.dead_letters.list", {}, VIEWER))["items"]) == 1
    for verb in ("replay", "discard"):
        with pytest.raises(PolicyDeniedError):
            await app.run(f"bus.review.dead_letters.{verb}", {"dead_letter_id": letter_id}, VIEWER)
    nobody = CallContext(actor=Actor.user("u-x"), org_id="org-1")
    with pytest.raises(PolicyDeniedError):
        await app.run("bus.review.dead_letters.list", {}, nobody)
    assert app.delivered == []
    letter = await app.bus.dead_letters.get(letter_id)
    assert letter is not None
    assert letter.replayed_at is None
    denied = [(r.action, r.actor_id) for r in await app.audit("org-1") if r.outcome == "denied"]
    assert denied == [
        ("bus.review.dead_letters.replay", "u-view"),
        ("bus.review.dead_letters.discard", "u-view"),
        ("bus.review.dead_letters.list", "u-x"),
    ]
    assert app.events.events == []


async def test_another_orgs_dead_letter_is_not_found(app: App) -> None:
    """A letter of org-2 (or of an event without org) is invisible to org-1 and not acted on."""
    theirs = await app.dead_letter(1, org_id="org-2")
    unscoped = await app.dead_letter(2, org_id=None)
    app.healthy = True
    assert (await app.run("bus.review.dead_letters.list", {}))["items"] == []
    for verb in ("show", "replay", "discard"):
        for letter_id in (theirs, unscoped):
            with pytest.raises(NotFoundError, match="does not exist in this org"):
                await app.run(f"bus.review.dead_letters.{verb}", {"dead_letter_id": letter_id})
    assert app.delivered == []
    assert await app.bus.dead_letters.get(theirs) is not None
    listed = (await app.run("bus.review.dead_letters.list", {}, OTHER_ORG))["items"]
    assert [i["id"] for i in listed] == [theirs]
    no_org = CallContext(actor=Actor.user("u-ops", roles="ops"))
    listed = (await app.run("bus.review.dead_letters.list", {}, no_org))["items"]
    assert [i["id"] for i in listed] == [unscoped]


async def test_the_cursor_walks_every_dead_letter_once_newest_first(app: App) -> None:
    """Pages of 3 over 8 letters of org-1 (others interleaved) return each once, newest first."""
    ids = []
    for n in range(1, 9):
        ids.append(await app.dead_letter(n))
        if n % 3 == 0:
            await app.dead_letter(100 + n, org_id="org-2")
    seen: list[str] = []
    sizes = []
    cursor = None
    while True:
        data: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            data["cursor"] = cursor
        page = await app.run("bus.review.dead_letters.list", data)
        sizes.append(len(page["items"]))
        seen.extend(i["id"] for i in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [3, 3, 2]
    assert seen == ids[::-1]
    filtered = await app.run(
        "bus.review.dead_letters.list", {"event_name": "crm.deal.moved", "subscriber": "mailer"}
    )
    assert filtered["items"] == []


async def test_repeating_an_action_with_its_idempotency_key_replays_the_result(app: App) -> None:
    """A replay repeated with the same idempotency key returns the first result and delivers once."""
    letter_id = await app.dead_letter(1)
    app.healthy = True
    keyed = OPS.replace(idempotency_key="replay-1")
    first = await app.run("bus.review.dead_letters.replay", {"dead_letter_id": letter_id}, keyed)
    again = await app.run("bus.review.dead_letters.replay", {"dead_letter_id": letter_id}, keyed)
    assert again == first
    assert app.delivered == ["ev-0001"]
    assert [e.name for e in app.events.events] == ["bus.review.dead_letters.replayed"]


async def test_an_action_rolls_back_with_its_call(app: App) -> None:
    """When the call fails after acting (its event cannot be published), nothing is recorded:
    the replayed letter stays dead, a failed replay's new letter vanishes, a discard is undone."""
    replayed = await app.dead_letter(1)
    failing = await app.dead_letter(2)
    app.events.broken = True
    with pytest.raises(InternalError):
        await app.run("bus.review.dead_letters.discard", {"dead_letter_id": failing})
    with pytest.raises(InternalError):  # fails again: its new dead letter rolls back too
        await app.run("bus.review.dead_letters.replay", {"dead_letter_id": failing})
    app.healthy = True
    with pytest.raises(InternalError):
        await app.run("bus.review.dead_letters.replay", {"dead_letter_id": replayed})
    assert app.delivered == ["ev-0001"]  # the subscriber ran; the bookkeeping did not commit
    app.events.broken = False
    listed = (await app.run("bus.review.dead_letters.list", {}))["items"]
    assert [i["id"] for i in listed] == [failing, replayed]


def test_review_specs_declare_permissions_events_and_pii() -> None:
    """Queries need bus.review.read, actions bus.review.act and emit their event; events are PII."""
    review = register_review_operations(SpecRegistry(), bus=EventBus())
    ops = review.operations
    base = "bus.review.dead_letters"
    assert sorted(ops) == sorted(f"{base}.{v}" for v in ("list", "show", "replay", "discard"))
    assert [
        (ops[f"{base}.{v}"].kind, ops[f"{base}.{v}"].auth.permissions) for v in ("list", "replay")
    ] == [  # type: ignore[union-attr]
        ("query", ("bus.review.read",)),
        ("command", ("bus.review.act",)),
    ]
    assert ops[f"{base}.replay"].idempotent is True
    assert [e.name for e in ops[f"{base}.discard"].emits] == [f"{base}.discarded"]  # type: ignore[union-attr]
    assert ops[f"{base}.show"].pii == {"output.event", "output.error"}
    assert ops[f"{base}.list"].pii == {"output.items.event", "output.items.error"}
    assert review.permissions == ("bus.review.read", "bus.review.act")


@pytest.mark.parametrize(
    ("op", "data", "field_name"),
    [
        ("bus.review.dead_letters.list", {"limit": 0}, "limit"),
        ("bus.review.dead_letters.list", {"limit": 201}, "limit"),
        ("bus.review.dead_letters.list", {"cursor": "abc"}, "cursor"),
        ("bus.review.dead_letters.show", {}, "dead_letter_id"),
        ("bus.review.dead_letters.replay", {"dead_letter_id": ""}, "dead_letter_id"),
        (
            "bus.review.dead_letters.discard",
            {"dead_letter_id": "d", "comment": "x" * 2001},
            "comment",
        ),
    ],
)
async def test_bad_input_is_a_spec_validation_error(
    app: App, op: str, data: dict[str, Any], field_name: str
) -> None:
    """Out-of-range limits, a forged cursor or a missing id fail validation naming the field."""
    with pytest.raises(SpecValidationError, match=field_name):
        await app.run(op, data)


@pytest.mark.parametrize("backend_kind", ["memory"])
async def test_review_operations_are_served_over_http(app: App) -> None:
    """create_app serves the review queries as GET and the actions as POST routes."""
    letter_id = await app.dead_letter(1)
    app.healthy = True

    def authenticate(request: Any) -> Actor | None:
        role = request.headers.get("x-role")
        return Actor.user(f"u-{role}", roles=role) if role in ("ops", "viewer") else None

    http_app = create_app(app.executor, authenticate=authenticate, org_id=lambda r, a: "org-1")
    transport = httpx.ASGITransport(app=http_app)
    base = "/bus/review/dead_letters"
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        listed = await client.get(f"{base}/list/v1", headers={"x-role": "viewer"})
        assert listed.status_code == 200
        assert [i["id"] for i in listed.json()["items"]] == [letter_id]
        shown = await client.get(
            f"{base}/show/v1", params={"dead_letter_id": letter_id}, headers={"x-role": "viewer"}
        )
        assert (shown.status_code, shown.json()["event_id"]) == (200, "ev-0001")
        body = {"dead_letter_id": letter_id}
        denied = await client.post(f"{base}/replay/v1", json=body, headers={"x-role": "viewer"})
        assert denied.status_code == 403
        done = await client.post(f"{base}/replay/v1", json=body, headers={"x-role": "ops"})
        assert (done.status_code, done.json()["delivered"]) == (200, True)
        assert (await client.post(f"{base}/list/v1", json={})).status_code == 405
        assert (await client.get(f"{base}/discard/v1")).status_code == 405
    assert app.delivered == ["ev-0001"]
