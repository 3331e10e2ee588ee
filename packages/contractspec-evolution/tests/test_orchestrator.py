"""SpecSuggestionOrchestrator: one source of truth with the ApprovalWorkflow, limits, envelopes."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from evolution_app import BOT, OUTSIDER, REVIEWER, REVIEWER2, EvolutionEnv, event_names
from evolution_support import T0

import contractspec.evolution
from contractspec.agent import ApprovalDecisionError, ApprovalStatus
from contractspec.core import Actor, ConfigurationError, NotFoundError, PolicyDeniedError
from contractspec.core.testing import SequentialIds
from contractspec.evolution import (
    ALL_TENANTS,
    SpecGenerator,
    SpecSuggestion,
    SpecSuggestionOrchestrator,
    SuggestionStatus,
)
from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity

_batches = itertools.count(1)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def listing(path: Path) -> list[Path]:
    return list(path.iterdir()) if path.exists() else []


def exists(path: Path) -> bool:
    return path.exists()


def suggestions(env: EvolutionEnv, *ops_p95: tuple[str, float]) -> list[SpecSuggestion]:
    gen = SpecGenerator(env.registry, clock=env.clock, ids=SequentialIds(f"sg{next(_batches)}"))
    intents = [
        Intent(id=f"i-{k}", kind=IntentKind.LATENCY_REGRESSION, operation=op, org_id=ALL_TENANTS,
               window_start=T0, window_end=T0 + timedelta(minutes=15), detected_at=T0,
               confidence=0.8, severity=IntentSeverity.CRITICAL, summary=f"{op} is slow",
               evidence={"baseline_p95_ms": p95, "p95_ms": p95 * 5})
        for k, (op, p95) in enumerate(ops_p95)
    ]  # fmt: skip
    return gen.suggest(intents)


async def test_submit_stores_publishes_and_requests_approval(env: EvolutionEnv) -> None:
    """A new suggestion is stored pending, announced, and has one pending approval request."""
    orch = env.orchestrator()
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    result = await orch.submit([s])
    (created,) = result.created
    assert (created.status, created.version) == (SuggestionStatus.PENDING, 2)
    assert created.approval_id is not None
    request = await env.workflow.get(created.approval_id)
    assert (request.status, request.subject_type, request.subject_id) == (
        ApprovalStatus.PENDING, "evolution.suggestion", s.id,
    )  # fmt: skip
    assert request.key == f"suggestion:{s.id}"
    assert request.arguments["fingerprint"] == s.fingerprint
    assert request.risk == 1
    assert await event_names(env) == ["suggestion.created", "approval.requested"]
    again = await orch.submit([s])
    assert (again.created, [d.id for d in again.duplicates]) == ((), [s.id])
    assert [p.id for p in await orch.pending()] == [s.id]


async def test_approving_the_suggestion_resolves_the_approval_and_writes_the_envelope(
    env: EvolutionEnv,
) -> None:
    """approve() decides the workflow request; the envelope and patch land in output_dir."""
    orch = env.orchestrator()
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    await orch.submit([s])
    env.clock.advance(60)
    approved = await orch.approve(s.id, REVIEWER, comment="ship it")
    assert (approved.status, approved.decided_by) == (SuggestionStatus.APPROVED, "u-reviewer")
    assert approved.decided_at == T0 + timedelta(seconds=60)
    assert approved.approval_id is not None
    request = await env.workflow.get(approved.approval_id)
    assert request.status is ApprovalStatus.APPROVED
    path = Path(approved.envelope_path or "")
    assert path == env.out / f"{s.id}.json"
    envelope = read_json(path)
    assert envelope["format"] == "contractspec.suggestion-envelope"
    assert envelope["suggestion"]["id"] == s.id
    assert envelope["approval"]["decisions"][0]["comment"] == "ship it"
    assert envelope["patch_applies_to_current_spec"] is True
    assert envelope["base_ir_digest"] == envelope["current_ir_digest"] == s.base_ir_digest
    assert envelope["diff"] == [dict(c) for c in s.diff]
    assert read_json(env.out / f"{s.id}.patch.json") == [dict(p) for p in s.patch]
    assert (await event_names(env))[-2:] == ["approval.approved", "suggestion.decided"]
    with pytest.raises(ApprovalDecisionError, match="already approved"):
        await orch.approve(s.id, REVIEWER2)
    with pytest.raises(ApprovalDecisionError):
        await orch.reject(s.id, REVIEWER2)


async def test_deciding_the_approval_resolves_the_suggestion(env: EvolutionEnv) -> None:
    """A request rejected in the workflow itself makes the suggestion rejected on the next read."""
    orch = env.orchestrator()
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    (created,) = (await orch.submit([s])).created
    assert created.approval_id is not None
    await env.workflow.reject(created.approval_id, REVIEWER, comment="not now")
    stored = (await orch.list())[0]
    assert stored.status is SuggestionStatus.PENDING  # the projection lags until read
    resolved = await orch.get(s.id)
    assert (resolved.status, resolved.decided_by, resolved.envelope_path) == (
        SuggestionStatus.REJECTED, "u-reviewer", None,
    )  # fmt: skip
    with pytest.raises(ApprovalDecisionError, match="already rejected"):
        await orch.approve(s.id, REVIEWER2)
    assert listing(env.out) == []
    dup = await orch.submit(suggestions(env, ("shop.deal.move", 10.0)))
    assert [d.status for d in dup.duplicates] == [SuggestionStatus.REJECTED]


async def test_approval_events_resolve_suggestions(env: EvolutionEnv) -> None:
    """handle_event(approval.approved) mirrors the decision at once; other events are ignored."""
    orch = env.orchestrator()
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    (created,) = (await orch.submit([s])).created
    assert created.approval_id is not None
    await env.workflow.approve(created.approval_id, REVIEWER)
    events = env.backend.events.events if env.kind == "memory" else None  # type: ignore[attr-defined]
    if events is not None:
        approved_event = next(e for e in events if e.name == "approval.approved")
        resolved = await orch.handle_event(approved_event)
        assert resolved is not None
        assert resolved.status is SuggestionStatus.APPROVED
        created_event = next(e for e in events if e.name == "suggestion.created")
        assert await orch.handle_event(created_event) is None
    changed = await orch.reconcile()
    final = await orch.get(s.id)
    assert final.status is SuggestionStatus.APPROVED
    assert exists(env.out / f"{s.id}.json")
    assert len(changed) == (0 if events is not None else 1)


async def test_decision_rules_of_the_workflow_apply(env: EvolutionEnv) -> None:
    """The requester cannot approve, outsiders are denied, and a quorum waits for two approvers."""
    orch = env.orchestrator(quorum=2)
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    await orch.submit([s])
    with pytest.raises(ApprovalDecisionError, match="cannot decide"):
        await orch.approve(s.id, Actor.user("contractspec.evolution", roles="reviewer"))
    with pytest.raises(PolicyDeniedError):
        await orch.approve(s.id, OUTSIDER)
    half = await orch.approve(s.id, REVIEWER)
    assert half.status is SuggestionStatus.PENDING
    with pytest.raises(ApprovalDecisionError, match="already decided"):
        await orch.approve(s.id, REVIEWER)
    done = await orch.approve(s.id, REVIEWER2)
    assert done.status is SuggestionStatus.APPROVED
    with pytest.raises(NotFoundError):
        await orch.approve("missing", REVIEWER)


async def test_max_suggestions_per_operation(env: EvolutionEnv) -> None:
    """Beyond max_suggestions_per_operation pending ones, new suggestions are skipped with a reason."""
    orch = env.orchestrator(max_suggestions_per_operation=1)
    first = suggestions(env, ("shop.deal.move", 10.0))
    second = suggestions(env, ("shop.deal.move", 30.0), ("shop.deal.create", 5.0))
    await orch.submit(first)
    result = await orch.submit(second)
    assert [c.operation for c in result.created] == ["shop.deal.create"]
    ((skipped, reason),) = result.skipped
    assert skipped.operation == "shop.deal.move"
    assert "max_suggestions_per_operation=1" in reason
    await orch.reject(first[0].id, REVIEWER)
    assert [c.operation for c in (await orch.submit(second)).created] == ["shop.deal.move"]


async def test_auto_approval_is_off_unless_set_and_never_for_breaking(env: EvolutionEnv) -> None:
    """Only with a threshold, and only non-breaking suggestions at or above it, are auto-approved."""
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    plain = await env.orchestrator().submit([s])
    assert plain.created[0].status is SuggestionStatus.PENDING
    auto = env.orchestrator(auto_approve_threshold=0.5, auto_approver=BOT)
    (t,) = suggestions(env, ("shop.deal.create", 10.0))
    (approved,) = (await auto.submit([t])).created
    assert (approved.status, approved.decided_by) == (SuggestionStatus.APPROVED, "evolution-bot")
    assert exists(env.out / f"{t.id}.json")
    breaking = suggestions(env, ("shop.deal.count", 10.0))[0].evolve(
        id="sg-breaking", fingerprint="b" * 64, breaking=True
    )
    (held,) = (await auto.submit([breaking])).created
    assert held.status is SuggestionStatus.PENDING
    request = await env.workflow.get(held.approval_id or "")
    assert request.risk == 3


async def test_expired_approval_expires_the_suggestion(env: EvolutionEnv) -> None:
    """An approval that expires makes the suggestion expired (final)."""
    orch = env.orchestrator(expires_in_s=3600)
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    await orch.submit([s])
    env.clock.advance(7200)
    assert (await orch.get(s.id)).status is SuggestionStatus.EXPIRED
    with pytest.raises(ApprovalDecisionError, match="already expired"):
        await orch.approve(s.id, REVIEWER)


async def test_reconcile_requests_missing_approvals(env: EvolutionEnv) -> None:
    """A suggestion stored without its approval request (a crash in between) gets one."""
    orch = env.orchestrator()
    (s,) = suggestions(env, ("shop.deal.move", 10.0))
    tx = await orch.unit_of_work.begin()
    await env.suggestions.add(tx, s)
    await tx.commit()
    await orch.reconcile()
    stored = await orch.get(s.id)
    assert stored.approval_id is not None
    assert (await env.workflow.get(stored.approval_id)).subject_id == s.id


def test_configuration_is_checked(env: EvolutionEnv, tmp_path: Path) -> None:
    """Library directories, thresholds without an approver and bad limits are refused."""
    inside = Path(contractspec.evolution.__file__).parent / "out"
    with pytest.raises(ConfigurationError, match="inside the installed ContractSpec library"):
        SpecSuggestionOrchestrator(env.suggestions, env.workflow, output_dir=inside)
    with pytest.raises(ConfigurationError, match="auto_approver"):
        SpecSuggestionOrchestrator(env.suggestions, env.workflow, output_dir=tmp_path,
                                   auto_approve_threshold=0.9)  # fmt: skip
    with pytest.raises(ConfigurationError, match="auto_approve_threshold"):
        SpecSuggestionOrchestrator(env.suggestions, env.workflow, output_dir=tmp_path,
                                   auto_approve_threshold=1.5, auto_approver=BOT)  # fmt: skip
    with pytest.raises(ConfigurationError, match="max_suggestions_per_operation"):
        SpecSuggestionOrchestrator(env.suggestions, env.workflow, output_dir=tmp_path,
                                   max_suggestions_per_operation=0)  # fmt: skip
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigurationError, match="not a directory"):
        SpecSuggestionOrchestrator(env.suggestions, env.workflow, output_dir=a_file)
