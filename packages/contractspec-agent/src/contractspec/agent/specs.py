"""Agent specs: `define_agent`, `AgentPolicy`, `UsageLimits` and the `AgentRegistry`.

Agent specs have `kind = "agent"`, a dotted `name` and a `version`, so they live in core's
`SpecRegistry` next to operations and events (`AgentRegistry(spec_registry)` registers there too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Final

from attrs import define, field
from pydantic import BaseModel

from contractspec.agent.memory import AgentMemory
from contractspec.agent.tools import RiskLevel, Tool
from contractspec.core import SpecDefinitionError, SpecRegistry

__all__ = ["AgentPolicy", "AgentRegistry", "AgentSpec", "UsageLimits", "define_agent"]

_AGENT_NAME: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\Z")


@define(frozen=True)
class UsageLimits:
    """Ceilings for one run; crossing one fails the run with `UsageLimitExceeded`.

    Attributes:
        max_steps: Model steps (requests that may lead to tool calls), default 10.
        max_requests: Model requests including output retries (`None`: no limit).
        max_tokens: Input + output tokens (`None`: no limit).
        max_tool_calls: Tool calls executed (`None`: no limit).
        max_cost: US dollars, where the provider's price is known (`None`: no limit).
    """

    max_steps: int = 10
    max_requests: int | None = None
    max_tokens: int | None = None
    max_tool_calls: int | None = None
    max_cost: float | None = None


@define(frozen=True)
class AgentPolicy:
    """What an agent may do on its own.

    Attributes:
        approval_from: Calls at or above this risk need a human approval (default `L2`).
        shadow: Shadow mode for the whole agent: decisions are logged, nothing executes.
        confidence_threshold: Escalate when the reported confidence is below this fraction
            (0-1); a run without a reported confidence escalates too. `None`: never.
        run_permission: Permission checked through core's `PolicyDecider` before a run starts
            (`None`: any authenticated actor may run the agent).
        approval_ttl_s: Seconds an approval request stays open (default one day).
    """

    approval_from: RiskLevel = RiskLevel.L2
    shadow: bool = False
    confidence_threshold: float | None = None
    run_permission: str | None = None
    approval_ttl_s: float = 86_400.0


@define(frozen=True)
class AgentSpec:
    """A versioned agent: model, instructions, allowed tools, memory, policy, output and limits.

    Build it with `define_agent`. `kind` is `"agent"`, so core's `SpecRegistry` accepts it.
    """

    kind: ClassVar[str] = "agent"

    name: str
    version: int
    model: str
    instructions: str
    tools: tuple[Tool, ...] = ()
    memory: AgentMemory | None = field(default=None, eq=False)
    policy: AgentPolicy = field(factory=AgentPolicy)
    output_type: type[BaseModel] | None = None
    limits: UsageLimits = field(factory=UsageLimits)
    description: str = ""
    timeout_s: float = 60.0
    tool_timeout_s: float = 30.0
    output_retries: int = 1
    model_settings: tuple[tuple[str, Any], ...] = ()

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    def tool(self, name: str) -> Tool | None:
        """The allowed tool called `name`, or `None`."""
        for t in self.tools:
            if t.name == name:
                return t
        return None


def define_agent(
    name: str,
    *,
    model: str,
    instructions: str,
    tools: Iterable[Tool] = (),
    memory: AgentMemory | None = None,
    policy: AgentPolicy | None = None,
    version: int = 1,
    output_type: type[BaseModel] | None = None,
    limits: UsageLimits | None = None,
    description: str = "",
    timeout_s: float = 60.0,
    tool_timeout_s: float = 30.0,
    output_retries: int = 1,
    model_settings: dict[str, Any] | None = None,
) -> AgentSpec:
    """Declare an agent.

    Args:
        name: Dotted lowercase name (`support.triage`).
        model: Model name for the model client (`"openai/gpt-4o-mini"` for litellm; any string for
            scripted models).
        instructions: The system prompt.
        tools: The tools the agent may call (and only these).
        memory: Conversation memory shared across runs of a session (`AgentMemory`).
        policy: `AgentPolicy` (approvals, shadow mode, confidence threshold, run permission).
        version: Positive integer.
        output_type: pydantic model the final answer must validate against (JSON), or `None` for
            text. A `confidence: float` field (0-1) is read as the run's confidence.
        limits: `UsageLimits`.
        description: For docs and the console.
        timeout_s: Seconds one model request may take (always passed to the client).
        tool_timeout_s: Default seconds a tool call may take (a tool's own `timeout` wins).
        output_retries: How often an invalid final answer is sent back for correction.
        model_settings: Extra settings for the client (`{"temperature": 0}`).

    Returns:
        A frozen `AgentSpec`.

    Raises:
        SpecDefinitionError: Bad name, version, duplicate tool names, non-positive timeouts or
            limits, an output type that is not a pydantic model, a threshold outside 0-1.
    """
    if not isinstance(name, str) or not _AGENT_NAME.match(name):
        raise SpecDefinitionError(
            f"agent name {name!r} is not valid: use lowercase dotted segments, e.g. "
            "'support.triage'",
            details={"field": "name"},
        )
    ref = f"{name}@{version}"
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SpecDefinitionError(
            f"agent {name!r}: version must be a positive integer, got {version!r}",
            details={"field": "version"},
        )
    if not isinstance(model, str) or not model:
        raise SpecDefinitionError(
            f"{ref}: model must be a non-empty string such as 'openai/gpt-4o-mini'",
            details={"field": "model"},
        )
    tool_list = tuple(tools)
    seen: set[str] = set()
    for t in tool_list:
        if not isinstance(t, Tool):
            raise SpecDefinitionError(
                f"{ref}: tools must be made with tool() or operation_tool(), got {t!r}",
                details={"field": "tools"},
            )
        if t.name in seen:
            raise SpecDefinitionError(
                f"{ref}: two tools are named {t.name!r}; pass name= to one of them",
                details={"field": "tools", "tool": t.name},
            )
        seen.add(t.name)
    if output_type is not None and not (
        isinstance(output_type, type) and issubclass(output_type, BaseModel)
    ):
        raise SpecDefinitionError(
            f"{ref}: output_type must be a pydantic BaseModel subclass, got {output_type!r}",
            details={"field": "output_type"},
        )
    pol = policy or AgentPolicy()
    threshold = pol.confidence_threshold
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise SpecDefinitionError(
            f"{ref}: confidence_threshold is a fraction between 0 and 1, got {threshold!r}",
            details={"field": "policy.confidence_threshold"},
        )
    lim = limits or UsageLimits()
    for key in ("max_steps", "max_requests", "max_tokens", "max_tool_calls", "max_cost"):
        value = getattr(lim, key)
        if value is not None and (isinstance(value, bool) or value <= 0):
            raise SpecDefinitionError(
                f"{ref}: limits.{key} must be positive or None, got {value!r}",
                details={"field": f"limits.{key}"},
            )
    for key, value in (("timeout_s", timeout_s), ("tool_timeout_s", tool_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise SpecDefinitionError(
                f"{ref}: {key} must be a positive number of seconds, got {value!r}",
                details={"field": key},
            )
    if (
        isinstance(output_retries, bool)
        or not isinstance(output_retries, int)
        or output_retries < 0
    ):
        raise SpecDefinitionError(
            f"{ref}: output_retries must be 0 or more, got {output_retries!r}",
            details={"field": "output_retries"},
        )
    return AgentSpec(
        name=name,
        version=version,
        model=model,
        instructions=instructions,
        tools=tool_list,
        memory=memory,
        policy=pol,
        output_type=output_type,
        limits=lim,
        description=description,
        timeout_s=float(timeout_s),
        tool_timeout_s=float(tool_timeout_s),
        output_retries=output_retries,
        model_settings=tuple(sorted((model_settings or {}).items())),
    )


class AgentRegistry:
    """Versioned agents by name; `get(name)` returns the latest version.

    Args:
        specs: Core's `SpecRegistry` to register agents in too (so one registry holds operations,
            events and agents), or `None` for a standalone registry.
        agents: Agents to register right away.

    Raises:
        SpecDefinitionError: Registering a different agent under an existing `name@version`.
    """

    def __init__(self, specs: SpecRegistry | None = None, *agents: AgentSpec) -> None:
        self.specs = specs
        self._agents: dict[str, dict[int, AgentSpec]] = {}
        for agent in agents:
            self.register(agent)

    def register(self, *agents: AgentSpec) -> None:
        """Add agents (registering the same object twice is a no-op).

        Raises:
            SpecDefinitionError: Another agent already has this `name@version`, or the object is
                not an `AgentSpec`.
        """
        for agent in agents:
            if not isinstance(agent, AgentSpec):
                raise SpecDefinitionError(
                    f"{agent!r} is not an agent spec; build it with define_agent()"
                )
            versions = self._agents.setdefault(agent.name, {})
            existing = versions.get(agent.version)
            if existing is not None:
                if existing is agent:
                    continue
                raise SpecDefinitionError(
                    f"agent {agent.ref} is already registered; bump the version for a new "
                    "definition",
                    details={"kind": "agent", "name": agent.name, "version": agent.version},
                )
            if self.specs is not None:
                self.specs.register(agent)
            versions[agent.version] = agent

    def get(self, name: str, version: int | None = None) -> AgentSpec:
        """The agent `name` at `version` (latest when `None`).

        Raises:
            SpecDefinitionError: Unknown agent or version; the message lists what exists.
        """
        versions = self._agents.get(name)
        if not versions or (version is not None and version not in versions):
            known = ", ".join(sorted(self._agents)) or "none"
            what = f"{name}@{version}" if version is not None else name
            raise SpecDefinitionError(
                f"unknown agent {what!r}; registered agents: {known}",
                details={"kind": "agent", "name": name},
            )
        return versions[max(versions) if version is None else version]

    def versions(self, name: str) -> list[int]:
        """Registered versions of `name`, ascending."""
        return sorted(self._agents.get(name, {}))

    def __iter__(self) -> Iterator[AgentSpec]:
        for name in sorted(self._agents):
            for version in sorted(self._agents[name]):
                yield self._agents[name][version]

    def __len__(self) -> int:
        return sum(len(v) for v in self._agents.values())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._agents
