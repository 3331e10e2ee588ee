"""Entity views and operation forms on memory, a SQLite file and PostgreSQL (httpx against the
ASGI app, mounted under /admin like a host app would)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from bs4 import BeautifulSoup
from console_support import ORG, assert_safe_html, make_console
from starlette.applications import Starlette
from starlette.routing import Mount

from contractspec.console import Console
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    MemoryAuditLog,
    SpecRegistry,
)
from contractspec.core.records import AuditRecord

BASE = "http://console.test"


@pytest.fixture
async def console(backend: Backend, registry: SpecRegistry) -> Console:
    """The shop console over the parametrised backend (3 rows per page)."""
    return make_console(backend, registry=registry, page_size=3)


@pytest.fixture
async def client(console: Console) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client of a host app that mounts the console under /admin."""
    app = Starlette(routes=[Mount("/admin", app=console)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c


def _as(user: str) -> dict[str, str]:
    return {"X-Test-User": user}


async def _form(client: httpx.AsyncClient, url: str, user: str) -> dict[str, str]:
    """The hidden fields (CSRF token, idempotency key) of the form at `url`."""
    page = await client.get(url, headers=_as(user))
    assert page.status_code == 200, page.text
    soup = assert_safe_html(page.text)
    return {i["name"]: i["value"] for i in soup.select("#op-form input[type=hidden]")}


async def _create(client: httpx.AsyncClient, user: str = "alice", **values: str) -> httpx.Response:
    hidden = await _form(client, "/admin/ops/shop.product.create", user)
    data = {"price": "1.00", "status": "active", **values}
    return await client.post(
        "/admin/ops/shop.product.create", data={**hidden, **data}, headers=_as(user)
    )


async def _audit(console: Console) -> list[AuditRecord]:
    audit: Any = console.executor.audit
    if isinstance(audit, MemoryAuditLog):
        return list(audit.records)
    return [e.record for e in await audit.entries(ORG)]


async def _count(console: Console, org: str = ORG) -> int:
    out: Any = await console.executor.execute(
        "shop.product.count", {}, CallContext(actor=Actor.user("alice", roles="admin"), org_id=org)
    )
    return int(out.total)


async def test_create_redirects_to_the_record_and_is_audited(
    client: httpx.AsyncClient, console: Console
) -> None:
    """A valid submit runs through the executor (audit as alice in acme) and redirects (303)."""
    answer = await _create(
        client, id="p1", name="Lamp", price="12.50", tags="a\nb", released="2026-01-31"
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/entities/shop.product/p1?done=shop.product.create"
    page = await client.get(answer.headers["location"], headers=_as("alice"))
    soup = assert_safe_html(page.text)
    record = dict(
        zip(
            [dt.get_text() for dt in soup.select("dl.record > dt")],
            soup.select("dl.record > dd"),
            strict=True,
        )
    )
    assert record["name"].get_text(strip=True) == "Lamp"
    assert record["price"].get_text(strip=True) == "12.50"
    assert [li.get_text() for li in record["tags"].select("li")] == ["a", "b"]
    assert record["released"].get_text(strip=True) == "2026-01-31"
    assert soup.select_one(".notice-ok").get_text() == "Product create: done."
    ok = [r for r in await _audit(console) if r.action == "shop.product.create"]
    assert [(r.outcome, r.actor_id, r.org_id) for r in ok] == [("success", "alice", ORG)]


async def test_double_submit_of_one_rendered_form_runs_once(
    client: httpx.AsyncClient, console: Console
) -> None:
    """The form's idempotency key makes a second POST replay the first (no 409, one row)."""
    hidden = await _form(client, "/admin/ops/shop.product.create", "alice")
    data = {**hidden, "id": "p1", "name": "Lamp", "price": "3", "status": "draft"}
    first = await client.post("/admin/ops/shop.product.create", data=data, headers=_as("alice"))
    second = await client.post("/admin/ops/shop.product.create", data=data, headers=_as("alice"))
    assert (first.status_code, second.status_code) == (303, 303)
    assert await _count(console) == 1
    calls = [r.outcome for r in await _audit(console) if r.action == "shop.product.create"]
    assert calls.count("success") == 1, calls  # the second was a replay, not a second run
    other = await _create(client, id="p1", name="Again")  # a new form: a new key -> conflict
    assert other.status_code == 409
    soup = assert_safe_html(other.text)
    assert "conflict" in soup.select_one(".error-box").get_text()
    assert soup.select_one("#f-name")["value"] == "Again"


async def test_validation_errors_are_shown_next_to_their_fields_with_values_kept(
    client: httpx.AsyncClient, console: Console
) -> None:
    """422: each SpecValidationError field path lands under its input; nothing is stored."""
    answer = await _create(client, id="p1", name="", price="1.234", released="not a date")
    assert answer.status_code == 422
    soup = assert_safe_html(answer.text)
    assert soup.select_one("#f-name-error").get_text() == "Field required"
    assert "2 decimal places" in soup.select_one("#f-price-error").get_text()
    assert "date" in soup.select_one("#f-released-error").get_text()
    assert soup.select_one("#f-price")["aria-invalid"] == "true"
    assert "f-price-error" in soup.select_one("#f-price")["aria-describedby"]
    assert soup.select_one("#f-price")["value"] == "1.234"
    assert soup.select_one("#f-released")["value"] == "not a date"
    assert soup.select_one("#f-id")["value"] == "p1"
    assert soup.select_one("#f-id-error") is None
    handler = await _create(client, id="p2", name="forbidden")  # raised by the handler
    assert handler.status_code == 422
    assert assert_safe_html(handler.text).select_one("#f-name-error").get_text() == (
        "this name is reserved"
    )
    assert await _count(console) == 0


async def test_csrf_token_missing_forged_or_another_users_is_refused(
    client: httpx.AsyncClient, console: Console
) -> None:
    """403 without running anything, whether the token is absent, forged or bob's."""
    bobs = await _form(client, "/admin/ops/shop.product.create", "bob")
    alices = await _form(client, "/admin/ops/shop.product.create", "alice")
    data = {"id": "p1", "name": "Lamp", "price": "1", "status": "draft"}
    url = "/admin/ops/shop.product.create"
    for token in (None, "forged", alices["_csrf"][:-2] + "xx", bobs["_csrf"]):
        form = {**data} if token is None else {**data, "_csrf": token}
        answer = await client.post(url, data=form, headers=_as("alice"))
        assert answer.status_code == 403, token
    assert await _count(console) == 0
    assert (
        await client.post(url, data={**data, **alices}, headers=_as("alice"))
    ).status_code == 303


async def test_denied_operation_is_hidden_and_a_forced_post_is_refused_and_audited(
    client: httpx.AsyncClient, console: Console
) -> None:
    """eve (viewer) gets no create link or form; her forced POST is a 403 the executor audits."""
    home = assert_safe_html((await client.get("/admin/", headers=_as("eve"))).text)
    assert "/admin/ops/shop.product.create" not in {a["href"] for a in home.select("a")}
    assert (
        await client.get("/admin/ops/shop.product.create", headers=_as("eve"))
    ).status_code == 403
    token = home.select_one('meta[name="csrf-token"]')["content"]
    forced = await client.post(
        "/admin/ops/shop.product.create",
        data={"_csrf": token, "id": "p1", "name": "x", "price": "1", "status": "draft"},
        headers=_as("eve"),
    )
    assert forced.status_code == 403
    assert "policy_denied" in assert_safe_html(forced.text).select_one(".error-box").get_text()
    denied = [r for r in await _audit(console) if r.outcome == "denied"]
    assert [(r.action, r.actor_id, r.org_id) for r in denied] == [
        ("shop.product.create", "eve", ORG)
    ]
    assert await _count(console) == 0


async def test_list_filters_sorts_and_pages_through_the_repository(
    client: httpx.AsyncClient, console: Console
) -> None:
    """3 rows a page, sorted by price descending, filtered by name substring and status."""
    for i, (name, price, status) in enumerate(
        [
            ("Red lamp", "5", "active"),
            ("Blue lamp", "7", "active"),
            ("Chair", "9", "active"),
            ("Green lamp", "3", "draft"),
            ("Lamp XL", "11", "active"),
        ]
    ):
        assert (
            await _create(client, id=f"p{i}", name=name, price=price, status=status)
        ).status_code == 303

    def names(html: str) -> list[str]:
        soup = assert_safe_html(html)
        return [tr.select("td")[1].get_text() for tr in soup.select("tbody tr")]

    url = "/admin/entities/shop.product/?name=LAMP&status=active&_sort=-price"
    first = await client.get(url, headers=_as("eve"))
    assert first.status_code == 200
    assert names(first.text) == ["Lamp XL", "Blue lamp", "Red lamp"]
    soup = BeautifulSoup(first.text, "html.parser")
    assert soup.select_one("#rows .summary").get_text() == "rows 1-3 of 3"
    assert soup.select_one("a[rel=next]") is None
    everything = await client.get("/admin/entities/shop.product/?_sort=price", headers=_as("eve"))
    assert names(everything.text) == ["Green lamp", "Red lamp", "Blue lamp"]
    nxt = BeautifulSoup(everything.text, "html.parser").select_one("a[rel=next]")["href"]
    assert nxt == "/admin/entities/shop.product/?_sort=price&_page=2"
    second = await client.get(nxt, headers=_as("eve"))
    assert names(second.text) == ["Chair", "Lamp XL"]
    assert BeautifulSoup(second.text, "html.parser").select_one("a[rel=prev]")["href"] == (
        "/admin/entities/shop.product/?_sort=price"
    )
    ranged = await client.get(
        "/admin/entities/shop.product/?price__ge=7&_sort=id", headers=_as("eve")
    )
    assert names(ranged.text) == ["Blue lamp", "Chair", "Lamp XL"]
    bad = await client.get("/admin/entities/shop.product/?colour=red", headers=_as("eve"))
    assert bad.status_code == 400
    assert "colour" in assert_safe_html(bad.text).select_one(".notice-error").get_text()
    bad_sort = await client.get("/admin/entities/shop.product/?_sort=nope", headers=_as("eve"))
    assert bad_sort.status_code == 400


async def test_records_of_another_tenant_are_invisible(
    client: httpx.AsyncClient, console: Console
) -> None:
    """A product created in org 'other' is neither listed nor shown (404) to acme's users."""
    await console.executor.execute(
        "shop.product.create",
        {"id": "x1", "name": "Theirs", "price": "1"},
        CallContext(actor=Actor.user("zed", roles="admin"), org_id="other"),
    )
    page = await client.get("/admin/entities/shop.product/", headers=_as("alice"))
    assert "Theirs" not in page.text
    assert (
        await client.get("/admin/entities/shop.product/x1", headers=_as("alice"))
    ).status_code == 404


async def test_reading_needs_the_read_permission(client: httpx.AsyncClient) -> None:
    """mallory (no role) sees no entity and gets 403 on its pages; anonymous gets 401."""
    from console_support import USERS

    USERS["mallory"] = Actor.user("mallory")
    try:
        home = assert_safe_html((await client.get("/admin/", headers=_as("mallory"))).text)
        assert home.select("nav.side a") == []
        listed = await client.get("/admin/entities/shop.product/", headers=_as("mallory"))
        assert listed.status_code == 403
    finally:
        del USERS["mallory"]
    assert (await client.get("/admin/entities/shop.product/")).status_code == 401


async def test_edit_form_is_prefilled_from_the_record_and_updates_it(
    client: httpx.AsyncClient, console: Console
) -> None:
    """The record page links its update form, which shows the stored values; submit saves."""
    await _create(client, id="p1", name="Lamp", price="4.50", notes="old")
    detail = assert_safe_html(
        (await client.get("/admin/entities/shop.product/p1", headers=_as("bob"))).text
    )
    links = {a.get_text(): a["href"] for a in detail.select("main .actions a")}
    assert links == {"Product update": "/admin/ops/shop.product.update?id=p1"}  # no delete for bob
    form = assert_safe_html((await client.get(links["Product update"], headers=_as("bob"))).text)
    assert form.select_one("#f-name")["value"] == "Lamp"
    assert form.select_one("#f-price")["value"] == "4.50"
    assert form.select_one("#f-status option[selected]")["value"] == "active"
    assert form.select_one("#f-notes")["value"] == "old"
    assert form.select_one("#f-price")["step"] == "0.01"
    hidden = {i["name"]: i["value"] for i in form.select("#op-form input[type=hidden]")}
    answer = await client.post(
        "/admin/ops/shop.product.update",
        data={
            **hidden,
            "id": "p1",
            "name": "Lamp 2",
            "price": "5",
            "status": "retired",
            "notes": "new",
        },
        headers=_as("bob"),
    )
    assert answer.status_code == 303
    page = assert_safe_html((await client.get(answer.headers["location"], headers=_as("bob"))).text)
    assert "Lamp 2" in page.select_one("dl.record").get_text()
    assert (
        await client.get("/admin/entities/shop.product/nope", headers=_as("bob"))
    ).status_code == 404


async def test_query_form_runs_through_the_executor_and_shows_the_result(
    client: httpx.AsyncClient,
) -> None:
    """A query's form submits with GET and renders the output; a bad enum is a 422 inline."""
    await _create(client, id="p1", name="Lamp")
    ran = await client.get("/admin/ops/shop.product.count?_run=1&status=active", headers=_as("eve"))
    assert ran.status_code == 200
    result = assert_safe_html(ran.text).select_one(".result dl.record")
    assert [d.get_text(strip=True) for d in result.select("dd")] == ["1"]
    bad = await client.get("/admin/ops/shop.product.count?_run=1&status=gone", headers=_as("eve"))
    assert bad.status_code == 422
    assert assert_safe_html(bad.text).select_one("#f-status-error") is not None


async def test_non_idempotent_command_result_page_and_htmx_redirect(
    client: httpx.AsyncClient, console: Console
) -> None:
    """An output that is no entity record is shown on the form page; htmx gets HX-Redirect."""
    hidden = await _form(client, "/admin/ops/shop.product.create", "alice")
    hx = await client.post(
        "/admin/ops/shop.product.create",
        data={**hidden, "id": "p1", "name": "Lamp", "price": "1", "status": "draft"},
        headers={**_as("alice"), "HX-Request": "true"},
    )
    assert hx.status_code == 200
    assert hx.headers["hx-redirect"] == "/admin/entities/shop.product/p1?done=shop.product.create"
    hidden = await _form(client, "/admin/ops/shop.product.delete?id=p1", "alice")
    assert "_idempotency_key" not in hidden  # not declared idempotent: no key
    deleted = await client.post(
        "/admin/ops/shop.product.delete", data={**hidden, "id": "p1"}, headers=_as("alice")
    )
    assert deleted.status_code == 200
    result = assert_safe_html(deleted.text).select_one(".result dl.record")
    assert [d.get_text(strip=True) for d in result.select("dd")] == ["p1", "yes"]
    assert await _count(console) == 0
