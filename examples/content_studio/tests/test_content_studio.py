"""The content studio end to end, offline: brief → drafts → guardrails → approval → publish event,
on memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from content_studio.studio import (
    BRIEF,
    EDITOR,
    KINDS,
    LEAD,
    ORG,
    WRITER,
    ContentStudio,
    build_studio,
)

from contractspec.agent import ApprovalDecisionError, ApprovalRequiredError
from contractspec.agent.content import ContentRefusedError
from contractspec.agent.testing import ScriptedModel
from contractspec.core import MemoryBackend
from contractspec.core.testing import FakeClock, temporary_sql_engine


@pytest.fixture
async def studio(backend_kind: str, tmp_path: Path) -> AsyncIterator[ContentStudio]:
    """The studio with the offline writer on `backend_kind`."""
    if backend_kind == "memory":
        yield await build_studio(clock=FakeClock())
        return
    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        yield await build_studio(engine, clock=FakeClock())


async def _events(studio: ContentStudio) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(studio.backend, MemoryBackend):
        return [(e.name, e.payload.model_dump(mode="json")) for e in studio.backend.events.events]
    from sqlalchemy import select

    from contractspec.core.sql import SqlBackend, outbox_table

    assert isinstance(studio.backend, SqlBackend)
    async with studio.backend.engine.connect() as conn:
        rows = await conn.execute(
            select(outbox_table.c.name, outbox_table.c.payload).order_by(outbox_table.c.position)
        )
        return [(n, p if isinstance(p, dict) else json.loads(p)) for n, p in rows]


async def _audit(studio: ContentStudio) -> list[tuple[str, str]]:
    if isinstance(studio.backend, MemoryBackend):
        records = [r for r in studio.backend.audit.records if r.org_id == ORG]
    else:
        from contractspec.core.sql import SqlBackend

        assert isinstance(studio.backend, SqlBackend)
        records = [e.record for e in await studio.backend.audit.entries(ORG)]
    return [(r.action, r.outcome) for r in records]


async def test_brief_to_published_content(studio: ContentStudio) -> None:
    """The oversold blog draft is refused and rewritten; every kind passes its guardrails and
    SEO; nothing is published before approval; approved drafts are published once each, the
    rejected one never."""
    drafts = await studio.draft(BRIEF)
    assert set(drafts) == set(KINDS)
    assert [d.attempts for d in drafts.values()] == [2, 1, 1]
    assert drafts["blog_post"].refused[0].failed == ("no_banned_claims",)
    assert all(d.guardrails.passed and d.seo.passed for d in drafts.values())
    assert ("content.blog_post.guardrails", "denied") in await _audit(studio)

    requests = await studio.submit(drafts)
    assert {r.risk for r in requests.values()} == {2}
    names = [n for n, _ in await _events(studio)]
    assert "content.published" not in names
    with pytest.raises(ApprovalRequiredError):
        await studio.publish(requests["blog_post"].id)

    await studio.approvals.approve(requests["blog_post"].id, LEAD)
    await studio.approvals.approve(requests["email"].id, LEAD)
    await studio.approvals.reject(requests["social_posts"].id, LEAD, comment="not this week")
    blog = await studio.publish(requests["blog_post"].id, EDITOR)
    email = await studio.publish(requests["email"].id, EDITOR)
    assert (await studio.publish(requests["blog_post"].id, EDITOR)).id == blog.id
    with pytest.raises(ApprovalDecisionError):
        await studio.publish(requests["social_posts"].id, EDITOR)

    published = [p for n, p in await _events(studio) if n == "content.published"]
    assert [(p["kind"], p["publication_id"]) for p in published] == [
        ("blog_post", blog.id),
        ("email", email.id),
    ]
    assert blog.markdown.startswith("# Invoice software that helps freelancers get paid")
    assert "guaranteed results" not in blog.markdown.lower()
    refused = [p for n, p in await _events(studio) if n == "content.draft.refused"]
    assert [(p["kind"], p["failed"]) for p in refused] == [("blog_post", ["no_banned_claims"])]


async def test_a_writer_that_never_complies_is_refused(studio: ContentStudio) -> None:
    """A model that keeps making the banned claim gets three tries, then the draft is refused
    and nothing can be sent for approval."""
    bad = {
        "subject": "Never be late again with our invoices",
        "preheader": "Three small habits that help freelancers get paid on time.",
        "body_markdown": "Hi there. Send invoices on time.",
        "call_to_action": "Start a free trial",
        "disclaimer": "Results vary by client.",
    }
    model = ScriptedModel([json.dumps(bad)] * 3)
    with studio.runner.override(model=model), pytest.raises(ContentRefusedError) as info:
        await studio.draft(BRIEF, WRITER, kinds=["email"])
    model.assert_consumed()
    assert info.value.details["failed"] == ["no_banned_claims"]
    assert await studio.approvals.pending(org_id=ORG) == []
    names = [n for n, _ in await _events(studio)]
    assert names.count("content.draft.refused") == 3
    assert "content.published" not in names


def test_python_m_content_studio_runs_offline() -> None:
    """`python -m content_studio` runs the demo without a model and shows the publish events."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "content_studio"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PATH": "", "CONTRACTSPEC_ALLOW_MODEL_REQUESTS": "0", "COLUMNS": "200"},
    )
    assert "blog_post: approved by lee, published" in out.stdout
    assert "social_posts: rejected by lee, not published" in out.stdout
    assert "['content.draft.refused', 'content.published', 'content.published']" in out.stdout
