"""Issue 20: one conformance suite for the task stores (memory, SQLite, PostgreSQL): round trip,
tenant isolation, compare-and-set, claims and leases, tree spend; and hostile input."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from agent_support import AgentEnv, agent_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from orchestration_support import task_store

from contractspec.agent import RiskLevel, define_agent
from contractspec.agent.orchestration import (
    AgentDirectory,
    Budget,
    Plan,
    PlanError,
    Planner,
    PlanStep,
    Spend,
    Task,
    TaskStatus,
    TaskStore,
    planner_agent,
)
from contractspec.agent.orchestration.orchestrator import TaskRetry
from contractspec.core import (
    ConfigurationError,
    ConflictError,
    ContractSpecError,
    NotFoundError,
    SpecValidationError,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
DOCS_SQL = Path(__file__).resolve().parents[3] / "docs" / "core" / "sql.md"


def make_task(
    task_id: str, *, org: str | None = "org-1", root: str | None = None, **kw: object
) -> Task:
    fields: dict[str, object] = {
        "id": task_id, "org_id": org, "root_id": root or task_id, "goal": f"goal {task_id}",
        "actor": {"id": "u-1", "kind": "user", "roles": ["support"]},
        "created_at": T0, "updated_at": T0, "status": TaskStatus.ASSIGNED,
    }  # fmt: skip
    fields.update(kw)
    return Task(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def stored(backend_kind: str, tmp_path: Path) -> AsyncIterator[tuple[AgentEnv, TaskStore]]:
    """A task store on memory, a SQLite file or PostgreSQL, with the env's unit of work."""
    async with agent_env(backend_kind, tmp_path) as env:
        yield env, await task_store(env)


async def _in_tx(env: AgentEnv, fn: object) -> object:
    tx = await env.backend.unit_of_work.begin()
    try:
        out = await fn(tx)  # type: ignore[operator]
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise
    return out


async def test_a_task_round_trips_with_every_field(stored: tuple[AgentEnv, TaskStore]) -> None:
    """Every field written is read back equal; a second create with the id is a conflict."""
    env, store = stored
    full = make_task(
        "t-1", parent_id="r-1", root="r-1", position=2, inputs={"order": 7, "tags": ["a"]},
        constraints=("no refunds above 50",), risk=RiskLevel.L2,
        budget=Budget(tokens=1000, cost=1.5, seconds=60.0), deadline=T0 + timedelta(hours=1),
        capability="billing", agent="team.billing", depends_on=("t-0",),
        result={"ok": True}, evidence=({"run_id": "run-1", "actions": []},),
        error={"code": "x", "message": "y"}, attempts=2, max_attempts=4,
        not_before=T0 + timedelta(seconds=5), run_id="run-1", spent=Spend(10, 0.5, 1.25),
        run_spent=Spend(3, 0.25, 0.5),
    )  # fmt: skip
    await _in_tx(env, lambda tx: store.create(tx, full))
    got = await _in_tx(env, lambda tx: store.get(tx, "t-1", org_id="org-1"))
    assert got == full
    with pytest.raises(ConflictError):
        await _in_tx(env, lambda tx: store.create(tx, make_task("t-1")))


async def test_another_tenant_never_sees_or_changes_a_task(
    stored: tuple[AgentEnv, TaskStore],
) -> None:
    """get, tree, due, waiting, update, claim and add_spend are all scoped by org."""
    env, store = stored
    mine = make_task("t-1")
    await _in_tx(env, lambda tx: store.create(tx, mine))
    await _in_tx(
        env, lambda tx: store.create(tx, make_task("w-1", status=TaskStatus.WAITING_APPROVAL))
    )
    assert await _in_tx(env, lambda tx: store.get(tx, "t-1", org_id="org-2")) is None
    assert await _in_tx(env, lambda tx: store.get(tx, "t-1", org_id=None)) is None
    assert await _in_tx(env, lambda tx: store.tree(tx, "t-1", org_id="org-2")) == []
    assert await _in_tx(env, lambda tx: store.due(tx, now=T0, org_id="org-2")) == []
    assert await _in_tx(env, lambda tx: store.waiting(tx, org_id="org-2")) == []
    other = mine.evolve(org_id="org-2")
    with pytest.raises(NotFoundError):
        await _in_tx(env, lambda tx: store.update(tx, other, expected_version=1))
    with pytest.raises(NotFoundError):
        await _in_tx(env, lambda tx: store.claim(tx, other, owner="w", lease_until=T0, now=T0))
    with pytest.raises(NotFoundError):
        await _in_tx(env, lambda tx: store.add_spend(tx, "t-1", Spend(5), org_id="org-2"))
    assert [t.id for t in await _in_tx(env, lambda tx: store.due(tx, now=T0))] == ["t-1"]
    assert [t.id for t in await _in_tx(env, lambda tx: store.waiting(tx))] == ["w-1"]


async def test_update_is_compare_and_set_and_keeps_the_tree_spend(
    stored: tuple[AgentEnv, TaskStore],
) -> None:
    """A stale version is a conflict; a good update increments the version and never
    overwrites the spend add_spend keeps."""
    env, store = stored
    task = make_task("r-1")
    await _in_tx(env, lambda tx: store.create(tx, task))
    total = await _in_tx(
        env, lambda tx: store.add_spend(tx, "r-1", Spend(7, 0.5, 2.0), org_id="org-1")
    )
    assert total == Spend(7, 0.5, 2.0)
    saved = await _in_tx(
        env, lambda tx: store.update(tx, task.evolve(goal="new"), expected_version=1)
    )
    assert (saved.version, saved.goal, saved.tree_spent) == (2, "new", Spend(7, 0.5, 2.0))
    with pytest.raises(ConflictError):
        await _in_tx(env, lambda tx: store.update(tx, task, expected_version=1))
    got = await _in_tx(env, lambda tx: store.get(tx, "r-1", org_id="org-1"))
    assert (got.version, got.goal, got.tree_spent) == (2, "new", Spend(7, 0.5, 2.0))


async def test_claims_respect_versions_backoff_and_leases(
    stored: tuple[AgentEnv, TaskStore],
) -> None:
    """An assigned task is claimed once (a stale claim conflicts); a retry is not claimable
    before not_before; a live lease blocks a claim, an expired one allows it; heartbeats
    extend only the owner's lease."""
    env, store = stored
    task = make_task("t-1")
    later = make_task("t-2", not_before=T0 + timedelta(seconds=10))
    await _in_tx(env, lambda tx: store.create(tx, task))
    await _in_tx(env, lambda tx: store.create(tx, later))
    until = T0 + timedelta(seconds=30)
    held = await _in_tx(env, lambda tx: store.claim(tx, task, owner="a", lease_until=until, now=T0))
    assert (held.status, held.lease_owner, held.lease_expires_at, held.version) == (
        TaskStatus.RUNNING, "a", until, 2,
    )  # fmt: skip
    with pytest.raises(ConflictError):
        await _in_tx(env, lambda tx: store.claim(tx, task, owner="b", lease_until=until, now=T0))
    with pytest.raises(ConflictError):  # current version, live lease
        await _in_tx(env, lambda tx: store.claim(tx, held, owner="b", lease_until=until, now=T0))
    with pytest.raises(ConflictError):
        await _in_tx(env, lambda tx: store.claim(tx, later, owner="b", lease_until=until, now=T0))
    assert [t.id for t in await _in_tx(env, lambda tx: store.due(tx, now=T0))] == []
    assert (
        await _in_tx(env, lambda tx: store.heartbeat(tx, "t-1", owner="b", lease_until=until))
        is False
    )
    longer = until + timedelta(seconds=30)
    assert (
        await _in_tx(env, lambda tx: store.heartbeat(tx, "t-1", owner="a", lease_until=longer))
        is True
    )
    now = longer + timedelta(seconds=1)
    assert [t.id for t in await _in_tx(env, lambda tx: store.due(tx, now=now))] == ["t-1", "t-2"]
    current = await _in_tx(env, lambda tx: store.get(tx, "t-1", org_id="org-1"))
    assert current.version == 2  # heartbeats do not move the version
    with pytest.raises(ConflictError):  # the lease expired, but this read is stale (version 1)
        await _in_tx(env, lambda tx: store.claim(tx, task, owner="b", lease_until=now, now=now))
    taken = await _in_tx(
        env, lambda tx: store.claim(tx, current, owner="b", lease_until=now, now=now)
    )
    assert (taken.lease_owner, taken.version) == ("b", 3)


async def test_a_rolled_back_write_leaves_nothing(stored: tuple[AgentEnv, TaskStore]) -> None:
    """A create and a spend in a transaction that rolls back are both undone."""
    env, store = stored
    await _in_tx(env, lambda tx: store.create(tx, make_task("r-1")))
    tx = await env.backend.unit_of_work.begin()
    await store.create(tx, make_task("t-9", root="r-1"))
    await store.add_spend(tx, "r-1", Spend(50), org_id="org-1")
    await tx.rollback()
    tree = await _in_tx(env, lambda tx: store.tree(tx, "r-1", org_id="org-1"))
    assert [(t.id, t.tree_spent) for t in tree] == [("r-1", Spend())]


async def test_concurrent_spend_of_sibling_tasks_is_never_lost(
    stored: tuple[AgentEnv, TaskStore],
) -> None:
    """Twenty sub-tasks adding their spend at once (each in its own transaction): the tree's
    total is the exact sum."""
    env, store = stored
    await _in_tx(env, lambda tx: store.create(tx, make_task("r-1")))

    async def add(i: int) -> None:
        for attempt in range(50):
            try:
                await _in_tx(
                    env, lambda tx: store.add_spend(tx, "r-1", Spend(i, 0.25, 0.5), org_id="org-1")
                )
                return
            except ContractSpecError:  # SQLite: database busy; retried
                await asyncio.sleep(0.01 * attempt)
        raise AssertionError("could not add spend")

    await asyncio.gather(*(add(i) for i in range(1, 21)))
    root = await _in_tx(env, lambda tx: store.get(tx, "r-1", org_id="org-1"))
    assert root.tree_spent == Spend(210, 5.0, 10.0)


# -- hostile input --------------------------------------------------------------------------------

limits = st.one_of(
    st.none(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=3),
)  # fmt: skip


@given(tokens=limits, cost=limits, seconds=limits)
def test_a_budget_is_valid_or_refused_naming_its_field(
    tokens: object, cost: object, seconds: object
) -> None:
    """Any budget values: either a usable Budget (every limit a finite number >= 0 or None) or a
    SpecValidationError whose field names the bad limit."""
    try:
        budget = Budget(tokens, cost, seconds)  # type: ignore[arg-type]
    except SpecValidationError as exc:
        refused = exc.details["field"]
    else:
        refused = None
    if refused is not None:
        assert refused in {"budget.tokens", "budget.cost", "budget.seconds"}
        return
    for value in (budget.tokens, budget.cost, budget.seconds):
        assert value is None or (not isinstance(value, bool) and 0 <= value < float("inf"))


def _directory() -> AgentDirectory:
    directory = AgentDirectory()
    directory.register(
        define_agent("w.low", model="m", instructions="i"),
        capabilities=["low"],
        max_risk=RiskLevel.L1,
    )
    directory.register(define_agent("w.any", model="m", instructions="i"), capabilities=["any"])
    return directory


steps = st.lists(
    st.fixed_dictionaries(
        {"goal": st.text(min_size=1, max_size=20),
         "capability": st.sampled_from(["low", "any", "nobody"]),
         "depends_on": st.lists(st.integers(0, 6), max_size=3),
         "risk": st.integers(0, 3)}
    ),
    min_size=1, max_size=7,
)  # fmt: skip


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=200)
@given(raw=steps)
def test_a_model_s_plan_is_accepted_only_when_it_can_run(raw: list[dict[str, object]]) -> None:
    """Any plan a model might return: accepted plans only reference earlier steps (a DAG),
    known capabilities and risks an agent may take; every refusal is a PlanError naming the
    step and field."""
    planner = Planner(planner_agent("m"), max_steps=5)
    directory = _directory()
    plan = Plan(steps=[PlanStep.model_validate(s) for s in raw])
    try:
        planner.check(plan, directory, max_risk=RiskLevel.L2)
    except PlanError as exc:
        field = exc.details["field"]
    else:
        field = None
    if field is not None:
        assert field == "steps" or re.fullmatch(
            r"steps\[\d\](\.(capability|depends_on|risk))", field
        )
        return
    assert len(plan.steps) <= 5
    for i, step in enumerate(plan.steps):
        assert all(d < i for d in step.depends_on)
        assert len(set(step.depends_on)) == len(step.depends_on)
        assert step.risk <= 2
        assert directory.find(step.capability, RiskLevel(step.risk)) is not None


def test_bad_orchestration_settings_are_refused_naming_the_field() -> None:
    """Planner without a Plan output, bad retry settings, unknown capabilities and bad
    capability names are refused with errors naming the field."""
    from contractspec.core import SpecDefinitionError

    with pytest.raises(SpecDefinitionError) as info:
        Planner(define_agent("p.x", model="m", instructions="i"))
    assert info.value.details["field"] == "agent"
    for bad in ({"max_attempts": 0}, {"base_delay_s": -1.0}, {"multiplier": 0.5}):
        with pytest.raises(ConfigurationError) as cfg:
            TaskRetry(**bad)  # type: ignore[arg-type]
        assert cfg.value.details["field"] == next(iter(bad))
    directory = _directory()
    with pytest.raises(ConfigurationError) as cfg:
        directory.assign("nobody")
    assert cfg.value.details["field"] == "capability"
    with pytest.raises(ConfigurationError) as cfg:
        directory.assign("low", RiskLevel.L2)
    assert cfg.value.details["field"] == "risk"
    with pytest.raises(SpecDefinitionError):
        directory.register(
            define_agent("w.bad", model="m", instructions="i"), capabilities=["Bad Name"]
        )
    with pytest.raises(SpecDefinitionError):
        directory.register(define_agent("w.low", model="m", instructions="i"), capabilities=["x"])


async def test_the_task_table_migrates_with_alembic_and_serves_the_store(
    sql_engine: object, tmp_path: Path
) -> None:
    """The autogenerated migration creates cs_agent_tasks, `alembic check` finds no diff, the
    migrated table stores and reads a task (tree spend included), and downgrade drops it."""
    from contractspec.agent.orchestration.sql import SqlTaskStore, metadata
    from contractspec.core.sql import SqlUnitOfWork
    from contractspec.core.testing.migrations import (
        downgrade_and_check,
        metadata_from_config,
        migrate_and_check,
        titled_block,
    )

    env_py = metadata_from_config(
        titled_block(DOCS_SQL, "migrations/env.py"), "from myapp.db import target_metadata"
    )
    env = await migrate_and_check(sql_engine, tmp_path / "migrations", [metadata], env_py=env_py)  # type: ignore[arg-type]
    store = SqlTaskStore()
    uow = SqlUnitOfWork(sql_engine)  # type: ignore[arg-type]
    tx = await uow.begin()
    await store.create(tx, make_task("r-1", budget=Budget(tokens=5)))
    await store.add_spend(tx, "r-1", Spend(3, 0.5, 1.0), org_id="org-1")
    await tx.commit()
    tx = await uow.begin(readonly=True)
    got = await store.get(tx, "r-1", org_id="org-1")
    await tx.rollback()
    assert got is not None
    assert (got.budget, got.tree_spent) == (Budget(tokens=5), Spend(3, 0.5, 1.0))
    await downgrade_and_check(env, sql_engine)  # type: ignore[arg-type]
