"""Planning: an agent directory (who can do what) and a `Planner` that splits a goal into tasks.

```python
directory = AgentDirectory()
directory.register(researcher, capabilities=["research"])
directory.register(biller, capabilities=["billing"], max_risk=RiskLevel.L2)
planner = Planner(planner_agent("openai/gpt-4o-mini"))
```

The planner is an agent with a structured output (`Plan`): the model proposes steps, each with a
capability, inputs, a risk level and the earlier steps it depends on. The plan is checked before
anything is stored (known capabilities, an agent allowed at that risk, dependencies that point
backwards, so the plan is a DAG); a bad plan is refused with `PlanError` naming the step and field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from attrs import define
from pydantic import BaseModel, Field

from contractspec.agent.runner import AgentRunner, RunResult
from contractspec.agent.specs import AgentSpec, define_agent
from contractspec.agent.tools import RiskLevel
from contractspec.core import (
    CallContext,
    ConfigurationError,
    SpecDefinitionError,
    SpecValidationError,
)

__all__ = [
    "AgentDirectory",
    "Plan",
    "PlanError",
    "PlanStep",
    "Planner",
    "planner_agent",
]

_CAPABILITY = r"^[a-z][a-z0-9_.-]{0,63}$"


class PlanStep(BaseModel):
    """One step of a plan (what the planner model returns).

    Attributes:
        goal: What the step should achieve (1-2000 characters).
        capability: Which kind of agent does it (a capability of the `AgentDirectory`).
        inputs: JSON inputs for that agent.
        depends_on: 0-based indexes of earlier steps whose results this step needs.
        risk: Highest risk level (0-3) the step is expected to need.
    """

    goal: Annotated[str, Field(min_length=1, max_length=2000)]
    capability: Annotated[str, Field(pattern=_CAPABILITY)]
    inputs: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    risk: Annotated[int, Field(ge=0, le=3)] = 0


class Plan(BaseModel):
    """A goal split into steps, in order (a step may only depend on earlier steps)."""

    steps: Annotated[list[PlanStep], Field(min_length=1)]


class PlanError(SpecValidationError):
    """The planner's plan cannot be used: `details["field"]` names the step and field
    (`steps[2].capability`), the message says what to change."""

    code = "plan_error"


def _plan_error(field_name: str, message: str) -> PlanError:
    return PlanError(
        message,
        errors=[{"loc": field_name, "field": field_name, "msg": message}],
        details={"field": field_name},
    )


@define(frozen=True)
class _Entry:
    agent: AgentSpec
    capabilities: frozenset[str]
    max_risk: RiskLevel


class AgentDirectory:
    """The agents an orchestrator may assign tasks to, by capability.

    Assignment is deterministic: the first registered agent that has the capability and whose
    `max_risk` covers the task's risk.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry] = []

    def register(
        self,
        agent: AgentSpec,
        *,
        capabilities: Iterable[str],
        max_risk: RiskLevel = RiskLevel.L3,
    ) -> AgentDirectory:
        """Add `agent` with what it can do; returns the directory (chainable).

        Raises:
            SpecDefinitionError: No capability, a malformed one (lowercase, digits, `_.-`, up to
                64 characters), or an agent name registered twice.
        """
        caps = frozenset(capabilities) if not isinstance(capabilities, str) else {capabilities}
        if not caps or any(not isinstance(c, str) or not re.match(_CAPABILITY, c) for c in caps):
            raise SpecDefinitionError(
                f"capabilities of {agent.name!r} must be non-empty lowercase names such as "
                f"'research' or 'billing', got {sorted(map(str, caps))!r}",
                details={"field": "capabilities"},
            )
        if any(e.agent.name == agent.name for e in self._entries):
            raise SpecDefinitionError(
                f"agent {agent.name!r} is already in the directory; register each agent once",
                details={"field": "agent"},
            )
        self._entries.append(_Entry(agent, frozenset(caps), RiskLevel(max_risk)))
        return self

    def capabilities(self) -> dict[str, list[str]]:
        """`{capability: [agent names]}`, sorted."""
        out: dict[str, list[str]] = {}
        for e in self._entries:
            for c in e.capabilities:
                out.setdefault(c, []).append(e.agent.name)
        return dict(sorted(out.items()))

    @property
    def agents(self) -> list[AgentSpec]:
        """The registered agents, in registration order."""
        return [e.agent for e in self._entries]

    def find(self, capability: str, risk: RiskLevel = RiskLevel.L0) -> AgentSpec | None:
        """The agent assigned for `capability` at `risk`, or `None`."""
        for e in self._entries:
            if capability in e.capabilities and e.max_risk >= risk:
                return e.agent
        return None

    def assign(self, capability: str, risk: RiskLevel = RiskLevel.L0) -> AgentSpec:
        """The agent for `capability` at `risk`.

        Raises:
            ConfigurationError: No agent has the capability, or none is allowed at that risk
                (`details["field"]` is `capability` or `risk`).
        """
        agent = self.find(capability, risk)
        if agent is not None:
            return agent
        known = self.capabilities()
        if capability not in known:
            raise ConfigurationError(
                f"no agent has capability {capability!r}; register one with "
                f"AgentDirectory.register(agent, capabilities=[{capability!r}]) (known: "
                f"{sorted(known)})",
                details={"field": "capability", "capability": capability},
            )
        raise ConfigurationError(
            f"no agent with capability {capability!r} may take risk L{int(risk)}; register one "
            f"with max_risk=RiskLevel.L{int(risk)} or lower the task's risk",
            details={"field": "risk", "capability": capability},
        )

    def get(self, name: str) -> AgentSpec:
        """The registered agent called `name`.

        Raises:
            ConfigurationError: Not registered.
        """
        for e in self._entries:
            if e.agent.name == name:
                return e.agent
        raise ConfigurationError(
            f"agent {name!r} is not in the orchestrator's AgentDirectory; register it",
            details={"field": "agent", "agent": name},
        )


PLANNER_INSTRUCTIONS = (
    "You split a goal into a short plan of steps for specialised agents. Answer with JSON: "
    '{"steps": [{"goal": str, "capability": str, "inputs": {}, "depends_on": [earlier step '
    'indexes], "risk": 0-3}]}. Use only the listed capabilities. Keep steps few and concrete.'
)


def planner_agent(
    model: str, *, name: str = "orchestration.planner", instructions: str = PLANNER_INSTRUCTIONS
) -> AgentSpec:
    """A planner agent: no tools, structured output `Plan`.

    Args:
        model: Model name for the runner's client (any litellm model, or any string offline).
        name: Agent name.
        instructions: System prompt (the default explains the JSON shape).
    """
    return define_agent(name, model=model, instructions=instructions, output_type=Plan)


@define
class Planner:
    """Splits a goal into tasks with a planner agent (`planner_agent`).

    Attributes:
        agent: An agent whose `output_type` is `Plan`.
        max_steps: Most steps a plan may have (default 20).

    Raises:
        SpecDefinitionError: The agent's output type is not `Plan`, or `max_steps < 1`.
    """

    agent: AgentSpec
    max_steps: int = 20

    def __attrs_post_init__(self) -> None:
        if self.agent.output_type is not Plan:
            raise SpecDefinitionError(
                f"the planner agent {self.agent.name!r} must have output_type=Plan; build it "
                "with planner_agent(model)",
                details={"field": "agent"},
            )
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int):
            raise SpecDefinitionError("max_steps must be an int", details={"field": "max_steps"})
        if self.max_steps < 1:
            raise SpecDefinitionError(
                f"max_steps must be >= 1, got {self.max_steps}", details={"field": "max_steps"}
            )

    def prompt(
        self,
        goal: str,
        directory: AgentDirectory,
        *,
        inputs: Mapping[str, Any],
        constraints: Sequence[str],
    ) -> str:
        """The planner's user message: the goal, inputs, constraints and capabilities."""
        caps = {
            c: [directory.get(n).description or n for n in names]
            for c, names in directory.capabilities().items()
        }
        return json.dumps(
            {"goal": goal, "inputs": dict(inputs), "constraints": list(constraints),
             "capabilities": caps, "max_steps": self.max_steps},
            default=str, sort_keys=True,
        )  # fmt: skip

    async def plan(
        self,
        runner: AgentRunner,
        goal: str,
        ctx: CallContext,
        directory: AgentDirectory,
        *,
        inputs: Mapping[str, Any] | None = None,
        constraints: Sequence[str] = (),
        max_risk: RiskLevel = RiskLevel.L3,
    ) -> tuple[Plan, RunResult]:
        """Ask the planner agent for a plan and check it.

        Returns:
            The checked `Plan` and the planner's `RunResult` (its usage counts against the
            tree's budget).

        Raises:
            PlanError: The run did not complete with a plan, or the plan is unusable (see
                `check`).
        """
        result = await runner.run(
            self.agent, self.prompt(goal, directory, inputs=inputs or {}, constraints=constraints),
            ctx,
        )  # fmt: skip
        if not isinstance(result.output, Plan):
            raise _plan_error(
                "steps",
                f"the planner run {result.run_id!r} ended {result.status.value} without a plan",
            )
        self.check(result.output, directory, max_risk=max_risk)
        return result.output, result

    def check(
        self, plan: Plan, directory: AgentDirectory, *, max_risk: RiskLevel = RiskLevel.L3
    ) -> None:
        """Refuse a plan that cannot run.

        Raises:
            PlanError: More than `max_steps` steps; a step whose capability no agent has, or no
                agent may take at its risk; a risk above `max_risk`; a dependency on itself or a
                later step (plans are DAGs in step order) or a repeated one.
        """
        if len(plan.steps) > self.max_steps:
            raise _plan_error(
                "steps", f"the plan has {len(plan.steps)} steps; at most {self.max_steps} allowed"
            )
        for i, step in enumerate(plan.steps):
            where = f"steps[{i}]"
            if step.risk > int(max_risk):
                raise _plan_error(
                    f"{where}.risk",
                    f"{where} asks for risk L{step.risk}; this tree allows at most "
                    f"L{int(max_risk)}",
                )
            if directory.find(step.capability, RiskLevel(step.risk)) is None:
                known = sorted(directory.capabilities())
                raise _plan_error(
                    f"{where}.capability",
                    f"{where} needs capability {step.capability!r} at risk L{step.risk}, which "
                    f"no registered agent offers (known: {known})",
                )
            if len(set(step.depends_on)) != len(step.depends_on):
                raise _plan_error(f"{where}.depends_on", f"{where} repeats a dependency")
            for d in step.depends_on:
                if d >= i:
                    raise _plan_error(
                        f"{where}.depends_on",
                        f"{where} depends on step {d}; a step may only depend on earlier "
                        "steps (0 .. its own index - 1)",
                    )
