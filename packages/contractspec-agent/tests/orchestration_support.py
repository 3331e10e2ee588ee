"""Orchestration test support: a task store on the test backend, a team of agents whose tools
count their effects, and one function model that plays the planner and every worker."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from agent_support import POLICY, AgentEnv
from attrs import define, field

from contractspec.agent import (
    AgentRunner,
    ModelRequest,
    ModelResponse,
    RiskLevel,
    ToolMessage,
    Usage,
    define_agent,
    tool,
)
from contractspec.agent.orchestration import (
    AgentDirectory,
    MemoryTaskStore,
    Orchestrator,
    Planner,
    TaskStore,
    planner_agent,
)
from contractspec.agent.testing import FunctionModel, call
from contractspec.core import EventPublisher


async def task_store(env: AgentEnv) -> TaskStore:
    """A `MemoryTaskStore`, or a `SqlTaskStore` with its table created on the env's engine."""
    if env.kind == "memory":
        return MemoryTaskStore()
    from contractspec.agent.orchestration.sql import SqlTaskStore, create_all
    from contractspec.core.sql import SqlBackend

    assert isinstance(env.backend, SqlBackend)
    await create_all(env.backend.engine)
    return SqlTaskStore()


def plan(*steps: tuple[str, str, list[int]] | tuple[str, str, list[int], int]) -> str:
    """Plan JSON from `(goal, capability, depends_on[, risk])` steps."""
    return json.dumps(
        {
            "steps": [
                {"goal": s[0], "capability": s[1], "depends_on": s[2],
                 "risk": s[3] if len(s) > 3 else 0, "inputs": {"n": i}}
                for i, s in enumerate(steps)
            ]
        }
    )  # fmt: skip


@define
class Team:
    """Agents `team.research` (capability research, tool `note` L1), `team.billing` (billing,
    tool `charge` L2, needs approval) and `team.writer` (writing, tool `publish` L1).

    Each worker's run: step 1 calls its tool with the task's goal as label, step 2 answers
    `done: <goal>`. `effects` counts tool effects per label; `tokens_per_reply` fixes each
    model response's usage (input tokens; 0 output) when set. A tool call whose label is in
    `tool_seconds` takes that long: it advances `clock` (a `FakeClock`) by that many seconds."""

    plan_json: str
    effects: Counter[str] = field(factory=Counter)
    prompts: dict[str, str] = field(factory=dict)
    fail_first: dict[str, int] = field(factory=dict)
    tokens_per_reply: int | None = None
    cost_per_reply: float | None = None
    replies: list[str] = field(factory=list)
    tool_seconds: dict[str, float] = field(factory=dict)
    clock: Any = None

    def agents(self) -> AgentDirectory:
        """The directory of the three workers."""

        @tool(risk=RiskLevel.L1)
        def note(label: str) -> str:
            """Write a research note."""
            self._take_time(label)
            self.effects[label] += 1
            return f"noted {label}"

        @tool(risk=RiskLevel.L2)
        def charge(label: str) -> str:
            """Charge the customer."""
            self._take_time(label)
            self.effects[label] += 1
            return f"charged {label}"

        @tool(risk=RiskLevel.L1)
        def publish(label: str) -> str:
            """Publish the report."""
            self.effects[label] += 1
            return f"published {label}"

        directory = AgentDirectory()
        directory.register(
            define_agent("team.research", model="research", instructions="Research.", tools=[note]),
            capabilities=["research"],
            max_risk=RiskLevel.L1,
        )
        directory.register(
            define_agent("team.billing", model="billing", instructions="Bill.", tools=[charge]),
            capabilities=["billing"],
        )
        directory.register(
            define_agent("team.writer", model="writer", instructions="Write.", tools=[publish]),
            capabilities=["writing"],
        )
        return directory

    def model(self) -> FunctionModel:
        """One model for the planner and the workers (routed by the agent's model name)."""
        tools = {"research": "note", "billing": "charge", "writer": "publish"}

        def reply(request: ModelRequest) -> Any:
            self.replies.append(request.model)
            if request.model == "planner":
                return self._usage(self.plan_json)
            text = str(request.messages[1].content)
            goal = text.splitlines()[0].removeprefix("Task: ")
            self.prompts[goal] = text
            if self.fail_first.get(goal, 0) > 0:
                self.fail_first[goal] -= 1
                raise RuntimeError(f"model outage while doing {goal}")
            if not any(isinstance(m, ToolMessage) for m in request.messages):
                return self._usage(call(tools[request.model], label=goal))
            return self._usage(f"done: {goal}")

        return FunctionModel(reply)

    def _take_time(self, label: str) -> None:
        if label in self.tool_seconds:
            self.clock.advance(timedelta(seconds=self.tool_seconds[label]))

    def _usage(self, reply: Any) -> Any:
        if self.tokens_per_reply is None:
            return reply
        usage = Usage(requests=1, input_tokens=self.tokens_per_reply, cost=self.cost_per_reply)
        if isinstance(reply, str):
            return ModelResponse(reply, (), usage)
        return ModelResponse(None, (reply,), usage)


def orchestrator(
    env: AgentEnv,
    team: Team,
    tasks: TaskStore,
    *,
    events: EventPublisher | None = None,
    runner_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Orchestrator:
    """An orchestrator with the team, a planner and the env's runner."""
    runner: AgentRunner = env.runner(team.model(), **dict(runner_kwargs or {}))
    return Orchestrator(
        runner, team.agents(), tasks=tasks, planner=Planner(planner_agent("planner")),
        events=events, **kwargs,
    )  # fmt: skip


def by_goal(tasks: Sequence[Any]) -> dict[str, Any]:
    """Tasks keyed by goal."""
    return {t.goal: t for t in tasks}


__all__ = ["POLICY", "Team", "by_goal", "orchestrator", "plan", "task_store"]
