"""Serve spec operations to AI clients as MCP tools (install `contractspec-core[mcp]`).

```py
from contractspec.core import Actor, Executor, Principal
from contractspec.core.mcp import mcp_server
from contractspec.core.sync import run_sync

server = mcp_server(Executor(registry, policy=policy), authenticate=authenticate)
app = server.streamable_http_app()  # ASGI, at /mcp: uvicorn module:app
# or, for a local tool launched by the client, with an explicit caller:
run_sync(server.run_stdio(Principal(Actor.user("ana"), org_id="acme")))
```

Every chosen operation becomes one [Model Context Protocol](https://modelcontextprotocol.io)
tool, built from the spec alone:

* **name**: the operation name (`crm.deal.create`). Spec names are lowercase dotted words, which
  the MCP tool-name rule (`[A-Za-z0-9._-]{1,128}`, SEP-986) accepts as they are. The latest
  version takes the plain name; each older version served is `<name>-v<version>`
  (`crm.deal.create-v1`): a hyphen never occurs in a spec name, so no two tools collide.
* **description**: the spec's description (else the input model's docstring), then the kind,
  `name@version` and the authorization requirement.
* **inputSchema**: the input model's JSON Schema as the IR records it (`ir.model_schema`) —
  the schema the HTTP adapter publishes in its OpenAPI document.
* **outputSchema**: the output model's serialization schema; results carry it as
  `structuredContent` (and as JSON text, for clients that read only `content`).
* **annotations**: a query is `readOnlyHint: true, destructiveHint: false,
  idempotentHint: true`; a command is `readOnlyHint: false`, `idempotentHint` as the spec's
  `idempotent=`, and `destructiveHint: true` (the spec does not tell additive writes from
  destructive ones, so the tool says what the MCP default says). `openWorldHint` is `false`:
  the tool acts on the app's own data. Annotations are hints for clients, never a control:
  the executor's policy decides.

Calls go through `Executor.execute` — validation, policy, tenancy, idempotency, audit and
outbox as on every other channel (`CallContext.channel == "mcp"`). The caller comes from the
transport: over streamable HTTP, `authenticate(request)` (the same function the HTTP adapter
takes: it reads the bearer token or session and returns a `Principal`, an `Actor` or `None`);
over stdio (and an in-process client) the explicit caller given to `run_stdio` or
`mcp_server(caller=...)`. The tenant is always the caller's: a tool argument never chooses it.

A `ContractSpecError` becomes a tool error (`isError: true`) whose text is the JSON
`{"code", "message", "details"}` of `ContractSpecError.to_dict`; a server error (a code the HTTP
adapter answers with 5xx, or any other exception) says only `internal_error` and a request id,
the cause goes to the log. An idempotent command takes its key from the request's `_meta`
(`"contractspec/idempotencyKey"`).

Entities are readable as MCP resources when `resources={"crm.deal": "crm.deal.get"}` maps each
to a query taking `id`: `contractspec://crm.deal/<id>` (template `contractspec://crm.deal/{id}`)
runs that query as the caller, so the record comes from the caller's tenant only, under the
query's policy and audit. A refused read is a JSON-RPC error whose `data` is the
`{"code", "message", "details"}` of the error (`-32602` for not found or invalid, `RESOURCE_ERROR`
otherwise, `-32603` with only a request id for server errors).

When the app changes its registry, `await server.refresh()` rebuilds the tool list and, when
it changed, notifies connected clients: `notifications/tools/list_changed` on handshake-era
connections and a `ToolsListChanged` event on 2026-07-28 `subscriptions/listen` streams.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from contractspec.core._log import get_logger
from contractspec.core.context import ANONYMOUS, Actor, CallContext, Principal
from contractspec.core.errors import (
    HTTP_STATUS,
    ConfigurationError,
    ContractSpecError,
    UnknownOperationError,
)
from contractspec.core.executor import Executor
from contractspec.core.ir import model_schema
from contractspec.core.specs import OperationSpec

try:
    from mcp import types
    from mcp.server.lowlevel import NotificationOptions, Server
    from mcp.server.stdio import stdio_server
    from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
    from mcp.shared.exceptions import MCPError
    from mcp.types.version import MODERN_PROTOCOL_VERSIONS
except ImportError as _exc:  # pragma: no cover - exercised by the isolation session
    _MISSING: ImportError | None = _exc
else:
    _MISSING = None

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext
    from mcp.server.session import ServerSession
    from starlette.applications import Starlette
    from starlette.requests import Request

__all__ = [
    "IDEMPOTENCY_META_KEY",
    "RESOURCE_ERROR",
    "RESOURCE_SCHEME",
    "McpServer",
    "mcp_server",
    "tool_name",
]

_log = get_logger(__name__)

#: The `_meta` key of a `tools/call` request that carries the idempotency key of the call.
IDEMPOTENCY_META_KEY: Final = "contractspec/idempotencyKey"

#: `authenticate(request) -> Principal | Actor | None` (sync or async), as in `contractspec.core.http`.
Authenticate = Callable[
    ["Request"], "Principal | Actor | Awaitable[Principal | Actor | None] | None"
]
#: Which operations become tools: `None` (all), names or specs, or a predicate on the spec.
Selection = Iterable["str | OperationSpec"] | Callable[[OperationSpec], bool] | None

_INSTALL: Final = "pip install 'contractspec-core[mcp]'"
#: URI scheme of entity resources: `contractspec://<entity name>/<id>`.
RESOURCE_SCHEME: Final = "contractspec"
#: JSON-RPC error code of a refused resource read other than not found / invalid (those are
#: `-32602`, invalid params); its `data` is the error's `{"code", "message", "details"}`.
RESOURCE_ERROR: Final = -32010
_MAX_TOOL_NAME: Final = 128  # SEP-986
#: Key in the ASGI scope's `state` under which `_RequireCaller` leaves `(authenticate, caller)`.
_CALLER_STATE: Final = "contractspec.mcp.caller"
_INVALID_PARAMS: Final = -32602
_INTERNAL_ERROR: Final = -32603


def _request_id() -> str:
    """A fresh request id: 32 hex digits from the OS CSPRNG (`uuid4().hex` costs ~5x more)."""
    return os.urandom(16).hex()


def _require_sdk() -> None:
    if _MISSING is not None:
        raise ConfigurationError(
            f"contractspec.core.mcp needs the MCP SDK ({_MISSING}): {_INSTALL}",
            details={"missing": "mcp"},
        )


def tool_name(spec: OperationSpec, *, latest: bool) -> str:
    """The MCP tool name of `spec`: its name, or `<name>-v<version>` for an older version.

    Args:
        spec: The operation.
        latest: Whether `spec` is the latest registered version of its name.

    Returns:
        A name matching `[A-Za-z0-9._-]{1,128}` (operation names are dotted lowercase words).
    """
    return spec.name if latest else f"{spec.name}-v{spec.version}"


def _description(spec: OperationSpec) -> str:
    text = (spec.description or inspect.getdoc(spec.input) or "").strip()
    kind = "Command" if spec.is_command else "Query (read-only)"
    tail = f"{kind} {spec.name}@{spec.version}; authorization: {spec.auth.describe()}."
    return f"{text}\n\n{tail}" if text else tail


def _annotations(spec: OperationSpec) -> types.ToolAnnotations:
    if spec.is_command:
        return types.ToolAnnotations(
            title=spec.name,
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=spec.idempotent,
            open_world_hint=False,
        )
    return types.ToolAnnotations(
        title=spec.name,
        read_only_hint=True,
        destructive_hint=False,
        idempotent_hint=True,
        open_world_hint=False,
    )


def _object_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """MCP wants `type: object` at the root of input and output schemas."""
    if schema.get("type") != "object":
        schema = {**schema, "type": "object"}
    return schema


def _tool(spec: OperationSpec, name: str) -> types.Tool:
    return types.Tool(
        name=name,
        title=spec.name,
        description=_description(spec),
        input_schema=_object_schema(model_schema(spec.input)),
        output_schema=_object_schema(model_schema(spec.output, mode="serialization")),
        annotations=_annotations(spec),
    )


def _select(specs: list[OperationSpec], operations: Selection) -> list[OperationSpec]:
    if operations is None:
        return specs
    if callable(operations):
        return [s for s in specs if operations(s)]
    wanted: set[str] = set()
    for item in operations:
        if isinstance(item, OperationSpec):
            wanted.add(item.ref)
        elif isinstance(item, str):
            wanted.add(item)
        else:
            raise ConfigurationError(
                "operations must hold operation names or OperationSpec objects, got "
                f"{type(item).__name__}; pass e.g. operations=['crm.deal.create']"
            )
    known = {s.name for s in specs} | {s.ref for s in specs}
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigurationError(
            f"operations names {', '.join(unknown)}, which the registry does not have; "
            "register them or remove them from operations=",
            details={"unknown": unknown},
        )
    return [s for s in specs if s.name in wanted or s.ref in wanted]


def _error_result(body: Mapping[str, Any]) -> types.CallToolResult:
    text = json.dumps(body, default=str, ensure_ascii=False)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        is_error=True,
    )


def _internal(request_id: str) -> types.CallToolResult:
    return _error_result(
        {
            "code": "internal_error",
            "message": f"internal error; quote request id {request_id} to the operator",
            "details": {"request_id": request_id},
        }
    )


def _internal_error(request_id: str) -> MCPError:
    message = f"internal error; quote request id {request_id} to the operator"
    return MCPError(
        _INTERNAL_ERROR,
        message,
        data={"code": "internal_error", "message": message, "details": {"request_id": request_id}},
    )


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _caller_of(who: object) -> tuple[Actor, str | None]:
    if who is None:
        return ANONYMOUS, None
    if isinstance(who, Principal):
        return who.actor, who.org_id
    if isinstance(who, Actor):
        return who, None
    raise ConfigurationError(
        f"the MCP caller must be a Principal, an Actor or None, got {type(who).__name__}"
    )


class McpServer:
    """An MCP server whose tools are the chosen operations of an executor's registry.

    Build it with `mcp_server`. The underlying SDK server is `lowlevel` (an
    `mcp.server.lowlevel.Server`): connect the SDK's in-process client to it in tests
    (`mcp.Client(server.lowlevel)`), or serve it with `streamable_http_app` / `run_stdio`.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        operations: Selection = None,
        authenticate: Authenticate | None = None,
        caller: Principal | Actor | None = None,
        resources: Mapping[str, str] | None = None,
        name: str = "contractspec",
        version: str = "",
        instructions: str | None = None,
    ) -> None:
        _require_sdk()
        _caller_of(caller)  # refuse a wrong type now
        self.executor = executor
        self.operations = operations
        self.authenticate = authenticate
        self.caller = caller
        self._tools: list[types.Tool] = []
        self._by_tool: dict[str, OperationSpec] = {}
        self._tool_by_name: dict[str, types.Tool] = {}
        self._bus = InMemorySubscriptionBus()
        # handshake-era connections that may receive notifications/tools/list_changed
        self._sessions: dict[int, ServerSession] = {}
        self._build()
        self._resources = self._check_resources(resources or {})
        self.lowlevel: Server[Any] = Server(
            name,
            version=version,
            instructions=instructions,
            get_tool_input_schema=self._input_schema,
            on_list_tools=self._on_list_tools,
            on_call_tool=self._on_call_tool,
            on_subscriptions_listen=ListenHandler(self._bus),
            on_list_resources=self._on_list_resources if self._resources else None,
            on_list_resource_templates=self._on_list_templates if self._resources else None,
            on_read_resource=self._on_read_resource if self._resources else None,
        )

    # -- tools ---------------------------------------------------------------------------------

    def _build(self) -> bool:
        """Rebuild the tool list from the registry; whether it changed."""
        registry = self.executor.registry
        chosen = _select(registry.operations(), self.operations)
        latest: dict[str, int] = {}
        for spec in chosen:
            latest[spec.name] = max(latest.get(spec.name, 0), spec.version)
        by_tool: dict[str, OperationSpec] = {}
        tools: list[types.Tool] = []
        for spec in sorted(chosen, key=lambda s: (s.name, -s.version)):
            name = tool_name(spec, latest=spec.version == latest[spec.name])
            if len(name) > _MAX_TOOL_NAME:
                raise ConfigurationError(
                    f"operation {spec.ref} gives the tool name {name!r}, longer than MCP's "
                    f"{_MAX_TOOL_NAME} characters; leave it out with operations= or rename it",
                    details={"operation": spec.ref},
                )
            by_tool[name] = spec
            tools.append(_tool(spec, name))
        changed = [t.model_dump() for t in tools] != [t.model_dump() for t in self._tools]
        self._tools, self._by_tool = tools, by_tool
        self._tool_by_name = {t.name: t for t in tools}
        return changed

    def _input_schema(self, tool: str) -> Mapping[str, Any] | None:
        # what the SDK checks `Mcp-Param-*` headers against (else it lists every tool per call)
        item = self._tool_by_name.get(tool)
        return None if item is None else item.input_schema

    def tools(self) -> list[types.Tool]:
        """The served tools (a copy), in name order (latest version first)."""
        return list(self._tools)

    def operation_of(self, tool: str) -> OperationSpec:
        """The operation version behind the tool named `tool`.

        Raises:
            UnknownOperationError: No served tool has that name.
        """
        spec = self._by_tool.get(tool)
        if spec is None:
            raise UnknownOperationError(
                f"no tool named {tool!r}; list the tools (tools/list) for the names served",
                details={"tool": tool},
            )
        return spec

    async def refresh(self) -> bool:
        """Rebuild the tools from the registry and notify connected clients when they changed.

        Call it after the app registers or replaces operations. Handshake-era clients get
        `notifications/tools/list_changed`; 2026-07-28 clients listening with
        `tools_list_changed=True` get a `ToolsListChanged` event.

        Returns:
            Whether the tool list changed (nothing is sent otherwise).

        Raises:
            ConfigurationError: `operations=` names an operation the registry no longer has.
        """
        if not self._build():
            return False
        await self._bus.publish(ToolsListChanged())
        for key, session in list(self._sessions.items()):
            try:
                await session.send_tool_list_changed()
            except Exception:  # a closed connection: forget it
                self._sessions.pop(key, None)
        return True

    def _remember(self, ctx: ServerRequestContext[Any, Any]) -> None:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return  # 2026-07-28 clients listen with subscriptions/listen instead
        session = ctx.session
        connection = getattr(session, "_connection", session)
        key = id(connection)
        if key not in self._sessions:
            if len(self._sessions) >= 1024:  # bounded: the oldest is dropped
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[key] = session

    async def _on_list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        self._remember(ctx)
        return types.ListToolsResult(tools=list(self._tools))

    # -- calls ---------------------------------------------------------------------------------

    async def _principal(self, ctx: ServerRequestContext[Any, Any]) -> tuple[Actor, str | None]:
        request = ctx.request
        if request is not None and self.authenticate is not None:
            # `require_authentication` already ran this authenticator on this very HTTP request
            cached = request.scope.get("state", {}).get(_CALLER_STATE)
            if cached is not None and cached[0] is self.authenticate:
                return _caller_of(cached[1])
            return _caller_of(await _maybe_await(self.authenticate(request)))
        if request is not None:
            # an HTTP call without an authenticator is anonymous: never the stdio caller
            return ANONYMOUS, None
        return _caller_of(self.caller)

    async def _on_call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        request_id = _request_id()
        arguments = params.arguments or {}
        try:
            spec = self.operation_of(params.name)
            actor, org = await self._principal(ctx)
            key = None
            meta: Any = params.meta
            if spec.idempotent and isinstance(meta, Mapping):
                raw_key = meta.get(IDEMPOTENCY_META_KEY)
                key = str(raw_key) if raw_key is not None else None
            call = CallContext(
                actor=actor,
                org_id=org,
                request_id=request_id,
                idempotency_key=key,
                channel="mcp",
            )
            output = await self.executor.execute(
                spec.name, dict(arguments), call, version=spec.version
            )
        except ContractSpecError as exc:
            status = HTTP_STATUS.get(exc.code, 500)
            if status >= 500 and status != 504:
                _log.error(
                    "contractspec.mcp.internal_error",
                    tool=params.name,
                    request_id=request_id,
                    code=exc.code,
                    exc_info=exc,
                )
                return _internal(request_id)
            return _error_result(exc.to_dict())
        except Exception as exc:  # a hook or the authenticator failed: never leak it
            _log.error(
                "contractspec.mcp.call_failed",
                tool=params.name,
                request_id=request_id,
                exc_info=exc,
            )
            return _internal(request_id)
        structured = output.model_dump(mode="json")
        text = output.__pydantic_serializer__.to_json(output).decode()
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)],
            structured_content=structured,
            is_error=False,
        )

    # -- entity resources ----------------------------------------------------------------------

    def _check_resources(self, resources: Mapping[str, str]) -> dict[str, OperationSpec]:
        registry = self.executor.registry
        out: dict[str, OperationSpec] = {}
        for entity, query in resources.items():
            try:
                registry.get_entity(entity)
                spec = registry.get(query)
            except ContractSpecError as exc:
                raise ConfigurationError(
                    f"resources[{entity!r}] = {query!r}: {exc.message}",
                    details={"entity": entity, "query": query},
                ) from exc
            if spec.is_command or "id" not in spec.input.model_fields:
                raise ConfigurationError(
                    f"resources[{entity!r}] = {query!r} must name a query whose input has an "
                    f"`id` field (it reads one {entity} by id); {spec.ref} is "
                    f"{'a command' if spec.is_command else 'a query without `id`'}",
                    details={"entity": entity, "query": query},
                )
            out[entity] = spec
        return out

    def resource_templates(self) -> list[types.ResourceTemplate]:
        """The served resource templates: `contractspec://<entity>/{id}` per entity."""
        registry = self.executor.registry
        templates: list[types.ResourceTemplate] = []
        for entity, spec in sorted(self._resources.items()):
            described = registry.get_entity(entity).description
            templates.append(
                types.ResourceTemplate(
                    name=entity,
                    title=entity,
                    uri_template=f"{RESOURCE_SCHEME}://{entity}/{{id}}",
                    description=(
                        f"{described + ' ' if described else ''}One {entity} of the caller's "
                        f"tenant, read through {spec.ref}."
                    ),
                    mime_type="application/json",
                )
            )
        return templates

    async def _on_list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=[])  # records are reached by template

    async def _on_list_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=self.resource_templates())

    async def _on_read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        request_id = _request_id()
        prefix = f"{RESOURCE_SCHEME}://"
        entity, _, record_id = uri.removeprefix(prefix).partition("/")
        spec = self._resources.get(entity) if uri.startswith(prefix) else None
        if spec is None or not record_id:
            known = ", ".join(f"{prefix}{e}/<id>" for e in sorted(self._resources))
            raise MCPError(
                _INVALID_PARAMS,
                f"unknown resource {uri!r}; this server serves {known}",
                data={
                    "code": "not_found",
                    "message": f"unknown resource {uri!r}",
                    "details": {"uri": uri},
                },
            )
        try:
            actor, org = await self._principal(ctx)
            call = CallContext(actor=actor, org_id=org, request_id=request_id, channel="mcp")
            output = await self.executor.execute(
                spec.name, {"id": record_id}, call, version=spec.version
            )
        except ContractSpecError as exc:
            status = HTTP_STATUS.get(exc.code, 500)
            if status >= 500 and status != 504:
                _log.error(
                    "contractspec.mcp.internal_error",
                    resource=uri,
                    request_id=request_id,
                    code=exc.code,
                    exc_info=exc,
                )
                raise _internal_error(request_id) from None
            code = _INVALID_PARAMS if status in (400, 404, 422) else RESOURCE_ERROR
            raise MCPError(code, exc.message, data=exc.to_dict()) from None
        except Exception as exc:
            _log.error(
                "contractspec.mcp.read_failed", resource=uri, request_id=request_id, exc_info=exc
            )
            raise _internal_error(request_id) from None
        text = output.__pydantic_serializer__.to_json(output).decode()
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=text)]
        )

    # -- transports ----------------------------------------------------------------------------

    def initialization_options(self) -> Any:
        """The SDK's initialization options (tools with `listChanged: true`)."""
        return self.lowlevel.create_initialization_options(NotificationOptions(tools_changed=True))

    async def run_stdio(self, caller: Principal | Actor | None = None) -> None:
        """Serve over this process's stdin and stdout until the client closes them.

        Args:
            caller: Who every call acts as, and in which tenant (a `Principal`); defaults to
                `caller=` of `mcp_server`. A local tool has no credential to check: the process
                that launches the server decides who it acts for.
        """
        if caller is not None:
            _caller_of(caller)
            self.caller = caller
        async with stdio_server() as (read_stream, write_stream):
            await self.lowlevel.run(read_stream, write_stream, self.initialization_options())

    def streamable_http_app(
        self,
        *,
        path: str = "/mcp",
        stateless: bool = False,
        json_response: bool = False,
        require_authentication: bool = False,
        **options: Any,
    ) -> Starlette:
        """An ASGI (Starlette) application serving the tools over streamable HTTP at `path`.

        Each call is authenticated by `authenticate(request)` on its own HTTP request. Run it
        with any ASGI server (`uvicorn module:app`); its lifespan starts the SDK's session
        manager, so mount it with its lifespan.

        Args:
            path: The endpoint path.
            stateless: No MCP sessions (each request stands alone; no server notifications).
            json_response: Answer with JSON instead of an SSE stream.
            require_authentication: Answer `401` with `WWW-Authenticate: Bearer` to every HTTP
                request whose `authenticate(request)` returns `None`, before the MCP layer (as
                the MCP authorization spec expects of a protected server, so clients start
                their sign-in). The caller it found is the one the request's tool call runs
                as (the authenticator runs once per request, not twice). Without it anonymous
                clients connect, list tools and call the `public()` ones; the others are denied
                per call.
            **options: Other options of the SDK's `Server.streamable_http_app` (`host`,
                `transport_security`, `max_request_body_size`, ...).

        Raises:
            ConfigurationError: No `authenticate` while some served operation is not public
                (or while `require_authentication` is set).
        """
        if require_authentication and self.authenticate is None:
            raise ConfigurationError(
                "require_authentication=True needs authenticate=<function of the request>"
            )
        guarded = sorted({s.ref for s in self._by_tool.values() if s.auth.needs_actor})
        if self.authenticate is None and guarded:
            raise ConfigurationError(
                f"the MCP HTTP app needs authenticate=: {', '.join(guarded[:3])} "
                f"{'and more ' if len(guarded) > 3 else ''}are not public, and without an "
                "authenticator every caller is anonymous. Pass authenticate=<function of the "
                "request> returning Principal(actor, org_id=...), an Actor, or None",
                details={"operations": guarded},
            )
        app = self.lowlevel.streamable_http_app(
            streamable_http_path=path,
            stateless_http=stateless,
            json_response=json_response,
            **options,
        )
        if require_authentication and self.authenticate is not None:
            app.add_middleware(_RequireCaller, authenticate=self.authenticate)
        return app


class _RequireCaller:
    """ASGI middleware: `401` for an HTTP request whose authenticator returns `None`."""

    def __init__(self, app: Any, *, authenticate: Authenticate) -> None:
        self.app = app
        self.authenticate = authenticate

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import JSONResponse

        try:
            who = await _maybe_await(self.authenticate(Request(scope)))
        except Exception as exc:  # never leak the authenticator's failure
            request_id = _request_id()
            _log.error("contractspec.mcp.authenticate_failed", request_id=request_id, exc_info=exc)
            message = f"internal error; quote request id {request_id} to the operator"
            body = {
                "code": "internal_error",
                "message": message,
                "details": {"request_id": request_id},
            }
            await JSONResponse(body, 500)(scope, receive, send)
            return
        if who is None:
            body = {
                "code": "unauthenticated",
                "message": "this MCP server needs a credential: send Authorization: Bearer <token>",
                "details": {},
            }
            headers = {"WWW-Authenticate": "Bearer"}
            await JSONResponse(body, 401, headers=headers)(scope, receive, send)
            return
        # the tool call on this request reuses the caller instead of authenticating twice
        scope.setdefault("state", {})[_CALLER_STATE] = (self.authenticate, who)
        await self.app(scope, receive, send)


def mcp_server(
    executor: Executor,
    *,
    operations: Selection = None,
    authenticate: Authenticate | None = None,
    caller: Principal | Actor | None = None,
    resources: Mapping[str, str] | None = None,
    name: str = "contractspec",
    version: str = "",
    instructions: str | None = None,
) -> McpServer:
    """An MCP server exposing operations of `executor.registry` as tools.

    Args:
        executor: Runs every call (validation, policy, tenancy, idempotency, audit, outbox).
        operations: Which operations become tools: `None` for all (every registered version),
            an iterable of names (`"crm.deal.create"`: every version) or refs
            (`"crm.deal.create@2"`) or `OperationSpec`s, or a predicate
            `f(spec) -> bool`.
        authenticate: For streamable HTTP: `authenticate(request) -> Principal | Actor | None`,
            sync or async, as `contractspec.core.http.create_app` takes it. `None` means every
            HTTP caller is anonymous (only `public()` operations succeed).
        caller: Who calls over stdio and in-process connections (a `Principal` with its tenant,
            an `Actor`, or `None` for anonymous); `run_stdio(caller)` may set it instead.
        resources: Entities readable as MCP resources, `{entity name: query name}`: the
            resource `contractspec://<entity>/<id>` is read by running that query with
            `{"id": <id>}` as the caller (so its policy, tenancy and audit apply; a record of
            another tenant is not found). The query's output is the resource's JSON.
        name: The server name announced to clients.
        version: The server version announced to clients.
        instructions: Instructions announced to clients (how to use the tools).

    Returns:
        The server; serve it with `run_stdio` or `streamable_http_app`.

    Raises:
        ConfigurationError: The MCP SDK is not installed (`pip install
            'contractspec-core[mcp]'`), `operations` names an unknown operation, `caller` is
            not a `Principal`, an `Actor` or `None`, or `resources` maps an unknown entity or
            an operation that is not a query taking `id`.
        SpecDefinitionError: A model of a chosen operation has no JSON Schema.
    """
    return McpServer(
        executor,
        operations=operations,
        authenticate=authenticate,
        caller=caller,
        resources=resources,
        name=name,
        version=version,
        instructions=instructions,
    )
