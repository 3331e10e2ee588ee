"""Multi-agent orchestration: task trees, a planner, hand-offs over the event bus.

```python
from contractspec.agent.orchestration import (
    AgentDirectory, Budget, Orchestrator, Planner, TASK_EVENTS, planner_agent,
)
from contractspec.agent.orchestration.sql import SqlTaskStore   # pip install 'contractspec-agent[sql]'
```

A goal becomes a tree of `Task`s (goal, inputs, constraints, risk, budget, deadline, parent,
status, result, evidence) stored per tenant; the `Planner` (an agent with a structured `Plan`
output) splits it and the `AgentDirectory` assigns each task by capability; tasks hand off through
`task.assigned` / `task.completed` / `task.failed` events written to the outbox with the change;
failing tasks retry with backoff; a `Budget` holds for the whole tree; every tool effect goes
through the agent's tool gateway; a crashed orchestrator's tasks are taken over exactly once.
"""

from __future__ import annotations

from contractspec.agent.orchestration.events import (
    TASK_EVENTS,
    TaskAssigned,
    TaskCompleted,
    TaskFailed,
    task_assigned,
    task_completed,
    task_failed,
)
from contractspec.agent.orchestration.orchestrator import Orchestrator, TaskRetry
from contractspec.agent.orchestration.planner import (
    AgentDirectory,
    Plan,
    PlanError,
    Planner,
    PlanStep,
    planner_agent,
)
from contractspec.agent.orchestration.tasks import (
    Budget,
    MemoryTaskStore,
    Spend,
    Task,
    TaskStatus,
    TaskStore,
    task_claimable,
)

__all__ = [
    "TASK_EVENTS",
    "AgentDirectory",
    "Budget",
    "MemoryTaskStore",
    "Orchestrator",
    "Plan",
    "PlanError",
    "PlanStep",
    "Planner",
    "Spend",
    "Task",
    "TaskAssigned",
    "TaskCompleted",
    "TaskFailed",
    "TaskRetry",
    "TaskStatus",
    "TaskStore",
    "planner_agent",
    "task_assigned",
    "task_claimable",
    "task_completed",
    "task_failed",
]
