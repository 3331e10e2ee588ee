"""FastAPI as a host: `contractspec_router`, `install` (error handlers, merged OpenAPI), codegen.

Memory-backed apps are driven with FastAPI's `TestClient`; apps on a real SQLite file or the
PostgreSQL server with an in-process `httpx.AsyncClient` (the async engine lives on the test's
event loop, which `TestClient`'s own thread cannot share).
"""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import structlog.testing
from core_regen_app import POLICY, build_notes_registry
from fastapi import Depends, FastAPI
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from pydantic import create_model

from contractspec.core import (
    ANONYMOUS,
    Actor,
    ApprovalRequiredError,
    Backend,
    CallContext,
    ConfigurationError,
    ConflictError,
    ContractSpecError,
    Executor,
    HandlerContractError,
    IdempotencyConflictError,
    MemoryBackend,
    NotFoundError,
    OperationTimeoutError,
    PolicyDeniedError,
    RateLimitedError,
    SpecValidationError,
    TenantScopeError,
)
from contractspec.core.codegen import generate, openapi_document
from contractspec.core.errors import HTTP_STATUS
from contractspec.core.fastapi import add_exception_handlers, contractspec_router, install
from contractspec.core.http import Principal, create_app
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine

#: The server's sessions: bearer token -> who calls, in which org.
SESSIONS = {
    "t-writer": Principal(Actor.user("u1", roles="writer"), org_id="org-1"),
    "t-reader": Principal(Actor.user("u2"), org_id="org-1"),
    "t-other": Principal(Actor.user("u3", roles="writer"), org_id="org-2"),
}
WRITER = {"Authorization": "Bearer t-writer"}
READER = {"Authorization": "Bearer t-reader"}
OTHER = {"Authorization": "Bearer t-other"}
NOTE = {"id": "n-1", "title": "Call ACME", "priority": "high", "budget": "12.50", "tags": ["a"]}

bearer = HTTPBearer(auto_error=False)

#: An app model whose schema name clashes with the spec's `Note`.
AppNote = create_model("Note", body=(str, ...))


def current_principal(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008 - FastAPI
) -> Principal | None:
    """The app's own authenticator, a FastAPI dependency: the bearer token's session or None."""
    return SESSIONS.get(credentials.credentials) if credentials is not None else None


def notes_executor(backend: Backend | None = None) -> Executor:
    """The notes app on `backend` (memory by default) with the role policy."""
    return Executor(
        build_notes_registry(),
        backend=backend or MemoryBackend(),
        policy=POLICY,
        clock=FakeClock(),
        ids=SequentialIds(),
    )


def fastapi_app(executor: Executor, **options: Any) -> FastAPI:
    """A FastAPI app hosting the notes operations under `/api`, with `install` applied."""
    app = FastAPI(title="Notes host")
    options.setdefault("security_scheme", bearer)
    app.include_router(
        contractspec_router(executor, authenticate=current_principal, **options), prefix="/api"
    )
    return install(app)


@pytest.fixture
def client() -> Iterator[TestClient]:
    """A TestClient of the FastAPI host on a fresh in-memory backend."""
    with TestClient(fastapi_app(notes_executor())) as http:
        yield http


def _refs(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            out.add(node["$ref"])
        for value in node.values():
            _refs(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs(value, out)
    return out


# -- OpenAPI and /docs --------------------------------------------------------------------------


def test_routes_are_in_openapi_with_spec_schemas(client: TestClient) -> None:
    """Every operation is a FastAPI route of /openapi.json, described by the spec's schemas."""
    document = client.get("/openapi.json").json()
    spec = openapi_document(build_notes_registry().to_ir(), security_schemes={})
    assert sorted(document["paths"]) == sorted("/api" + path for path in spec["paths"])
    create = document["paths"]["/api/notes/note/create/v1"]["post"]
    assert create["operationId"] == "notes_note_create_v1"
    assert create["tags"] == ["notes"]
    assert create["requestBody"] == spec["paths"]["/notes/note/create/v1"]["post"]["requestBody"]
    schemas = document["components"]["schemas"]
    for name in ("CreateNote", "Note", "NoteList", "Priority", "Problem"):
        assert schemas[name] == spec["components"]["schemas"][name]
    assert "HTTPValidationError" not in schemas  # FastAPI validates nothing here: the spec does
    search = document["paths"]["/api/notes/note/search/v1"]["get"]
    assert [p["name"] for p in search["parameters"] if p["in"] == "query"] == [
        "limit",
        "priority",
        "tags",
    ]
    for ref in _refs(document["paths"], set()):
        assert ref.removeprefix("#/components/schemas/") in schemas, ref


def test_error_responses_and_security_per_operation(client: TestClient) -> None:
    """Each operation documents its error statuses with the Problem body, and its security."""
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    create = paths["/api/notes/note/create/v1"]["post"]
    whoami = paths["/api/notes/debug/whoami/v1"]["get"]
    search = paths["/api/notes/note/search/v1"]["get"]
    assert sorted(create["responses"]) == [
        "200", "202", "400", "401", "403", "404", "409", "413", "422", "429", "500", "504",
    ]  # fmt: skip
    assert sorted(whoami["responses"]) == ["200", "202", "400", "403", "404", "422", "429", "500", "504"]  # fmt: skip
    assert "409" not in search["responses"]
    assert "401" in search["responses"]
    problem = {"$ref": "#/components/schemas/Problem"}
    assert create["responses"]["403"]["content"]["application/json"]["schema"] == problem
    assert create["security"] == [{"HTTPBearer": []}]
    assert whoami["security"] == []
    assert document["components"]["securitySchemes"] == {
        "HTTPBearer": {"type": "http", "scheme": "bearer"}
    }
    headers = [p["name"] for p in create["parameters"] if p["in"] == "header"]
    assert headers == ["X-Request-Id", "Idempotency-Key"]  # no tenant header: it is not read


def test_docs_page_serves(client: TestClient) -> None:
    """`/docs` (Swagger UI) serves and points at the merged document."""
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/openapi.json" in page.text
    assert "swagger-ui" in page.text


def test_an_app_schema_of_the_same_name_is_kept(client: TestClient) -> None:
    """The app's own `Note` schema stays; the spec's one is renamed and its refs follow."""

    app = FastAPI()

    @app.get("/mine", response_model=AppNote)
    def mine() -> Any:
        return AppNote(body="x")

    app.include_router(contractspec_router(notes_executor(), authenticate=current_principal))
    install(app)
    document = app.openapi()
    schemas = document["components"]["schemas"]
    assert schemas["Note"]["properties"] == {"body": {"title": "Body", "type": "string"}}
    spec = openapi_document(build_notes_registry().to_ir())["components"]["schemas"]
    assert schemas["Note-ContractSpec"] == spec["Note"]
    ok = document["paths"]["/notes/note/create/v1"]["post"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Note-ContractSpec"
    }
    assert app.openapi() is document  # merged once, then FastAPI's cache


def test_a_route_served_without_install_warns_once() -> None:
    """The first call of a route whose app never ran `install` logs a warning naming the fix."""
    bare = FastAPI()
    bare.include_router(contractspec_router(notes_executor(), operations=["notes.debug.whoami"]))
    installed = fastapi_app(notes_executor())
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert TestClient(bare).get("/notes/debug/whoami/v1").status_code == 200
            assert TestClient(installed).get("/api/notes/debug/whoami/v1").status_code == 200
    warnings = [e for e in logs if e["event"] == "contractspec.fastapi.openapi_not_merged"]
    assert len(warnings) == 1
    assert warnings[0]["operation"] == "notes.debug.whoami@1"
    assert "install(app)" in warnings[0]["advice"]


def test_install_before_include_router_also_merges() -> None:
    """`install(app)` may come first: the document is merged when it is built."""
    app = install(FastAPI())
    app.include_router(contractspec_router(notes_executor(), authenticate=current_principal))
    document = TestClient(app).get("/openapi.json").json()
    assert "CreateNote" in document["components"]["schemas"]
    create = document["paths"]["/notes/note/create/v1"]["post"]
    assert "x-contractspec-openapi" not in create
    assert create["security"] == [{"bearerAuth": []}]


# -- the pipeline: same answers as the Starlette adapter ------------------------------------------


REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/notes/note/create/v1", {"json": NOTE, "headers": WRITER}),
    ("POST", "/notes/note/create/v1", {"json": NOTE, "headers": WRITER}),  # conflict
    ("POST", "/notes/note/create/v1", {"json": {**NOTE, "title": ""}, "headers": WRITER}),
    ("POST", "/notes/note/create/v1", {"json": NOTE}),  # anonymous: 401
    ("POST", "/notes/note/create/v1", {"content": b"{not json", "headers": WRITER}),
    ("POST", "/notes/note/create/v1", {"content": b"x" * 2_000, "headers": WRITER}),  # 413
    ("POST", "/notes/note/archive/v1", {"json": {"id": "n-1"}, "headers": WRITER}),  # 403
    ("GET", "/notes/note/search/v1", {"params": {"limit": 5}, "headers": READER}),
    ("GET", "/notes/note/search/v1", {"params": {"limit": 0}, "headers": READER}),
    ("GET", "/notes/note/get/v1", {"params": {"id": "nope"}, "headers": READER}),
    ("GET", "/notes/debug/whoami/v1", {"headers": {"X-Request-Id": "bad id"}}),
    ("POST", "/notes/debug/explode/v1", {"json": {}, "headers": {"Idempotency-Key": "k"}}),
]


def test_answers_equal_the_starlette_adapter() -> None:
    """For the same requests, the FastAPI routes answer what `contractspec.core.http` answers."""
    starlette = TestClient(
        create_app(notes_executor(), authenticate=_starlette_auth, max_body_bytes=1_000)
    )
    hosted = TestClient(fastapi_app(notes_executor(), max_body_bytes=1_000))
    statuses = []
    for method, path, kwargs in REQUESTS:
        a = starlette.request(method, path, **kwargs)
        b = hosted.request(method, "/api" + path, **kwargs)
        assert (b.status_code, _body(b)) == (a.status_code, _body(a)), (method, path)
        assert b.headers.get("www-authenticate") == a.headers.get("www-authenticate")
        statuses.append(b.status_code)
    assert statuses == [200, 409, 422, 401, 400, 413, 403, 200, 422, 404, 400, 422]


def _starlette_auth(request: Any) -> Principal | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return SESSIONS.get(token) if scheme.lower() == "bearer" else None


def _body(response: httpx.Response) -> Any:
    body = response.json()
    if isinstance(body, dict) and "request_id" in body.get("details", {}):
        body["details"]["request_id"] = "-"
    return body


def test_idempotency_key_replays_the_first_result(client: TestClient) -> None:
    """A retried command with the same Idempotency-Key replays; the handler ran once."""
    key = {**WRITER, "Idempotency-Key": "create-n-1"}
    first = client.post("/api/notes/note/create/v1", json=NOTE, headers=key)
    again = client.post("/api/notes/note/create/v1", json=NOTE, headers=key)
    other = client.post("/api/notes/note/create/v1", json={**NOTE, "title": "B"}, headers=key)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json() == first.json()
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")


def test_the_client_cannot_choose_the_tenant(client: TestClient) -> None:
    """Org headers, query parameters and body fields are ignored: the dependency's org rules."""
    forged = {**WRITER, "X-Org-Id": "org-2", "X-Tenant-Id": "org-2"}
    seen = client.get("/api/notes/debug/whoami/v1", params={"org_id": "org-2"}, headers=forged)
    assert (seen.json()["actor_id"], seen.json()["org_id"]) == ("u1", "org-1")
    made = client.post("/api/notes/note/create/v1", json=NOTE, headers=forged)
    assert made.status_code == 200
    mine = client.get("/api/notes/note/get/v1", params={"id": "n-1"}, headers=WRITER)
    theirs = client.get("/api/notes/note/get/v1", params={"id": "n-1"}, headers=OTHER)
    assert mine.status_code == 200
    assert (theirs.status_code, theirs.json()["code"]) == (404, "not_found")


# -- policy, audit and outbox on a real database ------------------------------------------------


@pytest.fixture
async def sql_backend(sql_kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """The notes app's tables on a SQLite file or a PostgreSQL schema."""
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(sql_kind, tmp_path) as engine:
        backend = SqlBackend(engine, build_notes_registry())
        await backend.create_all()
        yield backend


async def test_calls_go_through_policy_outbox_and_audit(sql_backend: Backend) -> None:
    """A denied call is a 403 with the error body and an audit row; an allowed one commits its
    note, its outbox event and its audit row, once per Idempotency-Key."""
    from sqlalchemy import select

    from contractspec.core.sql import SqlBackend, audit_table, outbox_table

    assert isinstance(sql_backend, SqlBackend)
    app = fastapi_app(notes_executor(sql_backend))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        denied = await http.post("/api/notes/note/create/v1", json=NOTE, headers=READER)
        keyed = {**WRITER, "Idempotency-Key": "k-1"}
        made = await http.post("/api/notes/note/create/v1", json=NOTE, headers=keyed)
        replayed = await http.post("/api/notes/note/create/v1", json=NOTE, headers=keyed)
    assert replayed.status_code == 200
    assert replayed.json() == made.json()  # the first result, the handler did not run again
    assert denied.status_code == 403
    assert denied.json()["code"] == "policy_denied"
    assert denied.json()["details"]["operation"] == "notes.note.create@1"
    assert made.status_code == 200
    async with sql_backend.engine.connect() as conn:
        events = (await conn.execute(select(outbox_table.c.name, outbox_table.c.org_id))).all()
        audit = (
            await conn.execute(
                select(audit_table.c.actor_id, audit_table.c.outcome).order_by(
                    audit_table.c.position
                )
            )
        ).all()
    assert [tuple(e) for e in events] == [("notes.note.created", "org-1")]
    assert [tuple(a) for a in audit] == [("u2", "denied"), ("u1", "success"), ("u1", "replayed")]


# -- exception handlers for the app's own endpoints ---------------------------------------------


ERRORS: list[tuple[ContractSpecError, int, str]] = [
    (SpecValidationError("bad input", errors=[]), 422, "validation_error"),
    (PolicyDeniedError("no", action="notes.write"), 403, "policy_denied"),
    (TenantScopeError("needs a tenant"), 403, "tenant_scope_required"),
    (NotFoundError("no note n-9"), 404, "not_found"),
    (ConflictError("duplicate"), 409, "conflict"),
    (IdempotencyConflictError("key reused"), 409, "idempotency_conflict"),
    (RateLimitedError("slow down", details={"retry_after_s": 2.5}), 429, "rate_limited"),
    (ApprovalRequiredError("needs approval"), 202, "approval_required"),
    (OperationTimeoutError("too slow"), 504, "operation_timeout"),
    (ConfigurationError("secret dsn=postgres://x:pw@h"), 500, "internal_error"),
    (HandlerContractError("handler returned junk: secret"), 500, "internal_error"),
]


@pytest.mark.parametrize(
    ("error", "status", "code"), ERRORS, ids=[e[2] + str(e[1]) for e in ERRORS]
)
def test_exception_handlers_map_each_error(
    error: ContractSpecError, status: int, code: str
) -> None:
    """An app endpoint raising a ContractSpecError answers its status and `{code, message,
    details}`; a 5xx hides the cause and names the request id."""
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/mine")
    async def mine() -> dict[str, str]:
        raise error

    answer = TestClient(app).get("/mine", headers={"X-Request-Id": "req-7"})
    assert answer.status_code == status
    assert answer.headers["X-Request-Id"] == "req-7"
    body = answer.json()
    assert sorted(body) == ["code", "details", "message"]
    assert body["code"] == code
    if status == 500:
        assert "secret" not in answer.text
        assert body["details"] == {"request_id": "req-7"}
    else:
        assert body == error.to_dict()
    if status == 429:
        assert answer.headers["Retry-After"] == "3"


@pytest.mark.parametrize("code", sorted(HTTP_STATUS))
def test_exception_handlers_cover_every_error_code(code: str) -> None:
    """Every code of `HTTP_STATUS` answers its status; 5xx (but the 504 timeout) say
    `internal_error` and nothing of the cause."""
    error_class = type("RaisedError", (ContractSpecError,), {"code": code})
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/mine")
    async def mine() -> None:
        raise error_class("the cause: db password=hunter2", details={"secret": "hunter2"})

    answer = TestClient(app).get("/mine")
    assert answer.status_code == HTTP_STATUS[code]
    hidden = HTTP_STATUS[code] >= 500 and code != "operation_timeout"
    assert answer.json()["code"] == ("internal_error" if hidden else code)
    assert ("hunter2" in answer.text) is not hidden


def test_app_endpoint_calling_the_executor_gets_mapped_errors() -> None:
    """An app's own endpoint running `executor.execute` turns a denial into a 403 body."""
    executor = notes_executor()
    app = FastAPI()
    install(app)

    @app.post("/my/notes")
    async def my_notes(
        who: Principal | None = Depends(current_principal),  # noqa: B008 - FastAPI's idiom
    ) -> dict[str, Any]:
        actor = who.actor if who else ANONYMOUS
        ctx = CallContext(actor, who.org_id if who else None)
        note = await executor.execute("notes.note.create", NOTE, ctx)
        return note.model_dump(mode="json")

    http = TestClient(app)
    denied = http.post("/my/notes", headers=READER)
    assert (denied.status_code, denied.json()["code"]) == (403, "policy_denied")
    anonymous = http.post("/my/notes")
    assert (anonymous.status_code, anonymous.json()["code"]) == (403, "policy_denied")
    assert http.post("/my/notes", headers=WRITER).json()["id"] == "n-1"
    again = http.post("/my/notes", headers=WRITER)
    assert (again.status_code, again.json()["code"]) == (409, "conflict")


# -- configuration ------------------------------------------------------------------------------


def test_operations_filter_and_configuration_errors() -> None:
    """`operations=` serves only the named operations; mistakes raise ConfigurationError."""
    executor = notes_executor()
    public = contractspec_router(executor, operations=["notes.debug.whoami"])
    assert [getattr(r, "path", None) for r in public.routes] == ["/notes/debug/whoami/v1"]
    by_kind = contractspec_router(
        executor, authenticate=current_principal, operations=lambda s: not s.is_command
    )
    assert len(by_kind.routes) == 3
    with pytest.raises(ConfigurationError, match="needs authenticate="):
        contractspec_router(executor)
    with pytest.raises(ConfigurationError, match=r"notes\.nope@1, which the executor's registry"):
        contractspec_router(executor, authenticate=current_principal, operations=["notes.nope@1"])
    with pytest.raises(ConfigurationError, match=r"write operations=\['notes.debug.whoami'\]"):
        contractspec_router(executor, operations="notes.debug.whoami")
    with pytest.raises(ConfigurationError, match="security_scheme must be"):
        contractspec_router(executor, authenticate=current_principal, security_scheme=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"security_scheme\['k'\] must be"):
        contractspec_router(executor, authenticate=current_principal, security_scheme={"k": {}})


# -- schemathesis over the merged document --------------------------------------------------------

# notes.debug.explode fails on purpose (a 500: test_exception_handlers_map_each_error's subject)
_fuzzed = fastapi_app(notes_executor(), operations=lambda s: s.name != "notes.debug.explode")
schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzzed)


@schema.auth()
class WriterToken:
    """Every generated call carries the writer's token (schemathesis also tries without it)."""

    def get(self, case: schemathesis.Case[Any], context: schemathesis.AuthContext) -> str:
        """The static token."""
        return "t-writer"

    def set(
        self, case: schemathesis.Case[Any], data: str, context: schemathesis.AuthContext
    ) -> None:
        """Send it as `Authorization: Bearer <token>`."""
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schemathesis_no_server_error_and_responses_conform(case: schemathesis.Case[Any]) -> None:
    """Generated and malformed inputs never give a 5xx or a response outside the merged doc."""
    # positive_data_acceptance is left out as in the CRM example: JSON Schema cannot express a
    # decimal's max_digits for JSON numbers, so a schema-valid 1.005 is (rightly) a 422.
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])


# -- the generated, executor-backed package -------------------------------------------------------


@pytest.fixture
def generated(tmp_path: Path) -> Iterator[str]:
    """The default (executor-backed) generated package, importable under a unique name."""
    name = f"notes_gen_{uuid.uuid4().hex[:8]}"
    generate(build_notes_registry().to_ir(), tmp_path / name, title="Notes API")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def test_generated_router_runs_on_the_executor(generated: str) -> None:
    """`create_app(executor, authenticate)` of the generated package serves every operation
    through the executor: policy denials, events in the outbox, the committed OpenAPI."""
    app_module = importlib.import_module(f"{generated}.app")
    backend = MemoryBackend()
    app = app_module.create_app(notes_executor(backend), current_principal)
    http = TestClient(app)
    assert http.post("/notes/note/create/v1", json=NOTE, headers=READER).status_code == 403
    made = http.post("/notes/note/create/v1", json=NOTE, headers=WRITER)
    assert (made.status_code, made.json()["id"]) == (200, "n-1")
    assert backend.events.names() == ["notes.note.created"]
    found = http.get("/notes/note/search/v1", params={"priority": "high"}, headers=READER)
    assert [n["id"] for n in found.json()["notes"]] == ["n-1"]
    document = http.get("/openapi.json").json()
    committed = json.loads(
        (Path(sys.modules[f"{generated}.app"].__file__ or "").parent / "openapi.json").read_text()
    )
    assert document["info"]["version"] == committed["info"]["version"]
    for path, item in committed["paths"].items():
        for method, operation in item.items():
            served = document["paths"][path][method]
            assert served["responses"] == operation["responses"]
            assert served["security"] == operation["security"]
    router_module = importlib.import_module(f"{generated}.router_notes")
    assert len(router_module.OPERATIONS) == 6
