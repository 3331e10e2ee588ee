"""Guarded staged rollouts: stages, dwell, windows, guardrails, persistence, executor routing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from growth_a_app import build_registry
from growth_a_stores import sql_engine_for

from contractspec.core import (
    Actor,
    CallContext,
    ConflictError,
    ContractSpecError,
    Executor,
    NotFoundError,
    SpecDefinitionError,
    TelemetrySample,
)
from contractspec.core.testing import FakeClock
from contractspec.growth.experiments import (
    ExperimentRegistry,
    ExperimentRunner,
    Variation,
    define_experiment,
)
from contractspec.growth.rollouts import (
    Guardrails,
    MemoryRolloutStore,
    RolloutPlan,
    RolloutState,
    RolloutStatus,
    RolloutStore,
    SpecExperimentController,
    SqlRolloutStore,
    create_variant_resolver,
)

T0 = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.fixture
async def store(backend_kind: str, tmp_path: Path) -> AsyncIterator[RolloutStore]:
    """A rollout store on memory, a SQLite file or a PostgreSQL schema."""
    async with sql_engine_for(backend_kind, tmp_path) as engine:
        if engine is None:
            yield MemoryRolloutStore()
            return
        sql = SqlRolloutStore(engine)
        await sql.create_all()
        yield sql


def _sample(
    version: int, *, ok: bool = True, ms: float = 5.0, code: str | None = None
) -> TelemetrySample:
    return TelemetrySample(
        operation="shop.quote", version=version, variant=version, org_id=None, actor_id="u",
        channel="api", duration_ms=ms, success=ok,
        error_code=None if ok else (code or "internal_error"), payload_size=None, trace_id=None,
        timestamp=T0,
    )  # fmt: skip


async def test_stages_advance_only_after_samples_and_dwell_and_persist(store: RolloutStore) -> None:
    """1% -> 10% -> 50% -> 100% needs min samples AND min dwell per stage; state is persisted."""
    clock = FakeClock(T0)
    controller = SpecExperimentController(store, registry=build_registry(), clock=clock)
    plan = RolloutPlan("shop.quote", candidate=2, min_samples=30, min_dwell=timedelta(minutes=10))
    state = await controller.start(plan)
    assert (state.stage, state.coverage, state.plan.baseline) == (0, 0.01, 1)
    for _ in range(30):
        controller.record(_sample(1))
        controller.record(_sample(2))
    assert controller.state("shop.quote").coverage == 0.01  # samples, but no dwell yet
    clock.advance(timedelta(minutes=10))
    await controller.evaluate()
    assert controller.state("shop.quote").coverage == 0.10
    assert controller.window("shop.quote", 2) == (0, 0, None)  # windowed per stage
    clock.advance(timedelta(hours=1))
    for _ in range(29):
        controller.record(_sample(1))
        controller.record(_sample(2))
    assert controller.state("shop.quote").coverage == 0.10  # dwell, but 29 < 30 samples
    controller.record(_sample(2))
    assert controller.state("shop.quote").coverage == 0.50
    for _ in range(2):
        clock.advance(timedelta(minutes=10))
        for _ in range(30):
            controller.record(_sample(1))
            controller.record(_sample(2))
    await controller.flush()
    final = await store.load("shop.quote")
    assert final is not None
    assert (final.status, final.coverage, final.stage) == (RolloutStatus.COMPLETED, 1.0, 3)
    assert [h["event"] for h in final.history] == [
        "started",
        "advanced",
        "advanced",
        "advanced",
        "completed",
    ]
    assert [h["coverage"] for h in final.history] == [0.01, 0.10, 0.50, 1.0, 1.0]
    assert final.plan == controller.state("shop.quote").plan
    resumed = SpecExperimentController(store, clock=clock)
    assert [s.status for s in await resumed.load()] == [RolloutStatus.COMPLETED]


class _HeldRead(MemoryRolloutStore):
    """Holds the next `all()` after it has read, until `release` is set (a slow refresh)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold_next = False
        self.release = asyncio.Event()

    async def all(self) -> list[RolloutState]:
        states = await super().all()
        if self.hold_next:
            self.hold_next = False
            await self.release.wait()
        return states


async def test_a_refresh_that_read_before_an_advance_does_not_undo_it() -> None:
    """A background refresh reads the 1% stage; the controller then advances to 10% and stores
    it; the refresh's stale result arrives afterwards and must not put the rollout back."""
    clock = FakeClock(T0)
    store = _HeldRead()
    controller = SpecExperimentController(store, registry=build_registry(), clock=clock)
    plan = RolloutPlan("shop.quote", candidate=2, min_samples=30, min_dwell=timedelta(minutes=10))
    await controller.start(plan)
    store.hold_next = True
    controller.record(_sample(1))  # starts the background refresh, which reads the 1% stage
    await asyncio.sleep(0)
    assert not store.hold_next  # the background refresh has read and is held
    for _ in range(30):
        controller.record(_sample(1))
        controller.record(_sample(2))
    clock.advance(timedelta(minutes=10))
    await controller.evaluate()
    advanced = controller.state("shop.quote")
    assert advanced is not None
    assert (advanced.stage, advanced.coverage) == (1, 0.10)
    store.release.set()
    for _ in range(5):  # let the held refresh finish
        await asyncio.sleep(0)
    assert controller.state("shop.quote") == advanced
    stored = await store.load("shop.quote")
    assert stored is not None
    assert stored.version == advanced.version


async def test_error_rate_breach_rolls_back_at_once_with_reason(store: RolloutStore) -> None:
    """Above 5% failed candidate calls (after 20 calls), coverage drops to 0 immediately."""
    controller = SpecExperimentController(store, registry=build_registry(), clock=FakeClock(T0))
    await controller.start(
        RolloutPlan("shop.quote", candidate=2, guardrails=Guardrails(max_error_rate=0.05))
    )
    for i in range(19):
        controller.record(_sample(2, ok=i != 0))  # 1 failure in 19: not judged yet
    assert controller.state("shop.quote").status is RolloutStatus.RUNNING
    controller.record(
        _sample(2, ok=False, code="validation_error")
    )  # the caller's fault: not counted
    assert controller.state("shop.quote").status is RolloutStatus.RUNNING
    controller.record(_sample(2, ok=False))
    state = controller.state("shop.quote")
    assert (state.status, state.coverage) == (RolloutStatus.ROLLED_BACK, 0.0)
    assert state.reason == "error rate 9.5% > 5.0% over 21 calls of version 2 at stage 1 (1%)"
    await controller.flush()
    stored = await store.load("shop.quote")
    assert stored is not None
    assert (stored.status, stored.reason) == (RolloutStatus.ROLLED_BACK, state.reason)
    assert stored.history[-1]["event"] == "rolled_back"


async def test_a_real_guardrail_breach_through_the_executor() -> None:
    """Driven through Executor: version 2 fails 1 call in 8, the rollout rolls back, traffic returns to v1."""
    registry = build_registry(v2_fails_every=8)
    clock = FakeClock(T0)
    controller = SpecExperimentController(registry=registry, clock=clock)
    await controller.start(
        RolloutPlan(
            "shop.quote",
            candidate=2,
            stages=(0.1, 0.5, 1.0),
            min_samples=50,
            min_dwell=timedelta(0),
            guardrails=Guardrails(max_error_rate=0.05, sequential=False),
        )
    )
    executor = Executor(
        registry, variants=create_variant_resolver(controller), telemetry=controller, clock=clock
    )
    served: dict[int, int] = {1: 0, 2: 0}
    errors: list[str] = []
    for i in range(2000):
        ctx = CallContext(actor=Actor.user(f"user-{i}"))
        try:
            out = await executor.execute("shop.quote", {"amount": 3}, ctx)
        except ContractSpecError as exc:
            errors.append(exc.code)
            continue
        served[out.version] += 1  # type: ignore[attr-defined]
        if controller.state("shop.quote").status is RolloutStatus.ROLLED_BACK:
            break
    state = controller.state("shop.quote")
    assert state.status is RolloutStatus.ROLLED_BACK
    calls, failed, _ = controller.window("shop.quote", 2)
    assert (
        state.reason
        == f"error rate {failed / calls:.1%} > 5.0% over {calls} calls of version 2 at stage 1 (10%)"
    )
    assert (calls, failed) == (20, 2)  # v2 failed its 8th and 16th calls
    assert errors == ["internal_error", "internal_error"]
    assert served[2] == 18
    after = [
        (
            await executor.execute(
                "shop.quote", {"amount": 1}, CallContext(actor=Actor.user(f"user-{i}"))
            )
        ).version  # type: ignore[attr-defined]
        for i in range(200)
    ]
    assert set(after) == {1}


async def test_p99_latency_breach_through_the_executor() -> None:
    """A candidate whose p99 exceeds the guardrail (here 5 ms, v2 sleeps 20 ms) is rolled back."""
    registry = build_registry(v2_sleep_s=0.02)
    controller = SpecExperimentController(registry=registry, clock=FakeClock(T0))
    await controller.start(
        RolloutPlan(
            "shop.quote",
            candidate=2,
            stages=(0.5, 1.0),
            guardrails=Guardrails(max_p99_ms=5.0, min_samples=5),
        )
    )
    executor = Executor(
        registry, variants=create_variant_resolver(controller), telemetry=controller
    )
    for i in range(60):
        await executor.execute("shop.quote", {"amount": 1}, CallContext(actor=Actor.user(f"u{i}")))
    state = controller.state("shop.quote")
    assert state.status is RolloutStatus.ROLLED_BACK
    assert state.reason is not None
    assert state.reason.startswith("p99 latency ")
    assert state.reason.endswith(" ms > 5 ms over 5 calls of version 2 at stage 1 (50%)")


async def test_sequential_guardrail_catches_a_worse_candidate_below_the_threshold() -> None:
    """With sequential=True, 4% failures vs a clean baseline rolls back though 4% < 5%."""
    controller = SpecExperimentController(registry=build_registry(), clock=FakeClock(T0))
    await controller.start(
        RolloutPlan("shop.quote", candidate=2, guardrails=Guardrails(sequential=True))
    )
    for i in range(3000):
        controller.record(_sample(1))
        controller.record(_sample(2, ok=i % 25 != 24))
        if controller.state("shop.quote").status is RolloutStatus.ROLLED_BACK:
            break
    state = controller.state("shop.quote")
    assert state.status is RolloutStatus.ROLLED_BACK
    assert state.reason is not None
    assert state.reason.startswith(
        "sequential test: error rate of version 2 is higher than version 1's"
    )


async def test_raising_coverage_keeps_every_candidate_caller_on_the_candidate() -> None:
    """Callers routed to the candidate at one stage stay there at every later stage."""
    clock = FakeClock(T0)
    controller = SpecExperimentController(registry=build_registry(), clock=clock)
    await controller.start(
        RolloutPlan(
            "shop.quote",
            candidate=2,
            min_samples=1,
            min_dwell=timedelta(0),
            guardrails=Guardrails(max_error_rate=0.5, min_samples=1, sequential=False),
        )
    )
    contexts = [CallContext(actor=Actor.user(f"user-{i}")) for i in range(3000)]
    previous: set[int] = set()
    shares = []
    for _ in range(3):
        on_candidate = {
            i for i, c in enumerate(contexts) if controller.version_for("shop.quote", c) == 2
        }
        assert previous <= on_candidate
        shares.append(len(on_candidate))
        previous = on_candidate
        controller.record(_sample(2))
    assert controller.state("shop.quote").coverage == 1.0
    assert shares[0] < shares[1] < shares[2] < 3000
    assert controller.version_for("shop.quote", CallContext()) == 1  # anonymous: baseline


async def test_version_experiments_route_through_the_resolver() -> None:
    """An experiment whose variation values are versions routes an A/B test of two versions."""
    registry = build_registry()
    ab = define_experiment("quote-ab", [Variation("v1", 1), Variation("v2", 2)])
    runner = ExperimentRunner(ExperimentRegistry(ab))
    executor = Executor(
        registry,
        variants=create_variant_resolver(runner=runner, experiments={"shop.quote": "quote-ab"}),
    )
    for i in range(50):
        ctx = CallContext(actor=Actor.user(f"user-{i}"))
        out = await executor.execute("shop.quote", {"amount": 1}, ctx)
        assert out.version == runner.assign(ab, ctx).value  # type: ignore[attr-defined]


async def test_plans_and_starts_are_validated() -> None:
    """Bad stages, unknown versions, double starts and missing baselines raise clear errors."""
    with pytest.raises(SpecDefinitionError, match="stages must be increasing fractions"):
        RolloutPlan("shop.quote", candidate=2, stages=(0.5, 0.1, 1.0))
    with pytest.raises(SpecDefinitionError, match="max_error_rate must be a fraction"):
        Guardrails(max_error_rate=5)
    with pytest.raises(SpecDefinitionError, match="both version 2"):
        RolloutPlan("shop.quote", candidate=2, baseline=2)
    controller = SpecExperimentController(registry=build_registry())
    with pytest.raises(
        NotFoundError, match=r"'shop\.quote' has no version 3; registered versions: 1, 2"
    ):
        await controller.start(RolloutPlan("shop.quote", candidate=3))
    with pytest.raises(SpecDefinitionError, match="no older version"):
        await controller.start(RolloutPlan("shop.quote", candidate=1))
    await controller.start(RolloutPlan("shop.quote", candidate=2))
    with pytest.raises(ConflictError, match="already running"):
        await controller.start(RolloutPlan("shop.quote", candidate=2))
    manual = await controller.rollback("shop.quote", "pricing team asked")
    assert (manual.status, manual.reason) == (RolloutStatus.ROLLED_BACK, "pricing team asked")
    with pytest.raises(SpecDefinitionError, match="needs baseline="):
        await SpecExperimentController().start(RolloutPlan("shop.quote", candidate=2))


async def test_pinned_versions_hold_until_a_rollout_starts() -> None:
    """A pinned operation keeps version 1 for everyone until its rollout routes some callers to 2."""
    registry = build_registry()
    controller = SpecExperimentController(registry=registry, clock=FakeClock(T0))
    router = create_variant_resolver(controller, pinned={"shop.quote": 1})
    contexts = [CallContext(actor=Actor.user(f"user-{i}")) for i in range(400)]
    assert {router.resolve("shop.quote", c) for c in contexts} == {1}
    assert router.resolve("other.op", contexts[0]) is None
    await controller.start(RolloutPlan("shop.quote", candidate=2, stages=(0.5, 1.0)))
    assert {router.resolve("shop.quote", c) for c in contexts} == {1, 2}
