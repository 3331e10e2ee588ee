"""Serve a registry over HTTP: every operation as an ASGI route (install `contractspec-core[http]`).

```python
from contractspec.core import Actor, Executor
from contractspec.core.http import Principal, create_app

async def authenticate(request):  # your identity: a session, a JWT, an API key, ...
    session = await sessions.find(request.cookies.get("session"))
    if session is None:
        return None  # anonymous: only public() operations succeed
    return Principal(Actor.user(session.user_id, roles=session.roles), org_id=session.org_id)

app = create_app(Executor(registry, policy=policy), authenticate=authenticate)
# uvicorn module:app
```

The tenant comes from the server, never from the client: `authenticate(request)` returns a
`Principal` (actor and tenant), an `Actor` (a call outside any tenant) or `None` (anonymous). The
`X-Org-Id` header is read only with `trust_org_header=True`, for a gateway that authenticates the
caller and sets the header itself; with a policy that knows memberships (the identity
`PolicyEngine`) the executor still checks that the caller belongs to the tenant.

Binding (also described by the served OpenAPI document, see `contractspec.core.codegen.openapi`):
queries are `GET /<name with dots as slashes>/v<version>` with the input in the query string;
commands are `POST` with a JSON body of at most `max_body_bytes` (1 MiB by default; `413` above).
Outputs come back as JSON with `200`; errors as `{"code", "message", "details"}` with the status of
`contractspec.core.errors.HTTP_STATUS` (`400` for a body that is not JSON or a malformed header,
`401` for an anonymous caller of a non-public operation, `422` for input that cannot be stored:
NUL characters and lone surrogates). Server errors (`5xx`) never reveal their cause: the body says
`internal_error` and the request id, the cause goes to the log.

Headers: `X-Request-Id` (echoed; generated when absent), `Idempotency-Key` (idempotent commands;
`422` on the others, as in-process), `X-Org-Id` (only with `trust_org_header=True`), W3C
`traceparent` (its trace id becomes the call's `trace_id`).

Why Starlette and not FastAPI: the spec already validates input and output with pydantic and
describes the surface in OpenAPI, so FastAPI's dependency injection, second validation pass and
`jsonable_encoder` would only add latency. Starlette gives routing, requests and responses with
none of that; `benchmarks/http_vs_fastapi.py` measures the difference. The routes mount into any
Starlette or FastAPI app (`app.router.routes.extend(routes(executor, authenticate=...))`); to
make FastAPI the host (routes in its OpenAPI and `/docs`, the authenticator a FastAPI
dependency), use `contractspec.core.fastapi`, which runs this module's pipeline.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from contractspec.core._log import get_logger
from contractspec.core.context import ANONYMOUS, Actor, CallContext, Principal
from contractspec.core.errors import (
    HTTP_STATUS,
    ConfigurationError,
    ContractSpecError,
    PolicyDeniedError,
    SpecValidationError,
    TenantScopeError,
)
from contractspec.core.executor import Executor
from contractspec.core.ports import MembershipChecker
from contractspec.core.specs import OperationSpec

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import BaseRoute, Route
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.core.http needs Starlette: pip install 'contractspec-core[http]'"
    ) from exc

from contractspec.core.codegen.openapi import (
    DEFAULT_SECURITY_SCHEMES,
    HEADER_MAX_LENGTH,
    HeaderNames,
    http_path,
    openapi_document,
    query_parameters,
)
from contractspec.core.ir import model_schema

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "Authenticate",
    "HeaderNames",
    "OrgResolver",
    "Principal",
    "create_app",
    "routes",
]

_log = get_logger(__name__)

#: `authenticate(request) -> Principal | Actor | None` (sync or async): who calls and, with a
#: `Principal`, in which tenant. `None` means anonymous.
Authenticate = Callable[[Request], "Principal | Actor | Awaitable[Principal | Actor | None] | None"]
#: `org_id(request, actor) -> str | None` (sync or async): the tenant of the call, decided by app
#: code (e.g. from the path or a session), for apps that do not return a `Principal`.
OrgResolver = Callable[[Request, Actor], "str | Awaitable[str | None] | None"]

#: Default limit of a request body: 1 MiB.
DEFAULT_MAX_BODY_BYTES: Final = 1_048_576

_JSON: Final = "application/json"
_HEADER_VALUE: Final = re.compile(rf"[\x21-\x7e]{{1,{HEADER_MAX_LENGTH}}}")
# A JSON escape that may decode to an unstorable character: \u0000 or a surrogate (paired ones
# are fine; the slow path below tells them apart).
_SUSPECT_ESCAPE: Final = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")
# Characters no backend stores: NUL (PostgreSQL text and jsonb) and lone surrogates (not UTF-8).
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
_MAX_REPORTED: Final = 20
# Marker of `_Endpoint.respond`: the caller is not known yet, ask the authenticator.
_ASK: Final = object()


def _trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`)."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
        try:
            int(parts[1], 16)
        except ValueError:
            return None
        return parts[1].lower()
    return None


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _escape(text: str) -> str:
    """`text` with unstorable characters written as `\\uXXXX` (for messages)."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _what(text: str) -> str:
    found = _UNSTORABLE.search(text)
    assert found is not None
    if found.group() == "\x00":
        return "a NUL character (\\u0000)"
    return f"a lone surrogate (\\u{ord(found.group()):04x})"


def _unstorable_paths(
    node: Any, loc: tuple[str | int, ...], out: list[tuple[tuple[str | int, ...], str]]
) -> None:
    """Collect `(loc, what)` of every string (value or key) holding an unstorable character."""
    if len(out) >= _MAX_REPORTED:
        return
    if isinstance(node, str):
        if _UNSTORABLE.search(node):
            out.append((loc, _what(node)))
    elif isinstance(node, dict):
        for key, value in node.items():
            if _UNSTORABLE.search(key):
                out.append(((*loc, _escape(key)), _what(key)))
            _unstorable_paths(value, (*loc, key), out)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _unstorable_paths(value, (*loc, index), out)


def _unstorable_error(
    found: list[tuple[tuple[str | int, ...], str]], operation: str
) -> SpecValidationError:
    errors: list[dict[str, Any]] = []
    parts: list[str] = []
    for loc, what in found:
        field = ".".join(str(p) for p in loc)
        msg = f"contains {what}, which cannot be stored; remove it"
        errors.append({"type": "string_unstorable", "loc": list(loc), "msg": msg, "field": field})
        parts.append(f"{field or '(root)'}: {msg}")
    shown = "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else "")
    return SpecValidationError(
        f"invalid input for {operation}: {shown}",
        errors=errors,
        details={"operation": operation},
    )


def _check_body(raw: bytes, operation: str) -> None:
    """Refuse a JSON body whose strings would hold NUL or lone surrogates once decoded.

    The fast path is one substring search: only bodies with a suspicious escape are decoded (a
    body that is not JSON is left to the executor, which answers 400).

    Raises:
        SpecValidationError: A string (value or key) holds an unstorable character.
    """
    if b"\\u" not in raw or _SUSPECT_ESCAPE.search(raw) is None:
        return
    found: list[tuple[tuple[str | int, ...], str]] = []
    try:
        _unstorable_paths(json.loads(raw), (), found)
    except (ValueError, RecursionError):
        return  # not JSON, or nested too deep to walk: the executor answers (400 or 422)
    if found:
        raise _unstorable_error(found, operation)


def _check_query(request: Request, operation: str) -> None:
    """Refuse query parameters holding NUL (`%00`); the query string decoding replaces invalid
    UTF-8, so lone surrogates cannot occur here.

    Raises:
        SpecValidationError: A parameter name or value holds a NUL character.
    """
    query: bytes = request.scope.get("query_string", b"")
    if b"%00" not in query and b"\x00" not in query:
        return
    found: list[tuple[tuple[str | int, ...], str]] = []
    for key, value in request.query_params.multi_items():
        if _UNSTORABLE.search(key):
            found.append(((_escape(key),), _what(key)))
        elif _UNSTORABLE.search(value):
            found.append(((key,), _what(value)))
    if found:
        raise _unstorable_error(found[:_MAX_REPORTED], operation)


def _answer(status: int, body: Mapping[str, Any], headers: dict[str, str]) -> Response:
    # a lone surrogate echoed in a message becomes the JSON escape `\ud800`, not an encoding error
    text = json.dumps(body, default=str, ensure_ascii=False)
    return Response(text.encode("utf-8", "backslashreplace"), status, headers, _JSON)


def _too_large(limit: int, operation: str, request_id: str, header: str) -> Response:
    body = {
        "code": "content_too_large",
        "message": f"the request body of {operation} is larger than the limit of {limit} bytes; "
        "send a smaller body",
        "details": {"operation": operation, "limit_bytes": limit},
    }
    return _answer(413, body, {header: request_id, "Connection": "close"})


def _challenge(schemes: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The `WWW-Authenticate` value of a 401: the HTTP schemes among `schemes` (`Bearer`)."""
    names = [
        str(scheme["scheme"]).capitalize()
        for _, scheme in sorted(schemes.items())
        if scheme.get("type") == "http" and scheme.get("scheme")
    ]
    return ", ".join(dict.fromkeys(names)) or None


class _Endpoint:
    """One operation version bound to an executor (the Starlette endpoint)."""

    __slots__ = (
        "authenticate",
        "challenge",
        "checked_headers",
        "executor",
        "headers",
        "idem_header",
        "is_query",
        "max_body",
        "name",
        "org_header",
        "org_id",
        "query_fields",
        "ref",
        "refused_idem_header",
        "rid_header",
        "version",
    )

    def __init__(
        self,
        executor: Executor,
        spec: OperationSpec,
        *,
        authenticate: Authenticate | None,
        org_id: OrgResolver | None,
        trust_org_header: bool,
        headers: HeaderNames,
        max_body: int,
        challenge: str | None,
    ) -> None:
        self.executor = executor
        self.name = spec.name
        self.version = spec.version
        self.ref = f"{spec.name}@{spec.version}"
        self.is_query = not spec.is_command
        self.authenticate = authenticate
        self.org_id = org_id
        self.headers = headers
        self.max_body = max_body
        self.challenge = challenge
        self.rid_header = headers.request_id.lower()
        self.idem_header = headers.idempotency_key.lower() if spec.idempotent else None
        self.refused_idem_header = (
            headers.idempotency_key.lower() if spec.is_command and not spec.idempotent else None
        )
        self.org_header = (
            headers.org_id.lower() if headers.org_id and trust_org_header and not org_id else None
        )
        self.checked_headers = tuple(
            (h.lower(), h)
            for h in (
                headers.request_id,
                headers.org_id if self.org_header else None,
                headers.idempotency_key if self.idem_header else None,
            )
            if h
        )
        self.query_fields = (
            {name: style for name, style, _ in query_parameters(model_schema(spec.input))}
            if self.is_query
            else {}
        )

    def _query_input(self, request: Request) -> dict[str, Any]:
        params = request.query_params
        raw: dict[str, Any] = {}
        for key in params:
            style = self.query_fields.get(key)
            if style == "array":
                raw[key] = params.getlist(key)
            elif style == "json":
                text = params[key]
                try:
                    raw[key] = json.loads(text)
                except ValueError:
                    raw[key] = text  # let validation report it against the field
            else:
                raw[key] = params[key]
        return raw

    def _bad_header(self, request: Request) -> str | None:
        headers = request.headers
        for key, name in self.checked_headers:
            value = headers.get(key)
            if value is not None and not _HEADER_VALUE.fullmatch(value):
                return name
        return None

    def _declared_length_too_large(self, request: Request) -> bool:
        length = request.headers.get("content-length")
        return length is not None and length.isdigit() and int(length) > self.max_body

    async def _body(self, request: Request) -> bytes | None:
        """The request body, or `None` once it exceeds the limit (the rest is never read)."""
        limit = self.max_body
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _caller(self, request: Request, who: Any) -> tuple[Actor, str | None]:
        """The actor and tenant of the request (see `routes` for the order of the sources).

        `who` is what an authenticator already returned (the FastAPI dependency), or `_ASK` to
        call `self.authenticate` here.
        """
        actor: Actor = ANONYMOUS
        org: str | None = None
        if who is _ASK:
            who = (
                None
                if self.authenticate is None
                else await _maybe_await(self.authenticate(request))
            )
        if who is not None:
            if type(who) is Principal:
                actor, org = who.actor, who.org_id
            elif isinstance(who, Actor):
                actor = who
            elif isinstance(who, Principal):
                actor, org = who.actor, who.org_id
            else:
                raise ConfigurationError(
                    "authenticate must return a Principal, an Actor or None, got "
                    f"{type(who).__name__}"
                )
        if self.org_id is not None:
            org = await _maybe_await(self.org_id(request, actor))
        elif self.org_header is not None:
            org = request.headers.get(self.org_header) or org
        return actor, org

    async def handle(self, request: Request) -> Response:
        """The Starlette endpoint: the authenticator is called on the request."""
        return await self.respond(request, _ASK)

    async def respond(self, request: Request, who: Any) -> Response:
        """Run the operation for `request` and answer (the pipeline of every HTTP adapter).

        Args:
            request: The incoming request (Starlette's, also FastAPI's).
            who: The caller as an authenticator returned it (`Principal`, `Actor` or `None`),
                or `_ASK` to call `self.authenticate` on the request.
        """
        headers = request.headers
        bad = self._bad_header(request) if self.checked_headers else None
        if bad is not None:
            request_id = uuid.uuid4().hex
            body = {
                "code": "bad_request",
                "message": f"header {bad} must be 1 to {HEADER_MAX_LENGTH} visible ASCII "
                "characters (no spaces)",
                "details": {"header": bad},
            }
            return _answer(400, body, {self.headers.request_id: request_id})
        request_id = headers.get(self.rid_header) or uuid.uuid4().hex
        rid_header = self.headers.request_id
        if not self.is_query and self._declared_length_too_large(request):
            return _too_large(self.max_body, self.ref, request_id, rid_header)
        anonymous = False  # only a denial of an authenticated-as-nobody call is a 401
        try:
            refused = self.refused_idem_header
            if refused is not None and refused in headers:
                raise self._idempotency_refused()
            actor, org = await self._caller(request, who)
            anonymous = actor.is_anonymous
            raw: Any
            if self.is_query:
                _check_query(request, self.ref)
                raw = self._query_input(request)
            else:
                payload = await self._body(request)
                if payload is None:
                    return _too_large(self.max_body, self.ref, request_id, rid_header)
                if not payload.strip():
                    payload = b"{}"
                else:
                    _check_body(payload, self.ref)
                raw = payload
            ctx = CallContext(
                actor=actor,
                org_id=org,
                request_id=request_id,
                trace_id=_trace_id(headers.get("traceparent")),
                idempotency_key=headers.get(self.idem_header) if self.idem_header else None,
                channel="http",
            )
            output = await self.executor.execute(self.name, raw, ctx, version=self.version)
        except ContractSpecError as exc:
            challenge = self.challenge if anonymous else None
            return _problem(exc, request_id, rid_header, self.ref, challenge)
        except Exception as exc:  # a hook failed: never leak it
            _log.error(
                "contractspec.http.hook_failed",
                operation=self.ref,
                request_id=request_id,
                exc_info=exc,
            )
            return _internal(request_id, rid_header)
        return Response(
            output.__pydantic_serializer__.to_json(output),
            200,
            {rid_header: request_id},
            _JSON,
        )

    def _idempotency_refused(self) -> SpecValidationError:
        header = self.headers.idempotency_key
        msg = (
            f"{self.ref} is not declared idempotent, so it cannot take an idempotency key; drop "
            f"the {header} header or declare the command with idempotent=True"
        )
        return SpecValidationError(
            f"invalid input for {self.ref}: header {header}: {msg}",
            errors=[
                {
                    "type": "idempotency_key_not_allowed",
                    "loc": ["header", header],
                    "msg": msg,
                    "field": header,
                }
            ],
            details={"operation": self.ref, "header": header},
        )


def _internal(request_id: str, header: str, status: int = 500) -> Response:
    body = {
        "code": "internal_error",
        "message": f"internal error; quote request id {request_id} to the operator",
        "details": {"request_id": request_id},
    }
    return _answer(status, body, {header: request_id})


def _problem(
    exc: ContractSpecError,
    request_id: str,
    header: str,
    operation: str,
    challenge: str | None = None,
) -> Response:
    status = HTTP_STATUS.get(exc.code, 500)
    # a server error never shows its cause (504 operation_timeout is the caller's answer: its
    # message names the operation's time limit, nothing of the server)
    if status >= 500 and status != 504:
        _log.error(
            "contractspec.http.internal_error",
            operation=operation,
            request_id=request_id,
            code=exc.code,
            exc_info=exc,
        )
        return _internal(request_id, header, status)
    body = exc.to_dict()
    if isinstance(exc, SpecValidationError) and any(
        e.get("type") == "json_invalid" for e in exc.errors
    ):
        status = 400
        body = {
            "code": "bad_request",
            "message": f"the request body of {operation} is not valid JSON; send a JSON object",
            "details": {"operation": operation},
        }
    headers = {header: request_id}
    if (
        status == 403
        and challenge is not None
        and isinstance(exc, PolicyDeniedError)
        and not isinstance(exc, TenantScopeError)
    ):
        # an anonymous caller of a non-public operation: authenticate, then retry
        status = 401
        headers["WWW-Authenticate"] = challenge
    retry_after = exc.details.get("retry_after_s")
    if status == 429 and isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return _answer(status, body, headers)


def _check_config(
    executor: Executor,
    authenticate: Authenticate | None,
    org_id: OrgResolver | None,
    trust_org_header: bool,
    max_body_bytes: int,
    specs: Sequence[OperationSpec] | None = None,
) -> None:
    """Refuse a configuration that cannot serve `specs` (default: every registered operation)."""
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise ConfigurationError(
            f"max_body_bytes must be a positive number of bytes, got {max_body_bytes!r}"
        )
    if max_body_bytes < 1:
        raise ConfigurationError(
            f"max_body_bytes must be a positive number of bytes, got {max_body_bytes!r}"
        )
    if org_id is not None and trust_org_header:
        raise ConfigurationError(
            "give either org_id= (your code decides the tenant) or trust_org_header=True (a "
            "trusted gateway sets the header), not both"
        )
    if authenticate is None:
        guarded = [
            f"{spec.name}@{spec.version}"
            for spec in (executor.registry.operations() if specs is None else specs)
            if spec.auth.needs_actor
        ]
        if guarded:
            more = f" and {len(guarded) - 3} more" if len(guarded) > 3 else ""
            raise ConfigurationError(
                f"the HTTP adapter needs authenticate=: {', '.join(guarded[:3])}{more} are not "
                "public, and without an authenticator every caller is anonymous. Pass "
                "authenticate=<function of the request> that checks the caller's credential "
                "(session, token, API key) and returns Principal(actor, org_id=<their tenant>), "
                "an Actor, or None for anonymous callers",
                details={"operations": guarded},
            )


def routes(
    executor: Executor,
    *,
    authenticate: Authenticate | None = None,
    org_id: OrgResolver | None = None,
    trust_org_header: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    headers: HeaderNames | None = None,
    security_schemes: Mapping[str, Mapping[str, Any]] | None = None,
    openapi_url: str | None = "/openapi.json",
    title: str = "ContractSpec API",
) -> list[BaseRoute]:
    """Starlette routes for every operation of `executor.registry` (every registered version).

    Mount them into an existing app: `app.router.routes.extend(routes(executor, authenticate=f))`
    (Starlette or FastAPI), or `Mount("/api", routes=routes(executor, authenticate=f))`.

    The tenant of a call is, in this order: what the `org_id` hook returns (when given); the
    `X-Org-Id` header (only with `trust_org_header=True`, when the request has it); the
    `Principal.org_id` the authenticator returned; else none.

    Args:
        executor: Runs the operations (its registry decides the routes).
        authenticate: `authenticate(request) -> Principal | Actor | None`, sync or async. Check
            the caller's credential and return `Principal(actor, org_id)` (the actor and its
            tenant), an `Actor` (calls outside any tenant) or `None` (anonymous: only `public()`
            operations succeed, others answer `401`). Required unless every operation is
            public. An exception it raises is a 500 (logged, not revealed).
        org_id: `org_id(request, actor) -> str | None`, sync or async: your code decides the
            tenant (it overrides the principal's). Not with `trust_org_header`.
        trust_org_header: Take the tenant from the `X-Org-Id` header (`headers.org_id`) when the
            request has it. Only behind a gateway that authenticates the caller and sets or
            strips the header itself: otherwise any client picks its tenant. The executor still
            denies callers who are not members of the tenant when its policy knows memberships
            (`contractspec.core.MembershipChecker`, e.g. the identity `PolicyEngine`); a policy
            such as `RolePermissions` does not.
        max_body_bytes: Largest request body accepted, in bytes (default 1 MiB); larger ones
            answer `413 content_too_large`, checked from `Content-Length` and while reading, so
            no more than the limit is ever held in memory.
        headers: Header names (`HeaderNames()` defaults).
        security_schemes: `components.securitySchemes` of the served OpenAPI document (default
            `DEFAULT_SECURITY_SCHEMES`, an HTTP bearer token); their HTTP schemes also make the
            `WWW-Authenticate` header of `401` answers.
        openapi_url: Where the OpenAPI document is served; `None` to not serve it.
        title: `info.title` of the OpenAPI document.

    Returns:
        One `Route` per operation version, plus the OpenAPI route.

    Raises:
        ConfigurationError: `authenticate` is missing while some operation is not public, both
            `org_id` and `trust_org_header` are given, or `max_body_bytes` is not a positive
            integer.
    """
    _check_config(executor, authenticate, org_id, trust_org_header, max_body_bytes)
    if trust_org_header and not isinstance(executor.policy, MembershipChecker):
        _log.warning(
            "contractspec.http.org_header_trusted_without_membership_check",
            policy=type(executor.policy).__name__,
            advice="only behind a gateway that sets the tenant header: with this policy any "
            "client that reaches the server picks its tenant",
        )
    names = headers or HeaderNames()
    schemes = DEFAULT_SECURITY_SCHEMES if security_schemes is None else security_schemes
    challenge = _challenge(schemes)
    out: list[BaseRoute] = []
    for spec in executor.registry.operations():
        endpoint = _Endpoint(
            executor,
            spec,
            authenticate=authenticate,
            org_id=org_id,
            trust_org_header=trust_org_header,
            headers=names,
            max_body=max_body_bytes,
            challenge=challenge,
        )
        method = "GET" if endpoint.is_query else "POST"
        out.append(
            Route(
                http_path(spec.name, spec.version),
                endpoint.handle,
                methods=[method],
                name=endpoint.ref,
                include_in_schema=False,
            )
        )
    if openapi_url is not None:
        cache: dict[int, dict[str, Any]] = {}

        async def openapi(request: Request) -> Response:
            generation = executor.registry.generation
            document = cache.get(generation)
            if document is None:
                cache.clear()
                document = cache[generation] = openapi_document(
                    executor.registry.to_ir(),
                    title=title,
                    headers=names,
                    security_schemes=schemes,
                    trust_org_header=trust_org_header and org_id is None,
                )
            return JSONResponse(document)

        out.append(Route(openapi_url, openapi, methods=["GET"], include_in_schema=False))
    return out


def create_app(
    executor: Executor,
    *,
    authenticate: Authenticate | None = None,
    org_id: OrgResolver | None = None,
    trust_org_header: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    headers: HeaderNames | None = None,
    security_schemes: Mapping[str, Mapping[str, Any]] | None = None,
    openapi_url: str | None = "/openapi.json",
    title: str = "ContractSpec API",
    middleware: Sequence[Any] | None = None,
    debug: bool = False,
) -> Starlette:
    """A Starlette application serving every operation of `executor.registry`.

    Arguments are those of `routes`, plus Starlette's `middleware` and `debug` (never enable
    `debug` in production: Starlette then shows tracebacks of errors raised outside our routes).

    Returns:
        The ASGI application.

    Raises:
        ConfigurationError: As `routes` (e.g. no `authenticate` while some operation is not
            public).
        SpecDefinitionError: A model of the registry has no JSON Schema.
    """
    return Starlette(
        debug=debug,
        routes=routes(
            executor,
            authenticate=authenticate,
            org_id=org_id,
            trust_org_header=trust_org_header,
            max_body_bytes=max_body_bytes,
            headers=headers,
            security_schemes=security_schemes,
            openapi_url=openapi_url,
            title=title,
        ),
        middleware=list(middleware or ()),
    )
