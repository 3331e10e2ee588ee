"""The CRM domain: entities, events and the inputs/outputs of its operations."""

from __future__ import annotations

import enum
from datetime import date
from decimal import Decimal
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, Field

from contractspec.core import PII, Index, define_entity, define_event

__all__ = [
    "CLOSED_STAGES",
    "OPEN_STAGES",
    "STAGE_TRANSITIONS",
    "BoardRequest",
    "Company",
    "CompleteTask",
    "Contact",
    "ContactList",
    "CreateCompany",
    "CreateContact",
    "CreateDeal",
    "CreateTask",
    "Deal",
    "DealCreated",
    "DealList",
    "DealMoved",
    "MonthTotal",
    "MoveDeal",
    "PipelineBoard",
    "PipelineColumn",
    "ReportSummary",
    "SearchContacts",
    "SearchDeals",
    "Stage",
    "StageMove",
    "StageTotal",
    "SummaryRequest",
    "Task",
    "TaskCompleted",
    "TopCustomer",
    "UpdateDeal",
    "company_entity",
    "contact_entity",
    "deal_created",
    "deal_entity",
    "deal_moved",
    "task_completed",
    "task_entity",
]

Id = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class Stage(enum.StrEnum):
    """Kanban columns of the sales pipeline, in order."""

    LEAD = "lead"
    QUALIFIED = "qualified"
    PROPOSAL = "proposal"
    NEGOTIATION = "negotiation"
    WON = "won"
    LOST = "lost"


OPEN_STAGES = (Stage.LEAD, Stage.QUALIFIED, Stage.PROPOSAL, Stage.NEGOTIATION)
CLOSED_STAGES = (Stage.WON, Stage.LOST)
#: The transition of the `crm.deal.pipeline` workflow that enters each stage (`crm.deal.move`
#: fires the one of its `to_stage`).
STAGE_TRANSITIONS: dict[Stage, str] = {
    Stage.LEAD: "reopen",
    Stage.QUALIFIED: "qualify",
    Stage.PROPOSAL: "propose",
    Stage.NEGOTIATION: "negotiate",
    Stage.WON: "win",
    Stage.LOST: "lose",
}


# -- entities ---------------------------------------------------------------------------------


class Company(BaseModel):
    """An organisation customers belong to."""

    id: Id
    name: Name
    domain: Annotated[str | None, Field(max_length=200)] = None


class Contact(BaseModel):
    """A person the sales team talks to."""

    id: Id
    name: Name
    email: Annotated[str | None, Field(max_length=320), PII] = None
    company_id: Id | None = None
    source: Annotated[str, Field(max_length=40)] = "manual"


class Deal(BaseModel):
    """A sales opportunity moving through the pipeline."""

    id: Id
    contact_id: Id
    title: Name
    amount: Money
    stage: Stage = Stage.LEAD
    opened_on: date
    opened_month: Annotated[str, Field(pattern=r"^\d{4}-\d{2}$")]
    closed_on: date | None = None
    created_at: AwareDatetime


class Task(BaseModel):
    """A to-do attached to a deal."""

    id: Id
    deal_id: Id
    title: Name
    due_on: date | None = None
    done: bool = False
    completed_at: AwareDatetime | None = None


company_entity = define_entity("crm.company", Company, description="Customer organisations.")
contact_entity = define_entity(
    "crm.contact",
    Contact,
    indexes=[Index(("email",), unique=True), "company_id"],
    description="People the sales team talks to.",
)
deal_entity = define_entity(
    "crm.deal",
    Deal,
    indexes=["stage", "contact_id", "opened_month"],
    description="Sales opportunities; the pipeline board groups them by stage.",
)
task_entity = define_entity("crm.task", Task, indexes=["deal_id", "done"], description="To-dos.")


# -- events -----------------------------------------------------------------------------------


class DealCreated(BaseModel):
    """Payload of `deal.created`."""

    deal_id: Id
    contact_id: Id
    amount: Money
    stage: Stage


class DealMoved(BaseModel):
    """Payload of `deal.moved`."""

    deal_id: Id
    from_stage: Stage
    to_stage: Stage
    amount: Money


class TaskCompleted(BaseModel):
    """Payload of `task.completed`."""

    task_id: Id
    deal_id: Id


deal_created = define_event(
    "deal.created", payload=DealCreated, key="deal_id", description="A deal entered the pipeline."
)
deal_moved = define_event(
    "deal.moved", payload=DealMoved, key="deal_id", description="A deal changed stage."
)
task_completed = define_event(
    "task.completed", payload=TaskCompleted, key="deal_id", description="A task was done."
)


# -- operation inputs and outputs ------------------------------------------------------------


class CreateCompany(BaseModel):
    """Input of `crm.company.create`."""

    id: Id
    name: Name
    domain: Annotated[str | None, Field(max_length=200)] = None


class CreateContact(BaseModel):
    """Input of `crm.contact.create`."""

    id: Id
    name: Name
    email: Annotated[str | None, Field(max_length=320, pattern=r"^[^@\s]+@[^@\s]+$"), PII] = None
    company_id: Id | None = None
    source: Annotated[str, Field(min_length=1, max_length=40)] = "manual"


class SearchContacts(BaseModel):
    """Input of `crm.contact.search`."""

    text: Annotated[str | None, Field(max_length=200)] = None
    company_id: Id | None = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class ContactList(BaseModel):
    """Output of `crm.contact.search`."""

    contacts: list[Contact]
    total: int


class CreateDeal(BaseModel):
    """Input of `crm.deal.create`."""

    contact_id: Id
    title: Name
    amount: Money
    opened_on: date | None = None
    id: Id | None = None


class UpdateDeal(BaseModel):
    """Input of `crm.deal.update`: the fields to change."""

    deal_id: Id
    title: Name | None = None
    amount: Money | None = None


class MoveDeal(BaseModel):
    """Input of `crm.deal.move`."""

    deal_id: Id
    to_stage: Stage
    on: date | None = None


class StageMove(BaseModel):
    """Input of the `crm.deal.pipeline` transitions: the day of the move (default: today;
    recorded as `closed_on` when the deal is won or lost)."""

    on: date | None = None


class SearchDeals(BaseModel):
    """Input of `crm.deal.search`."""

    stage: Stage | None = None
    contact_id: Id | None = None
    min_amount: Money | None = None
    text: Annotated[str | None, Field(max_length=200)] = None
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


class DealList(BaseModel):
    """Output of `crm.deal.search`."""

    deals: list[Deal]
    total: int


class BoardRequest(BaseModel):
    """Input of `crm.pipeline.board`."""

    per_column: Annotated[int, Field(ge=0, le=50)] = 5


class PipelineColumn(BaseModel):
    """One kanban column: its totals and the largest deals in it."""

    stage: Stage
    count: int
    value: Decimal
    top_deals: list[Deal]


class PipelineBoard(BaseModel):
    """Output of `crm.pipeline.board`: every stage, in pipeline order."""

    columns: list[PipelineColumn]


class CreateTask(BaseModel):
    """Input of `crm.task.create`."""

    deal_id: Id
    title: Name
    due_on: date | None = None


class CompleteTask(BaseModel):
    """Input of `crm.task.complete`."""

    task_id: Id


class SummaryRequest(BaseModel):
    """Input of `crm.report.summary`."""

    top: Annotated[int, Field(ge=1, le=100)] = 10


class StageTotal(BaseModel):
    """Deals and value in one stage."""

    stage: Stage
    deals: int
    value: Decimal


class TopCustomer(BaseModel):
    """A contact ranked by won value."""

    contact_id: Id
    won_deals: int
    won_value: Decimal


class MonthTotal(BaseModel):
    """New deals opened in one month."""

    month: str
    deals: int
    value: Decimal


class ReportSummary(BaseModel):
    """Output of `crm.report.summary`: what a sales lead wants to see."""

    contacts: int
    deals: int
    pipeline_value: Decimal
    won_value: Decimal
    win_rate: float
    stages: list[StageTotal]
    top_customers: list[TopCustomer]
    monthly_new_deals: list[MonthTotal]
