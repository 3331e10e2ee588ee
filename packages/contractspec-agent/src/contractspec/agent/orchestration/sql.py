"""SQL adapter of the `TaskStore` (SQLite, PostgreSQL): table `cs_agent_tasks`.

The table lives on `contractspec.agent.orchestration.sql.metadata` (core's naming convention):
add it to your Alembic `target_metadata`, or call `create_all(engine)` in tests. `SqlTaskStore`
writes inside the `SqlTransaction`s of core's `SqlUnitOfWork` (use the engine of your
`SqlBackend`, the same as the agent's `SqlRunStore`). Concurrency is the database's: claims,
updates and heartbeats are conditional UPDATEs, and a tree's spend is added with one
`UPDATE ... SET tree_tokens = tree_tokens + :n`, so concurrent sub-tasks never lose spend.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.agent.orchestration.sql needs SQLAlchemy: pip install "
        "'contractspec-agent[sql]' (SQLite) or 'contractspec-agent[postgres]' (PostgreSQL)"
    ) from exc

from datetime import datetime
from types import EllipsisType
from typing import Any

from sqlalchemy import (
    Column,
    Double,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.agent.orchestration.tasks import Budget, Spend, Task, TaskStatus
from contractspec.agent.tools import RiskLevel
from contractspec.core import ConflictError, NotFoundError, Transaction
from contractspec.core.sql import (
    JsonType,
    SqlTransaction,
    UtcDateTime,
    new_metadata,
    sql_transaction,
)
from contractspec.core.sql import create_all as _create_all

__all__ = ["SqlTaskStore", "create_all", "metadata", "tasks_table"]

#: The orchestration tables. Add it to your Alembic `target_metadata`.
metadata = new_metadata()

tasks_table = Table(
    "cs_agent_tasks",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("org_key", String(200), nullable=False),
    Column("root_id", String(64), nullable=False),
    Column("parent_id", String(64), nullable=True),
    Column("position", Integer, nullable=False),
    Column("goal", Text, nullable=False),
    Column("actor", JsonType, nullable=False),
    Column("inputs", JsonType, nullable=False),
    Column("constraints", JsonType, nullable=False),
    Column("risk", Integer, nullable=False),
    Column("budget", JsonType, nullable=True),
    Column("deadline", UtcDateTime, nullable=True),
    Column("capability", String(64), nullable=True),
    Column("agent", String(200), nullable=True),
    Column("depends_on", JsonType, nullable=False),
    Column("status", String(32), nullable=False),
    Column("result", JsonType, nullable=True),
    Column("evidence", JsonType, nullable=False),
    Column("error", JsonType, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("not_before", UtcDateTime, nullable=True),
    Column("run_id", String(64), nullable=True),
    Column("spent", JsonType, nullable=False),
    Column("run_spent", JsonType, nullable=False),
    Column("tree_tokens", Integer, nullable=False, server_default="0"),
    Column("tree_cost", Double, nullable=False, server_default="0"),
    Column("tree_seconds", Double, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Index(None, "org_key", "root_id"),
    Index(None, "status", "not_before"),
    Index(None, "status", "lease_expires_at"),
    comment="Orchestration tasks (contractspec-agent): task trees per tenant; running tasks hold "
    "a lease their orchestrator's heartbeats extend.",
)

_TREE = ("tree_tokens", "tree_cost", "tree_seconds")


async def create_all(engine: AsyncEngine) -> None:
    """Create the orchestration table (skipping an existing one). Use Alembic in production."""
    await _create_all(engine, metadata)


def _org_key(org_id: str | None) -> str:
    return "" if org_id is None else org_id


def _spend(data: Any) -> Spend:
    return Spend(int(data["tokens"]), float(data["cost"]), float(data["seconds"]))


def _row(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "org_key": _org_key(task.org_id),
        "root_id": task.root_id,
        "parent_id": task.parent_id,
        "position": task.position,
        "goal": task.goal,
        "actor": dict(task.actor),
        "inputs": dict(task.inputs),
        "constraints": list(task.constraints),
        "risk": int(task.risk),
        "budget": task.budget.to_dict() if task.budget is not None else None,
        "deadline": task.deadline,
        "capability": task.capability,
        "agent": task.agent,
        "depends_on": list(task.depends_on),
        "status": task.status.value,
        "result": task.result,
        "evidence": [dict(e) for e in task.evidence],
        "error": dict(task.error) if task.error is not None else None,
        "attempts": task.attempts,
        "max_attempts": task.max_attempts,
        "not_before": task.not_before,
        "run_id": task.run_id,
        "spent": task.spent.to_dict(),
        "run_spent": task.run_spent.to_dict(),
        "tree_tokens": task.tree_spent.tokens,
        "tree_cost": task.tree_spent.cost,
        "tree_seconds": task.tree_spent.seconds,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "version": task.version,
        "lease_owner": task.lease_owner,
        "lease_expires_at": task.lease_expires_at,
    }


def _task(row: Any) -> Task:
    org_key = row["org_key"]
    return Task(
        id=row["id"],
        org_id=None if org_key == "" else org_key,
        root_id=row["root_id"],
        goal=row["goal"],
        actor=row["actor"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        parent_id=row["parent_id"],
        position=row["position"],
        inputs=row["inputs"],
        constraints=tuple(row["constraints"]),
        risk=RiskLevel(row["risk"]),
        budget=Budget.from_dict(row["budget"]),
        deadline=row["deadline"],
        capability=row["capability"],
        agent=row["agent"],
        depends_on=tuple(row["depends_on"]),
        status=TaskStatus(row["status"]),
        result=row["result"],
        evidence=tuple(row["evidence"]),
        error=row["error"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        not_before=row["not_before"],
        run_id=row["run_id"],
        spent=_spend(row["spent"]),
        run_spent=_spend(row["run_spent"]),
        tree_spent=Spend(
            int(row["tree_tokens"]), float(row["tree_cost"]), float(row["tree_seconds"])
        ),
        version=row["version"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
    )


def _due(now: datetime) -> Any:
    t = tasks_table
    return or_(
        and_(
            t.c.status == TaskStatus.ASSIGNED.value,
            or_(t.c.not_before.is_(None), t.c.not_before <= now),
        ),
        and_(
            t.c.status == TaskStatus.RUNNING.value,
            or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now),
        ),
    )


class SqlTaskStore:
    """`TaskStore` on `cs_agent_tasks`; every query is scoped by the tenant."""

    __slots__ = ()

    async def create(self, tx: Transaction, task: Task) -> None:
        """Insert a task; `ConflictError` if the id exists."""
        await SqlTransaction.write(
            sql_transaction(tx, "SqlTaskStore"), insert(tasks_table).values(_row(task))
        )

    async def get(self, tx: Transaction, task_id: str, *, org_id: str | None) -> Task | None:
        """The task of `org_id`, or `None`."""
        t = tasks_table
        result = await sql_transaction(tx, "SqlTaskStore").execute(
            select(t).where(t.c.id == task_id, t.c.org_key == _org_key(org_id))
        )
        row = result.mappings().first()
        return None if row is None else _task(row)

    async def update(self, tx: Transaction, task: Task, *, expected_version: int) -> Task:
        """Compare-and-set update on `version` (the tree's spend columns are not written)."""
        sql = sql_transaction(tx, "SqlTaskStore")
        t = tasks_table
        values = _row(task.evolve(version=expected_version + 1))
        for name in ("id", "org_key", *_TREE):
            del values[name]
        where = (t.c.id == task.id, t.c.org_key == _org_key(task.org_id))
        count = await SqlTransaction.write(
            sql, update(t).where(*where, t.c.version == expected_version).values(values)
        )
        found = (await sql.execute(select(t).where(*where))).mappings().first()
        if found is None:
            raise NotFoundError(f"task {task.id!r} does not exist", details={"task_id": task.id})
        if count != 1:
            raise ConflictError(
                f"task {task.id!r} was changed concurrently (version {found['version']}, "
                f"expected {expected_version}); reload it and retry",
                details={"task_id": task.id},
            )
        return _task(found)

    async def tree(self, tx: Transaction, root_id: str, *, org_id: str | None) -> list[Task]:
        """The tree's tasks in creation order."""
        t = tasks_table
        stmt = (
            select(t)
            .where(t.c.root_id == root_id, t.c.org_key == _org_key(org_id))
            .order_by(t.c.created_at, t.c.position, t.c.id)
        )
        result = await sql_transaction(tx, "SqlTaskStore").execute(stmt)
        return [_task(r) for r in result.mappings()]

    async def due(
        self,
        tx: Transaction,
        *,
        now: datetime,
        org_id: str | EllipsisType | None = ...,
        limit: int = 100,
    ) -> list[Task]:
        """Claimable tasks (not waiting for approval), oldest first."""
        t = tasks_table
        stmt = select(t).where(_due(now))
        if org_id is not ...:
            stmt = stmt.where(t.c.org_key == _org_key(org_id))
        stmt = stmt.order_by(t.c.created_at, t.c.position, t.c.id).limit(limit)
        result = await sql_transaction(tx, "SqlTaskStore").execute(stmt)
        return [_task(r) for r in result.mappings()]

    async def waiting(
        self, tx: Transaction, *, org_id: str | EllipsisType | None = ..., limit: int = 100
    ) -> list[Task]:
        """Tasks waiting for approval, oldest first."""
        t = tasks_table
        stmt = select(t).where(t.c.status == TaskStatus.WAITING_APPROVAL.value)
        if org_id is not ...:
            stmt = stmt.where(t.c.org_key == _org_key(org_id))
        stmt = stmt.order_by(t.c.created_at, t.c.position, t.c.id).limit(limit)
        result = await sql_transaction(tx, "SqlTaskStore").execute(stmt)
        return [_task(r) for r in result.mappings()]

    async def claim(
        self, tx: Transaction, task: Task, *, owner: str, lease_until: datetime, now: datetime
    ) -> Task:
        """Take the task with one conditional UPDATE (version, status, lease and backoff checked
        by the database, so two orchestrators never both win)."""
        sql = sql_transaction(tx, "SqlTaskStore")
        t = tasks_table
        where = (t.c.id == task.id, t.c.org_key == _org_key(task.org_id))
        claimable = or_(_due(now), t.c.status == TaskStatus.WAITING_APPROVAL.value)
        count = await SqlTransaction.write(
            sql,
            update(t)
            .where(*where, t.c.version == task.version, claimable)
            .values(
                status=TaskStatus.RUNNING.value,
                lease_owner=owner,
                lease_expires_at=lease_until,
                version=task.version + 1,
                updated_at=now,
            ),
        )
        found = (await sql.execute(select(t).where(*where))).mappings().first()
        if found is None:
            raise NotFoundError(f"task {task.id!r} does not exist", details={"task_id": task.id})
        if count != 1:
            raise ConflictError(
                f"task {task.id!r} is held or was claimed by another orchestrator",
                details={"task_id": task.id},
            )
        return _task(found)

    async def heartbeat(
        self, tx: Transaction, task_id: str, *, owner: str, lease_until: datetime
    ) -> bool:
        """Extend the owner's lease (one UPDATE; the version does not change)."""
        t = tasks_table
        count = await SqlTransaction.write(
            sql_transaction(tx, "SqlTaskStore"),
            update(t)
            .where(
                t.c.id == task_id,
                t.c.status == TaskStatus.RUNNING.value,
                t.c.lease_owner == owner,
            )
            .values(lease_expires_at=lease_until),
        )
        return count == 1

    async def add_spend(
        self, tx: Transaction, root_id: str, spend: Spend, *, org_id: str | None
    ) -> Spend:
        """Add to the root's tree spend with one UPDATE (increments done by the database)."""
        sql = sql_transaction(tx, "SqlTaskStore")
        t = tasks_table
        where = (t.c.id == root_id, t.c.org_key == _org_key(org_id))
        count = await SqlTransaction.write(
            sql,
            update(t)
            .where(*where)
            .values(
                tree_tokens=t.c.tree_tokens + spend.tokens,
                tree_cost=t.c.tree_cost + spend.cost,
                tree_seconds=t.c.tree_seconds + spend.seconds,
            ),
        )
        if count != 1:
            raise NotFoundError(f"task {root_id!r} does not exist", details={"task_id": root_id})
        stmt = select(t.c.tree_tokens, t.c.tree_cost, t.c.tree_seconds).where(*where)
        row = (await sql.execute(stmt)).mappings().first()
        assert row is not None
        return Spend(int(row["tree_tokens"]), float(row["tree_cost"]), float(row["tree_seconds"]))
