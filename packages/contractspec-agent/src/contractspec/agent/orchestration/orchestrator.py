"""`Orchestrator`: task trees run by registered agents, handed off over the event bus.

```text
submit(goal)  -> planner splits the goal (or one capability) -> tasks stored -> task.assigned
execute(task) -> claim (lease, fencing version) -> budget / deadline checks -> AgentRunner.run
              -> every tool call through the gateway (risk, invariants, approvals, ledger)
              -> completed: task.completed, dependents assigned (task.assigned), parent settled
              -> waiting_approval: resumed by resume_waiting() once a person decided
              -> error: retried with backoff (attempts left) or task.failed, parent failed
recover       -> run_once() takes tasks whose orchestrator died (lease expired) and goes on
                 from the agent run bound to them (AgentRunner.resume: its own lease and ledger)
```

Exactly once: a task is claimed with a compare-and-set; its agent run is bound to it in the
transaction that creates the run (so a crash leaves either no run or a bound one, never an
orphan that a second orchestrator would duplicate); the run resumes from its last durable step
and its tool calls go through the gateway's idempotency ledger; the task's completion, its event,
the tree's spend and its dependents' hand-offs commit together.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from time import perf_counter
from types import EllipsisType
from typing import Any

import attrs
from attrs import define
from pydantic import BaseModel

from contractspec.agent.errors import LeaseLostError, UsageLimitExceeded
from contractspec.agent.messages import Usage
from contractspec.agent.orchestration.events import task_assigned, task_completed, task_failed
from contractspec.agent.orchestration.planner import AgentDirectory, Planner, _plan_error
from contractspec.agent.orchestration.tasks import (
    Budget,
    MemoryTaskStore,
    Spend,
    Task,
    TaskStatus,
    TaskStore,
    task_claimable,
)
from contractspec.agent.runner import AgentRunner, RunResult
from contractspec.agent.specs import AgentSpec, UsageLimits
from contractspec.agent.stores import ApprovalStatus, RunStatus
from contractspec.agent.tools import RiskLevel
from contractspec.core import (
    Actor,
    ActorKind,
    CallContext,
    Clock,
    ConfigurationError,
    ConflictError,
    ContractSpecError,
    EventEnvelope,
    EventPublisher,
    EventSpec,
    IdGenerator,
    NotFoundError,
    PolicyDeniedError,
    SpecValidationError,
    Transaction,
    UnitOfWork,
)
from contractspec.core._log import get_logger

__all__ = ["Orchestrator", "TaskRetry"]

_log = get_logger(__name__)
_MAX_GOAL = 10_000
_FINAL_CODES = frozenset({"usage_limit_exceeded", "policy_denied", "cancelled"})


@define
class _Binding:
    """The task whose agent run is being created (read by `_RunBinder` in the run's tx)."""

    task: Task
    store: TaskStore


_BINDING: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar(
    "contractspec_orchestration_binding", default=None
)


class _RunBinder:
    """Wraps the runner's event publisher: when the runner publishes `agent.run.started` for a
    run an orchestrator is starting, the task is bound to the run in the same transaction (and a
    stale orchestrator whose claim was taken over fails that transaction: no duplicate run)."""

    def __init__(self, inner: EventPublisher) -> None:
        self.inner = inner

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        binding = _BINDING.get()
        if binding is not None:
            for event in events:
                if event.name == "agent.run.started" and binding.task.run_id is None:
                    run_id = str(getattr(event.payload, "run_id"))  # noqa: B009 - payload model
                    task = binding.task
                    binding.task = await binding.store.update(
                        tx,
                        task.evolve(run_id=run_id, run_spent=Spend(), updated_at=event.occurred_at),
                        expected_version=task.version,
                    )
        await self.inner.publish(events, tx)


@define(frozen=True)
class TaskRetry:
    """How often a failing task is run again, and how far apart.

    The delay after `n` failed attempts is `min(max_delay_s, base_delay_s * multiplier ** (n-1))`
    seconds (exponential backoff, no jitter: a task tree retries a handful of tasks, not a herd).

    Attributes:
        max_attempts: Agent runs per task including the first (1 = never retry).
        base_delay_s: Seconds after the first failure.
        max_delay_s: Upper bound of a delay, in seconds.
        multiplier: Growth per failure (>= 1).

    Raises:
        ConfigurationError: A field is out of range (`details["field"]` names it).
    """

    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 300.0
    multiplier: float = 2.0

    def __attrs_post_init__(self) -> None:
        checks = {
            "max_attempts": isinstance(self.max_attempts, int)
            and not isinstance(self.max_attempts, bool)
            and 1 <= self.max_attempts <= 100,
            "base_delay_s": _number(self.base_delay_s) and self.base_delay_s >= 0,
            "max_delay_s": _number(self.max_delay_s) and self.max_delay_s >= 0,
            "multiplier": _number(self.multiplier) and 1 <= self.multiplier <= 100,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigurationError(
                    f"TaskRetry.{name} is out of range (got {getattr(self, name)!r}); e.g. "
                    "TaskRetry(max_attempts=3, base_delay_s=1, max_delay_s=300, multiplier=2)",
                    details={"field": name},
                )

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` (>= 1) failed attempts."""
        try:
            raw = self.base_delay_s * self.multiplier ** max(failures - 1, 0)
        except OverflowError:
            return self.max_delay_s
        return min(self.max_delay_s, raw)


class _RunEnded(Exception):
    """A bound run that had already failed (found by a recovering orchestrator)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _invalid(field_name: str, message: str) -> SpecValidationError:
    return SpecValidationError(
        message, errors=[{"loc": field_name, "field": field_name, "msg": message}],
        details={"field": field_name},
    )  # fmt: skip


def _actor_dict(actor: Actor) -> dict[str, Any]:
    return {"id": actor.id, "kind": actor.kind.value, "roles": sorted(actor.roles)}


def _actor(data: Mapping[str, Any]) -> Actor:
    return Actor(str(data["id"]), ActorKind(data.get("kind", "user")), data.get("roles") or ())


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return json.loads(json.dumps(value, default=str))


# Characters no task store keeps: NUL (PostgreSQL text and jsonb) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(value: Any, path: str) -> str | None:
    """The path of the first string (or key) in `value` holding NUL or a lone surrogate."""
    if isinstance(value, str):
        return path if _UNSTORABLE.search(value) else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}[{key!r}]"  # repr: the path never holds the character itself
            if isinstance(key, str) and _UNSTORABLE.search(key):
                return where
            found = _unstorable(item, where)
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _unstorable(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _storable_inputs(value: Any, field_name: str) -> Any:
    """`value` as JSON (what the stores keep), refused naming `field_name` when it holds NaN or
    infinity (not JSON; PostgreSQL refuses them) or a character no store keeps."""
    try:
        data = _jsonable(value)
        json.dumps(data, allow_nan=False)
    except ValueError as exc:
        raise _invalid(
            field_name, f"{field_name} must be JSON: no NaN or infinity ({exc})"
        ) from None
    found = _unstorable(data, field_name)
    if found is not None:
        raise _invalid(
            field_name,
            f"{found} holds a NUL character or a lone surrogate, which no task store can keep; "
            "remove it",
        )
    return data


class Orchestrator:
    """Runs task trees with the agents of an `AgentDirectory`.

    Args:
        runner: The `AgentRunner` that runs every agent (its gateway, approvals, run store and
            unit of work are used; its event publisher is wrapped so a task is bound to its run
            in the run's own transaction).
        directory: Agents by capability.
        tasks: `TaskStore` (default `MemoryTaskStore()`; `SqlTaskStore()` on the runner's SQL
            backend).
        planner: Splits goals into tasks (`submit` without `capability` needs one).
        events: Publisher of the `task.*` events (default: the runner's, i.e. the backend's
            outbox, so they commit with the task change).
        retry: `TaskRetry` for failing tasks.
        worker_id: Names this orchestrator in task leases.
        lease_s: Seconds a task's lease lasts without a heartbeat: how long after an
            orchestrator dies its tasks can be taken over (default 30).
        heartbeat_s: Seconds between heartbeats (default `lease_s / 3`).
        clock: Time source (default: the runner's).
        ids: Id source (default: the runner's).

    Raises:
        ConfigurationError: `lease_s <= 0` or `heartbeat_s` not between 0 and `lease_s`.
    """

    def __init__(
        self,
        runner: AgentRunner,
        directory: AgentDirectory,
        *,
        tasks: TaskStore | None = None,
        planner: Planner | None = None,
        events: EventPublisher | None = None,
        retry: TaskRetry | None = None,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        heartbeat_s: float | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        if (
            not _number(lease_s)
            or not lease_s > 0
            or (
                heartbeat_s is not None and not (_number(heartbeat_s) and 0 < heartbeat_s < lease_s)
            )
        ):
            raise ConfigurationError(
                f"lease_s must be > 0 and heartbeat_s between 0 and lease_s (got lease_s="
                f"{lease_s!r}, heartbeat_s={heartbeat_s!r}); e.g. lease_s=30, heartbeat_s=10",
                details={"field": "heartbeat_s" if _number(lease_s) and lease_s > 0 else "lease_s"},
            )
        self.runner = runner
        self.directory = directory
        self.tasks: TaskStore = tasks if tasks is not None else MemoryTaskStore()
        self.planner = planner
        inner = runner.events.inner if isinstance(runner.events, _RunBinder) else runner.events
        self.events: EventPublisher = events if events is not None else inner
        if not isinstance(runner.events, _RunBinder):
            runner.events = _RunBinder(runner.events)
        self.retry = retry or TaskRetry()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_s = float(lease_s)
        self.heartbeat_s = float(heartbeat_s) if heartbeat_s is not None else self.lease_s / 3
        self.clock: Clock = clock or runner.clock
        self.ids: IdGenerator = ids or runner.ids
        for agent in directory.agents:  # registered, so runs can be resumed in any process
            known = agent.name in runner.registry
            if not known or agent.version not in runner.registry.versions(agent.name):
                runner.registry.register(agent)

    @property
    def unit_of_work(self) -> UnitOfWork:
        """The runner's unit of work (tasks, runs and events commit together)."""
        return self.runner.unit_of_work

    # -- reading ----------------------------------------------------------------------------------

    async def get(self, task_id: str, *, org_id: str | None) -> Task:
        """The task of `org_id`.

        Raises:
            NotFoundError: No such task in that org.
        """
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            task = await self.tasks.get(tx, task_id, org_id=org_id)
        finally:
            await tx.rollback()
        if task is None:
            raise NotFoundError(
                f"task {task_id!r} does not exist in org {org_id!r}", details={"task_id": task_id}
            )
        return task

    async def tree(self, root_id: str, *, org_id: str | None) -> list[Task]:
        """The tree's tasks (root first, then by creation order)."""
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            return await self.tasks.tree(tx, root_id, org_id=org_id)
        finally:
            await tx.rollback()

    # -- submitting -------------------------------------------------------------------------------

    async def submit(
        self,
        goal: str,
        ctx: CallContext,
        *,
        inputs: Mapping[str, Any] | None = None,
        constraints: Iterable[str] = (),
        capability: str | None = None,
        risk: RiskLevel = RiskLevel.L0,
        max_risk: RiskLevel = RiskLevel.L3,
        budget: Budget | None = None,
        deadline: datetime | None = None,
    ) -> Task:
        """Store a new task tree and hand its first tasks off (`task.assigned`).

        With `capability`, the goal is one task for the agent with that capability; without,
        the planner splits it (its run's usage counts against `budget`).

        Args:
            goal: What should be achieved (1-10000 characters).
            ctx: Who submits (agents act for this actor) and for which org.
            inputs: JSON inputs.
            constraints: Rules given to every agent of the tree.
            capability: Skip planning: one task for this capability.
            risk: The single task's risk level (with `capability`).
            max_risk: Highest risk a planned step may declare.
            budget: Ceilings for the whole tree (tokens, US dollars, seconds).
            deadline: Timezone-aware time after which no task of the tree starts.

        Returns:
            The root task.

        Raises:
            SpecValidationError: A bad argument (`details["field"]` names it).
            ConfigurationError: No agent has `capability` (or may take `risk`), or neither a
                capability nor a planner was given.
            PlanError: The planner's plan is unusable.
        """
        if not isinstance(goal, str) or not goal.strip() or len(goal) > _MAX_GOAL:
            raise _invalid("goal", f"goal must be 1-{_MAX_GOAL} characters of text")
        if _UNSTORABLE.search(goal):
            raise _invalid("goal", "goal holds a NUL character or a lone surrogate; remove it")
        if budget is not None and not isinstance(budget, Budget):
            raise _invalid("budget", "budget must be a Budget(tokens=, cost=, seconds=)")
        if deadline is not None and (
            not isinstance(deadline, datetime) or deadline.utcoffset() is None
        ):
            raise _invalid("deadline", "deadline must be a timezone-aware datetime")
        if inputs is not None and not isinstance(inputs, Mapping):
            raise _invalid("inputs", "inputs must be a mapping of JSON values")
        data = _storable_inputs(dict(inputs or {}), "inputs")
        if isinstance(constraints, str | bytes):
            raise _invalid("constraints", "constraints must be a list of strings, not one string")
        rules = tuple(constraints)
        if any(not isinstance(c, str) or not c for c in rules):
            raise _invalid("constraints", "constraints must be non-empty strings")
        if _unstorable(list(rules), "constraints") is not None:
            raise _invalid(
                "constraints", "a constraint holds a NUL character or a lone surrogate; remove it"
            )
        now = self.clock.now()
        root_id = self.ids.new_id()
        base = Task(
            id=root_id, org_id=ctx.org_id, root_id=root_id, goal=goal, actor=_actor_dict(ctx.actor),
            created_at=now, updated_at=now, inputs=data, constraints=rules, budget=budget,
            deadline=deadline, max_attempts=self.retry.max_attempts,
        )  # fmt: skip
        children: list[Task] = []
        planned = Spend()
        if capability is not None:
            agent = self.directory.assign(capability, RiskLevel(risk))
            root = base.evolve(
                capability=capability, agent=agent.name, risk=RiskLevel(risk),
                status=TaskStatus.ASSIGNED,
            )  # fmt: skip
        elif self.planner is not None:
            plan, run = await self.planner.plan(
                self.runner, goal, ctx, self.directory, inputs=data, constraints=rules,
                max_risk=RiskLevel(max_risk),
            )  # fmt: skip
            planned = Spend(run.usage.total_tokens, run.usage.cost or 0.0)
            root = base.evolve(
                status=TaskStatus.DELEGATED,
                evidence=({"planner_run_id": run.run_id, "steps": len(plan.steps)},),
                spent=planned,
            )
            ids = [self.ids.new_id() for _ in plan.steps]
            step_inputs = []
            for i, step in enumerate(plan.steps):
                if _UNSTORABLE.search(step.goal):
                    raise _plan_error(
                        f"steps[{i}].goal", f"steps[{i}].goal holds a NUL or a lone surrogate"
                    )
                try:
                    step_inputs.append(_storable_inputs(step.inputs, f"steps[{i}].inputs"))
                except SpecValidationError as exc:
                    raise _plan_error(f"steps[{i}].inputs", exc.message) from None
            for i, step in enumerate(plan.steps):
                level = RiskLevel(step.risk)
                agent = self.directory.assign(step.capability, level)
                children.append(
                    Task(
                        id=ids[i], org_id=ctx.org_id, root_id=root_id, parent_id=root_id,
                        position=i, goal=step.goal, actor=root.actor, created_at=now,
                        updated_at=now, inputs=step_inputs[i], constraints=rules,
                        risk=level, deadline=deadline, capability=step.capability,
                        agent=agent.name, depends_on=tuple(ids[d] for d in step.depends_on),
                        status=TaskStatus.ASSIGNED if not step.depends_on else TaskStatus.PENDING,
                        max_attempts=self.retry.max_attempts,
                    )
                )  # fmt: skip
        else:
            raise ConfigurationError(
                "submit() needs capability= (one task) or an Orchestrator(planner=...) to split "
                "the goal",
                details={"field": "capability"},
            )
        tx = await self.unit_of_work.begin()
        try:
            await self.tasks.create(tx, root)
            for child in children:
                await self.tasks.create(tx, child)
            if planned != Spend():
                await self.tasks.add_spend(tx, root_id, planned, org_id=ctx.org_id)
            ready = [t for t in (root, *children) if t.status is TaskStatus.ASSIGNED]
            await self._publish(tx, [self._assigned(t) for t in ready])
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        _log.info(
            "orchestration.submitted", root_id=root_id, org_id=ctx.org_id, tasks=len(children)
        )
        return await self.get(root_id, org_id=ctx.org_id)

    # -- running ----------------------------------------------------------------------------------

    async def handle(self, event: EventEnvelope) -> None:
        """Bus handler for `task.assigned` (subscribe it: `bus.subscribe("task.assigned",
        orchestrator.handle)`): runs the task if it is still claimable; a duplicate delivery,
        a task another orchestrator took, or a retry not yet due is ignored."""
        if event.name != task_assigned.name:
            return
        task_id = str(getattr(event.payload, "task_id"))  # noqa: B009 - payload model
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            task = await self.tasks.get(tx, task_id, org_id=event.org_id)
        finally:
            await tx.rollback()
        if task is None or task.status is not TaskStatus.ASSIGNED:
            return
        if not task_claimable(task, self.clock.now()):
            return
        try:
            await self.execute(task)
        except ConflictError:
            return

    async def run_once(
        self, *, org_id: str | EllipsisType | None = ..., limit: int = 100
    ) -> list[Task]:
        """Execute the tasks that are due: assigned ones (and retries whose backoff passed) and
        running ones whose orchestrator's lease expired (it died or stalled). Tasks another
        orchestrator claims first are skipped.

        Returns:
            The tasks as they were left (completed, waiting, failed, scheduled for a retry).
        """
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            due = await self.tasks.due(tx, now=self.clock.now(), org_id=org_id, limit=limit)
        finally:
            await tx.rollback()
        out: list[Task] = []
        for task in due:
            try:
                out.append(await self.execute(task))
            except ConflictError:
                continue
        return out

    async def run_until_idle(
        self, *, org_id: str | EllipsisType | None = ..., max_rounds: int = 1000
    ) -> int:
        """`run_once` until nothing is due (retries scheduled later are left); returns the
        number of task executions."""
        total = 0
        for _ in range(max_rounds):
            done = await self.run_once(org_id=org_id)
            if not done:
                break
            total += len(done)
        return total

    async def resume_waiting(
        self, *, org_id: str | EllipsisType | None = ..., limit: int = 100
    ) -> list[Task]:
        """Continue the tasks whose agent run waited for approvals that are now all decided
        (approved calls execute once; rejected ones are reported to the agent)."""
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            waiting = await self.tasks.waiting(tx, org_id=org_id, limit=limit)
        finally:
            await tx.rollback()
        out: list[Task] = []
        for task in waiting:
            if task.run_id is not None and not await self._decided(task.run_id):
                continue
            try:
                out.append(await self.execute(task))
            except ConflictError:
                continue
        return out

    async def _decided(self, run_id: str) -> bool:
        run = await self.runner.get(run_id)
        if run.status is not RunStatus.WAITING_APPROVAL:
            return True
        for item in run.pending:
            req = await self.runner.approvals.get(str(item["approval_id"]))
            if req.status is ApprovalStatus.PENDING:
                return False
        return True

    async def execute(self, task: Task) -> Task:
        """Claim `task` and drive it until it completes, fails, waits for an approval or is
        scheduled for a retry.

        Raises:
            ConflictError: Another orchestrator holds or took the task.
            LeaseLostError: This orchestrator stalled past its lease and another took over
                (nothing more was written).
        """
        now = self.clock.now()
        tx = await self.unit_of_work.begin()
        try:
            fresh = task.status is TaskStatus.ASSIGNED
            claimed = await self.tasks.claim(
                tx, task, owner=self.worker_id,
                lease_until=now + timedelta(seconds=self.lease_s), now=now,
            )  # fmt: skip
            if fresh:
                claimed = await self.tasks.update(
                    tx, claimed.evolve(attempts=claimed.attempts + 1, not_before=None),
                    expected_version=claimed.version,
                )  # fmt: skip
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        binding = _Binding(claimed, self.tasks)
        beat = asyncio.get_running_loop().create_task(
            self._heartbeat(claimed.id), name="contractspec.orchestration.heartbeat"
        )
        try:
            return await self._drive(binding)
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)

    async def _heartbeat(self, task_id: str) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            tx = await self.unit_of_work.begin()
            try:
                until = self.clock.now() + timedelta(seconds=self.lease_s)
                held = await self.tasks.heartbeat(
                    tx, task_id, owner=self.worker_id, lease_until=until
                )
                await tx.commit()
            except Exception as exc:  # a failed heartbeat is retried at the next beat
                await tx.rollback()
                _log.warning("orchestration.heartbeat_failed", task_id=task_id, error=str(exc))
                continue
            if not held:
                return

    async def _drive(self, binding: _Binding) -> Task:
        task = binding.task
        org = task.org_id
        root = task if task.is_root else await self.get(task.root_id, org_id=org)
        parent = None if task.parent_id is None else await self.get(task.parent_id, org_id=org)
        if parent is not None and parent.status.finished:
            if task.run_id is not None:
                await self._cancel_run(task.run_id, f"parent task {parent.id} finished", None)
            return await self._finish(
                binding, TaskStatus.CANCELLED,
                error={"code": "cancelled", "message": f"parent {parent.id} is {parent.status}"},
            )  # fmt: skip
        if task.run_id is None:
            deadline = task.deadline or root.deadline
            if deadline is not None and self.clock.now() >= deadline:
                return await self._finish(
                    binding, TaskStatus.FAILED,
                    error={"code": "deadline_exceeded",
                           "message": f"the tree's deadline {deadline.isoformat()} passed"},
                )  # fmt: skip
            if root.budget is not None:
                limit = root.budget.exceeded(root.tree_spent)
                if limit is not None:
                    return await self._finish(
                        binding, TaskStatus.FAILED,
                        error={"code": "budget_exceeded",
                               "message": f"the tree's {limit} budget is spent "
                               f"({root.tree_spent.to_dict()} of {root.budget.to_dict()})",
                               "limit": limit},
                    )  # fmt: skip
        started = perf_counter()
        result: RunResult | None = None
        error: ContractSpecError | Exception | None = None
        run_deadline, by_budget = self._run_deadline(task, root)
        try:
            if task.run_id is not None:
                result = await self.runner.resume(task.run_id, deadline=run_deadline)
            else:
                result = await self._start(binding, root, run_deadline)
        except LeaseLostError:
            raise
        except ConflictError as exc:
            if binding.task.run_id is not None and binding.task.run_id == task.run_id:
                return await self._defer(binding)  # the run's own lease still holds
            raise LeaseLostError(
                f"task {task.id!r} was taken over by another orchestrator: {exc.message}",
                details={"task_id": task.id},
            ) from exc
        except Exception as exc:  # every failure of a run is decided below: retry or fail
            error = exc
        seconds = perf_counter() - started
        spend = await self._spend(binding.task, seconds)
        current = binding.task
        if result is not None and result.status is RunStatus.WAITING_APPROVAL:
            return await self._wait(binding, result, spend)
        if result is not None and result.status is RunStatus.COMPLETED:
            return await self._finish(
                binding, TaskStatus.COMPLETED, result=_jsonable(result.output), spend=spend,
                evidence=await self._evidence(current.run_id, result.status.value),
            )  # fmt: skip
        if result is not None and result.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            run = await self.runner.get(result.run_id)
            code = str((run.error or {}).get("code", result.status.value))
            error = _RunEnded(f"the agent run {result.run_id} ended {result.status.value}", code)
        elif result is not None:
            code = "escalated" if result.status is RunStatus.ESCALATED else result.status.value
            return await self._finish(
                binding, TaskStatus.FAILED, result=_jsonable(result.output), spend=spend,
                error={"code": code, "message": f"the agent run ended {result.status.value}"},
                evidence=await self._evidence(current.run_id, result.status.value),
            )  # fmt: skip
        assert error is not None
        code = (
            error.code if isinstance(error, ContractSpecError | _RunEnded) else type(error).__name__
        )
        info = {"code": code, "message": str(error)[:500]}
        evidence = await self._evidence(current.run_id, "failed") if current.run_id else None
        retryable = not isinstance(error, UsageLimitExceeded | PolicyDeniedError) and not (
            isinstance(error, _RunEnded) and error.code in _FINAL_CODES
        )
        if isinstance(error, UsageLimitExceeded) and error.details.get("limit") == "deadline":
            # the run was stopped between steps when the tree's time ran out
            if by_budget and root.budget is not None and root.budget.seconds is not None:
                left = root.budget.seconds - root.tree_spent.seconds
                spend = attrs.evolve(spend, seconds=max(spend.seconds, left))
                info.update(code="budget_exceeded", limit="seconds")
            else:
                info["code"] = "deadline_exceeded"
        elif isinstance(error, UsageLimitExceeded) and root.budget is not None:
            total = (await self.get(root.id, org_id=org)).tree_spent + spend
            if root.budget.exceeded(total) is not None:
                info["code"] = "budget_exceeded"
        if retryable and current.attempts < current.max_attempts:
            return await self._reschedule(binding, info, spend, evidence)
        return await self._finish(
            binding, TaskStatus.FAILED, error=info, spend=spend, evidence=evidence
        )

    def _run_deadline(self, task: Task, root: Task) -> tuple[datetime | None, bool]:
        """The time the task's run must stop by: the task's (or the tree's) deadline or the
        end of the tree's seconds budget, whichever is sooner; and whether it is the budget's."""
        deadline = task.deadline or root.deadline
        if root.budget is None or root.budget.seconds is None:
            return deadline, False
        left = max(root.budget.seconds - root.tree_spent.seconds, 0.0)
        spent_at = self.clock.now() + timedelta(seconds=left)
        if deadline is None or spent_at < deadline:
            return spent_at, True
        return deadline, False

    async def _start(self, binding: _Binding, root: Task, deadline: datetime | None) -> RunResult:
        task = binding.task
        agent = self.directory.get(str(task.agent))
        if root.budget is not None:
            agent = _capped(agent, root.budget.remaining(root.tree_spent))
        token = _BINDING.set(binding)
        try:
            return await self.runner.run(
                agent, await self._prompt(task), self._ctx(task), deadline=deadline
            )
        finally:
            _BINDING.reset(token)

    def _ctx(self, task: Task) -> CallContext:
        return CallContext(
            actor=_actor(task.actor), org_id=task.org_id, channel="agent",
            correlation_id=task.root_id, causation_id=task.id,
        )  # fmt: skip

    async def _prompt(self, task: Task) -> str:
        parts = [f"Task: {task.goal}"]
        if task.inputs:
            parts.append("Inputs: " + json.dumps(task.inputs, sort_keys=True, default=str))
        if task.constraints:
            parts.append("Constraints:\n" + "\n".join(f"- {c}" for c in task.constraints))
        if task.depends_on:
            done = {t.id: t for t in await self.tree(task.root_id, org_id=task.org_id)}
            results = {done[d].goal: done[d].result for d in task.depends_on if d in done}
            parts.append("Results of earlier tasks: " + json.dumps(results, default=str))
        return "\n".join(parts)

    async def _cancel_run(self, run_id: str, reason: str, tx: Transaction | None) -> None:
        """Cancel an unfinished agent run (a finished one is left as it is)."""
        run = await self.runner.get(run_id)
        if run.status.finished:
            return
        await self.runner.cancel(run_id, reason=reason, tx=tx)

    async def _spend(self, task: Task, seconds: float) -> Spend:
        """What the current run used since it was last counted, plus `seconds`."""
        if task.run_id is None:
            return Spend(0, 0.0, seconds)
        try:
            run = await self.runner.get(task.run_id)
        except NotFoundError:
            return Spend(0, 0.0, seconds)
        usage = Usage.from_dict(run.usage)
        return Spend(
            max(usage.total_tokens - task.run_spent.tokens, 0),
            max((usage.cost or 0.0) - task.run_spent.cost, 0.0),
            seconds,
        )

    async def _evidence(self, run_id: str | None, status: str) -> dict[str, Any] | None:
        if run_id is None:
            return None
        tx = await self.unit_of_work.begin(readonly=True)
        try:
            actions = await self.runner.runs.actions(tx, run_id)
        finally:
            await tx.rollback()
        return {
            "run_id": run_id,
            "status": status,
            "actions": [
                {"action_id": a.action_id, "tool": a.tool, "status": a.status.value,
                 "attempts": a.attempts}
                for a in actions
            ],
        }  # fmt: skip

    # -- writing outcomes -------------------------------------------------------------------------

    async def _write(self, binding: _Binding, change: Any) -> Task:
        """Run `change(tx, current) -> Task` in a transaction, fenced by the claim's version;
        retried when a sibling changed the parent at the same moment."""
        for attempt in range(20):
            tx = await self.unit_of_work.begin()
            try:
                mine = binding.task
                current = await self.tasks.get(tx, mine.id, org_id=mine.org_id)
                if (
                    current is None
                    or current.version != mine.version
                    or current.lease_owner != self.worker_id
                ):
                    raise LeaseLostError(
                        f"task {mine.id!r} was taken over by another orchestrator; this one "
                        "stops without writing",
                        details={"task_id": mine.id},
                    )
                saved: Task = await change(tx, current)
                await tx.commit()
            except ConflictError:
                await tx.rollback()
                await asyncio.sleep(0.01 * (attempt + 1))
                continue
            except BaseException:
                await tx.rollback()
                raise
            binding.task = saved
            return saved
        raise ConflictError(
            f"task {binding.task.id!r}: its tree kept changing concurrently; retry",
            details={"task_id": binding.task.id},
        )

    async def _defer(self, binding: _Binding) -> Task:
        async def change(tx: Transaction, current: Task) -> Task:
            run = await self.runner.runs.get(tx, str(current.run_id))
            until = run.lease_expires_at if run is not None else None
            return await self.tasks.update(
                tx, current.evolve(lease_owner=None, lease_expires_at=until,
                                   updated_at=self.clock.now()),
                expected_version=current.version,
            )  # fmt: skip

        return await self._write(binding, change)

    async def _wait(self, binding: _Binding, result: RunResult, spend: Spend) -> Task:
        async def change(tx: Transaction, current: Task) -> Task:
            entry = {"run_id": result.run_id, "waiting_for": list(result.pending_approvals)}
            saved = await self.tasks.update(
                tx,
                current.evolve(
                    status=TaskStatus.WAITING_APPROVAL, lease_owner=None, lease_expires_at=None,
                    spent=current.spent + spend, run_spent=current.run_spent + spend,
                    evidence=(*current.evidence, entry), updated_at=self.clock.now(),
                ),
                expected_version=current.version,
            )  # fmt: skip
            await self.tasks.add_spend(tx, current.root_id, spend, org_id=current.org_id)
            return saved

        return await self._write(binding, change)

    async def _reschedule(
        self,
        binding: _Binding,
        error: Mapping[str, Any],
        spend: Spend,
        evidence: Mapping[str, Any] | None,
    ) -> Task:
        async def change(tx: Transaction, current: Task) -> Task:
            delay = self.retry.delay(current.attempts)
            saved = await self.tasks.update(
                tx,
                current.evolve(
                    status=TaskStatus.ASSIGNED, lease_owner=None, lease_expires_at=None,
                    not_before=self.clock.now() + timedelta(seconds=delay), run_id=None,
                    run_spent=Spend(), spent=current.spent + spend, error=dict(error),
                    evidence=(*current.evidence, *([evidence] if evidence else [])),
                    updated_at=self.clock.now(),
                ),
                expected_version=current.version,
            )  # fmt: skip
            await self.tasks.add_spend(tx, current.root_id, spend, org_id=current.org_id)
            return saved

        return await self._write(binding, change)

    async def _finish(
        self,
        binding: _Binding,
        status: TaskStatus,
        *,
        result: Any = None,
        error: Mapping[str, Any] | None = None,
        spend: Spend | None = None,
        evidence: Mapping[str, Any] | None = None,
    ) -> Task:
        used = spend or Spend()

        async def change(tx: Transaction, current: Task) -> Task:
            now = self.clock.now()
            saved = await self.tasks.update(
                tx,
                current.evolve(
                    status=status, lease_owner=None, lease_expires_at=None, result=result,
                    error=dict(error) if error else None, spent=current.spent + used,
                    run_spent=current.run_spent + used, updated_at=now,
                    evidence=(*current.evidence, *([evidence] if evidence else [])),
                ),
                expected_version=current.version,
            )  # fmt: skip
            if used != Spend():
                await self.tasks.add_spend(tx, current.root_id, used, org_id=current.org_id)
            events: list[EventEnvelope] = []
            await self._settle(tx, saved, events)
            await self._publish(tx, events)
            return saved

        return await self._write(binding, change)

    async def _settle(self, tx: Transaction, task: Task, events: list[EventEnvelope]) -> None:
        """`task` just became final: announce it, hand off to its dependents, settle its parent."""
        if task.status is TaskStatus.COMPLETED:
            events.append(self._completed(task))
        elif task.status is TaskStatus.FAILED:
            events.append(self._failed(task))
        if task.parent_id is None:
            return
        parent = await self.tasks.get(tx, task.parent_id, org_id=task.org_id)
        if parent is None:
            return
        if parent.status.finished:
            return
        now = self.clock.now()
        siblings = [
            task if t.id == task.id else t
            for t in await self.tasks.tree(tx, task.root_id, org_id=task.org_id)
            if t.parent_id == parent.id
        ]
        state = {t.id: t.status for t in siblings}
        if task.status is TaskStatus.COMPLETED:
            for s in siblings:
                if s.status is TaskStatus.PENDING and all(
                    state.get(d) is TaskStatus.COMPLETED for d in s.depends_on
                ):
                    ready = await self.tasks.update(
                        tx, s.evolve(status=TaskStatus.ASSIGNED, updated_at=now),
                        expected_version=s.version,
                    )  # fmt: skip
                    events.append(self._assigned(ready))
            if all(s.status is TaskStatus.COMPLETED for s in siblings):
                done = await self.tasks.update(
                    tx,
                    parent.evolve(
                        status=TaskStatus.COMPLETED, updated_at=now,
                        result={s.id: s.result for s in siblings},
                    ),
                    expected_version=parent.version,
                )  # fmt: skip
                await self._settle(tx, done, events)
                return
        else:
            for s in siblings:
                if s.status is TaskStatus.WAITING_APPROVAL and s.run_id is not None:
                    # its pending approvals must never execute for a failed tree
                    await self._cancel_run(s.run_id, f"sibling task {task.id} failed", tx)
                if s.status in (
                    TaskStatus.PENDING,
                    TaskStatus.ASSIGNED,
                    TaskStatus.WAITING_APPROVAL,
                ):
                    await self.tasks.update(
                        tx,
                        s.evolve(
                            status=TaskStatus.CANCELLED, updated_at=now,
                            error={"code": "cancelled", "message": f"sibling {task.id} failed"},
                        ),
                        expected_version=s.version,
                    )  # fmt: skip
            failed = await self.tasks.update(
                tx,
                parent.evolve(
                    status=TaskStatus.FAILED, updated_at=now,
                    error={"code": "subtask_failed", "task_id": task.id,
                           "message": f"sub-task {task.id} {task.status.value}"},
                ),
                expected_version=parent.version,
            )  # fmt: skip
            await self._settle(tx, failed, events)
            return
        # serialise siblings finishing at the same moment: the parent's version moves
        await self.tasks.update(tx, parent.evolve(updated_at=now), expected_version=parent.version)

    # -- events -----------------------------------------------------------------------------------

    async def _publish(self, tx: Transaction, events: Sequence[EventEnvelope]) -> None:
        if events:
            await self.events.publish(list(events), tx)

    def _envelope(self, spec: EventSpec, task: Task, payload: Mapping[str, Any]) -> EventEnvelope:
        model = spec.payload.model_validate(payload)
        actor = _actor(task.actor)
        return EventEnvelope(
            id=self.ids.new_id(), name=spec.name, version=spec.version,
            occurred_at=self.clock.now(), payload=model, org_id=task.org_id, actor_id=actor.id,
            actor_kind=actor.kind.value, correlation_id=task.root_id, causation_id=task.id,
            key=task.root_id,
        )  # fmt: skip

    def _assigned(self, task: Task) -> EventEnvelope:
        return self._envelope(
            task_assigned, task,
            {"task_id": task.id, "root_id": task.root_id, "parent_id": task.parent_id,
             "agent": task.agent, "capability": task.capability, "risk": int(task.risk),
             "attempt": task.attempts + 1},
        )  # fmt: skip

    def _completed(self, task: Task) -> EventEnvelope:
        return self._envelope(
            task_completed, task,
            {"task_id": task.id, "root_id": task.root_id, "parent_id": task.parent_id,
             "agent": task.agent, "run_id": task.run_id, "tokens": task.spent.tokens,
             "cost": task.spent.cost, "seconds": task.spent.seconds},
        )  # fmt: skip

    def _failed(self, task: Task) -> EventEnvelope:
        return self._envelope(
            task_failed, task,
            {"task_id": task.id, "root_id": task.root_id, "parent_id": task.parent_id,
             "agent": task.agent, "run_id": task.run_id,
             "error_code": str((task.error or {}).get("code", "failed")),
             "attempts": task.attempts},
        )  # fmt: skip


def _capped(agent: AgentSpec, left: Spend) -> AgentSpec:
    """`agent` with its per-run limits lowered to what is left of the tree's budget."""
    limits = agent.limits
    tokens = left.tokens if limits.max_tokens is None else min(limits.max_tokens, left.tokens)
    cost = left.cost if limits.max_cost is None else min(limits.max_cost, left.cost)
    big = 2**61
    capped = UsageLimits(
        max_steps=limits.max_steps,
        max_requests=limits.max_requests,
        max_tokens=None if tokens >= big else max(int(tokens), 1),
        max_tool_calls=limits.max_tool_calls,
        max_cost=None if cost >= big else cost,
    )
    if capped == limits:
        return agent
    return attrs.evolve(agent, limits=capped)
