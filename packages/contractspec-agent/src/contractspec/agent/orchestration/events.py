"""Event specs of task hand-offs: `task.assigned`, `task.completed`, `task.failed`.

The orchestrator publishes them through core's `EventPublisher` port in the same transaction as
the task change they announce (the transactional outbox), so a consumer on the bus sees each once
per change (at-least-once delivery: make consumers idempotent, e.g. with contractspec-bus's
`IdempotentConsumer`). Register them in your `SpecRegistry` (`registry.register(*TASK_EVENTS)`).
Payloads carry ids, names and outcomes, never the goal text or results (they may hold personal
data); the task store holds those.
"""

from __future__ import annotations

from pydantic import BaseModel

from contractspec.core import EventSpec, define_event

__all__ = [
    "TASK_EVENTS",
    "TaskAssigned",
    "TaskCompleted",
    "TaskFailed",
    "task_assigned",
    "task_completed",
    "task_failed",
]


class TaskAssigned(BaseModel):
    """`task.assigned`: the task is ready and `agent` should do it (a hand-off)."""

    task_id: str
    root_id: str
    parent_id: str | None
    agent: str | None
    capability: str | None
    risk: int
    attempt: int


class TaskCompleted(BaseModel):
    """`task.completed`: the task (or, for a delegated task, all its sub-tasks) completed."""

    task_id: str
    root_id: str
    parent_id: str | None
    agent: str | None
    run_id: str | None
    tokens: int
    cost: float
    seconds: float


class TaskFailed(BaseModel):
    """`task.failed`: final failure (retries exhausted, budget or deadline exceeded, refused,
    or a sub-task failed)."""

    task_id: str
    root_id: str
    parent_id: str | None
    agent: str | None
    run_id: str | None
    error_code: str
    attempts: int


task_assigned = define_event("task.assigned", payload=TaskAssigned, key="root_id")
task_completed = define_event("task.completed", payload=TaskCompleted, key="root_id")
task_failed = define_event("task.failed", payload=TaskFailed, key="root_id", severity="warning")

#: Every `task.*` event spec.
TASK_EVENTS: tuple[EventSpec, ...] = (task_assigned, task_completed, task_failed)
