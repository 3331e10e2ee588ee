"""The CRM with an injected latency regression: intent, suggestion with its diff, approval, envelope."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from crm_evolution.story import run_story

from contractspec.core.testing import postgres_dsn, temporary_sql_engine
from contractspec.evolution import IntentKind, SuggestionKind, SuggestionStatus


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_latency_regression_ends_in_an_approved_envelope(kind: str, tmp_path: Path) -> None:
    """The slowed crm.deal.move yields an intent, a timeout suggestion with its diff, an approval
    and an envelope (plus the patch) in the configured directory."""
    if kind == "postgres" and not postgres_dsn():
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    out = tmp_path / "spec-suggestions"
    async with temporary_sql_engine(kind, tmp_path) as engine:
        story = await run_story(engine, out)
        request = await story.loop.workflow.get(story.approved.approval_id or "")
    assert request.status.value == "approved"
    intent = story.regression
    assert (intent.kind, intent.operation, intent.org_id) == (
        IntentKind.LATENCY_REGRESSION, "crm.deal.move", "*",
    )  # fmt: skip
    assert intent.evidence["methods"][0] == "robust_z_mad"
    assert intent.evidence["p95_ms"] > 150.0 > intent.evidence["baseline_p95_ms"]
    s = story.suggestion
    assert (s.kind, s.operation, s.breaking) == (
        SuggestionKind.TIMEOUT_POLICY,
        "crm.deal.move",
        False,
    )
    assert [(c["rule"], c["kind"], c["spec"]) for c in s.diff] == [
        ("spec-added", "operation_policy", "crm.deal.move@1")
    ]
    a = story.approved
    assert (a.status, a.decided_by) == (SuggestionStatus.APPROVED, "u-architect")
    assert story.envelope == out / f"{s.id}.json"
    envelope = read_json(story.envelope)
    assert envelope["suggestion"]["title"] == s.title
    assert envelope["approval"]["decisions"][0]["approver_id"] == "u-architect"
    assert envelope["diff"] == [dict(c) for c in s.diff]
    assert envelope["patch_applies_to_current_spec"] is True
    assert read_json(out / f"{s.id}.patch.json") == [dict(p) for p in s.patch]
    assert story.workflow is not None
    assert story.workflow.kind is SuggestionKind.NEW_OPERATION
