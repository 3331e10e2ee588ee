"""A policy service for choosing actions with bandits: seeded, logged with propensities, learning.

Two policies, one interface (`choose` then `update`):

* [`ThompsonSampling`][contractspec.growth.bandits.ThompsonSampling]: Beta-Bernoulli Thompson
  sampling over discrete arms (Thompson 1933; Chapelle and Li 2011) for rewards in [0, 1].
* [`LinearIGW`][contractspec.growth.bandits.LinearIGW]: a linear contextual policy with
  inverse-gap weighting (SquareCB, Foster and Rakhlin 2020; Abe and Long 1999) over per-arm
  ridge regressions. Unlike LinUCB it is randomised, so every decision has a real propensity.

[`BanditService`][contractspec.growth.bandits.BanditService] wraps a policy with a decision log:
it records each decision's arm, context and **propensity** (the probability the policy had of
choosing that arm, plus the full action distribution), and feeds rewards back into the policy by
decision id. The log makes off-policy evaluation possible
([`ips_estimate`][contractspec.growth.bandits.ips_estimate]).

Selection is deterministic given `seed` and the decision id: each decision draws from its own
generator `numpy.random.default_rng([seed, blake2b(decision_id)])`, so a decision replays
identically regardless of what other decisions ran before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt

from contractspec.core.errors import ConflictError, NotFoundError, SpecValidationError

__all__ = [
    "BanditDecision",
    "BanditPolicy",
    "BanditService",
    "DecisionLog",
    "LinearIGW",
    "MemoryDecisionLog",
    "ThompsonSampling",
    "ips_estimate",
]

FloatArray = npt.NDArray[np.float64]


@attrs.frozen
class BanditDecision:
    """One action chosen by a policy, with what off-policy evaluation needs.

    Attributes:
        decision_id: Unique id; rewards refer to it.
        policy: Name of the policy that decided.
        arm: The chosen action.
        propensity: Probability the policy had of choosing `arm` (in (0, 1]).
        probabilities: The full action distribution at decision time (sums to 1).
        context: Feature vector the decision saw (`None` for non-contextual policies).
        decided_at: When the decision was made (UTC).
        reward: The observed reward, once `BanditService.reward` was called.
    """

    decision_id: str
    policy: str
    arm: str
    propensity: float
    probabilities: dict[str, float]
    context: tuple[float, ...] | None
    decided_at: dt.datetime
    reward: float | None = None


@runtime_checkable
class BanditPolicy(Protocol):
    """What `BanditService` needs from a policy."""

    name: str
    arms: tuple[str, ...]

    def choose(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> tuple[str, dict[str, float], str]:
        """Return `(arm, action distribution, decision_id)`."""
        ...

    def update(self, arm: str, reward: float, context: Sequence[float] | None = None) -> None:
        """Learn from one observed reward."""
        ...


@runtime_checkable
class DecisionLog(Protocol):
    """Where decisions and their rewards are kept."""

    def record(self, decision: BanditDecision) -> None:
        """Store a new decision; raises `ConflictError` if the id exists."""
        ...

    def get(self, decision_id: str) -> BanditDecision:
        """Return a decision; raises `NotFoundError` if unknown."""
        ...

    def set_reward(self, decision_id: str, reward: float) -> BanditDecision:
        """Attach a reward once; raises `ConflictError` if it already has one."""
        ...

    def decisions(self, policy: str | None = None) -> list[BanditDecision]:
        """All decisions in insertion order (of one policy if given)."""
        ...


class MemoryDecisionLog:
    """In-memory `DecisionLog` (a dict), for tests, notebooks and single-process services."""

    def __init__(self) -> None:
        self._items: dict[str, BanditDecision] = {}

    def record(self, decision: BanditDecision) -> None:
        """Store a new decision.

        Raises:
            ConflictError: The decision id was already recorded.
        """
        if decision.decision_id in self._items:
            raise ConflictError(
                f"decision {decision.decision_id!r} is already logged; use a new decision id.",
                details={"decision_id": decision.decision_id},
            )
        self._items[decision.decision_id] = decision

    def get(self, decision_id: str) -> BanditDecision:
        """Return a decision.

        Raises:
            NotFoundError: Unknown decision id.
        """
        try:
            return self._items[decision_id]
        except KeyError:
            raise NotFoundError(
                f"no decision {decision_id!r} in the log.", details={"decision_id": decision_id}
            ) from None

    def set_reward(self, decision_id: str, reward: float) -> BanditDecision:
        """Attach the reward to a decision.

        Raises:
            NotFoundError: Unknown decision id.
            ConflictError: The decision already has a reward.
        """
        current = self.get(decision_id)
        if current.reward is not None:
            raise ConflictError(
                f"decision {decision_id!r} already has reward {current.reward}; rewards are "
                "recorded once per decision.",
                details={"decision_id": decision_id},
            )
        updated = attrs.evolve(current, reward=float(reward))
        self._items[decision_id] = updated
        return updated

    def decisions(self, policy: str | None = None) -> list[BanditDecision]:
        """All decisions in insertion order, optionally of one policy."""
        return [d for d in self._items.values() if policy is None or d.policy == policy]


def _check_arms(arms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(arms, str) or len(arms) < 2:
        raise SpecValidationError(
            f"a bandit needs at least two arms, got {arms!r}.", details={"field": "arms"}
        )
    names = tuple(str(a) for a in arms)
    if len(set(names)) != len(names):
        dup = sorted({a for a in names if names.count(a) > 1})
        raise SpecValidationError(
            f"arm names must be unique, {dup} repeat.", details={"field": "arms"}
        )
    return names


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecValidationError(
            f"seed must be an int >= 0, got {seed!r}.", details={"field": "seed"}
        )
    return seed


def _decision_rng(seed: int, decision_id: str) -> np.random.Generator:
    digest = hashlib.blake2b(decision_id.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed, int.from_bytes(digest, "little")])


class _Policy:
    name: str
    arms: tuple[str, ...]
    seed: int
    _counter: int

    def _next_id(self, decision_id: str | None) -> str:
        if decision_id is not None:
            if not isinstance(decision_id, str) or not decision_id:
                raise SpecValidationError(
                    f"decision_id must be a non-empty string, got {decision_id!r}.",
                    details={"field": "decision_id"},
                )
            return decision_id
        self._counter += 1
        return f"{self.name}:{self._counter}"

    def _arm_index(self, arm: str) -> int:
        try:
            return self.arms.index(arm)
        except ValueError:
            raise SpecValidationError(
                f"unknown arm {arm!r}; arms are {list(self.arms)}.", details={"field": "arm"}
            ) from None


class ThompsonSampling(_Policy):
    """Beta-Bernoulli Thompson sampling over discrete arms.

    Each arm keeps a `Beta(alpha, beta)` posterior of its success rate. A decision draws one
    sample per arm and plays the largest. A reward `r` in [0, 1] adds `r` to `alpha` and `1 - r`
    to `beta` (fractional rewards are the usual Bernoulli-trick generalisation, Agrawal and Goyal
    2012). The propensity of the played arm, `P(arm has the largest sample)`, has no closed form
    for more than two arms, so it is estimated from `propensity_samples` posterior draws made with
    the decision's own generator (the played draw is one of them, so it is never 0).

    Args:
        name: Policy name (kept in the log).
        arms: At least two distinct arm names.
        seed: Base seed (>= 0) of every decision's generator.
        prior: `(alpha, beta)` of every arm's prior, both > 0; `(1, 1)` is uniform.
        propensity_samples: Draws used to estimate the action distribution (>= 1).

    Raises:
        SpecValidationError: Fewer than two or duplicate arms, a negative seed, or a bad prior.
    """

    def __init__(
        self,
        name: str,
        arms: Sequence[str],
        *,
        seed: int,
        prior: tuple[float, float] = (1.0, 1.0),
        propensity_samples: int = 2000,
    ) -> None:
        self.name = str(name)
        self.arms = _check_arms(arms)
        self.seed = _check_seed(seed)
        if len(prior) != 2 or not all(math.isfinite(p) and p > 0 for p in prior):
            raise SpecValidationError(
                f"prior must be (alpha, beta) with both > 0, got {prior!r}.",
                details={"field": "prior"},
            )
        if propensity_samples < 1:
            raise SpecValidationError(
                f"propensity_samples must be >= 1, got {propensity_samples}.",
                details={"field": "propensity_samples"},
            )
        self.propensity_samples = int(propensity_samples)
        k = len(self.arms)
        self._alpha = np.full(k, float(prior[0]))
        self._beta = np.full(k, float(prior[1]))
        self._counter = 0

    def posterior(self, arm: str) -> tuple[float, float]:
        """`(alpha, beta)` of an arm's Beta posterior."""
        i = self._arm_index(arm)
        return float(self._alpha[i]), float(self._beta[i])

    def choose(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> tuple[str, dict[str, float], str]:
        """Play one arm.

        Args:
            context: Ignored (Thompson sampling here is not contextual); accepted for the
                common interface.
            decision_id: Id of the decision; generated (`name:counter`) when omitted.

        Returns:
            `(arm, action distribution, decision_id)`.
        """
        did = self._next_id(decision_id)
        rng = _decision_rng(self.seed, did)
        draws = rng.beta(self._alpha, self._beta, size=(self.propensity_samples, len(self.arms)))
        winners = np.argmax(draws, axis=1)
        chosen = int(winners[0])
        counts = np.bincount(winners, minlength=len(self.arms))
        probs = {
            a: float(c) / self.propensity_samples for a, c in zip(self.arms, counts, strict=True)
        }
        return self.arms[chosen], probs, did

    def update(self, arm: str, reward: float, context: Sequence[float] | None = None) -> None:
        """Add one observed reward to the arm's posterior.

        Raises:
            SpecValidationError: Unknown arm or a reward outside [0, 1].
        """
        i = self._arm_index(arm)
        r = float(reward)
        if not 0.0 <= r <= 1.0:
            raise SpecValidationError(
                f"ThompsonSampling rewards must lie in [0, 1] (a success rate), got {reward!r}; "
                "rescale the reward first.",
                details={"field": "reward"},
            )
        self._alpha[i] += r
        self._beta[i] += 1.0 - r

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state (posteriors and counter) for persistence."""
        return {
            "kind": "thompson",
            "name": self.name,
            "arms": list(self.arms),
            "seed": self.seed,
            "propensity_samples": self.propensity_samples,
            "alpha": self._alpha.tolist(),
            "beta": self._beta.tolist(),
            "counter": self._counter,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ThompsonSampling:
        """Rebuild a policy saved with `state()`."""
        policy = cls(
            state["name"],
            state["arms"],
            seed=state["seed"],
            propensity_samples=state["propensity_samples"],
        )
        policy._alpha = np.asarray(state["alpha"], dtype=np.float64)
        policy._beta = np.asarray(state["beta"], dtype=np.float64)
        policy._counter = int(state["counter"])
        return policy


class LinearIGW(_Policy):
    """Linear contextual bandit with inverse-gap weighting (SquareCB).

    Each arm has a ridge regression `ŷ_a(x) = θ_a · x` (`θ_a = A_a⁻¹ b_a`, `A_a = λI + Σ x xᵀ`,
    kept inverted with Sherman-Morrison updates). With `b` the best predicted arm and `K` arms,
    the action distribution is (Foster and Rakhlin, "Beyond UCB", ICML 2020):

        p(a) = 1 / (K + gamma * (ŷ_b - ŷ_a))   for a != b,    p(b) = 1 - Σ_{a != b} p(a)

    Larger `gamma` exploits more; every arm keeps a positive probability, so the logged
    propensities support unbiased off-policy evaluation.

    Args:
        name: Policy name.
        arms: At least two distinct arm names.
        n_features: Length of the context vector (>= 1); include a constant 1 for an intercept.
        seed: Base seed (>= 0).
        gamma: Exploitation strength (> 0), in inverse reward units.
        ridge: Ridge penalty `λ` (> 0).

    Raises:
        SpecValidationError: Bad arms, seed, `n_features`, `gamma` or `ridge`.
    """

    def __init__(
        self,
        name: str,
        arms: Sequence[str],
        *,
        n_features: int,
        seed: int,
        gamma: float = 50.0,
        ridge: float = 1.0,
    ) -> None:
        self.name = str(name)
        self.arms = _check_arms(arms)
        self.seed = _check_seed(seed)
        if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
            raise SpecValidationError(
                f"n_features must be an int >= 1, got {n_features!r}.",
                details={"field": "n_features"},
            )
        for field, value in (("gamma", gamma), ("ridge", ridge)):
            if not (math.isfinite(value) and value > 0):
                raise SpecValidationError(
                    f"{field} must be a finite number > 0, got {value!r}.", details={"field": field}
                )
        self.n_features = n_features
        self.gamma = float(gamma)
        self.ridge = float(ridge)
        k = len(self.arms)
        self._a_inv = np.stack([np.eye(n_features) / ridge for _ in range(k)])
        self._b = np.zeros((k, n_features))
        self._counter = 0

    def _x(self, context: Sequence[float] | None) -> FloatArray:
        if context is None:
            raise SpecValidationError(
                f"{self.name}: LinearIGW needs a context vector of {self.n_features} features.",
                details={"field": "context"},
            )
        x = np.asarray(context, dtype=np.float64)
        if x.shape != (self.n_features,) or not np.all(np.isfinite(x)):
            raise SpecValidationError(
                f"{self.name}: context must be {self.n_features} finite numbers, got shape "
                f"{x.shape}.",
                details={"field": "context"},
            )
        return x

    def predict(self, context: Sequence[float]) -> dict[str, float]:
        """Predicted reward of every arm for `context`."""
        x = self._x(context)
        theta = np.einsum("kij,kj->ki", self._a_inv, self._b)
        return {a: float(v) for a, v in zip(self.arms, theta @ x, strict=True)}

    def probabilities(self, context: Sequence[float]) -> dict[str, float]:
        """The inverse-gap-weighted action distribution for `context`."""
        preds = np.array(list(self.predict(context).values()))
        k = len(self.arms)
        best = int(np.argmax(preds))
        p = 1.0 / (k + self.gamma * (preds[best] - preds))
        p[best] = 0.0
        p[best] = 1.0 - float(p.sum())
        return {a: float(v) for a, v in zip(self.arms, p, strict=True)}

    def choose(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> tuple[str, dict[str, float], str]:
        """Sample an arm from the inverse-gap-weighted distribution.

        Raises:
            SpecValidationError: `context` is missing or has the wrong length.
        """
        probs = self.probabilities(self._x(context).tolist())
        did = self._next_id(decision_id)
        rng = _decision_rng(self.seed, did)
        p = np.array(list(probs.values()))
        idx = int(rng.choice(len(self.arms), p=p / p.sum()))
        return self.arms[idx], probs, did

    def update(self, arm: str, reward: float, context: Sequence[float] | None = None) -> None:
        """Add one `(context, reward)` observation to the arm's ridge regression.

        Raises:
            SpecValidationError: Unknown arm, bad context, or a non-finite reward.
        """
        i = self._arm_index(arm)
        x = self._x(context)
        r = float(reward)
        if not math.isfinite(r):
            raise SpecValidationError(
                f"reward must be finite, got {reward!r}.", details={"field": "reward"}
            )
        a_inv = self._a_inv[i]
        ax = a_inv @ x
        self._a_inv[i] = a_inv - np.outer(ax, ax) / (1.0 + x @ ax)
        self._b[i] += r * x

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state for persistence."""
        return {
            "kind": "linear_igw",
            "name": self.name,
            "arms": list(self.arms),
            "seed": self.seed,
            "n_features": self.n_features,
            "gamma": self.gamma,
            "ridge": self.ridge,
            "a_inv": self._a_inv.tolist(),
            "b": self._b.tolist(),
            "counter": self._counter,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LinearIGW:
        """Rebuild a policy saved with `state()`."""
        policy = cls(
            state["name"],
            state["arms"],
            n_features=state["n_features"],
            seed=state["seed"],
            gamma=state["gamma"],
            ridge=state["ridge"],
        )
        policy._a_inv = np.asarray(state["a_inv"], dtype=np.float64)
        policy._b = np.asarray(state["b"], dtype=np.float64)
        policy._counter = int(state["counter"])
        return policy


class BanditService:
    """Choose actions with a policy, log every decision with its propensity, learn from rewards.

    Args:
        policy: A `ThompsonSampling`, `LinearIGW` or any `BanditPolicy`.
        log: Where decisions go; a fresh `MemoryDecisionLog` by default.
        now: Clock returning an aware UTC datetime (injectable for tests).

    Example:
        ```python
        service = BanditService(ThompsonSampling("cta", ["blue", "green"], seed=7))
        decision = service.choose()
        service.reward(decision.decision_id, 1.0)  # the user clicked
        ```
    """

    def __init__(
        self,
        policy: BanditPolicy,
        *,
        log: DecisionLog | None = None,
        now: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.policy = policy
        self.log: DecisionLog = log if log is not None else MemoryDecisionLog()
        self._now = now or (lambda: dt.datetime.now(dt.UTC))

    def choose(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> BanditDecision:
        """Decide, log the decision with its propensity, and return it.

        Raises:
            ConflictError: `decision_id` was already used.
            SpecValidationError: The policy rejected the context.
        """
        arm, probs, did = self.policy.choose(context, decision_id=decision_id)
        decision = BanditDecision(
            decision_id=did,
            policy=self.policy.name,
            arm=arm,
            propensity=probs[arm],
            probabilities=probs,
            context=None if context is None else tuple(float(v) for v in context),
            decided_at=self._now(),
        )
        self.log.record(decision)
        return decision

    def reward(self, decision_id: str, reward: float) -> BanditDecision:
        """Record the reward of a logged decision and update the policy with it.

        Raises:
            NotFoundError: Unknown decision id.
            ConflictError: The decision was already rewarded.
            SpecValidationError: The policy rejected the reward (e.g. outside [0, 1]).
        """
        decision = self.log.get(decision_id)
        if decision.reward is not None:
            raise ConflictError(
                f"decision {decision_id!r} already has reward {decision.reward}.",
                details={"decision_id": decision_id},
            )
        self.policy.update(decision.arm, reward, decision.context)
        return self.log.set_reward(decision_id, reward)


def ips_estimate(
    decisions: Iterable[BanditDecision],
    target: Callable[[BanditDecision], Mapping[str, float]],
    *,
    self_normalized: bool = False,
) -> float:
    """Off-policy value of a target policy from logged decisions (inverse propensity scoring).

    `V = mean(reward * π(arm | context) / propensity)` over rewarded decisions (Horvitz and
    Thompson 1952); `self_normalized=True` divides by the sum of the weights instead of the count
    (SNIPS, Swaminathan and Joachims 2015), trading a small bias for less variance.

    Args:
        decisions: Logged decisions; those without a reward are skipped.
        target: Maps a decision (its `context`) to the target policy's action distribution.
        self_normalized: Use the self-normalised estimator.

    Returns:
        The estimated mean reward of the target policy.

    Raises:
        SpecValidationError: No rewarded decisions.
    """
    weights: list[float] = []
    rewards: list[float] = []
    for d in decisions:
        if d.reward is None:
            continue
        weights.append(float(target(d).get(d.arm, 0.0)) / d.propensity)
        rewards.append(d.reward)
    if not weights:
        raise SpecValidationError(
            "ips_estimate needs at least one rewarded decision.", details={"field": "decisions"}
        )
    w = np.asarray(weights)
    r = np.asarray(rewards)
    total = float(np.sum(w * r))
    if self_normalized:
        return total / float(w.sum()) if w.sum() > 0 else 0.0
    return total / len(w)
