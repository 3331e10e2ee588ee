"""The CRM's web app: the API and the console on one executor and authenticator (memory, SQLite
file, PostgreSQL): contacts, deals board by stage, tasks and the audit log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bs4 import BeautifulSoup
from crm_pipeline.spec import policy
from crm_pipeline.spec import registry as crm_registry
from crm_pipeline.web import COOKIE, Tokens, console_registry, create_web_app

from contractspec.core import Backend, ConfigurationError, Executor, MemoryBackend
from contractspec.core.testing import temporary_sql_engine
from contractspec.core.testing.fixtures import backend_kind

__all__ = ["backend_kind"]

SECRET = "crm-console-test-secret-0123456789abcdef"
TOKENS = Tokens.parse("t-sales=ana:sales@acme,t-view=vic:viewer@acme,t-other=oz:sales@globex")


@pytest.fixture
async def executor(backend_kind: str, tmp_path: Path) -> AsyncIterator[Executor]:
    """The CRM (console registry) on the parametrised backend."""
    registry = console_registry()
    if backend_kind == "memory":
        yield Executor(registry, backend=MemoryBackend(), policy=policy())
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        backend: Backend = SqlBackend(engine, registry)
        await backend.create_all()  # type: ignore[attr-defined]
        yield Executor(registry, backend=backend, policy=policy())


@pytest.fixture
async def client(executor: Executor) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of the CRM web app (API at /api, console at /admin)."""
    app = create_web_app(executor, tokens=TOKENS, secret_key=SECRET)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://crm.test") as c:
        yield c


def _soup(html: str) -> Any:
    """The parsed page (typed `Any`: BeautifulSoup's attribute values are unions)."""
    return BeautifulSoup(html, "html.parser")


def _as(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def _submit(
    client: httpx.AsyncClient, op: str, data: dict[str, str], token: str = "t-sales"
) -> httpx.Response:
    """Open the console form of `op`, then post `data` with its hidden fields (CSRF, key)."""
    page = await client.get(f"/admin/ops/{op}", headers=_as(token))
    assert page.status_code == 200, page.text
    soup = _soup(page.text)
    hidden = {i["name"]: i["value"] for i in soup.select("#op-form input[type=hidden]")}
    return await client.post(f"/admin/ops/{op}", data={**hidden, **data}, headers=_as(token))


async def _seed(client: httpx.AsyncClient) -> None:
    """A contact through the console, a deal and a task through the API."""
    made = await _submit(
        client, "crm.contact.create", {"id": "c1", "name": "Ann <b>", "email": "ann@x.io"}
    )
    assert made.status_code == 303, made.text
    deal = {"id": "d1", "contact_id": "c1", "title": "Big & bold", "amount": "1200.50"}
    assert (
        await client.post("/api/crm/deal/create/v1", json=deal, headers=_as("t-sales"))
    ).status_code == 200
    task = {"deal_id": "d1", "title": "Call back"}
    assert (
        await client.post("/api/crm/task/create/v1", json=task, headers=_as("t-sales"))
    ).status_code == 200


def _board(html: str) -> dict[str, list[str]]:
    soup = _soup(html)
    return {
        col["data-stage"]: [li["data-deal"] for li in col.select("li.card")]
        for col in soup.select("section.column")
    }


async def test_console_and_api_share_the_executor_and_authenticator(
    client: httpx.AsyncClient,
) -> None:
    """A contact created in the console is found by the API; deals and tasks made by the API
    are listed in the console; the navigation shows contacts, deals, tasks, board and audit."""
    await _seed(client)
    found = await client.get(
        "/api/crm/contact/search/v1", params={"text": "Ann"}, headers=_as("t-sales")
    )
    assert [c["id"] for c in found.json()["contacts"]] == ["c1"]
    home = _soup((await client.get("/admin/", headers=_as("t-sales"))).text)
    links = {a.get_text(): a["href"] for a in home.select("nav.side a")}
    assert {"Contact", "Deal", "Task", "Deals by stage", "Audit log"} <= links.keys()
    contacts = await client.get("/admin/entities/crm.contact/", headers=_as("t-sales"))
    assert "Ann &lt;b&gt;" in contacts.text
    tasks = _soup((await client.get("/admin/entities/crm.task/", headers=_as("t-sales"))).text)
    assert [r.select("td")[2].get_text() for r in tasks.select("tbody tr")] == ["Call back"]
    for surface in ("/admin/", "/api/crm/contact/search/v1"):
        assert (await client.get(surface, headers=_as("nope"))).status_code == 401


async def test_board_moves_a_deal_through_the_executor(client: httpx.AsyncClient) -> None:
    """The deal is in the lead column; moving it from its card (CSRF form) runs crm.deal.move
    and redirects to the deal; it is then in the qualified column; the move is audited."""
    await _seed(client)
    board = await client.get("/admin/deals-board/", headers=_as("t-sales"))
    assert board.status_code == 200, board.text
    assert _board(board.text)["lead"] == ["d1"]
    card = _soup(board.text).select_one("li.card[data-deal=d1] form.move")
    data = {i["name"]: i["value"] for i in card.select("input[type=hidden]")} | {
        "to_stage": "qualified"
    }
    moved = await client.post(card["action"], data=data, headers=_as("t-sales"))
    assert moved.status_code == 303, moved.text
    assert moved.headers["location"].startswith("/admin/entities/crm.deal/d1")
    after = _board((await client.get("/admin/deals-board/", headers=_as("t-sales"))).text)
    assert (after["lead"], after["qualified"]) == ([], ["d1"])
    audit = await client.get("/admin/audit/", headers=_as("t-sales"))
    assert audit.status_code == 200, audit.text
    assert "crm.deal.move" in audit.text


async def test_viewer_gets_no_moves_and_a_forced_move_is_refused(
    client: httpx.AsyncClient,
) -> None:
    """A viewer sees the board without move forms and no audit log; posting a move anyway
    (with the viewer's own CSRF token) is refused by the policy (403) and the deal stays."""
    await _seed(client)
    board = await client.get("/admin/deals-board/", headers=_as("t-view"))
    assert board.status_code == 200
    soup = _soup(board.text)
    assert soup.select("form.move") == []
    assert "Audit log" not in [a.get_text() for a in soup.select("nav.side a")]
    token = soup.select_one("meta[name=csrf-token]")["content"]
    forced = await client.post(
        "/admin/ops/crm.deal.move",
        data={"_csrf": token, "deal_id": "d1", "to_stage": "won"},
        headers=_as("t-view"),
    )
    assert forced.status_code == 403
    assert _board((await client.get("/admin/deals-board/", headers=_as("t-sales"))).text)[
        "lead"
    ] == ["d1"]
    other = _board((await client.get("/admin/deals-board/", headers=_as("t-other"))).text)
    assert all(cards == [] for cards in other.values())  # another org's deals are not shown


async def test_login_sets_the_session_cookie(client: httpx.AsyncClient) -> None:
    """`/login?token=` of a known token sets an HTTP-only cookie the console accepts; an
    unknown token is refused."""
    assert (await client.get("/login", params={"token": "bad"})).status_code == 401
    done = await client.get("/login", params={"token": "t-sales"})
    assert done.status_code == 303
    assert "httponly" in done.headers["set-cookie"].lower()
    assert client.cookies.get(COOKIE) == "t-sales"
    page = await client.get("/admin/")  # the client sends the cookie it was given
    assert page.status_code == 200
    assert "ana" in page.text


def test_console_registry_leaves_the_crm_spec_alone() -> None:
    """The console's own queries go to a copy: the CRM registry's IR is unchanged."""
    before: dict[str, Any] = crm_registry.to_ir()
    executor = Executor(console_registry(), backend=MemoryBackend(), policy=policy())
    create_web_app(executor, tokens=TOKENS, secret_key=SECRET)
    assert crm_registry.to_ir() == before
    assert any(op.name.startswith("console.") for op in executor.registry.operations())


def test_bad_token_entries_are_refused() -> None:
    """An entry without `token=user:roles@org` is a ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="token=user:role@org") as info:
        Tokens.parse("abc=ana@acme")
    assert info.value.details["field"] == "tokens"
