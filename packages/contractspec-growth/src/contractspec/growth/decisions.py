"""The decision loop: rewards from business events, off-policy evaluation, shadow mode, promotion.

A [`BanditService`][contractspec.growth.bandits.BanditService] logs every decision with its
propensity. This module closes the loop around it:

* [`RewardModel`][contractspec.growth.decisions.RewardModel] (`define_reward_model`) declares,
  as a spec of kind `reward_model` (registrable in core's `SpecRegistry`, so it is in the IR),
  how business events become a decision's reward: profit minus penalties for refunds,
  complaints and policy violations. Terms marked `guardrail=True` are the outcomes a staged
  rollout counts as failures.
* [`DecisionLoop`][contractspec.growth.decisions.DecisionLoop] chooses through the live service,
  joins outcome events to decisions by the decision id in their payload (subscribe
  `loop.handle` to the event bus; each event counts once, by event id), settles rewards once
  the model's horizon has passed, records human overrides as labels, runs a candidate policy in
  **shadow mode** (it chooses alongside the live policy, its choice is logged, it never acts),
  and promotes a candidate through a guarded staged rollout (`contractspec.growth.rollouts`).
* Tenants: a decision records its org (`choose(org_id=...)` or `ctx=`); an outcome event of
  another org is `OutcomeStatus.FOREIGN_ORG` (never recorded or rewarded) and a label from another
  org is `NotFoundError`. An overriding label and `settle` exclude each other through one state
  row per decision in the outcome store (`DecisionStatus`: settled XOR overridden).
* Off-policy evaluation ([`evaluate_policy`][contractspec.growth.decisions.evaluate_policy]):
  inverse propensity scoring, self-normalised IPS (Swaminathan and Joachims 2015) and doubly
  robust (Dudík, Langford and Li 2011), each with a normal-approximation confidence interval.

Outcomes and labels live in an [`OutcomeStore`][contractspec.growth.decisions.OutcomeStore]:
[`MemoryOutcomeStore`][contractspec.growth.decisions.MemoryOutcomeStore] here and
`SqlOutcomeStore` (SQLite or PostgreSQL) in `contractspec.growth.decisions_sql`; both pass one
conformance suite.

```python
from contractspec.growth.decisions import DecisionLoop, RewardTerm, define_reward_model
```
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt
from scipy import stats as _scipy_stats

from contractspec.core._log import get_logger
from contractspec.core.context import Actor, CallContext
from contractspec.core.errors import (
    ConflictError,
    NotFoundError,
    SpecDefinitionError,
    SpecValidationError,
)
from contractspec.core.numbers import as_finite_float
from contractspec.core.ports import Clock, SystemClock
from contractspec.core.records import EventEnvelope, TelemetrySample
from contractspec.growth.bandits import (
    _UNSTORABLE,
    BanditDecision,
    BanditPolicy,
    BanditService,
    _check_aware,
    _check_name,
    _check_number,
)

if TYPE_CHECKING:
    from contractspec.growth.rollouts import (
        Guardrails,
        RolloutState,
        SpecExperimentController,
    )

__all__ = [
    "GUARDRAIL_ERROR_CODE",
    "DecisionLoop",
    "DecisionOverriddenError",
    "DecisionStatus",
    "Label",
    "MemoryOutcomeStore",
    "OffPolicyEstimate",
    "Outcome",
    "OutcomeStatus",
    "OutcomeStore",
    "PolicyEvaluation",
    "PromotionRefusedError",
    "RewardModel",
    "RewardTerm",
    "RidgeRewardRegressor",
    "ShadowReport",
    "define_reward_model",
    "doubly_robust",
    "evaluate_policy",
    "ips",
    "snips",
]

_log = get_logger(__name__)

FloatArray = npt.NDArray[np.float64]
#: A target policy: maps a logged decision (its `context`) to an action distribution.
TargetPolicy = Callable[[BanditDecision], Mapping[str, float]]

#: The `TelemetrySample.error_code` a decision with a guardrail outcome reports to a rollout.
GUARDRAIL_ERROR_CODE = "decision_guardrail"
#: Prefix of the decision ids a shadow candidate logs (`shadow:<live decision id>`).
SHADOW_PREFIX = "shadow:"

_SPEC_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class DecisionOverriddenError(SpecValidationError):
    """`settle` refused: a person overrode the decision with another arm, so it is never
    rewarded (a `SpecValidationError`, as before this class existed)."""

    code: ClassVar[str] = "decision_overridden"


class PromotionRefusedError(ConflictError):
    """A candidate policy was not promoted: the shadow comparison does not support it."""

    code: ClassVar[str] = "promotion_refused"


# -- the reward model ---------------------------------------------------------------------------


def _definition_error(field: str, message: str) -> SpecDefinitionError:
    return SpecDefinitionError(message, details={"field": field})


@attrs.frozen
class RewardTerm:
    """One kind of business event and what it adds to a decision's reward.

    `value = weight * payload[amount]` (a dotted path into the event payload), or `weight` per
    event when `amount` is `None`. Profit is a positive weight on a margin field; penalties are
    negative weights (`RewardTerm("shop.refund.issued", amount="amount", weight=-1.0)`,
    `RewardTerm("support.complaint.filed", weight=-20.0, guardrail=True)`).

    Attributes:
        event: Event name (`shop.order.paid`).
        amount: Dotted payload path of the amount (money in the reward's unit), or `None`.
        weight: Multiplier (finite; negative for penalties).
        guardrail: Whether this outcome is a failure for a staged rollout (complaints, policy
            violations).

    Raises:
        SpecDefinitionError: A bad event name, path or weight; `details["field"]` names it.
    """

    event: str
    amount: str | None = None
    weight: float = 1.0
    guardrail: bool = False

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.event, str) or not _EVENT_NAME.match(self.event):
            raise _definition_error(
                "event", f"RewardTerm.event must be an event name such as 'shop.order.paid', got "
                f"{self.event!r}."
            )  # fmt: skip
        if self.amount is not None and (
            not isinstance(self.amount, str) or not _PATH.match(self.amount)
        ):
            raise _definition_error(
                "amount", f"RewardTerm.amount must be a dotted payload path such as 'margin' or "
                f"'order.margin' (or None to count events), got {self.amount!r}."
            )  # fmt: skip
        if as_finite_float(self.weight) is None:
            raise _definition_error(
                "weight", f"RewardTerm.weight must be a finite number, got {self.weight!r}."
            )
        if not isinstance(self.guardrail, bool):
            raise _definition_error(
                "guardrail", f"RewardTerm.guardrail must be True or False, got {self.guardrail!r}."
            )
        object.__setattr__(self, "weight", float(self.weight))

    def value(self, payload: Mapping[str, Any]) -> float:
        """This term's contribution for one event payload (a JSON dict).

        A numeric string (how pydantic dumps a `Decimal` to JSON) is read as its number.

        Raises:
            SpecValidationError: The amount path is missing or not a finite number.
        """
        if self.amount is None:
            return self.weight
        raw = _resolve(payload, self.amount)
        if raw is _MISSING:
            raise SpecValidationError(
                f"event {self.event!r} has no payload field {self.amount!r}, which the reward "
                "model reads as the amount; emit it or change RewardTerm.amount.",
                details={"field": self.amount, "event": self.event},
            )
        if isinstance(raw, str):  # a Decimal amount arrives as a JSON string
            try:
                raw = float(decimal.Decimal(raw.strip()))
            except (decimal.InvalidOperation, ValueError):
                raise SpecValidationError(
                    f"event {self.event!r}: payload field {self.amount!r} must be a number, got "
                    f"{raw[:40]!r}.",
                    details={"field": self.amount, "event": self.event},
                ) from None
        return self.weight * _check_number(raw, self.amount)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "event": self.event,
            "amount": self.amount,
            "weight": self.weight,
            "guardrail": self.guardrail,
        }


_MISSING: Any = object()


def _resolve(payload: Mapping[str, Any], path: str) -> Any:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _terms(value: Iterable[RewardTerm]) -> tuple[RewardTerm, ...]:
    if isinstance(value, RewardTerm | str | bytes) or not isinstance(value, Iterable):
        raise _definition_error("terms", f"terms must be a sequence of RewardTerm, got {value!r}.")
    return tuple(value)


@attrs.frozen
class RewardModel:
    """How outcome events become a decision's reward: a spec of kind `reward_model`.

    The reward of a decision is the sum of its outcome values (one per event, see
    `RewardTerm`), observed for `horizon` after the decision, then clipped to `bounds` and, with
    `normalize`, mapped linearly from `bounds` onto [0, 1] (what `ThompsonSampling` learns from).
    A decision with no outcome has reward 0 (before scaling). Build it with
    `define_reward_model`; register it in a `SpecRegistry` to have it in the IR and its diffs.

    Attributes:
        name: Dotted lowercase name (`retention.offer.reward`).
        version: Positive integer.
        terms: The events that count, one term per event name.
        decision_field: Dotted payload path of the decision id in outcome events.
        horizon: How long after a decision its outcomes count (`settle_due` settles after it).
        bounds: `(low, high)` the raw reward is clipped to, or `None`.
        normalize: Map `bounds` onto [0, 1] (needs `bounds`).
        description: For docs.
    """

    kind: ClassVar[str] = "reward_model"

    name: str
    version: int
    terms: tuple[RewardTerm, ...]
    decision_field: str = "decision_id"
    horizon: dt.timedelta = dt.timedelta(days=30)
    bounds: tuple[float, float] | None = None
    normalize: bool = False
    description: str = ""

    def term(self, event: str) -> RewardTerm | None:
        """The term for an event name, or `None` when the event does not count."""
        for t in self.terms:
            if t.event == event:
                return t
        return None

    @property
    def events(self) -> tuple[str, ...]:
        """The event names that count, in declaration order."""
        return tuple(t.event for t in self.terms)

    def reward(self, outcomes: Iterable[Outcome]) -> float:
        """The reward of a decision from its outcomes (summed, clipped, optionally normalised)."""
        total = math.fsum(o.value for o in outcomes)
        if self.bounds is None:
            return total
        low, high = self.bounds
        total = min(max(total, low), high)
        if self.normalize:
            return (total - low) / (high - low)
        return total

    def to_ir(self) -> dict[str, Any]:
        """The IR entry (core's `to_ir` calls it for this kind)."""
        return {
            "name": self.name,
            "version": self.version,
            "terms": [t.to_dict() for t in self.terms],
            "decision_field": self.decision_field,
            "horizon_s": self.horizon.total_seconds(),
            "bounds": None if self.bounds is None else list(self.bounds),
            "normalize": self.normalize,
            "description": self.description,
        }


def define_reward_model(
    name: str,
    *,
    terms: Iterable[RewardTerm],
    version: int = 1,
    decision_field: str = "decision_id",
    horizon: dt.timedelta = dt.timedelta(days=30),
    bounds: tuple[float, float] | None = None,
    normalize: bool = False,
    description: str = "",
) -> RewardModel:
    """Declare a reward model (see `RewardModel` for the fields).

    Example:
        ```py
        reward = define_reward_model(
            "retention.offer.reward",
            terms=[
                RewardTerm("shop.order.paid", amount="margin"),
                RewardTerm("shop.refund.issued", amount="amount", weight=-1.0),
                RewardTerm("support.complaint.filed", weight=-20.0, guardrail=True),
            ],
            horizon=timedelta(days=14),
        )
        ```

    Raises:
        SpecDefinitionError: A bad name, version, empty or duplicate terms, a bad path, a
            non-positive horizon, bounds that are not `low < high` finite numbers, or
            `normalize` without bounds; `details["field"]` names the field.
    """
    if not isinstance(name, str) or not _SPEC_NAME.match(name):
        raise _definition_error(
            "name", f"reward model name {name!r} is not valid: use lowercase dotted segments, "
            "e.g. 'retention.offer.reward'."
        )  # fmt: skip
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _definition_error(
            "version", f"{name}: version must be a positive integer, got {version!r}."
        )
    term_list = _terms(terms)
    if not term_list:
        raise _definition_error("terms", f"{name}: a reward model needs at least one RewardTerm.")
    seen: set[str] = set()
    for t in term_list:
        if not isinstance(t, RewardTerm):
            raise _definition_error(
                "terms", f"{name}: terms must be RewardTerm objects, got {t!r}."
            )
        if t.event in seen:
            raise _definition_error(
                "terms", f"{name}: two terms count event {t.event!r}; give each event one term "
                "(sum the weights)."
            )  # fmt: skip
        seen.add(t.event)
    if not isinstance(decision_field, str) or not _PATH.match(decision_field):
        raise _definition_error(
            "decision_field", f"{name}: decision_field must be a dotted payload path such as "
            f"'decision_id', got {decision_field!r}."
        )  # fmt: skip
    if not isinstance(horizon, dt.timedelta) or horizon <= dt.timedelta(0):
        raise _definition_error(
            "horizon", f"{name}: horizon must be a positive timedelta, got {horizon!r}."
        )
    clean_bounds: tuple[float, float] | None = None
    if bounds is not None:
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            raise _definition_error(
                "bounds", f"{name}: bounds must be (low, high) numbers, got {bounds!r}."
            ) from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise _definition_error(
                "bounds", f"{name}: bounds must be finite with low < high, got {bounds!r}."
            )
        clean_bounds = (low, high)
    if not isinstance(normalize, bool):
        raise _definition_error("normalize", f"{name}: normalize must be True or False.")
    if normalize and clean_bounds is None:
        raise _definition_error(
            "normalize", f"{name}: normalize=True maps bounds onto [0, 1]; pass bounds=(low, high)."
        )
    return RewardModel(
        name=name,
        version=version,
        terms=term_list,
        decision_field=decision_field,
        horizon=horizon,
        bounds=clean_bounds,
        normalize=normalize,
        description=str(description),
    )


# -- outcomes and labels ------------------------------------------------------------------------


@attrs.frozen
class Outcome:
    """One business event joined to a decision.

    Attributes:
        event_id: The event's id (an outcome counts once per event id).
        decision_id: The decision it belongs to.
        event: Event name.
        value: What it adds to the reward (`RewardTerm.value`).
        guardrail: Whether the term is a guardrail (a rollout failure).
        occurred_at: When the event happened (aware; converted to UTC).
        org_id: The tenant of the event (and so of its decision), `None` without tenants.

    Raises:
        SpecValidationError: A malformed field, named in `details["field"]`.
    """

    event_id: str
    decision_id: str
    event: str
    value: float
    guardrail: bool
    occurred_at: dt.datetime
    org_id: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_org(self.org_id)
        _check_name(self.event_id, "event_id")
        _check_name(self.decision_id, "decision_id")
        _check_name(self.event, "event")
        object.__setattr__(self, "value", _check_number(self.value, "value"))
        if not isinstance(self.guardrail, bool):
            raise SpecValidationError(
                f"guardrail must be True or False, got {self.guardrail!r}.",
                details={"field": "guardrail"},
            )
        at = _check_aware(self.occurred_at, "occurred_at").astimezone(dt.UTC)
        object.__setattr__(self, "occurred_at", at)


@attrs.frozen
class Label:
    """A person's override of a decision: the arm they chose instead (or confirmed).

    Attributes:
        decision_id: The decision.
        arm: The arm the person chose (equal to the decision's arm for a confirmation).
        actor: Who decided (an actor id).
        reason: Why, in their words.
        labelled_at: When (aware; converted to UTC).
        org_id: The tenant of the decision, `None` without tenants.

    Raises:
        SpecValidationError: A malformed field, named in `details["field"]`.
    """

    decision_id: str
    arm: str
    actor: str
    reason: str
    labelled_at: dt.datetime
    org_id: str | None = None

    def __attrs_post_init__(self) -> None:
        _check_org(self.org_id)
        _check_name(self.decision_id, "decision_id")
        _check_name(self.arm, "arm")
        _check_name(self.actor, "actor")
        if not isinstance(self.reason, str) or len(self.reason) > 2000:
            raise SpecValidationError(
                "reason must be a string of at most 2000 characters.", details={"field": "reason"}
            )
        if _UNSTORABLE.search(self.reason):
            raise SpecValidationError(
                "reason must not hold a NUL character or a lone surrogate (no store keeps them).",
                details={"field": "reason"},
            )
        at = _check_aware(self.labelled_at, "labelled_at").astimezone(dt.UTC)
        object.__setattr__(self, "labelled_at", at)


def _check_org(value: Any, field: str = "org_id") -> str | None:
    if value is None:
        return None
    return _check_name(value, field)


class DecisionStatus(enum.StrEnum):
    """Where a decision stands in the outcome store's per-decision state row."""

    OPEN = "open"  # neither settled nor overridden
    SETTLED = "settled"  # its reward went (or is going) to the policy
    OVERRIDDEN = "overridden"  # a person chose another arm: never rewarded


@runtime_checkable
class OutcomeStore(Protocol):
    """Where outcomes, labels and each decision's tenant and state are kept (async; memory and
    SQL adapters ship).

    Every adapter passes the same conformance suite: an event id is recorded once (also under
    concurrent calls), a decision has at most one label, reads return insertion order, and a
    decision is settled or overridden, never both (`claim_settlement` and an overriding
    `add_label` are conditional writes on one state row per decision).
    """

    async def register(self, decision_id: str, org_id: str | None) -> None:
        """Record the tenant of a decision the log just accepted as new (state `open`, or the
        state a row written in the meantime holds; its org is replaced by `org_id`)."""
        ...

    async def org_of(self, decision_id: str) -> str | None:
        """The tenant recorded for a decision (`None`: no tenant, or never registered)."""
        ...

    async def claim_settlement(self, decision_id: str) -> bool:
        """Mark the decision `settled` unless it is `overridden`; `False` when it is."""
        ...

    async def release_settlement(self, decision_id: str) -> None:
        """Back to `open` after a settlement that failed before the policy was rewarded."""
        ...

    async def add(self, outcome: Outcome) -> bool:
        """Record an outcome; `False` (nothing written) when its event id is already recorded."""
        ...

    async def outcomes(self, decision_id: str) -> list[Outcome]:
        """A decision's outcomes in the order they were recorded."""
        ...

    async def add_label(self, label: Label, *, override: bool = False) -> None:
        """Record a label; with `override` (another arm than the policy's), in the same
        transaction mark the decision `overridden`, only if it is `open`.

        Raises:
            ConflictError: The decision is already labelled, or (`override`) already settled.
        """
        ...

    async def labels(self, decision_ids: Iterable[str] | None = None) -> list[Label]:
        """Labels in insertion order (only these decisions' when `decision_ids` is given)."""
        ...


def _label_conflict(decision_id: str) -> ConflictError:
    return ConflictError(
        f"decision {decision_id!r} is already labelled; a decision has one human override.",
        details={"decision_id": decision_id, "field": "decision_id"},
    )


def _settled_conflict(decision_id: str) -> ConflictError:
    return ConflictError(
        f"decision {decision_id!r} was already settled: the policy was rewarded for its arm, so "
        "an override with another arm cannot be recorded any more; record overrides before the "
        "decision is settled.",
        details={"decision_id": decision_id, "field": "decision_id"},
    )


class MemoryOutcomeStore:
    """In-memory `OutcomeStore`, for tests, notebooks and single-process services.

    Each method runs without awaiting, so concurrent coroutines see every call as atomic.
    """

    def __init__(self) -> None:
        self._by_event: dict[str, Outcome] = {}
        self._by_decision: dict[str, list[Outcome]] = {}
        self._labels: dict[str, Label] = {}
        self._orgs: dict[str, str | None] = {}
        self._status: dict[str, DecisionStatus] = {}

    async def register(self, decision_id: str, org_id: str | None) -> None:
        """Record a new decision's tenant."""
        self._orgs[decision_id] = _check_org(org_id)
        self._status.setdefault(decision_id, DecisionStatus.OPEN)

    async def org_of(self, decision_id: str) -> str | None:
        """The decision's tenant (`None` when none was recorded)."""
        return self._orgs.get(decision_id)

    async def claim_settlement(self, decision_id: str) -> bool:
        """`settled` unless `overridden`."""
        if self._status.get(decision_id) is DecisionStatus.OVERRIDDEN:
            return False
        self._status[decision_id] = DecisionStatus.SETTLED
        return True

    async def release_settlement(self, decision_id: str) -> None:
        """`settled` back to `open`."""
        if self._status.get(decision_id) is DecisionStatus.SETTLED:
            self._status[decision_id] = DecisionStatus.OPEN

    async def add(self, outcome: Outcome) -> bool:
        """Record an outcome once per event id."""
        if outcome.event_id in self._by_event:
            return False
        self._by_event[outcome.event_id] = outcome
        self._by_decision.setdefault(outcome.decision_id, []).append(outcome)
        return True

    async def outcomes(self, decision_id: str) -> list[Outcome]:
        """A decision's outcomes in insertion order."""
        return list(self._by_decision.get(decision_id, ()))

    async def add_label(self, label: Label, *, override: bool = False) -> None:
        """Record a label (with `override`, mark the decision `overridden` if it is `open`).

        Raises:
            ConflictError: The decision is already labelled, or (`override`) already settled.
        """
        if label.decision_id in self._labels:
            raise _label_conflict(label.decision_id)
        status = self._status.get(label.decision_id, DecisionStatus.OPEN)
        if override:
            if status is not DecisionStatus.OPEN:
                raise _settled_conflict(label.decision_id)
            self._status[label.decision_id] = DecisionStatus.OVERRIDDEN
        self._labels[label.decision_id] = label

    async def labels(self, decision_ids: Iterable[str] | None = None) -> list[Label]:
        """Labels in insertion order."""
        if decision_ids is None:
            return list(self._labels.values())
        wanted = set(decision_ids)
        return [label for d, label in self._labels.items() if d in wanted]


# -- off-policy evaluation ----------------------------------------------------------------------


@attrs.frozen
class OffPolicyEstimate:
    """An estimated mean reward per decision with its confidence interval.

    Attributes:
        method: `ips`, `snips`, `dr` or `on_policy` (the observed mean).
        value: The estimate, in reward units per decision.
        ci_low: Lower end of the two-sided `1 - alpha` interval.
        ci_high: Upper end.
        std_error: Its standard error.
        n: Decisions used.
        alpha: The interval's error rate (0.05 = 95 % interval).
    """

    method: str
    value: float
    ci_low: float
    ci_high: float
    std_error: float
    n: int
    alpha: float

    def covers(self, value: float) -> bool:
        """Whether `value` lies inside the interval."""
        return self.ci_low <= value <= self.ci_high

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return attrs.asdict(self)


@attrs.frozen
class PolicyEvaluation:
    """The three off-policy estimates of one target policy on one log.

    Attributes:
        ips: Inverse propensity scoring.
        snips: Self-normalised IPS.
        dr: Doubly robust.
        n: Decisions used.
        effective_sample_size: `(Σw)² / Σw²` of the importance weights (small = high variance).
        support: Share of decisions where the target put positive probability on the logged arm.
        unsupported: Share of decisions where the target put positive probability on an arm the
            logging policy could not play (probability 0): the estimates are biased (too low)
            unless this is 0.
    """

    ips: OffPolicyEstimate
    snips: OffPolicyEstimate
    dr: OffPolicyEstimate
    n: int
    effective_sample_size: float
    support: float
    unsupported: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "ips": self.ips.to_dict(),
            "snips": self.snips.to_dict(),
            "dr": self.dr.to_dict(),
            "n": self.n,
            "effective_sample_size": self.effective_sample_size,
            "support": self.support,
            "unsupported": self.unsupported,
        }


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha < 1.0:
        raise SpecValidationError(
            f"alpha must be a fraction in (0, 1) (0.05 for a 95 % interval), got {alpha!r}.",
            details={"field": "alpha"},
        )
    return float(alpha)


def _z(alpha: float) -> float:
    return float(_scipy_stats.norm.ppf(1.0 - alpha / 2.0))


def _estimate(method: str, value: float, se: float, n: int, alpha: float) -> OffPolicyEstimate:
    half = _z(alpha) * se
    return OffPolicyEstimate(method, value, value - half, value + half, se, n, alpha)


def _mean_estimate(method: str, terms: FloatArray, alpha: float) -> OffPolicyEstimate:
    n = len(terms)
    se = float(np.std(terms, ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return _estimate(method, float(np.mean(terms)), se, n, alpha)


@attrs.frozen
class _Logged:
    """The arrays of a log against one target policy."""

    arms: tuple[str, ...]
    chosen: npt.NDArray[np.int64]
    rewards: FloatArray
    propensities: FloatArray
    target: FloatArray  # (n, k)
    logging: FloatArray  # (n, k): the logged action distributions
    contexts: FloatArray | None  # (n, d)

    @property
    def weights(self) -> FloatArray:
        n = len(self.chosen)
        w: FloatArray = self.target[np.arange(n), self.chosen] / self.propensities
        return w


def _collect(decisions: Iterable[BanditDecision], target: TargetPolicy, where: str) -> _Logged:
    items = list(decisions)
    if not items:
        raise SpecValidationError(
            f"{where} needs at least one rewarded decision.", details={"field": "decisions"}
        )
    arms: dict[str, int] = {}
    for d in items:
        if d.reward is None:
            raise SpecValidationError(
                f"{where} got decision {d.decision_id!r} without a reward; pass only rewarded "
                "decisions (decisions(rewarded=True)) or settle them first.",
                details={"field": "decisions", "decision_id": d.decision_id},
            )
        for arm in d.probabilities:
            arms.setdefault(arm, len(arms))
    n, k = len(items), len(arms)
    probs = np.zeros((n, k))
    logging = np.zeros((n, k))
    for i, d in enumerate(items):
        for arm, p in d.probabilities.items():
            logging[i, arms[arm]] = p
    for i, d in enumerate(items):
        dist = target(d)
        if not isinstance(dist, Mapping):
            raise SpecValidationError(
                f"{where}: the target policy must return {{arm: probability}}, got {dist!r}.",
                details={"field": "target"},
            )
        total = 0.0
        for arm, p in dist.items():
            if arm not in arms:
                raise SpecValidationError(
                    f"{where}: the target policy gave probability to arm {arm!r}, which no logged "
                    f"decision offered (arms: {list(arms)}).",
                    details={"field": "target", "arm": arm},
                )
            value = _check_number(p, "target")
            if value < 0.0:
                raise SpecValidationError(
                    f"{where}: the target policy gave arm {arm!r} a negative probability.",
                    details={"field": "target"},
                )
            probs[i, arms[arm]] = value
            total += value
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise SpecValidationError(
                f"{where}: the target policy's probabilities for decision {d.decision_id!r} sum to "
                f"{total:.6g}, not 1.",
                details={"field": "target", "decision_id": d.decision_id},
            )
    contexts: FloatArray | None = None
    if all(d.context is not None for d in items):
        widths = {len(d.context or ()) for d in items}
        if len(widths) == 1:
            contexts = np.asarray([d.context for d in items], dtype=np.float64)
    return _Logged(
        arms=tuple(arms),
        chosen=np.asarray([arms[d.arm] for d in items], dtype=np.int64),
        rewards=np.asarray([d.reward for d in items], dtype=np.float64),
        propensities=np.asarray([d.propensity for d in items], dtype=np.float64),
        target=probs,
        logging=logging,
        contexts=contexts,
    )


def ips(
    decisions: Iterable[BanditDecision], target: TargetPolicy, *, alpha: float = 0.05
) -> OffPolicyEstimate:
    """Inverse propensity scoring: `mean(w_i r_i)`, `w_i = π(a_i | x_i) / μ(a_i | x_i)`.

    Unbiased when every arm the target may choose had a positive logged propensity (Horvitz
    and Thompson 1952; for bandits see Dudík, Langford and Li, "Doubly Robust Policy Evaluation
    and Learning", ICML 2011). The interval is `value ± z · sd(w r) / √n`.

    Args:
        decisions: Rewarded logged decisions (their `propensity` is μ).
        target: Maps a decision to the target policy's `{arm: probability}` (summing to 1).
        alpha: Interval error rate (0.05 → 95 %).

    Raises:
        SpecValidationError: No decisions, one without a reward, a target distribution that
            does not sum to 1 or names an arm never offered, or a bad `alpha`.
    """
    a = _check_alpha(alpha)
    logged = _collect(decisions, target, "ips")
    return _mean_estimate("ips", logged.weights * logged.rewards, a)


def _snips(logged: _Logged, alpha: float) -> OffPolicyEstimate:
    w, r = logged.weights, logged.rewards
    n = len(w)
    total = float(w.sum())
    if total <= 0.0:
        return _estimate("snips", 0.0, math.inf, n, alpha)
    value = float(np.dot(w, r)) / total
    # Delta method: Var ≈ Σ (w_i (r_i - V))² / (Σ w)²
    se = math.sqrt(float(np.sum((w * (r - value)) ** 2))) / total
    return _estimate("snips", value, se, n, alpha)


def snips(
    decisions: Iterable[BanditDecision], target: TargetPolicy, *, alpha: float = 0.05
) -> OffPolicyEstimate:
    """Self-normalised IPS: `Σ w_i r_i / Σ w_i` (Swaminathan and Joachims, "The
    Self-Normalized Estimator for Counterfactual Learning", NeurIPS 2015).

    Slightly biased, much less variance than IPS when weights are large; invariant to adding a
    constant to every reward. The interval uses the delta-method standard error
    `√Σ (w_i (r_i - V))² / Σ w_i`.

    Raises:
        SpecValidationError: As `ips`.
    """
    a = _check_alpha(alpha)
    return _snips(_collect(decisions, target, "snips"), a)


class RidgeRewardRegressor:
    """The direct-method reward model of `doubly_robust`: one ridge regression per arm.

    `q̂(x, a) = θ_a · x` with `θ_a = (λI + XᵀX)⁻¹ Xᵀ r` over the decisions that played `a`
    (include a constant 1 in the context for an intercept); without contexts, `q̂(a)` is the arm's
    mean reward shrunk towards the overall mean (`λ` pseudo-observations).

    Args:
        ridge: `λ > 0`.
    """

    def __init__(self, ridge: float = 1.0) -> None:
        if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge > 0:
            raise SpecValidationError(
                f"ridge must be a number > 0, got {ridge!r}.", details={"field": "ridge"}
            )
        self.ridge = float(ridge)

    def fit_predict(
        self,
        train_contexts: FloatArray | None,
        train_arms: npt.NDArray[np.int64],
        train_rewards: FloatArray,
        contexts: FloatArray | None,
        n_arms: int,
        n: int,
    ) -> FloatArray:
        """Fit on the training rows and predict every arm for `n` rows: shape `(n, n_arms)`."""
        out = np.zeros((n, n_arms))
        if train_contexts is None or contexts is None:
            overall = float(train_rewards.mean()) if len(train_rewards) else 0.0
            for a in range(n_arms):
                mask = train_arms == a
                out[:, a] = (train_rewards[mask].sum() + self.ridge * overall) / (
                    mask.sum() + self.ridge
                )
            return out
        d = train_contexts.shape[1]
        for a in range(n_arms):
            mask = train_arms == a
            x, y = train_contexts[mask], train_rewards[mask]
            theta = np.linalg.solve(self.ridge * np.eye(d) + x.T @ x, x.T @ y)
            out[:, a] = contexts @ theta
        return out


def _dr(
    logged: _Logged, alpha: float, regressor: RidgeRewardRegressor, folds: int
) -> OffPolicyEstimate:
    n, k = logged.target.shape
    # Cross-fitting: each row's q̂ comes from a model fitted on the other folds, so the reward
    # model never saw the reward it corrects (deterministic folds: row index modulo `folds`).
    q = np.zeros((n, k))
    fold_of = np.arange(n) % folds if n >= 2 * folds else np.zeros(n, dtype=np.int64)
    for f in np.unique(fold_of):
        test = fold_of == f
        train = ~test if (~test).any() else test
        ctx_train = None if logged.contexts is None else logged.contexts[train]
        ctx_test = None if logged.contexts is None else logged.contexts[test]
        q[test] = regressor.fit_predict(
            ctx_train, logged.chosen[train], logged.rewards[train], ctx_test, k, int(test.sum())
        )
    rows = np.arange(n)
    direct = np.sum(logged.target * q, axis=1)
    correction = logged.weights * (logged.rewards - q[rows, logged.chosen])
    return _mean_estimate("dr", direct + correction, alpha)


def doubly_robust(
    decisions: Iterable[BanditDecision],
    target: TargetPolicy,
    *,
    alpha: float = 0.05,
    regressor: RidgeRewardRegressor | None = None,
    folds: int = 2,
) -> OffPolicyEstimate:
    """Doubly robust estimate (Dudík, Langford and Li, "Doubly Robust Policy Evaluation and
    Learning", ICML 2011): `mean(Σ_a π(a|x_i) q̂(x_i, a) + w_i (r_i - q̂(x_i, a_i)))`.

    Unbiased when either the propensities or the reward model `q̂` are right, with less
    variance than IPS when `q̂` is good. `q̂` is a `RidgeRewardRegressor` (per-arm ridge on the
    logged contexts) fitted with `folds`-fold cross-fitting. Interval: `value ± z · sd / √n`.

    Raises:
        SpecValidationError: As `ips`, or `folds` below 2.
    """
    a = _check_alpha(alpha)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise SpecValidationError(
            f"folds must be an int >= 2, got {folds!r}.", details={"field": "folds"}
        )
    logged = _collect(decisions, target, "doubly_robust")
    return _dr(logged, a, regressor or RidgeRewardRegressor(), folds)


def evaluate_policy(
    decisions: Iterable[BanditDecision],
    target: TargetPolicy,
    *,
    alpha: float = 0.05,
    regressor: RidgeRewardRegressor | None = None,
    folds: int = 2,
) -> PolicyEvaluation:
    """IPS, self-normalised IPS and doubly robust estimates of `target` on one log.

    Args:
        decisions: Rewarded logged decisions (e.g. `await service.decisions(rewarded=True)`).
        target: `decision -> {arm: probability}` of the policy being evaluated.
        alpha: Interval error rate of all three.
        regressor: The doubly robust estimate's reward model.
        folds: Cross-fitting folds of the doubly robust estimate.

    Returns:
        A `PolicyEvaluation`.

    Raises:
        SpecValidationError: As `ips` and `doubly_robust`.
    """
    a = _check_alpha(alpha)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise SpecValidationError(
            f"folds must be an int >= 2, got {folds!r}.", details={"field": "folds"}
        )
    logged = _collect(decisions, target, "evaluate_policy")
    w = logged.weights
    ess = float(w.sum() ** 2 / np.sum(w**2)) if np.any(w > 0) else 0.0
    return PolicyEvaluation(
        ips=_mean_estimate("ips", w * logged.rewards, a),
        snips=_snips(logged, a),
        dr=_dr(logged, a, regressor or RidgeRewardRegressor(), folds),
        n=len(w),
        effective_sample_size=ess,
        support=float(np.mean(w > 0)),
        unsupported=float(np.mean(np.any((logged.target > 0) & (logged.logging <= 0), axis=1))),
    )


# -- the loop -----------------------------------------------------------------------------------


def _overridden_error(
    decision_id: str, arm: str, label: Label | None = None
) -> SpecValidationError:
    by = f" by {label.actor!r} (arm {label.arm!r} instead of {arm!r})" if label else ""
    return DecisionOverriddenError(
        f"decision {decision_id!r} was overridden{by}: the policy's arm never acted, so its "
        "outcome is not the policy's reward; the label keeps what happened.",
        details={"field": "decision_id", "decision_id": decision_id},
    )


class OutcomeStatus(enum.StrEnum):
    """What `DecisionLoop.handle` did with an event."""

    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # this event id was already recorded
    IGNORED = "ignored"  # not a reward event, or no decision id in the payload
    UNKNOWN_DECISION = "unknown_decision"  # the decision id is not in the log
    LATE = "late"  # recorded, but the decision's reward was already settled
    FOREIGN_ORG = "foreign_org"  # the event's org is not the decision's: never rewarded


@attrs.frozen
class ShadowReport:
    """The live policy against a shadow candidate, over the same decisions.

    Attributes:
        live_policy: Name of the live policy.
        candidate_policy: Name of the candidate.
        n: Live decisions with a shadow choice and a settled reward.
        pending: Live decisions with a shadow choice still waiting for their reward.
        agreement: Share of the `n` decisions where the candidate's shadow arm was the live arm.
        live: The live policy's observed mean reward (`on_policy`) with its interval.
        candidate: Off-policy estimates of the candidate on those decisions.
        arm_counts: `{arm: (live count, candidate shadow count)}`.
    """

    live_policy: str
    candidate_policy: str
    n: int
    pending: int
    agreement: float
    live: OffPolicyEstimate
    candidate: PolicyEvaluation
    arm_counts: Mapping[str, tuple[int, int]]

    @property
    def lift(self) -> float:
        """Doubly robust candidate value minus the live mean (reward units per decision)."""
        return self.candidate.dr.value - self.live.value

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "live_policy": self.live_policy,
            "candidate_policy": self.candidate_policy,
            "n": self.n,
            "pending": self.pending,
            "agreement": self.agreement,
            "live": self.live.to_dict(),
            "candidate": self.candidate.to_dict(),
            "lift": self.lift,
            "arm_counts": {arm: list(c) for arm, c in self.arm_counts.items()},
        }


class DecisionLoop:
    """Decide with a live bandit service, learn from business events, compare and promote.

    * `choose` decides through the live service (or, while a promotion rollout runs, through
      the service the rollout routes the subject to) and, with a shadow candidate, logs the
      candidate's choice for the same context as `shadow:<decision id>`, never acting on it.
    * `handle(event)` (subscribe it to the bus for the reward model's events) joins an event to
      its decision by the decision id in its payload and records its value once per event id.
    * `settle(decision_id)` turns the outcomes into the reward (`RewardModel.reward`) and feeds
      it to the service that decided (once; the bandit log's set-once write); `settle_due`
      settles every decision whose horizon has passed.
    * `label` records a person's override; `shadow_report` compares live and candidate;
      `promote` starts a guarded staged rollout of the candidate.

    `choose` matches the `DecisionPort` protocol of `contractspec.agent.decisions` (as does a
    bare `BanditService`), so agents can use either.

    Args:
        service: The live policy's service (its log holds every decision of the loop).
        reward_model: How events become rewards.
        outcomes: Where outcomes and labels go (`MemoryOutcomeStore()` by default; use
            `contractspec.growth.decisions_sql.SqlOutcomeStore` for SQLite or PostgreSQL).
        shadow: A candidate policy to run in shadow mode (its decisions go to the same log).
        clock: Time source (`settle_due`, labels); the service's clock by default.
    """

    def __init__(
        self,
        service: BanditService,
        reward_model: RewardModel,
        *,
        outcomes: OutcomeStore | None = None,
        shadow: BanditPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(reward_model, RewardModel):
            raise SpecDefinitionError(
                "reward_model must be made with define_reward_model().",
                details={"field": "reward_model"},
            )
        self.service = service
        self.reward_model = reward_model
        self.outcomes: OutcomeStore = outcomes if outcomes is not None else MemoryOutcomeStore()
        self.clock: Clock = clock or service.clock or SystemClock()
        self.candidate: BanditService | None = None
        if shadow is not None:
            self.candidate = self._candidate_service(shadow)
        self.shadowing = shadow is not None
        self.controller: SpecExperimentController | None = None
        self.operation = f"decision.{service.policy.name}"

    def _candidate_service(self, policy: BanditPolicy) -> BanditService:
        if policy.name == self.service.policy.name:
            raise SpecDefinitionError(
                f"the candidate policy is named {policy.name!r} like the live one; give it its "
                "own name so the log keeps their decisions apart.",
                details={"field": "shadow"},
            )
        return BanditService(policy, log=self.service.log, clock=self.clock)

    def start_shadow(self, policy: BanditPolicy) -> None:
        """Start running `policy` in shadow mode from the next decision on (as `shadow=`).

        Raises:
            SpecDefinitionError: It is named like the live policy.
            ConflictError: The loop has promoted a candidate (it acts for its share, or for
                everyone once the rollout completed): start the next shadow on a new
                `DecisionLoop` whose live service is the policy that now decides.
        """
        if self.controller is not None:
            raise ConflictError(
                "this loop promoted its candidate; start the next shadow on a new DecisionLoop "
                "whose live service is the policy that now decides.",
                details={"field": "shadow"},
            )
        self.candidate = self._candidate_service(policy)
        self.shadowing = True

    @property
    def services(self) -> dict[str, BanditService]:
        """Services by policy name (live, and the candidate when there is one)."""
        out = {self.service.policy.name: self.service}
        if self.candidate is not None:
            out[self.candidate.policy.name] = self.candidate
        return out

    # -- deciding ----------------------------------------------------------------------------

    def _route(self, subject: str | None, decision_id: str | None) -> BanditService:
        if self.controller is None or self.candidate is None:
            return self.service
        key = subject or decision_id
        ctx = CallContext(actor=Actor.user(key) if key else Actor.system(), channel="decision")
        version = self.controller.version_for(self.operation, ctx)
        return self.candidate if version == 2 else self.service

    async def choose(
        self,
        context: Sequence[float] | None = None,
        *,
        decision_id: str | None = None,
        subject: str | None = None,
        org_id: str | None = None,
        ctx: CallContext | None = None,
    ) -> BanditDecision:
        """Decide and log; the shadow candidate (if any) logs its choice without acting.

        Args:
            context: Feature vector (required by contextual policies).
            decision_id: Id of the decision; generated by the service when omitted.
            subject: Who the decision is about (customer id): the rollout buckets by it (by the
                decision id when omitted).
            org_id: The tenant the decision is for: only outcome events of this org
                (`EventEnvelope.org_id`) count towards its reward, and only labels given for
                this org are accepted. `None` (no tenant) accepts only events without an org.
            ctx: The caller's `CallContext`; its `org_id` is used when `org_id` is not given.

        Returns:
            The decision that acts (`arm` is what to do).

        Raises:
            ConflictError / SpecValidationError: As `BanditService.choose`;
                `SpecValidationError` also for a malformed `org_id`, or `org_id` and
                `ctx.org_id` that differ.
        """
        org = _check_org(org_id)
        if ctx is not None:
            if org is not None and ctx.org_id != org:
                raise SpecValidationError(
                    f"org_id {org!r} differs from the call context's org {ctx.org_id!r}; pass "
                    "one of them.",
                    details={"field": "org_id"},
                )
            org = _check_org(ctx.org_id)
        service = self._route(subject, decision_id)
        decision = await service.choose(context, decision_id=decision_id)
        await self.outcomes.register(decision.decision_id, org)
        if self.shadowing and self.candidate is not None and service is self.service:
            shadow_id = SHADOW_PREFIX + decision.decision_id
            try:
                await self.candidate.choose(context, decision_id=shadow_id[:200])
            except Exception:  # the shadow must never fail the live decision
                _log.exception(
                    "contractspec.decision_shadow_failed", decision_id=decision.decision_id
                )
        return decision

    # -- outcomes ------------------------------------------------------------------------------

    async def handle(self, event: EventEnvelope) -> OutcomeStatus:
        """Record one business event as an outcome of its decision (a bus subscriber).

        Returns:
            What happened (`OutcomeStatus`): unrelated events are ignored, a repeated event id
            is a duplicate, an event after the reward was settled is recorded as late (kept, not
            counted), an event whose `org_id` is not the decision's org is `FOREIGN_ORG` (not
            recorded, logged as a warning).

        Raises:
            SpecValidationError: The event counts but its amount field is missing or not a
                number (the bus dead-letters it with this message).
        """
        term = self.reward_model.term(event.name)
        if term is None:
            return OutcomeStatus.IGNORED
        payload = event.payload_json()
        decision_id = _resolve(payload, self.reward_model.decision_field)
        if decision_id is _MISSING or not isinstance(decision_id, str) or not decision_id:
            return OutcomeStatus.IGNORED
        if _UNSTORABLE.search(decision_id):  # no logged decision has such an id
            _log.warning("contractspec.decision_outcome_unknown", decision_id=repr(decision_id),
                         event_name=event.name, event_id=repr(event.id))  # fmt: skip
            return OutcomeStatus.UNKNOWN_DECISION
        try:
            decision = await self.service.log.get(decision_id)
        except NotFoundError:
            _log.warning("contractspec.decision_outcome_unknown", decision_id=decision_id,
                         event_name=event.name, event_id=event.id)  # fmt: skip
            return OutcomeStatus.UNKNOWN_DECISION
        org = await self.outcomes.org_of(decision_id)
        if event.org_id != org:  # another tenant's event never rewards this decision
            _log.warning("contractspec.decision_outcome_foreign_org", decision_id=decision_id,
                         event_name=event.name, event_id=repr(event.id),
                         event_org=repr(event.org_id), decision_org=org)  # fmt: skip
            return OutcomeStatus.FOREIGN_ORG
        outcome = Outcome(
            event_id=event.id,
            decision_id=decision_id,
            event=event.name,
            value=term.value(payload),
            guardrail=term.guardrail,
            occurred_at=event.occurred_at,
            org_id=org,
        )
        if not await self.outcomes.add(outcome):
            return OutcomeStatus.DUPLICATE
        return OutcomeStatus.LATE if decision.reward is not None else OutcomeStatus.RECORDED

    async def settle(self, decision_id: str) -> BanditDecision:
        """Compute the decision's reward from its outcomes and feed it to its policy, once.

        Outcomes recorded after `decided_at + horizon` do not count. During a promotion rollout
        the settled decision is reported to the rollout controller (a failure when a guardrail
        outcome is among its outcomes).

        Returns:
            The rewarded decision.

        Raises:
            NotFoundError: Unknown decision id.
            ConflictError: Already settled.
            SpecValidationError: A shadow decision (shadow choices are never rewarded), a
                decision a person overrode with another arm (`label`), or the policy refused
                the reward (e.g. outside [0, 1] for Thompson sampling: set
                `bounds` and `normalize` on the reward model).
        """
        _check_name(decision_id, "decision_id")
        decision = await self.service.log.get(decision_id)
        if decision.decision_id.startswith(SHADOW_PREFIX):
            raise SpecValidationError(
                f"{decision_id!r} is a shadow decision: shadow choices never act and are never "
                "rewarded; settle the live decision instead.",
                details={"field": "decision_id"},
            )
        overrides = await self.outcomes.labels([decision_id])
        if overrides and overrides[0].arm != decision.arm:
            raise _overridden_error(decision_id, decision.arm, overrides[0])
        service = self.services.get(decision.policy)
        if service is None:
            raise SpecValidationError(
                f"decision {decision_id!r} was made by policy {decision.policy!r}, which this "
                f"loop does not run ({', '.join(self.services)}).",
                details={"field": "decision_id"},
            )
        cutoff = decision.decided_at + self.reward_model.horizon
        org = await self.outcomes.org_of(decision_id)
        outcomes = [
            o
            for o in await self.outcomes.outcomes(decision_id)
            if o.occurred_at <= cutoff and o.org_id == org
        ]
        reward = self.reward_model.reward(outcomes)
        if decision.reward is not None:  # the log's set-once write refuses it: ConflictError
            return await service.reward(decision_id, reward)
        if not await self.outcomes.claim_settlement(decision_id):
            raise _overridden_error(decision_id, decision.arm)
        try:
            rewarded = await service.reward(decision_id, reward)
        except ConflictError:  # settled concurrently: the claim is theirs too
            raise
        except Exception:  # refused by the policy: the decision is open again
            await self.outcomes.release_settlement(decision_id)
            raise
        self._report(decision, outcomes)
        return rewarded

    def _report(self, decision: BanditDecision, outcomes: Sequence[Outcome]) -> None:
        if self.controller is None or self.candidate is None:
            return
        version = 2 if decision.policy == self.candidate.policy.name else 1
        failed = any(o.guardrail for o in outcomes)
        self.controller.record(
            TelemetrySample(
                operation=self.operation,
                version=version,
                variant=version,
                org_id=None,
                actor_id=None,
                channel="decision",
                duration_ms=0.0,
                success=not failed,
                error_code=GUARDRAIL_ERROR_CODE if failed else None,
                payload_size=None,
                trace_id=None,
                timestamp=self.clock.now(),
            )
        )

    async def settle_due(self, now: dt.datetime | None = None) -> list[BanditDecision]:
        """Settle every unrewarded decision of the loop's policies whose horizon has passed
        (`decided_at + horizon <= now`, `now` from the clock by default). Shadow choices and
        labelled decisions are skipped (an overridden decision stays unrewarded; a labelled
        confirmation can be settled with `settle`)."""
        at = _check_aware(now, "now") if now is not None else self.clock.now()
        horizon = self.reward_model.horizon
        settled: list[BanditDecision] = []
        overridden = {label.decision_id for label in await self.outcomes.labels()}
        for name in self.services:
            for d in await self.service.log.decisions(name, rewarded=False, until=at - horizon):
                if d.decision_id.startswith(SHADOW_PREFIX) or d.decision_id in overridden:
                    continue
                try:
                    settled.append(await self.settle(d.decision_id))
                except (ConflictError, DecisionOverriddenError):  # settled or overridden meanwhile
                    continue
        return settled

    async def label(
        self,
        decision_id: str,
        arm: str,
        *,
        actor: str,
        reason: str = "",
        org_id: str | None = None,
    ) -> Label:
        """Record a person's override (or confirmation) of a decision as a label.

        An override (another arm than the policy's) and `settle` exclude each other: of a label
        and a settlement at the same moment exactly one wins (a conditional write on the
        decision's state row in the outcome store).

        Args:
            decision_id: The decision.
            arm: The arm the person chose.
            actor: Who (an actor id).
            reason: Why.
            org_id: The tenant labelling; must be the decision's org (`choose(org_id=...)`).

        Raises:
            NotFoundError: Unknown decision id, or a decision of another org (not revealed).
            SpecValidationError: `arm` is not one of the decision's arms, or a malformed field.
            ConflictError: The decision is already labelled, or it was settled (its reward
                went to the policy) and `arm` is another arm: an override must be recorded
                before the decision is settled.
        """
        _check_name(decision_id, "decision_id")
        org = _check_org(org_id)
        decision = await self.service.log.get(decision_id)
        if await self.outcomes.org_of(decision_id) != org:
            _log.warning("contractspec.decision_label_foreign_org", decision_id=decision_id,
                         label_org=org)  # fmt: skip
            raise NotFoundError(
                f"decision {decision_id!r} does not exist in org {org!r}; label a decision with "
                "the org it was made for.",
                details={"field": "org_id", "decision_id": decision_id},
            )
        if arm not in decision.probabilities:
            raise SpecValidationError(
                f"arm {arm!r} is not an arm of decision {decision_id!r} "
                f"({', '.join(decision.probabilities)}).",
                details={"field": "arm"},
            )
        if decision.reward is not None and arm != decision.arm:
            raise ConflictError(
                f"decision {decision_id!r} was already settled: the policy was rewarded for arm "
                f"{decision.arm!r}, so an override with {arm!r} cannot be recorded any more; "
                "record overrides before the decision is settled.",
                details={"decision_id": decision_id, "field": "decision_id"},
            )
        label = Label(decision_id, arm, actor, reason, self.clock.now(), org_id=org)
        await self.outcomes.add_label(label, override=arm != decision.arm)
        return label

    # -- shadow mode and promotion -----------------------------------------------------------

    async def shadow_report(self, *, alpha: float = 0.05) -> ShadowReport:
        """Compare the live policy with the shadow candidate on the decisions both made.

        The candidate is evaluated off-policy from the live decisions' propensities and
        rewards, with the candidate's action distribution logged at decision time.

        Raises:
            SpecDefinitionError: The loop has no candidate.
            SpecValidationError: No settled decision has a shadow choice yet.
        """
        if self.candidate is None:
            raise SpecDefinitionError(
                "this loop has no shadow candidate; pass shadow=policy to DecisionLoop.",
                details={"field": "shadow"},
            )
        a = _check_alpha(alpha)
        log = self.service.log
        shadows = {
            d.decision_id[len(SHADOW_PREFIX) :]: d
            for d in await log.decisions(self.candidate.policy.name)
            if d.decision_id.startswith(SHADOW_PREFIX)
        }
        live = [
            d for d in await log.decisions(self.service.policy.name) if d.decision_id in shadows
        ]
        settled = [d for d in live if d.reward is not None]
        if not settled:
            raise SpecValidationError(
                "no settled live decision has a shadow choice yet; settle some decisions first.",
                details={"field": "decisions"},
            )
        counts: dict[str, list[int]] = {arm: [0, 0] for arm in settled[0].probabilities}
        agree = 0
        for d in settled:
            s = shadows[d.decision_id]
            counts.setdefault(d.arm, [0, 0])[0] += 1
            counts.setdefault(s.arm, [0, 0])[1] += 1
            agree += s.arm == d.arm
        rewards = np.asarray([d.reward for d in settled], dtype=np.float64)
        evaluation = evaluate_policy(
            settled, lambda d: shadows[d.decision_id].probabilities, alpha=a
        )
        return ShadowReport(
            live_policy=self.service.policy.name,
            candidate_policy=self.candidate.policy.name,
            n=len(settled),
            pending=len(live) - len(settled),
            agreement=agree / len(settled),
            live=_mean_estimate("on_policy", rewards, a),
            candidate=evaluation,
            arm_counts={arm: (c[0], c[1]) for arm, c in counts.items()},
        )

    async def promote(
        self,
        report: ShadowReport,
        controller: SpecExperimentController,
        *,
        min_decisions: int = 100,
        max_regression: float = 0.0,
        stages: Sequence[float] | None = None,
        min_samples: int = 100,
        min_dwell: dt.timedelta = dt.timedelta(hours=1),
        guardrails: Guardrails | None = None,
    ) -> RolloutState:
        """Start a guarded staged rollout of the shadow candidate (version 2) over the live
        policy (version 1), if the shadow comparison supports it.

        The gate: at least `min_decisions` compared decisions and the candidate's doubly robust
        lower confidence bound at or above the live mean minus `max_regression`. During the
        rollout `choose` routes each subject by the rollout's coverage and `settle` reports
        every settled decision to `controller` (a failure when a guardrail outcome is among its
        outcomes); the controller advances, completes or rolls back as for any rollout. Shadow
        logging stops (the candidate acts for its share).

        Args:
            report: `await loop.shadow_report()`.
            controller: The rollout controller (its store keeps the state).
            min_decisions: Compared decisions needed.
            max_regression: Tolerated drop of the candidate's lower bound below the live mean.
            stages: As `RolloutPlan` (default `DEFAULT_STAGES`).
            min_samples: As `RolloutPlan`: settled candidate decisions per stage.
            min_dwell: As `RolloutPlan`.
            guardrails: As `RolloutPlan`; by default a rollback once more than 10 % of the
                candidate's settled decisions in a stage had a guardrail outcome (after 20).

        Returns:
            The rollout's first state.

        Raises:
            PromotionRefusedError: The gate failed (the message says by how much).
            SpecDefinitionError: No candidate, or a report about other policies.
            ConflictError: A rollout of this decision point is already running.
        """
        from contractspec.growth.rollouts import DEFAULT_STAGES, Guardrails, RolloutPlan

        if self.candidate is None or report.candidate_policy != self.candidate.policy.name:
            raise SpecDefinitionError(
                "promote needs the shadow report of this loop's candidate.",
                details={"field": "report"},
            )
        if report.n < min_decisions:
            raise PromotionRefusedError(
                f"only {report.n} decisions were compared (min_decisions={min_decisions}); keep "
                "the candidate in shadow mode longer.",
                details={"field": "min_decisions", "n": report.n},
            )
        floor = report.live.value - max_regression
        if report.candidate.dr.ci_low < floor:
            raise PromotionRefusedError(
                f"the candidate's doubly robust lower bound {report.candidate.dr.ci_low:.4g} is "
                f"below the live mean {report.live.value:.4g} minus max_regression "
                f"{max_regression:g}; it is not shown to be at least as good.",
                details={"field": "report", "ci_low": report.candidate.dr.ci_low, "floor": floor},
            )
        plan = RolloutPlan(
            operation=self.operation,
            candidate=2,
            baseline=1,
            stages=tuple(stages) if stages is not None else DEFAULT_STAGES,
            min_samples=min_samples,
            min_dwell=min_dwell,
            guardrails=guardrails
            or Guardrails(
                max_error_rate=0.10,
                sequential=False,
                min_samples=20,
                error_codes=frozenset({GUARDRAIL_ERROR_CODE}),
            ),
        )
        state = await controller.start(plan)
        self.controller = controller
        self.shadowing = False
        return state
