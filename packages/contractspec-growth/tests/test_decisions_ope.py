"""Off-policy evaluation against a simulated environment whose true policy values are known exactly.

Four customer segments (drawn uniformly) with a linear Bernoulli reward per arm; a fixed logging
policy with known propensities; target policies whose value is `mean_s Σ_a π(a|s) μ(s, a)`.
Every draw uses a fixed seed, so each assertion is deterministic.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.core.errors import SpecValidationError
from contractspec.core.testing import FakeClock
from contractspec.growth import BanditDecision, BanditService, LinearIGW
from contractspec.growth.decisions import (
    RidgeRewardRegressor,
    doubly_robust,
    evaluate_policy,
    ips,
    snips,
)

T0 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
ARMS = ("none", "pct10", "pct20")
#: Segment features: intercept, "recent buyer", "big spender".
SEGMENTS = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
#: θ per arm: success rate = θ_a · x, in [0.05, 0.85].
THETA = np.array([[0.10, 0.30, 0.05], [0.25, 0.10, 0.20], [0.40, -0.05, 0.30]])
MU = SEGMENTS @ THETA.T  # (segment, arm) true success rates
#: Logging policy per segment (all positive).
LOGGING = np.array([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]])
#: A deterministic target (best arm per segment) and a stochastic one.
BEST = np.eye(3)[np.argmax(MU, axis=1)]
MIXED = np.array([[0.2, 0.4, 0.4], [0.1, 0.8, 0.1], [0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


def true_value(policy: np.ndarray) -> float:
    """The exact value of a per-segment policy: segments are equally likely."""
    return float(np.mean(np.sum(policy * MU, axis=1)))


def target_of(policy: np.ndarray):  # type: ignore[no-untyped-def]
    """`decision -> {arm: p}` for a per-segment policy table (segment read from the context)."""
    lookup = {tuple(x): s for s, x in enumerate(SEGMENTS)}

    def target(d: BanditDecision) -> Mapping[str, float]:
        s = lookup[tuple(d.context or ())]
        return dict(zip(ARMS, policy[s].tolist(), strict=True))

    return target


def simulate(seed: int, n: int, shift: float = 0.0) -> list[BanditDecision]:
    """`n` decisions of the logging policy with Bernoulli rewards (plus `shift`)."""
    rng = np.random.default_rng(seed)
    segments = rng.integers(0, len(SEGMENTS), size=n)
    out = []
    for i, s in enumerate(segments):
        a = int(rng.choice(3, p=LOGGING[s]))
        reward = float(rng.random() < MU[s, a]) + shift
        out.append(
            BanditDecision(
                decision_id=f"d{seed}-{i}",
                policy="logging",
                arm=ARMS[a],
                propensity=float(LOGGING[s, a]),
                probabilities=dict(zip(ARMS, LOGGING[s].tolist(), strict=True)),
                context=tuple(SEGMENTS[s]),
                decided_at=T0,
                reward=reward,
            )
        )
    return out


@pytest.fixture(scope="module")
def replications() -> list[list[BanditDecision]]:
    """300 independent logs of 200 decisions (seeds 0..299)."""
    return [simulate(seed, 200) for seed in range(300)]


@pytest.mark.parametrize("policy", [BEST, MIXED], ids=["deterministic", "stochastic"])
def test_ips_is_unbiased_on_average(
    replications: list[list[BanditDecision]], policy: np.ndarray
) -> None:
    """The mean of 300 IPS estimates is within 3 standard errors of the true value."""
    truth = true_value(policy)
    values = np.array([ips(log, target_of(policy)).value for log in replications])
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert se < 0.01  # the check below is sharp enough to catch a bias of 0.03
    assert abs(values.mean() - truth) < 3 * se


@pytest.mark.parametrize("policy", [BEST, MIXED], ids=["deterministic", "stochastic"])
def test_intervals_cover_the_true_value_at_about_their_nominal_rate(
    replications: list[list[BanditDecision]], policy: np.ndarray
) -> None:
    """95 % intervals of IPS, SNIPS and DR cover the truth in 90-99 % of 300 logs."""
    truth = true_value(policy)
    covered = {"ips": 0, "snips": 0, "dr": 0}
    for log in replications:
        result = evaluate_policy(log, target_of(policy))
        for name in covered:
            covered[name] += getattr(result, name).covers(truth)
    for name, count in covered.items():
        assert 0.90 <= count / len(replications) <= 0.99, (name, count)


def test_doubly_robust_has_less_variance_than_ips_with_a_right_reward_model(
    replications: list[list[BanditDecision]],
) -> None:
    """With a linear (well-specified) reward model, DR's spread over logs is below IPS's and it
    stays unbiased."""
    target = target_of(BEST)
    dr = np.array([doubly_robust(log, target).value for log in replications])
    ip = np.array([ips(log, target).value for log in replications])
    assert dr.std() < 0.8 * ip.std()
    assert abs(dr.mean() - true_value(BEST)) < 0.01


def test_one_large_log_puts_every_interval_around_the_truth() -> None:
    """On 5,000 decisions each estimate's 99 % interval covers the exact value and is narrow
    (the 95 % coverage rate is checked over 300 logs above)."""
    log = simulate(12345, 5000)
    for policy in (BEST, MIXED):
        result = evaluate_policy(log, target_of(policy), alpha=0.01)
        truth = true_value(policy)
        for est in (result.ips, result.snips, result.dr):
            assert est.covers(truth), (est, truth)
            assert est.ci_high - est.ci_low < 0.11
        assert result.n == 5000
        assert result.support == pytest.approx(
            np.mean([target_of(policy)(d)[d.arm] > 0 for d in log])
        )
        assert 0 < result.effective_sample_size <= 5000
        assert result.unsupported == 0.0


def test_a_target_outside_the_logging_support_is_reported() -> None:
    """A target that plays an arm the logging policy never could is flagged as unsupported for
    exactly the decisions where that happens."""
    log = [
        BanditDecision(f"u{i}", "p", "a", p_a, {"a": p_a, "b": 1 - p_a}, None, T0, reward=1.0)
        for i, p_a in enumerate([1.0, 1.0, 0.5, 0.5])
    ]
    result = evaluate_policy(log, lambda d: {"a": 0.0, "b": 1.0})
    assert result.unsupported == 0.5
    assert result.support == 0.0


def test_the_logging_policy_evaluated_on_its_own_log_is_the_observed_mean() -> None:
    """Weights are all 1 for the logging policy: IPS and SNIPS equal the mean reward exactly."""
    log = simulate(7, 300)
    mean = float(np.mean([d.reward for d in log]))
    assert ips(log, target_of(LOGGING)).value == pytest.approx(mean, abs=1e-12)
    assert snips(log, target_of(LOGGING)).value == pytest.approx(mean, abs=1e-12)


def test_snips_moves_with_a_reward_shift_and_ips_does_not() -> None:
    """Adding 10 to every reward adds exactly 10 to SNIPS (self-normalised); IPS moves by 10 times
    the mean weight, which is not 1 on a finite log."""
    target = target_of(BEST)
    base, shifted = simulate(3, 400), simulate(3, 400, shift=10.0)
    assert snips(shifted, target).value == pytest.approx(snips(base, target).value + 10.0)
    weights = np.mean([target(d)[d.arm] / d.propensity for d in base])
    assert ips(shifted, target).value == pytest.approx(ips(base, target).value + 10.0 * weights)
    assert abs(weights - 1.0) > 1e-3


def test_a_learning_bandit_log_evaluates_a_fixed_policy_within_its_interval() -> None:
    """Decisions logged by a real BanditService (LinearIGW, learning as it goes) evaluate the
    best-per-segment policy: IPS and DR intervals cover the exact value (fixed seeds)."""
    service = BanditService(
        LinearIGW("igw", ARMS, n_features=3, seed=11, gamma=5.0), clock=FakeClock(T0)
    )
    rng = np.random.default_rng(99)
    for i in range(3000):
        s = int(rng.integers(0, 4))
        decision = service.choose_sync(SEGMENTS[s].tolist(), decision_id=f"c{i}")
        a = ARMS.index(decision.arm)
        service.reward_sync(decision.decision_id, float(rng.random() < MU[s, a]))
    logged = service.decisions_sync(rewarded=True)
    service.close()
    result = evaluate_policy(logged, target_of(BEST))
    assert result.ips.covers(true_value(BEST))
    assert result.dr.covers(true_value(BEST))
    # a policy that always offers nothing is worse, and the estimates say so
    nothing = evaluate_policy(logged, lambda d: {"none": 1.0, "pct10": 0.0, "pct20": 0.0})
    assert nothing.dr.ci_high < result.dr.ci_low


def test_contextless_logs_use_per_arm_means_in_the_reward_model() -> None:
    """Without contexts DR falls back to shrunk per-arm means; it equals IPS in expectation and,
    for the logging policy itself, the observed mean."""
    log = [
        BanditDecision(f"x{i}", "p", arm, 0.5, {"a": 0.5, "b": 0.5}, None, T0, reward=r)
        for i, (arm, r) in enumerate([("a", 1.0), ("b", 0.0), ("a", 1.0), ("b", 1.0)] * 10)
    ]
    result = doubly_robust(log, lambda d: {"a": 0.5, "b": 0.5}, regressor=RidgeRewardRegressor(2.0))
    assert result.value == pytest.approx(0.75, abs=0.05)
    assert ips(log, lambda d: {"a": 1.0, "b": 0.0}).value == pytest.approx(1.0)


# -- refusals -----------------------------------------------------------------------------------


def _one(reward: float | None = 1.0) -> BanditDecision:
    return BanditDecision("d1", "p", "a", 0.5, {"a": 0.5, "b": 0.5}, (1.0,), T0, reward=reward)


def test_unrewarded_decisions_and_empty_logs_are_refused_by_name() -> None:
    """A decision without a reward, or no decisions, is a SpecValidationError on `decisions`."""
    for call in (ips, snips, doubly_robust, evaluate_policy):
        with pytest.raises(SpecValidationError) as err:
            call([_one(None)], lambda d: {"a": 1.0})  # type: ignore[operator]
        assert err.value.details["field"] == "decisions"
        assert "d1" in err.value.message
        with pytest.raises(SpecValidationError) as err:
            call([], lambda d: {"a": 1.0})  # type: ignore[operator]
        assert err.value.details["field"] == "decisions"


@settings(max_examples=60, deadline=None)
@given(
    dist=st.dictionaries(
        st.sampled_from(["a", "b", "zzz", ""]),
        st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3)),
        max_size=3,
    )
)
def test_hostile_target_distributions_are_refused_naming_the_target(dist: dict[str, float]) -> None:
    """A target that names an unknown arm, gives a negative or non-finite probability or does not
    sum to 1 is refused with details.field == 'target'; a valid one is accepted."""
    valid = (
        set(dist) <= {"a", "b"}
        and all(np.isfinite(v) and v >= 0 for v in dist.values())
        and abs(sum(dist.values()) - 1.0) <= 1e-6
    )
    if not valid:
        with pytest.raises(SpecValidationError) as err:
            ips([_one()], lambda d: dist)
        assert err.value.details["field"] == "target"
        return
    result = ips([_one()], lambda d: dist)
    assert result.value == pytest.approx(dist.get("a", 0.0) / 0.5)


@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, True, "0.05"])
def test_bad_alpha_and_folds_are_refused(alpha: object) -> None:
    """alpha outside (0, 1) and folds below 2 are refused by name."""
    with pytest.raises(SpecValidationError) as err:
        evaluate_policy([_one()], lambda d: {"a": 1.0}, alpha=alpha)  # type: ignore[arg-type]
    assert err.value.details["field"] == "alpha"
    with pytest.raises(SpecValidationError) as err:
        doubly_robust([_one()], lambda d: {"a": 1.0}, folds=1)
    assert err.value.details["field"] == "folds"
