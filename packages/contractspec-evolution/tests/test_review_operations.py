"""The spec-suggestion review queue as operations, through a real Executor (memory, SQLite, PG)."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from evolution_app import REVIEWER, EvolutionEnv, event_names
from evolution_support import T0
from starlette.requests import Request

from contractspec.agent import ApprovalStatus
from contractspec.core import (
    Actor,
    CallContext,
    ConfigurationError,
    ConflictError,
    Executor,
    MemoryBackend,
    NotFoundError,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.http import Principal, create_app
from contractspec.core.testing import SequentialIds
from contractspec.evolution import (
    ALL_TENANTS,
    SpecGenerator,
    SpecSuggestion,
    SpecSuggestionOrchestrator,
    SuggestionStatus,
)
from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity
from contractspec.evolution.review import ReviewOperations, register_review_operations

OPS = "ops"
REVIEW_POLICY = RolePermissions(
    {
        "reviewer": ["evolution.review.*", "approval.decide"],
        "operator": ["evolution.review.*"],
        "viewer": ["evolution.review.read"],
    }
)
#: An operator who may act on the queue and decide approvals (`approval.decide` of the workflow).
OPERATOR = CallContext(actor=REVIEWER, org_id=OPS)
VIEWER = CallContext(actor=Actor.user("u-viewer", roles="viewer"), org_id=OPS)
_batches = itertools.count(1)


def make(env: EvolutionEnv, *ops_p95: tuple[str, float]) -> list[SpecSuggestion]:
    """Timeout suggestions from latency intents (one per `(operation, baseline p95)`)."""
    gen = SpecGenerator(env.registry, clock=env.clock, ids=SequentialIds(f"sg{next(_batches)}"))
    intents = [
        Intent(id=f"i-{k}", kind=IntentKind.LATENCY_REGRESSION, operation=op, org_id=ALL_TENANTS,
               window_start=T0, window_end=T0 + timedelta(minutes=15), detected_at=T0,
               confidence=0.8, severity=IntentSeverity.CRITICAL, summary=f"{op} is slow",
               evidence={"baseline_p95_ms": p95, "p95_ms": p95 * 5})
        for k, (op, p95) in enumerate(ops_p95)
    ]  # fmt: skip
    return gen.suggest(intents)


def review(env: EvolutionEnv) -> tuple[SpecSuggestionOrchestrator, Executor, ReviewOperations]:
    """The app's own registry with the review operations, run by its executor and policy."""
    orch = env.orchestrator(max_suggestions_per_operation=20)
    registry = SpecRegistry()
    ops = register_review_operations(registry, orchestrator=orch, org_id=OPS)
    executor = Executor(
        registry, backend=env.backend, policy=REVIEW_POLICY, clock=env.clock, ids=env.ids
    )
    return orch, executor, ops


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def remove(path: Path) -> None:
    path.unlink()


def exists(path: Path) -> bool:
    return path.exists()


async def audit_actions(env: EvolutionEnv, org: str = OPS) -> list[tuple[str, str]]:
    """`(action, outcome)` of the committed audit records of `org`, oldest first."""
    if isinstance(env.backend, MemoryBackend):
        return [(r.action, r.outcome) for r in env.backend.audit.records if r.org_id == org]
    from contractspec.core.sql import SqlBackend

    assert isinstance(env.backend, SqlBackend)
    return [(e.record.action, e.record.outcome) for e in await env.backend.audit.entries(org)]


async def test_list_show_approve_and_apply(env: EvolutionEnv) -> None:
    """An operator lists, shows the diff, approves (envelope written) and re-applies it."""
    orch, executor, ops = review(env)
    assert ops.names == (
        "evolution.review.suggestions.list",
        "evolution.review.suggestions.show",
        "evolution.review.suggestions.approve",
        "evolution.review.suggestions.reject",
        "evolution.review.suggestions.apply",
    )
    (first,) = (await orch.submit(make(env, ("shop.deal.move", 10.0)))).created
    env.clock.advance(1)
    (second,) = (await orch.submit(make(env, ("shop.deal.create", 20.0)))).created
    page = await executor.execute("evolution.review.suggestions.list", {}, VIEWER)
    assert [i.id for i in page.items] == [second.id, first.id]
    assert page.next_cursor is None
    shown = await executor.execute(
        "evolution.review.suggestions.show", {"suggestion_id": first.id}, VIEWER
    )
    assert shown.diff == [dict(c) for c in first.diff]
    assert shown.diff
    assert shown.patch == [dict(p) for p in first.patch]
    assert shown.approval is not None
    assert (shown.approval.id, shown.approval.status) == (first.approval_id, "pending")

    done = await executor.execute(
        "evolution.review.suggestions.approve",
        {"suggestion_id": first.id, "comment": "ship it"},
        OPERATOR,
    )
    assert done.status is SuggestionStatus.APPROVED
    assert done.decided_by == REVIEWER.id
    envelope = Path(done.envelope_path or "")
    assert envelope == env.out / f"{first.id}.json"
    assert read_json(envelope)["approval"]["decisions"][0]["comment"] == "ship it"
    assert (await orch.get(first.id)).status is SuggestionStatus.APPROVED
    assert first.approval_id is not None
    assert (await env.workflow.get(first.approval_id)).status is ApprovalStatus.APPROVED
    names = await event_names(env)
    assert names[-3:] == [
        "approval.approved",
        "suggestion.decided",
        "evolution.review.suggestions.approved",
    ]
    assert ("evolution.review.suggestions.approve", "success") in await audit_actions(env)

    remove(envelope)
    remove(env.out / f"{first.id}.patch.json")
    applied = await executor.execute(
        "evolution.review.suggestions.apply", {"suggestion_id": first.id}, OPERATOR
    )
    assert applied.envelope_path == str(envelope)
    assert read_json(env.out / f"{first.id}.patch.json") == shown.patch
    assert read_json(envelope)["patch_applies_to_current_spec"] is True
    assert (await event_names(env))[-1] == "evolution.review.suggestions.applied"

    rejected = await executor.execute(
        "evolution.review.suggestions.reject", {"suggestion_id": second.id}, OPERATOR
    )
    assert rejected.status is SuggestionStatus.REJECTED
    assert (await orch.get(second.id)).status is SuggestionStatus.REJECTED
    assert not exists(env.out / f"{second.id}.json")
    with pytest.raises(ConflictError, match="approve it first"):
        await executor.execute(
            "evolution.review.suggestions.apply", {"suggestion_id": second.id}, OPERATOR
        )
    assert (await executor.execute("evolution.review.suggestions.list", {}, VIEWER)).items == []


async def test_acting_without_permission_is_denied_and_audited(env: EvolutionEnv) -> None:
    """A viewer may read but not approve: PolicyDeniedError, a denied audit row, still pending."""
    orch, executor, _ = review(env)
    (s,) = (await orch.submit(make(env, ("shop.deal.move", 10.0)))).created
    with pytest.raises(PolicyDeniedError):
        await executor.execute(
            "evolution.review.suggestions.approve", {"suggestion_id": s.id}, VIEWER
        )
    assert ("evolution.review.suggestions.approve", "denied") in await audit_actions(env)
    assert (await orch.get(s.id)).status is SuggestionStatus.PENDING
    no_decide = CallContext(actor=Actor.user("u-r", roles="operator"), org_id=OPS)
    with pytest.raises(PolicyDeniedError, match=r"approval\.decide"):
        await executor.execute(
            "evolution.review.suggestions.approve", {"suggestion_id": s.id}, no_decide
        )
    assert (await orch.get(s.id)).status is SuggestionStatus.PENDING
    assert [a for a in await audit_actions(env) if a[1] == "denied"] == [
        ("evolution.review.suggestions.approve", "denied"),
        ("evolution.review.suggestions.approve", "denied"),
    ]
    assert "evolution.review.suggestions.approved" not in await event_names(env)


async def test_another_org_finds_no_suggestion(env: EvolutionEnv) -> None:
    """Suggestions belong to the reviewing org: a caller of a tenant org sees none."""
    orch, executor, _ = review(env)
    (s,) = (await orch.submit(make(env, ("shop.deal.move", 10.0)))).created
    policy_ok = CallContext(actor=REVIEWER, org_id="org-1")
    assert (await executor.execute("evolution.review.suggestions.list", {}, policy_ok)).items == []
    for name in ("show", "approve", "reject", "apply"):
        with pytest.raises(NotFoundError):
            await executor.execute(
                f"evolution.review.suggestions.{name}", {"suggestion_id": s.id}, policy_ok
            )
    assert (await orch.get(s.id)).status is SuggestionStatus.PENDING
    with pytest.raises(NotFoundError):
        await executor.execute(
            "evolution.review.suggestions.show", {"suggestion_id": "nope"}, OPERATOR
        )


async def test_pagination_walks_every_suggestion_exactly_once(env: EvolutionEnv) -> None:
    """Pages of 3 (ties on the creation time included) visit every suggestion once, newest first."""
    orch, executor, _ = review(env)
    made: list[SpecSuggestion] = []
    for i in range(8):
        if i % 3 == 0:
            env.clock.advance(1)
        op = ["shop.deal.move", "shop.deal.create", "shop.deal.archive"][i % 3]
        made += (await orch.submit(make(env, (op, 10.0 + i)))).created
    assert len(made) == 8
    seen: list[str] = []
    cursor = None
    while True:
        page = await executor.execute(
            "evolution.review.suggestions.list",
            {"limit": 3, "cursor": cursor, "status": None},
            OPERATOR,
        )
        seen += [i.id for i in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [s.id for s in sorted(made, key=lambda s: (s.created_at, s.id), reverse=True)]
    moves = await executor.execute(
        "evolution.review.suggestions.list", {"operation": "shop.deal.move"}, OPERATOR
    )
    assert {i.operation for i in moves.items} == {"shop.deal.move"}
    assert len(moves.items) == 3


@pytest.mark.parametrize(
    "payload",
    [{"limit": 0}, {"limit": 201}, {"cursor": "%%%"}, {"status": "applied"}],
)
async def test_bad_input_is_a_validation_error(env: EvolutionEnv, payload: dict[str, Any]) -> None:
    """Out-of-range limits, forged cursors and unknown states never reach a handler."""
    _, executor, _ = review(env)
    with pytest.raises(SpecValidationError):
        await executor.execute("evolution.review.suggestions.list", payload, OPERATOR)
    with pytest.raises(SpecValidationError):
        await executor.execute("evolution.review.suggestions.show", {}, OPERATOR)


def test_registering_needs_the_reviewing_org(env: EvolutionEnv) -> None:
    """Without an org to own the queue the registration fails with the fix."""
    with pytest.raises(ConfigurationError, match="org_id='ops'"):
        register_review_operations(SpecRegistry(), orchestrator=env.orchestrator(), org_id="")


async def test_http_routes_serve_the_review_operations(env: EvolutionEnv) -> None:
    """create_app exposes the review operations as routes."""
    orch, executor, ops = review(env)
    (s,) = (await orch.submit(make(env, ("shop.deal.move", 10.0)))).created
    session = Principal(OPERATOR.actor, org_id=OPS)

    def auth(request: Request) -> Principal | None:
        return session if request.headers.get("authorization") == "Bearer t" else None

    transport = httpx.ASGITransport(app=create_app(executor, authenticate=auth))
    headers = {"Authorization": "Bearer t"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert [n for n in ops.names if f"/{n.replace('.', '/')}/v1" not in paths] == []
        listed = await http.get("/evolution/review/suggestions/list/v1", headers=headers)
        assert listed.status_code == 200, listed.text
        assert [i["id"] for i in listed.json()["items"]] == [s.id]
        resp = await http.post(
            "/evolution/review/suggestions/approve/v1", json={"suggestion_id": s.id},
            headers=headers,
        )  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "approved"
