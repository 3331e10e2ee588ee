"""Workflow hooks for apps that keep their own record (issue 17): `on_transition` writes commit and
roll back with the transition, `start_instance` creates a record and starts its instance in one
call, `fire_transition` lets an app command delegate to a transition, and
`transitioned_event=False` replaces the generic event by the app's own (memory, SQLite file,
PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any

import pytest
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConflictError,
    Executor,
    HandlerContractError,
    HandlerCtx,
    NotFoundError,
    SpecDefinitionError,
    SpecRegistry,
    SpecValidationError,
    WorkflowGuardError,
    WorkflowStateError,
    define_command,
    define_entity,
    define_event,
    define_workflow,
    requires,
    transition,
)
from contractspec.core.diff import diff_ir
from contractspec.core.policy import RolePermissions
from contractspec.core.testing import SequentialIds
from contractspec.core.workflows import (
    INSTANCE_ENTITY,
    STEP_ENTITY,
    Approvals,
    WorkflowChange,
    WorkflowInstance,
    fire_transition,
    start_instance,
)

ORG = "org-1"
CLERK = Actor.user("clerk-1", roles="clerk")
POLICY = RolePermissions({"clerk": ["shop.*"]})
CALL = CallContext(actor=CLERK, org_id=ORG)


class Order(BaseModel):
    """The app's own record; its `status` follows the workflow instance of the same id."""

    id: str
    status: str = "draft"
    total: int
    shipped_on: date | None = None


class OrderChanged(BaseModel):
    """The app's domain event, emitted by the hook instead of `shop.order.flow.transitioned`."""

    order_id: str
    from_status: str | None
    to_status: str
    via: str


class Ship(BaseModel):
    """Input of the `ship` transition."""

    on: date | None = None
    fail_in_hook: bool = False


class CreateOrder(BaseModel):
    """Input of `shop.order.create`."""

    id: str
    total: int
    fail_after_start: bool = False


class ShipOrder(BaseModel):
    """Input of `shop.order.ship`: the app's own command delegating to the transition."""

    order_id: str
    on: date | None = None


order_entity = define_entity("shop.order", Order)
order_changed = define_event("shop.order.changed", payload=OrderChanged, key="order_id")


class HookFailed(ConflictError):
    """Raised by the hook after it wrote the order (the test asks for it)."""


async def sync_order(ctx: HandlerCtx, change: WorkflowChange) -> None:
    """Keep `Order.status` equal to the instance state; emit `shop.order.changed`."""
    orders = ctx.repo(order_entity)
    order = await orders.require(change.instance.id)
    if change.kind != "start":
        update: dict[str, Any] = {"status": change.to_state}
        if isinstance(change.input, Ship):
            update["shipped_on"] = change.input.on or ctx.now().date()
        await orders.update(order.model_copy(update=update))
        if isinstance(change.input, Ship) and change.input.fail_in_hook:
            raise HookFailed("the hook refused after writing the order")
    ctx.emit(
        order_changed,
        OrderChanged(
            order_id=order.id,
            from_status=change.from_state,
            to_status=change.to_state,
            via=change.kind if change.transition is None else change.transition.name,
        ),
    )


def not_huge(instance: WorkflowInstance, _input: object) -> bool | str:
    """Guard of `place`: orders above 1,000 need a manager (refused here)."""
    return instance.data.get("total", 0) <= 1000 or "orders above 1,000 need a manager"


def build_workflow(**overrides: Any) -> Any:
    spec: dict[str, Any] = {
        "states": ["draft", "placed", "shipped", "cancelled"],
        "initial": "draft",
        "final": ["shipped", "cancelled"],
        "transitions": [
            transition("place", source="draft", target="placed", guard=not_huge),
            transition("ship", source="placed", target="shipped", input=Ship),
            transition("cancel", source=["draft", "placed"], target="cancelled"),
            transition("refund", source="placed", target="cancelled", approvals=Approvals(count=1)),
        ],
        "start_auth": requires("shop.order.write"),
        "on_transition": sync_order,
        "on_transition_emits": [order_changed],
        "transitioned_event": False,
    }
    spec.update(overrides)
    return define_workflow("shop.order.flow", **spec)


order_flow = build_workflow()


async def create_order(inp: CreateOrder, ctx: HandlerCtx) -> Order:
    """Create the order and start its instance: one call, one transaction."""
    order = await ctx.repo(order_entity).add(Order(id=inp.id, total=inp.total))
    await start_instance(ctx, order_flow, id=order.id, data={"total": inp.total})
    if inp.fail_after_start:
        raise NotFoundError("refused after the start (the test asks for it)")
    return order


async def ship_order(inp: ShipOrder, ctx: HandlerCtx) -> Order:
    """The app's command: delegates the move to the workflow's `ship` transition."""
    await fire_transition(ctx, order_flow, inp.order_id, "ship", input=Ship(on=inp.on))
    return await ctx.repo(order_entity).require(inp.order_id)


create_op = define_command(
    "shop.order.create",
    input=CreateOrder,
    output=Order,
    emits=[order_changed],
    auth=requires("shop.order.write"),
)
ship_op = define_command(
    "shop.order.ship",
    input=ShipOrder,
    output=Order,
    emits=[order_changed],
    auth=requires("shop.order.write"),
)


def build_registry() -> SpecRegistry:
    registry = SpecRegistry(order_entity, order_flow, create_op, ship_op)
    registry.bind(create_op, create_order)
    registry.bind(ship_op, ship_order)
    registry.validate(require_handlers=True)
    return registry


@pytest.fixture
def registry() -> SpecRegistry:
    """Overrides conftest's registry so the `backend` fixture creates these tables."""
    return build_registry()


@pytest.fixture
def executor(registry: SpecRegistry, backend: Backend) -> Executor:
    return Executor(registry, backend=backend, policy=POLICY, ids=SequentialIds("id"))


async def _rows(backend: Backend) -> dict[str, dict[str, dict[str, Any]]]:
    """Committed orders, instances and steps of ORG (a fresh read-only transaction)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        for entity in (order_entity, INSTANCE_ENTITY, STEP_ENTITY):
            found = await backend.entities.repository(entity, tx, ORG).find()
            out[entity.name] = {str(m.id): m.model_dump(mode="json") for m in found}
    finally:
        await tx.rollback()
    return out


async def _events(backend: Backend) -> list[tuple[str, dict[str, Any]]]:
    """Committed events of ORG as `(name, payload)`, in order."""
    from contractspec.core import MemoryBackend

    if isinstance(backend, MemoryBackend):
        return [(e.name, e.payload.model_dump(mode="json")) for e in backend.events.events]
    import json

    from sqlalchemy import select

    from contractspec.core.sql import SqlBackend, outbox_table

    assert isinstance(backend, SqlBackend)
    t = outbox_table
    async with backend.engine.connect() as conn:
        rows = await conn.execute(
            select(t.c.name, t.c.payload).where(t.c.org_id == ORG).order_by(t.c.position)
        )
        return [
            (name, payload if isinstance(payload, dict) else json.loads(payload))
            for name, payload in rows
        ]


async def _audit_ops(backend: Backend) -> list[str]:
    from contractspec.core import MemoryBackend

    if isinstance(backend, MemoryBackend):
        return [r.action for r in backend.audit.records if r.org_id == ORG]
    from contractspec.core.sql import SqlAuditLog

    assert isinstance(backend.audit, SqlAuditLog)
    return [entry.record.action for entry in await backend.audit.entries(ORG)]


# -- create-and-start ---------------------------------------------------------------------------


async def test_create_and_start_is_one_call(executor: Executor, backend: Backend) -> None:
    out = await executor.execute("shop.order.create", {"id": "o-1", "total": 40}, CALL)
    assert out.model_dump()["status"] == "draft"
    rows = await _rows(backend)
    assert rows["shop.order"]["o-1"]["status"] == "draft"
    inst = rows["cs.workflow.instance"]["o-1"]
    assert (inst["state"], inst["seq"], inst["data"]) == ("draft", 1, {"total": 40})
    assert [s["kind"] for s in rows["cs.workflow.step"].values()] == ["start"]
    # One executor call: one audit record, the app operation's.
    assert [op.split("@")[0] for op in await _audit_ops(backend)] == ["shop.order.create"]
    assert [name for name, _ in await _events(backend)] == ["shop.order.changed"]


async def test_create_and_start_rolls_back_together(executor: Executor, backend: Backend) -> None:
    with pytest.raises(NotFoundError):
        await executor.execute(
            "shop.order.create", {"id": "o-1", "total": 40, "fail_after_start": True}, CALL
        )
    rows = await _rows(backend)
    assert rows == {"shop.order": {}, "cs.workflow.instance": {}, "cs.workflow.step": {}}
    assert await _events(backend) == []
    # A second create of a started order: the instance id is taken, nothing new is stored.
    await executor.execute("shop.order.create", {"id": "o-2", "total": 40}, CALL)
    before = await _rows(backend)
    with pytest.raises(ConflictError):
        await executor.execute("shop.order.create", {"id": "o-2", "total": 41}, CALL)
    assert await _rows(backend) == before


# -- the hook -----------------------------------------------------------------------------------


async def test_hook_updates_app_record_with_the_transition(
    executor: Executor, backend: Backend
) -> None:
    await executor.execute("shop.order.create", {"id": "o-1", "total": 40}, CALL)
    # A derived operation fires: the hook moves the app's record in the same call.
    await executor.execute("shop.order.flow.place", {"instance_id": "o-1"}, CALL)
    await executor.execute(
        "shop.order.flow.ship", {"instance_id": "o-1", "input": {"on": "2024-05-02"}}, CALL
    )
    rows = await _rows(backend)
    assert rows["shop.order"]["o-1"]["status"] == "shipped"
    assert rows["shop.order"]["o-1"]["shipped_on"] == "2024-05-02"
    assert rows["cs.workflow.instance"]["o-1"]["state"] == "shipped"
    steps = sorted(rows["cs.workflow.step"].values(), key=lambda s: s["seq"])
    assert [(s["from_state"], s["to_state"]) for s in steps] == [
        (None, "draft"),
        ("draft", "placed"),
        ("placed", "shipped"),
    ]
    events = await _events(backend)
    # Only the app's event: the generic one is turned off (and not even registered).
    assert [(n, p["from_status"], p["to_status"], p["via"]) for n, p in events] == [
        ("shop.order.changed", None, "draft", "start"),
        ("shop.order.changed", "draft", "placed", "place"),
        ("shop.order.changed", "placed", "shipped", "ship"),
    ]
    names = {e.name for e in executor.registry.specs("event")}
    assert "shop.order.flow.transitioned" not in names
    assert "shop.order.flow.escalated" in names


async def test_hook_failure_leaves_instance_step_and_record_unchanged(
    executor: Executor, backend: Backend
) -> None:
    await executor.execute("shop.order.create", {"id": "o-1", "total": 40}, CALL)
    await executor.execute("shop.order.flow.place", {"instance_id": "o-1"}, CALL)
    before, events_before = await _rows(backend), await _events(backend)
    with pytest.raises(HookFailed):
        await executor.execute(
            "shop.order.flow.ship", {"instance_id": "o-1", "input": {"fail_in_hook": True}}, CALL
        )
    # The hook had written the order: the rollback took it back with the instance and the step.
    assert await _rows(backend) == before
    assert await _events(backend) == events_before
    assert before["shop.order"]["o-1"]["status"] == "placed"
    assert before["cs.workflow.instance"]["o-1"]["seq"] == 2


async def test_hook_failure_in_a_batch_fails_that_call_only(
    executor: Executor, backend: Backend
) -> None:
    """Group commit: the failing transition's savepoint is rolled back, its neighbours commit."""
    async with executor.batch() as batch:
        for oid in ("o-1", "o-2", "o-3"):
            await executor.execute("shop.order.create", {"id": oid, "total": 40}, CALL)
            await executor.execute("shop.order.flow.place", {"instance_id": oid}, CALL)
        with pytest.raises(HookFailed):
            await executor.execute(
                "shop.order.flow.ship",
                {"instance_id": "o-2", "input": {"fail_in_hook": True}},
                CALL,
            )
        for oid in ("o-1", "o-3"):
            await executor.execute("shop.order.ship", {"order_id": oid}, CALL)
        await batch.commit()
    rows = await _rows(backend)
    states = {
        k: (v["status"], rows["cs.workflow.instance"][k]["state"])
        for k, v in rows["shop.order"].items()
    }
    assert states == {
        "o-1": ("shipped", "shipped"),
        "o-2": ("placed", "placed"),
        "o-3": ("shipped", "shipped"),
    }
    assert rows["cs.workflow.instance"]["o-2"]["seq"] == 2
    assert len(rows["cs.workflow.step"]) == 3 * 2 + 2


# -- fire_transition from the app's own command -------------------------------------------------


async def test_app_command_delegates_to_the_transition(
    executor: Executor, backend: Backend
) -> None:
    await executor.execute("shop.order.create", {"id": "o-1", "total": 40}, CALL)
    # Not placed yet: the workflow refuses, nothing changes.
    before = await _rows(backend)
    with pytest.raises(WorkflowStateError, match="leaves only from placed"):
        await executor.execute("shop.order.ship", {"order_id": "o-1"}, CALL)
    assert await _rows(backend) == before
    await executor.execute("shop.order.flow.place", {"instance_id": "o-1"}, CALL)
    out = await executor.execute("shop.order.ship", {"order_id": "o-1", "on": "2024-01-03"}, CALL)
    assert out.model_dump()["status"] == "shipped"
    rows = await _rows(backend)
    assert rows["cs.workflow.instance"]["o-1"]["state"] == "shipped"
    step = max(rows["cs.workflow.step"].values(), key=lambda s: s["seq"])
    assert (step["transition"], step["input"]) == (
        "ship",
        {"on": "2024-01-03", "fail_in_hook": False},
    )
    ops = [op.split("@")[0] for op in await _audit_ops(backend)]
    assert ops[-1] == "shop.order.ship"
    with pytest.raises(NotFoundError):
        await executor.execute("shop.order.ship", {"order_id": "nope"}, CALL)


async def test_guard_refuses_through_the_hooked_path(executor: Executor, backend: Backend) -> None:
    await executor.execute("shop.order.create", {"id": "big", "total": 5000}, CALL)
    before = await _rows(backend)
    with pytest.raises(WorkflowGuardError, match="need a manager"):
        await executor.execute("shop.order.flow.place", {"instance_id": "big"}, CALL)
    assert await _rows(backend) == before


async def test_concurrent_delegated_moves_have_one_winner(
    executor: Executor, backend: Backend
) -> None:
    await executor.execute("shop.order.create", {"id": "o-1", "total": 40}, CALL)
    await executor.execute("shop.order.flow.place", {"instance_id": "o-1"}, CALL)

    async def ship(n: int) -> object:
        try:
            return await executor.execute("shop.order.ship", {"order_id": "o-1"}, CALL)
        except ConflictError as exc:
            return exc

    results = await asyncio.gather(*(ship(n) for n in range(20)))
    winners = [r for r in results if not isinstance(r, ConflictError)]
    assert len(winners) == 1
    rows = await _rows(backend)
    assert rows["shop.order"]["o-1"]["status"] == "shipped"
    assert rows["cs.workflow.instance"]["o-1"]["seq"] == 3
    assert len(rows["cs.workflow.step"]) == 3
    assert [n for n, _ in await _events(backend)].count("shop.order.changed") == 3


# -- misuse is refused with a clear error --------------------------------------------------------


@pytest.mark.parametrize("backend_kind", ["memory"], indirect=True)
async def test_embedded_misuse(executor: Executor) -> None:
    await executor.execute("shop.order.create", {"id": "o-1", "total": 40}, CALL)
    await executor.execute("shop.order.flow.place", {"instance_id": "o-1"}, CALL)
    other = build_workflow()  # equal spec, but not the registered object
    results: dict[str, BaseException] = {}

    async def probe(inp: ShipOrder, ctx: HandlerCtx) -> Order:
        for name, call in {
            "unregistered": lambda: fire_transition(ctx, other, "o-1", "ship"),
            "approval": lambda: fire_transition(ctx, order_flow, "o-1", "refund"),
            "bad input": lambda: fire_transition(ctx, order_flow, "o-1", "ship", input={"on": 5}),
            "no input": lambda: fire_transition(ctx, order_flow, "o-1", "place", input={"x": 1}),
            "no such transition": lambda: fire_transition(ctx, order_flow, "o-1", "fly"),
        }.items():
            try:
                await call()
            except Exception as exc:
                results[name] = exc
        return await ctx.repo(order_entity).require(inp.order_id)

    op = define_command("shop.order.probe", input=ShipOrder, output=Order, auth=requires("shop.x"))
    registry = build_registry()
    registry.register(op)
    registry.bind(op, probe)
    ex = Executor(registry, backend=executor.backend, policy=POLICY)
    await ex.execute("shop.order.probe", {"order_id": "o-1"}, CALL)
    assert isinstance(results["unregistered"], HandlerContractError)
    assert "not registered" in str(results["unregistered"])
    assert isinstance(results["approval"], HandlerContractError)
    assert "refund.approve" in str(results["approval"])
    assert isinstance(results["bad input"], SpecValidationError)
    assert isinstance(results["no input"], SpecValidationError)
    assert isinstance(results["no such transition"], NotFoundError)


@pytest.mark.parametrize("backend_kind", ["memory"], indirect=True)
async def test_undeclared_hook_event_is_refused(backend: Backend) -> None:
    """The app command must declare the events a delegated transition emits."""
    op = define_command("shop.order.quiet", input=ShipOrder, output=Order, auth=requires("shop.x"))

    async def quiet(inp: ShipOrder, ctx: HandlerCtx) -> Order:
        await fire_transition(ctx, order_flow, inp.order_id, "cancel")
        return await ctx.repo(order_entity).require(inp.order_id)

    registry = build_registry()
    registry.register(op)
    registry.bind(op, quiet)
    ex = Executor(registry, backend=backend, policy=POLICY)
    await ex.execute("shop.order.create", {"id": "o-1", "total": 40}, CALL)
    with pytest.raises(HandlerContractError, match=r"shop\.order\.changed"):
        await ex.execute("shop.order.quiet", {"order_id": "o-1"}, CALL)
    rows = await _rows(backend)
    assert rows["cs.workflow.instance"]["o-1"]["state"] == "draft"


# -- the spec: definition checks, IR and diff ----------------------------------------------------


def test_definition_checks() -> None:
    with pytest.raises(SpecDefinitionError, match="on_transition must be callable"):
        build_workflow(on_transition="sync_order")
    with pytest.raises(SpecDefinitionError, match="pass on_transition= too"):
        build_workflow(on_transition=None)


def test_ir_and_diff_know_the_event_option() -> None:
    ir = build_registry().to_ir()
    (wf,) = ir["specs"]["workflow"]
    assert wf["transitioned_event"] is False
    assert wf["on_transition"] == "sync_order"
    assert wf["on_transition_emits"] == ["shop.order.changed@1"]
    ops = {s["name"]: s for s in ir["specs"]["operation"]}
    assert "shop.order.flow.transitioned" not in str(ops["shop.order.flow.place"]["emits"])
    # A workflow with defaults has none of these keys (older IR files stay byte-identical).
    plain = define_workflow(
        "shop.order.flow",
        states=["draft", "placed"],
        initial="draft",
        final=["placed"],
        transitions=[transition("place", source="draft", target="placed")],
    )
    (plain_ir,) = SpecRegistry(plain).to_ir()["specs"]["workflow"]
    assert not {"transitioned_event", "on_transition", "on_transition_emits"} & plain_ir.keys()
    # Turning the generic event off is breaking for its consumers; turning it back on is not.
    quiet = define_workflow(
        "shop.order.flow",
        states=["draft", "placed"],
        initial="draft",
        final=["placed"],
        transitions=[transition("place", source="draft", target="placed")],
        transitioned_event=False,
    )
    off = diff_ir(SpecRegistry(plain).to_ir(), SpecRegistry(quiet).to_ir())
    assert any("shop.order.flow.transitioned" in c.spec for c in off.breaking), off.changes
    on = diff_ir(SpecRegistry(quiet).to_ir(), SpecRegistry(plain).to_ir())
    assert not on.breaking, on.changes


async def test_direct_start_without_app_record_is_refused(
    executor: Executor, backend: Backend
) -> None:
    """The hook runs for `<wf>.start` too: here it requires the order, so no orphan instance."""
    with pytest.raises(NotFoundError, match=r"shop\.order 'ghost' not found"):
        await executor.execute("shop.order.flow.start", {"id": "ghost"}, CALL)
    assert await _rows(backend) == {
        "shop.order": {},
        "cs.workflow.instance": {},
        "cs.workflow.step": {},
    }


def test_a_registry_copy_reuses_the_derived_operations() -> None:
    """Copying a registry spec by spec (derived operations first, then the workflow) works: the
    workflow object derives its operations and handlers once, so the copy gets the same ones."""
    original = build_registry()
    copy = SpecRegistry()
    for spec in original:
        copy.register(spec)
    for op in original.operations():
        handler = original.handler_for(op)
        if handler is not None:
            copy.bind(op, handler)
    place = original.get("shop.order.flow.place")
    assert copy.get("shop.order.flow.place") is place
    assert copy.handler_for(place) is original.handler_for(place)
    assert copy.to_ir() == original.to_ir()
