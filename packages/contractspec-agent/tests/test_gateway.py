"""The tool gateway: invariants with proofs, risk, approvals, idempotency, shadow mode."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from agent_support import (
    LEAD,
    ORG,
    OWNER,
    POLICY,
    AgentEnv,
    audit_actions,
    event_names,
    issue_refund,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from contractspec.agent import (
    ActionRecord,
    ActionStatus,
    AgentPolicy,
    ApprovalStatus,
    ApprovalWorkflow,
    InvariantFailedError,
    MemoryRunStore,
    RiskLevel,
    RiskRule,
    RunScope,
    RunStatus,
    ToolCall,
    ToolContext,
    ToolGateway,
    ToolMessage,
    action_id_for,
    define_agent,
    margin_floor,
    operation_tool,
    refund_limit,
    shadow_report,
    tool,
)
from contractspec.agent.testing import ScriptedModel, call
from contractspec.core import Actor, CallContext, MemoryBackend
from contractspec.core.testing import FakeClock, SequentialIds

refund = operation_tool(
    issue_refund,
    invariants=[refund_limit(5000, field="amount_cents")],
    risk_rules=[RiskRule("amount_cents > 2000", RiskLevel.L2, "large_refund")],
)


class Quote(BaseModel):
    price: float
    cost: float


agent = define_agent("shop.refunder", model="m", instructions="Refund when fair.", tools=[refund])


async def test_failed_invariant_blocks_with_a_proof(env: AgentEnv) -> None:
    """A FAIL blocks the call: nothing runs, the packet shows the values, the block is audited."""
    model = ScriptedModel([call("shop_refund_issue", order_id="o-1", amount_cents=6000), "cannot"])
    result = await env.runner(model).run(agent, "refund 60", OWNER)
    (packet,) = result.packets
    assert (packet.decision, packet.passed) == ("blocked", False)
    assert [(r.name, r.verdict, dict(r.values)) for r in packet.proof] == [
        ("refund_limit", "FAIL", {"amount_cents": 6000})
    ]
    assert packet.reason == "invariant failed: refund_limit: amount_cents <= 5000 is false"
    feedback = model.requests[1].messages[-1]
    assert isinstance(feedback, ToolMessage)
    assert json.loads(feedback.content)["proof"][0]["verdict"] == "FAIL"
    assert (await env.refunds()).total == 0
    with pytest.raises(InvariantFailedError) as info:
        packet.raise_if_blocked()
    assert info.value.details["packet"]["proof"][0]["verdict"] == "FAIL"
    assert ("agent.tool.shop_refund_issue", "denied") in await audit_actions(env)
    assert "agent.tool.failed" in await event_names(env)


async def test_evidence_feeds_invariants() -> None:
    """Evidence computed for the call is checked (margin_floor) and recorded in the packet."""

    def evidence(args: Quote, ctx: ToolContext) -> dict[str, Any]:
        return {"projected_margin": round((args.price - args.cost) / args.price, 4)}

    @tool(risk=RiskLevel.L1, invariants=[margin_floor(0.15)], evidence=evidence)
    def send_quote(quote: Quote) -> str:
        """Send a quote."""
        return f"sent at {quote.price}"

    quoting = define_agent("shop.quotes", model="m", instructions="i", tools=[send_quote])
    model = ScriptedModel(
        [[call("send_quote", price=100, cost=90), call("send_quote", price=100, cost=80)], "done"]
    )
    from contractspec.agent import AgentRunner

    result = await AgentRunner(model=model).run(quoting, "quote", OWNER)
    low, ok = result.packets
    assert (low.decision, low.evidence, low.proof[0].verdict) == (
        "blocked",
        {"projected_margin": 0.1},
        "FAIL",
    )
    assert (ok.decision, ok.evidence, ok.proof[0].verdict) == (
        "execute",
        {"projected_margin": 0.2},
        "PASS",
    )
    outputs = [m.content for m in model.requests[1].messages if isinstance(m, ToolMessage)]
    assert json.loads(outputs[1]) == "sent at 100.0"


async def test_risky_call_waits_for_approval_then_runs_once(env: AgentEnv) -> None:
    """A call raised to L2 suspends the run; once approved, resume executes it exactly once."""
    model = ScriptedModel(
        [call("shop_refund_issue", order_id="o-1", amount_cents=3000, reason="lost")]
    )
    runner = env.runner(model)
    waiting = await runner.run(agent, "refund 30", OWNER)
    assert waiting.status is RunStatus.WAITING_APPROVAL
    (approval_id,) = waiting.pending_approvals
    (packet,) = waiting.packets
    assert (packet.declared_risk, packet.risk, packet.decision) == (1, 2, "needs_approval")
    req = await env.approvals.get(approval_id)
    assert (req.action, req.arguments, req.requested_by, req.subject_id) == (
        "shop_refund_issue", {"order_id": "o-1", "amount_cents": 3000, "reason": "lost"}, "u-owner",
        waiting.run_id,
    )  # fmt: skip
    assert (await env.refunds()).total == 0
    still = await runner.resume(waiting.run_id)
    assert still.status is RunStatus.WAITING_APPROVAL
    await env.approvals.approve(approval_id, LEAD)
    with runner.override(model=ScriptedModel(["Refunded 30."])):
        done = await runner.resume(waiting.run_id)
        again = await runner.resume(waiting.run_id)
    assert (done.status, done.output) == (RunStatus.COMPLETED, "Refunded 30.")
    assert (again.status, again.output) == (RunStatus.COMPLETED, "Refunded 30.")
    refunds = await env.refunds()
    assert (refunds.total, refunds.amount_cents) == (1, 3000)
    assert [line.event for line in await runner.logs(waiting.run_id)] == [
        "run.started", "tool.needs_approval", "run.waiting", "run.resumed", "tool.ok", "run.completed",
    ]  # fmt: skip


async def test_rejected_call_is_reported_and_never_runs(env: AgentEnv) -> None:
    """A rejected approval becomes a refused tool result for the model; nothing executes."""
    runner = env.runner(
        ScriptedModel([call("shop_refund_issue", order_id="o-1", amount_cents=3000)])
    )
    waiting = await runner.run(agent, "refund 30", OWNER)
    await env.approvals.reject(waiting.pending_approvals[0], LEAD, comment="fraud")
    final_model = ScriptedModel(["I could not refund it."])
    with runner.override(model=final_model):
        done = await runner.resume(waiting.run_id)
    refused = final_model.requests[0].messages[-1]
    assert isinstance(refused, ToolMessage)
    assert json.loads(refused.content)["status"] == "rejected"
    assert done.output == "I could not refund it."
    assert (await env.refunds()).total == 0


async def test_self_approval_by_the_run_owner_is_refused(env: AgentEnv) -> None:
    """The actor who started the run requested the approval, so they cannot approve it."""
    runner = env.runner(
        ScriptedModel([call("shop_refund_issue", order_id="o-1", amount_cents=3000)])
    )
    waiting = await runner.run(agent, "refund 30", OWNER)
    from contractspec.agent import ApprovalDecisionError

    with pytest.raises(ApprovalDecisionError):
        await env.approvals.approve(
            waiting.pending_approvals[0], Actor.user("u-owner", roles="lead")
        )


async def test_shadow_mode_executes_nothing_and_reports_against_people(env: AgentEnv) -> None:
    """In shadow mode every decision is logged with what would happen; a report compares with people."""
    shadow = define_agent(
        "shop.shadow", model="m", instructions="i", tools=[refund], policy=AgentPolicy(shadow=True)
    )
    model = ScriptedModel(
        [
            [
                call("shop_refund_issue", order_id="o-1", amount_cents=1000),
                call("shop_refund_issue", order_id="o-2", amount_cents=3000),
                call("shop_refund_issue", order_id="o-3", amount_cents=9000),
            ],
            "logged",
        ]
    )
    runner = env.runner(model)
    result = await runner.run(shadow, "refund all", OWNER)
    assert [(p.arguments["order_id"], p.would) for p in result.packets] == [
        ("o-1", "execute"), ("o-2", "needs_approval"), ("o-3", "blocked"),
    ]  # fmt: skip
    assert (await env.refunds()).total == 0
    assert await env.approvals.pending(org_id=ORG) == []
    logged = await runner.packets(result.run_id)
    assert [p["mode"] for p in logged] == ["shadow", "shadow", "shadow"]
    report = shadow_report(
        logged, {"o-1": "execute", "o-2": "execute", "o-3": "blocked"}, subject="arguments.order_id"
    )
    assert (report.total, report.agreed, report.agreement_rate) == (3, 2, 2 / 3)
    assert [d["subject"] for d in report.disagreements] == ["o-2"]
    assert dict(report.by_decision) == {
        "execute->execute": 1, "needs_approval->execute": 1, "blocked->blocked": 1,
    }  # fmt: skip


async def test_unreachable_approval_store_blocks_risky_calls() -> None:
    """If approvals cannot be reached, a call that needs one does not run (fail closed)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from contractspec.agent import AgentRunner
    from contractspec.agent.sql import SqlApprovalStore
    from contractspec.core.sql import SqlUnitOfWork

    effects: list[int] = []

    @tool(risk=RiskLevel.L2)
    def wire(amount: int) -> str:
        """Move money."""
        effects.append(amount)
        return "sent"

    engine = create_async_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens
    try:
        broken = ApprovalWorkflow(SqlApprovalStore(), unit_of_work=SqlUnitOfWork(engine))
        runner = AgentRunner(
            model=ScriptedModel([call("wire", amount=10), "stopped"]), approvals=broken
        )
        money = define_agent("shop.money", model="m", instructions="i", tools=[wire])
        result = await runner.run(money, "send 10", OWNER)
    finally:
        await engine.dispose()
    assert effects == []
    (packet,) = result.packets
    assert packet.decision == "unavailable"
    assert "approval store is unavailable" in packet.reason


async def test_policy_denial_from_the_executor_is_a_failed_result(env: AgentEnv) -> None:
    """An operation the actor may not run comes back as policy_denied; the ledger records a failure."""
    auditor = CallContext(actor=Actor.user("u-audit", roles="auditor"), org_id=ORG)
    model = ScriptedModel([call("shop_refund_issue", order_id="o-1", amount_cents=100), "no"])
    runner = env.runner(model)
    result = await runner.run(agent, "refund 1", auditor)
    feedback = model.requests[1].messages[-1]
    assert isinstance(feedback, ToolMessage)
    assert json.loads(feedback.content)["status"] == "policy_denied"
    tx = await env.backend.unit_of_work.begin(readonly=True)
    actions = await env.runs.actions(tx, result.run_id)
    await tx.rollback()
    assert [a.status for a in actions] == [ActionStatus.FAILED]


# -- idempotency ---------------------------------------------------------------------------------


def memory_gateway(runs: MemoryRunStore | None = None, **kwargs: Any) -> ToolGateway:
    backend = MemoryBackend()
    return ToolGateway(
        runs=runs or MemoryRunStore(),
        unit_of_work=backend.unit_of_work,
        events=backend.events,
        audit=backend.audit,
        clock=FakeClock(),
        ids=SequentialIds("g"),
        **kwargs,
    )


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.lists(
        st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=12
    )
)
def test_retries_and_resumes_never_repeat_an_effect(plan: list[tuple[int, int, int]]) -> None:
    """Whatever the steps, order and number of retries, each logical action (tool + arguments
    within a run) takes effect exactly once: a retry in a later step reuses the action id."""
    effects: Counter[int] = Counter()

    @tool(risk=RiskLevel.L1)
    async def charge(amount: int, ctx: ToolContext) -> dict[str, int]:
        """Charge a card."""
        effects[amount] += 1
        return {"charged": amount}

    charging = define_agent("shop.charge", model="m", instructions="i", tools=[charge])
    gateway = memory_gateway()

    async def scenario() -> list[str]:
        statuses: list[str] = []
        attempt = 0
        for step, amount, retries in plan:
            scope = RunScope("run-h", charging, step, OWNER)
            for _ in range(retries):
                attempt += 1  # the model's call id changes on every retry
                call_ = ToolCall(f"model-call-{attempt}", "charge", {"amount": amount})
                outcome = await gateway.invoke(charge, call_, scope)
                assert outcome.result == {"charged": amount}
                statuses.append(outcome.status)
        return statuses

    statuses = asyncio.run(scenario())
    distinct = {amount for _, amount, _ in plan}
    assert effects == Counter(dict.fromkeys(distinct, 1))
    assert statuses.count("ok") == len(distinct)
    assert statuses.count("replayed") == sum(r for _, _, r in plan) - len(distinct)


async def test_an_action_started_but_not_finished_is_never_repeated() -> None:
    """A function call recorded as started (a crash mid-call) is reported in doubt, not re-run."""
    effects: list[int] = []

    @tool(risk=RiskLevel.L1)
    def ship(box: int) -> str:
        """Ship a box."""
        effects.append(box)
        return "shipped"

    shipping = define_agent("shop.ship", model="m", instructions="i", tools=[ship])
    runs = MemoryRunStore()
    gateway = memory_gateway(runs)
    from contractspec.agent import arguments_hash

    action_id = action_id_for("run-c", "ship", arguments_hash({"box": 7}))
    now = FakeClock().now()
    tx = await MemoryBackend().unit_of_work.begin()
    await runs.begin_action(tx, ActionRecord(action_id, "run-c", 1, "ship", ORG, arguments_hash({"box": 7}),
                                             ActionStatus.STARTED, now, now))  # fmt: skip
    await tx.commit()
    outcome = await gateway.invoke(
        ship, ToolCall("c-9", "ship", {"box": 7}), RunScope("run-c", shipping, 1, OWNER)
    )
    assert (outcome.status, outcome.is_error, effects) == ("in_doubt", True, [])


async def test_a_started_idempotent_operation_recovers_through_the_executor(env: AgentEnv) -> None:
    """If the gateway died after the command committed, a retry replays it via the idempotency key."""
    from contractspec.agent import arguments_hash

    args = {"order_id": "o-7", "amount_cents": 700, "reason": ""}
    digest = arguments_hash(args)
    action_id = action_id_for("run-r", "shop_refund_issue", digest)
    first = await env.executor.execute(
        "shop.refund.issue", args, OWNER.replace(idempotency_key=action_id)
    )
    now = env.clock.now()
    tx = await env.backend.unit_of_work.begin()
    await env.runs.begin_action(tx, ActionRecord(action_id, "run-r", 1, "shop_refund_issue", ORG, digest,
                                                 ActionStatus.STARTED, now, now))  # fmt: skip
    await tx.commit()
    gateway = ToolGateway(
        runs=env.runs, unit_of_work=env.backend.unit_of_work, events=env.backend.events,
        audit=env.backend.audit, clock=env.clock, ids=env.ids, executor=env.executor,
        approvals=env.approvals,
    )  # fmt: skip
    outcome = await gateway.invoke(
        refund, ToolCall("c-2", "shop_refund_issue", args), RunScope("run-r", agent, 1, OWNER)
    )
    assert outcome.status == "ok"
    assert outcome.result == first.model_dump(mode="json")
    assert (await env.refunds()).total == 1
    tx = await env.backend.unit_of_work.begin(readonly=True)
    record = await env.runs.get_action(tx, action_id)
    await tx.rollback()
    assert record is not None
    assert record.status is ActionStatus.SUCCEEDED


def test_approval_status_values() -> None:
    """The approval statuses are the four documented strings."""
    assert [s.value for s in ApprovalStatus] == ["pending", "approved", "rejected", "expired"]
    assert POLICY is not None
