"""Property: however relays interleave claims, deliveries, failures and lease expiries, every
event is delivered and events of one key are first delivered in position order."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from bus_support import T0, envelope
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.bus import MemoryOutboxStore, OutboxMessage
from contractspec.bus.stores import accept_in_key_order
from contractspec.core import MemoryUnitOfWork

LEASE = timedelta(seconds=10)

steps = st.lists(
    st.tuples(
        st.sampled_from(["claim", "finish", "fail", "tick"]),
        st.integers(min_value=0, max_value=2),  # which relay
        st.integers(min_value=1, max_value=4),  # claim size
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(keys=st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=25), plan=steps)
async def test_interleaved_relays_keep_per_key_order_and_lose_nothing(
    keys: list[str | None], plan: list[tuple[str, int, int]]
) -> None:
    """Three simulated relays with leases never deliver a key's events out of order."""
    store = MemoryOutboxStore()
    tx = await MemoryUnitOfWork().begin()
    await store.publish([envelope(i, key=k) for i, k in enumerate(keys)], tx)
    await tx.commit()
    now = T0
    held: dict[int, list[OutboxMessage]] = defaultdict(list)
    first_delivery: dict[str, int] = {}
    order: dict[str | None, list[int]] = defaultdict(list)

    async def finish(relay: int) -> None:
        batch, held[relay] = held[relay], []
        for m in batch:
            if m.id not in first_delivery:
                first_delivery[m.id] = m.position
                order[m.key].append(m.position)
        await store.mark_delivered([m.position for m in batch], now)

    for action, relay, size in plan:
        if action == "claim" and not held[relay]:
            held[relay] = await store.claim(size, now, LEASE)
        elif action == "finish":
            await finish(relay)
        elif action == "fail":
            held[relay] = []  # the relay died: its lease will run out
        else:
            now += LEASE
    for relay in list(held):
        held[relay] = []  # every surviving relay dies; a fresh one drains after the leases
    now += LEASE
    while batch := await store.claim(100, now, LEASE):
        held[9] = batch
        await finish(9)
    assert sorted(first_delivery.values()) == list(range(1, len(keys) + 1))
    for key, positions in order.items():
        if key is not None:
            assert positions == sorted(positions), key


@given(
    st.lists(st.sampled_from(["x", "y", None]), min_size=1, max_size=12),
    st.sets(st.integers(min_value=1, max_value=12)),
)
def test_accepted_rows_are_a_prefix_of_each_key_queue(
    keys: list[str | None], missing: set[int]
) -> None:
    """accept_in_key_order keeps, per key, exactly the candidates before the first one missing."""
    rows = [envelope(i, key=k) for i, k in enumerate(keys, start=1)]
    messages = [
        OutboxMessage(i, e.id, e.name, 1, None, e.key, {}, {}, T0)
        for i, e in enumerate(rows, start=1)
    ]
    candidates = [m for m in messages if m.position not in missing]
    queues: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        if m.key is not None:
            queues[m.key].append(m.position)
    accepted = {m.position for m in accept_in_key_order(candidates, queues)}
    for key, queue in queues.items():
        prefix: list[int] = []
        for p in queue:
            if p in missing:
                break
            prefix.append(p)
        assert {p for p in accepted if messages[p - 1].key == key} == set(prefix)
    assert {m.position for m in candidates if m.key is None} <= accepted
