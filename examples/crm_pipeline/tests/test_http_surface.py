"""The CRM's HTTP surface under schemathesis: no server error, every response conforms.

The schema is the committed, generated `generated/openapi.json`; the app is the runtime adapter
(`contractspec.core.http`) serving the CRM registry on the in-memory backend, called as a `sales`
user of one org. Schemathesis generates valid and malformed inputs for every operation (bodies, query strings,
headers) and checks the default suite: no 5xx, status codes, content types, headers and response
bodies documented in the schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from crm_pipeline.spec import policy, registry
from hypothesis import HealthCheck, settings
from starlette.requests import Request

from contractspec.core import Actor, Executor, MemoryBackend
from contractspec.core.codegen import check_generated, openapi_document
from contractspec.core.diff import check_lock
from contractspec.core.http import Principal, create_app

GENERATED = Path(__file__).resolve().parents[1] / "generated"
TITLE = "CRM pipeline API"


TOKEN = "fuzz-token"


def authenticate(request: Request) -> Principal | None:
    """The bearer token `fuzz-token` is a sales user of org `acme`; anything else is anonymous."""
    if request.headers.get("authorization") != f"Bearer {TOKEN}":
        return None
    return Principal(Actor.user("fuzzer", roles="sales"), org_id="acme")


def build_app() -> Any:
    """The CRM served by the runtime HTTP adapter on a fresh in-memory backend."""
    return create_app(
        Executor(registry, backend=MemoryBackend(), policy=policy()),
        authenticate=authenticate,
        title=TITLE,
    )


schema = schemathesis.openapi.from_path(GENERATED / "openapi.json")
schema.app = build_app()


@schema.auth()
class FuzzerToken:
    """Every generated call carries the fuzzer's bearer token (schemathesis also checks that a
    call without it answers 401)."""

    def get(self, case: schemathesis.Case[Any], context: schemathesis.AuthContext) -> str:
        """The static token."""
        return TOKEN

    def set(
        self, case: schemathesis.Case[Any], data: str, context: schemathesis.AuthContext
    ) -> None:
        """Send it as `Authorization: Bearer <token>`."""
        case.headers["Authorization"] = f"Bearer {data}"


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_error_and_responses_conform(case: schemathesis.Case[Any]) -> None:
    """Generated and malformed inputs never give a 5xx or a response outside the schema."""
    # positive_data_acceptance is left out on purpose: JSON Schema cannot express a decimal's
    # max_digits/decimal_places for JSON numbers, so a schema-valid 1.005 is (rightly) a 422.
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance])


def test_generated_openapi_is_what_the_app_serves() -> None:
    """The committed `openapi.json` equals the document the running adapter serves."""
    committed = json.loads((GENERATED / "openapi.json").read_text(encoding="utf-8"))
    assert committed == openapi_document(registry.to_ir(), title=TITLE)


def test_generated_code_and_lock_are_up_to_date() -> None:
    """`generate --check` finds no stale file and `spec check` finds the lock up to date."""
    assert check_generated(registry.to_ir(), GENERATED, title=TITLE) == []
    assert check_lock(registry, GENERATED / "contractspec.lock.json").status == "up-to-date"


@pytest.mark.parametrize("status", ["200", "401", "403", "422", "429", "500", "504"])
def test_every_operation_documents_its_statuses(status: str) -> None:
    """Each CRM operation documents success, authentication, policy, validation, limits, errors."""
    paths = json.loads((GENERATED / "openapi.json").read_text(encoding="utf-8"))["paths"]
    # 11 CRM operations + the deal pipeline workflow's 10 (6 transitions, get, history,
    # available, comment: a workflow on the deals has no start, timer or migrate).
    assert len(paths) == 21
    assert all(status in method["responses"] for item in paths.values() for method in item.values())


def test_commands_document_conflicts_and_body_limits_and_all_need_a_bearer() -> None:
    """Commands document 409 and 413; every CRM operation requires the bearer scheme."""
    document = json.loads((GENERATED / "openapi.json").read_text(encoding="utf-8"))
    methods = [(m, op) for item in document["paths"].values() for m, op in item.items()]
    assert {m: sum(1 for x, _ in methods if x == m) for m in ("get", "post")} == {
        "get": 4 + 3,  # + crm.deal.pipeline.get, .history, .available
        "post": 7 + 7,  # + the 6 transitions, comment
    }
    assert all({"409", "413"} <= set(op["responses"]) for m, op in methods if m == "post")
    assert not any({"409", "413"} & set(op["responses"]) for m, op in methods if m == "get")
    assert all(op["security"] == [{"bearerAuth": []}] for _, op in methods)
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
