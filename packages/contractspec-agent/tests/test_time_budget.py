"""Issue 20: time budgets enforced while a run works — a run's deadline is checked before each
model request and before each step's tool calls (never inside a call); the orchestrator passes
each run the sooner of the tree's remaining seconds and the task's deadline (memory, SQLite,
PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from agent_support import LEAD, ORG, OWNER, AgentEnv, agent_env
from hypothesis import given, settings
from hypothesis import strategies as st
from orchestration_support import Team, by_goal, orchestrator, plan, task_store

from contractspec.agent import (
    ModelRequest,
    RiskLevel,
    RunStatus,
    ToolMessage,
    UsageLimitExceeded,
    define_agent,
    tool,
)
from contractspec.agent.orchestration import Budget, TaskStatus
from contractspec.agent.testing import FunctionModel, call
from contractspec.core import ConfigurationError
from contractspec.core.testing import FakeClock


def slow_shop(
    env: AgentEnv, *, tool_s: float = 0.0, model_s: float = 0.0
) -> tuple[Any, FunctionModel, list[int]]:
    """An agent whose tool `ship` takes `tool_s` seconds and whose model takes `model_s` seconds
    per request (both advance the env's fake clock); step 1 ships box 1, step 2 answers."""
    effects: list[int] = []

    @tool(risk=RiskLevel.L1)
    def ship(box: int) -> str:
        """Ship a box."""
        env.clock.advance(timedelta(seconds=tool_s))
        effects.append(box)
        return "shipped"

    def reply(request: ModelRequest) -> Any:
        env.clock.advance(timedelta(seconds=model_s))
        if not any(isinstance(m, ToolMessage) for m in request.messages):
            return call("ship", box=1)
        return "shipped box 1"

    agent = define_agent("shop.timed", model="m", instructions="Ship.", tools=[ship])
    return agent, FunctionModel(reply), effects


async def actions(env: AgentEnv, run_id: str) -> list[tuple[str, str]]:
    tx = await env.backend.unit_of_work.begin(readonly=True)
    try:
        return [(a.tool, a.status.value) for a in await env.runs.actions(tx, run_id)]
    finally:
        await tx.rollback()


async def test_a_slow_tool_finishes_and_the_next_model_request_is_refused(env: AgentEnv) -> None:
    """The tool takes 90 s of a 60 s deadline: it is not interrupted (its effect and its ledger
    entry are both recorded as succeeded), but the next model request never goes out; the run
    fails with UsageLimitExceeded naming the deadline."""
    agent, model, effects = slow_shop(env, tool_s=90)
    runner = env.runner(model)
    deadline = env.clock.now() + timedelta(seconds=60)
    with pytest.raises(UsageLimitExceeded) as info:
        await runner.run(agent, "ship one", OWNER, deadline=deadline)
    assert info.value.details["limit"] == "deadline"
    assert info.value.details["deadline"] == deadline.isoformat()
    assert "deadline" in info.value.message
    assert "model request 2" in info.value.message
    assert (effects, len(model.requests)) == ([1], 1)
    (run,) = await runner.history(org_id=ORG)
    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error["code"] == info.value.code
    assert await actions(env, run.id) == [("ship", "succeeded")]


async def test_a_slow_model_request_stops_the_run_before_its_tool_calls(env: AgentEnv) -> None:
    """The model takes 61 s of a 60 s deadline and asks for a call: the call does not execute
    and no ledger entry is written for it."""
    agent, model, effects = slow_shop(env, model_s=61)
    runner = env.runner(model)
    with pytest.raises(UsageLimitExceeded) as info:
        await runner.run(agent, "ship one", OWNER, deadline=env.clock.now() + timedelta(seconds=60))
    assert info.value.details["limit"] == "deadline"
    assert "tool calls of step 1" in info.value.message
    assert effects == []
    (run,) = await runner.history(org_id=ORG)
    assert run.status is RunStatus.FAILED
    assert await actions(env, run.id) == []


async def test_a_run_within_its_deadline_completes(env: AgentEnv) -> None:
    """Model and tool take 10 s each (30 s in all) of a 31 s deadline: the run completes."""
    agent, model, effects = slow_shop(env, tool_s=10, model_s=10)
    runner = env.runner(model)
    result = await runner.run(
        agent, "ship one", OWNER, deadline=env.clock.now() + timedelta(seconds=31)
    )
    assert (result.status, result.output, effects) == (RunStatus.COMPLETED, "shipped box 1", [1])


async def test_a_deadline_already_passed_sends_no_model_request(env: AgentEnv) -> None:
    """A deadline equal to now: the first model request is refused (nothing ran)."""
    agent, model, effects = slow_shop(env)
    runner = env.runner(model)
    with pytest.raises(UsageLimitExceeded):
        await runner.run(agent, "ship one", OWNER, deadline=env.clock.now())
    assert (model.requests, effects) == ([], [])


_NOT_AWARE = st.one_of(
    st.datetimes(),  # naive
    st.text(max_size=20),
    st.floats(allow_nan=True),
    st.integers(),
    st.dates(),
)


def test_a_deadline_that_is_not_an_aware_datetime_is_refused(tmp_path: Path) -> None:
    """Hypothesis over naive datetimes, strings, numbers and dates: `run` and `resume` refuse
    each with ConfigurationError naming the `deadline` field, before any run is created or any
    model request is sent."""
    with asyncio.Runner() as loop:  # one environment for all examples
        manager = agent_env("memory", tmp_path)
        env = loop.run(manager.__aenter__())
        try:
            agent, model, _ = slow_shop(env)
            runner = env.runner(model)

            @settings(max_examples=40, deadline=None, database=None)
            @given(bad=_NOT_AWARE)
            def refused(bad: Any) -> None:
                with pytest.raises(ConfigurationError) as info:
                    loop.run(runner.run(agent, "ship one", OWNER, deadline=bad))
                assert info.value.details["field"] == "deadline"
                with pytest.raises(ConfigurationError):
                    loop.run(runner.resume("run-x", deadline=bad))

            refused()
            assert model.requests == []
            assert loop.run(runner.history(org_id=ORG)) == []
        finally:
            loop.run(manager.__aexit__(None, None, None))


# -- orchestration ----------------------------------------------------------------------------


def timed_team(steps: str, env: AgentEnv, **tool_seconds: float) -> Team:
    team = Team(steps, clock=env.clock)
    team.tool_seconds = {k.replace("_", " "): v for k, v in tool_seconds.items()}
    return team


async def test_a_run_past_the_trees_seconds_budget_is_stopped_and_the_tree_refuses_more(
    env: AgentEnv,
) -> None:
    """Budget(seconds=60): task a's note takes 90 s; its run stops before its next model request,
    a fails budget_exceeded (limit seconds, no retry) with the run's reason, the tree's spent
    seconds reach the budget, and task b (after a) never runs."""
    team = timed_team(plan(("a", "research", []), ("b", "research", [0])), env, a=90)
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("two steps", OWNER, budget=Budget(seconds=60))
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    a, b = tasks["a"], tasks["b"]
    assert (a.status, a.attempts) == (TaskStatus.FAILED, 1)
    assert a.error is not None
    assert (a.error["code"], a.error["limit"]) == ("budget_exceeded", "seconds")
    assert "deadline" in a.error["message"]
    assert team.effects == {"a": 1}
    assert team.replies.count("research") == 1  # no second request after the slow tool
    assert [x["status"] for x in a.evidence[-1]["actions"]] == ["succeeded"]
    assert tasks["two steps"].tree_spent.seconds >= 60
    assert b.run_id is None
    assert tasks["two steps"].status is TaskStatus.FAILED


async def test_a_task_is_refused_once_the_trees_seconds_are_spent(env: AgentEnv) -> None:
    """Two independent tasks, Budget(seconds=60): a's run is stopped when the time runs out
    (the tree's spent seconds reach the budget) and the failed tree cancels b before it gets a
    run or a model request."""
    team = timed_team(plan(("a", "research", []), ("b", "writing", [])), env, a=90)
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("two things", OWNER, budget=Budget(seconds=60))
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    a = await orch.execute(tasks["a"])
    assert a.error is not None
    assert a.error["code"] == "budget_exceeded"
    assert (await orch.get(root.id, org_id=ORG)).tree_spent.seconds >= 60
    await orch.run_until_idle(org_id=ORG)
    b = await orch.get(tasks["b"].id, org_id=ORG)
    assert (b.status, b.run_id) == (TaskStatus.CANCELLED, None)  # the failed tree ended it
    assert "writer" not in team.replies
    assert team.effects == {"a": 1}


async def test_a_task_deadline_sooner_than_the_budget_stops_the_run(env: AgentEnv) -> None:
    """deadline in 30 s, Budget(seconds=600): the 45 s note outlives the deadline, so the run
    stops before its next request and the task fails deadline_exceeded, without a retry."""
    team = timed_team(plan(("slow", "research", [])), env, slow=45)
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit(
        "one step", OWNER, budget=Budget(seconds=600),
        deadline=env.clock.now() + timedelta(seconds=30),
    )  # fmt: skip
    await orch.run_until_idle(org_id=ORG)
    slow = by_goal(await orch.tree(root.id, org_id=ORG))["slow"]
    assert (slow.status, slow.attempts) == (TaskStatus.FAILED, 1)
    assert slow.error is not None
    assert slow.error["code"] == "deadline_exceeded"
    assert team.effects == {"slow": 1}
    assert team.replies.count("research") == 1


async def test_an_approved_call_is_not_executed_after_the_deadline(env: AgentEnv) -> None:
    """A billing task waits for approval; the tree's deadline passes before the lead approves:
    resuming stops the run before the approved charge executes (no effect), the task fails
    deadline_exceeded."""
    team = Team(plan(("charge order 9", "billing", [], 2)))
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("bill order 9", OWNER, deadline=env.clock.now() + timedelta(hours=1))
    await orch.run_until_idle(org_id=ORG)
    charge = by_goal(await orch.tree(root.id, org_id=ORG))["charge order 9"]
    assert charge.status is TaskStatus.WAITING_APPROVAL
    (approval_id,) = charge.evidence[-1]["waiting_for"]
    env.clock.advance(timedelta(hours=2))
    await env.approvals.approve(approval_id, LEAD)
    (resumed,) = await orch.resume_waiting(org_id=ORG)
    assert resumed.status is TaskStatus.FAILED
    assert resumed.error is not None
    assert resumed.error["code"] == "deadline_exceeded"
    assert team.effects["charge order 9"] == 0


def test_fake_clock_is_the_runners_clock(env: AgentEnv) -> None:
    """The tests above rely on the env's runner reading the env's FakeClock."""
    assert isinstance(env.clock, FakeClock)
    assert env.runner(FunctionModel(lambda r: "x")).clock is env.clock
    assert isinstance(env.clock.now(), datetime)
