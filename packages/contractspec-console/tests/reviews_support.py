"""Helpers of the review-section tests: an in-loop HTTP client, CSRF tokens, users by header."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from bs4 import BeautifulSoup
from console_support import SECRET, assert_safe_html
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from contractspec.console import Console, ConsoleSection
from contractspec.console._csrf import CsrfSigner
from contractspec.core import Actor, CallContext, Executor
from contractspec.core.http import Principal

__all__ = ["ReviewClient", "csrf_of", "review_console"]


def review_console(
    executor: Executor,
    users: Mapping[str, Actor],
    org_id: str,
    sections: Sequence[ConsoleSection],
) -> Starlette:
    """A host app mounting a `Console` over `executor` at `/admin` (user from `X-Test-User`)."""

    def authenticate(request: Request) -> Principal | None:
        actor = users.get(request.headers.get("x-test-user", ""))
        return Principal(actor, org_id=org_id) if actor is not None else None

    console = Console(executor, authenticate=authenticate, secret_key=SECRET, sections=sections)
    return Starlette(routes=[Mount("/admin", app=console)])


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    field = BeautifulSoup(html, "html.parser").find("input", attrs={"name": "_csrf"})
    assert field is not None, "the page has no form with a CSRF token"
    return str(field["value"])


class ReviewClient:
    """An httpx client over the app in the test's own event loop (the stores live in it)."""

    def __init__(
        self, app: Starlette, users: Mapping[str, Actor] | None = None, org_id: str | None = None
    ) -> None:
        self.users = dict(users or {})
        self.org_id = org_id
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://console.test"
        )

    async def get(self, user: str, path: str, **kwargs: Any) -> httpx.Response:
        """GET `path` as `user`."""
        return await self.http.get(path, headers={"X-Test-User": user}, **kwargs)

    async def page(self, user: str, path: str) -> BeautifulSoup:
        """GET `path` as `user`: a 200 page, checked safe (no inline script/style/handlers)."""
        response = await self.get(user, path)
        assert response.status_code == 200, response.text
        return assert_safe_html(response.text)

    async def post(
        self, user: str, path: str, data: Mapping[str, Any], *, token_from: str | None = None
    ) -> httpx.Response:
        """POST a form as `user` with the CSRF token of the page `token_from` (default: the
        item's page, the path without its last segment)."""
        page = await self.get(user, token_from or path.rsplit("/", 1)[0])
        assert page.status_code == 200, page.text
        body = {"_csrf": csrf_of(page.text), **data}
        return await self.http.post(path, data=body, headers={"X-Test-User": user})

    async def force(self, user: str, path: str, data: Mapping[str, Any]) -> httpx.Response:
        """POST as `user` with a valid CSRF token of theirs although no page offered the form."""
        call = CallContext(actor=self.users[user], org_id=self.org_id)
        token = CsrfSigner(SECRET, max_age_s=3600).issue(call)
        return await self.http.post(
            path, data={"_csrf": token, **data}, headers={"X-Test-User": user}
        )

    async def aclose(self) -> None:
        """Close the client."""
        await self.http.aclose()
