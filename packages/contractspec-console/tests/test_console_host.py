"""The console host seam: mounting, sections, navigation, security headers (memory backend)."""

from __future__ import annotations

from pathlib import Path

from console_support import assert_safe_html, make_console
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.testclient import TestClient

from contractspec.console import CONTENT_SECURITY_POLICY, ConsoleHost, ConsoleSection


class _Notes:
    """A tiny section: one page, one form, visible to whoever may delete products."""

    key = "notes"
    title = "Notes"
    template_dir: Path | None = None

    def routes(self, console: ConsoleHost) -> list[BaseRoute]:
        async def page(request: Request) -> Response:
            await console.call_context(request)
            return console.render(request, "console/index.html", {})

        async def post(request: Request) -> Response:
            form = await console.form(request)
            return HTMLResponse(f"ok {form.get('x')}")

        return [Route("/", page), Route("/post", post, methods=["POST"])]

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        return await console.may(request, "shop.product.delete")


def _client() -> TestClient:
    section: ConsoleSection = _Notes()
    console = make_console(sections=[section])
    app = Starlette(routes=[Mount("/admin", app=console)])
    return TestClient(app)


def test_index_under_mount_lists_what_the_actor_may_use() -> None:
    """Mounted under /admin: links carry the prefix; nav lists entities/ops/sections per policy."""
    client = _client()
    page = client.get("/admin/", headers={"X-Test-User": "alice"})
    assert page.status_code == 200
    soup = assert_safe_html(page.text)
    links = {a["href"] for a in soup.select("nav.side a")}
    assert {
        "/admin/entities/shop.product/",
        "/admin/ops/shop.product.create",
        "/admin/notes/",
    } <= links
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert soup.find("link", rel="stylesheet")["href"] == "/admin/static/console.css"
    viewer = client.get("/admin/", headers={"X-Test-User": "eve"})
    vlinks = {a["href"] for a in assert_safe_html(viewer.text).select("nav.side a")}
    assert "/admin/notes/" not in vlinks
    assert "/admin/ops/shop.product.create" not in vlinks
    assert "/admin/ops/shop.product.count" in vlinks


def test_anonymous_is_401_and_static_is_served() -> None:
    """Nobody authenticated: 401 page; static files come from the console with the CSP."""
    client = _client()
    assert client.get("/admin/").status_code == 401
    js = client.get("/admin/static/htmx.min.js")
    assert js.status_code == 200
    assert js.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


def test_section_form_needs_the_callers_csrf_token() -> None:
    """A section's POST goes through console.form: no token or another user's token is a 403."""
    client = _client()
    page = client.get("/admin/notes/", headers={"X-Test-User": "alice"})
    token = assert_safe_html(page.text)  # the page renders for alice
    assert token is not None
    from console_support import ORG, SECRET, USERS

    from contractspec.console._csrf import CsrfSigner
    from contractspec.core import CallContext

    signer = CsrfSigner(SECRET, max_age_s=60)
    mine = signer.issue(CallContext(actor=USERS["alice"], org_id=ORG))
    theirs = signer.issue(CallContext(actor=USERS["bob"], org_id=ORG))
    headers = {"X-Test-User": "alice"}
    assert client.post("/admin/notes/post", data={"x": "1"}, headers=headers).status_code == 403
    assert (
        client.post(
            "/admin/notes/post", data={"x": "1", "_csrf": theirs}, headers=headers
        ).status_code
        == 403
    )
    ok = client.post("/admin/notes/post", data={"x": "1", "_csrf": mine}, headers=headers)
    assert ok.status_code == 200
    assert ok.text == "ok 1"
