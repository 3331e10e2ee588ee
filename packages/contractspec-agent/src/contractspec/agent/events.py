"""Event specs the agent package publishes through core's `EventPublisher` port.

Register them in your `SpecRegistry` (`registry.register(*AGENT_EVENTS)`) so the bus, docs and IR
know them. Payloads never carry tool arguments or model text (they may hold personal data): they
carry ids, names and outcomes; the run store and the audit trail hold the details.
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
    "AGENT_EVENTS",
    "APPROVAL_EVENTS",
    "AgentEscalated",
    "ApprovalEvent",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunRecovered",
    "RunStarted",
    "RunWaiting",
    "ToolCalled",
    "ToolFailed",
    "agent_escalated",
    "approval_approved",
    "approval_expired",
    "approval_rejected",
    "approval_requested",
    "run_cancelled",
    "run_completed",
    "run_failed",
    "run_recovered",
    "run_started",
    "run_waiting",
    "tool_called",
    "tool_failed",
]


class RunStarted(BaseModel):
    """`agent.run.started`."""

    run_id: str
    agent: str
    agent_version: int


class ToolCalled(BaseModel):
    """`agent.tool.called`: a tool call was decided (executed, replayed, shadowed, or waiting)."""

    run_id: str
    step: int
    tool: str
    action_id: str | None
    risk: int
    decision: str
    duration_ms: float


class ToolFailed(BaseModel):
    """`agent.tool.failed`: invalid arguments, blocked by an invariant or approval, timeout, error."""

    run_id: str
    step: int
    tool: str
    action_id: str | None
    status: str
    error: str


class AgentEscalated(BaseModel):
    """`agent.escalated`: the run's confidence was below the agent's threshold (or unknown)."""

    run_id: str
    agent: str
    confidence: float | None
    threshold: float


class RunWaiting(BaseModel):
    """`agent.run.waiting`: the run is suspended until approvals are decided."""

    run_id: str
    agent: str
    approval_ids: list[str]


class RunCompleted(BaseModel):
    """`agent.run.completed`."""

    run_id: str
    agent: str
    status: str
    steps: int
    requests: int
    tool_calls: int
    total_tokens: int
    cost: float | None
    confidence: float | None


class RunFailed(BaseModel):
    """`agent.run.failed`."""

    run_id: str
    agent: str
    error_code: str
    message: str


class RunCancelled(BaseModel):
    """`agent.run.cancelled`: the task driving the run was cancelled; the run is final."""

    run_id: str
    agent: str
    steps: int


class RunRecovered(BaseModel):
    """`agent.run.recovered`: a worker took over a run whose lease expired (its worker died or
    stalled); `in_doubt` counts the calls that were started and never finished."""

    run_id: str
    agent: str
    previous_owner: str | None
    in_doubt: int


class ApprovalEvent(BaseModel):
    """Payload of the `approval.*` events."""

    approval_id: str
    subject_type: str
    subject_id: str | None
    action: str
    risk: int
    status: str
    actor_id: str | None


run_started = define_event("agent.run.started", payload=RunStarted, key="run_id")
tool_called = define_event("agent.tool.called", payload=ToolCalled, key="run_id")
tool_failed = define_event(
    "agent.tool.failed", payload=ToolFailed, key="run_id", severity="warning"
)
agent_escalated = define_event(
    "agent.escalated", payload=AgentEscalated, key="run_id", severity="notice"
)
run_waiting = define_event("agent.run.waiting", payload=RunWaiting, key="run_id")
run_completed = define_event("agent.run.completed", payload=RunCompleted, key="run_id")
run_failed = define_event("agent.run.failed", payload=RunFailed, key="run_id", severity="warning")
run_cancelled = define_event(
    "agent.run.cancelled", payload=RunCancelled, key="run_id", severity="warning"
)
run_recovered = define_event(
    "agent.run.recovered", payload=RunRecovered, key="run_id", severity="warning"
)
approval_requested = define_event(
    "approval.requested", payload=ApprovalEvent, key="approval_id", severity="notice"
)
approval_approved = define_event("approval.approved", payload=ApprovalEvent, key="approval_id")
approval_rejected = define_event("approval.rejected", payload=ApprovalEvent, key="approval_id")
approval_expired = define_event("approval.expired", payload=ApprovalEvent, key="approval_id")

#: Every `agent.*` event spec.
AGENT_EVENTS: tuple[EventSpec, ...] = (
    run_started,
    tool_called,
    tool_failed,
    agent_escalated,
    run_waiting,
    run_completed,
    run_failed,
    run_cancelled,
    run_recovered,
)
#: Every `approval.*` event spec.
APPROVAL_EVENTS: tuple[EventSpec, ...] = (
    approval_requested,
    approval_approved,
    approval_rejected,
    approval_expired,
)


def envelope(
    spec: EventSpec,
    payload: Mapping[str, Any],
    *,
    clock: Clock,
    ids: IdGenerator,
    org_id: str | None,
    actor: Actor | None,
    correlation_id: str | None = None,
    operation: str | None = None,
) -> EventEnvelope:
    """An `EventEnvelope` for one of this package's events (payload validated by its model)."""
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
        operation=operation,
    )
