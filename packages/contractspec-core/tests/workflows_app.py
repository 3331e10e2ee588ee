"""A leave-request workflow used by the workflow tests (core and jobs packages)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel

from contractspec.core import (
    Actor,
    Approvals,
    CallContext,
    SpecRegistry,
    WorkflowInstance,
    WorkflowSpec,
    define_event,
    define_workflow,
    requires,
    timer,
    transition,
)
from contractspec.core.policy import RolePermissions

ORG = "org-1"
OTHER_ORG = "org-2"
EMPLOYEE = Actor.user("emp-1", roles="staff")
MANAGER = Actor.user("mgr-1", roles="manager")
MANAGER_2 = Actor.user("mgr-2", roles="manager")
DIRECTOR = Actor.user("dir-1", roles=("manager", "director"))
POLICY = RolePermissions(
    {"staff": ["leave.request"], "manager": ["leave.request", "leave.decide"], "admin": ["*"]}
)


class Leave(BaseModel):
    """The subject of a leave request."""

    days: int
    reason: str = ""


class Decision(BaseModel):
    """Input of the approve transition."""

    note: str = ""


class LeaveApproved(BaseModel):
    """Payload of `hr.leave_approved`: built from the instance data and the transition input."""

    instance_id: str
    days: int
    note: str = ""


leave_approved = define_event("hr.leave_approved", payload=LeaveApproved)


def short_enough(instance: WorkflowInstance, _input: object) -> bool | str:
    """Guard of `submit`: at most 20 days."""
    return True if instance.data["days"] <= 20 else f"{instance.data['days']} days exceed 20"


def leave_workflow(*, version: int = 1, remind_after: timedelta | None = None) -> WorkflowSpec:
    """The leave workflow: draft -> submitted -> approved | rejected, optional escalation."""
    timers = []
    if remind_after is not None:
        timers.append(timer("submitted", after=remind_after, fire="expire"))
    return define_workflow(
        "hr.leave",
        version=version,
        subject=Leave,
        states=["draft", "submitted", "approved", "rejected", "expired"],
        initial="draft",
        final=["approved", "rejected", "expired"],
        transitions=[
            transition(
                "submit",
                source="draft",
                target="submitted",
                auth=requires("leave.request"),
                guard=short_enough,
            ),
            transition(
                "approve",
                source="submitted",
                target="approved",
                input=Decision,
                auth=requires("leave.decide"),
                emits=[leave_approved],
            ),
            transition(
                "reject", source="submitted", target="rejected", auth=requires("leave.decide")
            ),
            transition("expire", source="submitted", target="expired", auth=requires("admin.x")),
        ],
        timers=timers,
    )


def purchase_workflow() -> WorkflowSpec:
    """A purchase needing two distinct managers; the requester may not approve it."""
    return define_workflow(
        "buy.order",
        states=["requested", "approved"],
        initial="requested",
        final=["approved"],
        transitions=[
            transition(
                "approve",
                source="requested",
                target="approved",
                auth=requires("leave.request"),
                approvals=Approvals(count=2, roles=["manager"]),
            )
        ],
    )


def review_workflow() -> WorkflowSpec:
    """A document review: someone submits a draft, one other manager approves a given note."""
    return define_workflow(
        "doc.review",
        states=["draft", "review", "published"],
        initial="draft",
        final=["published"],
        transitions=[
            transition("submit", source="draft", target="review"),
            transition(
                "publish",
                source="review",
                target="published",
                input=Decision,
                approvals=Approvals(count=2, roles=["manager"]),
            ),
        ],
    )


def build_registry() -> SpecRegistry:
    """Registry with the leave, purchase and review workflows."""
    return SpecRegistry(leave_workflow(), purchase_workflow(), review_workflow())


def ctx(actor: Actor, *, org: str = ORG, key: str | None = None) -> CallContext:
    """A call context in `org` (optionally with an idempotency key)."""
    return CallContext(actor=actor, org_id=org, idempotency_key=key)


ADMIN = Actor.user("adm-1", roles="admin")


def leave_workflow_v2() -> WorkflowSpec:
    """Version 2: `submitted` is renamed `pending` and a `withdraw` transition is added."""
    return define_workflow(
        "hr.leave",
        version=2,
        subject=Leave,
        states=["draft", "pending", "approved", "rejected", "withdrawn"],
        initial="draft",
        final=["approved", "rejected", "withdrawn"],
        transitions=[
            transition("submit", source="draft", target="pending", auth=requires("leave.request")),
            transition(
                "approve", source="pending", target="approved", auth=requires("leave.decide")
            ),
            transition(
                "reject", source="pending", target="rejected", auth=requires("leave.decide")
            ),
            transition(
                "withdraw", source="pending", target="withdrawn", auth=requires("leave.request")
            ),
        ],
        migrations={1: {"submitted": "pending"}},
    )
