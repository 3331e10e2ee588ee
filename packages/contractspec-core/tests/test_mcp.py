"""Serving operations as MCP tools, driven by the MCP SDK's own client.

Over stdio (a server process acting for an explicit caller, on a real SQLite file), over
streamable HTTP (uvicorn on a real socket, bearer tokens through the app's authenticator) and
in process: tools are the spec's, calls go through the executor (policy, tenancy, validation),
errors are clean tool errors, and registry changes reach clients.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from core_regen_app import POLICY, CreateNote, Note, build_notes_registry
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mcp import Client, types
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel
from starlette.requests import Request
from structlog.testing import capture_logs

from contractspec.core import (
    Actor,
    ConfigurationError,
    Executor,
    MemoryBackend,
    define_command,
    public,
)
from contractspec.core.context import Principal
from contractspec.core.ir import model_schema
from contractspec.core.mcp import IDEMPOTENCY_META_KEY, RESOURCE_ERROR, McpServer, mcp_server
from contractspec.core.sql import SqlBackend
from contractspec.core.testing import temporary_sql_engine

SERVER_SCRIPT = Path(__file__).parent / "mcp_notes_server.py"
WRITER = Principal(Actor.user("u1", roles="writer"), org_id="org-1")
#: bearer token -> caller, for the HTTP tests
SESSIONS = {
    "t-writer": WRITER,
    "t-reader": Principal(Actor.user("u2"), org_id="org-1"),
    "t-other": Principal(Actor.user("u9", roles="writer"), org_id="org-2"),
}
NOTE = {"id": "n-1", "title": "Call ACME", "priority": "high", "budget": "12.50", "tags": ["x"]}
#: codes a caller may see; anything else (or a traceback) is a leak
CALLER_CODES = {
    "validation_error",
    "policy_denied",
    "tenant_scope_required",
    "not_found",
    "unknown_operation",
    "conflict",
    "internal_error",
}


def bearer(request: Request) -> Principal | None:
    """Test identity: the bearer token's session, `None` without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return SESSIONS.get(token) if scheme.lower() == "bearer" else None


def error_of(result: types.CallToolResult) -> dict[str, Any]:
    """The `{code, message, details}` of a tool error (asserting it is one)."""
    assert result.is_error is True
    assert result.structured_content is None
    [content] = result.content
    assert isinstance(content, types.TextContent)
    assert "Traceback" not in content.text
    body: dict[str, Any] = json.loads(content.text)
    assert set(body) == {"code", "message", "details"}
    return body


def executor(backend: MemoryBackend | None = None) -> Executor:
    """The notes app with its role policy."""
    return Executor(build_notes_registry(), backend=backend or MemoryBackend(), policy=POLICY)


# -- tools from the spec (in process) ------------------------------------------------------------


async def test_tools_carry_the_specs_schemas_descriptions_and_hints() -> None:
    """Each operation is a tool named after it, with the IR's input schema (what the HTTP
    adapter publishes), the output serialization schema and hints derived from the kind."""
    server = mcp_server(executor(), caller=WRITER)
    async with Client(server.lowlevel) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert sorted(tools) == [
        "notes.debug.explode",
        "notes.debug.whoami",
        "notes.note.archive",
        "notes.note.create",
        "notes.note.get",
        "notes.note.search",
    ]
    create, search = tools["notes.note.create"], tools["notes.note.search"]
    assert create.input_schema == model_schema(CreateNote)
    assert create.output_schema == model_schema(Note, mode="serialization")
    assert create.description is not None
    assert create.description.startswith("Create a note.\n\nIds are unique per org.")
    assert "notes.note.create@1" in create.description
    assert "notes.write" in create.description
    assert create.annotations is not None
    assert search.annotations is not None
    assert (
        create.annotations.read_only_hint,
        create.annotations.idempotent_hint,
        create.annotations.destructive_hint,
    ) == (False, True, True)
    assert (
        search.annotations.read_only_hint,
        search.annotations.idempotent_hint,
        search.annotations.destructive_hint,
    ) == (True, True, False)
    archive = tools["notes.note.archive"].annotations
    assert archive is not None
    assert archive.idempotent_hint is False


async def test_selection_and_older_versions() -> None:
    """`operations=` picks tools (names, refs or a predicate); an older version is served as
    `<name>-v<N>` beside the latest; an unknown name is a ConfigurationError."""

    class Ping(BaseModel):
        n: int = 0

    registry = build_notes_registry()
    for version in (1, 2):
        spec = define_command("notes.ping.send", input=Ping, output=Ping, version=version)
        registry.register(spec)

        async def handle(inp: Ping, ctx: Any) -> Ping:
            return inp

        registry.bind(spec, handle)
    ex = Executor(registry, backend=MemoryBackend(), policy=POLICY)
    names = [t.name for t in mcp_server(ex, operations=["notes.ping.send"]).tools()]
    assert names == ["notes.ping.send", "notes.ping.send-v1"]
    assert [t.name for t in mcp_server(ex, operations=["notes.ping.send@1"]).tools()] == [
        "notes.ping.send"
    ]
    queries = mcp_server(ex, operations=lambda spec: not spec.is_command).tools()
    assert {t.name for t in queries} == {
        "notes.debug.whoami",
        "notes.note.get",
        "notes.note.search",
    }
    with pytest.raises(ConfigurationError, match=r"notes\.nope"):
        mcp_server(ex, operations=["notes.nope"])
    with pytest.raises(ConfigurationError, match="authenticate="):
        mcp_server(ex).streamable_http_app()


async def test_calls_run_through_the_executor_with_the_explicit_caller() -> None:
    """A call is validated, authorized and audited by the executor, in the caller's tenant;
    an idempotent command takes its key from `_meta`."""
    backend = MemoryBackend()
    server = mcp_server(executor(backend), caller=WRITER)
    async with Client(server.lowlevel) as client:
        meta = {IDEMPOTENCY_META_KEY: "k-1"}
        first = await client.call_tool("notes.note.create", NOTE, meta=meta)
        again = await client.call_tool("notes.note.create", NOTE, meta=meta)
        whoami = await client.call_tool("notes.debug.whoami", {})
    assert first.is_error is False
    assert first.structured_content == {**NOTE, "author_email": None}
    assert again.structured_content == first.structured_content  # replayed, not a conflict
    assert whoami.structured_content is not None
    assert whoami.structured_content["channel"] == "mcp"
    assert whoami.structured_content["org_id"] == "org-1"
    assert backend.events.names() == ["notes.note.created"]
    records = [r for r in backend.audit.records if r.action == "notes.note.create"]
    assert [r.outcome for r in records] == ["success", "replayed"]
    assert {(r.actor_id, r.org_id) for r in records} == {("u1", "org-1")}


async def test_server_errors_never_reveal_their_cause() -> None:
    """A handler that raises answers `internal_error` with a request id, not its message."""
    server = mcp_server(executor(), caller=WRITER)
    with capture_logs() as logs:
        async with Client(server.lowlevel) as client:
            body = error_of(await client.call_tool("notes.debug.explode", {}))
            again = error_of(await client.call_tool("notes.debug.explode", {}))
            unknown = error_of(await client.call_tool("notes.nope", {}))
    assert body["code"] == "internal_error"
    assert set(body["details"]) == {"request_id"}
    assert unknown["code"] == "unknown_operation"
    # the id the caller quotes is the one the log holds with the cause, fresh per call
    ids = [body["details"]["request_id"], again["details"]["request_id"]]
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)
    assert ids[0] != ids[1]
    logged = [e for e in logs if e["event"] == "contractspec.mcp.internal_error"]
    assert [e["request_id"] for e in logged] == ids
    assert all(e.get("exc_info") is not None for e in logged)


def test_missing_sdk_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the SDK, building a server names the extra to install."""
    import contractspec.core.mcp as module

    monkeypatch.setattr(module, "_MISSING", ImportError("No module named 'mcp'"))
    with pytest.raises(ConfigurationError, match=r"contractspec-core\[mcp\]"):
        mcp_server(executor())


async def test_tenancy_idempotency_and_audit_on_every_backend(
    backend_kind: str, tmp_path: Path
) -> None:
    """On memory, a SQLite file and PostgreSQL: two tenants create the same note id without
    seeing each other's, a repeated idempotent call is replayed, and each tenant's audit chain
    verifies."""
    async with AsyncExitStack() as stack:
        registry = build_notes_registry()
        backend: Any
        if backend_kind == "memory":
            backend = MemoryBackend()
        else:
            engine = await stack.enter_async_context(temporary_sql_engine(backend_kind, tmp_path))
            backend = SqlBackend(engine, registry)
            await backend.create_all()
        ex = Executor(registry, backend=backend, policy=POLICY)
        results: dict[str, list[Any]] = {}
        for token, title in (("t-writer", "Org one"), ("t-other", "Org two")):
            server = mcp_server(ex, caller=SESSIONS[token], resources=RESOURCES)
            async with Client(server.lowlevel) as client:
                meta = {IDEMPOTENCY_META_KEY: "same-key"}
                first = await client.call_tool(
                    "notes.note.create", {**NOTE, "title": title}, meta=meta
                )
                again = await client.call_tool(
                    "notes.note.create", {**NOTE, "title": title}, meta=meta
                )
                found = await client.call_tool("notes.note.search", {})
                read = await client.read_resource("contractspec://notes.note/n-1")
            results[token] = [first, again, found, read]
        for token, title in (("t-writer", "Org one"), ("t-other", "Org two")):
            first, again, found, read = results[token]
            assert first.is_error is False, first
            assert again.structured_content == first.structured_content
            assert [n["title"] for n in found.structured_content["notes"]] == [title]
            assert json.loads(read.contents[0].text)["title"] == title
        for org in ("org-1", "org-2"):
            assert await backend.audit.verify(org)


# -- entity resources -----------------------------------------------------------------------------

RESOURCES = {"notes.note": "notes.note.get"}


async def test_entities_are_resources_read_through_a_query_in_the_callers_tenant() -> None:
    """`contractspec://notes.note/<id>` reads the note through `notes.note.get` as the caller:
    the owner's tenant sees it, another tenant gets not_found, an anonymous caller is denied."""
    ex = executor()
    owner = mcp_server(ex, caller=WRITER, resources=RESOURCES)
    other = mcp_server(ex, caller=SESSIONS["t-other"], resources=RESOURCES)
    nobody = mcp_server(ex, resources=RESOURCES)
    uri = "contractspec://notes.note/n-1"
    async with Client(owner.lowlevel) as client:
        await client.call_tool("notes.note.create", NOTE)
        templates = (await client.list_resource_templates()).resource_templates
        read = await client.read_resource(uri)
    assert [t.uri_template for t in templates] == ["contractspec://notes.note/{id}"]
    [content] = read.contents
    assert isinstance(content, types.TextResourceContents)
    assert json.loads(content.text)["title"] == "Call ACME"
    async with Client(other.lowlevel) as client:
        with pytest.raises(MCPError) as missing:
            await client.read_resource(uri)
        with pytest.raises(MCPError) as unknown:
            await client.read_resource("contractspec://notes.secret/n-1")
    assert missing.value.error.data["code"] == "not_found"
    assert "Call ACME" not in str(missing.value.error)
    assert unknown.value.code == -32602
    async with Client(nobody.lowlevel) as client:
        with pytest.raises(MCPError) as denied:
            await client.read_resource(uri)
    assert denied.value.code == RESOURCE_ERROR
    assert denied.value.error.data["code"] == "policy_denied"
    with pytest.raises(ConfigurationError, match="query whose input has an `id`"):
        mcp_server(ex, resources={"notes.note": "notes.note.search"})
    with pytest.raises(ConfigurationError, match=r"notes\.nope"):
        mcp_server(ex, resources={"notes.nope": "notes.note.get"})


# -- registry changes -----------------------------------------------------------------------------


def _add_ping(server: McpServer) -> None:
    class Ping(BaseModel):
        n: int = 0

    spec = define_command("notes.ping.send", input=Ping, output=Ping, auth=public())

    async def handle(inp: Ping, ctx: Any) -> Ping:
        return inp

    server.executor.registry.register(spec)
    server.executor.registry.bind(spec, handle)


async def test_refresh_notifies_handshake_era_clients() -> None:
    """After the registry changes, `refresh()` sends notifications/tools/list_changed to a
    connected (legacy handshake) client and the new tool is listed and callable."""
    server = mcp_server(executor(), caller=WRITER)
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with Client(server.lowlevel, mode="legacy", message_handler=on_message) as client:
        await client.list_tools()
        assert await server.refresh() is False  # nothing changed: nothing sent
        _add_ping(server)
        assert await server.refresh() is True
        with anyio.fail_after(30):
            await changed.wait()
        names = [t.name for t in (await client.list_tools()).tools]
        result = await client.call_tool("notes.ping.send", {"n": 3})
    assert "notes.ping.send" in names
    assert result.structured_content == {"n": 3}


async def test_refresh_reaches_listen_streams() -> None:
    """A 2026-07-28 client listening for tool changes gets an event on `refresh()`."""
    server = mcp_server(executor(), caller=WRITER)
    async with Client(server.lowlevel) as client:
        async with client.listen(tools_list_changed=True) as subscription:
            _add_ping(server)
            assert await server.refresh() is True
            with anyio.fail_after(30):
                event = await subscription.__aiter__().__anext__()
        assert type(event).__name__ == "ToolsListChanged"
        assert "notes.ping.send" in [t.name for t in (await client.list_tools()).tools]


# -- fuzzing --------------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a JSON Schema (the subset pydantic emits), for the fuzzing below."""
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(s, defs) for s in schema[key]])
    kind = schema.get("type")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, defs) for k, v in props.items() if k in required},
            optional={k: from_schema(v, defs) for k, v in props.items() if k not in required},
        )
    if kind == "string":
        if "pattern" in schema:
            text = st.from_regex(schema["pattern"], fullmatch=True)
        else:
            text = st.text(min_size=schema.get("minLength", 0), max_size=30)
        return text.filter(lambda t: len(t) <= schema.get("maxLength", 10_000))
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(
            schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema.get("items", {}), defs)
        return st.lists(items, max_size=min(schema.get("maxItems", 4), 4))
    return _json


#: The served tools and their published input schemas (every tool but the one that crashes).
FUZZED = {t.name: t.input_schema for t in mcp_server(executor()).tools()}
FUZZED.pop("notes.debug.explode")


@st.composite
def tool_arguments(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A tool and arguments drawn from its input schema, then maybe broken: a field replaced
    by any JSON value, an extra key (a tenant among them), or everything random."""
    tool = draw(st.sampled_from(sorted(FUZZED)))
    schema = FUZZED[tool]
    arguments: dict[str, Any] = dict(draw(from_schema(schema, schema.get("$defs", {}))))
    how = draw(st.sampled_from(["valid", "field", "extra", "random"]))
    if how == "field" and arguments:
        arguments[draw(st.sampled_from(sorted(arguments)))] = draw(_json)
    elif how == "extra":
        arguments[draw(st.sampled_from(["org_id", "tenant", "actor", "x"]))] = draw(_json)
    elif how == "random":
        arguments = draw(st.dictionaries(st.text(max_size=6), _json, max_size=4))
    return tool, arguments


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(call=tool_arguments())
def test_fuzzed_arguments_give_clean_results_or_clean_tool_errors(
    call: tuple[str, dict[str, Any]],
) -> None:
    """Arguments drawn from each tool's published input schema (valid, a field of the wrong
    type, extra keys such as another tenant, or random): every answer is a result matching the
    output model or a clean caller error — never internal_error, never a traceback."""
    tool, arguments = call
    server = mcp_server(executor(), caller=WRITER)

    async def run() -> types.CallToolResult:
        async with Client(server.lowlevel) as client:
            return await client.call_tool(tool, arguments)

    result = anyio.run(run)
    if result.is_error:
        code = error_of(result)["code"]
        event(f"{tool}: {code}")
        assert code in CALLER_CODES - {"internal_error"}
    else:
        event(f"{tool}: ok")
        server.operation_of(tool).output.model_validate(result.structured_content)
        if isinstance(result.structured_content, dict) and "org_id" in result.structured_content:
            assert result.structured_content["org_id"] == "org-1"


# -- stdio (a real server process on a SQLite file) ----------------------------------------------


def _stdio(db: Path, *args: str) -> Client:
    params = StdioServerParameters(
        command=sys.executable, args=[str(SERVER_SCRIPT), "--sqlite", str(db), *args]
    )
    return Client(params, read_timeout_seconds=60)


async def test_stdio_server_process_on_sqlite(tmp_path: Path) -> None:
    """Over stdio: list, call, a validation error, a denied call; a second process acting for
    org-2 on the same SQLite file sees nothing of org-1, whatever its arguments say."""
    db = tmp_path / "notes.db"
    async with _stdio(db, "--actor", "u1", "--roles", "writer", "--org", "org-1") as client:
        names = [t.name for t in (await client.list_tools()).tools]
        created = await client.call_tool("notes.note.create", NOTE)
        invalid = error_of(await client.call_tool("notes.note.create", {**NOTE, "title": ""}))
        denied = error_of(await client.call_tool("notes.note.archive", {"id": "n-1"}))
    assert "notes.note.create" in names
    assert created.structured_content is not None
    assert created.structured_content["id"] == "n-1"
    assert invalid["code"] == "validation_error"
    assert invalid["details"]["errors"][0]["field"] == "title"
    assert denied["code"] == "policy_denied"
    async with _stdio(db, "--actor", "u9", "--roles", "writer", "--org", "org-2") as other:
        missing = error_of(
            await other.call_tool("notes.note.get", {"id": "n-1", "org_id": "org-1"})
        )
        found = await other.call_tool("notes.note.search", {"org_id": "org-1"})
        again = await other.call_tool("notes.note.create", NOTE)  # same id, other tenant
    assert missing["code"] == "not_found"
    assert found.structured_content == {"notes": [], "total": 0}
    assert again.is_error is False


# -- streamable HTTP (uvicorn on a real socket) --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a thread; yields the MCP endpoint's URL."""
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # uvicorn's own readiness flag
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start within 60 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def http_url() -> Iterator[tuple[str, MemoryBackend]]:
    """The notes app's MCP endpoint served by uvicorn in a thread; yields (url, backend)."""
    backend = MemoryBackend()
    app = mcp_server(executor(backend), authenticate=bearer, resources=RESOURCES)
    with _serve(app.streamable_http_app()) as url:
        yield url, backend


@asynccontextmanager
async def _http_client(url: str, token: str | None) -> AsyncIterator[Client]:
    """The SDK client over streamable HTTP, sending `token` as a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def test_streamable_http_authenticates_each_caller(
    http_url: tuple[str, MemoryBackend],
) -> None:
    """Over streamable HTTP the bearer token decides actor and tenant: the writer creates, a
    reader is denied, an anonymous caller is denied, org-2 sees nothing of org-1 even when its
    arguments name org-1, and validation errors are tool errors."""
    url, backend = http_url
    async with _http_client(url, "t-writer") as writer:
        assert "notes.note.create" in [t.name for t in (await writer.list_tools()).tools]
        created = await writer.call_tool("notes.note.create", NOTE)
        invalid = error_of(await writer.call_tool("notes.note.create", {**NOTE, "budget": "-1"}))
    assert created.structured_content is not None
    assert created.structured_content["id"] == "n-1"
    assert invalid["code"] == "validation_error"
    async with _http_client(url, "t-reader") as reader:
        denied = error_of(await reader.call_tool("notes.note.create", {**NOTE, "id": "n-2"}))
        seen = await reader.call_tool("notes.note.get", {"id": "n-1"})
    assert denied["code"] == "policy_denied"
    assert seen.structured_content is not None
    assert seen.structured_content["title"] == "Call ACME"
    async with _http_client(url, None) as anonymous:
        nobody = error_of(await anonymous.call_tool("notes.note.search", {}))
        whoami = await anonymous.call_tool("notes.debug.whoami", {})
    assert nobody["code"] == "policy_denied"
    assert whoami.structured_content is not None
    assert whoami.structured_content["actor_id"] == "anonymous"
    async with _http_client(url, "t-other") as other:
        missing = error_of(
            await other.call_tool("notes.note.get", {"id": "n-1", "org_id": "org-1"})
        )
        found = await other.call_tool("notes.note.search", {"org_id": "org-1"})
        with pytest.raises(MCPError) as unread:
            await other.read_resource("contractspec://notes.note/n-1")
    assert missing["code"] == "not_found"
    assert found.structured_content == {"notes": [], "total": 0}
    assert unread.value.error.data["code"] == "not_found"
    assert [e.org_id for e in backend.events.events] == ["org-1"]
    async with _http_client(url, "t-reader") as reader:
        read = await reader.read_resource("contractspec://notes.note/n-1")
    [content] = read.contents
    assert isinstance(content, types.TextResourceContents)
    assert json.loads(content.text)["id"] == "n-1"


async def test_require_authentication_answers_401_before_the_mcp_layer() -> None:
    """With `require_authentication=True` a request without a valid credential gets `401` and
    a Bearer challenge (no MCP session), while an authenticated client works as usual."""
    app = mcp_server(executor(), authenticate=bearer).streamable_http_app(
        require_authentication=True
    )
    with _serve(app) as url:
        async with httpx2.AsyncClient(timeout=60) as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            anonymous = await http.post(url, json=body)
            forged = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
        async with _http_client(url, "t-writer") as writer:
            created = await writer.call_tool("notes.note.create", NOTE)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["code"] == "unauthenticated"
    assert forged.status_code == 401
    assert created.is_error is False
    with pytest.raises(ConfigurationError, match="require_authentication"):
        mcp_server(executor(), operations=["notes.debug.whoami"]).streamable_http_app(
            require_authentication=True
        )


async def test_require_authentication_runs_the_authenticator_once_per_request() -> None:
    """The 401 middleware's caller is the one the tool call runs as: one authenticator call per
    HTTP request (not one in the middleware and another in the call), and each request is
    still authenticated on its own — two clients with different tokens keep their identities."""
    seen: list[str | None] = []

    def counting(request: Request) -> Principal | None:
        seen.append(request.headers.get("authorization"))
        return bearer(request)

    app = mcp_server(executor(), authenticate=counting).streamable_http_app(
        require_authentication=True
    )
    with _serve(app) as url:
        async with _http_client(url, "t-writer") as writer, _http_client(url, "t-other") as other:
            await writer.call_tool("notes.debug.whoami", {})  # sessions settled
            await other.call_tool("notes.debug.whoami", {})
            before = len(seen)
            mine = [await writer.call_tool("notes.debug.whoami", {}) for _ in range(3)]
            theirs = [await other.call_tool("notes.debug.whoami", {}) for _ in range(2)]
            created = await writer.call_tool("notes.note.create", NOTE)
            calls = len(seen) - before
    assert calls == 6  # six tool calls, six POSTs, one authentication each
    assert seen[before:] == ["Bearer t-writer"] * 3 + ["Bearer t-other"] * 2 + ["Bearer t-writer"]
    assert {(r.structured_content or {}).get("org_id") for r in mine} == {"org-1"}
    assert {(r.structured_content or {}).get("org_id") for r in theirs} == {"org-2"}
    assert created.is_error is False
