"""ApprovalWorkflow decides with core's approval rules (the `ApprovalDecider` port), and the review
operations audit the workflow's own refusals exactly once (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from agent_support import ORG, POLICY, AgentEnv, audit_actions

from contractspec.agent import (
    ApprovalDecisionError,
    ApprovalStatus,
    ApprovalWorkflow,
)
from contractspec.agent.approvals import is_refusal_denial
from contractspec.agent.review import register_review_operations
from contractspec.core import (
    Actor,
    CallContext,
    ConflictError,
    Executor,
    MemoryBackend,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
)
from contractspec.core.approvals import (
    ApprovalCase,
    ApprovalRequirement,
    ApprovalRules,
    ApprovalVerdict,
    ApprovalVote,
)

REVIEW_POLICY = RolePermissions(
    {"reviewer": ["agent.review.*", "approval.decide"], "operator": ["agent.review.*"]}
)
REVIEWER = CallContext(actor=Actor.user("u-lead", roles=["reviewer", "lead"]), org_id=ORG)


def review(env: AgentEnv) -> Executor:
    """The app's registry with the approval review operations, run by its executor."""
    registry = SpecRegistry()
    register_review_operations(registry, approvals=env.approvals)
    return Executor(
        registry, backend=env.backend, policy=REVIEW_POLICY, clock=env.clock, ids=env.ids
    )


async def open_request(env: AgentEnv) -> str:
    """A pending refund approval requested by u-owner."""
    req = await env.approvals.request(
        action="refund", arguments={"order_id": "o-1", "amount_cents": 12000},
        requested_by=Actor.user("u-owner", roles="support"), reason="parcel lost", org_id=ORG,
    )  # fmt: skip
    return req.id


async def denied_records(env: AgentEnv) -> list[tuple[str, str | None, Any, Any]]:
    """`(action, actor_id, permission, matched_rule)` of the committed `denied` audit records."""
    if env.kind == "memory":
        assert isinstance(env.backend, MemoryBackend)
        records = [r for r in env.backend.audit.records if r.org_id == ORG]
    else:
        from contractspec.core.sql import SqlBackend

        assert isinstance(env.backend, SqlBackend)
        records = [e.record for e in await env.backend.audit.entries(ORG)]
    return [
        (r.action, r.actor_id, r.details.get("permission"), r.details.get("matched_rule"))
        for r in records
        if str(r.outcome) == "denied"
    ]


async def test_review_refusals_by_the_workflows_own_rules_are_audited_exactly_once(
    env: AgentEnv,
) -> None:
    """Self-approval, a non-named approver and the workflow's own policy refuse through the
    review operations with the workflow's errors, each leaving exactly one `denied` record naming
    the rule; a state conflict (deciding twice) is not a denial and leaves none."""
    executor = review(env)
    rid = await open_request(env)
    requester = CallContext(actor=Actor.user("u-owner", roles=["reviewer", "lead"]), org_id=ORG)
    with pytest.raises(ApprovalDecisionError, match="cannot decide it") as self_approval:
        await executor.execute("agent.review.approvals.approve", {"approval_id": rid}, requester)
    assert is_refusal_denial(self_approval.value)
    not_lead = CallContext(actor=Actor.user("u-r", roles="reviewer"), org_id=ORG)
    with pytest.raises(PolicyDeniedError, match="may not decide"):
        await executor.execute("agent.review.approvals.reject", {"approval_id": rid}, not_lead)
    named = await env.approvals.request(
        action="refund", arguments={"order_id": "o-7"}, requested_by="u-owner", reason="r",
        org_id=ORG, approvers=["u-lead-2"],
    )  # fmt: skip
    with pytest.raises(PolicyDeniedError, match="not a named approver"):
        await executor.execute(
            "agent.review.approvals.approve", {"approval_id": named.id}, REVIEWER
        )
    assert await denied_records(env) == [
        ("agent.review.approvals.approve", "u-owner", "approval.approve", "self_approval"),
        ("agent.review.approvals.reject", "u-r", "approval.reject", "policy"),
        ("agent.review.approvals.approve", "u-lead", "approval.approve", "not_named_approver"),
    ]
    # Deciding twice conflicts with the request's state: refused, but not a denial.
    two = await env.approvals.request(
        action="refund", arguments={"order_id": "o-8"}, requested_by="u-owner", reason="r",
        org_id=ORG, quorum=2,
    )  # fmt: skip
    await executor.execute("agent.review.approvals.approve", {"approval_id": two.id}, REVIEWER)
    with pytest.raises(ApprovalDecisionError, match="already decided") as twice:
        await executor.execute("agent.review.approvals.approve", {"approval_id": two.id}, REVIEWER)
    assert not is_refusal_denial(twice.value)
    assert len(await denied_records(env)) == 3
    assert (await env.approvals.get(rid)).status is ApprovalStatus.PENDING


class CfoOnly:
    """A custom decider: core's rules with the approver restricted to the `cfo` role."""

    def evaluate(self, case: ApprovalCase, now: datetime) -> ApprovalVerdict:
        return ApprovalRules().evaluate(case, now)

    def decide(
        self, case: ApprovalCase, vote: ApprovalVote, actor: Actor, now: datetime
    ) -> ApprovalVerdict:
        req = case.requirement
        strict = ApprovalCase(
            requirement=ApprovalRequirement(count=req.count, approvers=req.approvers, roles="cfo"),
            subject=case.subject, requesters=case.requesters, votes=case.votes,
            expires_at=case.expires_at, status=case.status,
        )  # fmt: skip
        return ApprovalRules().decide(strict, vote, actor, now)


async def test_a_plugged_decider_is_asked_and_its_denials_are_audited(env: AgentEnv) -> None:
    """`ApprovalWorkflow(decider=...)` replaces the rules: a lead (enough for the defaults) is
    refused as a denial and audited once; a lead who is also CFO approves."""
    workflow = ApprovalWorkflow(
        env.approval_store, backend=env.backend, policy=POLICY, clock=env.clock, ids=env.ids,
        decider=CfoOnly(),
    )  # fmt: skip
    req = await workflow.request(
        action="refund", arguments={"order_id": "o-1"}, requested_by="u-owner", reason="r",
        org_id=ORG,
    )  # fmt: skip
    with pytest.raises(PolicyDeniedError, match="one of the roles cfo") as info:
        await workflow.approve(req.id, Actor.user("u-lead", roles="lead"))
    assert info.value.details["refusal"] == "missing_role"
    assert (await workflow.get(req.id)).status is ApprovalStatus.PENDING
    done = await workflow.approve(req.id, Actor.user("u-cfo", roles=("lead", "cfo")))
    assert done.status is ApprovalStatus.APPROVED
    assert await audit_actions(env) == [
        ("approval.request", "success"),
        ("approval.approve", "denied"),
        ("approval.approve", "success"),
    ]


async def test_pending_and_listing_read_expiry_from_the_rules(env: AgentEnv) -> None:
    """`status_of` says expired from the expiry instant on (before it is recorded), and the
    review list agrees; deciding then records the expiry."""
    executor = review(env)
    req = await env.approvals.request(
        action="refund", arguments={"order_id": "o-1"}, requested_by="u-owner", reason="r",
        org_id=ORG, expires_in_s=60,
    )  # fmt: skip
    env.clock.advance(59.999)
    assert env.approvals.status_of(req) is ApprovalStatus.PENDING
    env.clock.advance(0.001)
    assert env.approvals.status_of(req) is ApprovalStatus.EXPIRED
    assert await env.approvals.pending(org_id=ORG) == []
    shown = await executor.execute("agent.review.approvals.show", {"approval_id": req.id}, REVIEWER)
    assert shown.status == "expired"
    with pytest.raises(ConflictError, match="expired"):
        await env.approvals.approve(req.id, Actor.user("u-lead", roles="lead"))
    assert (await env.approvals.get(req.id)).status is ApprovalStatus.EXPIRED
