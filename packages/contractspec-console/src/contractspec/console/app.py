"""The `Console`: an ASGI app the host application mounts (Starlette, FastAPI, any ASGI server).

```py
from starlette.applications import Starlette
from starlette.routing import Mount
from contractspec.console import Console

console = Console(executor, authenticate=authenticate, secret_key=settings.console_secret)
app = Starlette(routes=[Mount("/admin", app=console)])
```

Identity comes from the app's `authenticate(request)`, exactly as in `contractspec.core.http`;
every action goes through the executor (policy, tenant, idempotency, outbox, audit); every page
is rendered by Jinja2 with autoescaping and carries a strict Content-Security-Policy.
"""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from attrs import define, field
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, PackageLoader, select_autoescape
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from contractspec.console._csrf import CSRF_FIELD, CSRF_HEADER, CsrfSigner
from contractspec.console.sections import ConsoleHost, ConsoleSection
from contractspec.core._log import get_logger
from contractspec.core.codegen.openapi import HEADER_MAX_LENGTH
from contractspec.core.context import ANONYMOUS, Actor, CallContext, Principal
from contractspec.core.errors import (
    HTTP_STATUS,
    ConfigurationError,
    ContractSpecError,
    PolicyDeniedError,
    TenantScopeError,
)
from contractspec.core.executor import Executor
from contractspec.core.http import Authenticate
from contractspec.core.specs import EntitySpec, OperationSpec
from contractspec.core.workflows import may_call

__all__ = ["CONTENT_SECURITY_POLICY", "Console", "NavLink", "PageLinks"]

_log = get_logger(__name__)

#: The Content-Security-Policy of every console response: no inline script or style, no plugin,
#: no framing, forms post only to the console's origin.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_SECURITY_HEADERS: Final = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_STATE: Final = "contractspec.console"
_REQUEST_ID: Final = re.compile(rf"[\x21-\x7e]{{1,{HEADER_MAX_LENGTH}}}")
_PACKAGE_DIR: Final = Path(__file__).parent
_SECTION_KEY: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_RESERVED_KEYS: Final = frozenset({"static", "entities", "ops"})
#: Largest number of fields and bytes per field a submitted form may have.
_MAX_FIELDS: Final = 1000
_MAX_PART_BYTES: Final = 1_048_576


@define(frozen=True)
class NavLink:
    """One navigation entry: its label and URL (already under the console's mount point)."""

    label: str
    url: str
    group: str


@define(frozen=True)
class PageLinks:
    """What the `pagination(page)` macro shows: links to the neighbouring pages, or `None`.

    Attributes:
        previous_url: URL of the previous page, or `None` on the first page.
        next_url: URL of the next page, or `None` on the last page.
        summary: A short text such as "rows 51-100" (may be empty).
    """

    previous_url: str | None = None
    next_url: str | None = None
    summary: str = ""


@define
class _RequestState:
    """What the console resolved once per request: the caller and the navigation."""

    call: CallContext
    authenticated: bool
    root: str
    nav: list[NavLink] = field(factory=list)
    csrf_token: str = ""


def _request_id(given: str | None) -> str:
    """The caller's `X-Request-Id` when it is 1-200 visible ASCII characters (as in
    `contractspec.core.http`), else a fresh one: a request id reaches logs and audit records."""
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _user_entities(executor: Executor) -> list[EntitySpec[Any]]:
    """The app's entities, latest version of each (ContractSpec's internal ones left out)."""
    latest: dict[str, EntitySpec[Any]] = {}
    for entity in executor.registry.entities():
        if entity.name.startswith("contractspec."):
            continue
        latest[entity.name] = entity
    return list(latest.values())


def _user_operations(executor: Executor) -> list[OperationSpec]:
    """The app's operations, one per name (the version the executor runs by default)."""
    names = sorted({op.name for op in executor.registry.operations()})
    out: list[OperationSpec] = []
    for name in names:
        if name.startswith("contractspec."):
            continue
        # the executor's own choice of version (latest released), so the form matches the call
        try:
            out.append(executor._plan(name, None).spec)
        except ContractSpecError:  # no handler bound: nothing the console could run
            continue
    return out


class _ConsoleView:
    """The `console` object templates see: title, navigation, URL helpers."""

    __slots__ = ("_state", "title")

    def __init__(self, title: str, state: _RequestState) -> None:
        self.title = title
        self._state = state

    @property
    def root(self) -> str:
        """The console's mount point (`""` or e.g. `/admin`)."""
        return self._state.root

    def url(self, path: str = "/") -> str:
        """`path` (starting with `/`) under the console's mount point."""
        return self._state.root + path

    def static(self, name: str) -> str:
        """URL of a static file of the console."""
        return f"{self._state.root}/static/{name}"

    def nav(self, group: str) -> list[NavLink]:
        """Navigation links of one group: `entities`, `operations` or `sections`."""
        return [link for link in self._state.nav if link.group == group]


class Console(ConsoleHost):
    """A spec-driven web console: an ASGI app to mount in the host application.

    Args:
        executor: Runs every action; its registry decides the views and forms.
        authenticate: `authenticate(request) -> Principal | Actor | None`, sync or async (as in
            `contractspec.core.http`): check the caller's session or token and return who they
            are and in which tenant. `None` means anonymous (only public operations are offered;
            other pages answer 401). The console never invents identities.
        secret_key: Signs CSRF tokens (itsdangerous); at least 32 characters, kept secret.
        sections: Extra pages (`ConsoleSection`), mounted at `/<key>/`.
        title: Shown in the header and page titles.
        page_size: Rows per list page (1..500).
        csrf_max_age_s: How long a rendered form's CSRF token stays valid, in seconds.
        read_permission: The permission the policy must grant to list and show an entity's
            records, from its spec (default `"<entity name>.read"`, e.g. `crm.deal.read`),
            checked on the resource `<entity name>` in the caller's tenant.

    Raises:
        ConfigurationError: A missing or short `secret_key`, a bad `page_size`, a section key
            that is not `[a-z0-9-]+`, reserved or used twice.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        authenticate: Authenticate,
        secret_key: str | bytes,
        sections: Sequence[ConsoleSection] = (),
        title: str = "ContractSpec",
        page_size: int = 50,
        csrf_max_age_s: int = 12 * 3600,
        read_permission: Callable[[EntitySpec[Any]], str] | None = None,
    ) -> None:
        if not isinstance(executor, Executor):
            raise ConfigurationError(
                f"Console needs an Executor, got {type(executor).__name__}",
                details={"field": "executor"},
            )
        if not callable(authenticate):
            raise ConfigurationError(
                "Console needs authenticate=<function of the request> returning a Principal, an "
                "Actor or None (as contractspec.core.http)",
                details={"field": "authenticate"},
            )
        if not isinstance(secret_key, str | bytes) or len(secret_key) < 32:
            raise ConfigurationError(
                "secret_key must be a secret of at least 32 characters (it signs CSRF tokens); "
                "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
                details={"field": "secret_key"},
            )
        if (
            isinstance(page_size, bool)
            or not isinstance(page_size, int)
            or not 1 <= page_size <= 500
        ):
            raise ConfigurationError(
                f"page_size must be an integer from 1 to 500, got {page_size!r}",
                details={"field": "page_size"},
            )
        seen: set[str] = set()
        for section in sections:
            key = getattr(section, "key", None)
            if (
                not isinstance(key, str)
                or not key
                or not set(key) <= _SECTION_KEY
                or key in _RESERVED_KEYS
                or key in seen
            ):
                raise ConfigurationError(
                    f"section key {key!r} must be unique, made of [a-z0-9-] and not one of "
                    f"{', '.join(sorted(_RESERVED_KEYS))}",
                    details={"field": "sections"},
                )
            seen.add(key)
        self.executor = executor
        self.authenticate = authenticate
        self.title = title
        self.page_size = page_size
        self.sections: tuple[ConsoleSection, ...] = tuple(sections)
        self.read_permission: Callable[[EntitySpec[Any]], str] = read_permission or (
            lambda entity: f"{entity.name}.read"
        )
        self._csrf = CsrfSigner(secret_key, max_age_s=csrf_max_age_s)
        loaders: list[Any] = [PackageLoader("contractspec.console", "templates")]
        loaders.extend(
            FileSystemLoader(str(s.template_dir)) for s in self.sections if s.template_dir
        )
        self.templates = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        from contractspec.console import _views

        routes: list[BaseRoute] = [
            Mount("/static", app=StaticFiles(directory=_PACKAGE_DIR / "static"), name="static"),
            *_views.routes(self),
        ]
        routes.extend(Mount(f"/{s.key}", routes=list(s.routes(self))) for s in self.sections)
        self._app = Starlette(
            routes=routes,
            exception_handlers={
                ContractSpecError: self._on_error,
                HTTPException: self._on_http_error,
            },
        )

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection (every HTTP response gains the security headers)."""
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in _SECURITY_NAMES
                ]
                headers.extend(_SECURITY_HEADERS)
                message = {**message, "headers": headers}
            await send(message)

        scope = dict(scope)
        scope[_STATE] = {"root": scope.get("root_path", "")}
        await self._app(scope, receive, secured)

    # -- request state -------------------------------------------------------------------------

    async def _state(self, request: Request) -> _RequestState:
        """The caller and navigation of `request`, resolved once."""
        holder: dict[str, Any] = request.scope.setdefault(_STATE, {"root": ""})
        state: _RequestState | None = holder.get("state")
        if state is not None:
            return state
        who = await _maybe_await(self.authenticate(request))
        actor: Actor = ANONYMOUS
        org: str | None = None
        if who is not None:
            if type(who) is Principal:
                actor, org = who.actor, who.org_id
            elif isinstance(who, Actor):
                actor = who
            else:
                raise ConfigurationError(
                    "authenticate must return a Principal, an Actor or None, got "
                    f"{type(who).__name__}"
                )
        call = CallContext(
            actor=actor,
            org_id=org,
            request_id=_request_id(request.headers.get("x-request-id")),
            channel="console",
        )
        state = _RequestState(call, not actor.is_anonymous, holder["root"])
        holder["state"] = state
        state.csrf_token = self._csrf.issue(call)
        state.nav = await self._navigation(request, state)
        return state

    async def _navigation(self, request: Request, state: _RequestState) -> list[NavLink]:
        from contractspec.console import _views

        root, call, ex = state.root, state.call, self.executor
        nav = [
            NavLink(_views.entity_label(e), f"{root}/entities/{e.name}/", "entities")
            for e in self.entities
            if await _views.may_read(self, call, e)
        ]
        nav += [
            NavLink(_views.operation_label(op), f"{root}/ops/{op.name}", "operations")
            for op in self.operations
            if not _views.is_record_action(self, op) and await may_call(ex, op, call)
        ]
        nav += [
            NavLink(s.title, f"{root}/{s.key}/", "sections")
            for s in self.sections
            if await s.visible(self, request)
        ]
        return nav

    @property
    def entities(self) -> list[EntitySpec[Any]]:
        """The app's entities the console shows (latest version of each; internal ones left out)."""
        return _user_entities(self.executor)

    @property
    def operations(self) -> list[OperationSpec]:
        """The app's operations the console offers (the version the executor runs by default)."""
        return _user_operations(self.executor)

    def root_of(self, request: Request) -> str:
        """The console's mount point for `request` (`""` or e.g. `/admin`)."""
        holder: dict[str, Any] = request.scope.get(_STATE, {})
        root: str = holder.get("root", "")
        return root

    def caller_of(self, request: Request) -> CallContext | None:
        """The authenticated caller once resolved for `request`, else `None` (no I/O)."""
        holder: dict[str, Any] = request.scope.get(_STATE, {})
        state: _RequestState | None = holder.get("state")
        return state.call if state is not None and state.authenticated else None

    # -- ConsoleHost -----------------------------------------------------------------------------

    async def call_context(self, request: Request) -> CallContext:
        """The authenticated caller of `request` (actor, tenant, request id).

        Raises:
            starlette.exceptions.HTTPException: 401 when the app's `authenticate` returns nobody.
        """
        state = await self._state(request)
        if not state.authenticated:
            raise HTTPException(401, "sign in to use the console")
        return state.call

    async def may(self, request: Request, operation: str) -> bool:
        """Whether the caller's policy allows `operation` (the executor's policy decides)."""
        state = await self._state(request)
        try:
            spec = self.executor._plan(operation, None).spec
        except ContractSpecError:
            return False
        return await may_call(self.executor, spec, state.call)

    async def execute(
        self,
        request: Request,
        operation: str,
        raw_input: Mapping[str, Any] | BaseModel,
        *,
        idempotency_key: str | None = None,
    ) -> BaseModel:
        """Run `operation` through the executor as the caller (policy, tenant, idempotency, audit).

        Args:
            request: The current request (its caller runs the operation).
            operation: Operation name (the executor picks the version).
            raw_input: The input, as a mapping or the input model.
            idempotency_key: For idempotent commands: a repeated key runs the handler once.

        Raises:
            ContractSpecError: The executor's errors, unchanged (`render_error` turns them into
                pages): `SpecValidationError`, `PolicyDeniedError`, `ConflictError`, ...
        """
        state = await self._state(request)
        call = state.call
        if idempotency_key is not None:
            call = CallContext(
                actor=call.actor,
                org_id=call.org_id,
                request_id=call.request_id,
                idempotency_key=idempotency_key,
                channel=call.channel,
            )
        return await self.executor.execute(operation, raw_input, call)

    async def form(self, request: Request) -> FormData:
        """The submitted form after its CSRF token was checked (403 when missing or wrong)."""
        state = await self._state(request)
        data = await request.form(max_fields=_MAX_FIELDS, max_part_size=_MAX_PART_BYTES)
        token = data.get(CSRF_FIELD)
        if not isinstance(token, str):
            token = request.headers.get(CSRF_HEADER)
        if not self._csrf.check(token, state.call):
            raise HTTPException(
                403, "the form's security token is missing, expired or not yours; reload the page"
            )
        return data

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status_code: int = 200,
    ) -> HTMLResponse:
        """Render `template` (extending `console/base.html`) with the console's globals.

        The context gains `console` (navigation, url helpers), `csrf_token`, `actor` and
        `request`; the response carries the security headers (CSP, frame, referrer, nosniff).
        """
        holder: dict[str, Any] = request.scope.get(_STATE, {"root": ""})
        state: _RequestState | None = holder.get("state")
        if state is None:  # a page rendered before anyone asked who calls: anonymous view
            state = _RequestState(CallContext(), False, holder.get("root", ""))
        values = {
            **context,
            "console": _ConsoleView(self.title, state),
            "csrf_token": state.csrf_token,
            "actor": state.call.actor if state.authenticated else None,
            "org_id": state.call.org_id,
            "request": request,
            "htmx": request.headers.get("hx-request") == "true",
        }
        html = self.templates.get_template(template).render(values)
        return HTMLResponse(html, status_code=status_code)

    def render_error(self, request: Request, error: Exception) -> HTMLResponse:
        """A page (or an htmx fragment) for `error`, with its HTTP status.

        `ContractSpecError`s answer with `HTTP_STATUS` of their code (403 denied, 404 not found,
        409 conflict, 422 invalid input, ...); a denial of an anonymous caller is a 401. Server
        errors show only the request id (the cause goes to the log).
        """
        holder: dict[str, Any] = request.scope.get(_STATE, {})
        state: _RequestState | None = holder.get("state")
        request_id = state.call.request_id if state else None
        if isinstance(error, HTTPException):
            status, code, message = error.status_code, "http_error", str(error.detail)
        elif isinstance(error, ContractSpecError):
            status = HTTP_STATUS.get(error.code, 500)
            code, message = error.code, error.message
            if (
                isinstance(error, PolicyDeniedError)
                and not isinstance(error, TenantScopeError)
                and state is not None
                and not state.authenticated
            ):
                status, message = 401, "sign in to use this page"
        else:
            status, code, message = 500, "internal_error", ""
        if status >= 500:
            _log.error("contractspec.console.error", request_id=request_id, exc_info=error)
            code = "internal_error"
            message = f"internal error; quote request id {request_id} to the operator"
        template = (
            "console/_error.html" if request.headers.get("hx-request") else "console/error.html"
        )
        return self.render(
            request,
            template,
            {"status": status, "code": code, "message": message},
            status_code=status,
        )

    async def _on_error(self, request: Request, exc: Exception) -> Response:
        await self._state(request)
        return self.render_error(request, exc)

    async def _on_http_error(self, request: Request, exc: Exception) -> Response:
        await self._state(request)
        return self.render_error(request, exc)


_SECURITY_NAMES: Final = frozenset(name for name, _ in _SECURITY_HEADERS)
