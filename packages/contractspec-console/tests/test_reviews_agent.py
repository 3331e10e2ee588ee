"""Approvals queue and agent runs sections: real executor and stores (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from agent_support import ORG, OWNER, AgentEnv, agent_env, issue_refund
from console_support import assert_safe_html
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reviews_support import ReviewClient, review_console

from contractspec.agent import (
    AgentPolicy,
    AgentRunner,
    ApprovalStatus,
    RiskLevel,
    RiskRule,
    RunStatus,
    arguments_hash,
    define_agent,
    operation_tool,
)
from contractspec.agent.review import register_review_operations
from contractspec.agent.testing import ScriptedModel, call
from contractspec.console.reviews import AgentRuns, ApprovalsQueue, ShadowReports
from contractspec.core import (
    Actor,
    ConfigurationError,
    Executor,
    RolePermissions,
    SpecRegistry,
)
from contractspec.core.testing.fixtures import backend_kind

__all__ = ["backend_kind"]

REVIEW_POLICY = RolePermissions(
    {"reviewer": ["agent.review.*", "approval.decide"], "viewer": ["agent.review.read"]}
)
USERS = {
    "lead": Actor.user("u-lead", roles=["reviewer", "lead"]),
    "lead2": Actor.user("u-lead-2", roles=["reviewer", "lead"]),
    "viewer": Actor.user("u-viewer", roles="viewer"),
    # the requester, who may review but not decide their own request
    "owner": Actor.user("u-owner", roles=["reviewer", "lead", "support"]),
}
ARGS = {"order_id": "o-1", "amount_cents": 12000}
refund = operation_tool(
    issue_refund, risk_rules=[RiskRule("amount_cents > 2000", RiskLevel.L2, "large_refund")]
)
refunder = define_agent("shop.refunder", model="m", instructions="Refund.", tools=[refund])


class Setup:
    """The agent env, its runner, and an HTTP client on the console with both sections."""

    def __init__(self, env: AgentEnv) -> None:
        self.env = env
        self.runner: AgentRunner = env.runner(ScriptedModel([]))
        registry = SpecRegistry()
        register_review_operations(registry, approvals=env.approvals, runner=self.runner)
        executor = Executor(
            registry, backend=env.backend, policy=REVIEW_POLICY, clock=env.clock, ids=env.ids
        )
        self.client_executor = executor
        app = review_console(executor, USERS, ORG, [ApprovalsQueue(), AgentRuns()])
        self.client = ReviewClient(app, USERS, ORG)

    async def request(self, arguments: dict[str, object] | None = None, **kw: object) -> str:
        req = await self.env.approvals.request(
            action="refund",
            arguments=arguments if arguments is not None else ARGS,
            requested_by=Actor.user("u-owner", roles="support"),
            reason="parcel lost",
            org_id=ORG,
            **kw,  # type: ignore[arg-type]
        )
        return req.id


@pytest.fixture
async def setup(backend_kind: str, tmp_path: Path) -> AsyncIterator[Setup]:
    async with agent_env(backend_kind, tmp_path) as env:
        s = Setup(env)
        yield s
        await s.client.aclose()


async def test_approval_shows_exact_arguments_hash_and_is_approved_with_a_comment(
    setup: Setup,
) -> None:
    """The queue lists the request; its page shows the arguments, their hash and 0 of 1; an
    approval with a comment through the form makes it approved in the store."""
    rid = await setup.request()
    listing = await setup.client.page("lead", "/admin/approvals/")
    row = listing.select_one(f'tr[data-id="{rid}"]')
    assert row is not None
    assert row.select_one("td.quorum").get_text(strip=True) == "0 of 1"
    page = await setup.client.page("lead", f"/admin/approvals/{rid}")
    assert page.select_one("code.hash").get_text() == arguments_hash(ARGS)
    assert page.select_one("pre.arguments").get_text() == (
        '{\n  "amount_cents": 12000,\n  "order_id": "o-1"\n}'
    )
    assert page.select_one("progress")["max"] == "1"
    assert [f["action"] for f in page.select("form.action")] == [
        f"/admin/approvals/{rid}/approve",
        f"/admin/approvals/{rid}/reject",
    ]
    done = await setup.client.post(
        "lead", f"/admin/approvals/{rid}/approve", {"comment": "checked the parcel"}
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/admin/approvals/{rid}"
    stored = await setup.env.approvals.get(rid)
    assert stored.status is ApprovalStatus.APPROVED
    assert [(d.approver_id, d.comment) for d in stored.decisions] == [
        ("u-lead", "checked the parcel")
    ]
    after = await setup.client.page("lead", f"/admin/approvals/{rid}")
    assert after.select_one("dd.status").get_text() == "approved"
    assert "checked the parcel" in after.select_one("table.decisions").get_text()
    assert after.select("form.action") == []  # a decided request offers nothing


async def test_quorum_progress_and_second_approver(setup: Setup) -> None:
    """A quorum of 2: one approval shows 1 of 2 (still pending); the second approves it."""
    rid = await setup.request(quorum=2)
    await setup.client.post("lead", f"/admin/approvals/{rid}/approve", {})
    page = await setup.client.page("lead2", f"/admin/approvals/{rid}")
    assert "1 of 2 approvals" in page.select_one("dd.quorum").get_text()
    assert page.select_one("progress")["value"] == "1"
    assert page.select_one("dd.status").get_text() == "pending"
    again = await setup.client.post("lead", f"/admin/approvals/{rid}/approve", {})
    assert again.status_code == 409  # one decision per approver: refused, shown on the page
    assert "already" in again.text
    done = await setup.client.post("lead2", f"/admin/approvals/{rid}/approve", {})
    assert done.status_code == 303
    assert (await setup.env.approvals.get(rid)).status is ApprovalStatus.APPROVED


async def test_self_approval_refusal_is_shown_and_nothing_changes(setup: Setup) -> None:
    """The requester (allowed by the app's policy) is refused by the workflow's rules: the
    page shows the refusal with a 409 and the request stays pending."""
    rid = await setup.request()
    refused = await setup.client.post("owner", f"/admin/approvals/{rid}/approve", {})
    assert refused.status_code == 409
    alert = assert_safe_html(refused.text).select_one("p.refusal")
    assert alert is not None
    assert "cannot decide it" in alert.get_text()
    assert (await setup.env.approvals.get(rid)).status is ApprovalStatus.PENDING


async def test_denied_actions_are_not_offered_and_forced_posts_are_403(setup: Setup) -> None:
    """A viewer sees the queue and the request but no decision form; forcing one is a 403
    (the executor's denial) and the request stays pending. Anonymous callers get 401."""
    rid = await setup.request()
    page = await setup.client.page("viewer", f"/admin/approvals/{rid}")
    assert page.select("form.action") == []
    forced = await setup.client.force("viewer", f"/admin/approvals/{rid}/approve", {})
    assert forced.status_code == 403
    assert (await setup.env.approvals.get(rid)).status is ApprovalStatus.PENDING
    no_token = await setup.client.http.post(
        f"/admin/approvals/{rid}/approve", data={}, headers={"X-Test-User": "lead"}
    )
    assert no_token.status_code == 403  # CSRF
    assert (await setup.client.get("nobody", "/admin/approvals/")).status_code == 401
    missing = await setup.client.get("lead", "/admin/approvals/no-such-id")
    assert missing.status_code == 404


async def test_run_page_polls_its_status_and_shows_the_resumed_run(setup: Setup) -> None:
    """A run waiting for approval: the page polls its status fragment every 2 s, links the
    approval; approved through the queue and resumed by the runner, it shows completed and
    stops polling, with its tool call and ledger entry."""
    setup.runner.model = ScriptedModel(
        [call("shop_refund_issue", order_id="o-9", amount_cents=3000), "Refunded."]
    )
    result = await setup.runner.run(refunder, "refund 30", OWNER)
    assert result.status is RunStatus.WAITING_APPROVAL
    run_id = result.run_id
    listing = await setup.client.page("viewer", "/admin/runs/")
    assert listing.select_one(f'tr[data-id="{run_id}"] td.status').get_text() == "waiting_approval"
    page = await setup.client.page("viewer", f"/admin/runs/{run_id}")
    status = page.select_one("#run-status")
    assert status["hx-get"] == f"/admin/runs/{run_id}/status"
    assert status["hx-trigger"] == "every 2s"
    (approval_link,) = status.select("dd.waiting a")
    (waiting,) = page.select("table.waiting-approvals tbody tr")
    assert [td.get_text() for td in waiting.select("td")][:3] == [
        "shop_refund_issue",
        "L2",  # raised by the large_refund risk rule
        "0 of 1",
    ]
    # each tool call of a step shows the effective risk the gateway applied (a rule raised it)
    (tool_call,) = page.select("table.tool-calls tbody tr")
    assert [td.get_text() for td in tool_call.select("td")][:3] == [
        "shop_refund_issue",
        "L2",
        "needs_approval",
    ]
    assert page.select("form.action") == []  # the viewer may not cancel
    lead_page = await setup.client.page("lead", f"/admin/runs/{run_id}")
    assert [f["action"] for f in lead_page.select("form.action")] == [
        f"/admin/runs/{run_id}/cancel"
    ]
    approved = await setup.client.post("lead", approval_link["href"] + "/approve", {})
    assert approved.status_code == 303
    resumed = await setup.runner.resume(run_id)
    assert resumed.status is RunStatus.COMPLETED
    fragment = await setup.client.get("viewer", f"/admin/runs/{run_id}/status")
    assert fragment.status_code == 200
    soup = assert_safe_html(fragment.text)
    block = soup.select_one("#run-status")
    assert block["data-status"] == "completed"
    assert not block.has_attr("hx-trigger")  # finished: no more polling
    assert soup.find("html") is None  # a fragment, not a page
    done = await setup.client.page("viewer", f"/admin/runs/{run_id}")
    assert next(td.get_text() for td in done.select("table.tool-calls td")) == "shop_refund_issue"
    assert done.select_one("table.ledger") is not None
    assert done.select_one("pre.output").get_text() == '"Refunded."'


async def test_cancel_through_the_form(setup: Setup) -> None:
    """A reviewer cancels a waiting run with a reason; the viewer's forced cancel is a 403."""
    setup.runner.model = ScriptedModel(
        [call("shop_refund_issue", order_id="o-9", amount_cents=3000)]
    )
    run_id = (await setup.runner.run(refunder, "refund 30", OWNER)).run_id
    forced = await setup.client.force("viewer", f"/admin/runs/{run_id}/cancel", {})
    assert forced.status_code == 403
    assert (await setup.runner.get(run_id)).status is RunStatus.WAITING_APPROVAL
    done = await setup.client.post("lead", f"/admin/runs/{run_id}/cancel", {"comment": "dup"})
    assert done.status_code == 303
    assert (await setup.runner.get(run_id)).status is RunStatus.CANCELLED


_hostile = st.text(
    alphabet=st.sampled_from(list("<>&\"'/ ascript=on")) | st.characters(codec="utf-8"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() != "" and "\x00" not in s)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_hostile)
async def test_hostile_values_are_escaped(value: str) -> None:
    """Hostile reasons, arguments and actions render as text: never markup, never a script."""
    async with agent_env("memory", Path("/nonexistent")) as env:
        s = Setup(env)
        req = await env.approvals.request(
            action=value[:100],
            arguments={"note": value, value[:50]: 1},
            requested_by=Actor.user("u-owner", roles="support"),
            reason=value,
            org_id=ORG,
        )
        page = await s.client.page("lead", f"/admin/approvals/{req.id}")
        assert page.select_one("h1").get_text() == f"Approve {value[:100]}?"
        reasons = [dd.get_text() for dd in page.select("dl.record dd")]
        assert value in reasons
        listing = await s.client.page("lead", "/admin/approvals/")
        assert listing.select_one(f'tr[data-id="{req.id}"] a').get_text() == value[:100]
        await s.client.aclose()


def test_missing_agent_package_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without contractspec-agent, constructing the section names the package to install."""
    monkeypatch.setitem(sys.modules, "contractspec.agent.review", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'contractspec-agent'") as info:
        ApprovalsQueue()
    assert info.value.details["field"] == "ApprovalsQueue"
    with pytest.raises(ConfigurationError, match="contractspec-agent"):
        AgentRuns()


def test_reviews_module_imports_no_optional_package() -> None:
    """Importing the review sections loads none of agent, jobs, bus, growth or evolution."""
    code = (
        "import sys, contractspec.console.reviews\n"
        "bad = [m for m in ('contractspec.agent', 'contractspec.jobs', 'contractspec.bus', "
        "'contractspec.growth', 'contractspec.evolution') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_shadow_report_compares_with_what_people_did(setup: Setup) -> None:
    """A shadow run's page lists what the agent would have done; choosing what people did
    (a GET form, nothing stored) gives the agreement rate and the disagreement."""
    shadow = define_agent(
        "shop.shadow", model="m", instructions="i", tools=[refund], policy=AgentPolicy(shadow=True)
    )
    setup.runner.model = ScriptedModel(
        [
            [
                call("shop_refund_issue", order_id="o-1", amount_cents=1000),
                call("shop_refund_issue", order_id="o-2", amount_cents=3000),
            ],
            "logged",
        ]
    )
    run_id = (await setup.runner.run(shadow, "refund all", OWNER)).run_id
    app = review_console(
        setup.client_executor, USERS, ORG, [ShadowReports(subject="arguments.order_id")]
    )
    client = ReviewClient(app, USERS, ORG)
    try:
        listing = await client.page("viewer", "/admin/shadow/")
        assert listing.select_one(f'tr[data-id="{run_id}"] a')["href"] == f"/admin/shadow/{run_id}"
        page = await client.page("viewer", f"/admin/shadow/{run_id}")
        rows = [
            [td.get_text(strip=True) for td in tr.select("td")][:4]
            for tr in page.select("table.decisions tbody tr")
        ]
        assert rows == [
            ["1", "shop_refund_issue", "o-1", "execute"],
            ["1", "shop_refund_issue", "o-2", "needs_approval"],
        ]
        assert page.select_one("dd.rate").get_text() == "nothing compared yet"
        compared = await client.page(
            "viewer", f"/admin/shadow/{run_id}?did.o-1=execute&did.o-2=execute"
        )
        assert compared.select_one("dd.rate").get_text() == "50.0%"
        assert (
            "o-2: agent would needs_approval, people did execute"
            in compared.select_one("ul.disagreements").get_text()
        )
        assert compared.select_one('select[name="did.o-2"] option[selected]')["value"] == "execute"
    finally:
        await client.aclose()


def test_shadow_subject_path_is_checked() -> None:
    """A subject that is neither `action_id` nor `arguments.<field>` is refused when built."""
    with pytest.raises(ConfigurationError, match=r"arguments\.<field>") as info:
        ShadowReports(subject="nonsense")
    assert info.value.details["field"] == "subject"
