"""Migrating live workflow instances to a new version: a declared state mapping applied by the
audited `<wf>.migrate` command (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import pytest
from core_guarantees_app import read_stored
from workflows_app import (
    ADMIN,
    EMPLOYEE,
    MANAGER,
    ORG,
    POLICY,
    ctx,
    leave_workflow,
    leave_workflow_v2,
)

from contractspec.core import (
    Backend,
    Executor,
    PolicyDeniedError,
    SpecDefinitionError,
    SpecRegistry,
    WorkflowStateError,
)
from contractspec.core.testing import SequentialIds
from contractspec.core.workflows import INSTANCE_ENTITY


@pytest.fixture
def registry() -> SpecRegistry:
    """Both versions of the leave workflow (the `backend` fixture creates their tables)."""
    return SpecRegistry(leave_workflow(), leave_workflow_v2())


@pytest.fixture
def executor(registry: SpecRegistry, backend: Backend) -> Executor:
    """An executor over the backend under test with the leave policy."""
    return Executor(registry, backend=backend, policy=POLICY, ids=SequentialIds("id"))


async def _start_v1(ex: Executor, *, submit: bool) -> str:
    out = await ex.execute("hr.leave.start", {"data": {"days": 2}}, ctx(EMPLOYEE), version=1)
    iid = str(out.model_dump()["id"])
    if submit:
        await ex.execute("hr.leave.submit", {"instance_id": iid}, ctx(EMPLOYEE), version=1)
    return iid


async def _get(ex: Executor, iid: str) -> dict[str, object]:
    return (await ex.execute("hr.leave.get", {"instance_id": iid}, ctx(EMPLOYEE))).model_dump()


async def test_migrate_maps_states_records_history_and_is_audited(
    executor: Executor, backend: Backend
) -> None:
    """v1 instances cannot take v2 transitions; `migrate` (admin only) moves draft -> draft and
    submitted -> pending, writes a `migrate` step, and leaves an audit record (as does the employee's denied attempt); afterwards the v2
    transitions work."""
    draft = await _start_v1(executor, submit=False)
    submitted = await _start_v1(executor, submit=True)
    with pytest.raises(WorkflowStateError, match="follows version 1"):
        await executor.execute("hr.leave.approve", {"instance_id": submitted}, ctx(MANAGER))
    with pytest.raises(PolicyDeniedError):
        await executor.execute("hr.leave.migrate", {"from_version": 1}, ctx(EMPLOYEE))

    out = await executor.execute("hr.leave.migrate", {"from_version": 1}, ctx(ADMIN))
    assert out.model_dump() == {"migrated": 2, "remaining": 0}
    a, b = await _get(executor, draft), await _get(executor, submitted)
    assert (a["version"], a["state"], a["seq"], a["entry_seq"]) == (2, "draft", 2, 1)
    assert (b["version"], b["state"], b["seq"], b["entry_seq"]) == (2, "pending", 3, 3)
    page = await executor.execute("hr.leave.history", {"instance_id": submitted}, ctx(EMPLOYEE))
    last = page.model_dump()["items"][-1]
    assert (last["kind"], last["from_state"], last["to_state"], last["actor_id"]) == (
        "migrate", "submitted", "pending", "adm-1",
    )  # fmt: skip
    assert last["input"] == {"from_version": 1, "to_version": 2}

    done = await executor.execute("hr.leave.withdraw", {"instance_id": submitted}, ctx(EMPLOYEE))
    assert done.model_dump()["state"] == "withdrawn"
    stored = await read_stored(backend, ORG, [INSTANCE_ENTITY])
    migrations = [r for r in stored.audit if r.action == "hr.leave.migrate"]
    assert [(str(r.outcome), r.actor_id) for r in migrations] == [
        ("denied", "emp-1"),
        ("success", "adm-1"),
    ]


async def test_migrate_works_in_batches(executor: Executor) -> None:
    """limit=2 over three v1 instances: 2 moved, 1 remaining; the next call moves the last one."""
    for _ in range(3):
        await _start_v1(executor, submit=True)
    first = await executor.execute("hr.leave.migrate", {"from_version": 1, "limit": 2}, ctx(ADMIN))
    assert first.model_dump() == {"migrated": 2, "remaining": 1}
    second = await executor.execute("hr.leave.migrate", {"from_version": 1}, ctx(ADMIN))
    assert second.model_dump() == {"migrated": 1, "remaining": 0}


def test_a_migration_to_an_unknown_state_is_refused_when_declared() -> None:
    """migrations={1: {"submitted": "nope"}} names a state v2 lacks: SpecDefinitionError."""
    from workflows_app import Leave

    from contractspec.core import define_workflow, transition

    with pytest.raises(SpecDefinitionError, match="maps 'submitted' to unknown state 'nope'"):
        define_workflow(
            "hr.leave",
            version=2,
            subject=Leave,
            states=["draft", "done"],
            initial="draft",
            final=["done"],
            transitions=[transition("finish", source="draft", target="done")],
            migrations={1: {"submitted": "nope"}},
        )
