"""One conformance suite for the MeteringStore, on memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from metering_support import T0, App, active_users, api_calls, peak, seats, storage, tokens

from contractspec.core import SpecValidationError
from contractspec.metering import (
    Counter,
    Meter,
    PlanAssignment,
    UsageAggregate,
    UsageEvent,
    Window,
)

DAY = datetime(2024, 3, 10, tzinfo=UTC)


def ev(
    n: int,
    meter: Meter = tokens,
    value: object = 1,
    *,
    at: datetime = T0,
    org: str = "org-1",
    subject: str = "s1",
    key: str | None = None,
) -> UsageEvent:
    return UsageEvent(
        id=f"u{n}",
        org_id=org,
        user_id="user-1",
        subject=subject,
        meter=meter.key,
        value=value,  # type: ignore[arg-type]
        timestamp=at,
        unique_key=key,
    )


async def put(app: App, meter: Meter, *events: UsageEvent, counters: tuple[Counter, ...] = ()):
    tx = await app.store.unit_of_work.begin()
    out = [await app.store.record(tx, e, meter, counters) for e in events]
    await tx.commit()
    return out


async def test_events_are_stored_only_when_the_transaction_commits(app: App) -> None:
    """A rolled-back transaction leaves no event and no counter; a committed one leaves both."""
    tx = await app.store.unit_of_work.begin()
    rec = await app.store.record(tx, ev(1, value=7), tokens, [Counter(Window.DAY)])
    assert rec.created
    assert rec.exceeded is None
    await tx.rollback()
    assert await app.store.get("org-1", "u1") is None
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 0
    await put(app, tokens, ev(1, value=7), counters=(Counter(Window.DAY),))
    stored = await app.store.get("org-1", "u1")
    assert stored == ev(1, value=7)
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 7


async def test_a_duplicate_id_is_a_no_op_that_returns_the_stored_event(app: App) -> None:
    """Recording an id again (even with other data) stores nothing and counts nothing."""
    await put(app, tokens, ev(1, value=7), counters=(Counter(Window.DAY),))
    (again,) = await put(app, tokens, ev(1, value=99), counters=(Counter(Window.DAY),))
    assert not again.created
    assert again.event.value == 7
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 7
    assert await app.store.total(tokens, "org-1", DAY, DAY + timedelta(days=1)) == 7
    # the same id inside one transaction: the second is a duplicate too
    tx = await app.store.unit_of_work.begin()
    first = await app.store.record(tx, ev(2, value=1), tokens)
    second = await app.store.record(tx, ev(2, value=5), tokens)
    await tx.commit()
    assert (first.created, second.created, second.event.value) == (True, False, 1)


async def test_concurrent_duplicates_store_the_event_once(app: App) -> None:
    """Two open transactions recording one id: the second waits, then sees a duplicate."""
    tx1 = await app.store.unit_of_work.begin()
    assert (await app.store.record(tx1, ev(1, value=3), tokens, [Counter(Window.DAY)])).created

    async def second() -> bool:
        tx2 = await app.store.unit_of_work.begin()  # SQLite: waits here for the writer lock
        rec = await app.store.record(tx2, ev(1, value=3), tokens, [Counter(Window.DAY)])
        await tx2.commit()
        return rec.created

    task = asyncio.create_task(second())
    await asyncio.sleep(0.05)
    assert not task.done()  # waits for tx1 (PostgreSQL: on the unique index)
    await tx1.commit()
    assert await task is False
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 3


async def test_a_late_event_lands_in_the_window_of_its_timestamp(app: App) -> None:
    """Usage recorded now for yesterday counts in yesterday's window, not today's."""
    yesterday = T0 - timedelta(days=1)
    await put(app, storage, ev(1, storage, 10, at=T0), ev(2, storage, 5, at=yesterday))
    rows = await app.store.aggregate(
        storage, "org-1", DAY - timedelta(days=1), DAY + timedelta(days=1)
    )
    assert rows == [
        UsageAggregate("org-1", "storage.bytes", "s1", DAY - timedelta(days=1), DAY, Decimal(5)),
        UsageAggregate("org-1", "storage.bytes", "s1", DAY, DAY + timedelta(days=1), Decimal(10)),
    ]


async def test_each_aggregation_is_exact(app: App) -> None:
    """sum is decimal-exact, count counts, max, unique_count and latest follow their definition."""
    end = DAY + timedelta(days=1)
    await put(app, tokens, ev(1, value="0.1"), ev(2, value="0.2"), ev(3, value="0.000001"))
    assert await app.store.total(tokens, "org-1", DAY, end) == Decimal("0.300001")
    await put(app, api_calls, ev(4, api_calls, 50), ev(5, api_calls, 1))
    assert await app.store.total(api_calls, "org-1", DAY, end) == 2  # values are ignored
    await put(app, peak, ev(6, peak, "7.5"), ev(7, peak, 12), ev(8, peak, 3))
    assert await app.store.total(peak, "org-1", DAY, end) == 12
    await put(
        app,
        active_users,
        ev(9, active_users, key="ann"),
        ev(10, active_users, key="bob"),
        ev(11, active_users, key="ann"),
    )
    assert await app.store.total(active_users, "org-1", DAY, end) == 2
    # latest: the newest timestamp wins, whatever the arrival order; a tie goes to the last recorded
    await put(
        app,
        seats,
        ev(12, seats, 9, at=T0 + timedelta(minutes=5)),
        ev(13, seats, 4, at=T0),
        ev(14, seats, 6, at=T0 + timedelta(minutes=5)),
    )
    assert await app.store.total(seats, "org-1", DAY, end) == 6
    assert await app.store.total(seats, "org-1", DAY, T0 + timedelta(minutes=1)) == 4
    # an empty period is 0 for every aggregation
    for meter in (tokens, api_calls, peak, active_users, seats):
        assert await app.store.total(meter, "org-1", end, end + timedelta(days=1)) == 0


async def test_aggregate_groups_by_subject_and_window(app: App) -> None:
    """GROUP BY subject and the meter's window, ordered by subject then window."""
    h = timedelta(hours=1)
    await put(
        app,
        tokens,
        ev(1, value=1, subject="b", at=T0),
        ev(2, value=2, subject="a", at=T0 + h),
        ev(3, value=4, subject="a", at=T0),
        ev(4, value=8, subject="a", at=T0 + timedelta(minutes=10)),
        ev(5, value=16, subject="b", at=T0 - 5 * h),  # outside the period
    )
    h0 = T0.replace(minute=0)
    start, end = T0 - h, T0 + 2 * h
    rows = await app.store.aggregate(tokens, "org-1", start, end)
    assert [(r.subject, r.window_start, r.window_end, r.value) for r in rows] == [
        ("a", h0, h0 + h, Decimal(12)),
        ("a", h0 + h, h0 + 2 * h, Decimal(2)),
        ("b", h0, h0 + h, Decimal(1)),
    ]
    merged = await app.store.aggregate(tokens, "org-1", start, end, by_subject=False)
    assert [(r.subject, r.value) for r in merged] == [(None, Decimal(13)), (None, Decimal(2))]
    only_b = await app.store.aggregate(tokens, "org-1", start, end, subject="b")
    assert [(r.subject, r.value) for r in only_b] == [("b", Decimal(1))]
    latest = await app.store.aggregate(seats, "org-1", start, end)
    assert latest == []


async def test_latest_per_window_uses_each_groups_newest_event(app: App) -> None:
    """latest per (subject, month) picks that group's newest event, not the period's."""
    m = timedelta(minutes=1)
    april = datetime(2024, 4, 2, tzinfo=UTC)
    await put(
        app,
        seats,
        ev(1, seats, 3, subject="x", at=T0),
        ev(2, seats, 5, subject="x", at=T0 + m),
        ev(3, seats, 2, subject="y", at=T0 + 2 * m),
        ev(4, seats, 7, subject="x", at=april),
    )
    march = datetime(2024, 3, 1, tzinfo=UTC)
    may = datetime(2024, 5, 1, tzinfo=UTC)
    rows = await app.store.aggregate(seats, "org-1", march, may)
    assert [(r.subject, r.window_start, r.window_end, r.value) for r in rows] == [
        ("x", march, april.replace(day=1), Decimal(5)),
        ("x", april.replace(day=1), may, Decimal(7)),
        ("y", march, april.replace(day=1), Decimal(2)),
    ]


async def test_tenants_never_see_each_others_usage(app: App) -> None:
    """The same event id in two orgs is two events; aggregates and reads are per org."""
    await put(app, tokens, ev(1, value=5, org="org-1"), ev(1, value=9, org="org-2"))
    end = DAY + timedelta(days=1)
    assert await app.store.total(tokens, "org-1", DAY, end) == 5
    assert await app.store.total(tokens, "org-2", DAY, end) == 9
    assert (await app.store.get("org-2", "u1")) == ev(1, value=9, org="org-2")
    assert [e.value for e in await app.store.events("org-1", "llm.tokens", DAY, end)] == [5]


async def test_a_counter_refuses_what_would_pass_its_limit(app: App) -> None:
    """A limited counter grows up to the limit exactly, then reports the counter and its value."""
    limited = (Counter(Window.DAY, Decimal(10)), Counter(Window.MONTH))
    tx = await app.store.unit_of_work.begin()
    assert (await app.store.record(tx, ev(1, value=6), tokens, limited)).exceeded is None
    assert (await app.store.record(tx, ev(2, value=4), tokens, limited)).exceeded is None
    over = await app.store.record(tx, ev(3, value="0.5"), tokens, limited)
    assert over.exceeded == Counter(Window.DAY, Decimal(10))
    assert over.used == 10
    await tx.rollback()
    tx = await app.store.unit_of_work.begin()
    for n, value in ((1, 6), (2, 4)):
        await app.store.record(tx, ev(n, value=value), tokens, limited)
    await tx.commit()
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 10
    assert await app.store.counter("org-1", "llm.tokens", Window.MONTH, DAY.replace(day=1)) == 10
    # a single event bigger than the limit is refused on an empty counter too
    tx = await app.store.unit_of_work.begin()
    big = await app.store.record(
        tx, ev(9, value=11, at=T0 + timedelta(days=1)), tokens, (Counter(Window.DAY, Decimal(10)),)
    )
    assert (big.exceeded, big.used) == (Counter(Window.DAY, Decimal(10)), 0)
    await tx.rollback()


async def test_plan_assignments_are_per_org_and_replaceable(app: App) -> None:
    """assign_plan upserts; a rolled-back assignment is not kept."""
    assert await app.store.plan_of("org-1") is None
    await app.store.assign_plan(PlanAssignment("org-1", "free", T0))
    await app.store.assign_plan(PlanAssignment("org-1", "pro", T0 + timedelta(days=1)))
    await app.store.assign_plan(PlanAssignment("org-2", "free", T0))
    assert await app.store.plan_of("org-1") == PlanAssignment(
        "org-1", "pro", T0 + timedelta(days=1)
    )
    tx = await app.store.unit_of_work.begin()
    await app.store.assign_plan(PlanAssignment("org-2", "pro", T0), tx=tx)
    await tx.rollback()
    assert await app.store.plan_of("org-2") == PlanAssignment("org-2", "free", T0)


def test_usage_events_refuse_bad_input() -> None:
    """Naive timestamps, more than 6 decimal places, NaN and empty ids are clear errors."""
    with pytest.raises(SpecValidationError, match="timezone-aware"):
        ev(1, at=datetime(2024, 1, 1))
    with pytest.raises(SpecValidationError, match="more than 6 decimal places"):
        ev(1, value="0.0000001")
    with pytest.raises(SpecValidationError, match="finite"):
        ev(1, value="NaN")
    with pytest.raises(SpecValidationError, match="must be a number"):
        ev(1, value=True)
    with pytest.raises(SpecValidationError, match="org_id"):
        ev(1, org="")
    assert ev(1, value="1.500000000").value == Decimal("1.5")


async def test_a_unique_count_event_needs_its_key(app: App) -> None:
    """A unique_count meter refuses an event without unique_key; nothing is stored."""
    tx = await app.store.unit_of_work.begin()
    with pytest.raises(SpecValidationError, match="unique_key"):
        await app.store.record(tx, ev(1, active_users), active_users)
    await tx.rollback()
    assert await app.store.get("org-1", "u1") is None


async def test_record_many_stores_new_events_once_and_counts_only_them(app: App) -> None:
    """Bulk recording: duplicates (stored before, or repeated in the batch) come back as the
    stored event; counters grow by the new events only; a rollback keeps nothing."""
    await put(app, tokens, ev(1, value=5), counters=(Counter(Window.DAY),))
    batch = [ev(1, value=100), ev(2, value=2), ev(3, value=3), ev(2, value=50)]
    tx = await app.store.unit_of_work.begin()
    out = await app.store.record_many(tx, batch, tokens, [Window.DAY])
    await tx.rollback()
    assert await app.store.get("org-1", "u2") is None
    tx = await app.store.unit_of_work.begin()
    out = await app.store.record_many(tx, batch, tokens, [Window.DAY])
    await tx.commit()
    assert [(e.id, e.value) for e in out] == [
        ("u1", Decimal(5)),
        ("u2", Decimal(2)),
        ("u3", Decimal(3)),
        ("u2", Decimal(2)),
    ]
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 10
    assert await app.store.total(tokens, "org-1", DAY, DAY + timedelta(days=1)) == 10


async def test_record_many_round_trips_every_field_exactly(app: App) -> None:
    """Text with quotes, backslashes, commas, braces and non-ASCII, `None`s, 6 decimal places,
    large and exponent-form values and microsecond timestamps come back (from a later call, as
    duplicates) exactly as recorded; more events than one statement's chunk (6,001) all land,
    and a second call in the same transaction sees the first one's rows as duplicates."""
    odd = 'a "q" \\ b,{c} é 漢 \u2028 \t\n'
    events = [
        UsageEvent(
            id=f"{odd}-{n}",
            org_id=f"org-{odd}",
            user_id=None if n % 2 else odd,
            subject=odd,
            meter=active_users.key,
            value=Decimal(v),
            timestamp=T0 + timedelta(microseconds=123457 * n),
            unique_key=f"k-{odd}-{n}",
        )
        for n, v in enumerate(["0.000001", "1234567890.654321", "1E+3", "7"])
    ]
    tx = await app.store.unit_of_work.begin()
    first = await app.store.record_many(tx, events, active_users)
    await tx.commit()
    tx = await app.store.unit_of_work.begin()
    again = await app.store.record_many(tx, [*reversed(events)], active_users)
    await tx.commit()
    assert first == events
    assert again == [*reversed(events)]
    assert again[1].value == Decimal(1000)
    many = [ev(n, at=T0 + timedelta(seconds=n)) for n in range(6001)]
    tx = await app.store.unit_of_work.begin()
    out = await app.store.record_many(tx, [*many, many[0], many[-1]], tokens, [Window.DAY])
    # the same transaction again: its own rows of the first call are the duplicates now
    late = ev(9999, value=7, at=T0)
    again_in_tx = [ev(6000, value=50), late, ev(0, value=50)]
    assert await app.store.record_many(tx, again_in_tx, tokens, [Window.DAY]) == [
        many[6000],
        late,
        many[0],
    ]
    await tx.commit()
    assert out == [*many, many[0], many[-1]]
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 6001 + 7


async def test_record_many_waits_for_a_concurrent_duplicate_and_returns_the_stored_one(
    app: App,
) -> None:
    """A batch holding an id another open transaction is recording waits for it, then returns
    that transaction's event (committed after the batch's statement began) and counts only its
    own new events."""
    tx1 = await app.store.unit_of_work.begin()
    await app.store.record_many(tx1, [ev(1, value=3)], tokens, [Window.DAY])

    async def second() -> list[UsageEvent]:
        tx2 = await app.store.unit_of_work.begin()  # SQLite: waits here for the writer lock
        out = await app.store.record_many(
            tx2, [ev(2, value=5), ev(1, value=99)], tokens, [Window.DAY]
        )
        await tx2.commit()
        return out

    task = asyncio.create_task(second())
    await asyncio.sleep(0.1)
    assert not task.done()  # waits for tx1 (PostgreSQL: on the unique index)
    await tx1.commit()
    assert [(e.id, e.value) for e in await task] == [("u2", Decimal(5)), ("u1", Decimal(3))]
    assert await app.store.counter("org-1", "llm.tokens", Window.DAY, DAY) == 8
