"""Gauge caps (a plan `Limit` on a `latest`/`max` meter, checked by `Metering.gauge` at the moment
of the call) and reads inside the caller's transaction, on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from metering_support import T0
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    HandlerCtx,
    MemoryBackend,
    SpecDefinitionError,
    SpecRegistry,
    SpecValidationError,
    TenantScopeError,
    define_command,
    define_entity,
)
from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.metering import (
    FeatureNotEntitledError,
    Limit,
    MemoryMeteringStore,
    Metering,
    MeteringStore,
    QuotaExceededError,
    UsageEvent,
    define_meter,
    define_plan,
    meter_operation,
)

CTX = CallContext(actor=Actor.user("ann"), org_id="org-1")


class Seat(BaseModel):
    id: str


class SeatIn(BaseModel):
    id: str


class Count(BaseModel):
    seats: int


class Reading(BaseModel):
    meter: str
    value: str


seat = define_entity("app.seat", Seat)
add_seat = define_command("app.seat.add", input=SeatIn, output=Count)
remove_seat = define_command("app.seat.remove", input=SeatIn, output=Count)
read_gauge = define_command("app.gauge", input=Reading, output=Count, auth=None)
report = define_command("app.report", input=Count, output=Count, auth=None)
seats = define_meter("seats", unit="seat", aggregation="latest", window="month")
peak = define_meter("peak.rps", unit="rps", aggregation="max", window="day")
calls = define_meter("api.calls", unit="call", aggregation="count", window="day")
small = define_plan("small", entitlements=[Limit("seats", 5), Limit("peak.rps", 10)])
large = define_plan("large", entitlements=[Limit("seats", 50)])
loose = define_plan("loose", entitlements=[Limit("seats", 1, overage="allow")])


@asynccontextmanager
async def open_seats(kind: str, directory: Path) -> AsyncIterator[tuple[Executor, Metering]]:
    """An app whose seat operations record the `seats` gauge with `Metering.gauge`."""
    registry = SpecRegistry(
        seat, add_seat, remove_seat, read_gauge, report, seats, peak, calls, small, large, loose,
        meter_operation(report, meter=peak, amount="output.seats", subject="input.seats"),
    )  # fmt: skip
    holder: dict[str, Metering] = {}

    async def count(ctx: HandlerCtx) -> int:
        return await ctx.repo(seat).count()

    @registry.handler(add_seat)
    async def _add(inp: SeatIn, ctx: HandlerCtx) -> Count:
        await ctx.repo(seat).add(Seat(id=inp.id))
        event = await holder["m"].gauge(ctx, seats, lambda: count(ctx), subject="members")
        return Count(seats=int(event.value))

    @registry.handler(remove_seat)
    async def _remove(inp: SeatIn, ctx: HandlerCtx) -> Count:
        await ctx.repo(seat).delete(inp.id)
        event = await holder["m"].gauge(ctx, seats, lambda: count(ctx))
        return Count(seats=int(event.value))

    @registry.handler(read_gauge)
    async def _gauge(inp: Reading, ctx: HandlerCtx) -> Count:
        event = await holder["m"].gauge(ctx, inp.meter, inp.value)
        return Count(seats=int(event.value))

    @registry.handler(report)
    async def _report(inp: Count, ctx: HandlerCtx) -> Count:
        return inp

    clock = FakeClock(T0)
    if kind == "memory":
        store: MeteringStore = MemoryMeteringStore()
        holder["m"] = Metering(registry, store, clock=clock)
        middleware = [holder["m"].middleware()]
        yield (
            Executor(registry, backend=MemoryBackend(), clock=clock, middleware=middleware),
            holder["m"],
        )
        return
    from contractspec.core.sql import SqlBackend, create_all
    from contractspec.core.sql import metadata as core_metadata
    from contractspec.metering.sql import SqlMeteringStore, metadata

    async with temporary_sql_engine(kind, directory) as engine:
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        await create_all(engine, core_metadata, metadata)
        holder["m"] = Metering(registry, SqlMeteringStore(engine), clock=clock)
        middleware = [holder["m"].middleware()]
        yield Executor(registry, backend=backend, clock=clock, middleware=middleware), holder["m"]


@pytest.fixture
async def seats_app(backend_kind: str, tmp_path: Path) -> AsyncIterator[tuple[Executor, Metering]]:
    async with open_seats(backend_kind, tmp_path) as built:
        yield built


async def test_a_gauge_past_its_cap_is_refused_and_rolled_back(
    seats_app: tuple[Executor, Metering],
) -> None:
    """Seats 1..5 pass on a 5-seat plan; the 6th is 402 with the cap's details and leaves
    neither its row nor a reading; on the large plan it passes."""
    executor, metering = seats_app
    await metering.assign_plan("org-1", "small")
    for i in range(5):
        out: Any = await executor.execute("app.seat.add", {"id": f"s{i}"}, CTX)
        assert out.seats == i + 1
    with pytest.raises(QuotaExceededError) as info:
        await executor.execute("app.seat.add", {"id": "s5"}, CTX)
    err = info.value
    assert (err.plan, err.meter, err.limit, err.used, err.requested) == (
        "small",
        "seats",
        Decimal(5),
        Decimal(5),
        Decimal(1),
    )
    assert err.code == "quota_exceeded"  # HTTP 402
    assert (await metering.current("seats", "org-1")).value == 5
    await metering.assign_plan("org-1", "large")
    out = await executor.execute("app.seat.add", {"id": "s5"}, CTX)
    assert out.seats == 6


async def test_a_reading_that_does_not_grow_is_kept_over_the_cap(
    seats_app: tuple[Executor, Metering],
) -> None:
    """After a downgrade below the readings, removing seats is still recorded (never refused);
    `overage="allow"` records readings past the cap."""
    executor, metering = seats_app
    await metering.assign_plan("org-1", "large")
    for i in range(7):
        await executor.execute("app.seat.add", {"id": f"s{i}"}, CTX)
    await metering.assign_plan("org-1", "small")
    out: Any = await executor.execute("app.seat.remove", {"id": "s0"}, CTX)
    assert out.seats == 6
    with pytest.raises(QuotaExceededError):
        await executor.execute("app.seat.add", {"id": "s0"}, CTX)
    await metering.assign_plan("org-1", "loose")
    assert (await executor.execute("app.seat.add", {"id": "s0"}, CTX)).seats == 7  # type: ignore[attr-defined]


async def test_concurrent_callers_at_a_gauge_cap_admit_exactly_the_free_seats(
    seats_app: tuple[Executor, Metering],
) -> None:
    """12 callers race for the 5 seats: the gauge lock orders their counts, exactly 5 pass."""
    executor, metering = seats_app
    await metering.assign_plan("org-1", "small")

    async def add(i: int) -> str:
        try:
            await executor.execute("app.seat.add", {"id": f"r{i}"}, CTX)
        except QuotaExceededError:
            return "refused"
        return "ok"

    results = await asyncio.gather(*(add(i) for i in range(12)))
    assert (results.count("ok"), results.count("refused")) == (5, 7)
    assert (await metering.current("seats", "org-1")).value == 5


async def test_current_in_the_callers_transaction_sees_its_own_usage_only(
    seats_app: tuple[Executor, Metering],
) -> None:
    """`current(tx=)` counts the transaction's own uncommitted usage; other readers do not."""
    _executor, metering = seats_app
    store = metering.store
    tx = await store.unit_of_work.begin()
    try:
        event = UsageEvent("c1", "org-1", None, "s", "api.calls", 1, T0)
        await store.record(tx, event, metering.meters["api.calls"])
        inside = await metering.current("api.calls", "org-1", tx=tx, at=T0)
        outside = await metering.current("api.calls", "org-1", at=T0)
        assert (inside.value, outside.value) == (1, 0)
    finally:
        await tx.rollback()
    assert (await metering.current("api.calls", "org-1", at=T0)).value == 0


async def test_a_plan_assigned_in_a_transaction_shows_only_after_commit(
    seats_app: tuple[Executor, Metering],
) -> None:
    """Inside the transaction the new plan applies; outside, the old one until it commits;
    a rollback keeps the old one."""
    _executor, metering = seats_app
    await metering.assign_plan("org-1", "small")
    for end in ("rollback", "commit"):
        tx = await metering.store.unit_of_work.begin()
        try:
            await metering.assign_plan("org-1", "large", tx=tx)
            assert (await metering.plan_of("org-1", tx=tx)).key == "large"  # type: ignore[union-attr]
            assert (await metering.plan_of("org-1")).key == "small"  # type: ignore[union-attr]
        finally:
            await (tx.rollback() if end == "rollback" else tx.commit())
        expected = "small" if end == "rollback" else "large"
        assert (await metering.plan_of("org-1")).key == expected  # type: ignore[union-attr]


async def test_gauge_refuses_bad_meters_and_readings(
    seats_app: tuple[Executor, Metering],
) -> None:
    """A running-total meter, a non-numeric reading or no org is an error naming the field."""
    executor, _metering = seats_app
    for meter, value in (("api.calls", "1"), ("seats", "many")):
        with pytest.raises(SpecValidationError) as info:
            await executor.execute("app.gauge", {"meter": meter, "value": value}, CTX)
        assert info.value.details["field"] == ("meter" if meter == "api.calls" else "value")
    nobody = CallContext(actor=Actor.user("ann"))
    with pytest.raises(TenantScopeError) as scope:
        await executor.execute("app.gauge", {"meter": "seats", "value": "1"}, nobody)
    assert scope.value.details["field"] == "org_id"


def test_caps_must_be_hard_and_single() -> None:
    """A rate-style or second limit on a gauge, or a limit on unique_count, is a definition error."""
    users = define_meter("users", unit="user", aggregation="unique_count")
    cases = [
        (seats, define_plan("p", entitlements=[Limit("seats", 3, kind="rate")]), "kind='hard'"),
        (
            seats,
            define_plan("p", entitlements=[Limit("seats", 3), Limit("seats", 4, window="day")]),
            "single Limit",
        ),
        (users, define_plan("p", entitlements=[Limit("users", 3)]), "sum or count meter"),
    ]
    for meter, plan, message in cases:
        with pytest.raises(SpecDefinitionError, match=message):
            Metering(SpecRegistry(meter, plan), MemoryMeteringStore())


async def test_a_max_gauge_is_capped_against_its_window_maximum(
    seats_app: tuple[Executor, Metering],
) -> None:
    """peak.rps capped at 10: 9 passes, 11 is refused, 3 passes; the day's max stays 9."""
    executor, metering = seats_app
    await metering.assign_plan("org-1", "small")
    await executor.execute("app.gauge", {"meter": "peak.rps", "value": "9"}, CTX)
    with pytest.raises(QuotaExceededError) as info:
        await executor.execute("app.gauge", {"meter": "peak.rps", "value": "11"}, CTX)
    assert (info.value.used, info.value.requested) == (Decimal(9), Decimal(2))
    await executor.execute("app.gauge", {"meter": "peak.rps", "value": "3"}, CTX)
    assert (await metering.current("peak.rps", "org-1", at=T0)).value == 9


async def test_an_operation_bound_to_a_gauge_reports_readings_checked_against_the_cap(
    seats_app: tuple[Executor, Metering],
) -> None:
    """meter_operation(report, meter=peak, amount="output.seats"): 10 passes, 12 is refused
    with nothing recorded, and an org without a plan cannot call it."""
    executor, metering = seats_app
    with pytest.raises(FeatureNotEntitledError):
        await executor.execute("app.report", {"seats": 1}, CTX)
    await metering.assign_plan("org-1", "small")
    await executor.execute("app.report", {"seats": 10}, CTX)
    with pytest.raises(QuotaExceededError):
        await executor.execute("app.report", {"seats": 12}, CTX)
    rows = await metering.usage("peak.rps", "org-1", T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert [(r.subject, r.value) for r in rows] == [("10", 10)]
