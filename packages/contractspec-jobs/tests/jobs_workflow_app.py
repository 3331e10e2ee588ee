"""A support-ticket workflow with SLA timers, for the workflow timer tests (in-process and the
SIGKILL crash test's worker process)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from contractspec.core import (
    Actor,
    CallContext,
    SpecRegistry,
    WorkflowSpec,
    define_workflow,
    requires,
    timer,
    transition,
)
from contractspec.core.policy import RolePermissions

ORG = "org-1"
AGENT = Actor.user("agent-1", roles="support")
POLICY = RolePermissions({"support": ["ticket.work"]})


class Ticket(BaseModel):
    """The subject of a ticket."""

    title: str


def ticket_workflow(*, expire_after: timedelta = timedelta(hours=1)) -> WorkflowSpec:
    """open -> closed | expired; escalation after half the expiry time, expiry by timer."""
    return define_workflow(
        "sup.ticket",
        subject=Ticket,
        states=["open", "closed", "expired"],
        initial="open",
        final=["closed", "expired"],
        transitions=[
            transition("close", source="open", target="closed", auth=requires("ticket.work")),
            transition("expire", source="open", target="expired", auth=requires("ticket.admin")),
        ],
        timers=[
            timer("open", after=expire_after / 2, escalate=True),
            timer("open", after=expire_after, fire="expire"),
        ],
    )


def build_registry(*, expire_after: timedelta = timedelta(hours=1)) -> SpecRegistry:
    """The ticket workflow and its timer job type."""
    from contractspec.jobs.workflows import workflow_timer_jobs

    registry = SpecRegistry(ticket_workflow(expire_after=expire_after))
    workflow_timer_jobs(registry)
    return registry


def agent_ctx() -> CallContext:
    """A support agent in ORG."""
    return CallContext(actor=AGENT, org_id=ORG)
