"""Issue 20: multi-agent orchestration — planning, assignment by capability, hand-offs over the
bus, approvals inside sub-tasks, budgets per task tree, retries with backoff (memory, SQLite,
PostgreSQL)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from agent_support import LEAD, ORG, OWNER, AgentEnv, event_names
from orchestration_support import Team, by_goal, orchestrator, plan, task_store

from contractspec.agent.orchestration import Budget, TaskRetry, TaskStatus


class ClaimCounter:
    """A task store that counts successful claims per orchestrator."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.claims: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def claim(self, tx: Any, task: Any, *, owner: str, lease_until: Any, now: Any) -> Any:
        claimed = await self.inner.claim(tx, task, owner=owner, lease_until=lease_until, now=now)
        self.claims[owner] += 1
        return claimed


STEPS = plan(
    ("find facts", "research", []),
    ("draft report", "writing", [0]),
    ("publish report", "writing", [0, 1]),
)


async def test_a_planned_tree_runs_each_task_once_in_dependency_order(env: AgentEnv) -> None:
    """The planner's plan becomes sub-tasks assigned by capability; each runs once after the
    tasks it depends on, with their results in its prompt; the root completes with every
    sub-task's result; task.assigned / task.completed are written to the outbox."""
    team = Team(STEPS)
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("write the weekly report", OWNER)
    assert root.status is TaskStatus.DELEGATED
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert {g: (t.agent, t.status) for g, t in tasks.items() if g != root.goal} == {
        "find facts": ("team.research", TaskStatus.ASSIGNED),
        "draft report": ("team.writer", TaskStatus.PENDING),
        "publish report": ("team.writer", TaskStatus.PENDING),
    }
    rounds = []  # each round runs what is due: a task only once its dependencies completed
    while done := await orch.run_once(org_id=ORG):
        rounds.append([t.goal for t in done])
    assert rounds == [["find facts"], ["draft report"], ["publish report"]]
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert team.effects == {"find facts": 1, "draft report": 1, "publish report": 1}
    assert {g: t.status for g, t in tasks.items()} == dict.fromkeys(tasks, TaskStatus.COMPLETED)
    assert tasks["publish report"].result == "done: publish report"
    assert team.prompts["publish report"].endswith(
        'Results of earlier tasks: {"find facts": "done: find facts", '
        '"draft report": "done: draft report"}'
    )
    root_done = tasks["write the weekly report"]
    assert root_done.result == {t.id: t.result for g, t in tasks.items() if g != root.goal}
    (evidence,) = tasks["find facts"].evidence
    assert [a["tool"] for a in evidence["actions"]] == ["note"]
    assert evidence["run_id"] == tasks["find facts"].run_id
    names = [n for n in await event_names(env) if n.startswith("task.")]
    assert names.count("task.assigned") == 3
    assert names.count("task.completed") == 4
    assert names[-1] == "task.completed"


async def test_agents_hand_off_over_the_bus_and_duplicate_deliveries_do_nothing(
    env: AgentEnv,
) -> None:
    """Driven only by a bus subscription to task.assigned (outbox -> OutboxRelay -> EventBus):
    each completion hands the next task off; every task.assigned delivered a second time is a
    no-op (each effect happens once); an idempotent task.completed consumer sees each task once."""
    from contractspec.agent.orchestration import TASK_EVENTS
    from contractspec.bus import (
        EventBus,
        IdempotentConsumer,
        MemoryOutboxStore,
        MemoryProcessedEventStore,
        OutboxRelay,
    )
    from contractspec.core import SpecRegistry

    team = Team(STEPS)
    outbox: Any
    if env.kind == "memory":
        outbox = MemoryOutboxStore()
        orch = orchestrator(env, team, await task_store(env), events=outbox)
    else:
        from contractspec.bus.sql import SqlOutboxStore
        from contractspec.core.sql import SqlBackend

        assert isinstance(env.backend, SqlBackend)
        outbox = SqlOutboxStore(env.backend.engine)
        orch = orchestrator(env, team, await task_store(env))
    bus = EventBus(registry=SpecRegistry(*TASK_EVENTS))
    seen: list[Any] = []

    async def handle_twice(event: Any) -> None:
        await orch.handle(event)
        await orch.handle(event)  # an at-least-once redelivery

    async def completed(event: Any, tx: Any) -> None:
        seen.append(event.payload.task_id)

    consumer = IdempotentConsumer(
        "test.completed", completed, unit_of_work=env.backend.unit_of_work,
        processed=MemoryProcessedEventStore(),
    )  # fmt: skip
    bus.subscribe("task.assigned", handle_twice, name="orchestrator")
    bus.subscribe("task.completed", consumer, name="completions")
    relay = OutboxRelay(outbox, bus, poll_interval=0.01)
    root = await orch.submit("write the weekly report", OWNER)
    for _ in range(20):
        if not await relay.drain():
            break
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    assert team.effects == {"find facts": 1, "draft report": 1, "publish report": 1}
    assert sorted(seen) == sorted(t.id for t in tasks.values())
    assert await orch.run_until_idle(org_id=ORG) == 0  # nothing left for a poller


async def test_an_l2_tool_in_a_sub_task_waits_for_approval_then_runs_once(env: AgentEnv) -> None:
    """A billing sub-task's L2 call suspends it (waiting_approval) without effect; the
    dependent task does not start; after a lead approves, resume_waiting runs the call once and
    the tree completes."""
    team = Team(plan(("charge order 7", "billing", [], 2), ("send receipt", "writing", [0])))
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("bill order 7", OWNER)
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    charge = tasks["charge order 7"]
    assert charge.status is TaskStatus.WAITING_APPROVAL
    assert (tasks["send receipt"].status, team.effects["charge order 7"]) == (
        TaskStatus.PENDING, 0,
    )  # fmt: skip
    assert await orch.resume_waiting(org_id=ORG) == []  # nobody decided yet
    (approval_id,) = charge.evidence[-1]["waiting_for"]
    await env.approvals.approve(approval_id, LEAD)
    (resumed,) = await orch.resume_waiting(org_id=ORG)
    assert resumed.status is TaskStatus.COMPLETED
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    assert team.effects == {"charge order 7": 1, "send receipt": 1}
    assert [a["status"] for a in tasks["charge order 7"].evidence[-1]["actions"]] == ["succeeded"]


async def test_a_run_that_waited_for_approval_is_counted_once(env: AgentEnv) -> None:
    """Every reply uses 100 tokens: the planner (1 reply) and the billing run's first reply
    count while it waits for the L2 approval; after the approval the run's second reply adds
    only its own 100 tokens (the run's usage before the wait is not counted again)."""
    team = Team(plan(("charge order 8", "billing", [], 2)), tokens_per_reply=100)
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("bill order 8", OWNER)
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    charge = tasks["charge order 8"]
    assert charge.status is TaskStatus.WAITING_APPROVAL
    assert (charge.spent.tokens, tasks["bill order 8"].tree_spent.tokens) == (100, 200)
    (approval_id,) = charge.evidence[-1]["waiting_for"]
    await env.approvals.approve(approval_id, LEAD)
    (resumed,) = await orch.resume_waiting(org_id=ORG)
    assert (resumed.status, resumed.spent.tokens) == (TaskStatus.COMPLETED, 200)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert tasks["bill order 8"].tree_spent.tokens == 300
    assert team.effects == {"charge order 8": 1}


async def test_a_tree_budget_counts_every_sub_task_and_refuses_further_work(
    env: AgentEnv,
) -> None:
    """Every model reply uses 100 tokens and $0.01: the planner (1 reply) and each task (2
    replies) add to the root's tree spend; with a 450-token budget the third task is refused
    before its run starts (budget_exceeded, no effect), the tree fails and task.failed is
    published."""
    steps = plan(("a", "research", []), ("b", "research", [0]), ("c", "research", [1]))
    team = Team(steps, tokens_per_reply=100, cost_per_reply=0.01)
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("three steps", OWNER, budget=Budget(tokens=450))
    assert root.tree_spent.tokens == 100  # the planner's run
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert team.effects == {"a": 1, "b": 1}
    assert [tasks[g].spent.tokens for g in "abc"] == [200, 200, 0]
    assert tasks["three steps"].tree_spent.tokens == 500
    assert tasks["three steps"].tree_spent.cost == pytest.approx(0.05)
    c = tasks["c"]
    assert (c.status, c.run_id, c.error and c.error["code"]) == (
        TaskStatus.FAILED, None, "budget_exceeded",
    )  # fmt: skip
    assert tasks["three steps"].status is TaskStatus.FAILED
    assert tasks["three steps"].error == {
        "code": "subtask_failed", "task_id": c.id, "message": f"sub-task {c.id} failed",
    }  # fmt: skip
    assert [n for n in await event_names(env) if n == "task.failed"] == ["task.failed"] * 2


async def test_a_run_is_capped_by_what_is_left_of_the_tree_budget(env: AgentEnv) -> None:
    """With 300 of 350 tokens spent, task b's run may use only the 50 left: its first
    100-token reply crosses that cap, so the run stops before its next model request
    (usage_limit_exceeded) and the task fails with budget_exceeded, without a retry."""
    team = Team(plan(("a", "research", []), ("b", "research", [0])), tokens_per_reply=100)
    orch = orchestrator(env, team, await task_store(env), retry=TaskRetry(max_attempts=3))
    root = await orch.submit("two steps", OWNER, budget=Budget(tokens=350))
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    b = tasks["b"]
    assert (b.status, b.error and b.error["code"], b.attempts) == (
        TaskStatus.FAILED, "budget_exceeded", 1,
    )  # fmt: skip
    assert team.effects == {"a": 1, "b": 1}  # b's first step ran; no second request
    assert team.replies.count("research") == 3
    assert tasks["two steps"].tree_spent.tokens == 400


async def test_a_failing_task_is_retried_with_backoff_then_fails(env: AgentEnv) -> None:
    """A model outage fails the first attempt: the task is assigned again with not_before one
    base delay later (not run before then), a second outage doubles the delay, and when the
    attempts run out the task fails with task.failed; an outage that clears completes."""
    team = Team(plan(("flaky", "research", []), ("steady", "writing", [])))
    team.fail_first = {"flaky": 5, "steady": 1}
    orch = orchestrator(
        env, team, await task_store(env),
        retry=TaskRetry(max_attempts=3, base_delay_s=2.0, multiplier=3.0),
    )  # fmt: skip
    root = await orch.submit("retry things", OWNER)
    t0 = env.clock.now()
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    flaky = tasks["flaky"]
    assert (flaky.status, flaky.attempts, flaky.not_before) == (
        TaskStatus.ASSIGNED, 1, t0 + timedelta(seconds=2),
    )  # fmt: skip
    assert flaky.error is not None
    assert "model outage" in flaky.error["message"]
    assert await orch.run_once(org_id=ORG) == []  # not due yet
    env.clock.advance(timedelta(seconds=2))
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert tasks["steady"].status is TaskStatus.COMPLETED
    assert (tasks["flaky"].attempts, tasks["flaky"].not_before) == (
        2,
        env.clock.now() + timedelta(seconds=6),
    )
    env.clock.advance(timedelta(seconds=6))
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert (tasks["flaky"].status, tasks["flaky"].attempts) == (TaskStatus.FAILED, 3)
    assert tasks["retry things"].status is TaskStatus.FAILED
    assert team.effects == {"steady": 1}
    assert "task.failed" in await event_names(env)


async def test_a_task_past_the_deadline_is_not_started(env: AgentEnv) -> None:
    """A tree whose deadline passed before its task ran: the task fails deadline_exceeded and
    no model request or tool call happens."""
    team = Team("")
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit(
        "late work", OWNER, capability="research", deadline=env.clock.now() + timedelta(seconds=5)
    )
    env.clock.advance(timedelta(seconds=5))
    (done,) = await orch.run_once(org_id=ORG)
    assert (done.id, done.status, done.error and done.error["code"]) == (
        root.id, TaskStatus.FAILED, "deadline_exceeded",
    )  # fmt: skip
    assert (team.replies, team.effects) == ([], {})


async def test_a_held_task_is_taken_over_only_after_its_lease_expires(env: AgentEnv) -> None:
    """A task claimed by orchestrator A (which then stalls) is not run by B while A's lease
    holds; once it expired B claims it once and completes it; A's late write is refused."""
    from contractspec.agent import LeaseLostError
    from contractspec.core import ConflictError

    team = Team("")
    store = await task_store(env)
    a = orchestrator(env, team, store, lease_s=30, worker_id="a")
    b = orchestrator(env, team, store, lease_s=30, worker_id="b")
    root = await a.submit("one job", OWNER, capability="research")
    tx = await env.backend.unit_of_work.begin()
    held = await store.claim(
        tx, root, owner="a", lease_until=env.clock.now() + timedelta(seconds=30),
        now=env.clock.now(),
    )  # fmt: skip
    await tx.commit()
    assert await b.run_once(org_id=ORG) == []
    with pytest.raises(ConflictError):
        await b.execute(held)
    env.clock.advance(timedelta(seconds=31))
    (done,) = await b.run_once(org_id=ORG)
    assert (done.status, done.lease_owner, team.effects) == (
        TaskStatus.COMPLETED, None, {"one job": 1},
    )  # fmt: skip
    assert await b.run_once(org_id=ORG) == []
    from contractspec.agent.orchestration.orchestrator import _Binding

    with pytest.raises(LeaseLostError):
        await a._finish(_Binding(held, store), TaskStatus.FAILED)
    assert (await a.get(root.id, org_id=ORG)).status is TaskStatus.COMPLETED


async def test_a_stalled_execution_cannot_write_after_its_own_worker_reclaimed(
    env: AgentEnv,
) -> None:
    """Worker a claims a task, stalls past its lease and claims it again (same worker id): the
    stalled execution's write is refused (the claim's version fences it, not the worker id)."""
    from contractspec.agent import LeaseLostError
    from contractspec.agent.orchestration.orchestrator import _Binding

    team = Team("")
    store = await task_store(env)
    a = orchestrator(env, team, store, lease_s=30, worker_id="a")
    root = await a.submit("one job", OWNER, capability="research")
    held = []
    for _ in range(2):
        tx = await env.backend.unit_of_work.begin()
        current = await store.get(tx, root.id, org_id=ORG)
        until = env.clock.now() + timedelta(seconds=30)
        held.append(
            await store.claim(tx, current, owner="a", lease_until=until, now=env.clock.now())
        )
        await tx.commit()
        env.clock.advance(timedelta(seconds=31))
    assert (held[0].lease_owner, held[1].lease_owner) == ("a", "a")
    with pytest.raises(LeaseLostError):
        await a._finish(_Binding(held[0], store), TaskStatus.FAILED)
    assert (await a.get(root.id, org_id=ORG)).status is TaskStatus.RUNNING


async def test_a_task_whose_parent_already_finished_is_cancelled_without_a_run(
    env: AgentEnv,
) -> None:
    """A sub-task still assigned when its parent was finished (a sibling failed while this
    task was being claimed) is cancelled: no model request, no effect, no task.completed."""
    team = Team(plan(("a", "research", []), ("b", "research", [])))
    store = await task_store(env)
    orch = orchestrator(env, team, store)
    root = await orch.submit("two jobs", OWNER)
    tx = await env.backend.unit_of_work.begin()
    current = await store.get(tx, root.id, org_id=ORG)
    await store.update(
        tx, current.evolve(status=TaskStatus.FAILED), expected_version=current.version
    )
    await tx.commit()
    replies = len(team.replies)
    done = await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    assert (done, tasks["a"].status, tasks["b"].status) == (
        2, TaskStatus.CANCELLED, TaskStatus.CANCELLED,
    )  # fmt: skip
    assert (tasks["a"].run_id, len(team.replies) - replies, team.effects) == (None, 0, {})


async def test_tasks_are_scoped_to_their_tenant(env: AgentEnv) -> None:
    """Another org cannot read a task or its tree, and its orchestrator pass runs nothing of
    this org."""
    from contractspec.core import NotFoundError

    team = Team(STEPS)
    orch = orchestrator(env, team, await task_store(env))
    root = await orch.submit("write the weekly report", OWNER)
    with pytest.raises(NotFoundError):
        await orch.get(root.id, org_id="org-2")
    assert await orch.tree(root.id, org_id="org-2") == []
    assert await orch.run_until_idle(org_id="org-2") == 0
    assert team.effects == {}


async def test_bad_submissions_are_refused_naming_the_field(env: AgentEnv) -> None:
    """An empty goal, a naive deadline, a non-Budget budget, an empty constraint and a goal
    with neither capability nor planner are refused before anything is stored."""
    from contractspec.agent.orchestration import Orchestrator
    from contractspec.core import ConfigurationError, SpecValidationError

    team = Team("")
    store = await task_store(env)
    orch = orchestrator(env, team, store)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"goal": "  "}, "goal"),
        ({"deadline": env.clock.now().replace(tzinfo=None)}, "deadline"),
        ({"budget": {"tokens": 5}}, "budget"),
        ({"constraints": [""]}, "constraints"),
    ]
    for kwargs, field_name in cases:
        goal = kwargs.pop("goal", "a goal")
        with pytest.raises(SpecValidationError) as info:
            await orch.submit(goal, OWNER, capability="research", **kwargs)
        assert info.value.details["field"] == field_name
    bare = Orchestrator(env.runner(team.model()), team.agents(), tasks=store)
    with pytest.raises(ConfigurationError) as cfg:
        await bare.submit("a goal", OWNER)
    assert cfg.value.details["field"] == "capability"
    assert await orch.run_until_idle() == 0


async def test_two_orchestrators_at_once_run_every_task_once(env: AgentEnv) -> None:
    """Two orchestrators (distinct workers, one store) drain a tree of four independent tasks
    and a fifth that needs all four, concurrently: each task runs once, the fifth is handed
    off exactly once after the last of the four (siblings finishing together never lose it)."""
    import asyncio

    steps = plan(
        ("w1", "research", []), ("w2", "research", []), ("w3", "research", []),
        ("w4", "research", []), ("sum up", "writing", [0, 1, 2, 3]),
    )  # fmt: skip
    team = Team(steps)
    store = ClaimCounter(await task_store(env))
    a = orchestrator(env, team, store, worker_id="a")
    b = orchestrator(env, team, store, worker_id="b")
    root = await a.submit("parallel work", OWNER)

    async def drain(orch: Any) -> None:
        for _ in range(50):
            await orch.run_until_idle(org_id=ORG)
            if (await orch.get(root.id, org_id=ORG)).status.finished:
                return
            await asyncio.sleep(0.01)

    await asyncio.gather(drain(a), drain(b))
    tasks = by_goal(await a.tree(root.id, org_id=ORG))
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    assert team.effects == dict.fromkeys(["w1", "w2", "w3", "w4", "sum up"], 1)
    assert [t.attempts for g, t in tasks.items() if g != root.goal] == [1] * 5
    assert store.claims["a"] > 0
    assert store.claims["b"] > 0
    assert store.claims["a"] + store.claims["b"] == 5
    names = [n for n in await event_names(env) if n.startswith("task.")]
    assert (names.count("task.assigned"), names.count("task.completed")) == (5, 6)


async def test_a_failed_tree_cancels_a_sub_task_waiting_for_approval(env: AgentEnv) -> None:
    """A billing sub-task waits for an L2 approval while its sibling fails for good: the tree
    fails, the waiting sub-task and its agent run are cancelled, and approving the request
    afterwards executes nothing."""
    from contractspec.agent import RunStatus

    team = Team(plan(("charge order 9", "billing", [], 2), ("check stock", "research", [])))
    team.fail_first = {"check stock": 9}
    orch = orchestrator(env, team, await task_store(env), retry=TaskRetry(max_attempts=1))
    root = await orch.submit("bill order 9", OWNER)
    await orch.run_until_idle(org_id=ORG)
    tasks = by_goal(await orch.tree(root.id, org_id=ORG))
    charge = tasks["charge order 9"]
    assert (tasks["bill order 9"].status, charge.status) == (
        TaskStatus.FAILED, TaskStatus.CANCELLED,
    )  # fmt: skip
    assert charge.run_id is not None
    assert (await orch.runner.get(charge.run_id)).status is RunStatus.CANCELLED
    (approval_id,) = charge.evidence[-1]["waiting_for"]
    await env.approvals.approve(approval_id, LEAD)
    assert await orch.resume_waiting(org_id=ORG) == []
    assert await orch.runner.resume_ready(org_id=ORG) == []
    assert team.effects == {}


HOSTILE_SUBMISSIONS: list[tuple[dict[str, Any], str]] = [
    ({"goal": "x\x00y"}, "goal"),
    ({"goal": "x\ud800y"}, "goal"),
    ({"inputs": {"note": "a\x00b"}}, "inputs"),
    ({"inputs": {"note": ["ok", "a\udc00b"]}}, "inputs"),
    ({"inputs": {"k\x00": 1}}, "inputs"),
    ({"inputs": {"ratio": float("nan")}}, "inputs"),
    ({"inputs": {"ratio": float("inf")}}, "inputs"),
    ({"inputs": ["not", "a", "mapping"]}, "inputs"),
    ({"constraints": ["no\x00pe"]}, "constraints"),
    ({"constraints": "one string"}, "constraints"),
]


@pytest.mark.parametrize(("kwargs", "field_name"), HOSTILE_SUBMISSIONS)
async def test_unstorable_submissions_are_refused_naming_the_field(
    env: AgentEnv, kwargs: dict[str, Any], field_name: str
) -> None:
    """NUL characters, lone surrogates, NaN/infinity, a non-mapping inputs and a bare string
    of constraints are refused with SpecValidationError naming the field on every backend
    (never a database or encoding error), and nothing is stored."""
    from contractspec.core import SpecValidationError

    team = Team("")
    orch = orchestrator(env, team, await task_store(env))
    kwargs = dict(kwargs)
    goal = kwargs.pop("goal", "a goal")
    with pytest.raises(SpecValidationError) as info:
        await orch.submit(goal, OWNER, capability="research", **kwargs)
    assert info.value.details["field"] == field_name
    assert "\x00" not in info.value.message
    assert await orch.run_until_idle() == 0
    ok = await orch.submit("café ✓ 𝄞", OWNER, capability="research", inputs={"é": ["𝄞", 1.5]})
    assert (await orch.get(ok.id, org_id=ORG)).inputs == {"é": ["𝄞", 1.5]}


async def test_a_plan_with_unstorable_text_is_refused_before_anything_is_stored(
    env: AgentEnv,
) -> None:
    """A planner whose step goal or inputs hold NUL: the runner sends the answer back for
    correction naming the field (nothing unstorable is stored); a planner that repeats it fails
    the planning run with a `ContractSpecError` naming the step field, and no task is stored."""
    import json

    from contractspec.agent import UnexpectedModelBehavior
    from contractspec.core import ContractSpecError

    for step, field_name in (
        ({"goal": "a\u0000b", "capability": "research"}, "steps.0.goal"),
        ({"goal": "ab", "capability": "research", "inputs": {"k": "\u0000"}}, "steps.0.inputs"),
    ):
        team = Team(json.dumps({"steps": [step]}))
        orch = orchestrator(env, team, await task_store(env))
        with pytest.raises(ContractSpecError) as info:
            await orch.submit("plan this", OWNER)
        assert isinstance(info.value, UnexpectedModelBehavior)
        assert field_name in info.value.message
        assert "cannot be stored" in info.value.message
    assert await orch.run_until_idle() == 0


async def test_many_orchestrators_racing_on_one_task_run_it_once(env: AgentEnv) -> None:
    """Eight orchestrators (distinct workers, one store) handle the same task.assigned at once,
    then race resume_waiting after the L2 approval: one claim wins each time, the approved
    charge executes once and the tree completes once."""
    import asyncio

    team = Team(plan(("charge order 5", "billing", [], 2)))
    store = ClaimCounter(await task_store(env))
    orchs = [orchestrator(env, team, store, worker_id=f"w{i}") for i in range(8)]
    root = await orchs[0].submit("bill order 5", OWNER)
    (charge,) = [t for t in await orchs[0].tree(root.id, org_id=ORG) if t.id != root.id]
    assigned = orchs[0]._assigned(charge)
    await asyncio.gather(*(o.handle(assigned) for o in orchs))
    assert sum(store.claims.values()) == 1
    waiting = await orchs[0].get(charge.id, org_id=ORG)
    assert waiting.status is TaskStatus.WAITING_APPROVAL
    (approval_id,) = waiting.evidence[-1]["waiting_for"]
    await env.approvals.approve(approval_id, LEAD)
    results = await asyncio.gather(*(o.resume_waiting(org_id=ORG) for o in orchs))
    assert sum(len(r) for r in results) == 1
    assert sum(store.claims.values()) == 2
    tasks = by_goal(await orchs[0].tree(root.id, org_id=ORG))
    assert {t.status for t in tasks.values()} == {TaskStatus.COMPLETED}
    assert team.effects == {"charge order 5": 1}
    names = [n for n in await event_names(env) if n.startswith("task.")]
    assert names.count("task.completed") == 2


async def test_a_run_the_actor_may_not_start_fails_without_a_retry(env: AgentEnv) -> None:
    """An agent whose run_permission the submitting actor lacks: the task fails at once with
    policy_denied (retrying cannot grant a permission), attempts 1 of 3, no model request."""
    from contractspec.agent import AgentPolicy, define_agent
    from contractspec.agent.orchestration import AgentDirectory, Orchestrator

    team = Team("")
    directory = AgentDirectory()
    directory.register(
        define_agent("team.vault", model="research", instructions="Open the vault.",
                     policy=AgentPolicy(run_permission="vault.open")),
        capabilities=["vault"],
    )  # fmt: skip
    orch = Orchestrator(
        env.runner(team.model()), directory, tasks=await task_store(env),
        retry=TaskRetry(max_attempts=3, base_delay_s=0.0),
    )  # fmt: skip
    root = await orch.submit("open the vault", OWNER, capability="vault")
    (done,) = await orch.run_once(org_id=ORG)
    assert (done.id, done.status, done.attempts) == (root.id, TaskStatus.FAILED, 1)
    assert done.error is not None
    assert done.error["code"] == "policy_denied"
    assert team.replies == []
    assert await orch.run_until_idle(org_id=ORG) == 0
