"""AgentControl, the web console of the agent example, on a SQLite file: agents and tools from the
spec, a run started from the web, its approval decided by a second user, the run resumed, and
what an operator may not do."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from agent_console import ops
from agent_console.console import AgentConsole, open_console
from agent_console.web import COOKIE, Users, create_control_app
from bs4 import BeautifulSoup

from contractspec.agent import RunStatus
from contractspec.agent.testing import block_model_requests
from contractspec.core import ConfigurationError

block_model_requests()

SECRET = "agentcontrol-test-secret-0123456789abcdef"
USERS = Users.parse("t-ana=ana:ops,t-sam=sam:sre")


@pytest.fixture(autouse=True)
def services() -> Iterator[None]:
    """Each test starts from the same service state."""
    saved = copy.deepcopy(ops.SERVICES)
    yield
    ops.SERVICES.clear()
    ops.SERVICES.update(saved)


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[AgentConsole]:
    """The agent console over a fresh SQLite file."""
    async with open_console(tmp_path / "control.db") as opened:
        yield opened


@pytest.fixture
async def client(control: AgentConsole) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of AgentControl's app."""
    app = create_control_app(control, users=USERS, secret_key=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://control.test") as c:
        yield c


def _soup(html: str) -> Any:
    return BeautifulSoup(html, "html.parser")


def _as(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def _fields(form: Any, **values: str) -> dict[str, str]:
    return {i["name"]: i["value"] for i in form.select("input[type=hidden]")} | values


async def _start(client: httpx.AsyncClient, agent: str, text: str) -> httpx.Response:
    page = _soup((await client.get("/admin/agents/", headers=_as("t-ana"))).text)
    form = page.select_one(f"form[id='run-{agent}']")
    return await client.post(form["action"], data=_fields(form, text=text), headers=_as("t-ana"))


async def test_agents_and_tools_come_from_the_spec(client: httpx.AsyncClient) -> None:
    """Every agent of the spec with its tools, risk levels and invariants, and a run form."""
    page = await client.get("/admin/agents/", headers=_as("t-ana"))
    assert page.status_code == 200, page.text
    soup = _soup(page.text)
    assert [h.get_text() for h in soup.select("section.agent h2")] == [
        "ops.assistant@1",
        "ops.reporter@1",
    ]
    rows = {
        tr["data-tool"]: [td.get_text() for td in tr.select("td")]
        for tr in soup.select("section.agent")[0].select("tbody tr")
    }
    assert rows["restart_service"][2] == "L1"
    assert "not_the_database" in rows["restart_service"][4]
    assert len(soup.select("form.run")) == 2
    assert (await client.get("/admin/agents/")).status_code == 401


async def test_run_waits_for_a_second_users_approval_then_resumes(
    client: httpx.AsyncClient, control: AgentConsole
) -> None:
    """ana asks to scale api to 6 (L2): the run waits; ana is not offered approve; sam (SRE)
    approves from the queue; "Resume decided runs" finishes the run once, with its logs."""
    started = await _start(client, "ops.assistant", "scale api to 6")
    assert started.status_code == 303, started.text
    run_url = started.headers["location"]
    run_id = run_url.rsplit("/", 1)[-1]
    assert (await control.status(run_id)).status is RunStatus.WAITING_APPROVAL
    queue = _soup((await client.get("/admin/approvals/", headers=_as("t-sam"))).text)
    link = queue.select_one("tbody tr td a")["href"]
    own = _soup((await client.get(link, headers=_as("t-ana"))).text)
    assert own.select("form.action-approve") == []  # an operator does not decide
    page = _soup((await client.get(link, headers=_as("t-sam"))).text)
    form = page.select_one("form.action-approve")
    approved = await client.post(
        form["action"], data=_fields(form, comment="ok, within budget"), headers=_as("t-sam")
    )
    assert approved.status_code in (200, 303), approved.text
    catalog = _soup((await client.get("/admin/agents/", headers=_as("t-ana"))).text)
    resume = catalog.select_one("form.resume")
    done = await client.post(resume["action"], data=_fields(resume), headers=_as("t-ana"))
    assert done.status_code == 200, done.text
    resumed = [li.get_text() for li in _soup(done.text).select("#h-resumed + ul li")]
    assert len(resumed) == 1
    assert resumed[0].startswith(f"{run_id}: completed")
    assert ops.SERVICES["api"]["replicas"] == 6
    again = await client.post(resume["action"], data=_fields(resume), headers=_as("t-ana"))
    assert "No run was ready to resume." in again.text
    run_page = await client.get(run_url, headers=_as("t-ana"))
    assert run_page.status_code == 200
    assert "run.completed" in run_page.text


async def test_forged_or_bad_run_requests_are_refused(client: httpx.AsyncClient) -> None:
    """No CSRF token: 403 and no run; an unknown agent or empty text: 422 naming the problem."""
    before = len(await _history(client))
    forged = await client.post(
        "/admin/agents/run", data={"agent": "ops.reporter", "text": "status of api"},
        headers=_as("t-ana"),
    )  # fmt: skip
    assert forged.status_code == 403
    page = _soup((await client.get("/admin/agents/", headers=_as("t-ana"))).text)
    form = page.select_one("form.run")
    unknown = await client.post(
        form["action"], data=_fields(form, agent="ops.nobody", text="x"), headers=_as("t-ana")
    )
    assert unknown.status_code == 422
    assert _soup(unknown.text).select_one(".error-message").get_text() == "no agent 'ops.nobody'"
    empty = await client.post(form["action"], data=_fields(form, text="  "), headers=_as("t-ana"))
    assert empty.status_code == 422
    assert len(await _history(client)) == before


async def _history(client: httpx.AsyncClient) -> list[Any]:
    page = _soup((await client.get("/admin/runs/", headers=_as("t-ana"))).text)
    return list(page.select("tbody tr[data-id]"))


async def test_failed_run_is_shown_and_stored(
    client: httpx.AsyncClient, control: AgentConsole
) -> None:
    """A run that exceeds its step limit shows why on the page and is stored as failed."""
    failed = await _start(client, "ops.assistant", "loop forever")
    assert failed.status_code == 200
    message = _soup(failed.text).select_one(".error-message").get_text()
    assert message.startswith("the run failed: UsageLimitExceeded")
    assert [r.status for r in await control.history()] == [RunStatus.FAILED]


async def test_login_cookie_signs_in(client: httpx.AsyncClient) -> None:
    """`/login?token=` sets the HTTP-only cookie the console accepts; unknown tokens: 401."""
    assert (await client.get("/login", params={"token": "nope"})).status_code == 401
    assert (await client.get("/login", params={"token": "t-ana"})).status_code == 303
    assert client.cookies.get(COOKIE) == "t-ana"
    assert (await client.get("/admin/agents/")).status_code == 200


def test_bad_user_entries_are_refused() -> None:
    """An entry without `token=user:roles` is a ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="token=user:role") as info:
        Users.parse("t-ana=ana")
    assert info.value.details["field"] == "users"
