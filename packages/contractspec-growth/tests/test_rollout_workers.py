"""Several workers, one rollout: compare-and-set writes, refreshes, and a rollback always wins
(memory, a SQLite file opened by two engines, PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from growth_a_stores import sql_engine_for

from contractspec.core import Actor, CallContext, ConflictError, TelemetrySample
from contractspec.core.testing import FakeClock
from contractspec.growth.rollouts import (
    Guardrails,
    MemoryRolloutStore,
    RolloutPlan,
    RolloutState,
    RolloutStatus,
    RolloutStore,
    SpecExperimentController,
    SqlRolloutStore,
)

T0 = datetime(2024, 6, 1, tzinfo=UTC)
PLAN = RolloutPlan(
    "shop.quote",
    candidate=2,
    baseline=1,
    min_samples=30,
    min_dwell=timedelta(0),
    guardrails=Guardrails(max_error_rate=0.05, sequential=False),
)


@pytest.fixture
async def stores(
    backend_kind: str, tmp_path: Path
) -> AsyncIterator[tuple[RolloutStore, RolloutStore]]:
    """Two workers' views of one store: the same memory store, two engines on one SQLite file,
    or two stores on one PostgreSQL schema (each write on its own pooled connection)."""
    async with sql_engine_for(backend_kind, tmp_path) as engine:
        if engine is None:
            memory = MemoryRolloutStore()
            yield memory, memory
            return
        first = SqlRolloutStore(engine)
        await first.create_all()
        if backend_kind == "sqlite":
            from contractspec.core.sql import sqlite_engine

            other = sqlite_engine(Path(str(engine.url.database)))
            try:
                yield first, SqlRolloutStore(other)
            finally:
                await other.dispose()
        else:
            yield first, SqlRolloutStore(engine)


def _sample(*, ok: bool = True) -> TelemetrySample:
    return TelemetrySample(
        operation="shop.quote", version=2, variant=2, org_id=None, actor_id="u", channel="api",
        duration_ms=5.0, success=ok, error_code=None if ok else "internal_error",
        payload_size=None, trace_id=None, timestamp=T0,
    )  # fmt: skip


async def _workers(
    stores: tuple[RolloutStore, RolloutStore], clock: FakeClock
) -> tuple[SpecExperimentController, SpecExperimentController]:
    a = SpecExperimentController(stores[0], clock=clock)
    b = SpecExperimentController(stores[1], clock=clock)
    await a.start(PLAN)
    await b.load()
    return a, b


async def test_a_rollback_is_not_erased_by_another_workers_advance(
    stores: tuple[RolloutStore, RolloutStore],
) -> None:
    """Worker A rolls back; worker B, which has not re-read yet, advances from its stale state:
    B's write loses the compare-and-set, B adopts the rollback, the store stays rolled back."""
    clock = FakeClock(T0)
    a, b = await _workers(stores, clock)
    for _ in range(29):
        b.record(_sample())
    for _ in range(21):
        a.record(_sample(ok=False))
    await a.flush()
    b.record(_sample())  # B's 30th call: B advances to 10 % on its own (stale) view
    assert b.state("shop.quote").coverage == 0.10
    await b.flush()
    stored = await stores[1].load("shop.quote")
    assert stored is not None
    assert (stored.status, stored.coverage) == (RolloutStatus.ROLLED_BACK, 0.0)
    assert [h["event"] for h in stored.history] == ["started", "rolled_back"]
    assert b.state("shop.quote") == stored
    callers = [CallContext(actor=Actor.user(f"user-{i}")) for i in range(300)]
    assert {b.version_for("shop.quote", c) for c in callers} == {1}


async def test_a_rollback_that_loses_the_race_is_applied_on_top(
    stores: tuple[RolloutStore, RolloutStore],
) -> None:
    """Worker A advances first; worker B's rollback, made on the older version, is applied again
    on top of A's change, and A sees it at its first call once `refresh_every` has passed."""
    clock = FakeClock(T0)
    a, b = await _workers(stores, clock)
    for _ in range(30):
        a.record(_sample())
    await a.flush()
    assert a.state("shop.quote").coverage == 0.10
    for _ in range(21):
        b.record(_sample(ok=False))
    await b.flush()
    stored = await stores[0].load("shop.quote")
    assert stored is not None
    assert stored.status is RolloutStatus.ROLLED_BACK
    assert [h["event"] for h in stored.history] == ["started", "advanced", "rolled_back"]
    assert stored.version == 3
    a.record(_sample())  # within refresh_every of its last read: A still routes from memory
    assert a.state("shop.quote").status is RolloutStatus.RUNNING
    clock.advance(a.refresh_every)
    a.record(_sample())  # the bound has passed: this call starts a re-read of the store
    for _ in range(200):
        if a.state("shop.quote").status is RolloutStatus.ROLLED_BACK:
            break
        await asyncio.sleep(0.01)
    assert a.state("shop.quote") == stored
    await a.flush()
    final = await stores[0].load("shop.quote")
    assert final == stored  # A's stale calls wrote nothing over the rollback


async def test_a_manual_rollback_wins_over_a_concurrent_advance(
    stores: tuple[RolloutStore, RolloutStore],
) -> None:
    """`rollback()` re-reads the store first and is stored whatever another worker did."""
    clock = FakeClock(T0)
    a, b = await _workers(stores, clock)
    for _ in range(30):
        a.record(_sample())
    await a.flush()
    state = await b.rollback("shop.quote", "on-call asked")
    assert (state.status, state.reason) == (RolloutStatus.ROLLED_BACK, "on-call asked")
    assert await stores[0].load("shop.quote") == state


async def test_only_one_worker_can_start_a_rollout(
    stores: tuple[RolloutStore, RolloutStore],
) -> None:
    """A second worker starting the same operation gets ConflictError and adopts the first's."""
    clock = FakeClock(T0)
    a = SpecExperimentController(stores[0], clock=clock)
    b = SpecExperimentController(stores[1], clock=clock)
    first = await a.start(PLAN)
    with pytest.raises(ConflictError, match="already running"):
        await b.start(PLAN)
    assert b.state("shop.quote") == first


class _GatedStore(MemoryRolloutStore):
    """A memory store whose writes wait for `gate` (a slow database), sharing another's rows."""

    def __init__(self, rows: MemoryRolloutStore) -> None:
        super().__init__()
        self._states = rows._states
        self.gate = asyncio.Event()

    async def save(self, state: RolloutState, *, expected_version: int | None) -> None:
        await self.gate.wait()
        await super().save(state, expected_version=expected_version)


async def test_changes_queued_behind_a_losing_write_do_not_erase_a_rollback() -> None:
    """B's write of 10 % is in flight while B queues 50 %; A rolls back meanwhile. B's first
    write loses the compare-and-set, and the queued change (made on the losing one) is dropped
    too instead of being written over the rollback."""
    clock = FakeClock(T0)
    rows = MemoryRolloutStore()
    slow = _GatedStore(rows)
    a = SpecExperimentController(rows, clock=clock)
    b = SpecExperimentController(slow, clock=clock)
    await a.start(PLAN)
    await b.load()
    for _ in range(30):
        b.record(_sample())  # B advances to 10 %: its write waits at the gate
    await asyncio.sleep(0)
    for _ in range(30):
        b.record(_sample())  # B advances to 50 % while the first write is in flight
    assert b.state("shop.quote").coverage == 0.50
    await a.rollback("shop.quote", "on-call asked")
    slow.gate.set()
    await b.flush()
    stored = await rows.load("shop.quote")
    assert stored is not None
    assert (stored.status, stored.reason) == (RolloutStatus.ROLLED_BACK, "on-call asked")
    assert b.state("shop.quote") == stored


async def test_a_worker_that_only_routes_sees_a_rollback_within_refresh_every(
    stores: tuple[RolloutStore, RolloutStore],
) -> None:
    """Routing alone (no telemetry recorded) re-reads the store once `refresh_every` passed."""
    clock = FakeClock(T0)
    a, b = await _workers(stores, clock)
    await a.rollback("shop.quote", "on-call asked")
    caller = CallContext(actor=Actor.user("user-1"))
    b.version_for("shop.quote", caller)
    assert b.state("shop.quote").status is RolloutStatus.RUNNING  # within the bound
    clock.advance(b.refresh_every)
    b.version_for("shop.quote", caller)
    for _ in range(200):
        if b.state("shop.quote").status is RolloutStatus.ROLLED_BACK:
            break
        await asyncio.sleep(0.01)
    assert b.state("shop.quote").status is RolloutStatus.ROLLED_BACK
    callers = [CallContext(actor=Actor.user(f"user-{i}")) for i in range(300)]
    assert {b.version_for("shop.quote", c) for c in callers} == {1}
