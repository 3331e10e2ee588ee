"""Relays as production runs them: several relays, slow and hanging subscribers, a database that
stops answering one relay, relays in two processes, writers that commit out of start order."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from bus_support import envelope
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.bus import EventBus, OutboxRelay, RetryPolicy
from contractspec.core import EventEnvelope

HERE = Path(__file__).parent
LEASE = timedelta(seconds=0.5)


async def _outbox(engine: AsyncEngine) -> Any:
    from contractspec.bus.sql import SqlOutboxStore, create_bus_tables

    await create_bus_tables(engine)
    return SqlOutboxStore(engine)


async def _publish(engine: AsyncEngine, outbox: Any, events: Sequence[EventEnvelope]) -> None:
    from contractspec.core.sql import SqlUnitOfWork

    tx = await SqlUnitOfWork(engine).begin()
    await outbox.publish(list(events), tx)
    await tx.commit()


class InFlight:
    """Records every delivery and any event being delivered by two relays at the same time."""

    def __init__(self) -> None:
        self.running: dict[str, str] = {}
        self.overlaps: list[tuple[str, str, str]] = []
        self.first: list[tuple[str | None, str | None, int]] = []  # (org, key, n) in order
        self.calls: list[tuple[str, str]] = []  # (relay, event id)

    def subscriber(self, relay: str, seconds: float) -> Any:
        async def handle(event: EventEnvelope) -> None:
            other = self.running.get(event.id)
            if other is not None:
                self.overlaps.append((event.id, other, relay))
            self.running[event.id] = relay
            if all(event.id != seen for _, seen in self.calls):
                self.first.append((event.org_id, event.key, int(event.id[-4:])))
            self.calls.append((relay, event.id))
            try:
                await asyncio.sleep(seconds)
            finally:
                if self.running.get(event.id) == relay:
                    del self.running[event.id]

        return handle


async def _work_until_delivered(relay: OutboxRelay, outbox: Any, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not await outbox.messages(status="pending", limit=1):
            return
        if await relay.run_once() == 0:
            await asyncio.sleep(0.02)
    raise AssertionError("the relays did not deliver everything in time")


def _in_key_order(first: list[tuple[str | None, str | None, int]]) -> bool:
    per_key: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
    for org, key, n in first:
        per_key[(org, key)].append(n)
    return all(seq == sorted(seq) for seq in per_key.values())


async def test_two_relays_with_slow_subscribers_never_deliver_an_event_twice_at_once(
    sql_engine: AsyncEngine,
) -> None:
    """250 ms subscribers, a 0.5 s lease, batches that take 1 s: heartbeats keep the leases, so
    no event is delivered by both relays at once and each key's events come in order."""
    outbox = await _outbox(sql_engine)
    await _publish(
        sql_engine, outbox, [envelope(i, key=f"k{i % 4}", org_id="org-1") for i in range(12)]
    )
    seen = InFlight()
    relays = []
    for name in ("a", "b"):
        bus = EventBus()
        bus.subscribe("crm.*", seen.subscriber(name, 0.25), name="slow")
        relays.append(OutboxRelay(outbox, bus, batch_size=4, lease=LEASE))
    deadline = time.monotonic() + 30
    await asyncio.gather(*(_work_until_delivered(r, outbox, deadline) for r in relays))
    assert seen.overlaps == []
    assert sorted(n for _, _, n in seen.first) == list(range(12))
    assert _in_key_order(seen.first)
    if not any(getattr(r.stats, "leases_lost", 0) for r in relays):  # a late renewal: loaded box
        assert len(seen.calls) == 12  # each event exactly once
    assert {m.status for m in await outbox.messages()} == {"delivered"}
    assert sum(r.stats.heartbeats for r in relays) > 0


class _Unreachable:
    """The outbox as a relay sees it while the database stops answering its lease renewals."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.engine = inner.engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def extend(self, *args: Any, **kwargs: Any) -> list[int]:
        raise ConnectionError("server closed the connection unexpectedly")


async def test_a_relay_that_cannot_renew_its_lease_stops_before_another_takes_over(
    sql_engine: AsyncEngine,
) -> None:
    """Relay A's renewals fail: it cancels its 3 s delivery before its lease can end, and relay
    B, which claims the row once the lease has ended, never overlaps with it."""
    outbox = await _outbox(sql_engine)
    await _publish(sql_engine, outbox, [envelope(1, key="d1")])
    seen = InFlight()
    intervals: dict[str, list[float]] = {}

    def timed(relay: str, seconds: float) -> Any:
        inner = seen.subscriber(relay, seconds)

        async def handle(event: EventEnvelope) -> None:
            intervals[relay] = [time.monotonic()]
            try:
                await inner(event)
            finally:
                intervals[relay].append(time.monotonic())

        return handle

    bus_a, bus_b = EventBus(), EventBus()
    bus_a.subscribe("crm.*", timed("a", 3.0), name="slow")
    bus_b.subscribe("crm.*", timed("b", 0.0), name="slow")
    relay_a = OutboxRelay(_Unreachable(outbox), bus_a, lease=LEASE)
    relay_b = OutboxRelay(outbox, bus_b, lease=LEASE)

    async def b_polls() -> None:
        for _ in range(300):
            if await relay_b.run_once():
                return
            await asyncio.sleep(0.02)

    a_result, _ = await asyncio.wait_for(asyncio.gather(relay_a.run_once(), b_polls()), 10)
    assert a_result == 0
    assert relay_a.stats.leases_lost == 1
    assert seen.overlaps == []
    assert intervals["a"][1] - intervals["a"][0] < LEASE.total_seconds()  # cancelled in time
    assert intervals["a"][1] <= intervals["b"][0]
    assert [relay for relay, _ in seen.calls] == ["a", "b"]
    assert [(m.status, m.attempts) for m in await outbox.messages()] == [("delivered", 2)]


async def test_a_subscriber_past_its_timeout_is_a_failed_attempt_never_run_by_two_relays(
    sql_engine: AsyncEngine,
) -> None:
    """A hanging subscriber is cancelled after its timeout, retried, then dead-lettered in the
    database; the other relay never runs it meanwhile."""
    outbox = await _outbox(sql_engine)
    await _publish(sql_engine, outbox, [envelope(1, key="d1")])
    seen = InFlight()
    relays = []
    for name in ("a", "b"):
        bus = EventBus(timeout=0.3, retry=RetryPolicy(max_attempts=2, base_delay=0.01))
        bus.subscribe("crm.*", seen.subscriber(name, 3600), name="hangs")
        relays.append(OutboxRelay(outbox, bus, lease=LEASE))
    deadline = time.monotonic() + 10
    await asyncio.wait_for(
        asyncio.gather(*(_work_until_delivered(r, outbox, deadline) for r in relays)), 15
    )
    assert seen.overlaps == []
    assert len(seen.calls) == 2  # two attempts, by one relay
    assert len({relay for relay, _ in seen.calls}) == 1
    bus = relays[0].bus
    (letter,) = (await bus.dead_letters.list()).items
    assert (letter.subscriber, letter.attempts) == ("hangs", 2)
    assert letter.error == "TimeoutError: subscriber 'hangs' did not finish within 0.3 s"
    assert [m.status for m in await outbox.messages()] == ["delivered"]


async def test_keys_are_per_tenant_a_slow_key_in_one_org_does_not_block_another(
    sql_engine: AsyncEngine,
) -> None:
    """`d1` of org-1 and `d1` of org-2 are two queues: while a relay is busy with org-1's `d1`,
    another delivers org-2's `d1` events."""
    outbox = await _outbox(sql_engine)
    await _publish(
        sql_engine,
        outbox,
        [envelope(1, key="d1", org_id="org-1"), envelope(2, key="d1", org_id="org-2")],
    )
    await _publish(sql_engine, outbox, [envelope(3, key="d1", org_id="org-2")])
    busy = await outbox.claim(1, None, timedelta(minutes=5))
    assert [m.id for m in busy] == ["ev-0001"]
    bus = EventBus()
    got: list[str] = []
    bus.subscribe("crm.*", lambda e: got.append(e.id), name="rec")
    assert await OutboxRelay(outbox, bus).drain() == 2
    assert got == ["ev-0002", "ev-0003"]


async def test_per_key_delivery_follows_commit_order_when_a_later_transaction_commits_first(
    sql_engine: AsyncEngine,
) -> None:
    """Transaction A writes its event of `d1` first (and so gets the lower position) but has
    not committed; B, started later, commits: B waits for A, and `d1` is delivered A then B."""
    from contractspec.core.sql import SqlUnitOfWork

    if sql_engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises write transactions: positions are commit order already")

    outbox = await _outbox(sql_engine)
    uow = SqlUnitOfWork(sql_engine)
    a = await uow.begin()
    await outbox.publish([envelope(1, key="d1")], a)
    await a.flush()  # A's row is in the table (position assigned), not yet committed

    async def b_commits() -> None:
        b = await uow.begin()
        await outbox.publish([envelope(2, key="d1"), envelope(3, key="d2")], b)
        await b.commit()

    b_task = asyncio.create_task(b_commits())
    await asyncio.sleep(0.3)
    bus = EventBus()
    got: list[str] = []
    bus.subscribe("crm.*", lambda e: got.append(e.id), name="rec")
    relay = OutboxRelay(outbox, bus)
    await relay.drain()
    b_waited = not b_task.done()
    await a.commit()
    await asyncio.wait_for(b_task, 10)
    await relay.drain()
    assert got.index("ev-0001") < got.index("ev-0002")
    assert b_waited
    positions = {m.id: m.position for m in await outbox.messages()}
    assert positions["ev-0001"] < positions["ev-0002"]


async def test_concurrent_writers_on_shared_keys_are_delivered_in_commit_order(
    sql_engine: AsyncEngine,
) -> None:
    """Eight writers commit 120 events on three keys of two orgs while a relay delivers: per key,
    events arrive in the order their transactions committed.

    The commit order is the database's, not the order in which the writers' `commit()` calls
    returned (the client may see them in another order). A reader takes snapshots all along: in
    every one, each key's visible rows are a prefix of its rows in position order, i.e. no row
    became visible before an earlier-positioned row of its key, so position order per key is the
    commit order; the relay must deliver each key in that order.
    """
    from contractspec.core.sql import SqlUnitOfWork, outbox_table

    outbox = await _outbox(sql_engine)
    uow = SqlUnitOfWork(sql_engine)
    delivered: dict[tuple[str | None, str | None], list[str]] = defaultdict(list)
    bus = EventBus()
    bus.subscribe("crm.*", lambda e: delivered[(e.org_id, e.key)].append(e.id), name="rec")
    relay = OutboxRelay(outbox, bus, batch_size=7)
    stop = asyncio.Event()
    written = asyncio.Event()
    t = outbox_table
    snapshots: list[list[tuple[int, str | None, str | None, str]]] = []

    async def rows() -> list[tuple[int, str | None, str | None, str]]:
        tx = await uow.begin(readonly=True)
        try:
            stmt = select(t.c.position, t.c.org_id, t.c.aggregate_key, t.c.id)
            result: Any = await tx.execute(stmt.order_by(t.c.position))
            return [(int(r[0]), r[1], r[2], str(r[3])) for r in result.all()]
        finally:
            await tx.rollback()

    async def watch() -> None:
        while not written.is_set():
            snapshots.append(await rows())
            await asyncio.sleep(0)

    async def writer(w: int) -> None:
        for i in range(15):
            n = w * 100 + i
            org, key = f"org-{n % 2}", f"d{n % 3}"
            tx = await uow.begin()
            await outbox.publish([envelope(n, key=key, org_id=org)], tx)
            await asyncio.sleep(0.001 * (n % 4))
            await tx.commit()

    watching = asyncio.create_task(watch())
    relaying = asyncio.create_task(relay.run(stop=stop))
    relay.poll_interval = 0.01
    await asyncio.gather(*(writer(w) for w in range(8)))
    written.set()
    await watching
    for _ in range(500):
        if sum(map(len, delivered.values())) == 120:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await relaying
    final: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
    committed: dict[tuple[str | None, str | None], list[str]] = defaultdict(list)
    for position, org, key, event_id in await rows():
        final[(org, key)].append(position)
        committed[(org, key)].append(event_id)
    assert sum(map(len, committed.values())) == 120
    seen_early = []
    for snapshot in snapshots:
        visible: dict[tuple[str | None, str | None], list[int]] = defaultdict(list)
        for position, org, key, _ in snapshot:
            visible[(org, key)].append(position)
        for k, positions in visible.items():
            if positions != final[k][: len(positions)]:
                seen_early.append((k, positions))
    assert len(snapshots) > 1
    assert seen_early == [], "a row became visible before an earlier-positioned row of its key"
    assert dict(delivered) == dict(committed)


# -- relays in two processes -------------------------------------------------------------------


def _spawn(url: str, schema: str, log: Path, mode: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, str(HERE / "bus_relay_process.py"), url, schema, str(log), mode],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _where(engine: AsyncEngine) -> tuple[str, str]:
    url = engine.url.render_as_string(hide_password=False)
    if engine.dialect.name != "postgresql":
        return url, ""
    async with engine.connect() as conn:
        return url, (await conn.execute(text("SELECT current_schema()"))).scalar_one()


def _finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    try:
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    assert code == 0, stderr[-3000:]


@pytest.mark.slow
async def test_relays_in_two_processes_never_overlap_and_keep_key_order(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """Two relay processes with 250 ms subscribers and 0.5 s leases: every event delivered, no
    event in two processes at once, each key in order."""
    outbox = await _outbox(sql_engine)
    await _publish(sql_engine, outbox, [envelope(i, key=f"k{i % 3}") for i in range(12)])
    url, schema = await _where(sql_engine)
    log = tmp_path / "deliveries.log"
    procs = [_spawn(url, schema, log, "slow") for _ in range(2)]
    for proc in procs:
        _finish(proc)
    spans: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    keys: dict[str, str] = {}
    for line in log.read_text().splitlines():
        pid, event_id, key, start, end = line.split()
        spans[event_id].append((float(start), float(end), int(pid)))
        keys[event_id] = key
    assert sorted(spans) == [f"ev-{i:04d}" for i in range(12)]
    for event_id, runs in spans.items():
        runs.sort()
        for (_, end, _), (start, _, _) in pairwise(runs):
            assert end <= start, f"{event_id} was delivered by two processes at once: {runs}"
    by_first_start = sorted(spans, key=lambda event_id: spans[event_id][0][0])
    assert _in_key_order([("org-1", keys[e], int(e[-4:])) for e in by_first_start])
    assert len({pid for runs in spans.values() for _, _, pid in runs}) == 2  # both worked
    assert {m.status for m in await outbox.messages()} == {"delivered"}


@pytest.mark.slow
async def test_dead_letters_survive_a_restart_and_are_replayed(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """A consumer is down while a relay process delivers five events with the default EventBus;
    the process exits. After the restart no event is lost: all five are dead letters in the
    database and a replay delivers them."""
    outbox = await _outbox(sql_engine)
    await _publish(sql_engine, outbox, [envelope(i, key="d1") for i in range(1, 6)])
    url, schema = await _where(sql_engine)
    _finish(_spawn(url, schema, tmp_path / "unused.log", "consumer-down"))
    assert [m.status for m in await outbox.messages()] == ["delivered"] * 5

    bus = EventBus()  # the restarted app: a fresh bus, again without dead_letters=
    got: list[str] = []
    bus.subscribe("crm.*", lambda e: got.append(e.id), name="projection")
    OutboxRelay(outbox, bus)
    assert await bus.dead_letters.count() == 5
    reports = await bus.replay_dead_letters(subscriber="projection")
    assert [r.ok for r in reports] == [True] * 5
    assert got == [f"ev-{i:04d}" for i in range(1, 6)]
    assert await bus.dead_letters.count() == 0
    assert await bus.replay_dead_letters(subscriber="projection") == []


async def test_a_consumer_down_for_a_moment_loses_nothing_with_the_default_event_bus(
    sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """A consumer that is down for 0.3 s while a relay delivers five events with a default
    `EventBus()`: every event either reached it or is a dead letter in the database, and a fresh
    bus on a new engine (the restarted app) replays them, so all five arrive."""
    from bus_relay_process import make_engine

    outbox = await _outbox(sql_engine)
    await _publish(sql_engine, outbox, [envelope(i, key="d1") for i in range(1, 6)])
    got: list[str] = []
    down_until = time.monotonic() + 0.3

    def projection(event: EventEnvelope) -> None:
        if time.monotonic() < down_until:
            raise ConnectionError("projection database is down")
        got.append(event.id)

    bus = EventBus(retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02))
    bus.subscribe("crm.*", projection, name="projection")
    assert await OutboxRelay(outbox, bus).drain() == 5
    assert [m.status for m in await outbox.messages()] == ["delivered"] * 5
    lost_for_now = 5 - len(got)
    assert lost_for_now > 0  # the consumer really missed events while it was down

    await asyncio.sleep(max(0.0, down_until - time.monotonic()))  # the consumer is back
    url, schema = await _where(sql_engine)
    engine = make_engine(url, schema)
    try:
        from contractspec.bus.sql import SqlOutboxStore

        fresh = EventBus()
        fresh.subscribe("crm.*", projection, name="projection")
        OutboxRelay(SqlOutboxStore(engine), fresh)
        assert await fresh.dead_letters.count() == lost_for_now
        reports = await fresh.replay_dead_letters(subscriber="projection")
        assert [r.ok for r in reports] == [True] * lost_for_now
    finally:
        await engine.dispose()
    assert sorted(got) == [f"ev-{i:04d}" for i in range(1, 6)]


async def test_an_outbox_relay_refuses_a_bus_with_in_memory_dead_letters(
    sql_engine: AsyncEngine,
) -> None:
    """An explicit `MemoryDeadLetterStore` with a SQL outbox would lose failed deliveries of rows
    marked delivered: refused with the field and the fix named."""
    from contractspec.bus import MemoryDeadLetterStore
    from contractspec.core import ConfigurationError

    outbox = await _outbox(sql_engine)
    with pytest.raises(ConfigurationError, match="SqlDeadLetterStore") as err:
        OutboxRelay(outbox, EventBus(dead_letters=MemoryDeadLetterStore()))
    assert err.value.details["field"] == "dead_letters"


async def test_a_bus_publishing_in_sql_transactions_keeps_dead_letters_in_the_database(
    sql_engine: AsyncEngine,
) -> None:
    """`Executor(events=EventBus())` on a `SqlBackend`: the bus delivers after commit, the
    consumer is down, and the dead letters are rows of `cs_dead_letters`, which a fresh bus with
    `SqlDeadLetterStore` replays."""
    from bus_support import build_registry

    from contractspec.bus.sql import SqlDeadLetterStore
    from contractspec.core import Actor, CallContext, Executor, RolePermissions
    from contractspec.core.sql import SqlBackend

    registry = build_registry()
    backend = SqlBackend(sql_engine, registry)
    await backend.create_all()
    from contractspec.bus.sql import create_bus_tables

    await create_bus_tables(sql_engine)
    got: list[str] = []
    down = True

    def projection(event: EventEnvelope) -> None:
        if down:
            raise ConnectionError("projection database is down")
        got.append(event.payload.deal_id)

    bus = EventBus(retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))
    bus.subscribe("crm.deal.created", projection, name="projection")
    ex = Executor(registry, backend=backend, events=bus, policy=RolePermissions({"s": ["deal.*"]}))
    ctx = CallContext(actor=Actor.user("ann", roles="s"), org_id="org-1")
    for i in range(5):
        await ex.execute("crm.deal.create", {"id": f"d{i}", "title": "T", "amount": "1"}, ctx)
    await bus.drain()
    assert isinstance(bus.dead_letters, SqlDeadLetterStore)
    down = False
    fresh = EventBus(dead_letters=SqlDeadLetterStore(sql_engine))
    fresh.subscribe("crm.deal.created", projection, name="projection")
    assert await fresh.dead_letters.count() == 5
    assert [r.ok for r in await fresh.replay_dead_letters(subscriber="projection")] == [True] * 5
    assert sorted(got) == [f"d{i}" for i in range(5)]


async def test_a_lingering_relay_claims_the_rows_committed_meanwhile_in_one_batch(
    sql_engine: AsyncEngine,
) -> None:
    """After a batch that was not full, `run()` waits `linger` before claiming again: rows
    committed meanwhile come in one batch (with `linger=0` the relay claims again at once). A
    negative `linger`, or one longer than `poll_interval`, is refused naming the field."""
    from contractspec.core import ConfigurationError

    outbox = await _outbox(sql_engine)
    for bad in (-0.1, 0.6, True):
        with pytest.raises(ConfigurationError, match="linger") as err:
            OutboxRelay(outbox, EventBus(), poll_interval=0.5, linger=bad)
        assert err.value.details == {"field": "linger"}
    got: list[str] = []
    bus = EventBus()
    bus.subscribe("crm.*", lambda e: got.append(e.id), name="sink")
    relay = OutboxRelay(outbox, bus, batch_size=50, poll_interval=1.0, linger=0.8)
    stop = asyncio.Event()
    await _publish(sql_engine, outbox, [envelope(0, key="k0")])
    running = asyncio.create_task(relay.run(stop=stop))
    for _ in range(400):  # the first row: a batch of one, then the relay lingers
        if got:
            break
        await asyncio.sleep(0.005)
    for i in range(1, 6):  # committed while it lingers
        await _publish(sql_engine, outbox, [envelope(i, key=f"k{i}")])
    for _ in range(400):
        if len(got) == 6:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await running
    assert len(got) == 6
    assert relay.stats.batches == 2  # the five rows of the linger came as one batch
