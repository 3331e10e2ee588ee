"""Handlers of the CRM operations: plain async functions over repositories and events."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from contractspec.core import ConflictError, HandlerCtx, NotFoundError, SpecValidationError
from contractspec.core.workflows import (
    WorkflowChange,
    WorkflowSpec,
    WorkflowStateError,
    move_record,
)
from crm_pipeline.models import (
    CLOSED_STAGES,
    STAGE_TRANSITIONS,
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
    DealCreated,
    DealList,
    DealMoved,
    MonthTotal,
    MoveDeal,
    PipelineBoard,
    PipelineColumn,
    ReportSummary,
    SearchContacts,
    SearchDeals,
    Stage,
    StageMove,
    StageTotal,
    SummaryRequest,
    Task,
    TaskCompleted,
    TopCustomer,
    UpdateDeal,
    company_entity,
    contact_entity,
    deal_created,
    deal_entity,
    deal_moved,
    task_completed,
    task_entity,
)

__all__ = [
    "board",
    "closing_date",
    "complete_task",
    "create_company",
    "create_contact",
    "create_deal",
    "create_task",
    "deal_moved_hook",
    "move_deal",
    "search_contacts",
    "search_deals",
    "summary",
    "update_deal",
]

ZERO = Decimal("0.00")


async def create_company(inp: CreateCompany, ctx: HandlerCtx) -> Company:
    """Create a company; its id must be new."""
    return await ctx.repo(company_entity).add(Company(**inp.model_dump()))


async def create_contact(inp: CreateContact, ctx: HandlerCtx) -> Contact:
    """Create a contact, checking that its company exists and its email is free."""
    if inp.company_id is not None and await ctx.repo(company_entity).get(inp.company_id) is None:
        raise NotFoundError(f"company {inp.company_id!r} not found; create it first")
    contacts = ctx.repo(contact_entity)
    if inp.email is not None and await contacts.first({"email": inp.email}) is not None:
        raise ConflictError("another contact already uses this email address")
    return await contacts.add(Contact(**inp.model_dump()))


async def search_contacts(inp: SearchContacts, ctx: HandlerCtx) -> ContactList:
    """Contacts by name fragment and company, ordered by name."""
    where: dict[str, Any] = {}
    if inp.text:
        where["name__icontains"] = inp.text
    if inp.company_id:
        where["company_id"] = inp.company_id
    repo = ctx.repo(contact_entity)
    found = await repo.find(where, order_by="name", limit=inp.limit, offset=inp.offset)
    return ContactList(contacts=found, total=await repo.count(where))


async def create_deal(inp: CreateDeal, ctx: HandlerCtx) -> Deal:
    """Open a deal for an existing contact, in the `lead` column; emits `deal.created`."""
    if await ctx.repo(contact_entity).get(inp.contact_id) is None:
        raise NotFoundError(f"contact {inp.contact_id!r} not found; create the contact first")
    now = ctx.now()
    opened = inp.opened_on or now.date()
    deal = Deal(
        id=inp.id or ctx.new_id(),
        contact_id=inp.contact_id,
        title=inp.title,
        amount=inp.amount,
        stage=Stage.LEAD,
        opened_on=opened,
        opened_month=f"{opened.year:04d}-{opened.month:02d}",
        created_at=now,
    )
    await ctx.repo(deal_entity).add(deal)
    ctx.emit(
        deal_created,
        DealCreated(
            deal_id=deal.id, contact_id=deal.contact_id, amount=deal.amount, stage=deal.stage
        ),
    )
    return deal


async def update_deal(inp: UpdateDeal, ctx: HandlerCtx) -> Deal:
    """Change a deal's title or amount (closed deals are frozen)."""
    repo = ctx.repo(deal_entity)
    deal = await repo.require(inp.deal_id)
    if deal.stage in CLOSED_STAGES:
        raise SpecValidationError(
            f"deal {deal.id!r} is {deal.stage.value}; closed deals cannot change"
        )
    changes = inp.model_dump(exclude={"deal_id"}, exclude_none=True)
    if not changes:
        return deal
    return await repo.patch(deal.id, **changes)


_PIPELINE: list[WorkflowSpec] = []


def _pipeline() -> WorkflowSpec:
    """The deal pipeline workflow (declared in `crm_pipeline.spec`, which imports this module;
    looked up once)."""
    if not _PIPELINE:
        from crm_pipeline.spec import deal_pipeline

        _PIPELINE.append(deal_pipeline)
    return _PIPELINE[0]


async def move_deal(inp: MoveDeal, ctx: HandlerCtx) -> Deal:
    """Move a deal to another column: fires the `crm.deal.pipeline` transition into `to_stage`
    on the deal itself (one update of the deal; closing it (won/lost) sets `closed_on`). Emits
    `deal.moved`.

    Raises:
        NotFoundError: No such deal.
        SpecValidationError: The deal is closed (won/lost), or already in `to_stage`.
    """
    try:
        moved: Deal = await move_record(
            ctx, _pipeline(), inp.deal_id, STAGE_TRANSITIONS[inp.to_stage],
            input=StageMove(on=inp.on),
        )  # fmt: skip
    except NotFoundError:
        raise NotFoundError(
            f"crm.deal {inp.deal_id!r} not found in this organization",
            details={"entity": deal_entity.name, "id": inp.deal_id},
        ) from None
    except WorkflowStateError as exc:
        # The workflow refused the deal's stage: say it as this command always has.
        state = exc.details.get("state")
        if state in CLOSED_STAGES:
            raise SpecValidationError(
                f"deal {inp.deal_id!r} is already {state}; closed deals cannot move"
            ) from None
        if state == inp.to_stage:
            raise SpecValidationError(f"deal {inp.deal_id!r} is already in {state}") from None
        raise
    return moved


def closing_date(ctx: HandlerCtx, change: WorkflowChange) -> dict[str, Any]:
    """`set_fields` of the pipeline: a won or lost deal gets `closed_on` (the move's `on`, default
    today), a deal moved back into an open column loses it."""
    if change.to_state in CLOSED_STAGES:
        on = change.input.on if isinstance(change.input, StageMove) else None
        return {"closed_on": on or ctx.now().date()}
    return {"closed_on": None}


#: Stage by value (the workflow's states are the values of `Stage`).
_STAGES: dict[str, Stage] = {s.value: s for s in Stage}


def deal_moved_hook(ctx: HandlerCtx, change: WorkflowChange) -> None:
    """`on_transition` of the pipeline: emits `deal.moved` with the deal's amount."""
    deal: Deal = change.record
    ctx.emit(
        deal_moved,
        DealMoved(
            deal_id=deal.id,
            from_stage=_STAGES[change.from_state or ""],
            to_stage=deal.stage,
            amount=deal.amount,
        ),
    )


async def search_deals(inp: SearchDeals, ctx: HandlerCtx) -> DealList:
    """Deals filtered by stage, contact, minimum amount and title fragment, largest first."""
    where: dict[str, Any] = {}
    if inp.stage is not None:
        where["stage"] = inp.stage
    if inp.contact_id is not None:
        where["contact_id"] = inp.contact_id
    if inp.min_amount is not None:
        where["amount__ge"] = inp.min_amount
    if inp.text:
        where["title__icontains"] = inp.text
    repo = ctx.repo(deal_entity)
    found = await repo.find(where, order_by=["-amount"], limit=inp.limit, offset=inp.offset)
    return DealList(deals=found, total=await repo.count(where))


async def board(inp: BoardRequest, ctx: HandlerCtx) -> PipelineBoard:
    """The kanban board: per stage the count, the value and the largest deals."""
    repo = ctx.repo(deal_entity)
    totals = {row["stage"]: row for row in await repo.aggregate(group_by=["stage"], sum=["amount"])}
    columns = []
    for stage in Stage:
        row = totals.get(stage.value, {})
        top = (
            await repo.find({"stage": stage}, order_by="-amount", limit=inp.per_column)
            if inp.per_column
            else []
        )
        columns.append(
            PipelineColumn(
                stage=stage,
                count=row.get("count", 0),
                value=row.get("sum_amount") or ZERO,
                top_deals=top,
            )
        )
    return PipelineBoard(columns=columns)


async def create_task(inp: CreateTask, ctx: HandlerCtx) -> Task:
    """Attach a to-do to an existing deal."""
    await ctx.repo(deal_entity).require(inp.deal_id)
    task = Task(id=ctx.new_id(), deal_id=inp.deal_id, title=inp.title, due_on=inp.due_on)
    return await ctx.repo(task_entity).add(task)


async def complete_task(inp: CompleteTask, ctx: HandlerCtx) -> Task:
    """Mark a task done; emits `task.completed`."""
    repo = ctx.repo(task_entity)
    task = await repo.require(inp.task_id)
    if task.done:
        raise SpecValidationError(f"task {task.id!r} is already completed")
    done = await repo.update(task.model_copy(update={"done": True, "completed_at": ctx.now()}))
    ctx.emit(task_completed, TaskCompleted(task_id=task.id, deal_id=task.deal_id))
    return done


async def summary(inp: SummaryRequest, ctx: HandlerCtx) -> ReportSummary:
    """Deals and value per stage, win rate, top customers by won value, monthly new deals.

    Every figure is one `GROUP BY` query in the store (no rows are loaded into Python).
    """
    deals = ctx.repo(deal_entity)
    by_stage = {r["stage"]: r for r in await deals.aggregate(group_by=["stage"], sum=["amount"])}
    stages = [
        StageTotal(
            stage=s,
            deals=by_stage.get(s.value, {}).get("count", 0),
            value=by_stage.get(s.value, {}).get("sum_amount") or ZERO,
        )
        for s in Stage
    ]
    won = by_stage.get(Stage.WON.value, {})
    lost = by_stage.get(Stage.LOST.value, {})
    closed = won.get("count", 0) + lost.get("count", 0)
    customers = await deals.aggregate(
        group_by=["contact_id"], sum=["amount"], where={"stage": Stage.WON}
    )
    customers.sort(key=lambda r: (-(r["sum_amount"] or ZERO), r["contact_id"]))
    months = await deals.aggregate(group_by=["opened_month"], sum=["amount"])
    return ReportSummary(
        contacts=await ctx.repo(contact_entity).count(),
        deals=sum(s.deals for s in stages),
        pipeline_value=sum((s.value for s in stages if s.stage not in CLOSED_STAGES), ZERO),
        won_value=won.get("sum_amount") or ZERO,
        win_rate=(won.get("count", 0) / closed) if closed else 0.0,
        stages=stages,
        top_customers=[
            TopCustomer(
                contact_id=r["contact_id"], won_deals=r["count"], won_value=r["sum_amount"] or ZERO
            )
            for r in customers[: inp.top]
        ],
        monthly_new_deals=[
            MonthTotal(month=r["opened_month"], deals=r["count"], value=r["sum_amount"] or ZERO)
            for r in months
        ],
    )
