"""Event specs of content generation (register them: `registry.register(*CONTENT_EVENTS)`).

Payloads carry ids, names and outcomes, never the draft's text (the audit trail, the approval
request and the publication record hold it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from contractspec.core import (
    Actor,
    Clock,
    EventEnvelope,
    EventSpec,
    IdGenerator,
    define_event,
)

__all__ = [
    "CONTENT_EVENTS",
    "ContentPublished",
    "DraftRefused",
    "content_draft_refused",
    "content_published",
]


class DraftRefused(BaseModel):
    """`content.draft.refused`: a generated draft failed its guardrails (or, with `seo_gate`,
    its SEO checks) and was not kept."""

    brief_id: str
    kind: str
    run_id: str
    attempt: int
    failed: list[str]
    final: bool


class ContentPublished(BaseModel):
    """`content.published`: an approved draft was published."""

    publication_id: str
    brief_id: str
    kind: str
    channel: str
    draft_id: str
    approval_id: str
    content_hash: str


content_draft_refused = define_event(
    "content.draft.refused",
    payload=DraftRefused,
    key="brief_id",
    severity="warning",
    description="A generated draft broke a guardrail and was refused (regenerated or given up).",
)
content_published = define_event(
    "content.published",
    payload=ContentPublished,
    key="brief_id",
    description="An approved draft was published (emitted by content.publish through the outbox).",
)

#: Every `content.*` event spec.
CONTENT_EVENTS: tuple[EventSpec, ...] = (content_draft_refused, content_published)


def _envelope(
    spec: EventSpec,
    payload: Mapping[str, Any],
    *,
    clock: Clock,
    ids: IdGenerator,
    org_id: str | None,
    actor: Actor | None,
    correlation_id: str | None,
) -> EventEnvelope:
    model = spec.payload.model_validate(payload)
    key = getattr(model, spec.key) if spec.key else None
    return EventEnvelope(
        id=ids.new_id(),
        name=spec.name,
        version=spec.version,
        occurred_at=clock.now(),
        payload=model,
        org_id=org_id,
        actor_id=actor.id if actor else None,
        actor_kind=actor.kind.value if actor else None,
        correlation_id=correlation_id,
        causation_id=correlation_id,
        key=None if key is None else str(key),
    )
