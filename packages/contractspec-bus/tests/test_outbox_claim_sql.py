"""Property: the SQL claim (one statement on PostgreSQL) leases exactly the rows the per-key
order rule (`accept_in_key_order`) allows, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bus_support import T0, envelope
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.bus.sql import SqlOutboxStore, create_bus_tables
from contractspec.bus.stores import OrderingKey, OutboxMessage, accept_in_key_order
from contractspec.core.sql import SqlUnitOfWork, outbox_table

LEASE = timedelta(seconds=30)
#: Later than any clock (ours or the database's) this test runs with: a lease still held.
HELD_UNTIL = datetime(2999, 1, 1, tzinfo=UTC)

#: The state each generated row is put in before the claim.
STATES: dict[str, dict[str, Any]] = {
    "ready": {"available_at": T0},
    "leased": {"available_at": HELD_UNTIL, "lease_token": "other"},
    "mine": {"available_at": HELD_UNTIL, "lease_token": "mine"},
    # ours, its lease over but not taken over yet
    "expired": {"available_at": T0, "lease_token": "mine"},
    "delivered": {"status": "delivered", "available_at": T0},
    "failed": {"status": "failed", "available_at": T0},
}

#: Each Hypothesis example builds its own table contents on the function-scoped engine.
claim_settings = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def _outbox_in_states(
    sql_engine: AsyncEngine, rows: list[tuple[str | None, str | None, str]]
) -> tuple[SqlOutboxStore, list[OutboxMessage]]:
    """An outbox holding one row per `(org, key, state)`, in that order (positions ascending)."""
    await create_bus_tables(sql_engine)
    async with sql_engine.begin() as conn:
        await conn.execute(delete(outbox_table))
    store = SqlOutboxStore(sql_engine)
    tx = await SqlUnitOfWork(sql_engine).begin()
    await store.publish(
        [envelope(i, key=key, org_id=org) for i, (org, key, _) in enumerate(rows)], tx
    )
    await tx.commit()
    published = await store.messages(limit=100)
    t = outbox_table
    async with sql_engine.begin() as conn:
        for message, (_, _, state) in zip(published, rows, strict=True):
            await conn.execute(
                update(t).where(t.c.position == message.position).values(**STATES[state])
            )
    return store, await store.messages(limit=100)


def _expected_claim(pending: list[OutboxMessage], limit: int) -> list[int]:
    """What `accept_in_key_order` leases of the first `limit` available `pending` rows."""
    candidates = [m for m in pending if m.available_at == T0][:limit]
    queues: dict[OrderingKey, list[int]] = {}
    for m in candidates:
        if (okey := m.ordering_key) is not None:
            queues[okey] = [
                p.position
                for p in pending
                if p.ordering_key == okey and p.position <= candidates[-1].position
            ]
    return [m.position for m in accept_in_key_order(candidates, queues)]


def _assert_untouched(row: OutboxMessage, old: OutboxMessage) -> None:
    assert (row.status, row.attempts, row.available_at, row.lease_token) == (
        old.status,
        old.attempts,
        old.available_at,
        old.lease_token,
    )


rows = st.lists(
    st.tuples(
        st.sampled_from([None, "org-1"]),  # org
        st.sampled_from([None, "a", "b"]),  # key
        st.sampled_from(["ready", "ready", "leased", "delivered", "failed"]),
    ),
    min_size=1,
    max_size=14,
)


@claim_settings
@given(rows=rows, limit=st.integers(min_value=1, max_value=8), db_clock=st.booleans())
@example(rows=[("org-1", "a", "leased"), ("org-1", "a", "ready")], limit=5, db_clock=False)
@example(  # the same key without an org and in an org: two queues
    rows=[(None, "a", "leased"), (None, "a", "ready"), ("org-1", "a", "ready")],
    limit=5,
    db_clock=True,
)
@example(
    rows=[("org-1", "a", "ready"), ("org-1", "a", "leased"), ("org-1", "a", "ready")],
    limit=5,
    db_clock=False,
)
async def test_a_claim_leases_exactly_the_rows_that_keep_per_key_order(
    sql_engine: AsyncEngine,
    rows: list[tuple[str | None, str | None, str]],
    limit: int,
    db_clock: bool,
) -> None:
    """Candidates are the first `limit` available pending rows; a keyed one is leased only if
    every pending row of its (org, key) before it is leased too (rows held by another lease,
    including ones after the candidates' window, block the rest of their key); the leased rows
    carry one new token, the counted attempt and the lease's end."""
    store, stored = await _outbox_in_states(sql_engine, rows)
    before = {m.position: m for m in stored}
    expected = _expected_claim([m for m in stored if m.status == "pending"], limit)

    now = None if db_clock else T0 + timedelta(seconds=1)
    claimed = await store.claim(limit, now, LEASE)

    assert [m.position for m in claimed] == expected
    assert len({m.lease_token for m in claimed}) <= 1
    after = {m.position: m for m in await store.messages(limit=100)}
    for position, row in after.items():
        old = before[position]
        if position in expected:
            assert row.attempts == old.attempts + 1
            assert row.lease_token == claimed[0].lease_token != "other"
            if now is not None:
                assert row.available_at == now + LEASE
            else:
                assert T0 < row.available_at < HELD_UNTIL
        else:
            _assert_untouched(row, old)


async def test_claim_and_mark_on_the_driver_equal_the_sqlalchemy_path_and_listeners_see_them(
    sql_engine: AsyncEngine,
) -> None:
    """On PostgreSQL, `claim` and `mark_delivered` run on the psycopg connection (compiled once);
    the rows they return are decoded exactly as SQLAlchemy decodes them (aware UTC datetimes,
    JSON payload and headers), and an engine with a `before_cursor_execute` listener (tracing,
    query logs) takes SQLAlchemy's path, so the listener sees both statements."""
    from sqlalchemy import event

    await create_bus_tables(sql_engine)
    async with sql_engine.begin() as conn:
        await conn.execute(delete(outbox_table))
    store = SqlOutboxStore(sql_engine)
    tx = await SqlUnitOfWork(sql_engine).begin()
    await store.publish([envelope(i, key=k) for i, k in enumerate(["a", "b", None, "a"])], tx)
    await tx.commit()
    stored = {m.position: m for m in await store.messages(limit=10)}

    def same_row(claimed: list[Any]) -> None:
        for m in claimed:
            s = stored[m.position]
            assert (m.id, m.name, m.version, m.org_id, m.key, m.payload, m.headers) == (
                s.id,
                s.name,
                s.version,
                s.org_id,
                s.key,
                s.payload,
                s.headers,
            )
            assert m.occurred_at == s.occurred_at
            assert m.occurred_at.tzinfo is not None
            assert m.occurred_at.utcoffset() == timedelta(0)
            assert m.available_at.utcoffset() == timedelta(0)
            assert (m.status, m.attempts, m.delivered_at, m.last_error) == (
                "pending",
                1,
                None,
                None,
            )

    now = T0 + timedelta(seconds=1)
    first = await store.claim(2, now, LEASE)  # no listener: the driver path
    assert len(first) == 2
    same_row(first)
    assert all(m.available_at == now + LEASE for m in first)
    assert await store.mark_delivered([m.position for m in first], now, token="other") == 0
    token = first[0].lease_token
    assert await store.mark_delivered([m.position for m in first], now, token=token) == 2

    seen: list[str] = []

    def listen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(sql_engine.sync_engine, "before_cursor_execute", listen)
    try:
        second = await store.claim(10, None, LEASE)  # the database's clock
        same_row(second)
        assert await store.mark_delivered([m.position for m in second], now) == len(second)
    finally:
        event.remove(sql_engine.sync_engine, "before_cursor_execute", listen)
    assert [m.position for m in second] == sorted(set(stored) - {m.position for m in first})
    assert len(second) == 2
    if sql_engine.dialect.name == "postgresql":
        assert any("cs_claim" in s for s in seen)
        assert any(s.startswith("UPDATE cs_outbox SET status") for s in seen)
    after = {m.position: m for m in await store.messages(limit=10)}
    assert {m.status for m in after.values()} == {"delivered"}
    assert all(m.delivered_at == now and m.lease_token is None for m in after.values())


async def test_claim_and_mark_on_an_autocommit_engine_leave_its_connections_in_autocommit(
    sql_kind: str,
) -> None:
    """An engine made with `isolation_level="AUTOCOMMIT"` keeps autocommit connections after a
    claim and a mark (the driver path restores the mode it found, not a fixed one)."""
    if sql_kind != "postgres":
        pytest.skip("the driver path and autocommit engines are PostgreSQL's")
    from sqlalchemy import text

    from contractspec.core.testing import temporary_postgres_engine

    async with temporary_postgres_engine(isolation_level="AUTOCOMMIT", pool_size=1) as engine:
        await create_bus_tables(engine)
        store = SqlOutboxStore(engine)
        tx = await SqlUnitOfWork(engine).begin()
        await store.publish([envelope(1, key="a")], tx)
        await tx.commit()
        claimed = await store.claim(10, None, LEASE)
        assert len(claimed) == 1
        token = claimed[0].lease_token
        assert await store.mark_delivered([claimed[0].position], T0, token=token) == 1
        async with engine.connect() as conn:  # the one pooled connection
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.autocommit is True
            await conn.execute(text("SELECT 1"))


marking_rows = st.lists(
    st.tuples(
        st.sampled_from([None, "org-1"]),  # org
        st.sampled_from([None, "a", "b"]),  # key
        st.sampled_from(["ready", "leased", "mine", "mine", "expired", "delivered"]),
        st.booleans(),  # also given to mark (a row "mine" or "expired" always is)
    ),
    min_size=1,
    max_size=14,
)


@claim_settings
@given(rows=marking_rows, limit=st.integers(min_value=1, max_value=8), db_clock=st.booleans())
@example(  # the next row of a key whose previous row is marked in the same statement
    rows=[("org-1", "a", "mine", True), ("org-1", "a", "ready", False)], limit=5, db_clock=False
)
@example(  # a row given to mark under another lease: not marked, still blocking its key
    rows=[("org-1", "a", "leased", True), ("org-1", "a", "ready", False)], limit=5, db_clock=True
)
@example(  # an expired lease still ours: marked, not claimed again in the same statement
    rows=[("org-1", "a", "expired", True), ("org-1", "a", "ready", False)], limit=5, db_clock=True
)
@example(  # a row given to mark that no lease holds: not marked, claimed like any other
    rows=[(None, "a", "ready", True), (None, "b", "ready", False)], limit=5, db_clock=False
)
async def test_mark_and_claim_marks_the_last_batch_then_claims_as_if_it_were_delivered(
    sql_engine: AsyncEngine,
    rows: list[tuple[str | None, str | None, str, bool]],
    limit: int,
    db_clock: bool,
) -> None:
    """`mark_and_claim(positions, token, ...)` marks the given rows that still carry `token`
    delivered, and claims exactly what `claim` would claim once they are delivered (one
    statement on PostgreSQL; mark then claim on SQLite)."""
    store, stored = await _outbox_in_states(sql_engine, [(o, k, state) for o, k, state, _ in rows])
    before = {m.position: m for m in stored}
    given_positions = [
        m.position
        for m, (_, _, state, give) in zip(stored, rows, strict=True)
        if give or state in ("mine", "expired")
    ]
    mine = {m.position for m in stored if m.lease_token == "mine"}
    # the claim sees the "mine" rows delivered
    expected = _expected_claim(
        [m for m in stored if m.status == "pending" and m.position not in mine], limit
    )

    at = T0 + timedelta(seconds=2)
    now = None if db_clock else T0 + timedelta(seconds=1)
    claimed = await store.mark_and_claim(given_positions, "mine", at, limit, now, LEASE)

    assert [m.position for m in claimed] == expected
    assert not {m.position for m in claimed} & mine
    after = {m.position: m for m in await store.messages(limit=100)}
    for position, row in after.items():
        old = before[position]
        if position in mine:
            assert (row.status, row.delivered_at, row.lease_token) == ("delivered", at, None)
        elif position in expected:
            assert row.attempts == old.attempts + 1
            assert row.lease_token == claimed[0].lease_token not in ("other", "mine")
        else:
            _assert_untouched(row, old)
