"""An approval step's expiry through a real job queue and worker (memory, SQLite file,
PostgreSQL): decisions after `expires_after` are refused and the step's `on_expiry` timer moves
the instance; an approval that reached its quorum in time is left alone by that timer."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from jobs_workflow_app import ORG, agent_ctx
from test_workflow_timers import _backend_and_queue, _drain, _executor

from contractspec.core import (
    Actor,
    Approvals,
    CallContext,
    SpecRegistry,
    WorkflowApprovalExpiredError,
    define_workflow,
    requires,
    transition,
)
from contractspec.core.testing import FakeClock
from contractspec.jobs.workflows import workflow_timer_jobs

LEADS = [Actor.user(f"lead-{i}", roles="support") for i in (1, 2)]


def build_registry() -> SpecRegistry:
    """A refund that needs two leads within a day, else it expires."""
    wf = define_workflow(
        "sup.refund",
        states=["asked", "granted", "lapsed"],
        initial="asked",
        final=["granted", "lapsed"],
        transitions=[
            transition(
                "grant", source="asked", target="granted", auth=requires("ticket.work"),
                approvals=Approvals(count=2, expires_after=timedelta(days=1), on_expiry="lapse"),
            ),
            transition("lapse", source="asked", target="lapsed", auth=requires("ticket.admin")),
        ],
    )  # fmt: skip
    registry = SpecRegistry(wf)
    workflow_timer_jobs(registry)
    return registry


def lead(i: int) -> CallContext:
    """A call by lead `i` in the test org."""
    return CallContext(actor=LEADS[i], org_id=ORG)


@pytest.mark.parametrize("in_time", [False, True])
async def test_the_worker_lapses_an_expired_approval_step_and_spares_a_granted_one(
    backend_kind: str, tmp_path: Path, clock: FakeClock, in_time: bool
) -> None:
    """One approval, then a day passes: the second is refused as expired and the worker fires
    `lapse` as the system actor. With both approvals inside the day the instance is granted and
    the due expiry job changes nothing."""
    registry = build_registry()
    async with _backend_and_queue(backend_kind, tmp_path, registry, clock) as (backend, queue):
        ex = _executor(registry, backend, queue, clock)
        out = await ex.execute("sup.refund.start", {}, agent_ctx())
        iid = out.model_dump()["id"]
        clock.advance(timedelta(hours=23))
        await ex.execute("sup.refund.grant.approve", {"instance_id": iid}, lead(0))
        await _drain(ex, queue)  # nothing due yet
        if in_time:
            await ex.execute("sup.refund.grant.approve", {"instance_id": iid}, lead(1))
        clock.advance(timedelta(hours=1))
        if not in_time:
            with pytest.raises(WorkflowApprovalExpiredError):
                await ex.execute("sup.refund.grant.approve", {"instance_id": iid}, lead(1))
        await _drain(ex, queue)
        page = await ex.execute("sup.refund.history", {"instance_id": iid}, agent_ctx())
        steps = [(s["kind"], s["to_state"], s["actor_kind"]) for s in page.model_dump()["items"]]
        if in_time:
            assert steps == [("start", "asked", "user"), ("approval", "granted", "user")]
        else:
            assert steps == [("start", "asked", "user"), ("timer", "lapsed", "system")]
