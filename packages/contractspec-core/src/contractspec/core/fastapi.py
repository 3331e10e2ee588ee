"""FastAPI as a host: spec operations as FastAPI routes, error handlers and a merged OpenAPI.

Install with `pip install 'contractspec-core[fastapi]'`.

```python
from fastapi import Depends, FastAPI
from contractspec.core import Actor, Executor
from contractspec.core.fastapi import contractspec_router, install
from contractspec.core.http import Principal

async def current_principal(user: User | None = Depends(get_current_user)) -> Principal | None:
    if user is None:
        return None  # anonymous: only public() operations succeed, the others answer 401
    return Principal(Actor.user(user.id, roles=user.roles), org_id=user.org_id)

app = FastAPI()
app.include_router(
    contractspec_router(Executor(registry, policy=policy), authenticate=current_principal),
    prefix="/api",
)
install(app)  # ContractSpecError -> status + {code, message, details}; specs in /openapi.json
```

The routes are real FastAPI routes (they show in `app.openapi()` and `/docs`) and run the very
pipeline of `contractspec.core.http`: same binding (`GET` with query parameters for queries,
`POST` with a JSON body for commands), same headers (`X-Request-Id`, `Idempotency-Key`,
`traceparent`), same statuses and error body, and every call goes through the executor (input
validation, policy, handler, outbox, audit). FastAPI does not validate the input a second time:
the spec's pydantic models do it once.

The tenant comes only from `authenticate`, a FastAPI dependency (it can itself depend on
`HTTPBearer`, a session cookie, your `get_current_user`) returning a `Principal` (actor and
tenant), an `Actor` (a call outside any tenant) or `None` (anonymous). No header or parameter
picks the tenant. Let it return `None` for a missing credential rather than raise: public
operations are served to anonymous callers, and non-public ones answer `401` with the error body.

`install(app)` adds the exception handlers (for app endpoints that call `executor.execute`
themselves) and merges the spec's component schemas, error responses and security scheme into
`app.openapi()`, so every `$ref` of the ContractSpec operations resolves.
"""

from __future__ import annotations

import copy
import re
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

try:
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.security.base import SecurityBase
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.core.fastapi needs FastAPI: pip install 'contractspec-core[fastapi]'"
    ) from exc

from contractspec.core._log import get_logger
from contractspec.core.codegen.openapi import (
    DEFAULT_SECURITY_SCHEMES,
    HEADER_MAX_LENGTH,
    HeaderNames,
    http_method,
    http_path,
    openapi_document,
)
from contractspec.core.errors import ConfigurationError, ContractSpecError
from contractspec.core.executor import Executor
from contractspec.core.http import (
    DEFAULT_MAX_BODY_BYTES,
    _challenge,
    _check_config,
    _Endpoint,
    _problem,
)
from contractspec.core.specs import OperationSpec

__all__ = [
    "OperationFilter",
    "SecurityScheme",
    "add_exception_handlers",
    "contractspec_router",
    "install",
    "merge_openapi",
]

#: Which operations a router serves: refs (`"crm.deal.create"` for every version,
#: `"crm.deal.create@1"` for one) or a predicate on the operation spec.
OperationFilter = Iterable[str] | Callable[[OperationSpec], bool]
#: The security scheme documented on non-public operations: a FastAPI security object
#: (`HTTPBearer()`, `APIKeyHeader(name="X-API-Key")`, `OAuth2PasswordBearer(...)`) or OpenAPI
#: Security Scheme Objects by name (`{"bearerAuth": {"type": "http", "scheme": "bearer"}}`).
SecurityScheme = SecurityBase | Mapping[str, Mapping[str, Any]]

_log = get_logger(__name__)

_SCHEMA_REF: Final = "#/components/schemas/"
_HEADER_VALUE: Final = re.compile(rf"[\x21-\x7e]{{1,{HEADER_MAX_LENGTH}}}")
# The private key of each route's `openapi_extra` that `merge_openapi` consumes: it names a
# `_RouteDoc` (kept out of the document itself, since FastAPI drops `None` values such as
# `"default": null` from everything it encodes).
_EXTRA: Final = "x-contractspec-openapi"
_MARK: Final = "__contractspec_openapi__"


class _RouteDoc:
    """What `merge_openapi` adds for one route: its operation, the component schemas it refers
    to and the security schemes. The route's endpoint holds it; `_DOCS` finds it by token."""

    __slots__ = ("__weakref__", "operation", "schemas", "security_schemes")

    def __init__(
        self, operation: dict[str, Any], schemas: dict[str, Any], security_schemes: dict[str, Any]
    ) -> None:
        self.operation = operation
        self.schemas = schemas
        self.security_schemes = security_schemes


_DOCS: Final[weakref.WeakValueDictionary[str, _RouteDoc]] = weakref.WeakValueDictionary()


def _schemes(security_scheme: SecurityScheme | None) -> dict[str, Any]:
    if security_scheme is None:
        security_scheme = DEFAULT_SECURITY_SCHEMES
    if isinstance(security_scheme, SecurityBase):
        model = security_scheme.model.model_dump(by_alias=True, exclude_none=True, mode="json")
        return {security_scheme.scheme_name: model}
    if isinstance(security_scheme, Mapping):
        out: dict[str, Any] = {}
        for name, scheme in security_scheme.items():
            if not isinstance(scheme, Mapping) or "type" not in scheme:
                raise ConfigurationError(
                    f"security_scheme[{name!r}] must be an OpenAPI Security Scheme Object with a "
                    f"'type' (e.g. {{'type': 'http', 'scheme': 'bearer'}}), got {scheme!r}"
                )
            out[str(name)] = _plain(scheme)
        return out
    raise ConfigurationError(
        "security_scheme must be a FastAPI security object (HTTPBearer(), APIKeyHeader(...)) or "
        f"a mapping of scheme name to OpenAPI Security Scheme Object, got "
        f"{type(security_scheme).__name__}"
    )


def _plain(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_plain(v) for v in node]
    return node


def _select(executor: Executor, operations: OperationFilter | None) -> list[OperationSpec]:
    specs = list(executor.registry.operations())
    if operations is None:
        return specs
    if callable(operations):
        return [spec for spec in specs if operations(spec)]
    if isinstance(operations, str):
        raise ConfigurationError(
            f"operations must be a list of operation names, got the string {operations!r}; "
            f"write operations=[{operations!r}]"
        )
    wanted = list(operations)
    chosen: list[OperationSpec] = []
    unknown: list[str] = []
    for ref in wanted:
        if not isinstance(ref, str):
            raise ConfigurationError(
                f"operations must hold operation names such as 'crm.deal.create@1', got {ref!r}"
            )
        name, _, version = ref.partition("@")
        found = [
            spec
            for spec in specs
            if spec.name == name and (not version or str(spec.version) == version)
        ]
        if not found:
            unknown.append(ref)
        chosen.extend(s for s in found if s not in chosen)
    if unknown:
        known = sorted({f"{s.name}@{s.version}" for s in specs})
        raise ConfigurationError(
            f"operations names {', '.join(unknown)}, which the executor's registry does not "
            f"have; register them or pick among: {', '.join(known[:10])}"
            + (f" and {len(known) - 10} more" if len(known) > 10 else ""),
            details={"unknown": unknown},
        )
    return chosen


def _refs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_SCHEMA_REF):
            out.add(ref.removeprefix(_SCHEMA_REF))
        for value in node.values():
            _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)


def _closure(operation: Mapping[str, Any], schemas: Mapping[str, Any]) -> dict[str, Any]:
    """The component schemas `operation` refers to, directly or through other components."""
    todo: set[str] = set()
    _refs(operation, todo)
    seen: dict[str, Any] = {}
    while todo:
        name = todo.pop()
        if name in seen or name not in schemas:
            continue
        seen[name] = schemas[name]
        _refs(schemas[name], todo)
    return seen


def contractspec_router(
    executor: Executor,
    *,
    authenticate: Callable[..., Any] | None = None,
    prefix: str = "",
    tags: Sequence[str] | None = None,
    operations: OperationFilter | None = None,
    security_scheme: SecurityScheme | None = None,
    headers: HeaderNames | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> APIRouter:
    """A FastAPI `APIRouter` serving the operations of `executor.registry` through the executor.

    Each operation version is one FastAPI route (`GET` for queries, `POST` for commands, at
    `prefix + /<name with dots as slashes>/v<version>`), so it appears in `app.openapi()` and
    `/docs`; call `install(app)` once to merge its schemas and error responses into the document.
    Requests run the pipeline of `contractspec.core.http.routes` (binding headers, body limit,
    error mapping), and every call goes through `executor.execute` (validation, policy, handler,
    outbox, audit, idempotency).

    Args:
        executor: Runs the operations.
        authenticate: A FastAPI dependency (a function FastAPI calls with its own dependencies,
            e.g. `def principal(user = Depends(get_current_user)) -> Principal | None`) returning
            `Principal(actor, org_id)`, an `Actor` (no tenant) or `None` (anonymous). The tenant
            comes only from it. Required unless every served operation is public. Prefer
            `async def` for a cheap lookup: FastAPI runs a plain `def` in its thread pool.
        prefix: Path prefix of every route (`"/api"`); `include_router(prefix=...)` adds to it.
        tags: OpenAPI tags of every route; default: the operation's domain (first name part).
        operations: Serve only these operations: names (`"crm.deal.create"`, every version),
            refs (`"crm.deal.create@1"`) or a predicate `f(spec) -> bool`. Default: all.
        security_scheme: The scheme documented on non-public operations: a FastAPI security
            object (`HTTPBearer()`) or `{name: Security Scheme Object}`. Default: an HTTP bearer
            scheme named `bearerAuth`. Its HTTP schemes also make the `WWW-Authenticate`
            header of `401` answers.
        headers: Header names of the binding (`HeaderNames()` defaults).
        max_body_bytes: Largest request body accepted, in bytes (default 1 MiB); larger ones
            answer `413 content_too_large` without being read.

    Returns:
        The router (include it with `app.include_router`).

    Raises:
        ConfigurationError: `authenticate` is missing while a served operation is not public,
            `operations` names an operation the registry does not have, `security_scheme` is
            not a security object or scheme mapping, or `max_body_bytes` is not a positive
            integer.
    """
    specs = _select(executor, operations)
    _check_config(executor, authenticate, None, False, max_body_bytes, specs)
    names = headers or HeaderNames()
    schemes = _schemes(security_scheme)
    challenge = _challenge(schemes)
    document = openapi_document(executor.registry.to_ir(), headers=names, security_schemes=schemes)
    components: dict[str, Any] = document["components"]["schemas"]
    router = APIRouter(prefix=prefix)
    for spec in specs:
        core = _Endpoint(
            executor,
            spec,
            authenticate=None,
            org_id=None,
            trust_org_header=False,
            headers=names,
            max_body=max_body_bytes,
            challenge=challenge,
        )
        kind = "command" if spec.is_command else "query"
        path = http_path(spec.name, spec.version)
        method = http_method(kind)
        operation = dict(document["paths"][path][method])
        route_tags = list(tags) if tags is not None else list(operation.pop("tags", []))
        operation.pop("tags", None)
        doc = _RouteDoc(operation, _closure(operation, components), schemes)
        token = uuid.uuid4().hex
        _DOCS[token] = doc
        endpoint = _endpoint(core, authenticate)
        setattr(endpoint, _MARK, doc)  # keeps the doc alive as long as the route
        router.add_api_route(
            path,
            endpoint,
            methods=[method.upper()],
            name=core.ref,
            operation_id=operation["operationId"],
            summary=operation.get("summary"),
            description=str(operation.get("description") or ""),
            tags=list(route_tags),
            deprecated=bool(operation.get("deprecated")) or None,
            response_model=None,
            response_class=Response,
            openapi_extra={**copy.deepcopy(operation), _EXTRA: token},
        )
    return router


def _endpoint(core: _Endpoint, authenticate: Callable[..., Any] | None) -> Callable[..., Any]:
    """The FastAPI endpoint of one operation: the dependency's caller, then the shared pipeline.

    The endpoint takes the raw `Request` (no body or query parameters), so FastAPI neither reads
    nor validates the input: the executor does, once.
    """
    checked: list[bool] = []

    def check_installed(request: Request) -> None:
        """Warn once when the app serving the route never had `install`/`merge_openapi`."""
        checked.append(True)
        app = request.scope.get("app")
        if isinstance(app, FastAPI) and not getattr(app.openapi, _MARK, False):
            _log.warning(
                "contractspec.fastapi.openapi_not_merged",
                operation=core.ref,
                advice="call contractspec.core.fastapi.install(app): without it the app's "
                "OpenAPI document refers to the spec's schemas without defining them",
            )

    if authenticate is None:

        async def anonymous(request: Request) -> Response:
            if not checked:
                check_installed(request)
            return await core.respond(request, None)

        return anonymous

    # FastAPI's dependency idiom; `Annotated[Any, Depends(...)]` cannot name a closure variable
    # under postponed annotations
    async def authenticated(
        request: Request,
        who: Any = Depends(authenticate),  # noqa: B008
    ) -> Response:
        if not checked:
            check_installed(request)
        return await core.respond(request, who)

    return authenticated


def _rename_refs(node: Any, mapping: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(_SCHEMA_REF):
                name = value.removeprefix(_SCHEMA_REF)
                out[key] = _SCHEMA_REF + mapping.get(name, name)
            else:
                out[key] = _rename_refs(value, mapping)
        return out
    if isinstance(node, list):
        return [_rename_refs(v, mapping) for v in node]
    return node


def _merge(document: dict[str, Any]) -> None:
    """Complete, in place, the operations of `contractspec_router` routes in `document`."""
    found: list[tuple[dict[str, Any], _RouteDoc]] = []
    for item in (document.get("paths") or {}).values():
        for entry in item.values():
            if isinstance(entry, dict) and _EXTRA in entry:
                doc = _DOCS.get(str(entry.pop(_EXTRA)))
                if doc is not None:
                    found.append((entry, doc))
    if not found:
        return
    components = document.setdefault("components", {})
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    ours: dict[str, Any] = {}
    security: dict[str, Any] = {}
    for _, doc in found:
        ours.update(doc.schemas)
        security.update(doc.security_schemes)
    # a name the app already uses for another schema: ours gets a suffix, and refs follow it
    mapping: dict[str, str] = {}
    for name in sorted(ours):
        if name in schemas and schemas[name] != ours[name]:
            fresh, i = f"{name}-ContractSpec", 2
            while fresh in schemas or fresh in ours:
                fresh, i = f"{name}-ContractSpec{i}", i + 1
            mapping[name] = fresh
    for name, schema in ours.items():
        schemas[mapping.get(name, name)] = _rename_refs(schema, mapping)
    if security:
        components["securitySchemes"] = {**(components.get("securitySchemes") or {}), **security}
    for entry, doc in found:
        operation = _rename_refs(doc.operation, mapping)
        # the spec's answers replace what FastAPI inferred from the dependency (its own
        # security, a 422 with FastAPI's validation body) and what openapi_extra appended
        entry["responses"] = operation["responses"]
        entry["security"] = operation.get("security", [])
        ours_params = operation.get("parameters", [])
        taken = {(p.get("name"), p.get("in")) for p in ours_params}
        inferred = [
            p
            for p in entry.get("parameters", [])[: -len(ours_params) or None]
            if (p.get("name"), p.get("in")) not in taken
        ]
        entry["parameters"] = inferred + ours_params
        if "requestBody" in operation:
            entry["requestBody"] = operation["requestBody"]
        entry["x-contractspec"] = operation["x-contractspec"]
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and name not in ours:
            _drop_if_unused(document, name)
    components["schemas"] = dict(sorted(schemas.items()))


def _drop_if_unused(document: dict[str, Any], name: str) -> None:
    """Remove FastAPI's validation schemas once no operation refers to them any more."""
    used: set[str] = set()
    _refs(document.get("paths", {}), used)
    schemas = document["components"]["schemas"]
    for other, schema in schemas.items():
        if other != name:
            _refs(schema, used)
    if name not in used:
        del schemas[name]


def merge_openapi(app: FastAPI) -> None:
    """Make `app.openapi()` describe the ContractSpec routes fully.

    FastAPI already lists the routes of `contractspec_router`; this adds the spec's component
    schemas (so the operations' `$ref`s resolve), their error responses (the `Problem` body) and
    the `security` of each operation with its security scheme. A schema name the app already
    uses for a different schema is suffixed (`Note-ContractSpec`). Call it after including the
    routers or before: the document is built on first use, from the routes present then.

    Args:
        app: The FastAPI application.
    """
    if getattr(app.openapi, _MARK, False):
        return
    original = app.openapi

    def openapi() -> dict[str, Any]:
        document = original()  # FastAPI's cached document: merging twice is a no-op
        _merge(document)
        return document

    setattr(openapi, _MARK, True)
    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented customisation


def add_exception_handlers(app: FastAPI, *, headers: HeaderNames | None = None) -> None:
    """Answer a `ContractSpecError` raised by any endpoint of `app` like the HTTP adapter does.

    For endpoints of your own that call `executor.execute(...)`: the error's `code` picks the
    status (`contractspec.core.errors.HTTP_STATUS`: `validation_error` 422, `policy_denied`
    403, `not_found` 404, `conflict` 409, ...) and the body is `{"code", "message", "details"}`;
    a `5xx` hides its cause (the body names the request id; the cause goes to the log). The
    `X-Request-Id` header is echoed (generated when absent or malformed).

    Args:
        app: The FastAPI application.
        headers: Header names (`HeaderNames()` defaults: `X-Request-Id`).
    """
    names = headers or HeaderNames()

    async def contractspec_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, ContractSpecError):  # pragma: no cover - registered for it only
            raise exc
        given = request.headers.get(names.request_id)
        request_id = given if given and _HEADER_VALUE.fullmatch(given) else uuid.uuid4().hex
        return _problem(exc, request_id, names.request_id, f"{request.method} {request.url.path}")

    app.add_exception_handler(ContractSpecError, contractspec_error)


def install(app: FastAPI, *, headers: HeaderNames | None = None) -> FastAPI:
    """`add_exception_handlers(app)` and `merge_openapi(app)`: FastAPI as a ContractSpec host.

    Args:
        app: The FastAPI application.
        headers: Header names (`HeaderNames()` defaults).

    Returns:
        `app`, for chaining.
    """
    add_exception_handlers(app, headers=headers)
    merge_openapi(app)
    return app
