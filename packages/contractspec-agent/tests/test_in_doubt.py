"""Issue 15: timeouts are in doubt, retries reuse the action id, escalated risk keeps its
approvers, shadow mode runs reads, identical calls of a step are distinct actions."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import attrs
import pytest
from agent_isolated_tools import slow_ship
from agent_support import LEAD, ORG, OWNER, AgentEnv, issue_refund, list_refunds

from contractspec.agent import (
    ActionStatus,
    AgentPolicy,
    AgentRunner,
    Reconciled,
    RiskLevel,
    RiskRule,
    RunScope,
    RunStatus,
    ToolCall,
    ToolContext,
    ToolMessage,
    define_agent,
    operation_tool,
    shadow_report,
    tool,
)
from contractspec.agent._isolation import run_in_process
from contractspec.agent.testing import ScriptedModel, call
from contractspec.core import Actor, PolicyDeniedError, SpecDefinitionError


def tool_messages(model: ScriptedModel, request: int) -> list[dict[str, Any]]:
    return [
        json.loads(m.content)
        for m in model.requests[request].messages
        if isinstance(m, ToolMessage)
    ]


async def ledger(env: AgentEnv, run_id: str) -> list[tuple[str, ActionStatus, int]]:
    tx = await env.backend.unit_of_work.begin(readonly=True)
    try:
        return [(a.tool, a.status, a.attempts) for a in await env.runs.actions(tx, run_id)]
    finally:
        await tx.rollback()


# -- 1. a timed-out call is in doubt; its retry reuses the action id ----------------------------


async def test_a_timed_out_sync_call_is_in_doubt_and_its_retry_does_not_charge_twice(
    env: AgentEnv,
) -> None:
    """A sync tool outlives its timeout and then charges the card: the model is told the
    outcome is unknown, the model's retry (same tool and arguments, a later step) maps to the
    same action, which waits for a person instead of running; the late charge is recorded, so
    the approved retry replays it. One charge in all."""
    charges: list[int] = []
    release = threading.Event()

    @tool(risk=RiskLevel.L1, timeout=0.1)
    def charge(amount: int) -> str:
        """Charge the card."""
        release.wait(5)
        charges.append(amount)
        return f"charged {amount}"

    billing = define_agent("shop.billing", model="m", instructions="i", tools=[charge])
    model = ScriptedModel([call("charge", amount=5), call("charge", amount=5)])
    runner = env.runner(model)
    first = await runner.run(billing, "charge 5", OWNER)

    (told,) = tool_messages(model, 1)
    assert told["status"] == "in_doubt"
    assert "outcome is unknown" in told["error"]
    assert first.status is RunStatus.WAITING_APPROVAL  # the retry waits for a person
    timed_out, retry = first.packets
    assert timed_out.decision == "in_doubt"
    assert retry.action_id == timed_out.action_id
    assert retry.decision == "needs_approval"

    release.set()  # the abandoned thread completes the charge now
    assert await runner.gateway.drain(5)
    assert await ledger(env, first.run_id) == [("charge", ActionStatus.SUCCEEDED, 1)]
    await env.approvals.approve(first.pending_approvals[0], LEAD)
    with runner.override(model=ScriptedModel(["Charged once."])):
        done = await runner.resume(first.run_id)
    assert (done.status, done.output) == (RunStatus.COMPLETED, "Charged once.")
    assert charges == [5]
    assert done.packets[-1].decision == "replayed"


async def test_reconcile_settles_an_in_doubt_call_without_a_person(env: AgentEnv) -> None:
    """With a `reconcile` function the retry asks the provider (by action id) instead of a
    person: found done, it is not run again. Here the abandoned thread's late outcome lands in
    the ledger while reconcile looks (the worst moment): that record stands, nothing fails."""
    charges: dict[str, int] = {}
    release = threading.Event()
    gateways: list[Any] = []

    async def lookup(args: Any, ctx: ToolContext) -> Reconciled:
        release.set()  # the stuck charge completes now...
        assert await gateways[0].drain(5)  # ...and its late outcome is recorded meanwhile
        done = ctx.action_id in charges
        return Reconciled(done=done, result=f"charged {charges[ctx.action_id]}" if done else None)

    @tool(risk=RiskLevel.L1, timeout=0.1, reconcile=lookup)
    def charge(amount: int, ctx: ToolContext) -> str:
        """Charge the card (the action id is the provider's idempotency key)."""
        release.wait(5)
        charges[ctx.action_id] = amount
        return f"charged {amount}"

    billing = define_agent("shop.billing2", model="m", instructions="i", tools=[charge])
    gateway = env.runner(ScriptedModel([])).gateway
    gateways.append(gateway)
    scope = RunScope("run-rec", billing, 1, OWNER)
    outcome = await gateway.invoke(charge, ToolCall("c-1", "charge", {"amount": 7}), scope)
    assert outcome.status == "in_doubt"
    retry = await gateway.invoke(
        charge, ToolCall("c-2", "charge", {"amount": 7}), RunScope("run-rec", billing, 2, OWNER)
    )
    assert (retry.status, retry.result) == ("reconciled", "charged 7")
    assert list(charges.values()) == [7]
    assert await ledger(env, "run-rec") == [("charge", ActionStatus.SUCCEEDED, 1)]


async def test_a_timed_out_async_call_is_cancelled_and_in_doubt() -> None:
    """An async tool is cancelled at its timeout: nothing after the await point happens; a
    side-effecting call is still reported in doubt (it may have acted before the await)."""
    charges: list[int] = []

    @tool(risk=RiskLevel.L1, timeout=0.05)
    async def charge(amount: int) -> str:
        """Charge the card."""
        await asyncio.sleep(0.5)
        charges.append(amount)
        return "charged"

    assert charge.cancellable
    billing = define_agent("shop.billing3", model="m", instructions="i", tools=[charge])
    model = ScriptedModel([call("charge", amount=3), "unknown"])
    result = await AgentRunner(model=model).run(billing, "charge", OWNER)
    await asyncio.sleep(0.6)
    assert charges == []
    assert result.packets[0].decision == "in_doubt"
    assert tool_messages(model, 1)[0]["status"] == "in_doubt"


async def test_a_process_isolated_sync_call_is_killed_at_its_timeout(tmp_path: Path) -> None:
    """`isolation="process"`: a timeout kills the child process, so its effect never lands."""
    marker = tmp_path / "shipped.txt"
    assert slow_ship.cancellable
    # start the fork server (a one-off cost of seconds on a busy machine) outside the timeouts
    assert await run_in_process(slow_ship.function, {"marker": str(marker), "delay_s": 0}) == (
        "shipped"
    )
    marker.unlink()
    shipping = define_agent("shop.iso", model="m", instructions="i", tools=[slow_ship])
    model = ScriptedModel([call("slow_ship", marker=str(marker), delay_s=3.0), "stopped"])
    result = await AgentRunner(model=model).run(shipping, "ship", OWNER)
    assert result.packets[0].decision == "in_doubt"
    await asyncio.sleep(1.5)  # past the moment the child would have shipped
    assert not marker.exists()
    fast = ScriptedModel([call("slow_ship", marker=str(marker), delay_s=0.0), "shipped"])
    done = await AgentRunner(model=fast).run(shipping, "ship", OWNER)
    assert done.packets[0].decision == "execute"
    assert marker.read_text() == "shipped"


def test_process_isolation_refuses_functions_a_child_cannot_import() -> None:
    """A nested function cannot be imported by the child: refused when the tool is defined."""
    with pytest.raises(SpecDefinitionError) as info:

        @tool(risk=RiskLevel.L1, isolation="process")
        def nested(x: int) -> int:
            """Nested."""
            return x

    assert info.value.details["field"] == "isolation"


# -- 3. escalated risk carries the approvers of declared risk -----------------------------------


def test_a_risk_rule_to_l3_needs_named_approvers() -> None:
    """An L1 tool whose RiskRule can raise a call to L3 must name its approvers, as L3 does."""
    with pytest.raises(SpecDefinitionError) as info:

        @tool(risk=RiskLevel.L1, risk_rules=[RiskRule("amount > 1000", RiskLevel.L3)])
        def wire(amount: int) -> str:
            """Wire money."""
            return "sent"

    assert info.value.details["field"] == "approvers"


async def test_an_escalated_call_is_decided_only_by_the_named_approvers(env: AgentEnv) -> None:
    """A call escalated to L3 waits for the tool's named approvers; another holder of
    `approval.decide` is denied; a tool that slipped through without approvers is blocked."""
    effects: list[int] = []

    @tool(
        risk=RiskLevel.L1,
        risk_rules=[RiskRule("amount > 1000", RiskLevel.L3, "big_wire")],
        approvers=["u-cfo"],
    )
    def wire(amount: int) -> str:
        """Wire money."""
        effects.append(amount)
        return "sent"

    money = define_agent("shop.wire", model="m", instructions="i", tools=[wire])
    runner = env.runner(ScriptedModel([call("wire", amount=5000)]))
    waiting = await runner.run(money, "wire", OWNER)
    assert (waiting.packets[0].declared_risk, waiting.packets[0].risk) == (1, 3)
    with pytest.raises(PolicyDeniedError):
        await env.approvals.approve(waiting.pending_approvals[0], LEAD)
    await env.approvals.approve(waiting.pending_approvals[0], Actor.user("u-cfo", roles="lead"))
    with runner.override(model=ScriptedModel(["sent"])):
        await runner.resume(waiting.run_id)
    assert effects == [5000]

    unchecked = attrs.evolve(wire, approvers=())  # built around the definition check
    bypass = define_agent("shop.wire2", model="m", instructions="i", tools=[unchecked])
    blocked = await env.runner(ScriptedModel([call("wire", amount=5000), "no"])).run(
        bypass, "wire", OWNER
    )
    assert blocked.packets[0].decision == "blocked"
    assert effects == [5000]


# -- 5. shadow mode runs reads and shadows effects -----------------------------------------------


async def test_shadow_mode_runs_reads_for_real_and_shadows_only_effects(env: AgentEnv) -> None:
    """With agent-wide shadow mode an L0 read returns real data; the refund is shadowed; the
    report compares only shadowed decisions."""
    await env.executor.execute("shop.refund.issue", {"order_id": "o-1", "amount_cents": 500}, OWNER)
    lookup = operation_tool(list_refunds)
    refund = operation_tool(issue_refund)
    shadow = define_agent(
        "shop.shadow2", model="m", instructions="i", tools=[lookup, refund],
        policy=AgentPolicy(shadow=True),
    )  # fmt: skip
    model = ScriptedModel(
        [
            call("shop_refund_list", order_id="o-1"),
            call("shop_refund_issue", order_id="o-1", amount_cents=100),
            "logged",
        ]
    )
    runner = env.runner(model)
    result = await runner.run(shadow, "refund o-1 if not yet refunded", OWNER)
    (read,) = tool_messages(model, 1)
    assert read == {"total": 1, "amount_cents": 500}  # real data, not a placeholder
    read_packet, write_packet = result.packets
    assert (read_packet.mode, read_packet.decision) == ("live", "execute")
    assert (write_packet.mode, write_packet.would) == ("shadow", "execute")
    assert (await env.refunds()).total == 1  # only the one issued before
    report = shadow_report(await runner.packets(result.run_id), {"o-1": "execute"},
                           subject="arguments.order_id")  # fmt: skip
    assert (report.total, report.agreed, report.unmatched) == (1, 1, ())


# -- 6. identical calls of one step are distinct actions ----------------------------------------


async def test_two_identical_calls_in_one_step_each_take_effect(env: AgentEnv) -> None:
    """Two identical calls in one response get ordinals 0 and 1: two actions, two effects;
    the same pair asked again in a later step replays both."""
    effects: list[int] = []

    @tool(risk=RiskLevel.L1)
    def ship(box: int) -> str:
        """Ship a box."""
        effects.append(box)
        return f"shipped #{len(effects)}"

    shipping = define_agent("shop.ship2", model="m", instructions="i", tools=[ship])
    model = ScriptedModel(
        [[call("ship", box=1), call("ship", box=1)], [call("ship", box=1), call("ship", box=1)],
         "two boxes"]
    )  # fmt: skip
    result = await env.runner(model).run(shipping, "ship two boxes", OWNER)
    first, second, again1, again2 = result.packets
    assert (first.ordinal, second.ordinal) == (0, 1)
    assert first.action_id != second.action_id
    assert [p.decision for p in result.packets] == ["execute", "execute", "replayed", "replayed"]
    assert (again1.action_id, again2.action_id) == (first.action_id, second.action_id)
    assert effects == [1, 1]
    assert await ledger(env, result.run_id) == [
        ("ship", ActionStatus.SUCCEEDED, 1), ("ship", ActionStatus.SUCCEEDED, 1),
    ]  # fmt: skip
    assert ORG


async def test_an_in_doubt_l0_call_is_simply_run_again(env: AgentEnv) -> None:
    """An L0 side-effecting call (nothing worth guarding) that was started and never finished
    runs again as attempt 2; the ledger counts the attempts."""
    from contractspec.agent import ActionRecord, ToolGateway, action_id_for, arguments_hash

    effects: list[str] = []

    @tool(risk=RiskLevel.L0, side_effects=True)
    def note(text: str) -> str:
        """Write a note."""
        effects.append(text)
        return "noted"

    noting = define_agent("shop.notes", model="m", instructions="i", tools=[note])
    digest = arguments_hash({"text": "hi"})
    action_id = action_id_for("run-l0", "note", digest)
    now = env.clock.now()
    tx = await env.backend.unit_of_work.begin()
    await env.runs.begin_action(tx, ActionRecord(action_id, "run-l0", 1, "note", ORG, digest,
                                                 ActionStatus.STARTED, now, now))  # fmt: skip
    await tx.commit()
    gateway = ToolGateway(
        runs=env.runs, unit_of_work=env.backend.unit_of_work, events=env.backend.events,
        audit=env.backend.audit, clock=env.clock, ids=env.ids, approvals=env.approvals,
    )  # fmt: skip
    outcome = await gateway.invoke(
        note, ToolCall("c-1", "note", {"text": "hi"}), RunScope("run-l0", noting, 2, OWNER)
    )
    assert (outcome.status, effects) == ("ok", ["hi"])
    assert outcome.packet is not None
    assert outcome.packet.attempt == 2
    assert await ledger(env, "run-l0") == [("note", ActionStatus.SUCCEEDED, 2)]
