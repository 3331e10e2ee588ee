"""The scripted story of `python -m approvals`, also run by the tests on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from attrs import define, field

from approvals.app import USERS, ApprovalsApp
from approvals.spec import SLA, WORKFLOW
from contractspec.core import WorkflowInstance
from contractspec.core.testing import FakeClock
from contractspec.core.workflows import ApprovalResult, HistoryPage

__all__ = ["Story", "run_story"]


@define
class Story:
    """What happened: printable lines plus the ids and final instances for assertions.

    Attributes:
        lines: One human-readable line per step.
        laptops: The large request (two managers), paid at the end.
        toner: The small request left waiting, escalated by the SLA timer.
        history: `laptops`' history, oldest first.
    """

    lines: list[str] = field(factory=list)
    laptops: WorkflowInstance | None = None
    toner: WorkflowInstance | None = None
    history: HistoryPage | None = None


async def run_story(app: ApprovalsApp, clock: FakeClock) -> Story:
    """Create, submit, approve x2, pay, read the history; then let a request go overdue.

    Args:
        app: The wired app (any SQL backend).
        clock: The fake clock the app runs on (moved 2 days forward for the escalation).

    Returns:
        The story.
    """
    story = Story()
    ex = app.executor
    alice, bob, carol, fred = (USERS[f"key-{u}"].call() for u in ("alice", "bob", "carol", "fred"))

    async def op(name: str, payload: dict[str, Any], call: Any) -> Any:
        return await ex.execute(f"{WORKFLOW}.{name}", payload, call)

    laptops = await op(
        "start",
        {"data": {"title": "Laptops for the new team", "amount": "7500.00", "currency": "EUR",
                  "requester": "Alice"}},
        alice,
    )  # fmt: skip
    story.lines.append(f"alice creates {laptops.id}: 7500.00 EUR -> {laptops.state}")
    laptops = await op("submit", {"instance_id": laptops.id}, alice)
    story.lines.append(f"alice submits -> {laptops.state}")
    await op("comment", {"instance_id": laptops.id, "comment": "Which vendor?"}, bob)
    await op("comment", {"instance_id": laptops.id, "comment": "Framework, 5 units"}, alice)
    story.lines.append("bob and alice comment (state unchanged)")
    first: ApprovalResult = await op(
        "approve_large.approve", {"instance_id": laptops.id, "input": {"note": "ok"}}, bob
    )
    story.lines.append(
        f"bob approves -> {first.approvals}/{first.required}, state {first.instance.state}"
    )
    second: ApprovalResult = await op(
        "approve_large.approve", {"instance_id": laptops.id, "input": {"note": "ok"}}, carol
    )
    story.lines.append(
        f"carol approves -> {second.approvals}/{second.required}, state {second.instance.state}"
    )
    laptops = await op("pay", {"instance_id": laptops.id, "input": {"reference": "PAY-001"}}, fred)
    story.lines.append(f"fred pays -> {laptops.state}")
    story.laptops = laptops
    story.history = await op("history", {"instance_id": laptops.id}, alice)
    story.lines.append("history:")
    for s in story.history.items:
        who = f"{s.kind:<10} {s.transition or '':<14} {s.from_state or '-':>9} -> {s.to_state:<9}"
        by = ", ".join(s.input["approvers"]) if s.kind == "approval" else s.actor_id
        said = f"  {s.comment!r}" if s.comment else ""
        story.lines.append(f"  {s.seq}. {who} by {by}{said}")

    toner = await op(
        "start",
        {"data": {"title": "Printer toner", "amount": "120.00", "currency": "EUR",
                  "requester": "Alice"}},
        alice,
    )  # fmt: skip
    toner = await op("submit", {"instance_id": toner.id}, alice)
    story.lines.append(f"alice submits {toner.id}: 120.00 EUR -> {toner.state}; nobody decides")
    worker = app.worker()
    await worker.run(until_idle=True)
    toner = await op("get", {"instance_id": toner.id}, alice)
    story.lines.append(f"worker runs now: nothing due -> {toner.state}")
    clock.advance(SLA + timedelta(minutes=1))
    await worker.run(until_idle=True)
    toner = await op("get", {"instance_id": toner.id}, alice)
    story.lines.append(f"clock +2 days, worker runs: SLA timer fired -> {toner.state}")
    toner = await op("approve", {"instance_id": toner.id, "input": {"note": "late, sorry"}}, bob)
    story.lines.append(f"bob approves the escalated request -> {toner.state}")
    story.toner = toner
    return story
