"""Review queues as operations: approvals, runs and shadow reports through a real Executor."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from agent_support import ORG, OWNER, POLICY, AgentEnv, audit_actions, event_names, issue_refund
from starlette.requests import Request

from contractspec.agent import (
    AgentPolicy,
    AgentRunner,
    ApprovalDecisionError,
    ApprovalStatus,
    LeaseLostError,
    RiskLevel,
    RiskRule,
    RunStatus,
    arguments_hash,
    define_agent,
    operation_tool,
    refund_limit,
)
from contractspec.agent.review import ReviewOperations, register_review_operations
from contractspec.agent.testing import FunctionModel, ScriptedModel, call
from contractspec.core import (
    Actor,
    CallContext,
    ConfigurationError,
    ConflictError,
    Executor,
    NotFoundError,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.http import Principal, create_app

REVIEW_POLICY = RolePermissions(
    {
        "reviewer": ["agent.review.*", "approval.decide"],
        "operator": ["agent.review.*"],
        "viewer": ["agent.review.read"],
    }
)
#: Reviews as a reviewer who may also decide approvals (the workflow's `approval.decide`).
REVIEWER = CallContext(actor=Actor.user("u-lead", roles=["reviewer", "lead"]), org_id=ORG)
VIEWER = CallContext(actor=Actor.user("u-viewer", roles="viewer"), org_id=ORG)
OTHER_ORG = CallContext(actor=Actor.user("u-lead", roles=["reviewer", "lead"]), org_id="org-2")
ARGS = {"order_id": "o-1", "amount_cents": 12000}

refund = operation_tool(
    issue_refund,
    invariants=[refund_limit(5000, field="amount_cents")],
    risk_rules=[RiskRule("amount_cents > 2000", RiskLevel.L2, "large_refund")],
)
refunder = define_agent("shop.refunder", model="m", instructions="Refund.", tools=[refund])


def review(env: AgentEnv, runner: AgentRunner | None = None) -> tuple[Executor, ReviewOperations]:
    """The app's own registry with the review operations, run by its executor and policy."""
    registry = SpecRegistry()
    ops = register_review_operations(
        registry, approvals=env.approvals, runner=runner or env.runner(ScriptedModel([]))
    )
    executor = Executor(
        registry, backend=env.backend, policy=REVIEW_POLICY, clock=env.clock, ids=env.ids
    )
    return executor, ops


async def open_request(env: AgentEnv, *, org_id: str = ORG, order: str = "o-1") -> str:
    req = await env.approvals.request(
        action="refund",
        arguments={**ARGS, "order_id": order},
        requested_by=Actor.user("u-owner", roles="support"),
        reason="parcel lost",
        org_id=org_id,
    )
    return req.id


async def waiting_run(env: AgentEnv, runner: AgentRunner) -> str:
    """A run suspended on the approval of a 30.00 refund."""
    runner.model = ScriptedModel([call("shop_refund_issue", order_id="o-9", amount_cents=3000)])
    result = await runner.run(refunder, "refund 30", OWNER)
    assert result.status is RunStatus.WAITING_APPROVAL
    return result.run_id


async def test_approvals_list_show_and_approve_take_effect(env: AgentEnv) -> None:
    """A reviewer lists, shows (exact arguments and hash) and approves; the approval verifies."""
    executor, ops = review(env)
    assert ops.names[:4] == (
        "agent.review.approvals.list",
        "agent.review.approvals.show",
        "agent.review.approvals.approve",
        "agent.review.approvals.reject",
    )
    first = await open_request(env, order="o-1")
    env.clock.advance(1)
    second = await open_request(env, order="o-2")
    page = await executor.execute("agent.review.approvals.list", {}, REVIEWER)
    assert [i.id for i in page.items] == [second, first]
    assert page.next_cursor is None
    shown = await executor.execute("agent.review.approvals.show", {"approval_id": first}, REVIEWER)
    assert shown.arguments == ARGS
    assert shown.arguments_hash == arguments_hash(ARGS)
    assert (shown.status, shown.requested_by) == ("pending", "u-owner")

    out = await executor.execute(
        "agent.review.approvals.approve", {"approval_id": first, "comment": "ok"}, REVIEWER
    )
    assert out.status == "approved"
    assert [(d.approver_id, d.verdict, d.comment) for d in out.decisions] == [
        ("u-lead", "approve", "ok")
    ]
    assert (await env.approvals.verify(first, dict(ARGS))).status is ApprovalStatus.APPROVED
    rejected = await executor.execute(
        "agent.review.approvals.reject", {"approval_id": second, "comment": "no"}, REVIEWER
    )
    assert rejected.status == "rejected"
    assert (await env.approvals.get(second)).status is ApprovalStatus.REJECTED
    names = await event_names(env)
    assert names[-4:] == [
        "approval.approved",
        "agent.review.approvals.approved",
        "approval.rejected",
        "agent.review.approvals.rejected",
    ]
    actions = await audit_actions(env)
    assert ("approval.approve", "success") in actions
    assert ("agent.review.approvals.approve", "success") in actions
    assert ("agent.review.approvals.reject", "success") in actions
    pending = await executor.execute("agent.review.approvals.list", {}, REVIEWER)
    assert pending.items == []
    decided = await executor.execute(
        "agent.review.approvals.list", {"status": "approved"}, REVIEWER
    )
    assert [i.id for i in decided.items] == [first]


async def test_acting_without_permission_is_denied_and_audited(env: AgentEnv) -> None:
    """A viewer may list but not approve: PolicyDeniedError, a denied audit row, still pending."""
    executor, _ = review(env)
    rid = await open_request(env)
    listed = await executor.execute("agent.review.approvals.list", {}, VIEWER)
    assert [i.id for i in listed.items] == [rid]
    with pytest.raises(PolicyDeniedError):
        await executor.execute("agent.review.approvals.approve", {"approval_id": rid}, VIEWER)
    assert ("agent.review.approvals.approve", "denied") in await audit_actions(env)
    assert (await env.approvals.get(rid)).status is ApprovalStatus.PENDING
    outsider = CallContext(actor=Actor.user("u-x", roles="support"), org_id=ORG)
    with pytest.raises(PolicyDeniedError):
        await executor.execute("agent.review.approvals.list", {}, outsider)


async def test_reviewer_without_the_workflow_permission_cannot_decide(env: AgentEnv) -> None:
    """`agent.review.act` alone does not decide: the executor's policy checks `approval.decide`
    (denial audited once), then the workflow's own policy and rules still apply."""
    executor, _ = review(env)
    rid = await open_request(env)
    operator = CallContext(actor=Actor.user("u-op", roles="operator"), org_id=ORG)
    with pytest.raises(PolicyDeniedError, match=r"approval\.decide"):
        await executor.execute("agent.review.approvals.approve", {"approval_id": rid}, operator)
    denied = [a for a in await audit_actions(env) if a[1] == "denied"]
    assert len(denied) == 1
    # Allowed by the app's policy, refused by the workflow's (u-r is no "lead" there).
    not_lead = CallContext(actor=Actor.user("u-r", roles="reviewer"), org_id=ORG)
    with pytest.raises(PolicyDeniedError, match="may not decide"):
        await executor.execute("agent.review.approvals.reject", {"approval_id": rid}, not_lead)
    # The requester cannot decide their own request, whatever their roles.
    requester = CallContext(actor=Actor.user("u-owner", roles=["reviewer", "lead"]), org_id=ORG)
    with pytest.raises(ApprovalDecisionError, match="cannot decide it"):
        await executor.execute("agent.review.approvals.approve", {"approval_id": rid}, requester)
    assert (await env.approvals.get(rid)).status is ApprovalStatus.PENDING
    assert not [n for n in await event_names(env) if n.startswith("agent.review.")]


async def test_another_tenants_items_are_not_found(env: AgentEnv) -> None:
    """An approval or run of another org is never listed, shown or acted on."""
    runner = env.runner(ScriptedModel([]))
    executor, _ = review(env, runner)
    rid = await open_request(env, org_id=ORG)
    run_id = await waiting_run(env, runner)
    for name, payload in [
        ("agent.review.approvals.show", {"approval_id": rid}),
        ("agent.review.approvals.approve", {"approval_id": rid}),
        ("agent.review.approvals.reject", {"approval_id": rid}),
        ("agent.review.runs.show", {"run_id": run_id}),
        ("agent.review.runs.cancel", {"run_id": run_id}),
        ("agent.review.shadow.show", {"run_id": run_id}),
    ]:
        with pytest.raises(NotFoundError):
            await executor.execute(name, payload, OTHER_ORG)
    assert (await executor.execute("agent.review.approvals.list", {}, OTHER_ORG)).items == []
    assert (await executor.execute("agent.review.runs.list", {}, OTHER_ORG)).items == []
    assert (await env.approvals.get(rid)).status is ApprovalStatus.PENDING
    assert (await runner.get(run_id)).status is RunStatus.WAITING_APPROVAL


async def test_pagination_walks_every_approval_and_run_exactly_once(env: AgentEnv) -> None:
    """Pages of 3 (ties on the timestamp included) visit every item once, newest first."""
    runner = env.runner(ScriptedModel([]))
    executor, _ = review(env, runner)
    made: list[tuple[Any, str]] = []
    for i in range(8):
        if i % 3 == 0:
            env.clock.advance(1)  # the others share a timestamp: ordered by id
        rid = await open_request(env, order=f"o-{i}")
        made.append(((await env.approvals.get(rid)).requested_at, rid))
    await open_request(env, org_id="org-2")
    expected = [rid for _, rid in sorted(made, reverse=True)]
    for name, want in [("agent.review.approvals.list", expected)]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await executor.execute(name, {"limit": 3, "cursor": cursor}, REVIEWER)
            seen += [i.id for i in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == want

    run_ids = []
    for i in range(5):
        if i % 2 == 0:
            env.clock.advance(1)
        runner.model = ScriptedModel(["done"])
        run_ids.append((await runner.run(refunder, f"hello {i}", OWNER)).run_id)
    runs_seen: list[str] = []
    cursor = None
    while True:
        page = await executor.execute(
            "agent.review.runs.list", {"limit": 2, "cursor": cursor}, REVIEWER
        )
        runs_seen += [r.id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    stored = [await runner.get(r) for r in run_ids]
    assert runs_seen == [r.id for r in sorted(stored, key=lambda r: (r.created_at, r.id))][::-1]
    assert len(set(runs_seen)) == 5


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("agent.review.approvals.list", {"limit": 0}),
        ("agent.review.approvals.list", {"limit": 201}),
        ("agent.review.approvals.list", {"cursor": "not-a-cursor"}),
        ("agent.review.approvals.list", {"status": "maybe"}),
        ("agent.review.approvals.show", {"approval_id": ""}),
        ("agent.review.runs.list", {"status": "sleeping"}),
        ("agent.review.runs.cancel", {}),
        ("agent.review.shadow.show", {"run_id": "r", "actual": {"x": "perhaps"}}),
    ],
)
async def test_bad_input_is_a_validation_error(
    env: AgentEnv, name: str, payload: dict[str, Any]
) -> None:
    """Out-of-range limits, forged cursors and unknown states never reach a handler."""
    executor, _ = review(env)
    with pytest.raises(SpecValidationError):
        await executor.execute(name, payload, REVIEWER)


async def test_runs_show_and_cancel_a_waiting_run(env: AgentEnv) -> None:
    """Show lists steps and tool calls; cancel makes the run final so approving does nothing."""
    runner = env.runner(ScriptedModel([]))
    executor, _ = review(env, runner)
    run_id = await waiting_run(env, runner)
    listed = await executor.execute(
        "agent.review.runs.list", {"status": "waiting_approval"}, REVIEWER
    )
    (item,) = listed.items
    assert (item.id, item.agent, item.input) == (run_id, "shop.refunder", "refund 30")
    (approval_id,) = item.waiting_for
    detail = await executor.execute("agent.review.runs.show", {"run_id": run_id}, REVIEWER)
    (step,) = detail.step_details
    # the effective risk the gateway applied is recorded per call (the refund waits: L2)
    assert [(c.name, c.status, c.risk) for c in step.tool_calls] == [
        ("shop_refund_issue", "needs_approval", 2)
    ]
    assert "run.started" in [g.event for g in detail.logs]

    out = await executor.execute(
        "agent.review.runs.cancel", {"run_id": run_id, "reason": "duplicate"}, REVIEWER
    )
    assert out.status is RunStatus.CANCELLED
    assert (await runner.get(run_id)).status is RunStatus.CANCELLED
    names = await event_names(env)
    assert names[-2:] == ["agent.run.cancelled", "agent.review.runs.cancelled"]
    assert ("agent.review.runs.cancel", "success") in await audit_actions(env)
    # Cancelling again is a no-op (no second event); the run never resumes.
    again = await executor.execute("agent.review.runs.cancel", {"run_id": run_id}, REVIEWER)
    assert again.status is RunStatus.CANCELLED
    assert (await event_names(env)).count("agent.review.runs.cancelled") == 1
    await env.approvals.approve(approval_id, Actor.user("u-lead", roles="lead"))
    resumed = await runner.resume(run_id, OWNER)
    assert resumed.status is RunStatus.CANCELLED
    assert (await env.refunds()).total == 0


async def test_cancelling_a_running_run_stops_its_worker(env: AgentEnv) -> None:
    """A run cancelled while a worker drives it stays cancelled; the worker stops at its next
    write (LeaseLostError) and the tool call the model asked for never runs."""
    started, gate = asyncio.Event(), asyncio.Event()

    async def slow(request: Any) -> Any:
        started.set()
        await gate.wait()
        return call("shop_refund_issue", order_id="o-5", amount_cents=1000)

    runner = env.runner(FunctionModel(slow))
    executor, _ = review(env, runner)
    task = asyncio.create_task(runner.run(refunder, "refund 10", OWNER))
    await started.wait()
    running = await executor.execute("agent.review.runs.list", {"status": "running"}, REVIEWER)
    (item,) = running.items
    assert item.lease_owner == runner.worker_id
    out = await executor.execute("agent.review.runs.cancel", {"run_id": item.id}, REVIEWER)
    assert (out.status, out.lease_owner) == (RunStatus.CANCELLED, None)
    gate.set()
    with pytest.raises(LeaseLostError):
        await task
    assert (await runner.get(item.id)).status is RunStatus.CANCELLED
    assert (await env.refunds()).total == 0


async def test_cancelling_a_finished_run_is_a_conflict(env: AgentEnv) -> None:
    """A completed run cannot be cancelled; nothing is emitted."""
    runner = env.runner(ScriptedModel(["done"]))
    executor, _ = review(env, runner)
    run_id = (await runner.run(refunder, "hi", OWNER)).run_id
    with pytest.raises(ConflictError, match="already finished"):
        await executor.execute("agent.review.runs.cancel", {"run_id": run_id}, REVIEWER)
    assert (await runner.get(run_id)).status is RunStatus.COMPLETED
    assert "agent.review.runs.cancelled" not in await event_names(env)


async def test_shadow_report_of_a_run(env: AgentEnv) -> None:
    """The shadow report lists what the agent would have done and compares it with people."""
    shadow = define_agent(
        "shop.shadow", model="m", instructions="i", tools=[refund], policy=AgentPolicy(shadow=True)
    )
    runner = env.runner(
        ScriptedModel(
            [
                [
                    call("shop_refund_issue", order_id="o-1", amount_cents=1000),
                    call("shop_refund_issue", order_id="o-2", amount_cents=3000),
                ],
                "logged",
            ]
        )
    )
    executor, _ = review(env, runner)
    run_id = (await runner.run(shadow, "refund all", OWNER)).run_id
    out = await executor.execute(
        "agent.review.shadow.show",
        {
            "run_id": run_id,
            "actual": {"o-1": "execute", "o-2": "execute"},
            "subject": "arguments.order_id",
        },
        REVIEWER,
    )
    assert [(d.arguments["order_id"], d.would) for d in out.decisions] == [
        ("o-1", "execute"),
        ("o-2", "needs_approval"),
    ]
    assert (out.total, out.agreed, out.agreement_rate) == (2, 1, 0.5)
    assert [d["subject"] for d in out.disagreements] == ["o-2"]
    assert out.by_decision == {"execute->execute": 1, "needs_approval->execute": 1}


async def test_pending_past_expiry_is_not_listed_as_pending(env: AgentEnv) -> None:
    """A pending request past its expiry is listed as expired, not as actionable."""
    executor, _ = review(env)
    rid = await open_request(env)
    env.clock.advance(timedelta(days=2).total_seconds())
    assert (await executor.execute("agent.review.approvals.list", {}, REVIEWER)).items == []
    every = await executor.execute("agent.review.approvals.list", {"status": None}, REVIEWER)
    assert [(i.id, i.status) for i in every.items] == [(rid, "expired")]


def test_registering_needs_a_workflow_or_a_runner() -> None:
    """Without approvals or runner there is no queue to review: ConfigurationError."""
    with pytest.raises(ConfigurationError, match="approvals=ApprovalWorkflow"):
        register_review_operations(SpecRegistry())


async def test_http_routes_serve_the_review_operations(env: AgentEnv) -> None:
    """create_app exposes the review operations as routes (GET for queries, POST for commands)."""
    executor, ops = review(env)
    rid = await open_request(env)
    session = Principal(REVIEWER.actor, org_id=ORG)

    def auth(request: Request) -> Principal | None:
        return session if request.headers.get("authorization") == "Bearer t" else None

    app = create_app(executor, authenticate=auth)
    headers = {"Authorization": "Bearer t"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        spec = (await http.get("/openapi.json")).json()
        for name in ops.names:
            assert f"/{name.replace('.', '/')}/v1" in spec["paths"]
        listed = await http.get("/agent/review/approvals/list/v1", headers=headers)
        assert listed.status_code == 200, listed.text
        assert [i["id"] for i in listed.json()["items"]] == [rid]
        resp = await http.post(
            "/agent/review/approvals/approve/v1", json={"approval_id": rid}, headers=headers
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "approved"
        missing = await http.get(
            "/agent/review/approvals/show/v1", params={"approval_id": "nope"}, headers=headers
        )
        assert missing.status_code == 404
        denied = await http.get("/agent/review/approvals/list/v1")
        assert denied.status_code == 401
    assert POLICY is not REVIEW_POLICY
