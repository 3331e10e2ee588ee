"""Event specs the evolution loop publishes through core's `EventPublisher` port.

Register them in your `SpecRegistry` (`registry.register(*EVOLUTION_EVENTS)`) so the bus, the docs
and the IR know them. Payloads carry ids, names, scores and summaries, never request data.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from contractspec.core import Clock, EventEnvelope, EventSpec, IdGenerator, define_event

__all__ = [
    "EVOLUTION_EVENTS",
    "IntentDetected",
    "SuggestionCreated",
    "SuggestionDecided",
    "intent_detected",
    "make_envelope",
    "suggestion_created",
    "suggestion_decided",
]


class IntentDetected(BaseModel):
    """`intent.detected`: the detector found something in a closed window or the trace buffer."""

    intent_id: str
    kind: str
    operation: str
    org_id: str | None
    severity: str
    confidence: float
    window_start: datetime
    window_end: datetime
    summary: str
    sequence: list[str] = []


class SuggestionCreated(BaseModel):
    """`suggestion.created`: a spec suggestion was stored and sent for approval."""

    suggestion_id: str
    kind: str
    operation: str
    title: str
    breaking: bool
    confidence: float
    priority: int
    fingerprint: str


class SuggestionDecided(BaseModel):
    """`suggestion.decided`: the suggestion's approval request became final."""

    suggestion_id: str
    status: str
    approval_id: str | None
    decided_by: str | None
    envelope_path: str | None


intent_detected = define_event(
    "intent.detected",
    payload=IntentDetected,
    description="The evolution detector found an error spike, latency regression, throughput "
    "change, SLO burn or a frequent workflow.",
    key="operation",
    tags=("evolution",),
)
suggestion_created = define_event(
    "suggestion.created",
    payload=SuggestionCreated,
    description="A spec suggestion was stored and its approval requested.",
    key="suggestion_id",
    tags=("evolution",),
)
suggestion_decided = define_event(
    "suggestion.decided",
    payload=SuggestionDecided,
    description="A spec suggestion was approved, rejected or expired.",
    key="suggestion_id",
    tags=("evolution",),
)

#: Every event the evolution package publishes.
EVOLUTION_EVENTS: tuple[EventSpec, ...] = (intent_detected, suggestion_created, suggestion_decided)


def make_envelope(
    spec: EventSpec,
    payload: Mapping[str, Any],
    *,
    clock: Clock,
    ids: IdGenerator,
    correlation_id: str | None = None,
) -> EventEnvelope:
    """An `EventEnvelope` for one of this package's events (payload validated by its model)."""
    model = spec.payload.model_validate(dict(payload))
    key = getattr(model, spec.key) if spec.key else None
    return EventEnvelope(
        id=ids.new_id(),
        name=spec.name,
        version=spec.version,
        occurred_at=clock.now(),
        payload=model,
        org_id=None,
        actor_id="contractspec.evolution",
        actor_kind="service",
        correlation_id=correlation_id,
        causation_id=correlation_id,
        key=None if key is None else str(key),
    )
