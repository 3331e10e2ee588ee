"""ApprovalWorkflow rules: final decisions, no self-approval, quorum, permissions, expiry, hashes."""

from __future__ import annotations

import asyncio

import pytest
from agent_support import LEAD, LEAD2, ORG, POLICY, AgentEnv, audit_actions, event_names
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.agent import (
    ApprovalDecisionError,
    ApprovalExpiredError,
    ApprovalMismatchError,
    ApprovalRequiredError,
    ApprovalStatus,
    ApprovalUnavailableError,
    ApprovalWorkflow,
    MemoryApprovalStore,
    arguments_hash,
)
from contractspec.core import (
    Actor,
    NotFoundError,
    PolicyDeniedError,
    SpecValidationError,
)

REQUESTER = Actor.user("u-owner", roles="support")
ARGS = {"order_id": "o-1", "amount_cents": 12000}


async def open_request(env: AgentEnv, **kwargs: object) -> str:
    req = await env.approvals.request(
        action="refund",
        arguments=kwargs.pop("arguments", ARGS),  # type: ignore[arg-type]
        requested_by=REQUESTER,
        reason="parcel lost",
        org_id=ORG,
        **kwargs,  # type: ignore[arg-type]
    )
    return req.id


async def test_approve_is_final_audited_and_announced(env: AgentEnv) -> None:
    """An approval is final: deciding again fails; request and decision are audited and announced."""
    rid = await open_request(env)
    approved = await env.approvals.approve(rid, LEAD, comment="ok")
    assert approved.status is ApprovalStatus.APPROVED
    assert [(d.approver_id, d.verdict, d.comment) for d in approved.decisions] == [
        ("u-lead", "approve", "ok")
    ]
    assert approved.decided_at == env.clock.now()
    for decide in (env.approvals.approve, env.approvals.reject):
        with pytest.raises(ApprovalDecisionError, match="already approved; decisions are final"):
            await decide(rid, LEAD2)
    assert await audit_actions(env) == [
        ("approval.request", "success"),
        ("approval.approve", "success"),
    ]
    assert await event_names(env) == ["approval.requested", "approval.approved"]
    assert (await env.approvals.verify(rid, dict(ARGS))).id == rid


async def test_requester_cannot_approve_their_own_request(env: AgentEnv) -> None:
    """Self-approval is refused and the refusal is audited as denied."""
    rid = await open_request(env)
    requester_as_lead = Actor.user("u-owner", roles="lead")
    with pytest.raises(ApprovalDecisionError, match="cannot decide it"):
        await env.approvals.approve(rid, requester_as_lead)
    assert (await env.approvals.get(rid)).status is ApprovalStatus.PENDING
    assert await audit_actions(env) == [
        ("approval.request", "success"),
        ("approval.approve", "denied"),
    ]


async def test_quorum_needs_distinct_approvers_and_one_reject_vetoes(env: AgentEnv) -> None:
    """With quorum 2 one approval keeps it pending; the same approver twice is refused."""
    rid = await open_request(env, quorum=2)
    first = await env.approvals.approve(rid, LEAD)
    assert (first.status, first.approvals) == (ApprovalStatus.PENDING, 1)
    with pytest.raises(ApprovalRequiredError):
        await env.approvals.verify(rid, ARGS)
    with pytest.raises(ApprovalDecisionError, match="already decided"):
        await env.approvals.approve(rid, LEAD)
    second = await env.approvals.approve(rid, LEAD2)
    assert (second.status, second.approvals) == (ApprovalStatus.APPROVED, 2)
    vetoed = await open_request(env, quorum=2, arguments={"order_id": "o-2", "amount_cents": 1})
    await env.approvals.approve(vetoed, LEAD)
    rejected = await env.approvals.reject(vetoed, LEAD2, comment="no")
    assert rejected.status is ApprovalStatus.REJECTED
    with pytest.raises(ApprovalDecisionError, match="was rejected"):
        await env.approvals.verify(vetoed, {"order_id": "o-2", "amount_cents": 1})


async def test_only_permitted_or_named_approvers_may_decide(env: AgentEnv) -> None:
    """The policy's permission is required; named approvers exclude everyone else."""
    rid = await open_request(env)
    auditor = Actor.user("u-audit", roles="auditor")
    with pytest.raises(PolicyDeniedError) as info:
        await env.approvals.approve(rid, auditor)
    assert info.value.action == "approval.decide"
    assert "none of the actor's roles (auditor) grants 'approval.decide'" in info.value.reason
    named = await open_request(env, approvers=["u-lead-2"], arguments={"x": 1})
    with pytest.raises(PolicyDeniedError, match="not a named approver"):
        await env.approvals.approve(named, LEAD)
    assert (await env.approvals.approve(named, LEAD2)).status is ApprovalStatus.APPROVED
    nobody = ApprovalWorkflow(MemoryApprovalStore())
    req = await nobody.request(action="a", arguments={}, requested_by="u-1", reason="r")
    with pytest.raises(PolicyDeniedError, match="no PolicyDecider is configured"):
        await nobody.approve(req.id, LEAD)


async def test_expiry_is_final_and_listed_in_history(env: AgentEnv) -> None:
    """Past its expiry a request cannot be approved; it is recorded as expired."""
    late = await open_request(env, expires_in_s=60)
    open_one = await open_request(
        env, expires_in_s=600, arguments={"order_id": "o-3", "amount_cents": 5}
    )
    env.clock.advance(61)
    with pytest.raises(ApprovalExpiredError):
        await env.approvals.approve(late, LEAD)
    assert (await env.approvals.get(late)).status is ApprovalStatus.EXPIRED
    assert [r.id for r in await env.approvals.pending(org_id=ORG)] == [open_one]
    env.clock.advance(600)
    assert [r.id for r in await env.approvals.expire_due(org_id=ORG)] == [open_one]
    assert [(r.id, r.status) for r in await env.approvals.history(org_id=ORG)] == [
        (open_one, ApprovalStatus.EXPIRED), (late, ApprovalStatus.EXPIRED),
    ]  # fmt: skip
    assert await event_names(env) == [
        "approval.requested", "approval.requested", "approval.expired", "approval.expired",
    ]  # fmt: skip


async def test_approval_is_bound_to_the_exact_arguments(env: AgentEnv) -> None:
    """verify refuses changed arguments; a key reused with other arguments is a mismatch."""
    rid = await open_request(env, key="action-1")
    await env.approvals.approve(rid, LEAD)
    with pytest.raises(ApprovalMismatchError, match="a changed action needs a new approval"):
        await env.approvals.verify(rid, {"order_id": "o-1", "amount_cents": 12001})
    again = await env.approvals.request(
        action="refund", arguments={"amount_cents": 12000, "order_id": "o-1"}, requested_by=REQUESTER,
        reason="same", org_id=ORG, key="action-1",
    )  # fmt: skip
    assert again.id == rid
    with pytest.raises(ApprovalMismatchError):
        await env.approvals.request(
            action="refund", arguments={"order_id": "o-1", "amount_cents": 1}, requested_by=REQUESTER,
            reason="changed", org_id=ORG, key="action-1",
        )  # fmt: skip
    with pytest.raises(NotFoundError):
        await env.approvals.get("missing")


async def test_concurrent_deciders_never_double_count(env: AgentEnv) -> None:
    """Three deciders at once on a quorum-2 request: it ends approved with exactly two approvals."""
    rid = await open_request(env, quorum=2)
    lead3 = Actor.user("u-lead-3", roles="lead")
    results = await asyncio.gather(
        *(env.approvals.approve(rid, who) for who in (LEAD, LEAD2, lead3)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, ApprovalDecisionError) for e in errors), errors
    final = await env.approvals.get(rid)
    assert (final.status, final.approvals) == (ApprovalStatus.APPROVED, 2)
    assert len(errors) == 1


async def test_unavailable_store_fails_closed() -> None:
    """A store whose database refuses connections raises ApprovalUnavailableError on every call."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from contractspec.agent.sql import SqlApprovalStore
    from contractspec.core.sql import SqlUnitOfWork

    engine = create_async_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # nothing listens
    try:
        wf = ApprovalWorkflow(SqlApprovalStore(), unit_of_work=SqlUnitOfWork(engine), policy=POLICY)
        with pytest.raises(ApprovalUnavailableError, match="nothing that needs approval may run"):
            await wf.request(action="a", arguments={}, requested_by="u-1", reason="r")
        with pytest.raises(ApprovalUnavailableError):
            await wf.get("x")
    finally:
        await engine.dispose()


@settings(deadline=None, max_examples=50)
@given(
    risk=st.one_of(st.integers(max_value=-1), st.integers(min_value=4), st.booleans()),
    quorum=st.integers(min_value=1, max_value=3),
)
def test_bad_risk_is_rejected_naming_the_field(risk: int, quorum: int) -> None:
    """Any risk outside 0-3 (or a bool) raises SpecValidationError on the risk field."""
    wf = ApprovalWorkflow(MemoryApprovalStore())
    with pytest.raises(SpecValidationError) as info:
        asyncio.run(
            wf.request(
                action="a", arguments={}, requested_by="u", reason="r", risk=risk, quorum=quorum
            )
        )
    assert info.value.errors[0]["field"] == "risk"


@settings(deadline=None)
@given(
    field=st.sampled_from(["action", "reason", "quorum", "expires_in_s", "approvers"]),
)
def test_bad_request_fields_are_named(field: str) -> None:
    """Each invalid request field is reported by name."""
    args: dict[str, object] = {"action": "a", "arguments": {}, "requested_by": "u", "reason": "r"}
    bad: dict[str, object] = {
        "action": {"action": " "},
        "reason": {"reason": ""},
        "quorum": {"quorum": 0},
        "expires_in_s": {"expires_in_s": -5},
        "approvers": {"approvers": ["u"]},
    }[field]
    wf = ApprovalWorkflow(MemoryApprovalStore())
    with pytest.raises(SpecValidationError) as info:
        asyncio.run(wf.request(**{**args, **bad}))  # type: ignore[arg-type]
    assert info.value.errors[0]["field"] == field


@settings(deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=4
    )
)
def test_arguments_hash_ignores_key_order(arguments: dict[str, object]) -> None:
    """The hash is the same for any key order and differs once a value changes."""
    reordered = dict(reversed(list(arguments.items())))
    assert arguments_hash(arguments) == arguments_hash(reordered)
    assert len(arguments_hash(arguments)) == 64
    assert arguments_hash({**arguments, "__extra__": 1}) != arguments_hash(arguments)
