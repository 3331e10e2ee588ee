"""The approvals example: its story, role gating, the SLA timer, the HTTP surface, the README."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from approvals.app import USERS, ApprovalsApp, build_app
from approvals.spec import SLA, WORKFLOW, registry, registry_v2
from approvals.story import run_story
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import (
    ConflictError,
    PolicyDeniedError,
    WorkflowGuardError,
    WorkflowStateError,
)
from contractspec.core.diff import check_lock
from contractspec.core.testing import FakeClock

HERE = Path(__file__).resolve().parents[1]
ALICE, BOB, CAROL, FRED = (USERS[f"key-{u}"].call() for u in ("alice", "bob", "carol", "fred"))
LAPTOPS = {"title": "Laptops", "amount": "7500.00", "currency": "EUR", "requester": "Alice"}
TONER = {"title": "Toner", "amount": "120.00", "currency": "EUR", "requester": "Alice"}


@pytest.fixture
async def wired(sql_engine: AsyncEngine) -> tuple[ApprovalsApp, FakeClock]:
    """The app on a fresh SQLite file or PostgreSQL schema, on a fake clock."""
    clock = FakeClock()
    return await build_app(sql_engine, clock=clock), clock


async def call(app: ApprovalsApp, op: str, payload: dict[str, Any], who: Any) -> Any:
    """Run `procurement.purchase_request.<op>`."""
    return await app.executor.execute(f"{WORKFLOW}.{op}", payload, who)


async def submitted(app: ApprovalsApp, data: dict[str, Any]) -> str:
    """A request created and submitted by alice; its id."""
    inst = await call(app, "start", {"data": data}, ALICE)
    await call(app, "submit", {"instance_id": inst.id}, ALICE)
    return str(inst.id)


async def test_story_runs_end_to_end(wired: tuple[ApprovalsApp, FakeClock]) -> None:
    """The demo's story ends paid (two approvers) and escalated-then-approved, history in order."""
    app, clock = wired
    story = await run_story(app, clock)
    assert story.laptops is not None
    assert story.toner is not None
    assert story.history is not None
    assert (story.laptops.state, story.toner.state) == ("paid", "approved")
    steps = [(s.seq, s.kind, s.transition, s.from_state, s.to_state, s.actor_id)
             for s in story.history.items]  # fmt: skip
    assert steps == [
        (1, "start", None, None, "draft", "alice"),
        (2, "transition", "submit", "draft", "submitted", "alice"),
        (3, "comment", None, "submitted", "submitted", "bob"),
        (4, "comment", None, "submitted", "submitted", "alice"),
        (5, "approval", "approve_large", "submitted", "approved", "carol"),
        (6, "transition", "pay", "approved", "paid", "fred"),
    ]
    assert [s.comment for s in story.history.items][2:4] == ["Which vendor?", "Framework, 5 units"]
    assert story.history.items[4].input["approvers"] == ["bob", "carol"]
    toner = await call(app, "history", {"instance_id": story.toner.id}, ALICE)
    assert [(s.kind, s.transition, s.to_state, s.actor_id) for s in toner.items] == [
        ("start", None, "draft", "alice"),
        ("transition", "submit", "submitted", "alice"),
        ("timer", "escalate", "escalated", "workflow-timer"),
        ("transition", "approve", "approved", "bob"),
    ]


async def test_history_pages_keep_order(wired: tuple[ApprovalsApp, FakeClock]) -> None:
    """History reads oldest first across pages (limit + after cursor)."""
    app, _ = wired
    rid = await submitted(app, LAPTOPS)
    for n in range(3):
        await call(app, "comment", {"instance_id": rid, "comment": f"c{n}"}, BOB)
    first = await call(app, "history", {"instance_id": rid, "limit": 3}, ALICE)
    rest = await call(app, "history", {"instance_id": rid, "after": first.next_cursor}, ALICE)
    assert [s.seq for s in first.items] == [1, 2, 3]
    assert [s.seq for s in rest.items] == [4, 5]
    assert [s.comment for s in [*first.items, *rest.items]] == [None, None, "c0", "c1", "c2"]


async def test_roles_gate_every_transition(wired: tuple[ApprovalsApp, FakeClock]) -> None:
    """Requester and finance cannot decide, managers cannot pay or self-approve, nothing moves."""
    app, _ = wired
    big, small = await submitted(app, LAPTOPS), await submitted(app, TONER)
    for who in (ALICE, FRED):
        with pytest.raises(PolicyDeniedError):
            await call(app, "approve", {"instance_id": small, "input": {}}, who)
        with pytest.raises(PolicyDeniedError):
            await call(app, "approve_large.approve", {"instance_id": big, "input": {}}, who)
    with pytest.raises(PolicyDeniedError):
        await call(app, "escalate", {"instance_id": small}, BOB)  # only the SLA timer escalates
    with pytest.raises(WorkflowGuardError, match="need two managers"):
        await call(app, "approve", {"instance_id": big, "input": {}}, BOB)
    await call(app, "approve", {"instance_id": small, "input": {}}, BOB)
    with pytest.raises(PolicyDeniedError):
        await call(app, "pay", {"instance_id": small, "input": {"reference": "X"}}, BOB)
    got = {i: (await call(app, "get", {"instance_id": i}, ALICE)).state for i in (big, small)}
    assert got == {big: "submitted", small: "approved"}


async def test_large_amounts_need_two_distinct_managers(
    wired: tuple[ApprovalsApp, FakeClock],
) -> None:
    """One manager twice is no quorum; a second manager fires the step; a rejection is final."""
    app, _ = wired
    big, other = await submitted(app, LAPTOPS), await submitted(app, LAPTOPS)
    once = await call(app, "approve_large.approve", {"instance_id": big, "input": {}}, BOB)
    assert (once.approvals, once.required, once.fired) == (1, 2, False)
    with pytest.raises(ConflictError, match="decides once"):
        await call(app, "approve_large.approve", {"instance_id": big, "input": {}}, BOB)
    done = await call(app, "approve_large.approve", {"instance_id": big, "input": {}}, CAROL)
    assert (done.fired, done.instance.state) == (True, "approved")
    await call(app, "approve_large.reject", {"instance_id": other, "input": {}}, BOB)
    with pytest.raises(WorkflowStateError, match="rejection is final"):
        await call(app, "approve_large.approve", {"instance_id": other, "input": {}}, CAROL)
    assert (await call(app, "get", {"instance_id": other}, ALICE)).state == "submitted"


async def test_sla_escalates_only_overdue_requests(wired: tuple[ApprovalsApp, FakeClock]) -> None:
    """A real worker escalates a request still submitted after 2 days, not before, and not one
    decided in time."""
    app, clock = wired
    waiting, decided = await submitted(app, TONER), await submitted(app, TONER)
    worker = app.worker()
    clock.advance(SLA - timedelta(minutes=1))
    await worker.run(until_idle=True)
    assert (await call(app, "get", {"instance_id": waiting}, ALICE)).state == "submitted"
    await call(app, "reject", {"instance_id": decided, "input": {"note": "no"}}, BOB)
    clock.advance(timedelta(minutes=2))
    stats = await worker.run(until_idle=True)
    assert stats.succeeded == 2
    states = {
        i: (await call(app, "get", {"instance_id": i}, ALICE)).state for i in (waiting, decided)
    }
    assert states == {waiting: "escalated", decided: "rejected"}
    clock.advance(SLA * 3)
    await worker.run(until_idle=True)  # nothing else due: fired once
    steps = await call(app, "history", {"instance_id": waiting}, ALICE)
    assert [s.kind for s in steps.items] == ["start", "transition", "timer"]


async def test_http_surface_with_api_keys(wired: tuple[ApprovalsApp, FakeClock]) -> None:
    """Over HTTP: 401 without a key, 403 for a requester approving, the tenant comes from the key."""
    app, _ = wired
    base = "/procurement/purchase_request"

    def key(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer key-{user}"}

    transport = httpx.ASGITransport(app=app.http())
    async with httpx.AsyncClient(transport=transport, base_url="http://approvals") as client:
        assert (await client.post(f"{base}/start/v1", json={"data": TONER})).status_code == 401
        created = await client.post(f"{base}/start/v1", json={"data": TONER}, headers=key("alice"))
        assert created.status_code == 200, created.text
        rid = created.json()["id"]
        moved = await client.post(
            f"{base}/submit/v1", json={"instance_id": rid}, headers=key("alice")
        )
        assert moved.json()["state"] == "submitted"
        denied = await client.post(
            f"{base}/approve/v1", json={"instance_id": rid, "input": {}}, headers=key("alice")
        )
        assert (denied.status_code, denied.json()["code"]) == (403, "policy_denied")
        other_org = await client.get(
            f"{base}/get/v1", params={"instance_id": rid}, headers=key("zoe")
        )
        assert other_org.status_code == 404
        offer = await client.get(
            f"{base}/available/v1", params={"instance_id": rid}, headers=key("bob")
        )
        assert [t["name"] for t in offer.json()["transitions"]] == ["approve", "reject"]
        approved = await client.post(
            f"{base}/approve/v1",
            json={"instance_id": rid, "input": {"note": "ok"}},
            headers=key("bob"),
        )
        assert approved.json()["state"] == "approved"
        history = await client.get(
            f"{base}/history/v1", params={"instance_id": rid}, headers=key("alice")
        )
        assert [s["actor_id"] for s in history.json()["items"]] == ["alice", "alice", "bob"]


def test_python_m_approvals_prints_the_story() -> None:
    """`python -m approvals` runs the story on a temporary SQLite file, as the README shows."""
    out = subprocess.run(
        [sys.executable, "-m", "approvals"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "approval   approve_large  submitted -> approved  by bob, carol" in out
    assert "clock +2 days, worker runs: SLA timer fired -> escalated" in out
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- story:begin -->\n```text\n(.*?)```\n<!-- story:end -->", readme, re.S)
    assert block is not None, "README lost its story block"
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    assert uuid.sub("<id>", block.group(1)) == uuid.sub("<id>", out), "README story is stale"


def test_lock_files_match_the_code() -> None:
    """The committed IR locks of version 1 and of versions 1+2 are what the spec produces."""
    assert check_lock(registry, HERE / "contractspec.lock.json").status == "up-to-date"
    assert check_lock(registry_v2, HERE / "contractspec.v2.lock.json").status == "up-to-date"


@pytest.mark.parametrize(
    ("marker", "new", "exit_code"),
    [
        ("spec-diff", "contractspec.v2.lock.json", 0),
        ("spec-diff-edited", "approvals.spec:registry_edited", 1),
    ],
)
def test_readme_diff_is_the_real_command_output(marker: str, new: str, exit_code: int) -> None:
    """The README's `contractspec spec diff` blocks are what the command prints today (and the
    in-place edit fails it)."""
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    pattern = rf"<!-- {marker}:begin -->\n```text\n(.*?)```\n<!-- {marker}:end -->"
    block = re.search(pattern, readme, re.S)
    assert block is not None, f"README lost its {marker} block"
    cli = Path(sys.executable).parent / "contractspec"
    real = subprocess.run(
        [str(cli), "spec", "diff", "contractspec.lock.json", new],
        cwd=HERE, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert real.returncode == exit_code, real.stderr
    assert block.group(1) == real.stdout
