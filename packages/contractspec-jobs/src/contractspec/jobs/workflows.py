"""Workflow timers on the job queue: the glue between `contractspec.core.workflows` and workers.

Entering a workflow state that has a timer enqueues a `<workflow>.timers` job (through core's
`JobEnqueuer` port, inside the transition's transaction) scheduled for the timer's due time. This
module declares those job types and the handler a `Worker` runs: it executes the workflow's
`<workflow>.timer` operation through the executor as a system actor, with an idempotency key
derived from (workflow, instance, state entry, timer). The operation fires only while the instance
is still in the state entry that started the timer, so a timer fires at most once per entry;
with the queue's at-least-once delivery (a worker killed mid-job is retried) it fires exactly once.

```python
registry = SpecRegistry(leave_workflow)
workflow_timer_jobs(registry)              # declares hr.leave.timers (before the queue is used)
queue = SqlJobQueue(engine, registry)
executor = Executor(registry, backend=backend, jobs=queue)
worker = Worker(queue, workflow_timer_handlers(executor))
```
"""

from __future__ import annotations

from typing import Any

from contractspec.core import Executor, SpecRegistry
from contractspec.core.workflows import (
    WorkflowSpec,
    WorkflowTimerFire,
    system_call,
    timer_job_type,
)
from contractspec.jobs.specs import JobSpec, define_job
from contractspec.jobs.worker import JobContext, JobHandlers

__all__ = ["timer_idempotency_key", "workflow_timer_handlers", "workflow_timer_jobs"]


def timer_idempotency_key(fire: WorkflowTimerFire) -> str:
    """The idempotency key a timer job runs `<workflow>.timer` with: one per state entry and timer."""
    return f"wf-timer:{fire.workflow}:{fire.instance_id}:{fire.entry_seq}:{fire.timer}"


def workflow_timer_jobs(
    registry: SpecRegistry, *, max_attempts: int = 20
) -> list[JobSpec[WorkflowTimerFire]]:
    """Declare (and register in `registry`) the timer job type of every workflow with timers.

    Call it after registering the workflows and before enqueueing: queues built on `registry`
    look job types up there.

    Args:
        registry: The registry holding the workflows.
        max_attempts: Runs allowed per timer job before it goes to dead letter.

    Returns:
        The job specs, one per workflow name (`<workflow>.timers`), in name order.
    """
    specs: dict[str, JobSpec[WorkflowTimerFire]] = {}
    for wf in registry.specs("workflow"):
        if not isinstance(wf, WorkflowSpec) or not wf.timers or wf.name in specs:
            continue
        name = timer_job_type(wf)
        spec: JobSpec[WorkflowTimerFire]
        if registry.versions(name, "job"):
            spec = registry.get_spec("job", name)
        else:
            spec = define_job(
                name,
                payload=WorkflowTimerFire,
                max_attempts=max_attempts,
                description=f"Fires the due timers of workflow {wf.name}.",
            )
            registry.register(spec)
        specs[wf.name] = spec
    return [specs[n] for n in sorted(specs)]


def workflow_timer_handlers(
    executor: Executor, handlers: JobHandlers | None = None, *, actor_id: str = "workflow-timer"
) -> JobHandlers:
    """Bind a handler for every workflow timer job type of `executor.registry`.

    Each run executes `<workflow>.timer` (latest version) through `executor` as
    `Actor.system(actor_id)` in the job's org, with `timer_idempotency_key(payload)`.

    Args:
        executor: The executor the timer operations run through.
        handlers: Bind into these handlers (default: a new `JobHandlers`).
        actor_id: Id of the system actor recorded in history and audit.

    Returns:
        The handlers, for `Worker(queue, handlers)`.
    """
    out = handlers if handlers is not None else JobHandlers()
    for spec in workflow_timer_jobs(executor.registry):

        async def run(payload: WorkflowTimerFire, ctx: JobContext) -> dict[str, Any]:
            result = await executor.execute(
                f"{payload.workflow}.timer",
                payload,
                system_call(payload.org_id, timer_idempotency_key(payload), actor_id=actor_id),
            )
            data = result.model_dump(mode="json")
            return {"fired": data["fired"], "reason": data["reason"]}

        out.bind(spec, run)
    return out
