"""Serve a registry over HTTP: every operation as an ASGI route (install `contractspec-core[http]`).

```python
from contractspec.core import Actor, Executor
from contractspec.core.http import create_app

def authenticate(request):  # your identity: a session, a JWT, an API key, ...
    user = request.headers.get("X-User")
    return Actor.user(user, roles=request.headers.get("X-Roles", "").split(",")) if user else None

app = create_app(Executor(registry, policy=policy), authenticate=authenticate)
# uvicorn module:app
```

Binding (also described by the served OpenAPI document, see `contractspec.core.codegen.openapi`):
queries are `GET /<name with dots as slashes>/v<version>` with the input in the query string;
commands are `POST` with a JSON body. Outputs come back as JSON with `200`; errors as
`{"code", "message", "details"}` with the status of `contractspec.core.errors.HTTP_STATUS`
(`400` for a body that is not JSON). Server errors (`5xx`) never reveal their cause: the body says
`internal_error` and the request id, the cause goes to the log.

Headers: `X-Request-Id` (echoed; generated when absent), `Idempotency-Key` (idempotent commands),
`X-Org-Id` (the tenant, unless an `org_id` hook decides), W3C `traceparent` (its trace id becomes
the call's `trace_id`).

Why Starlette and not FastAPI: the spec already validates input and output with pydantic and
describes the surface in OpenAPI, so FastAPI's dependency injection, second validation pass and
`jsonable_encoder` would only add latency. Starlette gives routing, requests and responses with
none of that; `benchmarks/http_vs_fastapi.py` measures the difference. The routes mount into any
Starlette or FastAPI app (`app.router.routes.extend(routes(executor))`).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import structlog

from contractspec.core.context import ANONYMOUS, Actor, CallContext
from contractspec.core.errors import HTTP_STATUS, ContractSpecError, SpecValidationError
from contractspec.core.executor import Executor
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
    HEADER_MAX_LENGTH,
    HeaderNames,
    http_path,
    openapi_document,
    query_parameters,
)
from contractspec.core.ir import model_schema

__all__ = ["Authenticate", "HeaderNames", "OrgResolver", "create_app", "routes"]

_log = structlog.get_logger(__name__)

#: `authenticate(request) -> Actor | None` (sync or async). `None` means anonymous.
Authenticate = Callable[[Request], "Actor | Awaitable[Actor | None] | None"]
#: `org_id(request, actor) -> str | None` (sync or async): the tenant of the call.
OrgResolver = Callable[[Request, Actor], "str | Awaitable[str | None] | None"]

_JSON: Final = "application/json"
_HEADER_VALUE: Final = re.compile(rf"[\x21-\x7e]{{1,{HEADER_MAX_LENGTH}}}")


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


class _Endpoint:
    """One operation version bound to an executor (the Starlette endpoint)."""

    __slots__ = (
        "authenticate",
        "checked_headers",
        "executor",
        "headers",
        "idem_header",
        "is_query",
        "name",
        "org_header",
        "org_id",
        "query_fields",
        "rid_header",
        "version",
    )

    def __init__(
        self,
        executor: Executor,
        spec: OperationSpec,
        authenticate: Authenticate | None,
        org_id: OrgResolver | None,
        headers: HeaderNames,
    ) -> None:
        self.executor = executor
        self.name = spec.name
        self.version = spec.version
        self.is_query = not spec.is_command
        self.authenticate = authenticate
        self.org_id = org_id
        self.headers = headers
        self.rid_header = headers.request_id.lower()
        self.idem_header = headers.idempotency_key.lower() if spec.idempotent else None
        self.org_header = headers.org_id.lower() if headers.org_id else None
        self.checked_headers = tuple(
            (h.lower(), h)
            for h in (
                headers.request_id,
                headers.org_id,
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

    async def handle(self, request: Request) -> Response:
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
            return Response(
                json.dumps(body).encode(), 400, {self.headers.request_id: request_id}, _JSON
            )
        request_id = headers.get(self.rid_header) or uuid.uuid4().hex
        try:
            actor: Actor | None = None
            if self.authenticate is not None:
                actor = await _maybe_await(self.authenticate(request))
            actor = actor or ANONYMOUS
            org: str | None = None
            if self.org_id is not None:
                org = await _maybe_await(self.org_id(request, actor))
            elif self.org_header is not None:
                org = headers.get(self.org_header) or None
            raw: Any
            if self.is_query:
                raw = self._query_input(request)
            else:
                raw = await request.body()
                if not raw.strip():
                    raw = b"{}"
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
            return _problem(exc, request_id, self.rid_header, f"{self.name}@{self.version}")
        except Exception as exc:  # a hook failed: never leak it
            _log.error(
                "contractspec.http.hook_failed",
                operation=f"{self.name}@{self.version}",
                request_id=request_id,
                exc_info=exc,
            )
            return _internal(request_id, self.headers.request_id)
        return Response(
            output.__pydantic_serializer__.to_json(output),
            200,
            {self.headers.request_id: request_id},
            _JSON,
        )


def _internal(request_id: str, header: str) -> Response:
    body = {
        "code": "internal_error",
        "message": f"internal error; quote request id {request_id} to the operator",
        "details": {"request_id": request_id},
    }
    return Response(json.dumps(body).encode(), 500, {header: request_id}, _JSON)


def _problem(exc: ContractSpecError, request_id: str, header: str, operation: str) -> Response:
    status = HTTP_STATUS.get(exc.code, 500)
    if status == 500:
        _log.error(
            "contractspec.http.internal_error",
            operation=operation,
            request_id=request_id,
            code=exc.code,
            exc_info=exc,
        )
        return _internal(request_id, header)
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
    retry_after = exc.details.get("retry_after_s")
    if status == 429 and isinstance(retry_after, int | float):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return Response(
        json.dumps(body, default=str, ensure_ascii=False).encode(),
        status,
        headers,
        _JSON,
    )


def routes(
    executor: Executor,
    *,
    authenticate: Authenticate | None = None,
    org_id: OrgResolver | None = None,
    headers: HeaderNames | None = None,
    openapi_url: str | None = "/openapi.json",
    title: str = "ContractSpec API",
) -> list[BaseRoute]:
    """Starlette routes for every operation of `executor.registry` (every registered version).

    Mount them into an existing app: `app.router.routes.extend(routes(executor))` (Starlette or
    FastAPI), or `Mount("/api", routes=routes(executor))`.

    Args:
        executor: Runs the operations (its registry decides the routes).
        authenticate: `authenticate(request) -> Actor | None`, sync or async; without it every
            caller is anonymous (only `public()` operations succeed). An exception it raises is a
            500 (logged, not revealed); return `None` for "not authenticated".
        org_id: `org_id(request, actor) -> str | None`, sync or async; without it the tenant comes
            from the `X-Org-Id` header (`headers.org_id`).
        headers: Header names (`HeaderNames()` defaults).
        openapi_url: Where the OpenAPI document is served; `None` to not serve it.
        title: `info.title` of the OpenAPI document.

    Returns:
        One `Route` per operation version, plus the OpenAPI route.
    """
    names = headers or HeaderNames()
    out: list[BaseRoute] = []
    for spec in executor.registry.operations():
        endpoint = _Endpoint(executor, spec, authenticate, org_id, names)
        method = "GET" if endpoint.is_query else "POST"
        out.append(
            Route(
                http_path(spec.name, spec.version),
                endpoint.handle,
                methods=[method],
                name=f"{spec.name}@{spec.version}",
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
                    executor.registry.to_ir(), title=title, headers=names
                )
            return JSONResponse(document)

        out.append(Route(openapi_url, openapi, methods=["GET"], include_in_schema=False))
    return out


def create_app(
    executor: Executor,
    *,
    authenticate: Authenticate | None = None,
    org_id: OrgResolver | None = None,
    headers: HeaderNames | None = None,
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
        SpecDefinitionError: A model of the registry has no JSON Schema.
    """
    return Starlette(
        debug=debug,
        routes=routes(
            executor,
            authenticate=authenticate,
            org_id=org_id,
            headers=headers,
            openapi_url=openapi_url,
            title=title,
        ),
        middleware=list(middleware or ()),
    )
