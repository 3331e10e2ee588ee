"""A policy service for choosing actions with bandits: seeded, logged with propensities, learning.

Two policies, one interface (`choose` then `update`):

* [`ThompsonSampling`][contractspec.growth.bandits.ThompsonSampling]: Beta-Bernoulli Thompson
  sampling over discrete arms (Thompson 1933; Chapelle and Li 2011) for rewards in [0, 1].
* [`LinearIGW`][contractspec.growth.bandits.LinearIGW]: a linear contextual policy with
  inverse-gap weighting (SquareCB, Foster and Rakhlin 2020; Abe and Long 1999) over per-arm
  ridge regressions. Unlike LinUCB it is randomised, so every decision has a real propensity.

[`BanditService`][contractspec.growth.bandits.BanditService] wraps a policy with a
[`DecisionLog`][contractspec.growth.bandits.DecisionLog]: it records each decision's arm, context
and **propensity** (the probability the policy had of choosing that arm, plus the full action
distribution), and feeds rewards back into the policy by decision id, at most once per decision.
The log makes off-policy evaluation possible
([`ips_estimate`][contractspec.growth.bandits.ips_estimate]). Logs are async stores:
[`MemoryDecisionLog`][contractspec.growth.bandits.MemoryDecisionLog] here and
[`SqlDecisionLog`][contractspec.growth.bandits_sql.SqlDecisionLog] (SQLite or PostgreSQL) in
`contractspec.growth.bandits_sql`; both pass one conformance suite.

Selection is deterministic given `seed` and the decision id: each decision draws from its own
generator `numpy.random.default_rng([seed, blake2b(decision_id)])`, so a decision replays
identically regardless of what other decisions ran before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt

from contractspec.core.errors import (
    ConflictError,
    NotFoundError,
    SpecValidationError,
)
from contractspec.core.ports import Clock, IdGenerator, SystemClock
from contractspec.core.sync import SyncRunner

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
T = TypeVar("T")

#: Longest decision id, policy name or arm name a log accepts (the SQL columns are 200 wide).
_MAX_NAME_LENGTH = 200


def _check_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_NAME_LENGTH:
        raise SpecValidationError(
            f"{field} must be a non-empty string of at most {_MAX_NAME_LENGTH} characters, got "
            f"{value!r}.",
            details={"field": field},
        )
    if _UNSTORABLE.search(value):
        raise SpecValidationError(
            f"{field} must not hold a NUL character or a lone surrogate (no decision log can "
            f"store them), got {value!r}.",
            details={"field": field},
        )
    return value


# Characters no log stores: NUL (PostgreSQL text) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise SpecValidationError(
            f"{field} must be a number, got {type(value).__name__}.", details={"field": field}
        )
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise SpecValidationError(
            f"{field} must be a finite number, got {number!r}.", details={"field": field}
        )
    return number


def _check_aware(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise SpecValidationError(
            f"{field} must be a timezone-aware datetime, got {value!r}; use "
            "datetime.now(UTC) or a core Clock.",
            details={"field": field},
        )
    return value


def _check_reward_value(reward: Any) -> float:
    """`reward` as a float, or `SpecValidationError` (field `reward`) if it is not a finite number."""
    return _check_number(reward, "reward")


@attrs.frozen
class BanditDecision:
    """One action chosen by a policy, with what off-policy evaluation needs.

    Fields are validated on construction, so every logged decision can be stored and evaluated:
    names are non-empty strings of at most 200 characters, numbers are finite, `decided_at` is
    aware. Numbers are normalised to `float`, `context` to a tuple and `decided_at` to UTC.

    Attributes:
        decision_id: Unique id; rewards refer to it.
        policy: Name of the policy that decided.
        arm: The chosen action (a key of `probabilities`).
        propensity: Probability the policy had of choosing `arm`, in (0, 1].
        probabilities: The full action distribution at decision time (`{arm: probability}` in the
            policy's arm order, each in [0, 1]).
        context: Feature vector the decision saw (`None` for non-contextual policies).
        decided_at: When the decision was made (timezone-aware; converted to UTC).
        reward: The observed reward, once `BanditService.reward` was called.

    Raises:
        SpecValidationError: A field is malformed; `details["field"]` names it.
    """

    decision_id: str
    policy: str
    arm: str
    propensity: float
    probabilities: dict[str, float]
    context: tuple[float, ...] | None
    decided_at: dt.datetime
    reward: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_name(self.decision_id, "decision_id")
        _check_name(self.policy, "policy")
        _check_name(self.arm, "arm")
        propensity = _check_number(self.propensity, "propensity")
        if not 0.0 < propensity <= 1.0:
            raise SpecValidationError(
                f"propensity must lie in (0, 1], got {propensity!r}; a decision the policy could "
                "not have made cannot be evaluated off-policy.",
                details={"field": "propensity"},
            )
        if not isinstance(self.probabilities, Mapping) or self.arm not in self.probabilities:
            raise SpecValidationError(
                f"probabilities must map every arm (including the chosen {self.arm!r}) to its "
                f"probability, got {self.probabilities!r}.",
                details={"field": "probabilities"},
            )
        probabilities: dict[str, float] = {}
        for arm, p in self.probabilities.items():
            value = _check_number(p, "probabilities")
            if not 0.0 <= value <= 1.0:
                raise SpecValidationError(
                    f"probabilities[{arm!r}] must lie in [0, 1], got {value!r}.",
                    details={"field": "probabilities"},
                )
            probabilities[_check_name(arm, "probabilities")] = value
        context: Any = self.context  # checked at run time: callers may pass any sequence
        if context is not None:
            if isinstance(context, str | bytes) or not isinstance(context, Iterable):
                raise SpecValidationError(
                    f"context must be a sequence of numbers or None, got {context!r}.",
                    details={"field": "context"},
                )
            context = tuple(_check_number(v, "context") for v in context)
        decided_at = _check_aware(self.decided_at, "decided_at").astimezone(dt.UTC)
        reward = None if self.reward is None else _check_number(self.reward, "reward")
        object.__setattr__(self, "propensity", propensity)
        object.__setattr__(self, "probabilities", probabilities)
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "decided_at", decided_at)
        object.__setattr__(self, "reward", reward)


@runtime_checkable
class BanditPolicy(Protocol):
    """What `BanditService` needs from a policy.

    A policy may also define `check_reward(reward) -> float`, raising `SpecValidationError` for a
    reward it cannot learn from; the service calls it *before* the reward is logged, so a refused
    reward leaves the log untouched. Both built-in policies do.
    """

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
    """Where decisions and their rewards are kept (async; memory and SQL adapters ship).

    Every adapter passes the same conformance suite: ids are unique, a reward is set at most once
    (even under concurrent calls), and `decisions` returns insertion order.
    """

    async def record(self, decision: BanditDecision) -> None:
        """Store a new decision.

        Raises:
            ConflictError: The decision id is already logged.
        """
        ...

    async def get(self, decision_id: str) -> BanditDecision:
        """Return a decision.

        Raises:
            NotFoundError: Unknown decision id.
        """
        ...

    async def set_reward(self, decision_id: str, reward: float) -> BanditDecision:
        """Attach a reward once, atomically, and return the updated decision.

        Raises:
            SpecValidationError: `reward` is not a finite number.
            NotFoundError: Unknown decision id.
            ConflictError: The decision already has a reward (also when a concurrent call won).
        """
        ...

    async def decisions(
        self,
        policy: str | None = None,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        rewarded: bool | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[BanditDecision]:
        """Decisions in insertion order, filtered.

        Args:
            policy: Only this policy's decisions.
            since: Only decisions with `decided_at >= since` (aware).
            until: Only decisions with `decided_at < until` (aware).
            rewarded: `True` only rewarded decisions, `False` only those still waiting.
            after: Keyset cursor: only decisions logged after this decision id (pass the last id
                of the previous page).
            limit: At most this many decisions (>= 1).

        Raises:
            SpecValidationError: A naive `since`/`until` or a `limit` below 1.
            NotFoundError: `after` is not a logged decision id.
        """
        ...


@attrs.frozen
class _DecisionQuery:
    """The validated filters of `DecisionLog.decisions` (shared by the adapters)."""

    policy: str | None
    since: dt.datetime | None
    until: dt.datetime | None
    rewarded: bool | None
    after: str | None
    limit: int | None

    @classmethod
    def of(
        cls,
        policy: str | None,
        since: dt.datetime | None,
        until: dt.datetime | None,
        rewarded: bool | None,
        after: str | None,
        limit: int | None,
    ) -> _DecisionQuery:
        """Validate the filters.

        Raises:
            SpecValidationError: The bad filter is named in `details["field"]`.
        """
        if policy is not None:
            _check_name(policy, "policy")
        if since is not None:
            _check_aware(since, "since")
        if until is not None:
            _check_aware(until, "until")
        if rewarded is not None and not isinstance(rewarded, bool):
            raise SpecValidationError(
                f"rewarded must be True, False or None, got {rewarded!r}.",
                details={"field": "rewarded"},
            )
        if after is not None:
            _check_name(after, "after")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise SpecValidationError(
                f"limit must be an int >= 1 (or None for every decision), got {limit!r}.",
                details={"field": "limit"},
            )
        return cls(policy, since, until, rewarded, after, limit)

    def matches(self, decision: BanditDecision) -> bool:
        """Whether `decision` passes the filters other than `after` and `limit`."""
        return (
            (self.policy is None or decision.policy == self.policy)
            and (self.since is None or decision.decided_at >= self.since)
            and (self.until is None or decision.decided_at < self.until)
            and (self.rewarded is None or (decision.reward is not None) == self.rewarded)
        )


def _reward_conflict(decision_id: str, reward: float | None) -> ConflictError:
    """The error for a second reward of a decision (same text from every adapter)."""
    return ConflictError(
        f"decision {decision_id!r} already has reward {reward}; rewards are recorded once per "
        "decision.",
        details={"decision_id": decision_id},
    )


def _duplicate_decision(decision_id: str) -> ConflictError:
    """The error for a decision id logged twice (same text from every adapter)."""
    return ConflictError(
        f"decision {decision_id!r} is already logged; use a new decision id.",
        details={"decision_id": decision_id},
    )


def _unknown_decision(decision_id: str, field: str = "decision_id") -> NotFoundError:
    """The error for a decision id that is not in the log (same text from every adapter)."""
    return NotFoundError(
        f"no decision {decision_id!r} in the log.",
        details={"decision_id": decision_id, "field": field},
    )


class MemoryDecisionLog:
    """In-memory `DecisionLog` (a dict), for tests, notebooks and single-process services.

    Each method runs without awaiting, so concurrent coroutines see every call as atomic.
    """

    def __init__(self) -> None:
        self._items: dict[str, BanditDecision] = {}
        self._positions: dict[str, int] = {}

    async def record(self, decision: BanditDecision) -> None:
        """Store a new decision.

        Raises:
            ConflictError: The decision id was already recorded.
        """
        if decision.decision_id in self._items:
            raise _duplicate_decision(decision.decision_id)
        self._positions[decision.decision_id] = len(self._positions)
        self._items[decision.decision_id] = decision

    async def get(self, decision_id: str) -> BanditDecision:
        """Return a decision.

        Raises:
            NotFoundError: Unknown decision id.
        """
        try:
            return self._items[decision_id]
        except (KeyError, TypeError):
            raise _unknown_decision(decision_id) from None

    async def set_reward(self, decision_id: str, reward: float) -> BanditDecision:
        """Attach the reward to a decision.

        Raises:
            SpecValidationError: `reward` is not a finite number.
            NotFoundError: Unknown decision id.
            ConflictError: The decision already has a reward.
        """
        value = _check_reward_value(reward)
        current = await self.get(decision_id)
        if current.reward is not None:
            raise _reward_conflict(decision_id, current.reward)
        updated = attrs.evolve(current, reward=value)
        self._items[decision_id] = updated
        return updated

    async def decisions(
        self,
        policy: str | None = None,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        rewarded: bool | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[BanditDecision]:
        """Decisions in insertion order, filtered (see `DecisionLog.decisions`).

        Raises:
            SpecValidationError: A bad filter.
            NotFoundError: `after` is not a logged decision id.
        """
        query = _DecisionQuery.of(policy, since, until, rewarded, after, limit)
        start = 0
        if query.after is not None:
            if query.after not in self._positions:
                raise _unknown_decision(query.after, "after")
            start = self._positions[query.after] + 1
        out: list[BanditDecision] = []
        for position, decision in enumerate(self._items.values()):
            if position < start or not query.matches(decision):
                continue
            out.append(decision)
            if query.limit is not None and len(out) == query.limit:
                break
        return out


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
        r = self.check_reward(reward)
        self._alpha[i] += r
        self._beta[i] += 1.0 - r

    def check_reward(self, reward: float) -> float:
        """`reward` as a float if this policy can learn from it.

        Raises:
            SpecValidationError: Not a number in [0, 1].
        """
        r = _check_reward_value(reward)
        if not 0.0 <= r <= 1.0:
            raise SpecValidationError(
                f"ThompsonSampling rewards must lie in [0, 1] (a success rate), got {reward!r}; "
                "rescale the reward first.",
                details={"field": "reward"},
            )
        return r

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
        r = self.check_reward(reward)
        a_inv = self._a_inv[i]
        ax = a_inv @ x
        self._a_inv[i] = a_inv - np.outer(ax, ax) / (1.0 + x @ ax)
        self._b[i] += r * x

    def check_reward(self, reward: float) -> float:
        """`reward` as a float if this policy can learn from it.

        Raises:
            SpecValidationError: Not a finite number.
        """
        return _check_reward_value(reward)

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

    `choose` and `reward` are async (the log may be a database); `choose_sync`, `reward_sync` and
    `decisions_sync` run them on an event loop kept per service, for scripts and notebooks.

    Decision ids: pass your own (a request or order id) to `choose`, or give the service an `ids`
    generator. Without either, the policy numbers decisions `name:1`, `name:2`, ... which is
    deterministic but restarts with the process (unless the policy is restored with
    `from_state`), so a durable log shared across restarts or processes needs one of the two.

    Args:
        policy: A `ThompsonSampling`, `LinearIGW` or any `BanditPolicy`.
        log: Where decisions go; a fresh `MemoryDecisionLog` by default. Use
            `contractspec.growth.bandits_sql.SqlDecisionLog` to keep them in SQLite or PostgreSQL.
        clock: Time source of `decided_at` (`SystemClock()` by default; a core `FakeClock` in tests).
        ids: Generator of decision ids for calls without `decision_id` (e.g. core's
            `UuidGenerator()`); the policy's counter by default.

    Example:
        ```python
        service = BanditService(ThompsonSampling("cta", ["blue", "green"], seed=7))
        decision = await service.choose()
        await service.reward(decision.decision_id, 1.0)  # the user clicked
        ```
    """

    def __init__(
        self,
        policy: BanditPolicy,
        *,
        log: DecisionLog | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        self.policy = policy
        self.log: DecisionLog = log if log is not None else MemoryDecisionLog()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.ids = ids
        self._runner: SyncRunner | None = None

    async def choose(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> BanditDecision:
        """Decide, log the decision with its propensity, and return it.

        Args:
            context: The feature vector (required by contextual policies such as `LinearIGW`).
            decision_id: Id of this decision (at most 200 characters); generated when omitted.

        Returns:
            The logged decision (`reward` is `None`).

        Raises:
            ConflictError: The decision id is already in the log.
            SpecValidationError: The policy rejected the context, or the id is malformed.
        """
        if decision_id is not None:
            _check_name(decision_id, "decision_id")
        generated = decision_id is None
        if generated and self.ids is not None:
            decision_id = self.ids.new_id()
        arm, probs, did = self.policy.choose(context, decision_id=decision_id)
        decision = BanditDecision(
            decision_id=did,
            policy=self.policy.name,
            arm=arm,
            propensity=probs[arm],
            probabilities=probs,
            context=None if context is None else tuple(float(v) for v in context),
            decided_at=self.clock.now(),
        )
        try:
            await self.log.record(decision)
        except ConflictError as exc:
            if not generated:
                raise
            raise ConflictError(
                f"{exc} The id {did!r} was generated by the service: when the log outlives the "
                "process, pass decision_id=..., give the service ids=UuidGenerator(), or restore "
                "the policy with from_state() so its counter continues.",
                details=exc.details,
            ) from exc
        return decision

    async def reward(self, decision_id: str, reward: float) -> BanditDecision:
        """Record the reward of a logged decision (at most once) and update the policy with it.

        The reward is validated by the policy first, then set in the log with an atomic
        set-once write; only the call that wins that write updates the policy, so concurrent or
        repeated rewards for one decision are learned from exactly once.

        Returns:
            The decision with its reward.

        Raises:
            NotFoundError: Unknown decision id.
            ConflictError: The decision was already rewarded (also by a concurrent call).
            SpecValidationError: The decision belongs to another policy of a shared log, the
                reward is not a finite number, or the policy rejected it (e.g. outside [0, 1] for
                `ThompsonSampling`); the log is left untouched.
        """
        decision = await self.log.get(decision_id)
        if decision.policy != self.policy.name:
            raise SpecValidationError(
                f"decision {decision_id!r} was made by policy {decision.policy!r}, not "
                f"{self.policy.name!r}; reward it through the service of {decision.policy!r}.",
                details={"field": "decision_id", "decision_id": decision_id},
            )
        if decision.reward is not None:
            raise _reward_conflict(decision_id, decision.reward)
        check = getattr(self.policy, "check_reward", None)
        value = float(check(reward)) if callable(check) else _check_reward_value(reward)
        rewarded = await self.log.set_reward(decision_id, value)
        self.policy.update(decision.arm, value, decision.context)
        return rewarded

    async def decisions(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        rewarded: bool | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[BanditDecision]:
        """This policy's logged decisions in insertion order (filters as `DecisionLog.decisions`).

        Raises:
            SpecValidationError: A bad filter.
            NotFoundError: `after` is not a logged decision id.
        """
        return await self.log.decisions(
            self.policy.name, since=since, until=until, rewarded=rewarded, after=after, limit=limit
        )

    async def restore(self) -> int:
        """Rebuild the policy's learned state from the durable log (after a restart).

        Replays every rewarded decision of this policy through `policy.update`, in the log's
        insertion order, into the policy given to the service (construct it as before: same
        name, arms, prior or regularisation), and moves the counter of generated ids
        (`name:N`) past the largest one in the log, so new decisions do not collide. Learned
        state is then what the log says (Thompson sampling's Beta counts exactly; LinearIGW's
        ridge statistics to rounding); the random stream is not restored.

        Returns:
            The number of rewards replayed.

        Raises:
            NotFoundError / SpecValidationError: As `DecisionLog.decisions`.
        """
        logged = await self.log.decisions(self.policy.name)
        replayed = 0
        for decision in logged:
            if decision.reward is not None:
                self.policy.update(decision.arm, decision.reward, decision.context)
                replayed += 1
        if isinstance(self.policy, _Policy):
            prefix = f"{self.policy.name}:"
            numbers = [
                int(d.decision_id[len(prefix) :])
                for d in logged
                if d.decision_id.startswith(prefix) and d.decision_id[len(prefix) :].isdigit()
            ]
            self.policy._counter = max([self.policy._counter, *numbers])
        return replayed

    def restore_sync(self) -> int:
        """`restore` for scripts and notebooks (also inside a running event loop)."""
        return self._run("restore", self.restore)

    def choose_sync(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> BanditDecision:
        """`choose` for scripts and notebooks (also inside a running event loop).

        Raises the same errors as `choose`.
        """
        return self._run("choose", lambda: self.choose(context, decision_id=decision_id))

    def reward_sync(self, decision_id: str, reward: float) -> BanditDecision:
        """`reward` for scripts and notebooks (also inside a running event loop).

        Raises the same errors as `reward`.
        """
        return self._run("reward", lambda: self.reward(decision_id, reward))

    def decisions_sync(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        rewarded: bool | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[BanditDecision]:
        """`decisions` for scripts and notebooks (also inside a running event loop).

        Raises the same errors as `decisions`.
        """
        return self._run(
            "decisions",
            lambda: self.decisions(
                since=since, until=until, rewarded=rewarded, after=after, limit=limit
            ),
        )

    def _run(self, method: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run `call()` on this service's sync loop (`contractspec.core.sync.SyncRunner`): one
        loop in a background thread, so pooled connections stay valid, also when the caller
        already runs a loop (a Jupyter kernel)."""
        if self._runner is None:
            self._runner = SyncRunner()
            # Stop the loop when the service is garbage-collected, if close() was not called.
            weakref.finalize(self, self._runner.close)
        return self._runner.run(call(), what=f"{method}_sync()")

    def close(self) -> None:
        """Close the event loop used by the `*_sync` methods (if one was started)."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def __enter__(self) -> BanditService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def ips_estimate(
    decisions: Iterable[BanditDecision],
    target: Callable[[BanditDecision], Mapping[str, float]],
    *,
    self_normalized: bool = False,
    missing_reward: Literal["refuse", "zero"] = "refuse",
) -> float:
    """Off-policy value of a target policy from logged decisions (inverse propensity scoring).

    `V = mean(reward * π(arm | context) / propensity)` over the decisions (Horvitz and
    Thompson 1952); `self_normalized=True` divides by the sum of the weights instead of the count
    (SNIPS, Swaminathan and Joachims 2015), trading a small bias for less variance.

    A decision without a reward is never dropped silently (dropping them biases the estimate
    towards arms whose rewards arrive sooner or more often): by default it is refused, and with
    `missing_reward="zero"` it counts as reward 0, which is right when no reward means no
    outcome (no click, no purchase).

    Args:
        decisions: Logged decisions (e.g. `await service.decisions(rewarded=True)`).
        target: Maps a decision (its `context`) to the target policy's action distribution.
        self_normalized: Use the self-normalised estimator.
        missing_reward: `"refuse"` (default) or `"zero"`, for decisions without a reward.

    Returns:
        The estimated mean reward of the target policy.

    Raises:
        SpecValidationError: No decisions, an unknown `missing_reward`, or (with
            `missing_reward="refuse"`) a decision without a reward.
    """
    if missing_reward not in ("refuse", "zero"):
        raise SpecValidationError(
            f"missing_reward must be 'refuse' or 'zero', got {missing_reward!r}.",
            details={"field": "missing_reward"},
        )
    weights: list[float] = []
    rewards: list[float] = []
    unrewarded: list[str] = []
    for d in decisions:
        if d.reward is None:
            unrewarded.append(d.decision_id)
            if missing_reward == "refuse":
                continue
        weights.append(float(target(d).get(d.arm, 0.0)) / d.propensity)
        rewards.append(0.0 if d.reward is None else d.reward)
    if unrewarded and missing_reward == "refuse":
        raise SpecValidationError(
            f"ips_estimate got {len(unrewarded)} decision(s) without a reward (first: "
            f"{unrewarded[0]!r}); pass only rewarded ones (decisions(rewarded=True)) once their "
            "rewards are in, or missing_reward='zero' when no reward means reward 0.",
            details={"field": "decisions", "decision_id": unrewarded[0]},
        )
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
