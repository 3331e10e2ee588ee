"""Bandit policies choose deterministically per seed, log propensities and learn from rewards."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math

import attrs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy import stats as sps

from contractspec.core.errors import (
    ConflictError,
    NotFoundError,
    SpecValidationError,
)
from contractspec.core.ports import UuidGenerator
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.growth.bandits import (
    BanditDecision,
    BanditPolicy,
    BanditService,
    DecisionLog,
    LinearIGW,
    MemoryDecisionLog,
    ThompsonSampling,
    ips_estimate,
)

FIXED = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


async def _bernoulli_run(
    policy: ThompsonSampling, rates: dict[str, float], rounds: int, seed: int
) -> list[str]:
    env = np.random.default_rng(seed)
    service = BanditService(policy, clock=FakeClock(FIXED))
    arms = []
    for _ in range(rounds):
        d = await service.choose()
        await service.reward(d.decision_id, float(env.random() < rates[d.arm]))
        arms.append(d.arm)
    return arms


async def test_same_seed_replays_the_same_decisions() -> None:
    """Two services with the same seed and rewards make identical choices; another seed differs."""
    rates = {"a": 0.2, "b": 0.25, "c": 0.3}
    one = await _bernoulli_run(ThompsonSampling("t", list(rates), seed=1), rates, 200, seed=9)
    two = await _bernoulli_run(ThompsonSampling("t", list(rates), seed=1), rates, 200, seed=9)
    other = await _bernoulli_run(ThompsonSampling("t", list(rates), seed=2), rates, 200, seed=9)
    assert one == two
    assert one != other


def test_a_decision_replays_by_id_whatever_ran_before() -> None:
    """The same decision id on the same posterior gives the same arm and distribution."""
    policy = ThompsonSampling("t", ["a", "b", "c"], seed=5)
    first = policy.choose(decision_id="order-17")
    for i in range(10):
        policy.choose(decision_id=f"other-{i}")
    assert policy.choose(decision_id="order-17") == first


async def test_thompson_learns_the_best_arm() -> None:
    """With success rates 5 %, 10 % and 20 %, the 20 % arm gets most of the last 500 plays."""
    rates = {"low": 0.05, "mid": 0.10, "high": 0.20}
    arms = await _bernoulli_run(
        ThompsonSampling("t", list(rates), seed=3, propensity_samples=200), rates, 2000, seed=4
    )
    last = arms[-500:]
    assert last.count("high") / 500 > 0.8


def test_thompson_propensity_matches_the_exact_two_arm_probability() -> None:
    """For two Beta posteriors the logged propensity is within Monte Carlo error of P(X_b > X_a)."""
    policy = ThompsonSampling("t", ["a", "b"], seed=11, propensity_samples=20_000)
    for reward in [1, 0, 0, 1, 0]:
        policy.update("a", reward)
    for reward in [1, 1, 0, 1, 1, 1]:
        policy.update("b", reward)
    (aa, ba), (ab, bb) = policy.posterior("a"), policy.posterior("b")
    exact, _ = integrate.quad(lambda x: sps.beta.pdf(x, ab, bb) * sps.beta.cdf(x, aa, ba), 0, 1)
    _, probs, _ = policy.choose(decision_id="d")
    assert probs["b"] == pytest.approx(exact, abs=0.01)
    assert probs["a"] + probs["b"] == 1.0
    assert (aa, ba, ab, bb) == (3.0, 4.0, 6.0, 2.0)


async def test_service_logs_propensities_and_rewards() -> None:
    """Each decision is logged with its arm's propensity; the reward updates the posterior."""
    policy = ThompsonSampling("cta", ["blue", "green"], seed=7)
    log = MemoryDecisionLog()
    service = BanditService(policy, log=log, clock=FakeClock(FIXED))
    decision = await service.choose(decision_id="req-1")
    assert decision.propensity == decision.probabilities[decision.arm] > 0
    assert sum(decision.probabilities.values()) == pytest.approx(1.0)
    assert (decision.policy, decision.context, decision.decided_at) == ("cta", None, FIXED)
    assert await log.get("req-1") == decision
    rewarded = await service.reward("req-1", 1.0)
    assert rewarded == attrs.evolve(decision, reward=1.0)
    assert (await log.get("req-1")).reward == 1.0
    assert policy.posterior(decision.arm) == (2.0, 1.0)
    assert isinstance(policy, BanditPolicy)
    assert isinstance(log, DecisionLog)


async def test_rewards_are_recorded_once_and_for_known_decisions() -> None:
    """A second reward conflicts, an unknown id is not found, a reused id conflicts."""
    policy = ThompsonSampling("t", ["a", "b"], seed=0)
    service = BanditService(policy)
    d = await service.choose(decision_id="x")
    await service.reward("x", 0.0)
    with pytest.raises(ConflictError, match=r"'x' already has reward 0\.0"):
        await service.reward("x", 1.0)
    with pytest.raises(NotFoundError, match="no decision 'nope'"):
        await service.reward("nope", 1.0)
    with pytest.raises(ConflictError, match="'x' is already logged"):
        await service.choose(decision_id="x")
    assert d.reward is None
    assert policy.posterior(d.arm) == (1.0, 2.0)


async def test_concurrent_rewards_update_the_policy_once() -> None:
    """Eight concurrent rewards of one decision: one wins, seven conflict, the posterior moves once."""
    policy = ThompsonSampling("t", ["a", "b"], seed=0)
    service = BanditService(policy)
    d = await service.choose(decision_id="x")
    results = await asyncio.gather(
        *(service.reward("x", 1.0) for _ in range(8)), return_exceptions=True
    )
    assert [type(r).__name__ for r in results].count("BanditDecision") == 1
    assert [type(r).__name__ for r in results].count("ConflictError") == 7
    assert policy.posterior(d.arm) == (2.0, 1.0)


async def test_thompson_rejects_rewards_outside_unit_interval() -> None:
    """A reward of 5 is refused with the fix named, and the log and posterior are untouched."""
    policy = ThompsonSampling("t", ["a", "b"], seed=0)
    service = BanditService(policy)
    d = await service.choose()
    with pytest.raises(SpecValidationError, match=r"\[0, 1\]") as info:
        await service.reward(d.decision_id, 5.0)
    assert info.value.details["field"] == "reward"
    assert (await service.log.get(d.decision_id)).reward is None
    assert policy.posterior(d.arm) == (1.0, 1.0)
    assert (await service.reward(d.decision_id, 1.0)).reward == 1.0


async def test_a_shared_log_refuses_rewards_through_another_policy() -> None:
    """Rewarding policy b's decision through policy a's service is refused; b can still reward it."""
    log = MemoryDecisionLog()
    a = BanditService(ThompsonSampling("a", ["x", "y"], seed=0), log=log)
    policy_b = ThompsonSampling("b", ["x", "y"], seed=0)
    b = BanditService(policy_b, log=log)
    d = await b.choose(decision_id="d1")
    with pytest.raises(SpecValidationError, match="made by policy 'b', not 'a'") as info:
        await a.reward("d1", 1.0)
    assert info.value.details["field"] == "decision_id"
    assert (await b.reward("d1", 1.0)).reward == 1.0
    assert [x.decision_id for x in await a.decisions()] == []
    assert [x.decision_id for x in await b.decisions()] == ["d1"]
    assert policy_b.posterior(d.arm) == (2.0, 1.0)


@settings(max_examples=30, deadline=None)
@given(st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, True]), st.text(max_size=3)))
async def test_non_numeric_or_non_finite_rewards_are_refused(reward: object) -> None:
    """NaN, infinities, booleans and strings are refused for both policies before the log changes."""
    for policy in (
        ThompsonSampling("t", ["a", "b"], seed=0),
        LinearIGW("i", ["a", "b"], n_features=1, seed=0),
    ):
        service = BanditService(policy)
        d = await service.choose(None if isinstance(policy, ThompsonSampling) else [1.0])
        with pytest.raises(SpecValidationError) as info:
            await service.reward(d.decision_id, reward)  # type: ignore[arg-type]
        assert info.value.details["field"] == "reward"
        assert (await service.log.get(d.decision_id)).reward is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"arms": ["a"]}, "arms"),
        ({"arms": ["a", "a"]}, "arms"),
        ({"seed": -1}, "seed"),
        ({"prior": (0.0, 1.0)}, "prior"),
        ({"propensity_samples": 0}, "propensity_samples"),
    ],
)
def test_thompson_bad_configuration(kwargs: dict[str, object], field: str) -> None:
    """Bad arms, seeds or priors raise SpecValidationError naming the field."""
    params: dict[str, object] = {"arms": ["a", "b"], "seed": 1, **kwargs}
    with pytest.raises(SpecValidationError) as info:
        ThompsonSampling("t", **params)  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_inverse_gap_weighting_formula() -> None:
    """p(a) = 1 / (K + gamma * gap) for non-best arms and the rest for the best arm."""
    policy = LinearIGW("igw", ["a", "b", "c"], n_features=1, seed=0, gamma=10.0, ridge=1.0)
    for _ in range(50):
        policy.update("a", 1.0, [1.0])
        policy.update("b", 0.5, [1.0])
        policy.update("c", 0.0, [1.0])
    preds = policy.predict([1.0])
    assert preds == pytest.approx({"a": 50 / 51, "b": 25 / 51, "c": 0.0})
    probs = policy.probabilities([1.0])
    p_b = 1 / (3 + 10 * (50 / 51 - 25 / 51))
    p_c = 1 / (3 + 10 * (50 / 51))
    assert probs == pytest.approx({"a": 1 - p_b - p_c, "b": p_b, "c": p_c})


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=3, max_size=3),
    st.floats(0.1, 1000),
    st.integers(0, 30),
)
def test_igw_distribution_is_valid(context: list[float], gamma: float, updates: int) -> None:
    """Probabilities are positive, sum to 1 and favour the best predicted arm."""
    policy = LinearIGW("igw", ["a", "b", "c", "d"], n_features=3, seed=1, gamma=gamma)
    rng = np.random.default_rng(updates)
    for _ in range(updates):
        policy.update(
            str(rng.choice(["a", "b", "c", "d"])), float(rng.normal()), rng.normal(size=3).tolist()
        )
    probs = policy.probabilities(context)
    preds = policy.predict(context)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-12)
    assert min(probs.values()) > 0
    assert probs[max(preds, key=lambda a: preds[a])] == max(probs.values())


async def test_linear_igw_learns_a_contextual_rule() -> None:
    """After 2000 rounds the policy plays the arm that is best for each context most of the time."""
    true_theta = {
        "news": np.array([0.8, -0.6, 0.1]),
        "sports": np.array([-0.5, 0.7, 0.1]),
        "none": np.array([0.0, 0.0, 0.3]),
    }
    policy = LinearIGW("igw", list(true_theta), n_features=3, seed=4, gamma=200.0)
    service = BanditService(policy, clock=FakeClock(FIXED))
    env = np.random.default_rng(8)
    best_hits = []
    for _ in range(2000):
        x = np.array([env.random(), env.random(), 1.0])
        d = await service.choose(x.tolist())
        await service.reward(d.decision_id, float(true_theta[d.arm] @ x + env.normal(0, 0.1)))
        best = max(true_theta, key=lambda a: float(true_theta[a] @ x))
        best_hits.append(d.arm == best)
    assert sum(best_hits[-500:]) / 500 > 0.85
    logged = await service.decisions()
    assert len(logged) == 2000
    assert all(0 < d.propensity <= 1 and len(d.context or ()) == 3 for d in logged)


def test_linear_igw_needs_a_well_formed_context() -> None:
    """A missing or wrongly sized context raises SpecValidationError."""
    policy = LinearIGW("igw", ["a", "b"], n_features=2, seed=0)
    with pytest.raises(SpecValidationError, match="needs a context"):
        policy.choose()
    with pytest.raises(SpecValidationError, match="2 finite numbers"):
        policy.choose([1.0, 2.0, 3.0])
    with pytest.raises(SpecValidationError, match="unknown arm 'z'"):
        policy.update("z", 1.0, [1.0, 0.0])


async def test_ips_recovers_the_value_of_another_policy() -> None:
    """From uniformly logged decisions, IPS estimates an always-'b' policy's click rate."""
    rates = {"a": 0.1, "b": 0.3}
    policy = ThompsonSampling("t", list(rates), seed=1, propensity_samples=50)
    service = BanditService(policy, clock=FakeClock(FIXED))
    env = np.random.default_rng(12)
    # Uniform logging: never update the policy, so every decision has propensity ~ 1/2.
    decisions = []
    for _ in range(4000):
        d = await service.choose()
        reward = float(env.random() < rates[d.arm])
        decisions.append(await service.log.set_reward(d.decision_id, reward))
    assert await service.decisions(rewarded=True) == decisions
    estimate = ips_estimate(decisions, lambda d: {"b": 1.0})
    snips = ips_estimate(decisions, lambda d: {"b": 1.0}, self_normalized=True)
    observed_b = np.mean([d.reward for d in decisions if d.arm == "b"])
    assert estimate == pytest.approx(0.3, abs=0.03)
    assert snips == pytest.approx(observed_b, abs=0.02)
    with pytest.raises(SpecValidationError, match="at least one rewarded"):
        ips_estimate([], lambda d: {"b": 1.0})


def test_policy_state_round_trips_through_json() -> None:
    """state() is JSON and from_state() rebuilds a policy that decides identically."""
    ts = ThompsonSampling("t", ["a", "b"], seed=3)
    ts.update("a", 1.0)
    ts.choose()
    clone = ThompsonSampling.from_state(json.loads(json.dumps(ts.state())))
    assert clone.choose() == ts.choose()
    igw = LinearIGW("i", ["a", "b"], n_features=2, seed=3)
    igw.update("b", 2.0, [1.0, 0.5])
    igw_clone = LinearIGW.from_state(json.loads(json.dumps(igw.state())))
    assert igw_clone.choose([0.3, 1.0]) == igw.choose([0.3, 1.0])


def test_decision_is_a_frozen_record() -> None:
    """Logged decisions cannot be mutated after the fact."""
    d = BanditDecision("d", "p", "a", 0.5, {"a": 0.5, "b": 0.5}, None, FIXED)
    with pytest.raises(AttributeError):
        d.reward = 1.0  # type: ignore[misc]


def test_sync_methods_serve_scripts_and_notebooks() -> None:
    """choose_sync/reward_sync/decisions_sync run on one loop per service and match the async API."""
    policy = ThompsonSampling("t", ["a", "b"], seed=3)
    with BanditService(policy, clock=FakeClock(FIXED)) as service:
        first = service.choose_sync(decision_id="one")
        rewarded = service.reward_sync("one", 1.0)
        second = service.choose_sync()
        assert rewarded == attrs.evolve(first, reward=1.0)
        assert service.decisions_sync() == [rewarded, second]
        assert service.decisions_sync(rewarded=False) == [second]
        assert second.decision_id == "t:1"
        assert policy.posterior(first.arm) == (2.0, 1.0)
        loop_runner = service._runner
        assert loop_runner is not None
    assert service._runner is None
    assert service.choose_sync().decision_id == "t:2"  # a closed service starts a new loop
    service.close()


async def test_sync_methods_work_inside_a_running_loop() -> None:
    """Inside a running event loop (a Jupyter cell) the *_sync methods run on the service's own
    loop thread and see the same state as the async methods."""
    service = BanditService(ThompsonSampling("t", ["a", "b"], seed=3))
    try:
        first = service.choose_sync()
        rewarded = service.reward_sync(first.decision_id, 1.0)
        assert rewarded.reward == 1.0
        assert [d.decision_id for d in service.decisions_sync()] == [first.decision_id]
        assert [d.decision_id for d in await service.decisions()] == [first.decision_id]
        assert service._runner is not None
    finally:
        service.close()
    assert service._runner is None


async def test_an_id_generator_names_decisions() -> None:
    """With ids=, decisions without an explicit id take the generator's ids, replayably."""
    service = BanditService(ThompsonSampling("t", ["a", "b"], seed=3), ids=SequentialIds("req"))
    d1 = await service.choose()
    d2 = await service.choose(decision_id="mine")
    d3 = await service.choose()
    assert [d1.decision_id, d2.decision_id, d3.decision_id] == ["req-000001", "mine", "req-000002"]
    replay = ThompsonSampling("t", ["a", "b"], seed=3).choose(decision_id="req-000002")
    assert (d3.arm, d3.probabilities) == replay[:2]
    uuid_service = BanditService(ThompsonSampling("t", ["a", "b"], seed=3), ids=UuidGenerator())
    assert len((await uuid_service.choose()).decision_id) == 36


async def test_a_restarted_counter_explains_the_conflict() -> None:
    """A fresh policy on a log that outlived it reuses 't:1'; the conflict says how to fix it."""
    log = MemoryDecisionLog()
    await BanditService(ThompsonSampling("t", ["a", "b"], seed=3), log=log).choose()
    restarted = BanditService(ThompsonSampling("t", ["a", "b"], seed=3), log=log)
    with pytest.raises(ConflictError, match=r"'t:1' is already logged.*ids=UuidGenerator\(\)"):
        await restarted.choose()
    assert [d.decision_id for d in await log.decisions()] == ["t:1"]


VALID = {
    "decision_id": "d",
    "policy": "p",
    "arm": "a",
    "propensity": 0.5,
    "probabilities": {"a": 0.5, "b": 0.5},
    "context": None,
    "decided_at": FIXED,
}
BAD_FIELDS = st.one_of(
    st.tuples(st.just("decision_id"), st.sampled_from(["", "x" * 201, None, 3])),
    st.tuples(st.just("policy"), st.sampled_from(["", "p" * 201, None])),
    st.tuples(st.just("arm"), st.sampled_from(["", None])),
    st.tuples(
        st.just("propensity"),
        st.one_of(
            st.floats(max_value=0.0),
            st.floats(min_value=1.0, exclude_min=True),
            st.sampled_from([math.nan, "0.5", True]),
        ),
    ),
    st.tuples(
        st.just("probabilities"),
        st.sampled_from([{"b": 1.0}, {"a": 1.5}, {"a": math.nan}, {"a": 0.5, "": 0.5}, [0.5]]),
    ),
    st.tuples(
        st.just("context"),
        st.sampled_from([[math.inf], ["x"], "abc", 3.0, [1.0, math.nan]]),
    ),
    st.tuples(st.just("decided_at"), st.sampled_from([dt.datetime(2024, 6, 1), "2024-06-01"])),
    st.tuples(st.just("reward"), st.sampled_from([math.nan, math.inf, "1"])),
)


@settings(max_examples=80, deadline=None)
@given(BAD_FIELDS)
def test_malformed_decisions_are_refused(bad: tuple[str, object]) -> None:
    """A malformed field raises SpecValidationError naming that field, whatever the bad value."""
    field, value = bad
    with pytest.raises(SpecValidationError) as info:
        BanditDecision(**{**VALID, field: value})  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_decisions_normalise_numbers_and_contexts() -> None:
    """NumPy numbers become floats and a list context becomes a tuple of floats."""
    d = BanditDecision(
        "d",
        "p",
        "a",
        np.float64(0.25),
        {"a": np.float32(0.25), "b": 0.75},
        np.array([1, 2]),  # type: ignore[arg-type]
        FIXED,
        reward=np.int64(1),  # type: ignore[arg-type]
    )
    assert (d.propensity, d.probabilities, d.context, d.reward) == (
        0.25,
        {"a": 0.25, "b": 0.75},
        (1.0, 2.0),
        1.0,
    )
    assert [type(v) for v in (d.propensity, d.probabilities["a"], d.context[0], d.reward)] == [
        float
    ] * 4


def test_ips_estimate_never_drops_decisions_without_a_reward() -> None:
    """Unrewarded decisions are refused by default, or count as reward 0 when asked."""
    decided = [
        BanditDecision(f"d{i}", "p", arm, 0.5, {"a": 0.5, "b": 0.5}, None, FIXED, reward)
        for i, (arm, reward) in enumerate([("b", 1.0), ("b", None), ("a", 0.0), ("b", None)])
    ]
    with pytest.raises(SpecValidationError, match="2 decision\\(s\\) without a reward") as info:
        ips_estimate(decided, lambda d: {"b": 1.0})
    assert info.value.details["decision_id"] == "d1"
    # always-b: weights 2 for each b decision; rewards 1, 0, -, 0 over 4 decisions
    assert ips_estimate(decided, lambda d: {"b": 1.0}, missing_reward="zero") == 0.5
    with pytest.raises(SpecValidationError, match="missing_reward must be"):
        ips_estimate(decided, lambda d: {"b": 1.0}, missing_reward="skip")  # type: ignore[arg-type]
