"""The HTTP adapter's safety: tenant from the authenticator, anonymous floods, body limits,
unstorable input, refused idempotency keys and the documented security surface."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from core_regen_app import POLICY, Empty, build_notes_registry
from sqlalchemy import func, select
from starlette.requests import Request

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConfigurationError,
    Executor,
    MemoryBackend,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    define_query,
    public,
)
from contractspec.core.codegen import openapi_document
from contractspec.core.http import DEFAULT_MAX_BODY_BYTES, Principal, create_app, routes
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine

#: The server's sessions: bearer token -> who calls, in which org.
SESSIONS = {
    "t-alice": Principal(Actor.user("alice", roles="writer"), org_id="org-a"),
    "t-bob": Principal(Actor.user("bob", roles="writer"), org_id="org-b"),
}
ALICE = {"Authorization": "Bearer t-alice"}
NOTE = {"id": "n-1", "title": "Secret plan of B"}


def sessions(request: Request) -> Principal | None:
    """The bearer token's session (actor and org), `None` without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return SESSIONS.get(token) if scheme.lower() == "bearer" else None


def notes_executor(backend: Backend, policy: Any = POLICY) -> Executor:
    """The notes app on `backend` with a fake clock and sequential ids."""
    return Executor(
        build_notes_registry(),
        backend=backend,
        policy=policy,
        clock=FakeClock(),
        ids=SequentialIds(),
    )


def client_of(app: Any) -> httpx.AsyncClient:
    """An httpx client driving `app` in-process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


@pytest.fixture
async def notes_backend(backend_kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """The notes app's backend on memory, a SQLite file or a PostgreSQL schema."""
    if backend_kind == "memory":
        yield MemoryBackend()
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, build_notes_registry())
        await sql.create_all()
        yield sql


async def create_in_org_b(executor: Executor) -> None:
    """Bob stores note n-1 in org B, in-process."""
    await executor.execute("notes.note.create", NOTE, CallContext(SESSIONS["t-bob"].actor, "org-b"))


# -- tenant from the authenticator ------------------------------------------------------------


async def test_org_header_cannot_reach_another_tenant() -> None:
    """An org-A user sending `X-Org-Id: org-b` reads and writes org A only (RolePermissions)."""
    executor = notes_executor(MemoryBackend())
    await create_in_org_b(executor)
    forged = {**ALICE, "X-Org-Id": "org-b"}
    async with client_of(create_app(executor, authenticate=sessions)) as http:
        read = await http.get("/notes/note/get/v1", params={"id": "n-1"}, headers=forged)
        listed = await http.get("/notes/note/search/v1", headers=forged)
        write = await http.post(
            "/notes/note/create/v1", json={**NOTE, "title": "Overwritten"}, headers=forged
        )
    assert (read.status_code, read.json()["code"]) == (404, "not_found")
    assert listed.json() == {"notes": [], "total": 0}
    assert write.status_code == 200
    in_b = await executor.execute(
        "notes.note.get", {"id": "n-1"}, CallContext(SESSIONS["t-bob"].actor, "org-b")
    )
    assert in_b.model_dump()["title"] == "Secret plan of B"
    backend = executor.backend
    assert isinstance(backend, MemoryBackend)
    assert [(e.org_id, e.payload.model_dump()["title"]) for e in backend.events.events] == [
        ("org-b", "Secret plan of B"),
        ("org-a", "Overwritten"),
    ]


async def test_principal_actor_and_hooks_decide_the_tenant() -> None:
    """A Principal's org is the tenant; a bare Actor has none; the org_id hook overrides both."""
    executor = notes_executor(MemoryBackend())

    async def bare(request: Request) -> Actor:
        return Actor.user("carol")

    def path_org(request: Request, actor: Actor) -> str | None:
        return request.query_params.get("org")

    async with client_of(create_app(executor, authenticate=sessions)) as http:
        principal = (await http.get("/notes/debug/whoami/v1", headers=ALICE)).json()
    async with client_of(create_app(executor, authenticate=bare)) as http:
        actor_only = (await http.get("/notes/debug/whoami/v1", headers={"X-Org-Id": "x"})).json()
    async with client_of(create_app(executor, authenticate=sessions, org_id=path_org)) as http:
        hooked = (await http.get("/notes/debug/whoami/v1?org=org-z", headers=ALICE)).json()
    assert (principal["actor_id"], principal["org_id"]) == ("alice", "org-a")
    assert (actor_only["actor_id"], actor_only["org_id"]) == ("carol", None)
    assert (hooked["actor_id"], hooked["org_id"]) == ("alice", "org-z")


async def test_trusted_gateway_header_is_the_tenant() -> None:
    """With trust_org_header=True the header names the tenant; without it, the principal's org."""
    executor = notes_executor(MemoryBackend())

    def gateway(request: Request) -> Principal | Actor | None:
        user = request.headers.get("x-gateway-user")
        return Principal(Actor.user(user), org_id="home") if user else None

    with structlog.testing.capture_logs() as logs:
        app = create_app(executor, authenticate=gateway, trust_org_header=True)
    assert [(e["event"], e["log_level"], e["policy"]) for e in logs] == [
        (
            "contractspec.http.org_header_trusted_without_membership_check",
            "warning",
            "RolePermissions",
        )
    ]
    async with client_of(app) as http:
        named = await http.get(
            "/notes/debug/whoami/v1", headers={"X-Gateway-User": "gw-1", "X-Org-Id": "org-7"}
        )
        unnamed = await http.get("/notes/debug/whoami/v1", headers={"X-Gateway-User": "gw-1"})
        document = (await http.get("/openapi.json")).json()
    assert named.json()["org_id"] == "org-7"
    assert unnamed.json()["org_id"] == "home"
    whoami = document["paths"]["/notes/debug/whoami/v1"]["get"]
    assert [p["name"] for p in whoami["parameters"]] == ["X-Request-Id", "X-Org-Id"]


class MembersOf(RolePermissions):
    """RolePermissions that also knows memberships (core's MembershipChecker port)."""

    def __init__(self, grants: dict[str, list[str]], members: dict[str, set[str]]) -> None:
        super().__init__(grants)
        self.members = members

    def is_member(self, subject: Actor, org_id: str) -> bool:
        """Whether `subject.id` is listed in `org_id`."""
        return subject.id in self.members.get(org_id, set())


async def test_trusted_header_still_needs_membership() -> None:
    """Behind a trusted header, a non-member of the named org is denied (membership check)."""
    policy = MembersOf({"writer": ["notes.write"]}, {"org-a": {"alice"}, "org-b": {"bob"}})
    executor = notes_executor(MemoryBackend(), policy)
    await create_in_org_b(executor)
    app = create_app(executor, authenticate=sessions, trust_org_header=True)
    forged = {**ALICE, "X-Org-Id": "org-b"}
    async with client_of(app) as http:
        read = await http.get("/notes/note/get/v1", params={"id": "n-1"}, headers=forged)
        write = await http.post("/notes/note/create/v1", json=NOTE, headers=forged)
        own = await http.post(
            "/notes/note/create/v1", json=NOTE, headers={**ALICE, "X-Org-Id": "org-a"}
        )
    assert (read.status_code, read.json()["code"]) == (403, "policy_denied")
    assert (write.status_code, write.json()["code"]) == (403, "policy_denied")
    assert own.status_code == 200


async def test_authenticator_may_refuse_with_403() -> None:
    """An authenticator raising PolicyDeniedError (an org the user is not in) answers 403."""
    members = {"alice": {"org-a", "org-c"}}

    def switching(request: Request) -> Principal | None:
        principal = sessions(request)
        wanted = request.headers.get("x-org-id")
        if principal is None or wanted is None:
            return principal
        if wanted not in members.get(principal.actor.id, set()):
            raise PolicyDeniedError(f"not a member of org {wanted!r}", reason="not a member")
        return Principal(principal.actor, org_id=wanted)

    app = create_app(notes_executor(MemoryBackend()), authenticate=switching)
    async with client_of(app) as http:
        other = await http.get("/notes/debug/whoami/v1", headers={**ALICE, "X-Org-Id": "org-c"})
        foreign = await http.get("/notes/note/search/v1", headers={**ALICE, "X-Org-Id": "org-b"})
    assert other.json()["org_id"] == "org-c"
    assert (foreign.status_code, foreign.json()["message"]) == (403, "not a member of org 'org-b'")
    assert "www-authenticate" not in foreign.headers


def test_authenticate_is_required_unless_every_operation_is_public() -> None:
    """Without authenticate=, routes() refuses a registry with non-public operations."""
    executor = notes_executor(MemoryBackend())
    with pytest.raises(ConfigurationError) as info:
        create_app(executor)
    assert str(info.value) == (
        "the HTTP adapter needs authenticate=: notes.note.archive@1, notes.note.create@1, "
        "notes.note.get@1 and 1 more are not public, and without an authenticator every caller "
        "is anonymous. Pass authenticate=<function of the request> that checks the caller's "
        "credential (session, token, API key) and returns Principal(actor, org_id=<their "
        "tenant>), an Actor, or None for anonymous callers"
    )
    assert info.value.details["operations"] == [
        "notes.note.archive@1",
        "notes.note.create@1",
        "notes.note.get@1",
        "notes.note.search@1",
    ]
    registry = SpecRegistry()

    @registry.handler(define_query("demo.ping", input=Empty, output=Empty, auth=public()))
    async def ping(inp: Empty, ctx: Any) -> Empty:
        return Empty()

    assert len(routes(Executor(registry))) == 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"org_id": lambda request, actor: "x", "trust_org_header": True},
            "give either org_id= (your code decides the tenant) or trust_org_header=True (a "
            "trusted gateway sets the header), not both",
        ),
        ({"max_body_bytes": 0}, "max_body_bytes must be a positive number of bytes, got 0"),
        ({"max_body_bytes": 1.5}, "max_body_bytes must be a positive number of bytes, got 1.5"),
    ],
)
def test_inconsistent_options_are_refused(options: dict[str, Any], message: str) -> None:
    """Contradictory tenant sources and a non-positive body limit are configuration errors."""
    with pytest.raises(ConfigurationError) as info:
        create_app(notes_executor(MemoryBackend()), authenticate=sessions, **options)
    assert str(info.value) == message


async def test_authenticator_returning_something_else_is_a_500() -> None:
    """An authenticator returning neither Principal, Actor nor None is a logged 500."""

    def wrong(request: Request) -> Any:
        return "alice"

    async with client_of(create_app(notes_executor(MemoryBackend()), authenticate=wrong)) as http:
        with structlog.testing.capture_logs() as logs:
            resp = await http.get("/notes/debug/whoami/v1")
    assert (resp.status_code, resp.json()["code"]) == (500, "internal_error")
    assert [e["event"] for e in logs] == ["contractspec.http.internal_error"]


def test_principal_checks_its_fields() -> None:
    """Principal takes an Actor and a non-empty org id (or None)."""
    assert Principal(Actor.user("u")).org_id is None
    with pytest.raises(TypeError):
        Principal("alice")  # type: ignore[arg-type]  # the wrong type on purpose
    with pytest.raises(TypeError, match="non-empty string or None, got ''"):
        Principal(Actor.user("u"), org_id="")


# -- anonymous floods ---------------------------------------------------------------------------


@pytest.mark.parametrize("trust_org_header", [False, True])
async def test_anonymous_posts_write_no_audit_rows(
    sql_kind: str, tmp_path: Path, trust_org_header: bool
) -> None:
    """1,000 anonymous POSTs with invented org headers: 401 each, no audit row, no chain head."""
    from contractspec.core.sql import SqlBackend, audit_head_table, audit_table

    async with temporary_sql_engine(sql_kind, tmp_path) as engine:
        backend = SqlBackend(engine, build_notes_registry())
        await backend.create_all()
        executor = notes_executor(backend)
        app = create_app(executor, authenticate=sessions, trust_org_header=trust_org_header)
        statuses: set[int] = set()
        async with client_of(app) as http:
            for i in range(1000):
                resp = await http.post(
                    "/notes/note/create/v1",
                    json={"id": f"n-{i}", "title": "spam"},
                    headers={"X-Org-Id": f"invented-{i % 501}"},
                )
                statuses.add(resp.status_code)
        async with engine.connect() as conn:
            rows = await conn.scalar(select(func.count()).select_from(audit_table))
            heads = await conn.scalar(select(func.count()).select_from(audit_head_table))
    assert statuses == {401}
    assert (rows, heads) == (0, 0)
    assert executor.unauthenticated_denials == 1000


# -- body limit ------------------------------------------------------------------------------------


class Chunks:
    """A request body of `count` chunks of `size` bytes that counts how many were read."""

    def __init__(self, count: int, size: int = 65_536) -> None:
        self.count = count
        self.size = size
        self.read = 0

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            self.read += 1
            yield b" " * self.size


@pytest.fixture
def body_app() -> Any:
    """The notes app with the default body limit and a logged-in writer."""
    return create_app(notes_executor(MemoryBackend()), authenticate=sessions)


async def test_declared_length_over_the_limit_is_413_unread(body_app: Any) -> None:
    """A Content-Length above 1 MiB answers 413 before a byte of the body is read."""
    body = Chunks(17)
    assert DEFAULT_MAX_BODY_BYTES == 1_048_576 == 16 * 65_536
    async with client_of(body_app) as http:
        resp = await http.post(
            "/notes/note/create/v1",
            content=body,
            headers={**ALICE, "Content-Length": str(17 * 65_536), "X-Request-Id": "r-1"},
        )
    assert resp.status_code == 413
    assert resp.json() == {
        "code": "content_too_large",
        "message": "the request body of notes.note.create@1 is larger than the limit of "
        "1048576 bytes; send a smaller body",
        "details": {"operation": "notes.note.create@1", "limit_bytes": 1048576},
    }
    assert resp.headers["x-request-id"] == "r-1"
    assert body.read == 0


async def test_chunked_body_over_the_limit_stops_reading_at_the_limit(body_app: Any) -> None:
    """A chunked 6.25 MiB body is cut off at the chunk that crosses 1 MiB: 413, 17 chunks read."""
    body = Chunks(100)
    async with client_of(body_app) as http:
        resp = await http.post("/notes/note/create/v1", content=body, headers=ALICE)
    assert (resp.status_code, resp.json()["code"]) == (413, "content_too_large")
    assert body.read == 17


async def test_body_at_the_limit_is_read(body_app: Any) -> None:
    """A body of exactly the limit is accepted (whitespace around JSON is still JSON)."""
    payload = b'{"id": "n-1", "title": "ok"}'
    padded = payload + b" " * (DEFAULT_MAX_BODY_BYTES - len(payload))
    async with client_of(body_app) as http:
        resp = await http.post("/notes/note/create/v1", content=padded, headers=ALICE)
        over = await http.post("/notes/note/create/v1", content=padded + b" ", headers=ALICE)
    assert (resp.status_code, resp.json()["id"]) == (200, "n-1")
    assert over.status_code == 413


async def test_body_limit_is_configurable() -> None:
    """max_body_bytes=64 refuses a 65-byte body and accepts a 64-byte one."""
    app = create_app(notes_executor(MemoryBackend()), authenticate=sessions, max_body_bytes=64)
    small = b'{"id": "n-1", "title": "ok"}'.ljust(64)
    async with client_of(app) as http:
        ok = await http.post("/notes/note/create/v1", content=small, headers=ALICE)
        big = await http.post("/notes/note/create/v1", content=small + b" ", headers=ALICE)
    assert (ok.status_code, big.status_code) == (200, 413)
    assert big.json()["details"]["limit_bytes"] == 64


# -- unstorable input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "what"),
    [
        (b'{"id": "n-1", "title": "a\\u0000b"}', "title", "a NUL character (\\u0000)"),
        (b'{"id": "n-1", "title": "\\ud800"}', "title", "a lone surrogate (\\ud800)"),
        (b'{"id": "n-1", "title": "x\\uDC00y"}', "title", "a lone surrogate (\\udc00)"),
        (b'{"id": "n-1", "title": "t", "tags": ["ok", "\\u0000"]}', "tags.1", None),
    ],
)
async def test_unstorable_strings_in_a_body_are_422(
    notes_backend: Backend, body: bytes, field: str, what: str | None
) -> None:
    """NUL and lone surrogates in a JSON body answer 422 naming the field; nothing is stored."""
    executor = notes_executor(notes_backend)
    async with client_of(create_app(executor, authenticate=sessions)) as http:
        resp = await http.post(
            "/notes/note/create/v1",
            content=body,
            headers={**ALICE, "content-type": "application/json"},
        )
        after = await http.get("/notes/note/search/v1", headers=ALICE)
    assert resp.status_code == 422
    problem = resp.json()
    assert problem["code"] == "validation_error"
    assert [(e["field"], e["type"]) for e in problem["details"]["errors"]] == [
        (field, "string_unstorable")
    ]
    what = what or "a NUL character (\\u0000)"
    assert problem["message"] == (
        f"invalid input for notes.note.create@1: {field}: contains {what}, which cannot be "
        "stored; remove it"
    )
    assert after.json() == {"notes": [], "total": 0}


async def test_storable_escapes_are_stored(notes_backend: Backend) -> None:
    """A surrogate pair (an emoji) and an escaped backslash before `u0000` are stored as sent."""
    executor = notes_executor(notes_backend)
    body = b'{"id": "n-1", "title": "\\ud83d\\ude00 \\\\u0000", "tags": ["\\u00e9"]}'
    async with client_of(create_app(executor, authenticate=sessions)) as http:
        resp = await http.post(
            "/notes/note/create/v1",
            content=body,
            headers={**ALICE, "content-type": "application/json"},
        )
        stored = await http.get("/notes/note/get/v1", params={"id": "n-1"}, headers=ALICE)
    assert resp.status_code == 200
    assert (stored.json()["title"], stored.json()["tags"]) == ("\U0001f600 \\u0000", ["é"])


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/notes/note/get/v1", "id=a%00b", "id"),
        ("/notes/note/search/v1", "tags=sales&tags=%00", "tags"),
    ],
)
async def test_nul_in_a_query_parameter_is_422(
    notes_backend: Backend, path: str, query: str, field: str
) -> None:
    """`%00` in a query parameter answers 422 naming the parameter, on every backend."""
    executor = notes_executor(notes_backend)
    async with client_of(create_app(executor, authenticate=sessions)) as http:
        resp = await http.get(f"{path}?{query}", headers=ALICE)
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json()["details"]["errors"]] == [field]
    assert resp.json()["message"].endswith(
        f": {field}: contains a NUL character (\\u0000), which cannot be stored; remove it"
    )


async def test_raw_nul_byte_in_a_body_is_400(body_app: Any) -> None:
    """An unescaped NUL byte inside a JSON string is not JSON: 400 bad_request."""
    async with client_of(body_app) as http:
        resp = await http.post(
            "/notes/note/create/v1",
            content=b'{"id": "n-1", "title": "a\x00b"}',
            headers={**ALICE, "content-type": "application/json"},
        )
    assert (resp.status_code, resp.json()["code"]) == (400, "bad_request")


async def test_deeply_nested_body_is_a_client_error(body_app: Any) -> None:
    """A 100,000-deep array around a NUL escape is refused as a client error, never a 500."""
    nested = b"[" * 100_000 + b'"\\u0000"' + b"]" * 100_000
    async with client_of(body_app) as http:
        resp = await http.post(
            "/notes/note/create/v1",
            content=nested,
            headers={**ALICE, "content-type": "application/json"},
        )
    assert (resp.status_code, resp.json()["code"]) == (400, "bad_request")


# -- idempotency key on a non-idempotent command -------------------------------------------------


async def test_idempotency_key_on_a_non_idempotent_command_is_422(body_app: Any) -> None:
    """An Idempotency-Key on a command not declared idempotent is refused, as in-process."""
    async with client_of(body_app) as http:
        resp = await http.post(
            "/notes/debug/explode/v1", json={}, headers={"Idempotency-Key": "k-1"}
        )
        query = await http.get(
            "/notes/debug/whoami/v1", headers={**ALICE, "Idempotency-Key": "k-1"}
        )
    assert resp.status_code == 422
    message = (
        "notes.debug.explode@1 is not declared idempotent, so it cannot take an idempotency key; "
        "drop the Idempotency-Key header or declare the command with idempotent=True"
    )
    assert resp.json() == {
        "code": "validation_error",
        "message": f"invalid input for notes.debug.explode@1: header Idempotency-Key: {message}",
        "details": {
            "errors": [
                {
                    "type": "idempotency_key_not_allowed",
                    "loc": ["header", "Idempotency-Key"],
                    "msg": message,
                    "field": "Idempotency-Key",
                }
            ],
            "operation": "notes.debug.explode@1",
            "header": "Idempotency-Key",
        },
    }
    assert query.status_code == 200


# -- the documented surface ------------------------------------------------------------------------


def test_openapi_documents_statuses_and_security() -> None:
    """Commands document 409/413, every operation 422/429/504, non-public ones 401 and bearer."""
    doc = openapi_document(build_notes_registry().to_ir())
    ops = {path: next(iter(item.values())) for path, item in doc["paths"].items()}
    assert doc["components"]["securitySchemes"] == {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "Credentials checked by the server's authenticator; the tenant comes "
            "from them, not from the client",
        }
    }
    assert sorted(ops["/notes/note/create/v1"]["responses"]) == [
        "200", "202", "400", "401", "403", "404", "409", "413", "422", "429", "500", "504",
    ]  # fmt: skip
    assert sorted(ops["/notes/note/search/v1"]["responses"]) == [
        "200", "202", "400", "401", "403", "404", "422", "429", "500", "504",
    ]  # fmt: skip
    assert sorted(ops["/notes/debug/explode/v1"]["responses"]) == [
        "200", "202", "400", "403", "404", "409", "413", "422", "429", "500", "504",
    ]  # fmt: skip
    assert ops["/notes/note/create/v1"]["security"] == [{"bearerAuth": []}]
    assert ops["/notes/debug/whoami/v1"]["security"] == []
    problem = {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    assert ops["/notes/note/create/v1"]["responses"]["409"]["content"] == problem
    assert ops["/notes/note/create/v1"]["responses"]["422"]["content"] == problem
    assert ops["/notes/note/create/v1"]["responses"]["429"]["headers"]["Retry-After"] == {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 1},
    }


async def test_served_document_uses_the_apps_security_schemes() -> None:
    """`security_schemes=` replaces the bearer default in the document and the 401 challenge."""
    schemes = {
        "apiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
        "basic": {"type": "http", "scheme": "basic"},
    }
    executor = notes_executor(MemoryBackend())
    app = create_app(executor, authenticate=sessions, security_schemes=schemes)
    async with client_of(app) as http:
        served = (await http.get("/openapi.json")).json()
        denied = await http.post("/notes/note/create/v1", json=NOTE)
    assert served == openapi_document(executor.registry.to_ir(), security_schemes=schemes)
    assert served["components"]["securitySchemes"] == schemes
    create = served["paths"]["/notes/note/create/v1"]["post"]
    assert create["security"] == [{"apiKey": []}, {"basic": []}]
    assert (denied.status_code, denied.headers["www-authenticate"]) == (401, "Basic")
