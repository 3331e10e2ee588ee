"""The CRM's HTTP surface under schemathesis: no server error, every response conforms.

The schema is the committed, generated `generated/openapi.json`; the app is the runtime adapter
(`contractspec.core.http`) serving the CRM registry on the in-memory backend, called as a `sales`
user. Schemathesis generates valid and malformed inputs for every operation (bodies, query strings,
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
from contractspec.core.http import create_app
from contractspec.core.ir import check_lock

GENERATED = Path(__file__).resolve().parents[1] / "generated"
TITLE = "CRM pipeline API"


def authenticate(request: Request) -> Actor | None:
    """Every call is made by a sales user (the fuzzer exercises inputs, not identities)."""
    return Actor.user("fuzzer", roles="sales")


def build_app() -> Any:
    """The CRM served by the runtime HTTP adapter on a fresh in-memory backend."""
    return create_app(
        Executor(registry, backend=MemoryBackend(), policy=policy()),
        authenticate=authenticate,
        title=TITLE,
    )


schema = schemathesis.openapi.from_path(GENERATED / "openapi.json")
schema.app = build_app()


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


@pytest.mark.parametrize("status", ["200", "403", "422", "500"])
def test_every_operation_documents_its_statuses(status: str) -> None:
    """Each CRM operation documents success, policy denial, validation and internal errors."""
    paths = json.loads((GENERATED / "openapi.json").read_text(encoding="utf-8"))["paths"]
    assert len(paths) == 11
    assert all(status in method["responses"] for item in paths.values() for method in item.values())
