"""Helpers of the review-section tests: an in-loop HTTP client, CSRF tokens, users by header."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
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

__all__ = ["ReviewClient", "cookie_app", "csrf_of", "review_console", "serve_built"]


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


# -- serving an app built in the server's own event loop (browser tests) -----------------------


@contextmanager
def serve_built(
    build: Callable[[], AbstractAsyncContextManager[Starlette]],
) -> Iterator[str]:
    """Serve the app `build()` yields with uvicorn in a thread; yield its base URL.

    The app, its engine and stores are built inside the server's loop (an async engine is bound
    to the loop that first uses it), and torn down there when the test ends.
    """
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    holder: dict[str, uvicorn.Server] = {}
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            async with build() as app:
                config = uvicorn.Config(
                    app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
                )
                holder["server"] = uvicorn.Server(config)
                ready.set()
                await holder["server"].serve()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="reviews-uvicorn", daemon=True)
    thread.start()
    ready.wait(60)
    deadline = time.monotonic() + 30
    while (
        not failure
        and not (holder.get("server") and holder["server"].started)
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    if failure:
        raise RuntimeError("the review console did not start") from failure[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        holder["server"].should_exit = True
        thread.join(30)


def cookie_app(
    executor: Executor,
    users: Mapping[str, Actor],
    org_id: str,
    sections: Sequence[ConsoleSection],
) -> Starlette:
    """`/login/<user>` sets the `user` cookie; the console at `/admin` reads it."""
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    def authenticate(request: Request) -> Principal | None:
        actor = users.get(request.cookies.get("user", ""))
        return Principal(actor, org_id=org_id) if actor is not None else None

    async def login(request: Request) -> RedirectResponse:
        response = RedirectResponse("/admin/", status_code=303)
        response.set_cookie("user", request.path_params["user"], httponly=True, samesite="strict")
        return response

    console = Console(executor, authenticate=authenticate, secret_key=SECRET, sections=sections)
    return Starlette(routes=[Route("/login/{user}", login), Mount("/admin", app=console)])
