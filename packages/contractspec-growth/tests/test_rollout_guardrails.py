"""Rollout guardrails: refused unsafe plans, honest 'passed' reports, and a simulation of the
default sequential guardrail (false rollbacks <= 5 %, real regressions caught >= 95 %)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import structlog

from contractspec.core import SpecDefinitionError, TelemetrySample
from contractspec.core.testing import FakeClock
from contractspec.growth.rollouts import (
    DEFAULT_STAGES,
    Guardrails,
    RolloutPlan,
    RolloutState,
    RolloutStatus,
    SpecExperimentController,
)

T0 = datetime(2024, 6, 1, tzinfo=UTC)
MEDIAN_MS, SIGMA = 50.0, 0.5  # log-normal latencies: median 50 ms, p99 about 160 ms


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Thousands of simulated rollouts would otherwise log a line each."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    yield
    structlog.reset_defaults()


def _sample(version: int, *, ok: bool = True, ms: float = 5.0) -> TelemetrySample:
    return TelemetrySample(
        operation="shop.quote", version=version, variant=version, org_id=None, actor_id="u",
        channel="api", duration_ms=ms, success=ok,
        error_code=None if ok else "internal_error", payload_size=None, trace_id=None,
        timestamp=T0,
    )  # fmt: skip


def test_min_samples_below_the_guardrails_min_samples_is_refused() -> None:
    """A plan whose stages could advance before any guardrail judged is refused, naming the field."""
    with pytest.raises(SpecDefinitionError, match=r"min_samples \(10\) is below") as info:
        RolloutPlan("shop.quote", candidate=2, baseline=1, min_samples=10)
    assert info.value.details["field"] == "min_samples"
    with pytest.raises(SpecDefinitionError, match="nothing would ever judge") as nothing:
        Guardrails(sequential=False)
    assert nothing.value.details["field"] == "sequential"


async def test_a_candidate_that_always_fails_never_completes() -> None:
    """Every candidate call failing: rolled back at the first stage, never reported as passed."""
    controller = SpecExperimentController(clock=FakeClock(T0))
    await controller.start(
        RolloutPlan("shop.quote", candidate=2, baseline=1, min_dwell=timedelta(0))
    )
    for _ in range(5000):
        controller.record(_sample(1))
        controller.record(_sample(2, ok=False))
        if controller.state("shop.quote").status is not RolloutStatus.RUNNING:
            break
    state = controller.state("shop.quote")
    assert (state.status, state.coverage) == (RolloutStatus.ROLLED_BACK, 0.0)
    assert [h["event"] for h in state.history] == ["started", "rolled_back"]
    assert state.reason is not None
    assert state.reason.startswith("sequential test: error rate of version 2 is higher")


async def test_guardrails_that_could_not_run_hold_the_stage() -> None:
    """Without baseline calls the sequential comparison cannot run: the stage never advances,
    however many candidate calls pass, and nothing claims the guardrails passed."""
    controller = SpecExperimentController(clock=FakeClock(T0))
    await controller.start(
        RolloutPlan("shop.quote", candidate=2, baseline=1, min_dwell=timedelta(0))
    )
    for _ in range(1000):
        controller.record(_sample(2))
    state = controller.state("shop.quote")
    assert (state.status, state.stage) == (RolloutStatus.RUNNING, 0)
    assert [h["event"] for h in state.history] == ["started"]


async def test_completion_names_the_guardrails_that_ran() -> None:
    """A completed rollout's reason and history list the checks that judged each stage."""
    controller = SpecExperimentController(clock=FakeClock(T0))
    await controller.start(
        RolloutPlan(
            "shop.quote",
            candidate=2,
            baseline=1,
            stages=(0.5, 1.0),
            min_samples=150,
            min_dwell=timedelta(0),
            guardrails=Guardrails(max_error_rate=0.5),
        )
    )
    rng = np.random.default_rng(5)
    for ms in rng.lognormal(np.log(MEDIAN_MS), SIGMA, 1000):
        controller.record(_sample(1, ms=float(ms)))
        controller.record(_sample(2, ms=float(ms)))
    state = controller.state("shop.quote")
    assert state.status is RolloutStatus.COMPLETED
    checks = (
        "error rate <= 50.0%; sequential comparison with version 1 (error rate, mean latency, "
        "share of calls slower than version 1's p99)"
    )
    assert state.reason == f"all 2 stages passed their guardrails: {checks}"
    assert [h["guardrails"] for h in state.history[1:]] == [checks.split("; "), checks.split("; ")]


# --------------------------------------------------------------------------- simulation


async def _simulate(
    rng: np.random.Generator, *, error_rate: float, failure_ratio: float, latency_ratio: float
) -> RolloutState:
    """One rollout with the default plan and guardrails (dwell 0, so every stage lasts its
    `min_samples` = 100 candidate calls): callers hit the candidate with the stage's coverage,
    the baseline otherwise; baseline calls fail with `error_rate` and take log-normal latencies,
    candidate calls fail `failure_ratio` times as often and take `latency_ratio` times as long."""
    controller = SpecExperimentController(clock=FakeClock(T0))
    await controller.start(
        RolloutPlan("shop.quote", candidate=2, baseline=1, min_dwell=timedelta(0))
    )
    size = 20_000
    base_ok = rng.random(size) >= error_rate
    base_ms = rng.lognormal(np.log(MEDIAN_MS), SIGMA, size)
    cand_ok = rng.random(size) >= error_rate * failure_ratio
    cand_ms = rng.lognormal(np.log(MEDIAN_MS), SIGMA, size) * latency_ratio
    b = c = 0
    while (state := controller.state("shop.quote")).status is RolloutStatus.RUNNING:
        for _ in range(int(rng.geometric(state.coverage)) - 1):  # baseline calls in between
            controller.record(_sample(1, ok=bool(base_ok[b % size]), ms=float(base_ms[b % size])))
            b += 1
        controller.record(_sample(2, ok=bool(cand_ok[c]), ms=float(cand_ms[c])))
        c += 1
    return state


def _rolled_back_before_full(state: RolloutState) -> bool:
    return state.status is RolloutStatus.ROLLED_BACK and state.history[-2]["coverage"] < 1.0


async def test_simulated_equal_candidate_is_rolled_back_at_most_5_percent() -> None:
    """60 rollouts of a candidate equal to the control (2 % errors, same latencies), default
    stages and guardrails: at most 5 % are rolled back at any stage."""
    assert DEFAULT_STAGES == (0.01, 0.10, 0.50, 1.0)
    rng = np.random.default_rng(20240601)
    states = [
        await _simulate(rng, error_rate=0.02, failure_ratio=1.0, latency_ratio=1.0)
        for _ in range(60)
    ]
    rolled_back = sum(s.status is RolloutStatus.ROLLED_BACK for s in states)
    assert rolled_back <= 3, [s.reason for s in states if s.reason and "sequential" in s.reason]


async def test_simulated_triple_error_rate_is_rolled_back_before_100_percent() -> None:
    """A candidate failing 3x as often as the control (5 % -> 15 %) is rolled back before it
    serves everyone in at least 95 % of 40 simulated rollouts."""
    rng = np.random.default_rng(7)
    states = [
        await _simulate(rng, error_rate=0.05, failure_ratio=3.0, latency_ratio=1.0)
        for _ in range(40)
    ]
    caught = sum(_rolled_back_before_full(s) for s in states)
    assert caught >= 38, caught


async def test_simulated_half_again_slower_p99_is_rolled_back_before_100_percent() -> None:
    """A candidate whose latencies are 1.5x the control's (p99 +50 %) is rolled back before it
    serves everyone in at least 95 % of 40 simulated rollouts."""
    rng = np.random.default_rng(8)
    states = [
        await _simulate(rng, error_rate=0.02, failure_ratio=1.0, latency_ratio=1.5)
        for _ in range(40)
    ]
    caught = sum(_rolled_back_before_full(s) for s in states)
    assert caught >= 38, caught
