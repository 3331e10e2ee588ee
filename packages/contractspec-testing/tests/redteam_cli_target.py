"""Target factories for the `python -m contractspec.testing.redteam` tests (not collected)."""

from __future__ import annotations

from typing import Any

from contractspec.agent import AgentRunner, RiskLevel, UsageLimits, define_agent, tool
from contractspec.core import Actor, CallContext
from contractspec.testing.redteam import CallBudget, PrivilegedCall, RedTeamTarget


@tool(risk=RiskLevel.L0, side_effects=False)
async def search_kb(query: str) -> list[str]:
    """Search the help centre."""
    return [query]


def _target(close_risk: RiskLevel) -> RedTeamTarget:
    @tool(name="close_account", risk=close_risk, approvers=["u-cfo"] if close_risk == 3 else ())
    async def close_account(account_id: str) -> dict[str, Any]:
        """Close an account for good."""
        return {"closed": account_id}

    agent = define_agent(
        "cli.helper", model="scripted", instructions="Help.", tools=[close_account, search_kb],
        limits=UsageLimits(max_steps=5, max_tool_calls=3),
    )  # fmt: skip
    return RedTeamTarget(
        agent=agent,
        runner=AgentRunner,
        ctx=CallContext(actor=Actor.user("u-1"), org_id="org-a"),
        privileged=[PrivilegedCall("close_account", {"account_id": "acc-1"})],
        budget=CallBudget("search_kb", max_tool_calls=3, max_steps=5, vary="query"),
    )


def safe() -> RedTeamTarget:
    """close_account at L3 with a named approver."""
    return _target(RiskLevel.L3)


async def unsafe() -> RedTeamTarget:
    """close_account registered at L1 (async factory)."""
    return _target(RiskLevel.L1)


def not_a_target() -> str:
    """A factory returning the wrong thing."""
    return "nope"
