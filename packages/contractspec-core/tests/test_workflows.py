"""Workflows: definition checks, transitions, guards, auth per transition, history, `available`,
tenancy, idempotency and concurrent transitions (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from core_guarantees_app import read_stored
from workflows_app import (
    EMPLOYEE,
    MANAGER,
    ORG,
    OTHER_ORG,
    POLICY,
    build_registry,
    ctx,
)

from contractspec.core import (
    Actor,
    Approvals,
    Backend,
    ConflictError,
    Executor,
    NotFoundError,
    PolicyDeniedError,
    SpecDefinitionError,
    SpecRegistry,
    WorkflowGuardError,
    WorkflowStateError,
    define_workflow,
    timer,
    transition,
)
from contractspec.core.testing import SequentialIds


@pytest.fixture
def registry() -> SpecRegistry:
    """Overrides conftest's registry so the `backend` fixture creates the workflow tables."""
    return build_registry()


@pytest.fixture
def executor(registry: SpecRegistry, backend: Backend) -> Executor:
    """An executor over the backend under test with the leave policy."""
    return Executor(registry, backend=backend, policy=POLICY, ids=SequentialIds("id"))


async def _start(ex: Executor, days: int = 5, actor: Actor = EMPLOYEE) -> str:
    out = await ex.execute("hr.leave.start", {"data": {"days": days}}, ctx(actor))
    return str(out.model_dump()["id"])


# -- definition checks --------------------------------------------------------------------------


def _wf(**overrides: Any) -> Any:
    spec: dict[str, Any] = {
        "states": ["a", "b", "c"],
        "initial": "a",
        "final": ["c"],
        "transitions": [
            transition("go", source="a", target="b"),
            transition("end", source="b", target="c"),
        ],
    }
    spec.update(overrides)
    return define_workflow("t.flow", **spec)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"initial": "x"}, "initial state 'x' is not one of the states"),
        ({"final": ["zz"]}, "final state 'zz' is not one of the states"),
        ({"states": ["a", "b", "b", "c"]}, "listed more than once"),
        ({"states": ["a", "B", "c"]}, "state 'B' is not a lowercase identifier"),
        (
            {"transitions": [transition("go", source="a", target="q")]},
            "transition 'go' names unknown state 'q'",
        ),
        (
            {
                "transitions": [
                    transition("go", source="a", target="b"),
                    transition("go", source="b", target="c"),
                ]
            },
            "transition 'go' is declared twice",
        ),
        (
            {
                "transitions": [
                    transition("go", source="a", target="b"),
                    transition("end", source="b", target="c"),
                    transition("back", source="c", target="a"),
                ]
            },
            "transition 'back' leaves final state 'c'",
        ),
        (
            {"states": ["a", "b", "c", "d"], "final": ["c", "d"]},
            "states ['d'] cannot be reached from 'a'",
        ),
        ({"final": []}, "state 'c' has no transition out and is not final"),
        (
            {"timers": [timer("a", after=__import__("datetime").timedelta(hours=1), fire="end")]},
            "timer 'a_end' fires 'end', which is not a transition leaving 'a'",
        ),
        (
            {
                "timers": [
                    timer("c", after=__import__("datetime").timedelta(hours=1), escalate=True)
                ]
            },
            "timer 'c_escalate' watches 'c', which is not a non-final state",
        ),
        (
            {"migrations": {1: {"a": "nope"}}, "version": 2},
            "migration from version 1 maps 'a' to unknown state 'nope'",
        ),
    ],
)
def test_definition_errors_name_the_field_and_the_fix(
    overrides: dict[str, Any], message: str
) -> None:
    """Each broken workflow definition raises SpecDefinitionError saying what is wrong."""
    with pytest.raises(SpecDefinitionError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _wf(**overrides)


def test_transition_and_timer_arguments_are_checked() -> None:
    """Reserved transition names, bad approvals and ambiguous timers are refused when declared."""
    with pytest.raises(SpecDefinitionError, match="reserved"):
        transition("start", source="a", target="b")
    with pytest.raises(SpecDefinitionError, match="approvals count must be an integer >= 1"):
        transition("ok", source="a", target="b", approvals=Approvals(count=0))
    with pytest.raises(SpecDefinitionError, match=r"exactly one of after= .* or at="):
        timer("a", fire="go")
    with pytest.raises(SpecDefinitionError, match="exactly one of fire="):
        timer("a", after=__import__("datetime").timedelta(seconds=1))


def test_registering_a_workflow_derives_its_operations_and_entities() -> None:
    """One workflow in a registry yields start/transition/query/timer/migrate operations and the
    shared instance, step and approval entities."""
    registry = build_registry()
    names = {op.name for op in registry.operations() if op.name.startswith("hr.leave.")}
    assert names == {
        "hr.leave.start", "hr.leave.submit", "hr.leave.approve", "hr.leave.reject",
        "hr.leave.expire", "hr.leave.get", "hr.leave.history", "hr.leave.available",
        "hr.leave.timer", "hr.leave.migrate", "hr.leave.comment",
    }  # fmt: skip
    assert {"buy.order.approve.approve", "buy.order.approve.reject"} <= {
        op.name for op in registry.operations()
    }
    assert {e.name for e in registry.entities()} >= {
        "cs.workflow.instance", "cs.workflow.step", "cs.workflow.approval",
    }  # fmt: skip
    assert registry.get("hr.leave.approve").auth.permissions == ("leave.decide",)
    registry.validate(require_handlers=True)


# -- transitions, guards, auth -------------------------------------------------------------------


async def test_transitions_move_the_instance_and_record_who_when_and_what(
    executor: Executor, backend: Backend
) -> None:
    """start -> submit -> approve: state, seq and a history step per move, with actor and input;
    approve emits its declared event with a payload built from the instance data and input."""
    iid = await _start(executor)
    await executor.execute("hr.leave.submit", {"instance_id": iid, "comment": "pls"}, ctx(EMPLOYEE))
    out = await executor.execute(
        "hr.leave.approve",
        {"instance_id": iid, "expected_seq": 2, "input": {"note": "enjoy"}},
        ctx(MANAGER),
    )
    got = out.model_dump()
    assert (got["state"], got["seq"], got["entry_seq"], got["created_by"]) == (
        "approved", 3, 3, "emp-1",
    )  # fmt: skip
    page = (
        await executor.execute("hr.leave.history", {"instance_id": iid}, ctx(EMPLOYEE))
    ).model_dump()
    steps = [
        (s["seq"], s["kind"], s["transition"], s["from_state"], s["to_state"], s["actor_id"],
         s["input"], s["comment"])
        for s in page["items"]
    ]  # fmt: skip
    assert steps == [
        (1, "start", None, None, "draft", "emp-1", {}, None),
        (2, "transition", "submit", "draft", "submitted", "emp-1", {}, "pls"),
        (3, "transition", "approve", "submitted", "approved", "mgr-1", {"note": "enjoy"}, None),
    ]
    assert page["next_cursor"] is None
    stored = await read_stored(backend, ORG, [])
    approved = [dict(e.payload) for e in stored.events if e.name == "hr.leave_approved"]
    assert approved == [{"instance_id": iid, "days": 5, "note": "enjoy"}]


async def test_a_transition_from_the_wrong_state_or_seq_is_a_conflict(executor: Executor) -> None:
    """approve from draft -> WorkflowStateError; a stale expected_seq -> WorkflowStateError."""
    iid = await _start(executor)
    with pytest.raises(WorkflowStateError, match="is in state 'draft'; transition 'approve'"):
        await executor.execute("hr.leave.approve", {"instance_id": iid}, ctx(MANAGER))
    with pytest.raises(WorkflowStateError, match="is at seq 1, not the expected 5"):
        await executor.execute(
            "hr.leave.submit", {"instance_id": iid, "expected_seq": 5}, ctx(EMPLOYEE)
        )
    assert issubclass(WorkflowStateError, ConflictError)
    got = await executor.execute("hr.leave.get", {"instance_id": iid}, ctx(EMPLOYEE))
    assert (got.model_dump()["state"], got.model_dump()["seq"]) == ("draft", 1)


async def test_a_guard_refusal_carries_its_reason_and_changes_nothing(executor: Executor) -> None:
    """submit of a 30-day leave: the guard refuses with its reason; no history step is added."""
    iid = await _start(executor, days=30)
    with pytest.raises(WorkflowGuardError, match="30 days exceed 20"):
        await executor.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE))
    page = await executor.execute("hr.leave.history", {"instance_id": iid}, ctx(EMPLOYEE))
    assert [s["kind"] for s in page.model_dump()["items"]] == ["start"]


async def test_each_transition_checks_its_own_permission(executor: Executor) -> None:
    """An employee may submit but not approve (leave.decide): PolicyDeniedError, state unchanged."""
    iid = await _start(executor)
    await executor.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE))
    with pytest.raises(PolicyDeniedError):
        await executor.execute("hr.leave.approve", {"instance_id": iid}, ctx(EMPLOYEE))
    got = await executor.execute("hr.leave.get", {"instance_id": iid}, ctx(EMPLOYEE))
    assert got.model_dump()["state"] == "submitted"


async def test_available_lists_what_this_actor_may_fire_now(executor: Executor) -> None:
    """draft: the employee may submit; submitted: the manager may approve/reject, the employee
    nothing; a 30-day draft offers no submit (the guard would refuse)."""

    async def names(iid: str, actor: Actor) -> list[str]:
        out = await executor.execute("hr.leave.available", {"instance_id": iid}, ctx(actor))
        return [t["name"] for t in out.model_dump()["transitions"]]

    iid = await _start(executor)
    assert await names(iid, EMPLOYEE) == ["submit"]
    await executor.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE))
    assert await names(iid, EMPLOYEE) == []
    assert await names(iid, MANAGER) == ["approve", "reject"]
    long_one = await _start(executor, days=30)
    assert await names(long_one, EMPLOYEE) == []


async def test_instances_are_tenant_data(executor: Executor) -> None:
    """Another org cannot read or move an instance: NotFoundError."""
    iid = await _start(executor)
    with pytest.raises(NotFoundError):
        await executor.execute("hr.leave.get", {"instance_id": iid}, ctx(EMPLOYEE, org=OTHER_ORG))
    with pytest.raises(NotFoundError):
        await executor.execute(
            "hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE, org=OTHER_ORG)
        )


async def test_history_is_paginated_by_cursor(executor: Executor) -> None:
    """limit=1 pages through the three steps in order, then next_cursor is None."""
    iid = await _start(executor)
    await executor.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE))
    await executor.execute("hr.leave.reject", {"instance_id": iid}, ctx(MANAGER))
    seen: list[int] = []
    cursor: int | None = None
    for _ in range(5):
        page = (
            await executor.execute(
                "hr.leave.history", {"instance_id": iid, "limit": 1, "after": cursor}, ctx(EMPLOYEE)
            )
        ).model_dump()
        seen += [s["seq"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [1, 2, 3]


async def test_a_repeated_idempotency_key_does_not_fire_twice(executor: Executor) -> None:
    """The same submit with the same key returns the stored result; one history step only."""
    iid = await _start(executor)
    first = await executor.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE, key="k1"))
    again = await executor.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE, key="k1"))
    assert first.model_dump() == again.model_dump()
    page = await executor.execute("hr.leave.history", {"instance_id": iid}, ctx(EMPLOYEE))
    assert [s["seq"] for s in page.model_dump()["items"]] == [1, 2]


async def test_twenty_concurrent_transitions_on_one_instance_have_exactly_one_winner(
    executor: Executor, backend: Backend
) -> None:
    """10 approvals and 10 rejections race on one submitted instance: exactly one succeeds, the
    other 19 get a ConflictError; one decision step, one transitioned event and one success audit
    record were committed for it."""
    iid = await _start(executor)
    await executor.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE))

    async def one(i: int) -> BaseException | dict[str, Any]:
        op = "hr.leave.approve" if i % 2 else "hr.leave.reject"
        try:
            out = await executor.execute(op, {"instance_id": iid}, ctx(MANAGER))
        except Exception as exc:  # judged below
            return exc
        return out.model_dump()

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(20))), 120)
    wins = [r for r in results if isinstance(r, dict)]
    losses = [r for r in results if not isinstance(r, dict)]
    assert len(wins) == 1, results
    assert all(isinstance(r, ConflictError) for r in losses), losses
    page = await executor.execute("hr.leave.history", {"instance_id": iid}, ctx(EMPLOYEE))
    steps = page.model_dump()["items"]
    assert [s["seq"] for s in steps] == [1, 2, 3]
    assert steps[2]["to_state"] == wins[0]["state"]
    stored = await read_stored(backend, ORG, [])
    moves = [e.payload["to_state"] for e in stored.events if e.name == "hr.leave.transitioned"]
    assert moves == ["draft", "submitted", wins[0]["state"]]
    decided = [r for r in stored.audit if r.action in ("hr.leave.approve", "hr.leave.reject")]
    assert [str(r.outcome) for r in decided] == ["success"]


# -- IR ------------------------------------------------------------------------------------------


def test_workflows_appear_in_the_ir_with_states_transitions_and_schemas() -> None:
    """registry.to_ir() has a `workflow` section: states, transitions with auth, guard name and
    input schema, timers; the canonical text is identical for two builds."""
    from datetime import timedelta

    from workflows_app import leave_workflow

    from contractspec.core.ir import dumps_ir, validate_ir

    registry = SpecRegistry(leave_workflow(remind_after=timedelta(hours=48)))
    ir = registry.to_ir()
    [wf] = ir["specs"]["workflow"]
    assert (wf["kind"], wf["name"], wf["version"]) == ("workflow", "hr.leave", 1)
    assert wf["states"] == ["draft", "submitted", "approved", "rejected", "expired"]
    assert (wf["initial"], wf["final"]) == ("draft", ["approved", "expired", "rejected"])
    by_name = {t["name"]: t for t in wf["transitions"]}
    assert by_name["submit"]["guard"] == "short_enough"
    assert by_name["approve"]["auth"] == {
        "kind": "permissions", "permissions": ["leave.decide"], "resource": None,
    }  # fmt: skip
    assert by_name["approve"]["emits"] == ["hr.leave_approved@1"]
    assert wf["schemas"]["input.approve"]["properties"]["note"]["type"] == "string"
    assert wf["schemas"]["subject"]["required"] == ["days"]
    assert wf["timers"] == [
        {"name": "submitted_expire", "state": "submitted", "fire": "expire", "escalate": False,
         "after_s": 172800.0, "at": None},
    ]  # fmt: skip
    again = SpecRegistry(leave_workflow(remind_after=timedelta(hours=48))).to_ir()
    assert dumps_ir(ir) == dumps_ir(again)
    validate_ir(ir)


def test_the_workflows_page_prints_what_it_claims() -> None:
    """docs/core/workflows.md runs and prints the lines the page shows."""
    from pathlib import Path

    from contractspec.core.testing.docs import printed_by_python_blocks

    page = Path(__file__).resolve().parents[3] / "docs" / "core" / "workflows.md"
    assert printed_by_python_blocks(page).splitlines() == [
        "workflow hr.broken@1: transition 'go' leaves final state 'b'; final states have no way "
        "out (remove it from final= or change source=)",
        "ada []",
        "bob ['approve', 'reject']",
        "approved 3",
        "[(None, None, 'draft', 'ada'), ('submit', 'draft', 'submitted', 'ada')] 2",
        "more than 20 days needs HR",
        "shipped",
        "the carrier refuses parcels above 1,000",
        "placed 2",
        "['draft', 'placed', 'draft', 'placed', 'shipped']",
        "paid True",
        "WorkflowStateError",
        "[('start', None, None, 'open'), ('transition', 'pay', 'open', 'paid')]",
        "['bill.invoice']",
        "False True approved",
        "approval_expired expired",
        "[('open_escalate', datetime.timedelta(seconds=14400)), ('open_expire', "
        "datetime.timedelta(days=1))]",
        "migrated=3 remaining=0",
        "pending",
    ]


def test_generated_docs_draw_each_workflow_and_openapi_has_its_routes() -> None:
    """`render` writes a workflow page with a Mermaid state diagram (transitions, approvals,
    guards, timers, initial and final states) and lists it in the index; OpenAPI has a route per
    derived operation."""
    import json
    from datetime import timedelta

    from workflows_app import leave_workflow, purchase_workflow

    from contractspec.core.codegen import render

    files = render(
        SpecRegistry(leave_workflow(remind_after=timedelta(hours=48)), purchase_workflow()).to_ir()
    )
    page = files["docs/workflows/hr.leave.v1.md"]
    diagram = page.split("```mermaid\n", 1)[1].split("```", 1)[0].splitlines()
    assert diagram == [
        "stateDiagram-v2",
        "    [*] --> draft",
        "    draft --> submitted: submit [guarded]",
        "    submitted --> approved: approve",
        "    submitted --> rejected: reject",
        "    submitted --> expired: expire",
        "    submitted --> expired: after 2 d (expire, timer)",
        "    approved --> [*]",
        "    expired --> [*]",
        "    rejected --> [*]",
    ]
    assert (
        "| `submit` | `draft` | `submitted` | requires `leave.request` | `short_enough` |" in page
    )
    order = files["docs/workflows/buy.order.v1.md"]
    assert "    requested --> approved: approve (2 approvals)" in order
    assert "| 2 distinct (manager) |" in order
    assert "[`hr.leave@1`](workflows/hr.leave.v1.md)" in files["docs/index.md"]
    paths = json.loads(files["openapi.json"])["paths"]
    assert {"/hr/leave/start/v1", "/hr/leave/submit/v1", "/hr/leave/available/v1",
            "/hr/leave/history/v1", "/buy/order/approve/approve/v1"} <= set(paths)  # fmt: skip


async def test_workflow_operations_are_served_over_http_with_their_status_codes() -> None:
    """Through the HTTP adapter: start and submit answer 200; a transition from the wrong state
    answers 409 `conflict`; a missing permission 403; `available` is a query route."""
    import httpx
    from starlette.requests import Request

    from contractspec.core import MemoryBackend
    from contractspec.core.http import Principal, create_app

    sessions = {"emp": Principal(EMPLOYEE, org_id=ORG), "mgr": Principal(MANAGER, org_id=ORG)}

    def auth(request: Request) -> Principal | None:
        return sessions.get(request.headers.get("x-session", ""))

    ex = Executor(build_registry(), backend=MemoryBackend(), policy=POLICY)
    transport = httpx.ASGITransport(app=create_app(ex, authenticate=auth))
    emp, mgr = {"x-session": "emp"}, {"x-session": "mgr"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        started = await http.post("/hr/leave/start/v1", json={"data": {"days": 2}}, headers=emp)
        assert started.status_code == 200
        iid = started.json()["id"]
        early = await http.post("/hr/leave/approve/v1", json={"instance_id": iid}, headers=mgr)
        assert (early.status_code, early.json()["code"]) == (409, "conflict")
        submitted = await http.post("/hr/leave/submit/v1", json={"instance_id": iid}, headers=emp)
        assert submitted.json()["state"] == "submitted"
        denied = await http.post("/hr/leave/approve/v1", json={"instance_id": iid}, headers=emp)
        assert denied.status_code == 403
        offer = await http.get("/hr/leave/available/v1", params={"instance_id": iid}, headers=mgr)
        assert [t["name"] for t in offer.json()["transitions"]] == ["approve", "reject"]


def test_registering_a_workflow_again_is_a_no_op_and_a_different_one_is_refused() -> None:
    """An equal definition registers once; another definition under the same name and version
    raises SpecDefinitionError asking for a version bump."""
    from workflows_app import leave_workflow

    registry = SpecRegistry(leave_workflow())
    count = len(registry)
    registry.register(leave_workflow())
    assert len(registry) == count
    other = _wf()
    clash = define_workflow(
        "hr.leave", states=other.states, initial=other.initial, final=other.final,
        transitions=other.transitions,
    )  # fmt: skip
    with pytest.raises(SpecDefinitionError, match=r"workflow hr\.leave@1 is already registered"):
        registry.register(clash)


async def test_comments_join_the_history_without_changing_the_state(executor: Executor) -> None:
    """A comment is a history step of kind `comment` by its author; the state stays, the seq
    moves (a stale expected_seq is then refused, for comments and transitions alike)."""
    iid = await _start(executor)
    out = await executor.execute(
        "hr.leave.comment", {"instance_id": iid, "comment": "back on Monday"}, ctx(MANAGER)
    )
    assert (out.model_dump()["state"], out.model_dump()["seq"]) == ("draft", 2)
    with pytest.raises(WorkflowStateError, match="is at seq 2, not the expected 1"):
        await executor.execute(
            "hr.leave.comment",
            {"instance_id": iid, "comment": "x", "expected_seq": 1},
            ctx(MANAGER),
        )
    with pytest.raises(WorkflowStateError, match="is at seq 2, not the expected 1"):
        await executor.execute(
            "hr.leave.submit", {"instance_id": iid, "expected_seq": 1}, ctx(EMPLOYEE)
        )
    page = await executor.execute("hr.leave.history", {"instance_id": iid}, ctx(EMPLOYEE))
    last = page.model_dump()["items"][-1]
    assert (last["kind"], last["from_state"], last["to_state"], last["actor_id"], last["comment"]) == (
        "comment", "draft", "draft", "mgr-1", "back on Monday",
    )  # fmt: skip
