"""The CRM spec: its operations, the registry with handlers bound, and the roles that may call them.

`registry` is the source of truth: the runtime executes it, `contractspec spec export` writes its IR,
`contractspec generate` projects it into code.
"""

from __future__ import annotations

from contractspec.core import RolePermissions, SpecRegistry, define_command, define_query, requires
from crm_pipeline import handlers
from crm_pipeline.models import (
    BoardRequest,
    Company,
    CompleteTask,
    Contact,
    ContactList,
    CreateCompany,
    CreateContact,
    CreateDeal,
    CreateTask,
    Deal,
    DealList,
    MoveDeal,
    PipelineBoard,
    ReportSummary,
    SearchContacts,
    SearchDeals,
    SummaryRequest,
    Task,
    UpdateDeal,
    company_entity,
    contact_entity,
    deal_created,
    deal_entity,
    deal_moved,
    task_completed,
    task_entity,
)

__all__ = ["OWNERS", "ROLES", "operations", "policy", "registry"]

OWNERS = ("sales-platform",)

create_company = define_command(
    "crm.company.create",
    input=CreateCompany,
    output=Company,
    auth=requires("crm.company.write"),
    description="Create a company.",
    owners=OWNERS,
    tags=("companies",),
    errors=["conflict"],
)
create_contact = define_command(
    "crm.contact.create",
    input=CreateContact,
    output=Contact,
    auth=requires("crm.contact.write"),
    idempotent=True,
    description="Create a contact, optionally attached to a company.",
    owners=OWNERS,
    tags=("contacts",),
    errors=["conflict", "not_found"],
)
search_contacts = define_query(
    "crm.contact.search",
    input=SearchContacts,
    output=ContactList,
    auth=requires("crm.read"),
    description="Find contacts by name fragment or company.",
    owners=OWNERS,
    tags=("contacts",),
)
create_deal = define_command(
    "crm.deal.create",
    input=CreateDeal,
    output=Deal,
    emits=[deal_created],
    auth=requires("crm.deal.write"),
    idempotent=True,
    description="Open a deal for a contact in the lead column.",
    owners=OWNERS,
    tags=("deals",),
    errors=["not_found", "conflict"],
)
update_deal = define_command(
    "crm.deal.update",
    input=UpdateDeal,
    output=Deal,
    auth=requires("crm.deal.write"),
    description="Change the title or amount of an open deal.",
    owners=OWNERS,
    tags=("deals",),
    errors=["not_found", "validation_error"],
)
move_deal = define_command(
    "crm.deal.move",
    input=MoveDeal,
    output=Deal,
    emits=[deal_moved],
    auth=requires("crm.deal.write"),
    description="Move a deal to another pipeline stage; won and lost close it.",
    owners=OWNERS,
    tags=("deals", "pipeline"),
    errors=["not_found", "validation_error"],
)
search_deals = define_query(
    "crm.deal.search",
    input=SearchDeals,
    output=DealList,
    auth=requires("crm.read"),
    description="Filter deals by stage, contact, minimum amount and title.",
    owners=OWNERS,
    tags=("deals",),
)
pipeline_board = define_query(
    "crm.pipeline.board",
    input=BoardRequest,
    output=PipelineBoard,
    auth=requires("crm.read"),
    description="The kanban board: count, value and largest deals per stage.",
    owners=OWNERS,
    tags=("pipeline",),
)
create_task = define_command(
    "crm.task.create",
    input=CreateTask,
    output=Task,
    auth=requires("crm.task.write"),
    description="Attach a to-do to a deal.",
    owners=OWNERS,
    tags=("tasks",),
    errors=["not_found"],
)
complete_task = define_command(
    "crm.task.complete",
    input=CompleteTask,
    output=Task,
    emits=[task_completed],
    auth=requires("crm.task.write"),
    description="Mark a task done.",
    owners=OWNERS,
    tags=("tasks",),
    errors=["not_found", "validation_error"],
)
report_summary = define_query(
    "crm.report.summary",
    input=SummaryRequest,
    output=ReportSummary,
    auth=requires("crm.read"),
    description="Deals and value per stage, win rate, top customers and monthly new deals.",
    owners=OWNERS,
    tags=("reports",),
)

operations = (
    create_company,
    create_contact,
    search_contacts,
    create_deal,
    update_deal,
    move_deal,
    search_deals,
    pipeline_board,
    create_task,
    complete_task,
    report_summary,
)

registry = SpecRegistry(company_entity, contact_entity, deal_entity, task_entity, *operations)
registry.register(deal_created, deal_moved, task_completed)
registry.bind(create_company, handlers.create_company)
registry.bind(create_contact, handlers.create_contact)
registry.bind(search_contacts, handlers.search_contacts)
registry.bind(create_deal, handlers.create_deal)
registry.bind(update_deal, handlers.update_deal)
registry.bind(move_deal, handlers.move_deal)
registry.bind(search_deals, handlers.search_deals)
registry.bind(pipeline_board, handlers.board)
registry.bind(create_task, handlers.create_task)
registry.bind(complete_task, handlers.complete_task)
registry.bind(report_summary, handlers.summary)
registry.validate(require_handlers=True)

#: Role → permission patterns of the CRM. Apps with contractspec-identity use its PolicyEngine instead.
ROLES: dict[str, list[str]] = {
    "sales": ["crm.*"],
    "viewer": ["crm.read"],
    "importer": ["crm.contact.write", "crm.deal.write", "crm.task.write", "crm.read"],
}


def policy() -> RolePermissions:
    """The CRM's role-based policy decider."""
    return RolePermissions(ROLES)
