"""Workflow approval steps: quorum of distinct approvers with roles, no self-approval, final
rejections (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from core_guarantees_app import read_stored
from workflows_app import (
    DIRECTOR,
    EMPLOYEE,
    MANAGER,
    MANAGER_2,
    ORG,
    POLICY,
    build_registry,
    ctx,
)

from contractspec.core import (
    Actor,
    Backend,
    ConflictError,
    Executor,
    PolicyDeniedError,
    SpecRegistry,
    WorkflowStateError,
)
from contractspec.core.testing import SequentialIds
from contractspec.core.workflows import APPROVAL_ENTITY


@pytest.fixture
def registry() -> SpecRegistry:
    """Overrides conftest's registry so the `backend` fixture creates the workflow tables."""
    return build_registry()


@pytest.fixture
def executor(registry: SpecRegistry, backend: Backend) -> Executor:
    """An executor over the backend under test with the leave policy."""
    return Executor(registry, backend=backend, policy=POLICY, ids=SequentialIds("id"))


async def _order(ex: Executor) -> str:
    out = await ex.execute("buy.order.start", {}, ctx(MANAGER))
    return str(out.model_dump()["id"])


async def _approve(ex: Executor, iid: str, actor: Actor) -> dict[str, object]:
    out = await ex.execute("buy.order.approve.approve", {"instance_id": iid}, ctx(actor))
    return out.model_dump()


async def test_two_distinct_managers_fire_the_transition_on_the_second_approval(
    executor: Executor,
) -> None:
    """First approval: recorded, not fired; second by another manager: fires in the same call,
    with one history step naming both approvers."""
    iid = await _order(executor)
    first = await _approve(executor, iid, MANAGER_2)
    assert (first["approvals"], first["required"], first["fired"]) == (1, 2, False)
    assert first["instance"]["state"] == "requested"  # type: ignore[index]
    second = await _approve(executor, iid, DIRECTOR)
    assert (second["approvals"], second["fired"]) == (2, True)
    assert second["instance"]["state"] == "approved"  # type: ignore[index]
    page = await executor.execute("buy.order.history", {"instance_id": iid}, ctx(MANAGER))
    steps = page.model_dump()["items"]
    assert [(s["kind"], s["to_state"]) for s in steps] == [
        ("start", "requested"),
        ("approval", "approved"),
    ]
    assert steps[1]["input"] == {"approvers": ["mgr-2", "dir-1"]}
    assert steps[1]["actor_id"] == "dir-1"


async def test_no_self_approval_no_missing_role_no_double_vote(executor: Executor) -> None:
    """The requester cannot approve; an approver without the manager role cannot; an approver
    cannot approve twice; none of these count towards the quorum."""
    iid = await _order(executor)
    with pytest.raises(PolicyDeniedError, match="may not approve its own request"):
        await _approve(executor, iid, MANAGER)
    with pytest.raises(PolicyDeniedError, match="needs an approver with one of the roles manager"):
        await _approve(executor, iid, EMPLOYEE)
    await _approve(executor, iid, MANAGER_2)
    with pytest.raises(ConflictError, match="already decided"):
        await _approve(executor, iid, MANAGER_2)
    got = await executor.execute("buy.order.get", {"instance_id": iid}, ctx(MANAGER))
    assert got.model_dump()["state"] == "requested"


async def test_a_rejection_is_final_for_the_state_entry(executor: Executor) -> None:
    """After one rejection, further approvals fail and `available` offers nothing."""
    iid = await _order(executor)
    out = await executor.execute("buy.order.approve.reject", {"instance_id": iid}, ctx(MANAGER_2))
    assert out.model_dump()["rejected"] is True
    with pytest.raises(WorkflowStateError, match="was rejected; a rejection is final"):
        await _approve(executor, iid, DIRECTOR)
    avail = await executor.execute("buy.order.available", {"instance_id": iid}, ctx(DIRECTOR))
    assert avail.model_dump()["transitions"] == []


async def test_available_shows_approval_progress_to_eligible_approvers_only(
    executor: Executor,
) -> None:
    """The requester sees no approval step; another manager sees it with the approvals so far."""
    iid = await _order(executor)
    mine = await executor.execute("buy.order.available", {"instance_id": iid}, ctx(MANAGER))
    assert mine.model_dump()["transitions"] == []
    await _approve(executor, iid, MANAGER_2)
    theirs = await executor.execute("buy.order.available", {"instance_id": iid}, ctx(DIRECTOR))
    [step] = theirs.model_dump()["transitions"]
    assert (step["name"], step["operation"], step["approvals_required"], step["approvals_given"]) == (
        "approve", "buy.order.approve.approve", 2, 1,
    )  # fmt: skip


async def test_concurrent_approvals_never_fire_twice_nor_lose_a_vote(
    executor: Executor, backend: Backend
) -> None:
    """Eight managers approve one order at once (quorum 2): the others get ConflictError, the
    stored approval rows are exactly those of the calls that returned, and the step fires at most
    once; approving one after another then fires it exactly once, with two distinct approvers."""
    iid = await _order(executor)
    managers = [Actor.user(f"m{i}", roles="manager") for i in range(8)]

    async def one(actor: Actor) -> BaseException | dict[str, object]:
        try:
            return await _approve(executor, iid, actor)
        except Exception as exc:  # judged below
            return exc

    results = await asyncio.wait_for(asyncio.gather(*(one(a) for a in managers)), 120)
    winners = [a.id for a, r in zip(managers, results, strict=True) if isinstance(r, dict)]
    losses = [r for r in results if not isinstance(r, dict)]
    assert all(isinstance(r, ConflictError) for r in losses), losses
    assert 1 <= len(winners) <= 2
    assert sum(1 for r in results if isinstance(r, dict) and r["fired"]) <= 1
    stored = await read_stored(backend, ORG, [APPROVAL_ENTITY])
    rows = stored.rows["cs.workflow.approval"].values()
    assert sorted(r["approver_id"] for r in rows) == sorted(winners)

    for actor in managers:  # the others decide one after another until the step fires
        got = await executor.execute("buy.order.get", {"instance_id": iid}, ctx(MANAGER))
        if got.model_dump()["state"] == "approved":
            break
        if actor.id not in winners:
            await _approve(executor, iid, actor)
    page = await executor.execute("buy.order.history", {"instance_id": iid}, ctx(MANAGER))
    steps = page.model_dump()["items"]
    assert [s["kind"] for s in steps] == ["start", "approval"]
    approvers = steps[1]["input"]["approvers"]
    assert len(approvers) == len(set(approvers)) == 2


async def test_whoever_moved_the_instance_into_the_state_may_not_approve_and_denials_are_audited(
    executor: Executor, backend: Backend
) -> None:
    """emp-1 creates a review, mgr-1 submits it: both are requesters and are denied (each denial
    audited); two other managers approve."""
    out = await executor.execute("doc.review.start", {}, ctx(EMPLOYEE))
    iid = out.model_dump()["id"]
    await executor.execute("doc.review.submit", {"instance_id": iid}, ctx(MANAGER))
    op = "doc.review.publish.approve"
    with pytest.raises(PolicyDeniedError, match=r"moved instance .* into its current state"):
        await executor.execute(op, {"instance_id": iid}, ctx(MANAGER))
    with pytest.raises(PolicyDeniedError, match="started instance"):
        await executor.execute(op, {"instance_id": iid}, ctx(Actor.user("emp-1", roles="manager")))
    await executor.execute(op, {"instance_id": iid}, ctx(MANAGER_2))
    done = await executor.execute(op, {"instance_id": iid}, ctx(DIRECTOR))
    assert done.model_dump()["instance"]["state"] == "published"
    stored = await read_stored(backend, ORG, [])
    audit = [(r.actor_id, str(r.outcome)) for r in stored.audit if r.action == op]
    assert audit == [
        ("mgr-1", "denied"), ("emp-1", "denied"), ("mgr-2", "success"), ("dir-1", "success"),
    ]  # fmt: skip


async def test_approvals_are_bound_to_the_input_of_the_first_approval(executor: Executor) -> None:
    """The second approver must approve the same input: another note is a ConflictError; the
    same note reaches the quorum and the transition records that input."""
    out = await executor.execute("doc.review.start", {}, ctx(EMPLOYEE))
    iid = out.model_dump()["id"]
    await executor.execute("doc.review.submit", {"instance_id": iid}, ctx(EMPLOYEE))
    op = "doc.review.publish.approve"
    await executor.execute(op, {"instance_id": iid, "input": {"note": "v1"}}, ctx(MANAGER))
    with pytest.raises(ConflictError, match="bound to the input of the first approval"):
        await executor.execute(op, {"instance_id": iid, "input": {"note": "v2"}}, ctx(MANAGER_2))
    done = await executor.execute(op, {"instance_id": iid, "input": {"note": "v1"}}, ctx(MANAGER_2))
    assert done.model_dump()["fired"] is True
    page = await executor.execute("doc.review.history", {"instance_id": iid}, ctx(EMPLOYEE))
    assert page.model_dump()["items"][-1]["input"] == {
        "approvers": ["mgr-1", "mgr-2"],
        "note": "v1",
    }
