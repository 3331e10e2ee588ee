"""Review sections in a real Chromium: a second user's approval resumes an agent run (the run
page updates by htmx polling), a workflow transition on the board, a suggestion's diff.

Plain sync tests (sync Playwright cannot run inside an event loop); each app runs under uvicorn
in a thread on a SQLite file, built in the server's own loop (`serve_built`). Playwright is
started per module here, not by pytest-playwright's session fixtures: a sync Playwright left
running for the session keeps an event loop running in the main thread, and every async test
collected after it then fails ("Runner.run() cannot be called from a running event loop").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from agent_support import OWNER, POLICY, build_registry
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright
from reviews_support import cookie_app, serve_built
from starlette.applications import Starlette
from test_reviews_workflows import USERS as WORKFLOW_USERS
from test_reviews_workflows import deal_flow

from contractspec.agent import (
    AgentRunner,
    ApprovalWorkflow,
    RiskLevel,
    RiskRule,
    RunStatus,
    define_agent,
    operation_tool,
)
from contractspec.agent.review import register_review_operations
from contractspec.agent.testing import ScriptedModel, call
from contractspec.console.reviews import AgentRuns, ApprovalsQueue, Suggestions, WorkflowBoard
from contractspec.core import Actor, CallContext, Executor, RolePermissions, SpecRegistry
from contractspec.core.sql import SqlBackend, sqlite_engine

_AXE = Axe()
ORG = "org-1"
REVIEW_POLICY = RolePermissions(
    {"reviewer": ["agent.review.*", "approval.decide"], "viewer": ["agent.review.read"]}
)
AGENT_USERS = {
    # the run's requester: allowed by both policies, refused by the no-self-approval rule
    "owner": Actor.user("u-owner", roles=["reviewer", "lead", "support"]),
    "lead": Actor.user("u-lead", roles=["reviewer", "lead"]),
}


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Headless Chromium from `CONTRACTSPEC_CHROMIUM` (skipped without it, unless
    `CONTRACTSPEC_REQUIRE_BROWSER=1`), stopped when the module's tests are done."""
    path = os.environ.get("CONTRACTSPEC_CHROMIUM", "")
    if not path:
        if os.environ.get("CONTRACTSPEC_REQUIRE_BROWSER") == "1":
            pytest.fail("CONTRACTSPEC_REQUIRE_BROWSER=1 but CONTRACTSPEC_CHROMIUM is unset")
        pytest.skip("browser tests need CONTRACTSPEC_CHROMIUM (see .ci/install-chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    """A page in a fresh browser context (its own cookies)."""
    context = chromium.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def errors(page: Page) -> list[str]:
    """Browser console errors and uncaught page errors seen during the test (CSP reports too)."""
    seen: list[str] = []
    page.on("console", lambda msg: seen.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    return seen


def _unexpected(errors: list[str], *statuses: int) -> list[str]:
    allowed = tuple(
        f"Failed to load resource: the server responded with a status of {status} "
        for status in statuses
    )
    return [e for e in errors if not e.startswith(allowed)]


def _accessible(page: Page) -> None:
    results = _AXE.run(page)
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], bad


def _login(page: Page, base: str, user: str) -> None:
    page.goto(f"{base}/login/{user}")
    expect(page.locator("header .who")).to_contain_text(user if user != "owner" else "u-owner")


# -- agent: approval by a second user, the run resumes -----------------------------------------

refund = operation_tool(
    build_registry().get("shop.refund.issue"),
    risk_rules=[RiskRule("amount_cents > 2000", RiskLevel.L2, "large_refund")],
)
refunder = define_agent("shop.refunder", model="m", instructions="Refund.", tools=[refund])


@pytest.fixture
def agent_console(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The agent review console; a worker task resumes runs whose approvals are decided."""
    from contractspec.agent.sql import SqlApprovalStore, SqlRunStore, create_all

    facts: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def build() -> AsyncIterator[Starlette]:
        registry = build_registry()
        engine = sqlite_engine(tmp_path / "agent.db")
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        await create_all(engine)
        approvals = ApprovalWorkflow(SqlApprovalStore(), backend=sql, policy=POLICY)
        runner = AgentRunner(
            model=ScriptedModel(
                [call("shop_refund_issue", order_id="o-9", amount_cents=3000), "Refunded."]
            ),
            backend=sql,
            runs=SqlRunStore(),
            approvals=approvals,
            executor=Executor(registry, backend=sql, policy=POLICY),
            policy=POLICY,
        )
        result = await runner.run(refunder, "refund 30", OWNER)
        assert result.status is RunStatus.WAITING_APPROVAL
        facts["run_id"] = result.run_id
        review = SpecRegistry()
        register_review_operations(review, approvals=approvals, runner=runner)
        executor = Executor(review, backend=sql, policy=REVIEW_POLICY)

        async def worker() -> None:
            while True:
                await runner.resume_ready(org_id=ORG)
                await asyncio.sleep(0.2)

        task = asyncio.get_running_loop().create_task(worker())
        try:
            yield cookie_app(executor, AGENT_USERS, ORG, [ApprovalsQueue(), AgentRuns()])
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await engine.dispose()

    with serve_built(build) as url:
        yield url, facts


def test_second_user_approves_and_the_run_resumes_live(
    page: Page, agent_console: tuple[str, dict[str, str]], errors: list[str]
) -> None:
    """The requester's own approval is refused on the page; a second user approves with a
    comment; the run page opened before updates to completed by htmx polling (no reload)."""
    base, facts = agent_console
    run_url = f"{base}/admin/runs/{facts['run_id']}"
    _login(page, base, "owner")
    page.goto(f"{base}/admin/runs/")
    page.get_by_role("link", name=facts["run_id"]).click()
    expect(page.locator("#run-status dd.status")).to_have_text("waiting_approval")
    page.locator("#run-status dd.waiting a").click()
    expect(page.locator("main h1")).to_have_text("Approve shop_refund_issue?")
    expect(page.locator("pre.arguments")).to_contain_text('"amount_cents": 3000')
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("p.refusal")).to_contain_text("cannot decide it")
    approval_url = page.url.rsplit("/", 1)[0]

    _login(page, base, "lead")
    page.goto(run_url)
    expect(page.locator("#run-status")).to_have_attribute("hx-trigger", "every 2s")
    _accessible(page)
    other = page.context.new_page()
    other.goto(approval_url)
    expect(other.locator("dd.quorum")).to_contain_text("0 of 1 approvals")
    _accessible(other)
    other.get_by_label("Comment (approve)").fill("parcel confirmed lost")
    other.get_by_role("button", name="Approve").click()
    expect(other.locator("dd.status")).to_have_text("approved")
    expect(other.locator("table.decisions")).to_contain_text("parcel confirmed lost")
    other.close()
    # the first page was not reloaded: the polled fragment shows the resumed, finished run
    expect(page.locator("#run-status dd.status")).to_have_text("completed", timeout=15_000)
    expect(page.locator("#run-status")).not_to_have_attribute("hx-trigger", "every 2s")
    assert _unexpected(errors, 409) == []


# -- workflow board ------------------------------------------------------------------------------


@pytest.fixture
def board_console(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The deal board on a SQLite file with one deal in `lead`."""
    facts: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def build() -> AsyncIterator[Starlette]:
        registry = SpecRegistry(deal_flow)
        board = WorkflowBoard(deal_flow, registry, key="deals", title="Deals")
        engine = sqlite_engine(tmp_path / "deals.db")
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        executor = Executor(registry, backend=sql, policy=RolePermissions({"sales": ["deal.*"]}))
        ctx = CallContext(actor=WORKFLOW_USERS["sam"], org_id="acme")
        inst = await executor.execute("crm.deal.start", {"data": {"title": "ACME <b>"}}, ctx)
        facts["deal"] = inst.id  # type: ignore[attr-defined]
        try:
            yield cookie_app(executor, WORKFLOW_USERS, "acme", [board])
        finally:
            await engine.dispose()

    with serve_built(build) as url:
        yield url, facts


def test_workflow_transition_on_the_board(
    page: Page, board_console: tuple[str, dict[str, str]], errors: list[str]
) -> None:
    """Qualify from the card on the board, then win with an amount (first a bad one, shown
    inline) on the instance page; the history lists both steps."""
    base, facts = board_console
    deal = facts["deal"]
    page.goto(f"{base}/login/sam")
    page.goto(f"{base}/admin/deals/")
    card = page.locator(f'section.column[data-state="lead"] li.card[data-id="{deal}"]')
    expect(card.locator("a.card-title")).to_have_text("ACME <b>")
    _accessible(page)
    card.get_by_role("button", name="Qualify → qualified").click()
    moved = page.locator(f'section.column[data-state="qualified"] li.card[data-id="{deal}"]')
    expect(moved).to_be_visible()
    moved.get_by_role("link", name="Win…").click()
    page.get_by_label("Amount").fill("-3")
    page.locator("form.transition-win").get_by_role("button").click()
    expect(page.locator("form.transition-win .field-error")).to_contain_text("greater than 0")
    _accessible(page)
    page.get_by_label("Amount").fill("1200.50")
    page.locator("form.transition-win").get_by_label("Comment").fill("signed today")
    page.locator("form.transition-win").get_by_role("button").click()
    expect(page.locator("main h1 small.state")).to_have_text("won")
    expect(page.locator("table.history tbody tr")).to_have_count(3)
    assert _unexpected(errors, 422) == []


# -- suggestion diff -----------------------------------------------------------------------------


@pytest.fixture
def suggestion_console(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The suggestion queue on a SQLite file with one breaking suggestion."""
    from evolution_app import POLICY as EVOLUTION_POLICY
    from evolution_app import build_registry as evolution_registry
    from evolution_support import T0

    from contractspec.agent.sql import SqlApprovalStore
    from contractspec.agent.sql import create_all as agent_tables
    from contractspec.evolution import (
        ALL_TENANTS,
        SpecGenerator,
        SpecSuggestionOrchestrator,
    )
    from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity
    from contractspec.evolution.review import register_review_operations as evolution_review
    from contractspec.evolution.sql import SqlSuggestionStore
    from contractspec.evolution.sql import create_all as evolution_tables

    facts: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def build() -> AsyncIterator[Starlette]:
        registry = evolution_registry()
        engine = sqlite_engine(tmp_path / "evolution.db")
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        await agent_tables(engine)
        await evolution_tables(engine)
        workflow = ApprovalWorkflow(SqlApprovalStore(), backend=sql, policy=EVOLUTION_POLICY)
        orch = SpecSuggestionOrchestrator(
            SqlSuggestionStore(), workflow, output_dir=tmp_path / "out", registry=registry
        )
        intent = Intent(
            id="i-1", kind=IntentKind.LATENCY_REGRESSION, operation="shop.deal.move",
            org_id=ALL_TENANTS, window_start=T0, window_end=T0 + timedelta(minutes=15),
            detected_at=T0, confidence=0.8, severity=IntentSeverity.CRITICAL,
            summary="slow", evidence={"baseline_p95_ms": 10.0, "p95_ms": 50.0},
        )  # fmt: skip
        (s,) = SpecGenerator(registry).suggest([intent])
        breaking = {
            "rule": "request-property-became-required", "severity": "breaking",
            "kind": "operation", "spec": "shop.deal.move@1", "path": "/input/properties/stage",
            "message": "stage became required",
        }  # fmt: skip
        s = attrs.evolve(s, diff=(*s.diff, breaking), breaking=True)
        (created,) = (await orch.submit([s])).created
        facts["id"] = created.id
        review = SpecRegistry()
        evolution_review(review, orchestrator=orch, org_id="ops")
        policy = RolePermissions({"reviewer": ["evolution.review.*", "approval.decide"]})
        executor = Executor(review, backend=sql, policy=policy)
        users = {"rita": Actor.user("u-reviewer", roles="reviewer")}
        try:
            yield cookie_app(executor, users, "ops", [Suggestions()])
        finally:
            await engine.dispose()

    with serve_built(build) as url:
        yield url, facts


def test_suggestion_diff_rendered_and_approved(
    page: Page, suggestion_console: tuple[str, dict[str, str]], errors: list[str]
) -> None:
    """The suggestion's page shows the breaking banner, the diff rows and the added patch
    rows; approving it through the page makes it approved."""
    base, facts = suggestion_console
    page.goto(f"{base}/login/rita")
    page.goto(f"{base}/admin/suggestions/")
    page.locator(f'tr[data-id="{facts["id"]}"] a').click()
    expect(page.locator("p.breaking")).to_contain_text("1 change(s)")
    expect(page.locator("table.diff tbody tr")).to_have_count(2)
    expect(page.locator("table.diff tr.severity-breaking")).to_contain_text("stage became required")
    expect(page.locator("table.patch tbody tr.patch-added")).to_have_count(2)
    _accessible(page)
    page.get_by_label("Comment (approve)").fill("ship it")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("dd.status")).to_have_text("approved")
    assert _unexpected(errors) == []
