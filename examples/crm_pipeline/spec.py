"""The CRM spec: its operations, the deal pipeline workflow, the registry with handlers bound,
and the roles that may call them.

`registry` is the source of truth: the runtime executes it, `contractspec spec export` writes its IR,
`contractspec generate` projects it into code.
"""

from __future__ import annotations

from contractspec.core import (
    RolePermissions,
    SpecRegistry,
    define_command,
    define_query,
    define_workflow,
    requires,
    transition,
)
from contractspec.core.workflows import Transition
from crm_pipeline import handlers
from crm_pipeline.models import (
    OPEN_STAGES,
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
    Stage,
    StageMove,
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

__all__ = ["OWNERS", "ROLES", "deal_pipeline", "operations", "policy", "registry"]

OWNERS = ("sales-platform",)

_DEAL_WRITE = requires("crm.deal.write")


def _into(name: str, stage: Stage, description: str) -> Transition:
    """The transition `name` into `stage`, from every other open stage."""
    return transition(
        name,
        source=[s.value for s in OPEN_STAGES if s is not stage],
        target=stage.value,
        input=StageMove,
        auth=_DEAL_WRITE,
        description=description,
    )


#: The sales pipeline as a workflow on the deals themselves: a deal is in the stage its `stage`
#: field holds (no instance or history rows). `crm.deal.move` (or the `crm.deal.pipeline.*`
#: operations) fires the transition into a stage: one version-checked update of the deal, with
#: `closed_on` set by `handlers.closing_date`; `handlers.deal_moved_hook` emits `deal.moved`.
#: The history of a deal is read from the audit trail (`crm.deal.pipeline.history`).
deal_pipeline = define_workflow(
    "crm.deal.pipeline",
    states=[s.value for s in Stage],
    initial=Stage.LEAD.value,
    final=[Stage.WON.value, Stage.LOST.value],
    transitions=[
        _into("reopen", Stage.LEAD, "Send a deal back to the lead column."),
        _into("qualify", Stage.QUALIFIED, "The lead is qualified."),
        _into("propose", Stage.PROPOSAL, "A proposal was sent."),
        _into("negotiate", Stage.NEGOTIATION, "Terms are being negotiated."),
        _into("win", Stage.WON, "The deal is won (closes it)."),
        _into("lose", Stage.LOST, "The deal is lost (closes it)."),
    ],
    entity=deal_entity,
    state_field="stage",
    set_fields=handlers.closing_date,
    on_transition=handlers.deal_moved_hook,
    on_transition_emits=[deal_moved],
    transitioned_event=False,
    read_auth=requires("crm.read"),
    comment_auth=_DEAL_WRITE,
    description="Deal stages: lead → qualified → proposal → negotiation → won or lost.",
    owners=OWNERS,
    tags=("deals", "pipeline"),
)

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

registry = SpecRegistry(
    company_entity, contact_entity, deal_entity, task_entity, *operations, deal_pipeline
)
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
