"""The workflow board for a workflow whose state lives on the app's own record
(`define_workflow(entity=..., state_field=...)`, issue 19), on memory, a SQLite file and
PostgreSQL: columns from the records' state field, firing from the board moves the card,
input errors and guard refusals inline, denied transitions not offered and 403 when forced,
history from the audit trail, hostile values escaped."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import pytest
from console_support import assert_safe_html
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from reviews_support import ReviewClient, review_console

from contractspec.console.reviews import WorkflowBoard
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    HandlerCtx,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
    define_command,
    define_entity,
    requires,
)
from contractspec.core.testing import temporary_sql_engine
from contractspec.core.testing.fixtures import backend_kind
from contractspec.core.workflows import WorkflowInstance, define_workflow, transition

__all__ = ["backend_kind"]

ORG = "acme"


class Stage(enum.StrEnum):
    LEAD = "lead"
    QUALIFIED = "qualified"
    WON = "won"
    LOST = "lost"


class Opportunity(BaseModel):
    id: str
    title: Annotated[str, Field(min_length=1, max_length=200)]
    stage: Stage = Stage.LEAD
    created_at: datetime | None = None


class NewOpportunity(BaseModel):
    id: str
    title: str


class Win(BaseModel):
    amount: Annotated[Decimal, Field(gt=0, max_digits=10, decimal_places=2)]


def big_needs_contract(_record: Any, inp: Any) -> str | None:
    return "deals over 1,000,000 need a signed contract" if inp.amount > 1_000_000 else None


OPPORTUNITY = define_entity("crm.opportunity", Opportunity)
flow = define_workflow(
    "crm.opportunity.flow",
    states=["lead", "qualified", "won", "lost"],
    initial="lead",
    final=["won", "lost"],
    entity=OPPORTUNITY,
    state_field="stage",
    history="audit",
    transitions=[
        transition("qualify", source="lead", target="qualified", auth=requires("deal.qualify")),
        transition(
            "win", source="qualified", target="won", input=Win, guard=big_needs_contract,
            auth=requires("deal.close"),
        ),
        transition(
            "lose", source=["lead", "qualified"], target="lost", auth=requires("deal.close")
        ),
    ],
)  # fmt: skip


async def create(inp: NewOpportunity, ctx: HandlerCtx) -> Opportunity:
    record = Opportunity(id=inp.id, title=inp.title, created_at=ctx.now())
    return await ctx.repo(OPPORTUNITY).add(record)


CREATE = define_command(
    "crm.opportunity.create", input=NewOpportunity, output=Opportunity, auth=requires("deal.add")
)
POLICY = RolePermissions({"sales": ["deal.*"], "viewer": []})
USERS = {
    "sam": Actor.user("u-sam", roles="sales"),
    "vic": Actor.user("u-vic", roles="viewer"),
}
SAM = CallContext(actor=USERS["sam"], org_id=ORG)


class Setup:
    def __init__(self, backend: Backend, registry: SpecRegistry, board: WorkflowBoard) -> None:
        self.executor = Executor(registry, backend=backend, policy=POLICY)
        self.client = ReviewClient(review_console(self.executor, USERS, ORG, [board]), USERS, ORG)

    async def add(self, record_id: str, title: str, org: str = ORG) -> str:
        ctx = CallContext(actor=USERS["sam"], org_id=org)
        await self.executor.execute(
            "crm.opportunity.create", {"id": record_id, "title": title}, ctx
        )
        return record_id

    async def state(self, record_id: str) -> str:
        inst = await self.executor.execute(
            "crm.opportunity.flow.get", {"instance_id": record_id}, SAM
        )
        assert isinstance(inst, WorkflowInstance)
        return inst.state


def build() -> tuple[SpecRegistry, WorkflowBoard]:
    registry = SpecRegistry(OPPORTUNITY, flow, CREATE)
    registry.bind(CREATE, create)
    return registry, WorkflowBoard(flow, registry, key="opps", title="Opportunities")


@pytest.fixture
async def setup(backend_kind: str, tmp_path: Path) -> AsyncIterator[Setup]:
    registry, board = build()
    if backend_kind == "memory":
        s = Setup(MemoryBackend(), registry, board)
        yield s
        await s.client.aclose()
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        s = Setup(sql, registry, board)
        yield s
        await s.client.aclose()


def test_the_board_query_reads_the_entity() -> None:
    """The board registers `console.board.<wf>` for the entity workflow, no instance table."""
    registry, board = build()
    assert board.operation == "console.board.crm.opportunity.flow"
    assert registry.get(board.operation).name == board.operation
    assert {e.name for e in registry.entities()} == {"crm.opportunity"}


async def test_columns_from_the_state_field_and_firing_from_the_board(setup: Setup) -> None:
    """Columns in declaration order, filled from the records' `stage`; each card offers what
    the caller may fire now (no `expected_seq`: the entity's version guards moves); firing
    `qualify` from the board moves the card; the history comes from the audit trail."""
    first = await setup.add("o-1", "ACME renewal")
    second = await setup.add("o-2", "Globex pilot")
    board = await setup.client.page("sam", "/admin/opps/")
    assert [c["data-state"] for c in board.select("section.column")] == [
        "lead",
        "qualified",
        "won",
        "lost",
    ]
    lead = board.select_one('section.column[data-state="lead"]')
    assert {li["data-id"] for li in lead.select("li.card")} == {first, second}
    card = lead.select_one(f'li.card[data-id="{first}"]')
    assert card.select_one("a.card-title").get_text() == "ACME renewal"
    assert [f["action"] for f in card.select("form.transition")] == [
        f"/admin/opps/{first}/fire/qualify",
        f"/admin/opps/{first}/fire/lose",
    ]
    assert card.select('input[name="expected_seq"]') == []
    moved = await setup.client.post(
        "sam", f"/admin/opps/{first}/fire/qualify", {"return": "board"}, token_from="/admin/opps/"
    )
    assert moved.status_code == 303, moved.text
    assert moved.headers["location"] == "/admin/opps/"
    assert await setup.state(first) == "qualified"
    board = await setup.client.page("sam", "/admin/opps/")
    assert [li["data-id"] for li in board.select('section[data-state="lead"] li.card')] == [second]
    card = board.select_one(f'section.column[data-state="qualified"] li.card[data-id="{first}"]')
    # `win` needs input (amount): the card links to the record's page form instead
    assert card.select_one("a.button")["href"] == f"/admin/opps/{first}#t-win"
    page = await setup.client.page("sam", f"/admin/opps/{first}")
    assert page.select_one("dd.state").get_text() == "qualified"
    rows = [
        [td.get_text() for td in tr.select("td")] for tr in page.select("table.history tbody tr")
    ]
    assert [(r[1], r[2], r[3], r[4]) for r in rows] == [
        ("start", "", "lead", "u-sam"),
        ("transition qualify", "lead", "qualified", "u-sam"),
    ]


async def test_input_errors_guard_refusals_and_success(setup: Setup) -> None:
    """The win form is built from its input model; a bad amount is shown inline (422), the
    guard's refusal is shown (409) and the record does not move; a good input moves it to
    won, with the comment in the history and nothing left to fire."""
    deal = await setup.add("o-3", "Initech")
    await setup.executor.execute("crm.opportunity.flow.qualify", {"instance_id": deal}, SAM)
    page = await setup.client.page("sam", f"/admin/opps/{deal}")
    form = page.select_one("form.transition-win")
    assert form.select_one('input[name="input.amount"]').has_attr("required")
    bad = await setup.client.post(
        "sam", f"/admin/opps/{deal}/fire/win", {"input.amount": "-5"},
        token_from=f"/admin/opps/{deal}",
    )  # fmt: skip
    assert bad.status_code == 422
    field = assert_safe_html(bad.text).select_one('form.transition-win input[name="input.amount"]')
    assert (field["aria-invalid"], field["value"]) == ("true", "-5")
    refused = await setup.client.post(
        "sam", f"/admin/opps/{deal}/fire/win", {"input.amount": "2000000"},
        token_from=f"/admin/opps/{deal}",
    )  # fmt: skip
    assert refused.status_code == 409
    assert "signed contract" in assert_safe_html(refused.text).select_one("p.refusal").get_text()
    assert await setup.state(deal) == "qualified"
    won = await setup.client.post(
        "sam", f"/admin/opps/{deal}/fire/win", {"input.amount": "1250.50", "comment": "signed"},
        token_from=f"/admin/opps/{deal}",
    )  # fmt: skip
    assert won.status_code == 303, won.text
    assert won.headers["location"] == f"/admin/opps/{deal}"
    assert await setup.state(deal) == "won"
    done = await setup.client.page("sam", f"/admin/opps/{deal}")
    assert done.select("form.transition") == []
    assert "signed" in done.select_one("table.history").get_text()
    board = await setup.client.page("sam", "/admin/opps/")
    assert board.select_one(f'section[data-state="won"] li.card[data-id="{deal}"]') is not None


async def test_denied_transitions_are_not_offered_and_403_when_forced(setup: Setup) -> None:
    """A viewer sees the board without transition forms; a forced post is a 403 and the
    record does not move; another tenant's record is a 404 (not on the board either)."""
    deal = await setup.add("o-4", "Umbrella")
    other = await setup.add("o-5", "Elsewhere", org="other-org")
    board = await setup.client.page("vic", "/admin/opps/")
    assert board.select_one(f'li.card[data-id="{deal}"]') is not None
    assert board.select_one(f'li.card[data-id="{other}"]') is None
    assert board.select("form.transition") == []
    forced = await setup.client.force("vic", f"/admin/opps/{deal}/fire/qualify", {})
    assert forced.status_code == 403
    assert await setup.state(deal) == "lead"
    assert (await setup.client.get("sam", f"/admin/opps/{other}")).status_code == 404
    forced_other = await setup.client.force("sam", f"/admin/opps/{other}/fire/qualify", {})
    assert forced_other.status_code == 404
    unknown = await setup.client.force("sam", f"/admin/opps/{deal}/fire/explode", {})
    assert unknown.status_code == 404


@pytest.mark.parametrize("title", ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'])
async def test_hostile_record_values_are_escaped(setup: Setup, title: str) -> None:
    """Hostile record fields render as text on the board and the record's page."""
    deal = await setup.add("o-6", title)
    board = await setup.client.page("sam", "/admin/opps/")
    assert board.select_one(f'li.card[data-id="{deal}"] a.card-title').get_text() == title
    page = await setup.client.page("sam", f"/admin/opps/{deal}")
    assert page.select_one("h1").get_text().startswith(title)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    title=st.text(
        st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
        min_size=1,
        max_size=60,
    )
)
async def test_any_title_renders_as_text_on_the_board(title: str) -> None:
    """Hypothesis: any title (markup, quotes, control characters) is the card's text and the
    page stays free of injected markup (memory store)."""
    registry, board = build()
    s = Setup(MemoryBackend(), registry, board)
    try:
        await s.add("o-h", title)
        page = await s.client.get("sam", "/admin/opps/")
        assert page.status_code == 200
        soup = assert_safe_html(page.text)
        assert soup.select_one('li.card[data-id="o-h"] a.card-title').get_text() == title
    finally:
        await s.client.aclose()
