"""The workflow board section: columns by state, available transitions, firing, history."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import pytest
from console_support import assert_safe_html
from pydantic import BaseModel, Field
from reviews_support import ReviewClient, review_console

from contractspec.console.reviews import WorkflowBoard
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
    requires,
)
from contractspec.core.testing import temporary_sql_engine
from contractspec.core.testing.fixtures import backend_kind
from contractspec.core.workflows import Approvals, WorkflowInstance, define_workflow, transition

__all__ = ["backend_kind"]

ORG = "acme"


class Deal(BaseModel):
    title: Annotated[str, Field(min_length=1, max_length=200)]


class Win(BaseModel):
    amount: Annotated[Decimal, Field(gt=0, max_digits=10, decimal_places=2)]
    channel: Annotated[str, Field(pattern="^(direct|partner)$")] = "direct"


def big_needs_contract(instance: WorkflowInstance, inp: Win) -> str | None:
    return "deals over 1,000,000 need a signed contract" if inp.amount > 1_000_000 else None


deal_flow = define_workflow(
    "crm.deal",
    states=["lead", "qualified", "won", "lost"],
    initial="lead",
    final=["won", "lost"],
    subject=Deal,
    transitions=[
        transition("qualify", source="lead", target="qualified", auth=requires("deal.qualify")),
        transition(
            "win",
            source="qualified",
            target="won",
            input=Win,
            guard=big_needs_contract,
            auth=requires("deal.close"),
        ),
        transition(
            "lose", source=["lead", "qualified"], target="lost", auth=requires("deal.close")
        ),
    ],
)
POLICY = RolePermissions({"sales": ["deal.*"], "viewer": []})
USERS = {
    "sam": Actor.user("u-sam", roles="sales"),
    "vic": Actor.user("u-vic", roles="viewer"),
}
SAM = CallContext(actor=USERS["sam"], org_id=ORG)


class Setup:
    def __init__(self, backend: Backend, registry: SpecRegistry) -> None:
        self.executor = Executor(registry, backend=backend, policy=POLICY)
        self.client = ReviewClient(
            review_console(self.executor, USERS, ORG, [self.board]), USERS, ORG
        )

    board: WorkflowBoard

    async def start(self, title: str, org: str = ORG) -> str:
        ctx = CallContext(actor=USERS["sam"], org_id=org)
        inst = await self.executor.execute("crm.deal.start", {"data": {"title": title}}, ctx)
        assert isinstance(inst, WorkflowInstance)
        return inst.id

    async def state(self, instance_id: str) -> str:
        inst = await self.executor.execute("crm.deal.get", {"instance_id": instance_id}, SAM)
        assert isinstance(inst, WorkflowInstance)
        return inst.state


@pytest.fixture
async def setup(backend_kind: str, tmp_path: Path) -> AsyncIterator[Setup]:
    registry = SpecRegistry(deal_flow)
    Setup.board = WorkflowBoard(deal_flow, registry, key="deals", title="Deals")
    if backend_kind == "memory":
        s = Setup(MemoryBackend(), registry)
        yield s
        await s.client.aclose()
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        s = Setup(sql, registry)
        yield s
        await s.client.aclose()


async def test_board_columns_cards_and_firing_from_the_board(setup: Setup) -> None:
    """Columns in declaration order; each card offers what the caller may fire now; firing
    `qualify` from the board moves the card and records the actor in the history."""
    first = await setup.start("ACME renewal")
    second = await setup.start("Globex pilot")
    board = await setup.client.page("sam", "/admin/deals/")
    assert [c["data-state"] for c in board.select("section.column")] == [
        "lead",
        "qualified",
        "won",
        "lost",
    ]
    lead = board.select_one('section.column[data-state="lead"]')
    assert {li["data-id"] for li in lead.select("li.card")} == {first, second}
    card = lead.select_one(f'li.card[data-id="{first}"]')
    assert [f["action"] for f in card.select("form.transition")] == [
        f"/admin/deals/{first}/fire/qualify",
        f"/admin/deals/{first}/fire/lose",
    ]
    moved = await setup.client.post(
        "sam", f"/admin/deals/{first}/fire/qualify", {"expected_seq": "1", "return": "board"},
        token_from="/admin/deals/",
    )  # fmt: skip
    assert moved.status_code == 303
    assert moved.headers["location"] == "/admin/deals/"
    assert await setup.state(first) == "qualified"
    board = await setup.client.page("sam", "/admin/deals/")
    qualified = board.select_one('section.column[data-state="qualified"]')
    card = qualified.select_one(f'li.card[data-id="{first}"]')
    # `win` needs input (amount): the card links to the instance page's form instead
    assert card.select_one("a.button")["href"] == f"/admin/deals/{first}#t-win"
    page = await setup.client.page("sam", f"/admin/deals/{first}")
    rows = [
        [td.get_text() for td in tr.select("td")] for tr in page.select("table.history tbody tr")
    ]
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("start", "", "lead", "u-sam"),
        ("transition qualify", "lead", "qualified", "u-sam"),
    ]


async def test_transition_input_errors_guard_refusals_and_success(setup: Setup) -> None:
    """The win form is built from its input model; a bad amount is shown inline (422), the
    guard's refusal is shown (409), a good input moves the deal to won."""
    deal = await setup.start("Initech")
    await setup.executor.execute("crm.deal.qualify", {"instance_id": deal}, SAM)
    page = await setup.client.page("sam", f"/admin/deals/{deal}")
    form = page.select_one("form.transition-win")
    amount = form.select_one('input[name="input.amount"]')
    assert (amount["type"], amount["step"], amount.has_attr("required")) == ("number", "any", True)
    assert form.select_one(f'label[for="{amount["id"]}"]') is not None
    bad = await setup.client.post(
        "sam",
        f"/admin/deals/{deal}/fire/win",
        token_from=f"/admin/deals/{deal}",
        data={"expected_seq": "2", "input.amount": "-5"},
    )
    assert bad.status_code == 422
    soup = assert_safe_html(bad.text)
    field = soup.select_one('form.transition-win input[name="input.amount"]')
    assert field["aria-invalid"] == "true"
    assert field["value"] == "-5"
    assert "greater than 0" in soup.select_one(f"#{field['aria-describedby']}").get_text()
    refused = await setup.client.post(
        "sam",
        f"/admin/deals/{deal}/fire/win",
        token_from=f"/admin/deals/{deal}",
        data={"expected_seq": "2", "input.amount": "2000000"},
    )
    assert refused.status_code == 409
    assert "signed contract" in assert_safe_html(refused.text).select_one("p.refusal").get_text()
    stale = await setup.client.post(
        "sam",
        f"/admin/deals/{deal}/fire/win",
        token_from=f"/admin/deals/{deal}",
        data={"expected_seq": "1", "input.amount": "10"},
    )
    assert stale.status_code == 409
    assert await setup.state(deal) == "qualified"
    won = await setup.client.post(
        "sam",
        f"/admin/deals/{deal}/fire/win",
        {"expected_seq": "2", "input.amount": "1250.50", "comment": "signed"},
        token_from=f"/admin/deals/{deal}",
    )
    assert won.status_code == 303
    assert won.headers["location"] == f"/admin/deals/{deal}"
    assert await setup.state(deal) == "won"
    history = await setup.client.page("sam", f"/admin/deals/{deal}")
    assert history.select("form.transition") == []  # final: nothing to fire
    assert "signed" in history.select_one("table.history").get_text()


async def test_denied_transitions_are_not_offered_and_403_when_forced(setup: Setup) -> None:
    """A viewer sees the board without transition forms; a forced post is a 403 (audited by
    the executor) and the deal does not move; another tenant's deal is a 404."""
    deal = await setup.start("Umbrella")
    board = await setup.client.page("vic", "/admin/deals/")
    assert board.select_one(f'li.card[data-id="{deal}"]') is not None
    assert board.select("form.transition") == []
    forced = await setup.client.force("vic", f"/admin/deals/{deal}/fire/qualify", {})
    assert forced.status_code == 403
    assert await setup.state(deal) == "lead"
    other = await setup.start("Elsewhere", org="other-org")
    assert (await setup.client.get("sam", f"/admin/deals/{other}")).status_code == 404
    forced_other = await setup.client.force("sam", f"/admin/deals/{other}/fire/qualify", {})
    assert forced_other.status_code == 404
    unknown = await setup.client.force("sam", f"/admin/deals/{deal}/fire/explode", {})
    assert unknown.status_code == 404


@pytest.mark.parametrize("title", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
async def test_hostile_subject_data_is_escaped(setup: Setup, title: str) -> None:
    """Hostile instance data renders as text on the board and the instance page."""
    deal = await setup.start(title)
    board = await setup.client.page("sam", "/admin/deals/")
    assert board.select_one(f'li.card[data-id="{deal}"] a.card-title').get_text() == title
    page = await setup.client.page("sam", f"/admin/deals/{deal}")
    assert page.select_one("h1").get_text().startswith(title)


leave_flow = define_workflow(
    "hr.leave",
    states=["requested", "granted"],
    initial="requested",
    final=["granted"],
    transitions=[
        transition(
            "sign_off",
            source="requested",
            target="granted",
            auth=requires("leave.decide"),
            approvals=Approvals(count=2, roles=("manager",)),
        )
    ],
)
MANAGERS = {
    "ed": Actor.user("u-ed", roles=["manager"]),  # the requester: no self-approval
    "mo": Actor.user("u-mo", roles=["manager"]),
    "max": Actor.user("u-max", roles=["manager"]),
}


async def test_approval_step_quorum_on_the_instance_page(tmp_path: Path) -> None:
    """A 2-approval step: the requester is not offered it; the first manager's approval shows
    1 of 2 and is not offered again (forcing it is refused); the second one grants it."""
    registry = SpecRegistry(leave_flow)
    board = WorkflowBoard(leave_flow, registry, key="leave")
    executor = Executor(
        registry, backend=MemoryBackend(), policy=RolePermissions({"manager": ["leave.*"]})
    )
    client = ReviewClient(review_console(executor, MANAGERS, ORG, [board]), MANAGERS, ORG)
    try:
        ctx = CallContext(actor=MANAGERS["ed"], org_id=ORG)
        inst = await executor.execute("hr.leave.start", {}, ctx)
        assert isinstance(inst, WorkflowInstance)
        own = await client.page("ed", f"/admin/leave/{inst.id}")
        assert own.select("form.transition") == []
        page = await client.page("mo", f"/admin/leave/{inst.id}")
        form = page.select_one("form.transition-sign_off")
        assert form.select_one("p.quorum").get_text() == "0 of 2 approvals"
        assert [b["value"] for b in form.select("button")] == ["approve", "reject"]
        first = await client.post(
            "mo", f"/admin/leave/{inst.id}/fire/sign_off",
            {"decision": "approve", "expected_seq": "1"}, token_from=f"/admin/leave/{inst.id}",
        )  # fmt: skip
        assert first.status_code == 303
        again = await client.page("mo", f"/admin/leave/{inst.id}")
        assert again.select("form.transition") == []  # one decision per approver
        forced = await client.force(
            "mo", f"/admin/leave/{inst.id}/fire/sign_off", {"decision": "approve"}
        )
        assert forced.status_code == 409
        assert "already" in forced.text
        other = await client.page("max", f"/admin/leave/{inst.id}")
        assert other.select_one("p.quorum").get_text() == "1 of 2 approvals"
        done = await client.post(
            "max", f"/admin/leave/{inst.id}/fire/sign_off", {"decision": "approve"},
            token_from=f"/admin/leave/{inst.id}",
        )  # fmt: skip
        assert done.status_code == 303
        granted = await client.page("max", f"/admin/leave/{inst.id}")
        assert granted.select_one("dd.state").get_text() == "granted"
        bad = await client.force("max", f"/admin/leave/{inst.id}/fire/sign_off", {"decision": "x"})
        assert bad.status_code == 400
    finally:
        await client.aclose()
