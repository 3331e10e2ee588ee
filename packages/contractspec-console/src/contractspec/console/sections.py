"""Sections: the pages a console shows beside the views it generates for entities and operations.

A section is a small object with a URL segment, a navigation title, its own Jinja templates and
its Starlette routes. `Console(executor, authenticate=..., sections=[...])` mounts each section's
routes under `/<key>/` and lists it in the navigation for actors for whom `visible()` is true.

Sections reach the console only through the `ConsoleHost` methods below, so a section never
re-implements authentication, CSRF checks, policy decisions or rendering.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute

from contractspec.core.context import CallContext

__all__ = ["ConsoleHost", "ConsoleSection"]


@runtime_checkable
class ConsoleHost(Protocol):
    """What a section may ask of the console it is mounted in (the `Console` implements it)."""

    async def call_context(self, request: Request) -> CallContext:
        """The authenticated caller of `request` (actor, tenant, request id).

        Raises:
            starlette.exceptions.HTTPException: 401 when the app's `authenticate` returns nobody.
        """
        ...

    async def may(self, request: Request, operation: str) -> bool:
        """Whether the caller's policy allows `operation` (asks the executor's policy; no duplicate)."""
        ...

    async def execute(
        self, request: Request, operation: str, raw_input: Mapping[str, Any] | BaseModel
    ) -> BaseModel:
        """Run `operation` through the executor as the caller (policy, tenant, idempotency, audit).

        Raises the executor's `ContractSpecError`s unchanged; `render_error` turns them into pages.
        """
        ...

    async def form(self, request: Request) -> FormData:
        """The submitted form after its CSRF token was checked (403 when missing or wrong)."""
        ...

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
    ) -> HTMLResponse:
        """Render `template` (extending `console/base.html`) with the console's globals.

        The context gains `console` (navigation, url helpers), `csrf_token` and `actor`; the
        response carries the console's security headers (CSP, frame, referrer, nosniff).
        """
        ...

    def render_error(self, request: Request, error: Exception) -> HTMLResponse:
        """A page (or an htmx fragment) for a `ContractSpecError`, with its HTTP status."""
        ...


@runtime_checkable
class ConsoleSection(Protocol):
    """A group of pages mounted at `/<key>/` (see the module docstring)."""

    #: URL segment, `[a-z0-9-]+`.
    key: str
    #: Navigation label.
    title: str
    #: Directory of this section's templates (added to the console's Jinja loader), or None.
    template_dir: Path | None

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """The section's routes, relative to its mount point (`/` is its landing page)."""
        ...

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        """Whether the navigation shows this section to the caller (e.g. `console.may(...)`)."""
        ...
