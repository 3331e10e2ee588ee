"""Outbox relay: ordered at-least-once delivery, leases, failures, concurrency, crash recovery."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bus_support import T0, DealMoved, Stores, build_registry, envelope
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.bus import (
    EventBus,
    IdempotentConsumer,
    OutboxRelay,
    RetryPolicy,
)
from contractspec.bus.testing import capture
from contractspec.core import (
    Actor,
    CallContext,
    EventEnvelope,
    Executor,
    MemoryBackend,
    RolePermissions,
    Transaction,
)
from contractspec.core.testing import FakeClock, SequentialIds

SALES = CallContext(actor=Actor.user("u-1", roles="sales"), org_id="org-1")
POLICY = RolePermissions({"sales": ["deal.*"]})
HERE = Path(__file__).parent


async def executor_for(stores: Stores) -> Executor:
    registry = build_registry()
    if stores.kind == "memory":
        backend: Any = MemoryBackend()
    else:
        from contractspec.core.sql import SqlBackend

        backend = SqlBackend(stores.engine, registry)
        await backend.create_all()
    return Executor(
        registry,
        backend=backend,
        events=stores.outbox,
        policy=POLICY,
        clock=FakeClock(tick=timedelta(milliseconds=1)),
    )


async def test_relay_delivers_committed_events_in_order_and_marks_them(stores: Stores) -> None:
    """Events of committed calls reach the subscriber once, typed, in order; rows are delivered."""
    ex = await executor_for(stores)
    for i in range(3):
        await ex.execute("crm.deal.create", {"id": f"d{i}", "title": "T", "amount": "1"}, SALES)
    await ex.execute("crm.deal.move", {"deal_id": "d1", "to_stage": "won"}, SALES)
    bus = EventBus()
    seen = capture(bus)
    relay = OutboxRelay(stores.outbox, bus, registry=build_registry(), batch_size=2)
    assert await relay.drain() == 4
    assert [(e.name, e.payload.deal_id) for e in seen] == [  # type: ignore[attr-defined]
        ("crm.deal.created", "d0"),
        ("crm.deal.created", "d1"),
        ("crm.deal.created", "d2"),
        ("crm.deal.moved", "d1"),
    ]
    assert isinstance(seen[3].payload, DealMoved)
    assert (seen[3].actor_id, seen[3].org_id, seen[3].key) == ("u-1", "org-1", "d1")
    assert seen[3].operation == "crm.deal.move@1"
    assert {m.status for m in await stores.outbox.messages()} == {"delivered"}
    assert (relay.stats.batches, relay.stats.delivered) == (2, 4)
    assert await relay.run_once() == 0


async def test_leased_rows_come_back_when_a_relay_dies_before_marking(
    stores: Stores, clock: FakeClock
) -> None:
    """A claimed but unmarked batch is redelivered after the lease; an idempotent consumer
    applies each effect once."""
    await _publish(stores, *(envelope(i, key=f"d{i}") for i in range(1, 4)))
    applied: list[str] = []

    async def effect(event: EventEnvelope, tx: Transaction) -> None:
        applied.append(event.id)
        tx.add_undo(lambda: applied.remove(event.id))

    consumer = IdempotentConsumer(
        "counter", effect, unit_of_work=stores.unit_of_work, processed=stores.processed
    )
    bus = EventBus()
    bus.subscribe("crm.*", consumer, name="counter")
    dead = await stores.outbox.claim(10, clock.now(), timedelta(seconds=30))
    for message in dead[:2]:  # the dying relay delivered two events, then crashed
        await consumer(envelope(int(message.id[-4:]), key=message.key))
    relay = OutboxRelay(stores.outbox, bus, clock=clock, lease=timedelta(seconds=30))
    assert await relay.run_once() == 0  # still leased
    clock.advance(timedelta(seconds=30))
    assert await relay.run_once() == 3  # at-least-once: all three delivered again
    assert applied == ["ev-0001", "ev-0002", "ev-0003"]  # effects once each
    assert consumer.skipped == 2
    assert [m.attempts for m in await stores.outbox.messages()] == [2, 2, 2]


async def _publish(stores: Stores, *events: EventEnvelope) -> None:
    tx = await stores.unit_of_work.begin()
    await stores.outbox.publish(list(events), tx)
    await tx.commit()


async def test_a_payload_that_no_longer_validates_is_marked_failed(
    stores: Stores, clock: FakeClock
) -> None:
    """A poison row (payload not matching its spec) is given up at once; others go on."""
    bad = EventEnvelope(
        id="ev-bad",
        name="crm.deal.created",
        version=1,
        occurred_at=T0,
        payload=DealMoved(deal_id="d9", to_stage="won"),
    )
    await _publish(stores, bad, envelope(2))
    bus = EventBus()
    seen = capture(bus)
    relay = OutboxRelay(stores.outbox, bus, registry=build_registry(), clock=clock)
    assert await relay.run_once() == 1
    assert [e.id for e in seen] == ["ev-0002"]
    (failed,) = await stores.outbox.messages(status="failed")
    assert failed.id == "ev-bad"
    assert failed.last_error is not None
    assert failed.last_error.startswith("SpecValidationError: stored payload of crm.deal.created@1")
    assert relay.stats.given_up == 1


class _BrokenDeadLetters:
    """A dead-letter store whose database is down (infrastructure failure)."""

    async def add(self, letter: Any) -> None:
        raise ConnectionError("dead-letter database unreachable")


async def test_delivery_that_raises_backs_off_then_gives_up(
    stores: Stores, clock: FakeClock
) -> None:
    """If delivery itself raises, the row backs off (keeping its key's order) and finally fails."""
    await _publish(stores, envelope(1, key="A"), envelope(2, key="A"))
    bus = EventBus(dead_letters=_BrokenDeadLetters(), retry=RetryPolicy(max_attempts=1))  # type: ignore[arg-type]
    bus.subscribe("crm.*", lambda e: 1 / 0, name="broken")
    relay = OutboxRelay(
        stores.outbox,
        bus,
        clock=clock,
        retry=RetryPolicy(max_attempts=2, base_delay=60.0, max_delay=600.0, jitter="none"),
    )
    assert await relay.run_once() == 0
    first = (await stores.outbox.messages())[0]
    assert (first.status, first.available_at) == ("pending", T0 + timedelta(seconds=60))
    assert first.last_error == "ConnectionError: dead-letter database unreachable"
    assert await relay.run_once() == 0  # backing off; ev-0002 waits behind it (same key)
    assert [m.attempts for m in await stores.outbox.messages()] == [1, 1]
    clock.advance(timedelta(seconds=60))
    assert await relay.run_once() == 0
    assert [m.status for m in await stores.outbox.messages()] == ["failed", "pending"]


async def test_concurrent_relays_deliver_each_row_once_in_key_order(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """Four relays on one outbox (PostgreSQL: SKIP LOCKED) deliver 300 events exactly once each,
    in order per key."""
    from contractspec.bus.sql import SqlOutboxStore, create_bus_tables
    from contractspec.core.sql import SqlUnitOfWork

    await create_bus_tables(sql_engine)
    outbox = SqlOutboxStore(sql_engine)
    for start in range(0, 300, 50):
        tx = await SqlUnitOfWork(sql_engine).begin()
        await outbox.publish([envelope(i, key=f"k{i % 12}") for i in range(start, start + 50)], tx)
        await tx.commit()
    delivered: list[tuple[int, str, int]] = []
    buses = []
    for relay_no in range(4):
        bus = EventBus()

        async def record(event: EventEnvelope, relay_no: int = relay_no) -> None:
            delivered.append((relay_no, event.key or "", int(event.id[-4:])))
            await asyncio.sleep(0)

        bus.subscribe("*", record, name="rec")
        buses.append(OutboxRelay(outbox, bus, batch_size=7, lease=timedelta(minutes=5)))

    async def work(relay: OutboxRelay) -> None:
        for _ in range(200):
            await relay.run_once()
            if not await outbox.messages(status="pending", limit=1):
                return

    await asyncio.gather(*(work(r) for r in buses))
    numbers = sorted(n for _, _, n in delivered)
    assert numbers == list(range(300))
    per_key: dict[str, list[int]] = defaultdict(list)
    for _, key, n in delivered:
        per_key[key].append(n)
    assert all(seq == sorted(seq) for seq in per_key.values())
    assert len({relay for relay, _, _ in delivered}) >= 2  # the work was shared


# -- crash recovery ---------------------------------------------------------------------------


def _spawn(url: str, schema: str, log: Path, hang_at: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(HERE / "bus_crash_relay.py"), url, schema, str(log), str(hang_at)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_for(log: Path, word: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and word in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"relay exited early: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        time.sleep(0.05)
    raise AssertionError(f"relay never logged {word!r}")


@pytest.mark.slow
async def test_relay_killed_between_commit_and_delivery_loses_nothing(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """SIGKILL a relay process mid-batch, start another: all 40 events delivered, effects once."""
    from contractspec.bus.sql import create_bus_tables
    from contractspec.core.sql import SqlBackend

    registry = build_registry()
    backend = SqlBackend(sql_engine, registry)
    await backend.create_all()
    await create_bus_tables(sql_engine)
    async with sql_engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE crm_effect (id VARCHAR(64) PRIMARY KEY, deal_id VARCHAR(64) NOT NULL, "
                "cs_version BIGINT NOT NULL DEFAULT 1)"
            )
        )
    ex = Executor(registry, backend=backend, policy=POLICY, ids=SequentialIds("ev"))
    for i in range(40):
        await ex.execute("crm.deal.create", {"id": f"d{i:02d}", "title": "T", "amount": "1"}, SALES)
    url = sql_engine.url.render_as_string(hide_password=False)
    schema = ""
    if sql_engine.dialect.name == "postgresql":
        async with sql_engine.connect() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
    log = tmp_path / "deliveries.log"

    first = _spawn(url, schema, log, hang_at=25)
    try:
        _wait_for(log, "hanging", first)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        if first.stderr:
            first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    before = log.read_text().split()
    assert before.count("delivered") == 24  # events 1..24 done, 21..30 leased and unmarked

    second = _spawn(url, schema, log, hang_at=0)
    try:
        _wait_for(log, "done", second)
        assert second.wait(timeout=60) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
        if second.stderr:
            second.stderr.close()

    async with sql_engine.connect() as conn:
        effects = (
            (await conn.execute(text("SELECT id FROM crm_effect ORDER BY id"))).scalars().all()
        )
        statuses = (
            await conn.execute(text("SELECT status, count(*) FROM cs_outbox GROUP BY status"))
        ).all()
    assert effects == [f"ev-{i:06d}" for i in range(1, 81, 2)]  # one effect per event, none lost
    assert [tuple(s) for s in statuses] == [("delivered", 40)]
    raw = [line.split()[1] for line in log.read_text().splitlines() if line.startswith("delivered")]
    assert sorted(set(raw)) == effects
    assert len(raw) == 40 + 4  # at-least-once: the 4 delivered-but-unmarked ones came twice


async def test_run_polls_until_stopped_and_delivers_events_published_meanwhile() -> None:
    """`run(stop=...)` keeps polling: events committed while it idles are delivered, then it stops."""
    from contractspec.bus import MemoryOutboxStore
    from contractspec.core import MemoryUnitOfWork

    outbox = MemoryOutboxStore()
    bus = EventBus()
    seen = capture(bus)
    relay = OutboxRelay(outbox, bus, poll_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop=stop))
    for i in range(3):
        tx = await MemoryUnitOfWork().begin()
        await outbox.publish([envelope(i, key="k")], tx)
        await tx.commit()
        await asyncio.sleep(0.02)
    for _ in range(200):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, timeout=5)
    assert [e.id for e in seen] == ["ev-0000", "ev-0001", "ev-0002"]
    assert task.done()
    assert task.exception() is None


@given(
    st.sampled_from(["batch_size", "lease", "poll_interval"]),
    st.one_of(st.integers(max_value=0), st.just("x"), st.none(), st.just(timedelta(seconds=-1))),
)
def test_relay_rejects_bad_settings_naming_the_field(name: str, value: object) -> None:
    """A non-positive batch size, lease or poll interval is a ConfigurationError for that field."""
    from contractspec.bus import MemoryOutboxStore
    from contractspec.core import ConfigurationError

    with pytest.raises(ConfigurationError) as info:
        OutboxRelay(MemoryOutboxStore(), EventBus(), **{name: value})  # type: ignore[arg-type]
    assert info.value.details == {"field": name}
