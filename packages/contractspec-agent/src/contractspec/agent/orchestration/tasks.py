"""The standard task record, budgets and the `TaskStore` protocol with its in-memory adapter.

A task tree: a root task (the goal a person submitted) and the sub-tasks a planner split it into.
Every task is stored per tenant (`org_id`); a store never returns another tenant's task. Like the
agent's run store, `update` is compare-and-set on `version` and `claim` takes a task only while
nobody holds a live lease on it, so two orchestrators never run the same task at once and a task
whose orchestrator died is taken over exactly once. The SQL adapter is
`contractspec.agent.orchestration.sql.SqlTaskStore`; both pass one conformance suite.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from types import EllipsisType
from typing import Any, Protocol, runtime_checkable

from attrs import define, evolve, field

from contractspec.agent.tools import RiskLevel
from contractspec.core import ConflictError, NotFoundError, SpecValidationError, Transaction
from contractspec.core.numbers import as_finite_float

__all__ = [
    "Budget",
    "MemoryTaskStore",
    "Spend",
    "Task",
    "TaskStatus",
    "TaskStore",
    "task_claimable",
]


def _bad(field_name: str, message: str) -> SpecValidationError:
    return SpecValidationError(
        message, errors=[{"loc": field_name, "field": field_name, "msg": message}],
        details={"field": field_name},
    )  # fmt: skip


def _limit(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"budget.{name}", f"budget.{name} must be a number or None, got {value!r}")
    if as_finite_float(value) is None or value < 0:
        raise _bad(
            f"budget.{name}",
            f"budget.{name} must be a finite number >= 0 (or None for no limit), got {value!r}",
        )


@define(frozen=True)
class Spend:
    """What a task (or a whole task tree) used.

    Attributes:
        tokens: Model input + output tokens.
        cost: US dollars (0.0 while every provider price was unknown).
        seconds: Wall-clock seconds of agent work.
    """

    tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        return Spend(
            self.tokens + other.tokens, self.cost + other.cost, self.seconds + other.seconds
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"tokens": self.tokens, "cost": self.cost, "seconds": self.seconds}


@define(frozen=True)
class Budget:
    """Ceilings for a whole task tree (set on the root; every sub-task's spend counts).

    Attributes:
        tokens: Model tokens (input + output), or `None` for no limit.
        cost: US dollars, or `None`.
        seconds: Wall-clock seconds of agent work, or `None`.

    Raises:
        SpecValidationError: A limit is negative, not finite or not a number (`details["field"]`
            names it, e.g. `budget.tokens`).
    """

    tokens: int | None = None
    cost: float | None = None
    seconds: float | None = None

    def __attrs_post_init__(self) -> None:
        _limit("tokens", self.tokens)
        _limit("cost", self.cost)
        _limit("seconds", self.seconds)

    def exceeded(self, spend: Spend) -> str | None:
        """The first limit `spend` reached or crossed (`tokens`, `cost`, `seconds`), else `None`.

        A limit is reached when the spend is at or above it: no further work may start."""
        if self.tokens is not None and spend.tokens >= self.tokens:
            return "tokens"
        if self.cost is not None and spend.cost >= self.cost:
            return "cost"
        if self.seconds is not None and spend.seconds >= self.seconds:
            return "seconds"
        return None

    def remaining(self, spend: Spend) -> Spend:
        """What is left of each limit (a very large number where there is none)."""
        big = 2**62
        return Spend(
            big if self.tokens is None else max(self.tokens - spend.tokens, 0),
            float(big) if self.cost is None else max(self.cost - spend.cost, 0.0),
            float(big) if self.seconds is None else max(self.seconds - spend.seconds, 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"tokens": self.tokens, "cost": self.cost, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Budget | None:
        """Inverse of `to_dict` (`None` stays `None`)."""
        if data is None:
            return None
        return cls(data.get("tokens"), data.get("cost"), data.get("seconds"))


class TaskStatus(enum.StrEnum):
    """Where a task is.

    * `pending`: waits for the tasks it depends on.
    * `assigned`: ready; an agent is assigned and `task.assigned` was published.
    * `running`: an orchestrator holds its lease and drives the agent run.
    * `waiting_approval`: its agent run waits for a person's approval.
    * `delegated`: split into sub-tasks; finishes when they do.
    * `completed`, `failed`, `cancelled`: final.
    """

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    DELEGATED = "delegated"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for `completed`, `failed` and `cancelled`."""
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@define(frozen=True)
class Task:
    """One unit of work in a task tree.

    Attributes:
        id: Task id.
        org_id: Tenant.
        root_id: The tree's root (its own id for a root).
        goal: What should be achieved (text for the agent).
        actor: `{"id", "kind", "roles"}` of who submitted the tree (agents act for them).
        created_at, updated_at: UTC times.
        parent_id: The parent task, `None` for a root.
        position: Order among its siblings (0-based).
        inputs: JSON inputs for the agent.
        constraints: Rules the agent is told to respect (text; enforcement is the gateway's).
        risk: Highest `RiskLevel` the task is expected to need (an agent registered with a lower
            `max_risk` is never assigned it).
        budget: Ceilings of the whole tree (roots only).
        deadline: UTC time after which the task is not started (a root's deadline holds for
            the tree).
        capability: What kind of agent it needs (`"research"`, `"billing"`).
        agent: The assigned agent's name.
        depends_on: Ids of sibling tasks that must complete first (their results are handed
            to this task's agent).
        status: `TaskStatus`.
        result: JSON result once completed (a delegated task: its sub-tasks' results by id).
        evidence: JSON records of what was done: `{"run_id", "actions": [{"action_id", "tool",
            "decision"}]}` per agent run, approvals waited for.
        error: `{"code", "message"}` when failed or while a retry is scheduled.
        attempts: Agent runs started (a retry adds one).
        max_attempts: Runs allowed before the task fails.
        not_before: A scheduled retry does not start before this UTC time.
        run_id: The current agent run (bound when the run is created, in the same transaction).
        spent: What this task's own runs used (counted so far).
        run_spent: The part of `spent` that came from the current run (so a run that waited
            for an approval and then finished is counted once).
        tree_spent: Roots only: what the whole tree used (maintained by `TaskStore.add_spend`;
            `update` never changes it).
        version: Compare-and-set counter (also the fencing token of a claim).
        lease_owner, lease_expires_at: The orchestrator holding a `running` task, until when.
    """

    id: str
    org_id: str | None
    root_id: str
    goal: str
    actor: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    parent_id: str | None = None
    position: int = 0
    inputs: Mapping[str, Any] = field(factory=dict)
    constraints: tuple[str, ...] = ()
    risk: RiskLevel = RiskLevel.L0
    budget: Budget | None = None
    deadline: datetime | None = None
    capability: str | None = None
    agent: str | None = None
    depends_on: tuple[str, ...] = ()
    status: TaskStatus = TaskStatus.PENDING
    result: Any = None
    evidence: tuple[Mapping[str, Any], ...] = ()
    error: Mapping[str, Any] | None = None
    attempts: int = 0
    max_attempts: int = 3
    not_before: datetime | None = None
    run_id: str | None = None
    spent: Spend = field(factory=Spend)
    run_spent: Spend = field(factory=Spend)
    tree_spent: Spend = field(factory=Spend)
    version: int = 1
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None

    def evolve(self, **changes: Any) -> Task:
        """A copy with `changes` applied."""
        return evolve(self, **changes)

    @property
    def is_root(self) -> bool:
        """True for the root of a tree."""
        return self.parent_id is None


def task_claimable(task: Task, now: datetime) -> bool:
    """Whether `task` may be claimed at `now`: `assigned` and due (`not_before` passed or unset),
    `waiting_approval`, or `running` with a lease that expired (or none)."""
    if task.status is TaskStatus.ASSIGNED:
        return task.not_before is None or task.not_before <= now
    if task.status is TaskStatus.WAITING_APPROVAL:
        return True
    return task.status is TaskStatus.RUNNING and (
        task.lease_expires_at is None or task.lease_expires_at <= now
    )


@runtime_checkable
class TaskStore(Protocol):
    """Task trees per tenant. Every read takes the tenant: another org's task is never seen."""

    async def create(self, tx: Transaction, task: Task) -> None:
        """Insert a task. Raises `ConflictError` if the id exists."""
        ...

    async def get(self, tx: Transaction, task_id: str, *, org_id: str | None) -> Task | None:
        """The task of `org_id`, or `None` (also when it belongs to another org)."""
        ...

    async def update(self, tx: Transaction, task: Task, *, expected_version: int) -> Task:
        """Replace the task (of `task.org_id`) if its stored version is `expected_version`; return
        it with the version incremented (`tree_spent` is kept as stored). Raises `ConflictError`
        when another writer got there first, `NotFoundError` when it does not exist."""
        ...

    async def tree(self, tx: Transaction, root_id: str, *, org_id: str | None) -> list[Task]:
        """Every task of the tree (root included), by `created_at`, then `position`, then id."""
        ...

    async def due(
        self,
        tx: Transaction,
        *,
        now: datetime,
        org_id: str | EllipsisType | None = ...,
        limit: int = 100,
    ) -> list[Task]:
        """Tasks an orchestrator may claim at `now` (`task_claimable`) except `waiting_approval`
        ones, oldest first; of one org or of every org (`...`, the default)."""
        ...

    async def waiting(
        self, tx: Transaction, *, org_id: str | EllipsisType | None = ..., limit: int = 100
    ) -> list[Task]:
        """Tasks `waiting_approval`, oldest first."""
        ...

    async def claim(
        self, tx: Transaction, task: Task, *, owner: str, lease_until: datetime, now: datetime
    ) -> Task:
        """Take `task` (as read, at `task.version`) for `owner`: status `running`, lease until
        `lease_until`, version incremented (the new version is the claim's fencing token).
        Only a `task_claimable` task can be claimed; raises `ConflictError` otherwise and
        `NotFoundError` when it does not exist."""
        ...

    async def heartbeat(
        self, tx: Transaction, task_id: str, *, owner: str, lease_until: datetime
    ) -> bool:
        """Extend `owner`'s lease on a `running` task (the version does not change). `False`
        when `owner` no longer holds it."""
        ...

    async def add_spend(
        self, tx: Transaction, root_id: str, spend: Spend, *, org_id: str | None
    ) -> Spend:
        """Add `spend` to the root's `tree_spent` atomically (in the database); return the new
        total. Raises `NotFoundError` when the root does not exist in `org_id`."""
        ...


class MemoryTaskStore:
    """`TaskStore` in a dictionary; writes are undone if their transaction rolls back."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def _of(self, task_id: str, org_id: str | None) -> Task | None:
        task = self._tasks.get(task_id)
        return task if task is not None and task.org_id == org_id else None

    async def create(self, tx: Transaction, task: Task) -> None:
        """Insert a task."""
        if task.id in self._tasks:
            raise ConflictError(f"task {task.id!r} already exists", details={"task_id": task.id})
        tx.undo_item(self._tasks, task.id)
        self._tasks[task.id] = task

    async def get(self, tx: Transaction, task_id: str, *, org_id: str | None) -> Task | None:
        """The task of `org_id`, or `None`."""
        return self._of(task_id, org_id)

    async def update(self, tx: Transaction, task: Task, *, expected_version: int) -> Task:
        """Compare-and-set replace (keeps the stored `tree_spent`)."""
        current = self._of(task.id, task.org_id)
        if current is None:
            raise NotFoundError(f"task {task.id!r} does not exist", details={"task_id": task.id})
        if current.version != expected_version:
            raise ConflictError(
                f"task {task.id!r} was changed concurrently (version {current.version}, expected "
                f"{expected_version}); reload it and retry",
                details={"task_id": task.id},
            )
        stored = task.evolve(version=expected_version + 1, tree_spent=current.tree_spent)
        tx.undo_item(self._tasks, task.id)
        self._tasks[task.id] = stored
        return stored

    async def tree(self, tx: Transaction, root_id: str, *, org_id: str | None) -> list[Task]:
        """The tree's tasks in creation order."""
        found = [t for t in self._tasks.values() if t.root_id == root_id and t.org_id == org_id]
        return sorted(found, key=lambda t: (t.created_at, t.position, t.id))

    async def due(
        self,
        tx: Transaction,
        *,
        now: datetime,
        org_id: str | EllipsisType | None = ...,
        limit: int = 100,
    ) -> list[Task]:
        """Claimable tasks (not waiting for approval), oldest first."""
        found = [
            t
            for t in self._tasks.values()
            if t.status is not TaskStatus.WAITING_APPROVAL
            and task_claimable(t, now)
            and (org_id is ... or t.org_id == org_id)
        ]
        return sorted(found, key=lambda t: (t.created_at, t.position, t.id))[:limit]

    async def waiting(
        self, tx: Transaction, *, org_id: str | EllipsisType | None = ..., limit: int = 100
    ) -> list[Task]:
        """Tasks waiting for approval, oldest first."""
        found = [
            t
            for t in self._tasks.values()
            if t.status is TaskStatus.WAITING_APPROVAL and (org_id is ... or t.org_id == org_id)
        ]
        return sorted(found, key=lambda t: (t.created_at, t.position, t.id))[:limit]

    async def claim(
        self, tx: Transaction, task: Task, *, owner: str, lease_until: datetime, now: datetime
    ) -> Task:
        """Take the task if it is claimable."""
        current = self._of(task.id, task.org_id)
        if current is None:
            raise NotFoundError(f"task {task.id!r} does not exist", details={"task_id": task.id})
        if current.version != task.version or not task_claimable(current, now):
            raise ConflictError(
                f"task {task.id!r} is held or was claimed by another orchestrator",
                details={"task_id": task.id},
            )
        stored = current.evolve(
            status=TaskStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=lease_until,
            version=current.version + 1,
            updated_at=now,
        )
        tx.undo_item(self._tasks, task.id)
        self._tasks[task.id] = stored
        return stored

    async def heartbeat(
        self, tx: Transaction, task_id: str, *, owner: str, lease_until: datetime
    ) -> bool:
        """Extend the owner's lease."""
        current = self._tasks.get(task_id)
        if current is None or current.status is not TaskStatus.RUNNING:
            return False
        if current.lease_owner != owner:
            return False
        tx.undo_item(self._tasks, task_id)
        self._tasks[task_id] = current.evolve(lease_expires_at=lease_until)
        return True

    async def add_spend(
        self, tx: Transaction, root_id: str, spend: Spend, *, org_id: str | None
    ) -> Spend:
        """Add to the root's `tree_spent`."""
        current = self._of(root_id, org_id)
        if current is None:
            raise NotFoundError(f"task {root_id!r} does not exist", details={"task_id": root_id})
        total = current.tree_spent + spend
        tx.undo_item(self._tasks, root_id)
        self._tasks[root_id] = current.evolve(tree_spent=total)
        return total
