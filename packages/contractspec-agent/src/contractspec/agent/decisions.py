"""Decision points: an agent asks a policy service (a contextual bandit) which action to take.

```python
from contractspec.agent.decisions import DecisionPoint

offer = DecisionPoint(
    "choose_offer",
    port=loop,                     # a growth BanditService or DecisionLoop (any DecisionPort)
    input=Customer,                # what the model passes: a pydantic model
    features=lambda c: [1.0, c.churn_risk, c.orders / 10],
    arms={"none": "no offer", "pct10": "10 % off the next order", "pct20": "20 % off"},
)
agent = define_agent("retention.offer", ..., tools=[offer.tool(), send_offer])
```

The agent package does not import the growth package: a decision point talks to a
[`DecisionPort`][contractspec.agent.decisions.DecisionPort], a small protocol that
`contractspec.growth.BanditService` and `contractspec.growth.decisions.DecisionLoop` satisfy
structurally (any object with the same `choose` works). The port logs each decision with its
context and the propensity of the chosen arm, which is what off-policy evaluation needs.

`DecisionPoint.tool()` is an L0 tool whose call goes through the gateway like any other: it is
recorded in the idempotency ledger before it runs, so a retried or resumed run replays the same
decision instead of logging a second one (the decision id is the gateway's action id). The
action the agent then takes (sending the offer) is a separate tool with its own risk level,
invariants and approvals. Human overrides (a reviewer replacing the chosen arm) are recorded
as labels through a [`LabelPort`][contractspec.agent.decisions.LabelPort] with
`DecisionPoint.record_override`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from attrs import define, field
from pydantic import BaseModel

from contractspec.agent.tools import RiskLevel, Tool, ToolContext, tool
from contractspec.core.errors import SpecDefinitionError, SpecValidationError
from contractspec.core.numbers import as_finite_float

__all__ = [
    "ChosenAction",
    "Decision",
    "DecisionPoint",
    "DecisionPort",
    "LabelPort",
]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")


@runtime_checkable
class ChosenAction(Protocol):
    """What a policy service returns for one decision (e.g. growth's `BanditDecision`)."""

    @property
    def decision_id(self) -> str:
        """Id of the decision (outcome events carry it)."""
        ...

    @property
    def arm(self) -> str:
        """The chosen action."""
        ...

    @property
    def propensity(self) -> float:
        """Probability the policy had of choosing `arm`, in (0, 1]."""
        ...


@runtime_checkable
class DecisionPort(Protocol):
    """A policy service that chooses and logs (growth's `BanditService` and `DecisionLoop`)."""

    async def choose(
        self, context: Sequence[float] | None = None, *, decision_id: str | None = None
    ) -> ChosenAction:
        """Choose an arm for `context`, log the decision with its propensity, return it."""
        ...


@runtime_checkable
class LabelPort(Protocol):
    """Where human overrides go (growth's `DecisionLoop.label`)."""

    async def label(self, decision_id: str, arm: str, *, actor: str, reason: str = "") -> Any:
        """Record that `actor` chose `arm` for `decision_id` instead of (or confirming) the
        policy's choice."""
        ...


@define(frozen=True)
class Decision:
    """One decision made at a decision point.

    Attributes:
        point: The decision point's name.
        decision_id: Id of the logged decision.
        arm: The chosen arm.
        propensity: Its probability under the policy, in (0, 1].
        context: The feature vector the policy saw.
        description: The arm's description (what the agent is told to do).
    """

    point: str
    decision_id: str
    arm: str
    propensity: float
    context: tuple[float, ...]
    description: str

    def to_dict(self) -> dict[str, Any]:
        """What the agent's tool returns (JSON)."""
        return {
            "decision_id": self.decision_id,
            "arm": self.arm,
            "propensity": self.propensity,
            "description": self.description,
        }


def _arms(value: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) < 2:
        raise SpecDefinitionError(
            f"arms must map at least two arm names to descriptions, got {value!r}.",
            details={"field": "arms"},
        )
    out: dict[str, str] = {}
    for arm, text in value.items():
        if not isinstance(arm, str) or not arm or not isinstance(text, str):
            raise SpecDefinitionError(
                f"arms must map arm names (non-empty strings) to descriptions, got {arm!r}: "
                f"{text!r}.",
                details={"field": "arms"},
            )
        out[arm] = text
    return out


@define(frozen=True)
class DecisionPoint:
    """A place where an agent asks a policy which action to take.

    Attributes:
        name: Tool name the model calls (1-64 letters, digits, `_`, `-`).
        port: The policy service (`DecisionPort`).
        input: pydantic model of what the model passes (the facts the features come from).
        features: `input -> feature vector` (finite numbers; the policy's context).
        arms: `{arm: description}`: the policy's arms and what each means for the agent. A
            chosen arm that is not listed is refused (the policy and the point disagree).
        description: What the tool does, for the model.
        labels: Where `record_override` sends human overrides (growth's `DecisionLoop`).

    Raises:
        SpecDefinitionError: A bad name, input model, features callable or arms.
    """

    name: str
    port: DecisionPort = field(eq=False)
    input: type[BaseModel]
    features: Callable[[Any], Sequence[float]] = field(eq=False)
    arms: Mapping[str, str] = field(converter=_arms)
    description: str = ""
    labels: LabelPort | None = field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SpecDefinitionError(
                f"decision point name {self.name!r} is not a valid tool name: use 1-64 letters, "
                "digits, '_' or '-', e.g. 'choose_offer'.",
                details={"field": "name"},
            )
        if not (isinstance(self.input, type) and issubclass(self.input, BaseModel)):
            raise SpecDefinitionError(
                f"{self.name}: input must be a pydantic BaseModel subclass, got {self.input!r}.",
                details={"field": "input"},
            )
        if not callable(self.features):
            raise SpecDefinitionError(
                f"{self.name}: features must be a callable input -> list of numbers.",
                details={"field": "features"},
            )
        if not callable(getattr(self.port, "choose", None)):
            raise SpecDefinitionError(
                f"{self.name}: port must have an async choose(context, *, decision_id) method "
                "(a growth BanditService or DecisionLoop).",
                details={"field": "port"},
            )

    def context(self, args: BaseModel) -> tuple[float, ...]:
        """The feature vector of `args`.

        Raises:
            SpecValidationError: `features` returned something other than finite numbers.
        """
        raw = self.features(args)
        if isinstance(raw, str | bytes) or not isinstance(raw, Sequence):
            raise SpecValidationError(
                f"{self.name}: features must return a sequence of numbers, got {raw!r}.",
                details={"field": "features"},
            )
        out: list[float] = []
        for v in raw:
            if as_finite_float(v) is None:
                raise SpecValidationError(
                    f"{self.name}: features must be finite numbers, got {v!r}.",
                    details={"field": "features"},
                )
            out.append(float(v))
        return tuple(out)

    async def decide(
        self,
        args: BaseModel | Mapping[str, Any],
        *,
        decision_id: str,
        org_id: str | None = None,
    ) -> Decision:
        """Ask the port and return the decision.

        Args:
            args: An `input` instance (or a mapping validated into one).
            decision_id: Id of the decision (at most 200 characters).
            org_id: The tenant the decision is for, passed on to a port whose `choose` takes
                `org_id` (growth's `DecisionLoop`: only that org's outcome events reward it).

        Raises:
            SpecValidationError: Bad arguments or features, or an arm the point does not list.
            ConflictError: The decision id is already logged (from the port).
        """
        if not isinstance(args, self.input):
            try:
                args = self.input.model_validate(args)
            except Exception as exc:
                raise SpecValidationError(
                    f"{self.name}: arguments do not match {self.input.__name__}: {exc}",
                    details={"field": "input"},
                ) from None
        context = self.context(args)
        choose: Callable[..., Awaitable[ChosenAction]] = self.port.choose
        if org_id is not None and _takes_org(choose):
            chosen = await choose(list(context), decision_id=decision_id, org_id=org_id)
        else:
            chosen = await self.port.choose(list(context), decision_id=decision_id)
        if chosen.arm not in self.arms:
            raise SpecValidationError(
                f"{self.name}: the policy chose arm {chosen.arm!r}, which the decision point does "
                f"not list ({', '.join(self.arms)}); give both the same arms.",
                details={"field": "arms", "arm": chosen.arm},
            )
        return Decision(
            point=self.name,
            decision_id=chosen.decision_id,
            arm=chosen.arm,
            propensity=float(chosen.propensity),
            context=context,
            description=self.arms[chosen.arm],
        )

    def tool(self, *, risk: RiskLevel = RiskLevel.L0) -> Tool:
        """The tool an agent calls to decide (recorded in the gateway's ledger, so a retried or
        resumed run replays the same decision; its decision id is the call's action id).

        The model sees the `input` schema; the tool returns
        `{"decision_id", "arm", "propensity", "description"}`.
        """
        point = self

        async def decide(args: BaseModel, ctx: ToolContext) -> dict[str, Any]:
            decision = await point.decide(args, decision_id=ctx.action_id, org_id=ctx.call.org_id)
            return decision.to_dict()

        decide.__annotations__ = {"args": self.input, "ctx": ToolContext, "return": dict}
        arms = "; ".join(f"{arm}: {text}" for arm, text in self.arms.items())
        description = self.description or f"Choose one of: {arms}."
        return tool(name=self.name, description=description, risk=risk, side_effects=True)(decide)

    async def record_override(
        self,
        decision_id: str,
        arm: str,
        *,
        actor: str,
        reason: str = "",
        org_id: str | None = None,
    ) -> Any:
        """Record that a person replaced (or confirmed) the decision's arm.

        `org_id` (the tenant of the decision) is passed on to a labels port whose `label` takes
        it (growth's `DecisionLoop` refuses a label from another org than the decision's).

        Raises:
            SpecDefinitionError: The point has no `labels` port.
            SpecValidationError: `arm` is not one of the point's arms.
        """
        if self.labels is None:
            raise SpecDefinitionError(
                f"{self.name}: pass labels= (e.g. the growth DecisionLoop) to record overrides.",
                details={"field": "labels"},
            )
        if arm not in self.arms:
            raise SpecValidationError(
                f"{self.name}: {arm!r} is not an arm ({', '.join(self.arms)}).",
                details={"field": "arm"},
            )
        label: Callable[..., Awaitable[Any]] = self.labels.label
        if org_id is not None and _takes_org(label):
            return await label(decision_id, arm, actor=actor, reason=reason, org_id=org_id)
        return await self.labels.label(decision_id, arm, actor=actor, reason=reason)


def _takes_org(method: Callable[..., Any]) -> bool:
    """Whether a port method accepts an `org_id` keyword (growth's `DecisionLoop` does)."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "org_id" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
