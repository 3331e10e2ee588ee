"""The console's demo domain: an operations assistant over a few services."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from contractspec.agent import (
    AgentSpec,
    Invariant,
    ModelClient,
    ModelRequest,
    RiskLevel,
    RiskRule,
    ToolContext,
    ToolMessage,
    UsageLimits,
    UserMessage,
    define_agent,
    tool,
)
from contractspec.agent.testing import FunctionModel, Reply, call

__all__ = ["AGENTS", "SERVICES", "configured_model", "offline_model"]

#: service -> replicas and error rate (fraction of failed requests).
SERVICES: dict[str, dict[str, Any]] = {
    "api": {"replicas": 3, "error_rate": 0.02},
    "worker": {"replicas": 2, "error_rate": 0.31},
    "database": {"replicas": 1, "error_rate": 0.0},
}


@tool(risk=RiskLevel.L0)
async def service_status(service: str) -> dict[str, Any]:
    """Replicas and error rate of a service."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")
    return {"service": service, **SERVICES[service]}


async def _health(args: Any, ctx: ToolContext) -> dict[str, Any]:
    return {"error_rate": SERVICES.get(args.service, {}).get("error_rate", 1.0)}


@tool(
    risk=RiskLevel.L1,
    invariants=[
        Invariant(
            "not_the_database", "service != 'database'", "restarting the database drops connections"
        ),
        Invariant("only_when_failing", "error_rate >= 0.05", "restart only a failing service"),
    ],
    evidence=_health,
)
async def restart_service(service: str) -> str:
    """Restart a service (rolling restart)."""
    SERVICES[service]["error_rate"] = 0.01
    return f"{service} restarted"


@tool(
    risk=RiskLevel.L1,
    invariants=[Invariant("replica_cap", "replicas <= 10")],
    risk_rules=[RiskRule("replicas > 4", RiskLevel.L2, "big_scale_up")],
)
async def scale_service(service: str, replicas: int) -> str:
    """Set the number of replicas of a service."""
    SERVICES[service]["replicas"] = replicas
    return f"{service} now has {replicas} replicas"


_MODEL = os.environ.get("AGENT_CONSOLE_MODEL", "offline")
assistant = define_agent(
    "ops.assistant",
    model=_MODEL,
    instructions="You operate services. Check status before acting; explain what you did.",
    tools=[service_status, restart_service, scale_service],
    description="Operates services through guarded tools.",
    limits=UsageLimits(max_steps=4),
)
reporter = define_agent(
    "ops.reporter",
    model=_MODEL,
    instructions="Summarise the state of the services in one sentence.",
    tools=[service_status],
    description="Read-only status summaries.",
)
AGENTS: tuple[AgentSpec, ...] = (assistant, reporter)

_SCALE = re.compile(r"scale (\w+) to (\d+)")
_VERB = re.compile(r"(status|restart) (?:of )?(\w+)")


def _brain(request: ModelRequest) -> Reply:
    """Deterministic offline model: understands 'status X', 'restart X', 'scale X to N'."""
    text = next(m.content for m in request.messages if isinstance(m, UserMessage)).lower()
    if "loop" in text:  # keeps asking for status: shows a failed run (max steps)
        return call("service_status", service="api")
    results = [m for m in request.messages if isinstance(m, ToolMessage)]
    if results:
        last = json.loads(results[-1].content)
        if isinstance(last, dict) and "status" in last and "error" in last:
            return f"I did not do it: {last['error']}"
        return f"Done: {json.dumps(last)}"
    if match := _SCALE.search(text):
        return call("scale_service", service=match[1], replicas=int(match[2]))
    if match := _VERB.search(text):
        name = "service_status" if match[1] == "status" else "restart_service"
        return call(name, service=match[2])
    return "I can report status, restart or scale a service."


def offline_model() -> FunctionModel:
    """The offline model."""
    return FunctionModel(_brain, model_name="offline")


def configured_model() -> ModelClient:
    """litellm when `AGENT_CONSOLE_MODEL` is set, else the offline model."""
    if os.environ.get("AGENT_CONSOLE_MODEL"):
        from contractspec.agent.litellm import LiteLLMModel

        return LiteLLMModel()
    return offline_model()
