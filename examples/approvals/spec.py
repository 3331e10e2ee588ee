"""The spec: a purchase request workflow, its roles and the version 2 shown in the README.

```text
draft --submit--> submitted --approve (<= 5,000, one manager)----------> approved --pay--> paid
                      |     --approve_large (> 5,000, two managers)---->    ^
                      |     --reject--> rejected                            |
                      +--(2 days, timer)--escalate--> escalated --approve / approve_large
```

Roles (core `RolePermissions`): `requester` creates, submits and comments; `manager` decides and
comments; `finance` pays and comments. Nobody may fire `escalate`: only the SLA timer does, as the
jobs worker's system actor.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, Field

from contractspec.core import (
    Approvals,
    SpecRegistry,
    Transition,
    WorkflowInstance,
    WorkflowSpec,
    define_workflow,
    requires,
    timer,
    transition,
)
from contractspec.core.policy import RolePermissions
from contractspec.jobs.workflows import workflow_timer_jobs

__all__ = [
    "LARGE_AMOUNT",
    "SLA",
    "WORKFLOW",
    "Decision",
    "Payment",
    "PurchaseRequest",
    "policy",
    "purchase_request",
    "purchase_request_edited",
    "purchase_request_v2",
    "registry",
    "registry_edited",
    "registry_v2",
]

#: The workflow's name; its operations are `procurement.purchase_request.<transition>`.
WORKFLOW = "procurement.purchase_request"
#: Amounts above this need two managers (`approve_large`); up to it, one (`approve`).
LARGE_AMOUNT = Decimal("5000")
#: How long a request may wait in `submitted` before the timer escalates it.
SLA = timedelta(days=2)


class PurchaseRequest(BaseModel):
    """What a requester asks to buy (the workflow's subject, validated at start)."""

    title: Annotated[str, Field(min_length=1, max_length=200)]
    amount: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
    requester: Annotated[str, Field(min_length=1, description="Who needs it (display name)")]


class Decision(BaseModel):
    """A manager's note on an approval or rejection."""

    note: str = ""


class Payment(BaseModel):
    """Finance's payment reference."""

    reference: Annotated[str, Field(min_length=1, max_length=64)]


def _amount(instance: WorkflowInstance) -> Decimal:
    return Decimal(str(instance.data["amount"]))


def small_amount(instance: WorkflowInstance, _input: object) -> bool | str:
    """Guard of `approve`: one manager may approve up to `LARGE_AMOUNT`."""
    if _amount(instance) <= LARGE_AMOUNT:
        return True
    return f"amounts above {LARGE_AMOUNT} need two managers: use approve_large"


def large_amount(instance: WorkflowInstance, _input: object) -> bool | str:
    """Guard of `approve_large`: the two-manager step is for amounts above `LARGE_AMOUNT`."""
    if _amount(instance) > LARGE_AMOUNT:
        return True
    return f"amounts up to {LARGE_AMOUNT} need one manager: use approve"


def _transitions(*, on_hold: bool, rejected: bool = True) -> list[Transition]:
    deciding = ["submitted", "escalated", *(["on_hold"] if on_hold else [])]

    out = [
        transition("submit", source="draft", target="submitted", auth=requires("purchase.submit")),
        transition(
            "approve", source=deciding, target="approved", input=Decision,
            auth=requires("purchase.decide"), guard=small_amount,
        ),
        transition(
            "approve_large", source=deciding, target="approved", input=Decision,
            auth=requires("purchase.decide"), guard=large_amount,
            approvals=Approvals(count=2, roles=["manager"]),
        ),
        transition(
            "reject", source=deciding, target="rejected", input=Decision,
            auth=requires("purchase.decide"),
        ),
        transition(
            "escalate", source="submitted", target="escalated",
            auth=requires("purchase.escalate"),
            description="Fired by the SLA timer after two days in submitted.",
        ),
        transition("pay", source="approved", target="paid", input=Payment,
                   auth=requires("purchase.pay")),
    ]  # fmt: skip
    if not rejected:
        out = [t for t in out if t.name != "reject"]
    if on_hold:
        out += [
            transition("hold", source=["submitted", "escalated"], target="on_hold",
                       input=Decision, auth=requires("purchase.decide")),
        ]  # fmt: skip
    return out


purchase_request: WorkflowSpec = define_workflow(
    WORKFLOW,
    subject=PurchaseRequest,
    states=["draft", "submitted", "escalated", "approved", "rejected", "paid"],
    initial="draft",
    final=["rejected", "paid"],
    transitions=_transitions(on_hold=False),
    timers=[timer("submitted", after=SLA, fire="escalate")],
    start_auth=requires("purchase.create"),
    comment_auth=requires("purchase.comment"),
    description="A purchase request: drafted, submitted, decided by managers, paid by finance.",
    owners="procurement",
)

#: Version 2 (the README's "changing the workflow"): managers may put a request on hold.
purchase_request_v2: WorkflowSpec = define_workflow(
    WORKFLOW,
    version=2,
    subject=PurchaseRequest,
    states=["draft", "submitted", "escalated", "on_hold", "approved", "rejected", "paid"],
    initial="draft",
    final=["rejected", "paid"],
    transitions=_transitions(on_hold=True),
    timers=[timer("submitted", after=SLA, fire="escalate")],
    start_auth=requires("purchase.create"),
    comment_auth=requires("purchase.comment"),
    migrations={1: {}},
    description="A purchase request: drafted, submitted, decided by managers, paid by finance.",
    owners="procurement",
)

#: What NOT to do (the README's breaking diff): version 1 edited in place, `rejected` removed.
purchase_request_edited: WorkflowSpec = define_workflow(
    WORKFLOW,
    subject=PurchaseRequest,
    states=["draft", "submitted", "escalated", "approved", "paid"],
    initial="draft",
    final=["paid"],
    transitions=_transitions(on_hold=False, rejected=False),
    timers=[timer("submitted", after=SLA, fire="escalate")],
    start_auth=requires("purchase.create"),
    comment_auth=requires("purchase.comment"),
    description="A purchase request: drafted, submitted, decided by managers, paid by finance.",
    owners="procurement",
)


def policy() -> RolePermissions:
    """Who may do what: requesters create/submit, managers decide, finance pays, all comment."""
    return RolePermissions(
        {
            "requester": ["purchase.create", "purchase.submit", "purchase.comment"],
            "manager": ["purchase.decide", "purchase.comment"],
            "finance": ["purchase.pay", "purchase.comment"],
        }
    )


def _registry(*workflows: WorkflowSpec) -> SpecRegistry:
    out = SpecRegistry(*workflows)
    workflow_timer_jobs(out)  # declares procurement.purchase_request.timers
    return out


#: Version 1: what the app runs (its IR is committed as `contractspec.lock.json`).
registry = _registry(purchase_request)
#: Version 1 and version 2 side by side (`contractspec.v2.lock.json`).
registry_v2 = _registry(purchase_request, purchase_request_v2)
#: Version 1 edited in place without `rejected` (never deployed: `spec diff` flags it breaking).
registry_edited = _registry(purchase_request_edited)
