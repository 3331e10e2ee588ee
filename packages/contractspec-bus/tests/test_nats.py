"""The outbox relayed to NATS JetStream, against real `nats-server -js` processes."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bus_support import build_registry, envelope
from nats_support import NatsServer, running_server, subprocess_env
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

nats = pytest.importorskip("nats")

from contractspec.bus import EventBus, IdempotentConsumer, OutboxRelay, RetryPolicy  # noqa: E402
from contractspec.bus.nats import (  # noqa: E402
    JetStreamPublisher,
    JetStreamRelay,
    JetStreamSpec,
    JetStreamSubscriber,
    org_token,
    subject_for,
)
from contractspec.core import ConfigurationError, EventEnvelope, Transaction  # noqa: E402

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real `nats-server -js` for this module (each test uses its own stream)."""
    with running_server(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[Any]:
    """A JetStream context on the module's server."""
    nc = await nats.connect(nats_server.url, connect_timeout=10)
    try:
        yield nc.jetstream(timeout=10)
    finally:
        await nc.close()


_streams = iter(range(10_000))


def _stream(**kwargs: Any) -> JetStreamSpec:
    return JetStreamSpec.from_registry(
        build_registry(), name=f"T{next(_streams)}", prefix=f"t{next(_streams)}.ev", **kwargs
    )


async def _outbox(engine: AsyncEngine) -> Any:
    from contractspec.bus.sql import SqlOutboxStore, create_bus_tables

    await create_bus_tables(engine)
    return SqlOutboxStore(engine)


async def _commit(engine: AsyncEngine, outbox: Any, events: Sequence[EventEnvelope]) -> None:
    from contractspec.core.sql import SqlUnitOfWork

    tx = await SqlUnitOfWork(engine).begin()
    await outbox.publish(list(events), tx)
    await tx.commit()


async def _effects_table(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE crm_effect (id VARCHAR(64) PRIMARY KEY, deal_id VARCHAR(64) NOT NULL, "
                "cs_version BIGINT NOT NULL DEFAULT 1)"
            )
        )


async def _effect_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return [r[0] for r in (await conn.execute(text("SELECT id FROM crm_effect"))).all()]


def _idempotent(engine: AsyncEngine, name: str = "effects") -> IdempotentConsumer:
    from bus_crash_relay import Effect, effect_entity, effect_tables

    from contractspec.bus.sql import SqlProcessedEventStore
    from contractspec.core.sql import SqlEntityStore, SqlUnitOfWork

    store = SqlEntityStore(effect_tables)

    async def effect(event: EventEnvelope, tx: Transaction) -> None:
        repo = store.repository(effect_entity, tx, None)
        await repo.add(Effect(id=event.id, deal_id=event.payload.deal_id))  # type: ignore[attr-defined]

    return IdempotentConsumer(
        name, effect, unit_of_work=SqlUnitOfWork(engine), processed=SqlProcessedEventStore(engine)
    )


async def _consume_until(
    sub: JetStreamSubscriber, done: Any, seconds: float = 60.0, wait: float = 1.0
) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not done in {seconds} s: {sub.stats}")
        await sub.run_once(wait=wait)


# -- subjects and streams (no server) -------------------------------------------------------------


def test_org_ids_are_escaped_so_no_org_can_widen_or_collide_with_a_subject() -> None:
    """Dots and wildcards in org ids are percent-escaped; distinct orgs give distinct tokens."""
    assert (
        subject_for("cs.events", "org-1", "crm.deal.created") == "cs.events.org-1.crm.deal.created"
    )
    assert org_token("acme.eu") == "acme%2Eeu"
    assert org_token("*") == "%2A"
    assert org_token(">") == "%3E"
    assert org_token("a b") == "a%20b"
    assert org_token("é") == "%C3%A9"
    assert org_token(None) == "~"
    hostile = ["a.b", "a%2Eb", "a_b", "~", "*", ">", "a b", "a\tb"]
    tokens = [org_token(o) for o in hostile]
    assert len(set(tokens)) == len(hostile)
    assert all("." not in t and "*" not in t and ">" not in t and " " not in t for t in tokens)
    with pytest.raises(ConfigurationError, match="prefix"):
        subject_for("cs.>", "o", "crm.deal.created")
    with pytest.raises(ConfigurationError, match="org_id"):
        org_token("")


def test_stream_spec_is_derived_from_the_event_specs() -> None:
    """Subjects per registered event; max age is the longest event retention; bad fields named."""
    from pydantic import BaseModel

    from contractspec.core import SpecRegistry, define_event

    class P(BaseModel):
        x: int

    registry = SpecRegistry(
        define_event("a.b.one", payload=P, retention=timedelta(days=7)),
        define_event("a.b.two", payload=P, retention=timedelta(days=30)),
    )
    spec = JetStreamSpec.from_registry(registry, name="A", prefix="svc", replicas=3)
    assert spec.subjects == ["svc.*.a.b.one", "svc.*.a.b.two"]
    config = spec.config()
    assert config.max_age == timedelta(days=30).total_seconds()
    assert config.num_replicas == 3
    assert JetStreamSpec.from_registry(build_registry(), name="B").max_age is None
    with pytest.raises(ConfigurationError, match="replicas"):
        JetStreamSpec("A", replicas=7)
    with pytest.raises(ConfigurationError, match="retention"):
        JetStreamSpec("A", retention="forever")
    with pytest.raises(ConfigurationError, match="name"):
        JetStreamSpec("a.b")


async def test_ensure_creates_then_updates_the_stream_idempotently(js: Any) -> None:
    """`ensure` twice is a no-op; a new max age or duplicate window is applied in place."""
    spec = _stream()
    first = await spec.ensure(js)
    again = await spec.ensure(js)
    assert first.config.subjects == again.config.subjects == spec.subjects
    longer = JetStreamSpec(
        spec.name,
        spec.prefix,
        spec.events,
        max_age=timedelta(hours=1),
        duplicate_window=timedelta(minutes=5),
    )
    info = await longer.ensure(js)
    assert info.config.max_age == 3600
    assert info.config.duplicate_window == 300
    with pytest.raises(ConfigurationError, match="JetStream refused"):
        await JetStreamSpec(spec.name, spec.prefix, spec.events, replicas=3).ensure(js)


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("relay_class", [OutboxRelay, JetStreamRelay])
async def test_committed_events_flow_through_the_relay_to_a_durable_consumer_in_key_order(
    sql_engine: AsyncEngine, js: Any, relay_class: type[OutboxRelay]
) -> None:
    """Commit 30 events on 3 keys → relay → JetStream → consumer: each once, per-key order kept,
    headers carry name/version/content type, rows marked delivered after the publish ack."""
    outbox = await _outbox(sql_engine)
    stream = _stream()
    await stream.ensure(js)
    events = [envelope(i, key=f"d{i % 3}", deal_id=f"d{i % 3}", org_id="org-1") for i in range(30)]
    await _commit(sql_engine, outbox, events)
    publisher = JetStreamPublisher(js, stream)
    relay = relay_class(outbox, publisher, batch_size=7)
    assert await relay.drain() == 30
    assert {m.status for m in await outbox.messages()} == {"delivered"}
    info = await js.stream_info(stream.name)
    assert info.state.messages == 30
    raw = await js.get_msg(stream.name, 1)
    assert raw.subject == f"{stream.prefix}.org-1.crm.deal.created"
    assert raw.headers["Contractspec-Event"] == "crm.deal.created"
    assert raw.headers["Contractspec-Event-Version"] == "1"
    assert raw.headers["Content-Type"] == "application/json"
    assert raw.headers["Nats-Msg-Id"] == "ev-0000"
    assert json.loads(raw.data)["payload"]["deal_id"] == "d0"

    from contractspec.bus.sql import SqlDeadLetterStore

    got: list[EventEnvelope] = []

    async def handler(event: EventEnvelope) -> None:
        got.append(event)

    sub = JetStreamSubscriber(
        js,
        stream,
        durable="e2e",
        handler=handler,
        org_id="org-1",
        registry=build_registry(),
        dead_letters=SqlDeadLetterStore(sql_engine),
    )
    await _consume_until(sub, lambda: len(got) >= 30)
    assert sorted(e.id for e in got) == sorted(e.id for e in events)
    per_key: dict[str | None, list[str]] = defaultdict(list)
    for e in got:
        per_key[e.key].append(e.id)
    assert all(ids == sorted(ids) for ids in per_key.values())
    assert type(got[0].payload).__name__ == "DealCreated"  # validated into the spec's model
    assert await sub.run_once(wait=0.3) == 0  # all acked: nothing redelivered
    await sub.stop()


@pytest.mark.parametrize("relay_class", [OutboxRelay, JetStreamRelay])
async def test_run_sends_a_batch_s_marks_with_the_next_claim_only_for_jetstream(
    sql_engine: AsyncEngine, js: Any, relay_class: type[OutboxRelay]
) -> None:
    """In `run()`, a `JetStreamRelay` marks each batch with its next claim (`mark_and_claim`)
    and what is left when it stops; every event is published once and every row ends
    delivered. The plain `OutboxRelay` (in-process subscribers, no broker de-duplication) marks
    each batch on its own."""
    from contractspec.bus.sql import SqlOutboxStore, create_bus_tables

    calls: list[tuple[str, int]] = []

    class Counting(SqlOutboxStore):
        inside = False  # SQLite's mark_and_claim calls mark_delivered itself

        async def mark_delivered(self, positions: Any, at: Any, **kw: Any) -> int:
            if not self.inside:
                calls.append(("mark", len(positions)))
            return await super().mark_delivered(positions, at, **kw)

        async def mark_and_claim(self, positions: Any, *args: Any) -> Any:
            calls.append(("mark_and_claim", len(positions)))
            self.inside = True
            try:
                return await super().mark_and_claim(positions, *args)
            finally:
                self.inside = False

    await create_bus_tables(sql_engine)
    outbox = Counting(sql_engine)
    stream = _stream()
    await stream.ensure(js)
    relay = relay_class(
        outbox, JetStreamPublisher(js, stream), batch_size=5, poll_interval=0.05, linger=0
    )
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop=stop))
    events = [envelope(i, key=f"d{i % 2}", deal_id=f"d{i % 2}", org_id="org-1") for i in range(24)]
    for burst in range(3):  # batches of 5, 3, then an idle claim: marks ride on claims
        await _commit(sql_engine, outbox, events[burst * 8 : burst * 8 + 8])
        deadline = time.monotonic() + 20
        while relay.stats.delivered < burst * 8 + 8 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    stop.set()
    await task
    assert relay.stats.delivered == 24
    assert {m.status for m in await outbox.messages(limit=100)} == {"delivered"}
    info = await js.stream_info(stream.name)
    assert info.state.messages == 24
    marked_with_claims = sum(n for kind, n in calls if kind == "mark_and_claim")
    marked_alone = [n for kind, n in calls if kind == "mark"]
    if relay_class is JetStreamRelay:
        assert marked_with_claims + sum(marked_alone) == 24
        assert marked_with_claims >= 16  # all but what the last batches left on stop
        assert len(marked_alone) <= 1  # the flush on stop
    else:
        assert marked_with_claims == 0
        assert sum(marked_alone) == 24


async def test_republishing_after_a_crash_is_dropped_by_the_broker(js: Any) -> None:
    """The same event published twice (relay died before marking) is stored once."""
    stream = _stream()
    await stream.ensure(js)
    publisher = JetStreamPublisher(js, stream)
    await publisher.deliver(envelope(1))
    await publisher.deliver(envelope(1))
    assert publisher.duplicates == 1
    assert (await js.stream_info(stream.name)).state.messages == 1


async def test_a_publish_that_fails_is_retried_and_the_row_stays_pending(
    sql_engine: AsyncEngine, js: Any
) -> None:
    """No stream for the subject: the publish raises, the row is not marked delivered."""
    outbox = await _outbox(sql_engine)
    await _commit(sql_engine, outbox, [envelope(1)])
    missing = JetStreamSpec("NoSuchStream", "nowhere.ev", ("crm.deal.created",))
    relay = OutboxRelay(outbox, JetStreamPublisher(js, missing, timeout=2), batch_size=5)
    assert await relay.run_once() == 0
    (row,) = await outbox.messages()
    assert row.status == "pending"
    assert row.attempts == 1
    assert relay.stats.failed_attempts == 1


class _FlakyPublisher(JetStreamPublisher):
    """Fails the first publish of one event (a broker hiccup)."""

    def __init__(self, *args: Any, fail: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail

    async def deliver(self, event: EventEnvelope, **kwargs: Any) -> Any:
        if event.id == self.fail:
            self.fail = ""
            raise nats.errors.TimeoutError
        return await super().deliver(event, **kwargs)


async def test_the_wave_relay_keeps_key_order_when_a_publish_fails(
    sql_engine: AsyncEngine, js: Any
) -> None:
    """15 events on 3 keys, one batch; the 2nd event of key d1 fails once: the rest of d1 waits
    behind it, d0 and d2 go on, and every key's events are stored in commit order, once."""
    outbox = await _outbox(sql_engine)
    stream = _stream()
    await stream.ensure(js)
    events = [envelope(i, key=f"d{i % 3}", deal_id=f"d{i % 3}") for i in range(15)]
    await _commit(sql_engine, outbox, events)
    publisher = _FlakyPublisher(js, stream, fail="ev-0004")
    relay = JetStreamRelay(
        outbox,
        publisher,
        batch_size=15,
        lease=timedelta(seconds=0.5),
        retry=RetryPolicy(max_attempts=5, base_delay=0.0, max_delay=0.0),
    )
    assert await relay.run_once() == 11  # all of d0 and d2, d1 up to the failure
    assert relay.stats.failed_attempts == 1
    stored = [(await js.get_msg(stream.name, q)).headers["Nats-Msg-Id"] for q in range(1, 12)]
    assert "ev-0004" not in stored
    assert "ev-0007" not in stored  # behind the failed row of its key
    deadline = time.monotonic() + 30
    while await outbox.messages(status="pending", limit=1):  # the blocked rows' lease ends
        assert time.monotonic() < deadline, "the rest of key d1 was never published"
        if await relay.run_once() == 0:
            await asyncio.sleep(0.05)
    assert relay.stats.delivered == 15
    stored = [(await js.get_msg(stream.name, q)).headers["Nats-Msg-Id"] for q in range(1, 16)]
    assert sorted(stored) == sorted(e.id for e in events)
    for k in range(3):
        ids = [i for i in stored if int(i[-4:]) % 3 == k]
        assert ids == sorted(ids)
    assert {m.status for m in await outbox.messages()} == {"delivered"}
    with pytest.raises(ConfigurationError, match="JetStreamPublisher"):
        JetStreamRelay(outbox, EventBus())  # type: ignore[arg-type]


async def test_a_subscriber_bound_to_org_a_never_receives_org_b(
    sql_engine: AsyncEngine, js: Any
) -> None:
    """Events of org B, of an org named 'org-a.x' and of '*' never reach org A's consumer."""
    from contractspec.bus.sql import SqlDeadLetterStore

    stream = _stream()
    await stream.ensure(js)
    publisher = JetStreamPublisher(js, stream)
    orgs = ["org-a", "org-b", "org-a.x", "*", ">", None]
    n = 0
    for org in orgs:
        for _ in range(3):
            await publisher.deliver(envelope(n, org_id=org))
            n += 1
    seen: dict[str, list[str | None]] = {"a": [], "all": []}

    async def only_a(event: EventEnvelope) -> None:
        seen["a"].append(event.org_id)

    async def every(event: EventEnvelope) -> None:
        seen["all"].append(event.org_id)

    dead = SqlDeadLetterStore(sql_engine)
    from contractspec.bus.sql import create_bus_tables

    await create_bus_tables(sql_engine)
    sub_a = JetStreamSubscriber(
        js, stream, durable="a", handler=only_a, org_id="org-a", dead_letters=dead
    )
    sub_all = JetStreamSubscriber(
        js, stream, durable="all", handler=every, all_orgs=True, dead_letters=dead
    )
    await _consume_until(sub_all, lambda: len(seen["all"]) >= 18)
    await _consume_until(sub_a, lambda: len(seen["a"]) >= 3)
    assert await sub_a.run_once(wait=0.5) == 0
    assert seen["a"] == ["org-a"] * 3
    assert sorted(map(str, seen["all"])) == sorted(map(str, [o for o in orgs for _ in range(3)]))
    assert sub_a.stats.dead_lettered == 0
    with pytest.raises(ConfigurationError, match="all_orgs"):
        JetStreamSubscriber(js, stream, durable="x", handler=only_a, dead_letters=dead)


async def test_a_pull_takes_up_to_batch_messages_in_stream_order(js: Any) -> None:
    """run_once waits for the first message, then takes the rest of the batch (never more than
    `batch`), in stream order; every message is handled and acked exactly once."""
    from contractspec.bus import MemoryDeadLetterStore

    stream = _stream()
    await stream.ensure(js)
    publisher = JetStreamPublisher(js, stream)
    sent = [envelope(i, key="same") for i in range(7)]
    for event in sent:
        await publisher.deliver(event)
    seen: list[str] = []

    async def handler(event: EventEnvelope) -> None:
        seen.append(event.id)

    sub = JetStreamSubscriber(
        js,
        stream,
        durable="b",
        handler=handler,
        all_orgs=True,
        dead_letters=MemoryDeadLetterStore(),
        batch=5,
        linger=0.5,
    )
    counts = [await sub.run_once(wait=5.0) for _ in range(2)]
    assert counts == [5, 2]
    assert seen == [e.id for e in sent]
    assert await sub.run_once(wait=0.3) == 0  # all acked
    for bad in (0, -1.0, True, "1"):
        with pytest.raises(ConfigurationError, match="linger"):
            JetStreamSubscriber(
                js,
                stream,
                durable="b",
                handler=handler,
                all_orgs=True,
                dead_letters=MemoryDeadLetterStore(),
                linger=bad,  # type: ignore[arg-type]
            )


async def test_failures_are_retried_with_backoff_then_dead_lettered_and_replayable(
    sql_engine: AsyncEngine, js: Any
) -> None:
    """A handler failing 3 of 3 deliveries: one durable dead letter (attempts 3), message
    terminated; replay with the bug fixed runs the handler and marks it replayed. A payload that
    does not match its spec is dead-lettered at once, without running the handler."""
    from contractspec.bus.sql import SqlDeadLetterStore, create_bus_tables

    await create_bus_tables(sql_engine)
    stream = _stream()
    await stream.ensure(js)
    await JetStreamPublisher(js, stream).deliver(envelope(1, org_id="o"))
    bad = envelope(2, org_id="o").to_dict()
    bad["payload"] = {"deal_id": "d2"}  # title and amount missing
    await js.publish(
        subject_for(stream.prefix, "o", "crm.deal.created"),
        json.dumps(bad, default=str).encode(),
        headers={
            "Nats-Msg-Id": "ev-0002",
            "Contractspec-Event": "crm.deal.created",
            "Contractspec-Event-Version": "1",
            "Content-Type": "application/json",
        },
    )
    calls: list[str] = []
    broken = True

    async def handler(event: EventEnvelope) -> None:
        calls.append(event.id)
        if broken:
            raise RuntimeError("downstream is down")

    dead = SqlDeadLetterStore(sql_engine)
    sub = JetStreamSubscriber(
        js,
        stream,
        durable="dl",
        handler=handler,
        org_id="o",
        registry=build_registry(),
        dead_letters=dead,
        max_deliver=3,
        retry=RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.1, jitter="none"),
    )
    await _consume_until(sub, lambda: sub.stats.dead_lettered >= 2, wait=1.0)
    assert calls == ["ev-0001"] * 3
    letters = {d.event_id: d for d in (await dead.list(subscriber="dl")).items}
    assert set(letters) == {"ev-0001", "ev-0002"}
    assert letters["ev-0001"].attempts == 3
    assert letters["ev-0001"].error == "RuntimeError: downstream is down"
    assert "SpecValidationError" in letters["ev-0002"].error
    assert await sub.run_once(wait=0.5) == 0  # terminated: never redelivered
    broken = False
    reports = await sub.replay_dead_letters(ids=[letters["ev-0001"].id])
    assert [r.ok for r in reports] == [True]
    assert calls[-1] == "ev-0001"
    replayed = await dead.get(letters["ev-0001"].id)
    assert replayed is not None
    assert replayed.replayed_at is not None


async def test_messages_that_contradict_their_spec_are_dead_lettered_unhandled(
    sql_engine: AsyncEngine, js: Any
) -> None:
    """A version header that disagrees with the body, an event the registry does not know and a
    body that is not JSON: each becomes a dead letter naming the problem; the handler never runs."""
    from contractspec.bus.sql import SqlDeadLetterStore, create_bus_tables

    await create_bus_tables(sql_engine)
    n = next(_streams)
    stream = JetStreamSpec(f"V{n}", f"v{n}.ev")  # every subject under the prefix
    await stream.ensure(js)
    good = envelope(1, org_id="o").to_dict()
    unknown = {**envelope(2, org_id="o").to_dict(), "name": "crm.deal.vanished"}
    headers = {"Contractspec-Event": "crm.deal.created", "Content-Type": "application/json"}
    await js.publish(
        f"v{n}.ev.o.crm.deal.created",
        json.dumps(good, default=str).encode(),
        headers={**headers, "Nats-Msg-Id": "m1", "Contractspec-Event-Version": "2"},
    )
    await js.publish(
        f"v{n}.ev.o.crm.deal.vanished",
        json.dumps(unknown, default=str).encode(),
        headers={
            **headers,
            "Nats-Msg-Id": "m2",
            "Contractspec-Event": "crm.deal.vanished",
            "Contractspec-Event-Version": "1",
        },
    )
    await js.publish(f"v{n}.ev.o.crm.deal.created", b"not json", headers={"Nats-Msg-Id": "m3"})
    calls: list[str] = []

    async def handler(event: EventEnvelope) -> None:
        calls.append(event.id)

    dead = SqlDeadLetterStore(sql_engine)
    sub = JetStreamSubscriber(
        js,
        stream,
        durable="strict",
        handler=handler,
        org_id="o",
        registry=build_registry(),
        dead_letters=dead,
    )
    await _consume_until(sub, lambda: sub.stats.dead_lettered >= 3, wait=1.0)
    assert calls == []
    errors = sorted(d.error for d in (await dead.list(subscriber="strict")).items)
    assert len(errors) == 3
    assert any("headers do not match" in e and "Contractspec-Event-Version" in e for e in errors)
    assert any("crm.deal.vanished@1 is not in this consumer's registry" in e for e in errors)
    assert any("not JSON" in e for e in errors)


async def test_processes_sharing_a_durable_consumer_split_the_work(js: Any, tmp_path: Path) -> None:
    """Two subscribers on one durable consumer (a work queue): each event handled by exactly one."""
    from contractspec.bus import MemoryDeadLetterStore

    stream = _stream()
    await stream.ensure(js)
    publisher = JetStreamPublisher(js, stream)
    for i in range(40):
        await publisher.deliver(envelope(i))
    handled: dict[str, list[str]] = {"x": [], "y": []}

    def make(who: str) -> Any:
        async def handle(event: EventEnvelope) -> None:
            handled[who].append(event.id)
            await asyncio.sleep(0.01)

        return handle

    subs = [
        JetStreamSubscriber(
            js,
            stream,
            durable="shared",
            handler=make(w),
            all_orgs=True,
            dead_letters=MemoryDeadLetterStore(),
            batch=5,
        )
        for w in ("x", "y")
    ]

    def total() -> int:
        return len(handled["x"]) + len(handled["y"])

    await asyncio.gather(*(_consume_until(s, lambda: total() >= 40) for s in subs))
    ids = handled["x"] + handled["y"]
    assert sorted(ids) == [f"ev-{i:04d}" for i in range(40)]  # each exactly once
    assert handled["x"]  # both took part
    assert handled["y"]


# -- crashes (worker processes, SIGKILL) ----------------------------------------------------------


def _url_and_schema(engine: AsyncEngine) -> tuple[str, str]:
    return engine.url.render_as_string(hide_password=False), ""


async def _schema(engine: AsyncEngine) -> str:
    if engine.dialect.name != "postgresql":
        return ""
    async with engine.connect() as conn:
        return str((await conn.execute(text("SELECT current_schema()"))).scalar_one())


def _spawn(
    mode: str,
    engine: AsyncEngine,
    schema: str,
    server: NatsServer,
    stream: str,
    log: Path,
    hang_at: int,
) -> subprocess.Popen[bytes]:
    url = engine.url.render_as_string(hide_password=False)
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "nats_worker.py"),
            mode,
            url,
            schema,
            server.url,
            stream,
            str(log),
            str(hang_at),
        ],
        env=subprocess_env(HERE),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _wait_for(
    log: Path, word: str, proc: subprocess.Popen[bytes], seconds: float = 60
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if log.exists() and word in log.read_text():  # noqa: ASYNC240 - a small local file
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early: {proc.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    raise AssertionError(f"worker never logged {word!r}")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.stderr is not None
    proc.stderr.close()


async def _kill_relay_when_it_hangs(
    mode: str, engine: AsyncEngine, server: NatsServer, stream: JetStreamSpec, log: Path, at: int
) -> None:
    """Run a `nats_worker.py` relay (`mode`) until it logs `hanging` at event `at`; SIGKILL it."""
    proc = _spawn(
        mode, engine, await _schema(engine), server, f"{stream.name}:{stream.prefix}", log, at
    )
    try:
        await _wait_for(log, "hanging", proc)
    finally:
        _kill(proc)


async def _relay_again_and_apply_once(
    engine: AsyncEngine, js: Any, outbox: Any, stream: JetStreamSpec, events: list[EventEnvelope]
) -> JetStreamPublisher:
    """A second relay publishes what the dead one left pending (once its 1 s lease ends); an
    idempotent consumer then handles the stream, and each event's effect exists once. Returns
    the second relay's publisher (its `duplicates`: re-publications the broker dropped)."""
    from contractspec.bus.sql import SqlDeadLetterStore

    publisher = JetStreamPublisher(js, stream)
    relay = JetStreamRelay(outbox, publisher, batch_size=10, lease=timedelta(seconds=1))
    deadline = time.monotonic() + 60
    while await outbox.messages(status="pending", limit=1):
        assert time.monotonic() < deadline, "the second relay did not finish"
        if await relay.drain() == 0:
            await asyncio.sleep(0.1)  # the dead relay's lease (1 s) has to end first
    sub = JetStreamSubscriber(
        js,
        stream,
        durable="after-crash",
        handler=_idempotent(engine),
        all_orgs=True,
        registry=build_registry(),
        dead_letters=SqlDeadLetterStore(engine),
    )
    await _consume_until(sub, lambda: sub.stats.handled >= len(events))
    assert sorted(await _effect_ids(engine)) == sorted(e.id for e in events)
    return publisher


@pytest.mark.slow
async def test_relay_killed_mid_batch_loses_nothing_and_the_broker_drops_the_repeats(
    sql_engine: AsyncEngine, js: Any, nats_server: NatsServer, tmp_path: Path
) -> None:
    """SIGKILL a relay process after 15 acked publishes (before marking), relay again: all 30
    events are in the stream exactly once and an idempotent consumer applies each once."""
    outbox = await _outbox(sql_engine)
    await _effects_table(sql_engine)
    stream = _stream()
    await stream.ensure(js)
    events = [envelope(i, key=f"d{i % 5}", deal_id=f"d{i % 5}") for i in range(30)]
    await _commit(sql_engine, outbox, events)
    log = tmp_path / "relay.log"
    await _kill_relay_when_it_hangs("relay", sql_engine, nats_server, stream, log, 15)
    published_before = log.read_text().count("published ")
    assert published_before == 15
    pending = await outbox.messages(status="pending")
    assert len(pending) >= 5  # at least the unmarked rows of the killed batch are still pending
    publisher = await _relay_again_and_apply_once(sql_engine, js, outbox, stream, events)
    assert publisher.duplicates >= 1  # the killed batch's acked-but-unmarked rows came again
    assert (await js.stream_info(stream.name)).state.messages == 30  # ... and were dropped


@pytest.mark.slow
async def test_relay_killed_with_its_marks_kept_back_republishes_and_the_broker_drops_them(
    sql_engine: AsyncEngine, js: Any, nats_server: NatsServer, tmp_path: Path
) -> None:
    """SIGKILL a `JetStreamRelay` in `run()` after it published a whole batch whose marks it
    kept back for its next claim: the rows are still pending, a second relay publishes them
    again, the broker drops every copy, and an idempotent consumer applies each event once."""
    outbox = await _outbox(sql_engine)
    await _effects_table(sql_engine)
    stream = _stream()
    await stream.ensure(js)
    events = [envelope(i, key=f"d{i % 3}", deal_id=f"d{i % 3}") for i in range(8)]
    await _commit(sql_engine, outbox, events)
    log = tmp_path / "relay.log"
    await _kill_relay_when_it_hangs("relay-run", sql_engine, nats_server, stream, log, 8)
    assert log.read_text().count("published ") == 8
    assert (await js.stream_info(stream.name)).state.messages == 8
    assert len(await outbox.messages(status="pending")) == 8  # marks never sent
    publisher = await _relay_again_and_apply_once(sql_engine, js, outbox, stream, events)
    assert publisher.duplicates == 8  # every row came again ...
    assert (await js.stream_info(stream.name)).state.messages == 8  # ... and was dropped


@pytest.mark.slow
async def test_consumer_killed_mid_handler_is_redelivered_and_the_effect_happens_once(
    sql_engine: AsyncEngine, js: Any, nats_server: NatsServer, tmp_path: Path
) -> None:
    """SIGKILL a consumer process after its 8th event's transaction committed and before the ack:
    another process gets the event again (after ack_wait), the idempotent consumer skips it,
    every one of the 20 effects exists exactly once."""
    from contractspec.bus.sql import SqlDeadLetterStore, create_bus_tables

    await create_bus_tables(sql_engine)
    await _effects_table(sql_engine)
    stream = _stream()
    await stream.ensure(js)
    publisher = JetStreamPublisher(js, stream)
    events = [envelope(i) for i in range(20)]
    for e in events:
        await publisher.deliver(e)
    log = tmp_path / "consumer.log"
    proc = _spawn(
        "consume",
        sql_engine,
        await _schema(sql_engine),
        nats_server,
        f"{stream.name}:{stream.prefix}",
        log,
        8,
    )
    try:
        await _wait_for(log, "hanging", proc)
    finally:
        _kill(proc)
    hung = log.read_text().split("hanging ")[1].split()[0]
    consumer = _idempotent(sql_engine)
    redelivered: list[str] = []

    async def handler(event: EventEnvelope) -> None:
        redelivered.append(event.id)
        await consumer(event)

    sub = JetStreamSubscriber(
        js,
        stream,
        durable="effects",
        handler=handler,
        all_orgs=True,
        registry=build_registry(),
        dead_letters=SqlDeadLetterStore(sql_engine),
        ack_wait=3.0,
        handler_timeout=2.5,
        batch=5,
    )
    await _consume_until(sub, lambda: hung in redelivered and len(set(redelivered)) >= 13)
    effects = await _effect_ids(sql_engine)
    assert sorted(effects) == sorted(e.id for e in events)  # all 20, none twice (primary key)
    assert consumer.skipped >= 1  # the hung event came again and was skipped


async def test_the_command_line_runs_a_consumer_until_sigterm(
    js: Any, nats_server: NatsServer, tmp_path: Path
) -> None:
    """`python -m contractspec.bus.nats consume module:factory` handles the stream's events and
    exits 0 on SIGTERM; a factory returning the wrong type exits 2 naming it."""
    from contractspec.bus.nats.__main__ import main

    stream = _stream()
    await stream.ensure(js)
    publisher = JetStreamPublisher(js, stream)
    for i in range(3):
        await publisher.deliver(envelope(i))
    log = tmp_path / "cli.log"
    env = {
        **subprocess_env(HERE),
        "NATS_URL": nats_server.url,
        "STREAM": f"{stream.name}:{stream.prefix}",
        "LOG": str(log),
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, like the crash tests
        [sys.executable, "-m", "contractspec.bus.nats", "consume", "nats_cli_app:make_subscriber"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await _wait_for(log, "handled ev-0002", proc)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        _kill(proc)
    assert log.read_text().split() == [
        "handled",
        "ev-0000",
        "handled",
        "ev-0001",
        "handled",
        "ev-0002",
    ]
    assert await asyncio.to_thread(main, ["relay", "nats_cli_app:not_a_relay"]) == 2
    assert await asyncio.to_thread(main, ["relay", "no_such_module_xyz:make"]) == 2
