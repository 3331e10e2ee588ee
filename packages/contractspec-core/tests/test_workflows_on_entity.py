"""Workflows whose state lives on the app's own record (`define_workflow(entity=..., state_field=...)`)
and history read from the audit trail (`history="audit"`), on memory, a SQLite file and
PostgreSQL: one update per move, no instance or step rows, exactly one winner among concurrent
moves, history paginated from the audit records, definition errors, IR."""

from __future__ import annotations

import asyncio
import enum
from datetime import date, datetime
from typing import Any, Literal

import pytest
from core_guarantees_app import read_stored
from pydantic import BaseModel
from workflows_app import EMPLOYEE, MANAGER, ORG, OTHER_ORG, ctx

from contractspec.core import (
    Backend,
    ConflictError,
    Executor,
    HandlerContractError,
    HandlerCtx,
    MemoryBackend,
    NotFoundError,
    RolePermissions,
    SpecDefinitionError,
    SpecRegistry,
    WorkflowGuardError,
    WorkflowStateError,
    define_command,
    define_entity,
    define_event,
    define_workflow,
    requires,
    timer,
    transition,
)
from contractspec.core.testing import SequentialIds
from contractspec.core.workflows import (
    INSTANCE_ENTITY,
    STEP_ENTITY,
    Approvals,
    WorkflowChange,
    WorkflowInstance,
    move_record,
)


class Status(enum.StrEnum):
    OPEN = "open"
    WORKING = "working"
    DONE = "done"


class Ticket(BaseModel):
    id: str
    title: str
    status: Status = Status.OPEN
    closed_on: date | None = None
    created_at: datetime | None = None


class Finish(BaseModel):
    note: str = ""
    on: date | None = None


class NewTicket(BaseModel):
    id: str
    title: str


class MoveTicket(BaseModel):
    ticket_id: str
    to: Literal["working", "done"]


class TicketMoved(BaseModel):
    ticket_id: str
    from_status: str
    to_status: str


class Rename(BaseModel):
    ticket_id: str
    title: str


TICKET = define_entity("t.ticket", Ticket)
TICKET_MOVED = define_event("t.ticket.moved", payload=TicketMoved, key="ticket_id")
POLICY = RolePermissions({"staff": ["ticket.work"], "manager": ["ticket.work", "ticket.finish"]})


def _no_nope(_record: Any, value: Any) -> str | None:
    """Guard: a finish note 'nope' is refused."""
    return "the note says nope" if value is not None and value.note == "nope" else None


def _closing(_ctx: HandlerCtx, change: WorkflowChange) -> dict[str, Any] | None:
    if change.to_state == "done":
        on = change.input.on if isinstance(change.input, Finish) else None
        return {"closed_on": on or date(2030, 1, 1)}
    return {"closed_on": None}


def _moved(ctx: HandlerCtx, change: WorkflowChange) -> None:
    assert isinstance(change.record, Ticket)
    assert change.record.status.value == change.to_state  # the hook sees the record as written
    ctx.emit(
        TICKET_MOVED,
        TicketMoved(
            ticket_id=change.record.id,
            from_status=change.from_state or "",
            to_status=change.to_state,
        ),
    )


def ticket_flow(**overrides: Any) -> Any:
    spec: dict[str, Any] = {
        "states": ["open", "working", "done"],
        "initial": "open",
        "final": ["done"],
        "transitions": [
            transition("begin", source="open", target="working", auth=requires("ticket.work")),
            transition("pause", source="working", target="open", auth=requires("ticket.work")),
            transition(
                "finish", source="working", target="done", input=Finish,
                auth=requires("ticket.finish"), guard=_no_nope,
            ),
        ],
        "entity": TICKET,
        "state_field": "status",
        "set_fields": _closing,
        "on_transition": _moved,
        "on_transition_emits": [TICKET_MOVED],
        "transitioned_event": False,
        "read_auth": requires("ticket.work"),
        "comment_auth": requires("ticket.work"),
    }  # fmt: skip
    spec.update(overrides)
    return define_workflow("t.ticket.flow", **spec)


FLOW = ticket_flow()


async def create_ticket(inp: NewTicket, ctx: HandlerCtx) -> Ticket:
    return await ctx.repo(TICKET).add(Ticket(id=inp.id, title=inp.title, created_at=ctx.now()))


async def move_ticket(inp: MoveTicket, ctx: HandlerCtx) -> Ticket:
    name = "begin" if inp.to == "working" else "finish"
    moved: Ticket = await move_record(ctx, FLOW, inp.ticket_id, name, comment="via move")
    return moved


async def rename_ticket(inp: Rename, ctx: HandlerCtx) -> Ticket:
    return await ctx.repo(TICKET).patch(inp.ticket_id, title=inp.title)


CREATE = define_command("t.ticket.create", input=NewTicket, output=Ticket,
                        auth=requires("ticket.work"))  # fmt: skip
MOVE = define_command("t.ticket.move", input=MoveTicket, output=Ticket,
                      auth=requires("ticket.finish"), emits=[TICKET_MOVED])  # fmt: skip
RENAME = define_command("t.ticket.rename", input=Rename, output=Ticket,
                        auth=requires("ticket.work"))  # fmt: skip


def _plain_flow(name: str, history: str | None) -> Any:
    return define_workflow(
        name, states=["a", "b", "c"], initial="a", final=["c"], history=history,
        transitions=[transition("go", source="a", target="b"),
                     transition("back", source="b", target="a"),
                     transition("end", source="b", target="c", input=Finish)],
    )  # fmt: skip


AUDITED = _plain_flow("t.audited", "audit")
STEPPED = _plain_flow("t.stepped", None)


def build() -> SpecRegistry:
    registry = SpecRegistry(TICKET, TICKET_MOVED, FLOW, CREATE, MOVE, RENAME, AUDITED, STEPPED)
    registry.bind(CREATE, create_ticket)
    registry.bind(MOVE, move_ticket)
    registry.bind(RENAME, rename_ticket)
    return registry


@pytest.fixture
def registry() -> SpecRegistry:
    """Overrides conftest's registry so the `backend` fixture creates the ticket table."""
    return build()


@pytest.fixture
def executor(registry: SpecRegistry, backend: Backend) -> Executor:
    return Executor(registry, backend=backend, policy=POLICY, ids=SequentialIds("id"))


async def _ticket(ex: Executor, tid: str = "t1") -> None:
    await ex.execute("t.ticket.create", {"id": tid, "title": "Fix it"}, ctx(EMPLOYEE))


async def _stored_ticket(backend: Backend, tid: str, org: str = ORG) -> dict[str, Any]:
    return (await read_stored(backend, org, [TICKET])).rows["t.ticket"][tid]


# -- definition -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"state_field": None}, "state_field", "needs state_field="),
        ({"state_field": "colour"}, "state_field", "needs state_field=, the name of its field"),
        ({"state_field": "closed_on"}, "state_field", "t.ticket.closed_on cannot hold the states"),
        ({"states": ["open", "working", "done", "lost"],
          "transitions": [transition("begin", source="open", target="working"),
                          transition("finish", source="working", target="done"),
                          transition("lose", source="working", target="lost")],
          "final": ["done", "lost"]}, "state_field", "cannot hold the states ['lost']"),
        ({"history": "steps"}, "history", "use history='audit'"),
        ({"history": "rows"}, "history", "history must be 'steps'"),
        ({"timers": [timer("working", after=__import__("datetime").timedelta(hours=1),
                           escalate=True)]}, "timers", "cannot have timers"),
        ({"transitions": [transition("begin", source="open", target="working"),
                          transition("finish", source="working", target="done",
                                     approvals=Approvals(count=2))]},
         "transitions", "cannot have transitions: approval steps"),
        ({"subject": Finish}, "subject", "cannot have subject"),
        ({"version": 2, "migrations": {1: {"open": "working"}}}, "migrations",
         "cannot have migrations"),
        ({"entity": Ticket}, "entity", "entity must be an EntitySpec"),
        ({"set_fields": "closed_on"}, "set_fields", "set_fields must be callable"),
        ({"entity": None}, "state_field", "pass entity= too"),
        ({"entity": None, "state_field": None}, "set_fields", "pass entity= too"),
    ],
)  # fmt: skip
def test_entity_definition_errors_name_the_field(
    overrides: dict[str, Any], field: str, message: str | None
) -> None:
    """What cannot apply to a workflow on an entity is refused when declared, naming the field."""
    with pytest.raises(SpecDefinitionError) as caught:
        ticket_flow(**overrides)
    assert caught.value.details["field"] == field
    if message is not None:
        assert message in str(caught.value)


def test_entity_workflow_has_no_instance_or_step_tables_and_no_start() -> None:
    """Only the app's entity is stored; the derived operations are the transitions and
    get/history/available/comment (no start, timer or migrate)."""
    registry = SpecRegistry(TICKET, TICKET_MOVED, FLOW)
    entities = {e.name for e in registry.entities()}
    assert INSTANCE_ENTITY.name not in entities
    assert STEP_ENTITY.name not in entities
    ops = sorted(op.name for op in registry.operations() if op.name.startswith("t.ticket.flow."))
    assert ops == [
        "t.ticket.flow.available", "t.ticket.flow.begin", "t.ticket.flow.comment",
        "t.ticket.flow.finish", "t.ticket.flow.get", "t.ticket.flow.history",
        "t.ticket.flow.pause",
    ]  # fmt: skip
    begin = registry.get("t.ticket.flow.begin", 1)
    assert "expected_seq" not in begin.input.model_fields


def test_entity_and_history_appear_in_the_ir() -> None:
    """The IR carries entity, state_field, history and set_fields; it validates."""
    from contractspec.core.ir import validate_ir

    ir = build().to_ir()
    validate_ir(ir)
    flows = {w["name"]: w for w in ir["specs"]["workflow"]}
    wf = flows["t.ticket.flow"]
    assert flows["t.audited"]["history"] == "audit"
    assert "history" not in flows["t.stepped"]
    assert (wf["entity"], wf["state_field"], wf["history"]) == ("t.ticket", "status", "audit")
    assert wf["set_fields"] == "_closing"
    plain = define_workflow(
        "t.plain", states=["a", "b"], initial="a", final=["b"],
        transitions=[transition("go", source="a", target="b")],
    )  # fmt: skip
    plain_ir = SpecRegistry(plain).to_ir()["specs"]["workflow"][0]
    assert not {"entity", "state_field", "history", "set_fields"} & plain_ir.keys()


# -- transitions --------------------------------------------------------------------------------------


async def test_a_transition_moves_the_record_in_one_update(
    executor: Executor, backend: Backend
) -> None:
    """begin/finish write the record's status (and set_fields' closed_on), emit the hook's event,
    and leave one audit record each targeting the ticket; nothing else is stored."""
    await _ticket(executor)
    out = await executor.execute("t.ticket.flow.begin", {"instance_id": "t1"}, ctx(EMPLOYEE))
    view = out.model_dump()
    assert (view["id"], view["state"], view["seq"]) == ("t1", "working", 0)
    assert view["data"]["title"] == "Fix it"
    finish = {
        "instance_id": "t1",
        "comment": "shipped",
        "input": {"note": "ok", "on": "2026-03-04"},
    }
    await executor.execute("t.ticket.flow.finish", finish, ctx(MANAGER))
    row = await _stored_ticket(backend, "t1")
    assert (row["status"], row["closed_on"]) == ("done", "2026-03-04")
    stored = await read_stored(backend, ORG, [TICKET])
    moves = [(e.payload["from_status"], e.payload["to_status"]) for e in stored.events]
    assert moves == [("open", "working"), ("working", "done")]
    moved = [r for r in stored.audit if r.action.startswith("t.ticket.flow.")]
    assert [(r.target_type, r.target_id) for r in moved] == [("t.ticket", "t1")] * 2
    assert [len(r.changes) for r in moved] == [1, 1]  # the record only: no instance, no step
    # The step, compact: workflow, version, transition, input, comment (from → to is the change).
    assert moved[0].details["workflow"] == ["t.ticket.flow", 1, "begin"]
    assert moved[1].details["workflow"] == [
        "t.ticket.flow", 1, "finish", {"note": "ok", "on": "2026-03-04"}, "shipped"
    ]  # fmt: skip


async def test_refusals_state_guard_auth_unknown_and_tenant(executor: Executor) -> None:
    """Wrong source state → WorkflowStateError (a ConflictError); the guard's reason →
    WorkflowGuardError; missing permission → denied; unknown or other-tenant record → NotFound."""
    from contractspec.core import PolicyDeniedError

    await _ticket(executor)
    with pytest.raises(WorkflowStateError, match="is in state 'open'"):
        await executor.execute("t.ticket.flow.pause", {"instance_id": "t1"}, ctx(EMPLOYEE))
    await executor.execute("t.ticket.flow.begin", {"instance_id": "t1"}, ctx(EMPLOYEE))
    with pytest.raises(WorkflowGuardError, match="the note says nope"):
        await executor.execute(
            "t.ticket.flow.finish", {"instance_id": "t1", "input": {"note": "nope"}}, ctx(MANAGER)
        )
    with pytest.raises(PolicyDeniedError):
        await executor.execute("t.ticket.flow.finish", {"instance_id": "t1"}, ctx(EMPLOYEE))
    with pytest.raises(NotFoundError, match=r"no t\.ticket record 'zz'"):
        await executor.execute("t.ticket.flow.begin", {"instance_id": "zz"}, ctx(EMPLOYEE))
    with pytest.raises(NotFoundError):
        await executor.execute(
            "t.ticket.flow.pause", {"instance_id": "t1"}, ctx(EMPLOYEE, org=OTHER_ORG)
        )
    out = await executor.execute("t.ticket.flow.get", {"instance_id": "t1"}, ctx(EMPLOYEE))
    assert out.model_dump()["state"] == "working"


async def test_available_lists_what_the_actor_may_fire_now(executor: Executor) -> None:
    """`available` reads the record's state and asks auth and guards like instance workflows."""
    await _ticket(executor)
    await executor.execute("t.ticket.flow.begin", {"instance_id": "t1"}, ctx(EMPLOYEE))
    staff = await executor.execute("t.ticket.flow.available", {"instance_id": "t1"}, ctx(EMPLOYEE))
    boss = await executor.execute("t.ticket.flow.available", {"instance_id": "t1"}, ctx(MANAGER))
    assert [t["name"] for t in staff.model_dump()["transitions"]] == ["pause"]
    assert [t["name"] for t in boss.model_dump()["transitions"]] == ["pause", "finish"]
    assert boss.model_dump()["state"] == "working"


async def test_twenty_concurrent_moves_of_one_record_have_exactly_one_winner(
    executor: Executor, backend: Backend
) -> None:
    """20 `begin` calls race on one open ticket: exactly one succeeds, 19 get ConflictError
    (a version conflict or the state check); one event and one success audit record."""
    await _ticket(executor)

    async def one() -> BaseException | dict[str, Any]:
        try:
            out = await executor.execute("t.ticket.flow.begin", {"instance_id": "t1"}, ctx(MANAGER))
        except Exception as exc:  # judged below
            return exc
        return out.model_dump()

    results = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(20))), 120)
    wins = [r for r in results if isinstance(r, dict)]
    losses = [r for r in results if not isinstance(r, dict)]
    assert len(wins) == 1, results
    assert all(isinstance(r, ConflictError) for r in losses), losses
    stored = await read_stored(backend, ORG, [TICKET])
    assert [e.payload["to_status"] for e in stored.events] == ["working"]
    begun = [r for r in stored.audit if r.action == "t.ticket.flow.begin"]
    assert [str(r.outcome) for r in begun if str(r.outcome) == "success"] == ["success"]
    assert stored.rows["t.ticket"]["t1"]["status"] == "working"


async def test_move_record_inside_an_app_command(executor: Executor, backend: Backend) -> None:
    """`move_record` fires from the app's own command under its auth and audit record, returns the
    record as written; start_instance is refused for entity workflows."""
    await _ticket(executor)
    out = await executor.execute(
        "t.ticket.move", {"ticket_id": "t1", "to": "working"}, ctx(MANAGER)
    )
    assert out.model_dump()["status"] == "working"
    with pytest.raises(WorkflowStateError):
        await executor.execute("t.ticket.move", {"ticket_id": "t1", "to": "working"}, ctx(MANAGER))
    stored = await read_stored(backend, ORG, [TICKET])
    moves = [r for r in stored.audit if r.action == "t.ticket.move" and str(r.outcome) == "success"]
    assert [(r.target_type, r.target_id, len(r.changes)) for r in moves] == [("t.ticket", "t1", 1)]


async def test_the_instance_view_is_built_only_when_a_hook_reads_it() -> None:
    """On an entity workflow `change.instance` is built on first read, once per move (set_fields
    and the hook share it), as the record after the move seen as a `WorkflowInstance`; a move
    whose hooks never read it builds none."""
    seen: list[WorkflowChange] = []

    def closing(c: HandlerCtx, change: WorkflowChange) -> dict[str, Any] | None:
        seen.append(change)
        return _closing(c, change)

    def moved(c: HandlerCtx, change: WorkflowChange) -> None:
        seen.append(change)
        if change.comment == "peek":
            assert isinstance(change.instance, WorkflowInstance)
        _moved(c, change)

    flow = ticket_flow(set_fields=closing, on_transition=moved)
    registry = SpecRegistry(TICKET, TICKET_MOVED, flow, CREATE)
    registry.bind(CREATE, create_ticket)
    ex = Executor(registry, backend=MemoryBackend(), policy=POLICY, ids=SequentialIds("id"))
    created = await ex.execute("t.ticket.create", {"id": "t1", "title": "Fix it"}, ctx(EMPLOYEE))
    await ex.execute("t.ticket.flow.begin", {"instance_id": "t1"}, ctx(EMPLOYEE))
    await ex.execute("t.ticket.flow.pause", {"instance_id": "t1", "comment": "peek"}, ctx(EMPLOYEE))
    begin_fields, begin_hook, pause_fields, pause_hook = seen
    assert begin_fields._instance is None  # never read: never built
    assert begin_hook._instance is None
    view = pause_hook._instance
    assert view is not None
    assert pause_fields.instance is view  # one view per move
    assert (view.id, view.workflow, view.version, view.state, view.seq, view.data) == (
        "t1", "t.ticket.flow", 1, "open", 0, {}
    )  # fmt: skip
    assert view.created_at == created.created_at
    # Read after the fact, a change's view is the state it entered.
    assert (begin_fields.instance.state, begin_hook.instance.state) == ("working", "working")
    assert begin_fields.record.status is Status.OPEN  # as read
    assert begin_hook.record.status is Status.WORKING  # as written (an enum member)


async def test_move_record_checks_registration_per_registry() -> None:
    """A workflow accepted by one executor's registry is still refused by an executor whose
    registry does not hold it (the registration check is remembered per registry)."""
    outside = SpecRegistry(TICKET, TICKET_MOVED, CREATE, MOVE)
    outside.bind(CREATE, create_ticket)
    outside.bind(MOVE, move_ticket)
    for registry in (build(), outside, build(), outside):
        ex = Executor(registry, backend=MemoryBackend(), policy=POLICY, ids=SequentialIds("id"))
        await _ticket(ex)
        move = ex.execute("t.ticket.move", {"ticket_id": "t1", "to": "working"}, ctx(MANAGER))
        if registry is outside:
            with pytest.raises(HandlerContractError, match="not registered"):
                await move
        else:
            assert (await move).model_dump()["status"] == "working"


# -- history from the audit trail ---------------------------------------------------------------------


async def test_history_comes_from_the_audit_trail_paginated(executor: Executor) -> None:
    """Creation, moves (derived and embedded) and comments are the history, oldest first, with
    who, from → to, input and comment; other writes to the record (a rename) are not steps;
    `limit`/`after` page through it without gaps or repeats."""
    await _ticket(executor)
    await executor.execute("t.ticket.rename", {"ticket_id": "t1", "title": "Fix"}, ctx(EMPLOYEE))
    await executor.execute("t.ticket.flow.begin", {"instance_id": "t1"}, ctx(EMPLOYEE))
    await executor.execute(
        "t.ticket.flow.comment", {"instance_id": "t1", "comment": "looking"}, ctx(EMPLOYEE)
    )
    await executor.execute("t.ticket.flow.pause", {"instance_id": "t1"}, ctx(EMPLOYEE))
    await executor.execute("t.ticket.move", {"ticket_id": "t1", "to": "working"}, ctx(MANAGER))
    await executor.execute(
        "t.ticket.flow.finish", {"instance_id": "t1", "input": {"note": "ok"}, "comment": "done"},
        ctx(MANAGER),
    )  # fmt: skip
    await _ticket(executor, "t2")  # another record's history is not mixed in
    await executor.execute("t.ticket.flow.begin", {"instance_id": "t2"}, ctx(EMPLOYEE))
    full = await executor.execute("t.ticket.flow.history", {"instance_id": "t1"}, ctx(EMPLOYEE))
    items = full.model_dump()["items"]
    assert [(s["kind"], s["transition"], s["from_state"], s["to_state"]) for s in items] == [
        ("start", None, None, "open"),
        ("transition", "begin", "open", "working"),
        ("comment", None, "working", "working"),
        ("transition", "pause", "working", "open"),
        ("transition", "begin", "open", "working"),
        ("transition", "finish", "working", "done"),
    ]
    assert [s["actor_id"] for s in items] == ["emp-1"] * 4 + ["mgr-1"] * 2
    assert items[2]["comment"] == "looking"
    assert items[4]["comment"] == "via move"
    assert (items[5]["input"], items[5]["comment"]) == ({"note": "ok", "on": None}, "done")
    assert full.model_dump()["next_cursor"] is None
    seqs = [s["seq"] for s in items]
    assert seqs == sorted(seqs)
    paged: list[int] = []
    after = None
    while True:
        query: dict[str, Any] = {"instance_id": "t1", "limit": 2}
        if after is not None:
            query["after"] = after
        page = (await executor.execute("t.ticket.flow.history", query, ctx(EMPLOYEE))).model_dump()
        paged.extend(s["seq"] for s in page["items"])
        assert len(page["items"]) <= 2
        after = page["next_cursor"]
        if after is None:
            break
    assert paged == seqs


def test_a_compact_step_reads_as_the_mapping_form() -> None:
    """A move's compact audit step (`[workflow, version, transition, input, comment]`) gives the
    same history step as the mapping form audit records of earlier versions hold."""
    from contractspec.core.audit import AuditEntry
    from contractspec.core.records import AuditRecord, EntityChange
    from contractspec.core.workflows import _step_of

    change = EntityChange(entity="t.ticket", entity_id="t1", op="update",
                          before={"status": "working"}, after={"status": "done"})  # fmt: skip
    forms = [
        (["t.ticket.flow", 1, "finish", {"note": "ok", "on": None}, "shipped"],
         {"name": "t.ticket.flow", "version": 1, "transition": "finish",
          "input": {"note": "ok", "on": None}, "comment": "shipped"}),
        (["t.ticket.flow", 1, "begin"],
         {"name": "t.ticket.flow", "version": 1, "transition": "begin"}),
        (["t.ticket.flow", 1, "begin", {}, "via move"],
         {"name": "t.ticket.flow", "version": 1, "transition": "begin", "comment": "via move"}),
    ]  # fmt: skip
    for compact, mapping in forms:
        steps = []
        for details in (compact, mapping):
            record = AuditRecord(
                id="a1", occurred_at=datetime(2026, 1, 2), action="t.ticket.flow.finish",
                outcome="success", org_id=ORG, actor_id="mgr-1", actor_kind="user",
                target_type="t.ticket", target_id="t1", changes=(change,),
                details={"workflow": details},
            )  # fmt: skip
            steps.append(_step_of(FLOW, "t1", AuditEntry(7, record, "", "h")))
        assert steps[0] is not None
        assert steps[1] is not None
        assert steps[0].model_dump() == steps[1].model_dump()
        assert (steps[0].from_state, steps[0].to_state) == ("working", "done")
    other = ["t.other.flow", 1, "begin"]
    record = AuditRecord(id="a2", occurred_at=datetime(2026, 1, 2), action="x", outcome="success",
                         target_type="t.ticket", target_id="t1", changes=(change,),
                         details={"workflow": other})  # fmt: skip
    assert _step_of(FLOW, "t1", AuditEntry(8, record, "", "h")) is None  # another workflow's


async def test_history_audit_on_an_instance_workflow_writes_no_step_rows(
    executor: Executor, backend: Backend
) -> None:
    """An instance workflow with history="audit" updates its instance only (no step row) and
    answers `history` from the audit records, paginated; history="steps" (the default) writes one
    row per step; both give the same history."""
    ex = executor
    ids: dict[str, str] = {}
    for name in ("t.audited", "t.stepped"):
        out = await ex.execute(f"{name}.start", {}, ctx(EMPLOYEE))
        iid = ids[name] = out.model_dump()["id"]
        for op in ("go", "back", "go"):
            await ex.execute(f"{name}.{op}", {"instance_id": iid}, ctx(EMPLOYEE))
        await ex.execute(f"{name}.comment", {"instance_id": iid, "comment": "hm"}, ctx(EMPLOYEE))
        await ex.execute(f"{name}.end", {"instance_id": iid, "input": {"note": "x"}}, ctx(EMPLOYEE))
    stored = await read_stored(backend, ORG, [STEP_ENTITY, INSTANCE_ENTITY])
    steps_by_instance: dict[str, int] = {}
    for row in stored.rows[STEP_ENTITY.name].values():
        steps_by_instance[row["instance_id"]] = steps_by_instance.get(row["instance_id"], 0) + 1
    assert steps_by_instance == {ids["t.stepped"]: 6}  # none for the audited workflow
    assert stored.rows[INSTANCE_ENTITY.name][ids["t.audited"]]["state"] == "c"
    shapes = {}
    for name in ("t.audited", "t.stepped"):
        page = await ex.execute(
            f"{name}.history", {"instance_id": ids[name], "limit": 4}, ctx(EMPLOYEE)
        )
        first = page.model_dump()
        rest = await ex.execute(
            f"{name}.history",
            {"instance_id": ids[name], "after": first["next_cursor"]},
            ctx(EMPLOYEE),
        )
        assert len(first["items"]) == 4
        assert first["next_cursor"] is not None
        steps = first["items"] + rest.model_dump()["items"]
        shapes[name] = [
            (s["kind"], s["transition"], s["from_state"], s["to_state"], s["input"], s["comment"])
            for s in steps
        ]
    assert shapes["t.audited"] == shapes["t.stepped"]
    assert [s[0] for s in shapes["t.audited"]] == [
        "start", "transition", "transition", "transition", "comment", "transition"
    ]  # fmt: skip
