"""A workflow's instances as a board by state, with the transitions the caller may fire now."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from contractspec.console.reviews._common import (
    FormField,
    field_errors,
    form_fields,
    form_values,
    pretty,
    status_of,
)
from contractspec.console.sections import ConsoleHost
from contractspec.core import ContractSpecError, HandlerCtx, SpecRegistry, define_query
from contractspec.core.errors import NotFoundError, PolicyDeniedError
from contractspec.core.specs import OperationSpec
from contractspec.core.workflows import INSTANCE_ENTITY, WorkflowInstance, WorkflowSpec

__all__ = ["Board", "BoardColumn", "BoardInput", "WorkflowBoard", "board_operation"]


class BoardInput(BaseModel):
    """Input of `console.board.<workflow>`."""

    per_state: int = Field(25, ge=1, le=200, description="Instances per state (1-200).")


class BoardColumn(BaseModel):
    """One state of the board: its most recently updated instances."""

    state: str
    final: bool
    items: list[WorkflowInstance]
    more: bool = Field(description="More instances are in this state than `per_state`.")


class Board(BaseModel):
    """Output of `console.board.<workflow>`: one column per state, in declaration order."""

    workflow: str
    version: int
    columns: list[BoardColumn]


def board_operation(workflow: WorkflowSpec) -> OperationSpec:
    """The query `console.board.<workflow name>` (the workflow's read auth, tenant-scoped).

    For a workflow on an entity (`define_workflow(entity=..., state_field=...)`) the columns
    are read from the entity's records by their state field; each card is the record seen as
    a `WorkflowInstance` (same id, `data` the record's JSON form, `seq` 0)."""
    return define_query(
        f"console.board.{workflow.name}",
        input=BoardInput,
        output=Board,
        auth=workflow.read_auth,
        tags=(f"workflow:{workflow.name}", "console"),
        description=f"Instances of workflow {workflow.name} by state (the console's board).",
    )


def _install(workflow: WorkflowSpec, registry: SpecRegistry) -> OperationSpec:
    op = board_operation(workflow)
    try:
        return registry.get(op.name)
    except NotFoundError:
        pass
    registry.register(op)

    if workflow.entity is not None:
        registry.bind(op, _entity_board(workflow))
        return op

    @registry.handler(op)
    async def board(inp: BoardInput, ctx: HandlerCtx) -> Board:
        repo = ctx.repo(INSTANCE_ENTITY)
        columns = []
        for state in workflow.states:
            rows = await repo.find(
                {"workflow": workflow.name, "state": state},
                order_by="-updated_at",
                limit=inp.per_state + 1,
            )
            columns.append(
                BoardColumn(
                    state=state,
                    final=state in workflow.final,
                    items=rows[: inp.per_state],
                    more=len(rows) > inp.per_state,
                )
            )
        return Board(workflow=workflow.name, version=workflow.version, columns=columns)

    return op


def _entity_board(workflow: WorkflowSpec) -> Callable[[BoardInput, HandlerCtx], Awaitable[Board]]:
    """The board handler of a workflow whose state lives on `workflow.entity`'s records."""
    entity = workflow.entity
    field = workflow.state_field
    assert entity is not None
    assert field is not None
    fields = entity.model.model_fields
    annotation = fields[field].annotation
    enum_type = (
        annotation if isinstance(annotation, type) and issubclass(annotation, enum.Enum) else None
    )
    order = next((f"-{f}" for f in ("updated_at", "created_at") if f in fields), entity.primary_key)

    def as_instance(record: Any, state: str) -> WorkflowInstance:
        created = getattr(record, "created_at", None)
        updated = getattr(record, "updated_at", None)
        at = created if isinstance(created, datetime) else datetime.fromtimestamp(0, UTC)
        return WorkflowInstance(
            id=str(getattr(record, entity.primary_key)),
            workflow=workflow.name,
            version=workflow.version,
            state=state,
            data=record.model_dump(mode="json"),
            seq=0,
            entry_seq=0,
            created_at=at,
            updated_at=updated if isinstance(updated, datetime) else at,
        )

    async def board(inp: BoardInput, ctx: HandlerCtx) -> Board:
        repo = ctx.repo(entity)
        columns = []
        for state in workflow.states:
            value = enum_type(state) if enum_type is not None else state
            rows = await repo.find({field: value}, order_by=order, limit=inp.per_state + 1)
            columns.append(
                BoardColumn(
                    state=state,
                    final=state in workflow.final,
                    items=[as_instance(r, state) for r in rows[: inp.per_state]],
                    more=len(rows) > inp.per_state,
                )
            )
        return Board(workflow=workflow.name, version=workflow.version, columns=columns)

    return board


class WorkflowBoard:
    """The instances of one workflow as a board by state (a kanban) and an instance page.

    Each card lists the transitions the caller may fire now (the workflow's
    `<wf>.available` query: policy, guards and approval rules are the runtime's); each
    transition is a form built from its input model and fired through the executor
    (`<wf>.<transition>`, or `.approve` / `.reject` for an approval step). The instance page
    shows the history (`<wf>.history`).

    Constructing the section registers the query `console.board.<workflow>` (the board's
    columns) in `registry` unless it is there already; build the section before the executor
    serves calls.

    A workflow on an entity (`define_workflow(entity=..., state_field=...)`) has no instance
    rows: its columns are the entity's records by their state field, cards and pages are keyed
    by the record's id, and forms post no `expected_seq` (the entity's version guards
    concurrent moves).

    Args:
        workflow: The workflow (registered in `registry`).
        registry: The registry the console's executor runs.
        key: URL segment (default: the workflow's name with dots as dashes).
        title: Navigation label (default: the workflow's name).
        per_state: Cards per column (1-200).
    """

    template_dir: Path | None = None

    def __init__(
        self,
        workflow: WorkflowSpec,
        registry: SpecRegistry,
        *,
        key: str | None = None,
        title: str | None = None,
        per_state: int = 25,
    ) -> None:
        self.workflow = workflow
        self.key = key or workflow.name.replace(".", "-").replace("_", "-")
        self.title = title or workflow.name
        self.per_state = BoardInput(per_state=per_state).per_state
        self.operation = _install(workflow, registry).name

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        """Shown to callers who may read the workflow."""
        return await console.may(request, self.operation)

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """`/` (board), `/{instance_id}` (instance), `/{instance_id}/fire/{transition}` (POST)."""

        async def board(request: Request) -> Response:
            return await self.board_page(console, request)

        async def instance(request: Request) -> Response:
            return await self.instance_page(console, request, request.path_params["instance_id"])

        async def fire(request: Request) -> Response:
            p = request.path_params
            return await self.fire(console, request, p["instance_id"], p["transition"])

        return [
            Route("/", board, methods=["GET"]),
            Route("/{instance_id}", instance, methods=["GET"]),
            Route("/{instance_id}/fire/{transition}", fire, methods=["POST"]),
        ]

    def fields(self, transition: str) -> list[FormField]:
        """The form inputs of `transition`'s input model (`[]` without one)."""
        return form_fields(self.workflow.get_transition(transition).input)

    async def board_page(self, console: ConsoleHost, request: Request) -> Response:
        """The columns, each card with the transitions the caller may fire now."""
        try:
            board = await console.execute(request, self.operation, {"per_state": self.per_state})
            available: dict[str, Any] = {}
            for column in getattr(board, "columns", []):
                if column.final:  # no transition leaves a final state
                    continue
                for inst in column.items:
                    available[inst.id] = await console.execute(
                        request, self.workflow.operation_name("available"), {"instance_id": inst.id}
                    )
        except ContractSpecError as exc:
            return console.render_error(request, exc)
        return console.render(
            request,
            "reviews/board.html",
            {
                "section": self,
                "board": board,
                "available": available,
                "fields": {t.name: self.fields(t.name) for t in self.workflow.transitions},
            },
        )

    async def instance_page(
        self,
        console: ConsoleHost,
        request: Request,
        instance_id: str,
        *,
        error: ContractSpecError | None = None,
        failed: str | None = None,
        submitted: dict[str, Any] | None = None,
    ) -> Response:
        """One instance: its data, the transitions the caller may fire, its history."""
        wf = self.workflow
        try:
            inst = await console.execute(
                request, wf.operation_name("get"), {"instance_id": instance_id}
            )
            available = await console.execute(
                request, wf.operation_name("available"), {"instance_id": instance_id}
            )
            history = await console.execute(
                request, wf.operation_name("history"), {"instance_id": instance_id, "limit": 500}
            )
        except ContractSpecError as exc:
            return console.render_error(request, exc)
        return console.render(
            request,
            "reviews/instance.html",
            {
                "section": self,
                "item": inst,
                "available": available,
                "history": history,
                "fields": {t.name: self.fields(t.name) for t in wf.transitions},
                "error": error.message if error is not None else None,
                "failed": failed,
                "field_errors": field_errors(error) if error is not None else {},
                "submitted": submitted or {},
                "pretty": pretty,
            },
            status_code=status_of(error) if error is not None else 200,
        )

    async def fire(
        self, console: ConsoleHost, request: Request, instance_id: str, transition: str
    ) -> Response:
        """Fire `transition` (or approve / reject its approval step) through the executor.

        The form posts `expected_seq` (the sequence the page showed: a concurrent change is a
        conflict, not a surprise; ignored for a workflow on an entity), `comment`, `input.<field>` and, for approval steps,
        `decision` (`approve` or `reject`). Back to the instance (or the board, `return=board`)
        with 303 when done; a denial is the console's 403 page; a refusal (guard, state,
        invalid input) is shown on the instance page with the fields' errors.
        """
        wf = self.workflow
        try:
            t = wf.get_transition(transition)
        except NotFoundError:
            raise HTTPException(
                404, f"workflow {wf.name} has no transition {transition!r}"
            ) from None
        form = await console.form(request)
        operation = wf.operation_name(t.name)
        if t.approvals is not None:
            decision = form.get("decision")
            if decision not in ("approve", "reject"):
                raise HTTPException(400, "decision must be approve or reject")
            operation = f"{operation}.{decision}"
        raw: dict[str, Any] = {"instance_id": instance_id}
        seq = form.get("expected_seq")
        if isinstance(seq, str) and seq and wf.entity is None:
            raw["expected_seq"] = seq
        comment = form.get("comment")
        if isinstance(comment, str) and comment:
            raw["comment"] = comment
        fields = self.fields(t.name)
        values = form_values(fields, form, "input.")
        if t.input is not None:
            raw["input"] = values
        try:
            await console.execute(request, operation, raw)
        except (PolicyDeniedError, NotFoundError) as exc:
            return console.render_error(request, exc)
        except ContractSpecError as exc:
            return await self.instance_page(
                console, request, instance_id, error=exc, failed=t.name, submitted=values
            )
        path = request.url.path
        page = path[: path.rfind("/fire/")]
        if form.get("return") == "board":
            page = page[: page.rfind("/")] + "/"
        return RedirectResponse(page, status_code=303)
