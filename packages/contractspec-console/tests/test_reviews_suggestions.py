"""Spec-suggestion section: the diff rendered (breaking flagged), approve/reject (memory/SQLite/PG)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest
from console_support import assert_safe_html
from evolution_app import EvolutionEnv, evolution_env
from evolution_support import T0
from reviews_support import ReviewClient, review_console

from contractspec.agent import ApprovalStatus
from contractspec.console.reviews import Suggestions
from contractspec.console.reviews.evolution import patch_rows
from contractspec.core import Actor, ConfigurationError, Executor, RolePermissions, SpecRegistry
from contractspec.core.testing import SequentialIds
from contractspec.core.testing.fixtures import backend_kind
from contractspec.evolution import ALL_TENANTS, SpecGenerator, SpecSuggestion, SuggestionStatus
from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity
from contractspec.evolution.review import register_review_operations

__all__ = ["backend_kind"]

OPS = "ops"
POLICY = RolePermissions(
    {"reviewer": ["evolution.review.*", "approval.decide"], "viewer": ["evolution.review.read"]}
)
USERS = {
    # the evolution env's approval workflow lets the "reviewer" role decide
    "rita": Actor.user("u-reviewer", roles="reviewer"),
    "vic": Actor.user("u-viewer", roles="viewer"),
}
HOSTILE = "<img src=x onerror=alert(1)> & </table>"
BREAKING = {
    "rule": "request-property-became-required",
    "severity": "breaking",
    "kind": "operation",
    "spec": "shop.deal.create@1",
    "path": "/input/properties/amount",
    "message": f"amount became required {HOSTILE}",
}
_batches = itertools.count(1)


class Setup:
    def __init__(self, env: EvolutionEnv) -> None:
        self.env = env
        self.orch = env.orchestrator(max_suggestions_per_operation=20)
        registry = SpecRegistry()
        register_review_operations(registry, orchestrator=self.orch, org_id=OPS)
        executor = Executor(
            registry, backend=env.backend, policy=POLICY, clock=env.clock, ids=env.ids
        )
        self.client = ReviewClient(
            review_console(executor, USERS, OPS, [Suggestions()]), USERS, OPS
        )

    async def suggest(self, *, breaking: bool) -> SpecSuggestion:
        gen = SpecGenerator(
            self.env.registry, clock=self.env.clock, ids=SequentialIds(f"sg{next(_batches)}")
        )
        intent = Intent(
            id="i-1", kind=IntentKind.LATENCY_REGRESSION, operation="shop.deal.move",
            org_id=ALL_TENANTS, window_start=T0, window_end=T0 + timedelta(minutes=15),
            detected_at=T0, confidence=0.8, severity=IntentSeverity.CRITICAL,
            summary="slow", evidence={"baseline_p95_ms": 10.0, "p95_ms": 50.0},
        )  # fmt: skip
        (s,) = gen.suggest([intent])
        if breaking:  # the review data as a breaking suggestion would carry it
            s = attrs.evolve(s, title=f"Tighten {HOSTILE}", diff=(*s.diff, BREAKING), breaking=True)
        (created,) = (await self.orch.submit([s])).created
        return created


@pytest.fixture
async def setup(backend_kind: str, tmp_path: Path) -> AsyncIterator[Setup]:
    async with evolution_env(backend_kind, tmp_path) as env:
        s = Setup(env)
        yield s
        await s.client.aclose()


async def test_diff_rendered_breaking_flagged_and_approved(setup: Setup) -> None:
    """The suggestion's page shows the classified diff with the breaking change flagged, the
    patch as added rows, escaped values; approving through the form approves it."""
    s = await setup.suggest(breaking=True)
    listing = await setup.client.page("vic", "/admin/suggestions/")
    row = listing.select_one(f'tr[data-id="{s.id}"]')
    assert row.select_one("a").get_text() == f"Tighten {HOSTILE}"
    assert row.select_one("strong.breaking").get_text() == "breaking"
    page = await setup.client.page("rita", f"/admin/suggestions/{s.id}")
    assert page.select_one("h1").get_text() == f"Tighten {HOSTILE}"
    assert "1 change(s)" in page.select_one("p.breaking").get_text()
    changes = [
        [td.get_text(strip=True) for td in tr.select("td")]
        for tr in page.select("table.diff tbody tr")
    ]
    assert [
        "info",
        "operation_policy",
        "spec-added",
        "shop.deal.move@1",
        "operation_policy added",
    ] in changes
    assert [
        "breaking", "operation", "request-property-became-required",
        "shop.deal.create@1/input/properties/amount", f"amount became required {HOSTILE}",
    ] in changes  # fmt: skip
    patch = [
        [td.get_text(strip=True) for td in tr.select("td")][:2]
        for tr in page.select("table.patch tbody tr")
    ]
    assert patch == [["added", "/specs/operation_policy"], ["added", "/specs/operation_policy/-"]]
    assert [f["action"] for f in page.select("form.action")] == [
        f"/admin/suggestions/{s.id}/approve",
        f"/admin/suggestions/{s.id}/reject",
    ]
    done = await setup.client.post("rita", f"/admin/suggestions/{s.id}/approve", {"comment": "go"})
    assert done.status_code == 303
    assert (await setup.orch.get(s.id)).status is SuggestionStatus.APPROVED
    request = await setup.env.workflow.get(str(s.approval_id))
    assert request.status is ApprovalStatus.APPROVED
    assert request.decisions[0].comment == "go"
    after = await setup.client.page("rita", f"/admin/suggestions/{s.id}")
    assert after.select_one("dd.status").get_text() == "approved"
    # approved: only the envelope can be (re)written
    assert [f["action"] for f in after.select("form.action")] == [
        f"/admin/suggestions/{s.id}/apply"
    ]


async def test_reject_and_denials(setup: Setup) -> None:
    """A viewer gets no forms and a 403 when forcing; a reviewer rejects with a comment."""
    s = await setup.suggest(breaking=False)
    page = await setup.client.page("vic", f"/admin/suggestions/{s.id}")
    assert page.select("form.action") == []
    assert page.select_one("p.breaking") is None
    forced = await setup.client.force("vic", f"/admin/suggestions/{s.id}/approve", {})
    assert forced.status_code == 403
    assert (await setup.orch.get(s.id)).status is SuggestionStatus.PENDING
    done = await setup.client.post("rita", f"/admin/suggestions/{s.id}/reject", {"comment": "no"})
    assert done.status_code == 303
    after = await setup.client.page("rita", f"/admin/suggestions/{s.id}")
    assert after.select_one("dd.status").get_text() == "rejected"
    assert after.select("form.action") == []
    assert_safe_html((await setup.client.get("rita", "/admin/suggestions/?status=any")).text)


def test_patch_rows_name_added_removed_and_changed() -> None:
    """RFC 6902 add/remove/replace read as added/removed/changed; other ops keep their name."""
    rows = patch_rows(
        [
            {"op": "add", "path": "/a", "value": {"x": 1}},
            {"op": "remove", "path": "/b"},
            {"op": "replace", "path": "/c", "value": 2},
            {"op": "move", "path": "/d", "from": "/e"},
        ]
    )
    assert rows == [
        {"change": "added", "path": "/a", "value": '{\n  "x": 1\n}'},
        {"change": "removed", "path": "/b", "value": ""},
        {"change": "changed", "path": "/c", "value": "2"},
        {"change": "move", "path": "/d", "value": "/e"},
    ]


def test_missing_evolution_package_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without contractspec-evolution the section names the package to install."""
    monkeypatch.setitem(sys.modules, "contractspec.evolution.review", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'contractspec-evolution'"):
        Suggestions()
