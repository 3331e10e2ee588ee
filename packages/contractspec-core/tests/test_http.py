"""The HTTP adapter: routes, binding, headers, error mapping and the served OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import structlog
from core_regen_app import POLICY, build_notes_registry
from starlette.requests import Request

from contractspec.core import (
    Actor,
    Executor,
    MemoryBackend,
    OperationTimeoutError,
    RateLimitedError,
)
from contractspec.core.codegen import openapi_document
from contractspec.core.http import Principal, create_app, routes
from contractspec.core.testing import FakeClock, SequentialIds

#: The server's sessions: bearer token -> who calls, in which org.
SESSIONS = {
    "t-writer": Principal(Actor.user("u1", roles="writer"), org_id="org-1"),
    "t-boss": Principal(Actor.user("boss", roles="admin"), org_id="org-1"),
    "t-reader": Principal(Actor.user("u2"), org_id="org-1"),
}
WRITER = {"Authorization": "Bearer t-writer"}
ADMIN = {"Authorization": "Bearer t-boss"}
READER = {"Authorization": "Bearer t-reader"}


def header_auth(request: Request) -> Principal | None:
    """Test identity: the bearer token's session (actor and org), `None` without one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return SESSIONS.get(token) if scheme.lower() == "bearer" else None


@pytest.fixture
def backend() -> MemoryBackend:
    """A fresh in-memory backend."""
    return MemoryBackend()


@pytest.fixture
def executor(backend: MemoryBackend) -> Executor:
    """An executor of the notes app with the role policy, a fake clock and sequential ids."""
    return Executor(
        build_notes_registry(),
        backend=backend,
        policy=POLICY,
        clock=FakeClock(),
        ids=SequentialIds(),
    )


@pytest.fixture
async def client(executor: Executor) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client driving the ASGI app in-process."""
    app = create_app(executor, authenticate=header_auth)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


NOTE = {"id": "n-1", "title": "Call ACME", "priority": "high", "budget": "12.50", "tags": ["sales"]}


async def test_command_is_a_post_with_a_json_body(
    client: httpx.AsyncClient, backend: MemoryBackend
) -> None:
    """POST /notes/note/create/v1 runs the command, returns 200 JSON and publishes its event."""
    resp = await client.post("/notes/note/create/v1", json=NOTE, headers=WRITER)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {
        "id": "n-1",
        "title": "Call ACME",
        "priority": "high",
        "budget": "12.50",
        "tags": ["sales"],
        "author_email": None,
    }
    assert backend.events.names() == ["notes.note.created"]
    assert backend.events.events[0].org_id == "org-1"


async def test_query_is_a_get_with_query_parameters(client: httpx.AsyncClient) -> None:
    """GET takes scalars, repeated list parameters and enums from the query string."""
    await client.post("/notes/note/create/v1", json=NOTE, headers=WRITER)
    other = {**NOTE, "id": "n-2", "priority": "low", "tags": ["sales", "eu"]}
    await client.post("/notes/note/create/v1", json=other, headers=WRITER)
    resp = await client.get(
        "/notes/note/search/v1", params=[("tags", "sales"), ("tags", "eu")], headers=WRITER
    )
    assert (resp.status_code, [n["id"] for n in resp.json()["notes"]]) == (200, ["n-2"])
    resp = await client.get(
        "/notes/note/search/v1", params={"priority": "high", "limit": "5"}, headers=WRITER
    )
    assert (resp.status_code, resp.json()["total"]) == (200, 1)
    assert resp.json()["notes"][0]["id"] == "n-1"


async def test_methods_follow_the_operation_kind(client: httpx.AsyncClient) -> None:
    """A query does not answer POST and a command does not answer GET (405)."""
    assert (await client.post("/notes/note/search/v1", json={}, headers=WRITER)).status_code == 405
    assert (await client.get("/notes/note/create/v1", headers=WRITER)).status_code == 405
    assert (await client.get("/notes/note/search/v2", headers=WRITER)).status_code == 404


async def test_validation_error_is_422_with_field_errors(client: httpx.AsyncClient) -> None:
    """Invalid input answers 422 with the validation_error problem and each field's error."""
    resp = await client.post(
        "/notes/note/create/v1", json={**NOTE, "title": "", "budget": "-1"}, headers=WRITER
    )
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "validation_error"
    assert [e["field"] for e in body["details"]["errors"]] == ["title", "budget"]
    assert body["message"].startswith("invalid input for notes.note.create@1: title:")


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    """A body that is not JSON answers 400 bad_request (not 422, not 500)."""
    resp = await client.post(
        "/notes/note/create/v1",
        content=b"{not json",
        headers={**WRITER, "content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json() == {
        "code": "bad_request",
        "message": "the request body of notes.note.create@1 is not valid JSON; send a JSON object",
        "details": {"operation": "notes.note.create@1"},
    }


async def test_empty_body_is_an_empty_object(client: httpx.AsyncClient) -> None:
    """A command without a body is validated as `{}` (so required fields are reported)."""
    resp = await client.post("/notes/note/create/v1", headers=WRITER)
    assert resp.status_code == 422
    assert [e["field"] for e in resp.json()["details"]["errors"]] == ["id", "title"]


async def test_policy_denial_is_403_and_anonymous_is_401(client: httpx.AsyncClient) -> None:
    """Callers without the permission get 403; anonymous callers 401 with a Bearer challenge."""
    anonymous = await client.post("/notes/note/create/v1", json=NOTE)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "policy_denied")
    assert anonymous.headers["www-authenticate"] == "Bearer"
    reader = await client.post("/notes/note/create/v1", json=NOTE, headers=READER)
    assert reader.status_code == 403
    assert "www-authenticate" not in reader.headers
    assert reader.json()["details"]["reason"] == (
        "none of the actor's roles (no roles) grants 'notes.write'"
    )


async def test_not_found_conflict_and_approval(client: httpx.AsyncClient) -> None:
    """NotFoundError → 404, ConflictError → 409, ApprovalRequiredError → 202."""
    missing = await client.get("/notes/note/get/v1", params={"id": "nope"}, headers=WRITER)
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert missing.json()["details"] == {"id": "nope"}
    await client.post("/notes/note/create/v1", json=NOTE, headers=WRITER)
    again = await client.post("/notes/note/create/v1", json=NOTE, headers=WRITER)
    assert (again.status_code, again.json()["code"]) == (409, "conflict")
    approval = await client.post("/notes/note/archive/v1", json={"id": "n-1"}, headers=ADMIN)
    assert approval.status_code == 202
    assert approval.json() == {
        "code": "approval_required",
        "message": "archiving 'n-1' needs an approval",
        "details": {},
    }


async def test_internal_error_does_not_leak(client: httpx.AsyncClient) -> None:
    """A handler crash answers 500 internal_error with the request id and no internals."""
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(
            "/notes/debug/explode/v1", json={}, headers={"X-Request-Id": "req-9"}
        )
    assert resp.status_code == 500
    assert resp.json() == {
        "code": "internal_error",
        "message": "internal error; quote request id req-9 to the operator",
        "details": {"request_id": "req-9"},
    }
    assert "hunter2" not in resp.text
    assert resp.headers["x-request-id"] == "req-9"
    assert "contractspec.http.internal_error" in [entry["event"] for entry in logs]


async def test_failing_auth_hook_is_a_500(executor: Executor) -> None:
    """An exception in the authenticate hook is a 500 without its message."""

    def broken(request: Request) -> Principal | None:
        raise KeyError("token store down: secret")

    app = create_app(executor, authenticate=broken)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        with structlog.testing.capture_logs():
            resp = await c.post("/notes/debug/explode/v1", json={})
    assert (resp.status_code, resp.json()["code"]) == (500, "internal_error")
    assert "secret" not in resp.text


async def test_headers_reach_the_call_context(client: httpx.AsyncClient) -> None:
    """Request id, traceparent, the actor and its org reach the handler's CallContext."""
    resp = await client.get(
        "/notes/debug/whoami/v1",
        headers={
            **WRITER,
            "X-Request-Id": "req-1",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
    )
    assert resp.json() == {
        "actor_id": "u1",
        "org_id": "org-1",
        "request_id": "req-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "idempotency_key": None,
        "channel": "http",
    }
    assert resp.headers["x-request-id"] == "req-1"


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    """Without X-Request-Id the server makes one (32 hex digits) and echoes it."""
    resp = await client.get("/notes/debug/whoami/v1")
    generated = resp.headers["x-request-id"]
    assert len(generated) == 32
    assert int(generated, 16) >= 0
    assert resp.json()["request_id"] == generated
    assert resp.json()["actor_id"] == "anonymous"


async def test_idempotency_key_header(client: httpx.AsyncClient, backend: MemoryBackend) -> None:
    """A repeated Idempotency-Key replays the first result; another input with it is 409."""
    headers = {**WRITER, "Idempotency-Key": "k-1"}
    first = await client.post("/notes/note/create/v1", json=NOTE, headers=headers)
    second = await client.post("/notes/note/create/v1", json=NOTE, headers=headers)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json() == second.json()
    assert backend.events.names() == ["notes.note.created"]
    other = await client.post(
        "/notes/note/create/v1", json={**NOTE, "title": "Other"}, headers=headers
    )
    assert (other.status_code, other.json()["code"]) == (409, "idempotency_conflict")


async def test_org_and_async_auth_hooks(executor: Executor) -> None:
    """Async authenticate and org_id hooks decide the actor and the tenant (not the header)."""

    async def auth(request: Request) -> Principal | Actor | None:
        return Actor.user("hook-user")

    async def org(request: Request, actor: Actor) -> str | None:
        return f"org-of-{actor.id}"

    app = create_app(executor, authenticate=auth, org_id=org)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        resp = await c.get("/notes/debug/whoami/v1", headers={"X-Org-Id": "ignored"})
    assert (resp.json()["actor_id"], resp.json()["org_id"]) == ("hook-user", "org-of-hook-user")


async def test_openapi_document_is_served(client: httpx.AsyncClient, executor: Executor) -> None:
    """GET /openapi.json serves the same document `openapi_document` builds from the IR."""
    resp = await client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.json() == openapi_document(executor.registry.to_ir())
    paths = resp.json()["paths"]
    assert sorted((p, *m) for p, m in paths.items()) == [
        ("/notes/debug/explode/v1", "post"),
        ("/notes/debug/whoami/v1", "get"),
        ("/notes/note/archive/v1", "post"),
        ("/notes/note/create/v1", "post"),
        ("/notes/note/get/v1", "get"),
        ("/notes/note/search/v1", "get"),
    ]


def test_openapi_binding_details(executor: Executor) -> None:
    """Query inputs become parameters, idempotent commands document Idempotency-Key."""
    doc = openapi_document(executor.registry.to_ir())
    search = doc["paths"]["/notes/note/search/v1"]["get"]
    params = {p["name"]: p for p in search["parameters"]}
    assert sorted(params) == ["X-Request-Id", "limit", "priority", "tags"]
    assert params["priority"]["schema"] == {"$ref": "#/components/schemas/Priority"}
    assert params["tags"]["style"] == "form"
    assert params["limit"]["schema"]["maximum"] == 50
    create = doc["paths"]["/notes/note/create/v1"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in create["parameters"]]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateNote"
    }
    assert create["x-contractspec"]["emits"] == ["notes.note.created@1"]
    assert create["summary"] == "Create a note."
    trusted = openapi_document(executor.registry.to_ir(), trust_org_header=True)
    search = trusted["paths"]["/notes/note/search/v1"]["get"]
    assert [p["name"] for p in search["parameters"]][:2] == ["X-Request-Id", "X-Org-Id"]


async def test_routes_mount_into_fastapi(executor: Executor) -> None:
    """`routes()` extends an existing FastAPI app's router."""
    from fastapi import FastAPI

    app = FastAPI()
    app.router.routes.extend(routes(executor, authenticate=header_auth, openapi_url=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        resp = await c.post("/notes/note/create/v1", json=NOTE, headers=WRITER)
    assert (resp.status_code, resp.json()["id"]) == (200, "n-1")


def _deep_keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _deep_keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _deep_keys(v)}
    return set()


def test_openapi_refs_all_resolve(executor: Executor) -> None:
    """Every `$ref` in the document points at an existing component; no `$defs` remain."""
    doc = openapi_document(executor.registry.to_ir())
    text = json.dumps(doc)
    components = doc["components"]["schemas"]
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs <= set(components)
    assert "$defs" not in _deep_keys(doc)


async def test_malformed_binding_headers_are_400(executor: Executor) -> None:
    """A too long or non-ASCII binding header answers 400 naming the header."""
    app = create_app(executor, authenticate=header_auth, trust_org_header=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        resp = await c.get("/notes/debug/whoami/v1", headers={"X-Org-Id": "o" * 201})
        spaced = await c.get("/notes/debug/whoami/v1", headers={"X-Request-Id": "a b"})
        key = await c.post(
            "/notes/note/create/v1", json=NOTE, headers={**WRITER, "Idempotency-Key": "k 1"}
        )
    assert resp.status_code == 400
    assert resp.json() == {
        "code": "bad_request",
        "message": "header X-Org-Id must be 1 to 200 visible ASCII characters (no spaces)",
        "details": {"header": "X-Org-Id"},
    }
    assert (spaced.status_code, spaced.json()["details"]) == (400, {"header": "X-Request-Id"})
    assert (key.status_code, key.json()["details"]) == (400, {"header": "Idempotency-Key"})


async def test_untrusted_org_header_is_not_read(client: httpx.AsyncClient) -> None:
    """Without trust_org_header the X-Org-Id header is ignored: the tenant is the session's."""
    resp = await client.get("/notes/debug/whoami/v1", headers={**WRITER, "X-Org-Id": "o" * 201})
    assert (resp.status_code, resp.json()["org_id"]) == (200, "org-1")


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (RateLimitedError("slow down", details={"retry_after_s": 2.5}), 429, "3"),
        (OperationTimeoutError("took longer than 200 ms"), 504, None),
    ],
)
async def test_rate_limits_and_timeouts_keep_their_status(
    backend: MemoryBackend, error: Exception, status: int, retry_after: str | None
) -> None:
    """RateLimitedError → 429 with Retry-After (seconds, rounded up); OperationTimeoutError → 504."""

    async def refuse(invocation: Any, call_next: Any) -> Any:
        raise error

    executor = Executor(build_notes_registry(), backend=backend, policy=POLICY, middleware=[refuse])
    app = create_app(executor, authenticate=header_auth)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.post("/notes/note/create/v1", json=NOTE, headers=WRITER)
    assert response.status_code == status
    assert response.json()["code"] == getattr(error, "code", None)
    assert response.headers.get("retry-after") == retry_after
