"""SQL adapters (SQLite, PostgreSQL): runs, ledger, approvals and agent memory.

Install with `pip install 'contractspec-agent[sql]'` (or `[postgres]`). The tables live on
`contractspec.agent.sql.metadata` (prefixed `cs_agent_` / `cs_approval`, with core's naming
convention): add it to your Alembic `target_metadata`, or call `create_all(engine)` in tests.

`SqlRunStore`, `SqlApprovalStore` and `SqlBudgetStore` write inside the `SqlTransaction`s of core's
`SqlUnitOfWork` (so use the same engine as your `SqlBackend`); `SqlAgentMemory` takes the engine.
Concurrency is the database's: compare-and-set updates on a `version` column and unique keys, so
two processes never resume the same run or double-count an approver. A budget reservation is one
`INSERT … ON CONFLICT DO UPDATE … WHERE reserved + amount <= cap` on `cs_agent_budgets`: PostgreSQL
locks the row and re-checks the condition on its latest version, so N concurrent reservers admit
exactly `floor(cap / amount)`; SQLite has one writer at a time.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.agent.sql needs SQLAlchemy: pip install 'contractspec-agent[sql]' "
        "(SQLite) or 'contractspec-agent[postgres]' (PostgreSQL)"
    ) from exc

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from types import EllipsisType
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    insert,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy import Numeric as _Numeric
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from contractspec.agent.budgets import ZERO, BudgetHold, BudgetReservation, BudgetUsage
from contractspec.agent.memory import (
    MemoryEntry,
    Summarizer,
    check_memory_options,
    compact,
)
from contractspec.agent.messages import Message, message_from_dict
from contractspec.agent.stores import (
    ActionRecord,
    ActionStatus,
    ApprovalDecision,
    ApprovalRequest,
    ApprovalStatus,
    Run,
    RunLog,
    RunStatus,
    RunStep,
)
from contractspec.core import (
    Clock,
    ConflictError,
    NotFoundError,
    SystemClock,
    Transaction,
)
from contractspec.core.sql import (
    DecimalType,
    JsonType,
    SqlTransaction,
    UtcDateTime,
    new_metadata,
    sql_transaction,
)
from contractspec.core.sql import create_all as _create_all

__all__ = [
    "SqlAgentMemory",
    "SqlApprovalStore",
    "SqlBudgetStore",
    "SqlRunStore",
    "actions_table",
    "approval_decisions_table",
    "approvals_table",
    "budget_reservations_table",
    "budgets_table",
    "create_all",
    "logs_table",
    "memory_table",
    "metadata",
    "runs_table",
    "steps_table",
]

#: The agent package's tables. Add it to your Alembic `target_metadata`.
metadata = new_metadata()

runs_table = Table(
    "cs_agent_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("org_key", String(200), nullable=False),
    Column("agent", String(200), nullable=False),
    Column("agent_version", Integer, nullable=False),
    Column("actor", JsonType, nullable=False),
    Column("session_id", String(200), nullable=True),
    Column("status", String(32), nullable=False),
    Column("input", Text, nullable=False),
    Column("output", JsonType, nullable=True),
    Column("error", JsonType, nullable=True),
    Column("messages", JsonType, nullable=False),
    Column("steps", Integer, nullable=False),
    Column("usage", JsonType, nullable=False),
    Column("confidence", Double, nullable=True),
    Column("pending", JsonType, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Index(None, "org_key", "status"),
    Index(None, "org_key", "agent", "created_at"),
    Index(None, "status", "lease_expires_at"),
    comment="Agent runs (contractspec-agent), persisted after every step; running runs hold a "
    "lease their worker's heartbeats extend.",
)

steps_table = Table(
    "cs_agent_steps",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("response", JsonType, nullable=False),
    Column("tool_results", JsonType, nullable=False),
    Column("usage", JsonType, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("run_id", "idx"),
    comment="Model steps of agent runs.",
)

logs_table = Table(
    "cs_agent_logs",
    metadata,
    Column("position", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("level", String(16), nullable=False),
    Column("event", String(100), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", JsonType, nullable=False),
    Index(None, "run_id", "position"),
    comment="Log lines of agent runs.",
)

actions_table = Table(
    "cs_agent_actions",
    metadata,
    Column("action_id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("org_key", String(200), nullable=False),
    Column("step", Integer, nullable=False),
    Column("tool", String(64), nullable=False),
    Column("arguments_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("result", JsonType, nullable=True),
    Column("packet", JsonType, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="1"),
    Index(None, "run_id"),
    comment="Idempotency ledger of the tool gateway: one row per side-effecting action.",
)

#: Budget amounts: NUMERIC(36, 6) on PostgreSQL, integer micro-units on SQLite.
_Amount = DecimalType(36, 6)

budgets_table = Table(
    "cs_agent_budgets",
    metadata,
    Column("org_key", String(200), nullable=False),
    Column("key", String(200), nullable=False),
    Column("reserved", _Amount, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("org_key", "key"),
    comment="Reserved totals of tool budgets per tenant and key (spent, in flight, in doubt); "
    "raised only by a conditional upsert that keeps reserved <= cap.",
)

budget_reservations_table = Table(
    "cs_agent_budget_reservations",
    metadata,
    Column("org_key", String(200), nullable=False),
    Column("action_id", String(64), nullable=False),
    Column("key", String(200), nullable=False),
    Column("amount", _Amount, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("org_key", "action_id", "key"),
    comment="What each gateway action reserved per budget key (held, or released after a "
    "known failure).",
)

approvals_table = Table(
    "cs_approvals",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("org_key", String(200), nullable=False),
    Column("key", String(200), nullable=True),
    Column("subject_type", String(100), nullable=False),
    Column("subject_id", String(200), nullable=True),
    Column("action", String(200), nullable=False),
    Column("arguments", JsonType, nullable=False),
    Column("arguments_hash", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("risk", Integer, nullable=False),
    Column("requested_by", String(200), nullable=False),
    Column("requested_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("quorum", Integer, nullable=False),
    Column("approvers", JsonType, nullable=False),
    Column("status", String(16), nullable=False),
    Column("decided_at", UtcDateTime, nullable=True),
    Column("metadata", JsonType, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("org_key", "key"),
    Index(None, "org_key", "status", "requested_at"),
    comment="Approval requests (ApprovalWorkflow), bound to the hash of exact arguments.",
)

approval_decisions_table = Table(
    "cs_approval_decisions",
    metadata,
    Column("request_id", String(64), nullable=False),
    Column("approver_id", String(200), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("comment", Text, nullable=False),
    Column("decided_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("request_id", "approver_id"),
    comment="One verdict per approver and request (distinct approvers by construction).",
)

memory_table = Table(
    "cs_agent_memory",
    metadata,
    Column("position", Integer, primary_key=True, autoincrement=True),
    Column("org_key", String(200), nullable=False),
    Column("session_id", String(200), nullable=False),
    Column("message", JsonType, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Index(None, "org_key", "session_id", "position"),
    comment="Conversation memory of agent sessions.",
)


async def create_all(engine: AsyncEngine) -> None:
    """Create the agent tables (skipping existing ones). Use Alembic in production."""
    await _create_all(engine, metadata)


def _org_key(org_id: str | None) -> str:
    return "" if org_id is None else org_id


def _org_id(org_key: str) -> str | None:
    return None if org_key == "" else org_key


# -- runs -------------------------------------------------------------------------------------


def _run_row(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "org_key": _org_key(run.org_id),
        "agent": run.agent,
        "agent_version": run.agent_version,
        "actor": dict(run.actor),
        "session_id": run.session_id,
        "status": run.status.value,
        "input": run.input,
        "output": run.output,
        "error": dict(run.error) if run.error is not None else None,
        "messages": [dict(m) for m in run.messages],
        "steps": run.steps,
        "usage": dict(run.usage),
        "confidence": run.confidence,
        "pending": [dict(p) for p in run.pending],
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "version": run.version,
        "lease_owner": run.lease_owner,
        "lease_expires_at": run.lease_expires_at,
    }


def _run(row: Any) -> Run:
    return Run(
        id=row["id"],
        agent=row["agent"],
        agent_version=row["agent_version"],
        org_id=_org_id(row["org_key"]),
        actor=row["actor"],
        status=RunStatus(row["status"]),
        input=row["input"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        session_id=row["session_id"],
        output=row["output"],
        error=row["error"],
        messages=tuple(row["messages"]),
        steps=row["steps"],
        usage=row["usage"],
        confidence=row["confidence"],
        pending=tuple(row["pending"]),
        version=row["version"],
        lease_owner=row["lease_owner"],
        lease_expires_at=row["lease_expires_at"],
    )


def _action(row: Any) -> ActionRecord:
    return ActionRecord(
        action_id=row["action_id"],
        run_id=row["run_id"],
        step=row["step"],
        tool=row["tool"],
        org_id=_org_id(row["org_key"]),
        arguments_hash=row["arguments_hash"],
        status=ActionStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        result=row["result"],
        packet=row["packet"],
        attempts=row["attempts"],
    )


class SqlRunStore:
    """`RunStore` on `cs_agent_runs`, `cs_agent_steps`, `cs_agent_logs` and `cs_agent_actions`."""

    __slots__ = ()

    async def create(self, tx: Transaction, run: Run) -> None:
        """Insert a new run; `ConflictError` if the id exists."""
        await SqlTransaction.write(
            sql_transaction(tx, "SqlRunStore"), insert(runs_table).values(_run_row(run))
        )

    async def get(self, tx: Transaction, run_id: str) -> Run | None:
        """The run, or `None`."""
        result = await sql_transaction(tx, "SqlRunStore").execute(
            select(runs_table).where(runs_table.c.id == run_id)
        )
        row = result.mappings().first()
        return None if row is None else _run(row)

    async def update(self, tx: Transaction, run: Run, *, expected_version: int) -> Run:
        """Compare-and-set update on `version`."""
        sql = sql_transaction(tx, "SqlRunStore")
        stored = run.evolve(version=expected_version + 1)
        values = _run_row(stored)
        del values["id"]
        t = runs_table
        count = await SqlTransaction.write(
            sql, update(t).where(t.c.id == run.id, t.c.version == expected_version).values(values)
        )
        if count == 1:
            return stored
        exists = (await sql.execute(select(t.c.version).where(t.c.id == run.id))).first()
        if exists is None:
            raise NotFoundError(f"run {run.id!r} does not exist", details={"run_id": run.id})
        raise ConflictError(
            f"run {run.id!r} was changed concurrently (version {exists[0]}, expected "
            f"{expected_version}); reload it and retry",
            details={"run_id": run.id},
        )

    async def find(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        agent: str | None = None,
        status: RunStatus | None = None,
        limit: int = 100,
        before: tuple[datetime, str] | None = None,
    ) -> list[Run]:
        """Runs of one org, newest first (keyset `before`, as the protocol says)."""
        t = runs_table
        stmt = select(t).where(t.c.org_key == _org_key(org_id))
        if before is not None:
            stmt = stmt.where(_before(t.c.created_at, t.c.id, before))
        if agent is not None:
            stmt = stmt.where(t.c.agent == agent)
        if status is not None:
            stmt = stmt.where(t.c.status == status.value)
        stmt = stmt.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        result = await sql_transaction(tx, "SqlRunStore").execute(stmt)
        return [_run(r) for r in result.mappings()]

    async def claim(
        self, tx: Transaction, run: Run, *, owner: str, lease_until: datetime, now: datetime
    ) -> Run:
        """Take the run with one conditional UPDATE (version, status and lease checked by the
        database, so two workers never both win)."""
        sql = sql_transaction(tx, "SqlRunStore")
        t = runs_table
        claimable = or_(
            t.c.status == RunStatus.WAITING_APPROVAL.value,
            and_(
                t.c.status == RunStatus.RUNNING.value,
                or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now),
            ),
        )
        count = await SqlTransaction.write(
            sql,
            update(t)
            .where(t.c.id == run.id, t.c.version == run.version, claimable)
            .values(
                status=RunStatus.RUNNING.value,
                lease_owner=owner,
                lease_expires_at=lease_until,
                version=run.version + 1,
                updated_at=now,
            ),
        )
        if count != 1:
            if (await sql.execute(select(t.c.id).where(t.c.id == run.id))).first() is None:
                raise NotFoundError(f"run {run.id!r} does not exist", details={"run_id": run.id})
            raise ConflictError(
                f"run {run.id!r} is held or was claimed by another worker; nothing to resume here",
                details={"run_id": run.id},
            )
        return run.evolve(
            status=RunStatus.RUNNING,
            lease_owner=owner,
            lease_expires_at=lease_until,
            version=run.version + 1,
            updated_at=now,
        )

    async def heartbeat(
        self, tx: Transaction, run_id: str, *, owner: str, lease_until: datetime
    ) -> bool:
        """Extend the owner's lease (one UPDATE; the version does not change)."""
        t = runs_table
        count = await SqlTransaction.write(
            sql_transaction(tx, "SqlRunStore"),
            update(t)
            .where(
                t.c.id == run_id,
                t.c.status == RunStatus.RUNNING.value,
                t.c.lease_owner == owner,
            )
            .values(lease_expires_at=lease_until),
        )
        return count == 1

    async def expired(
        self,
        tx: Transaction,
        *,
        now: datetime,
        org_id: str | EllipsisType | None = ...,
        limit: int = 100,
    ) -> list[Run]:
        """Running runs whose lease expired, oldest lease first."""
        t = runs_table
        stmt = select(t).where(
            t.c.status == RunStatus.RUNNING.value,
            or_(t.c.lease_expires_at.is_(None), t.c.lease_expires_at <= now),
        )
        if org_id is not ...:
            stmt = stmt.where(t.c.org_key == _org_key(org_id))
        stmt = stmt.order_by(t.c.lease_expires_at, t.c.id).limit(limit)
        result = await sql_transaction(tx, "SqlRunStore").execute(stmt)
        return [_run(r) for r in result.mappings()]

    async def add_step(self, tx: Transaction, step: RunStep) -> None:
        """Record a step; `ConflictError` on a duplicate index."""
        await SqlTransaction.write(
            sql_transaction(tx, "SqlRunStore"),
            insert(steps_table).values(
                run_id=step.run_id,
                idx=step.index,
                response=dict(step.response),
                tool_results=[dict(r) for r in step.tool_results],
                usage=dict(step.usage),
                started_at=step.started_at,
                finished_at=step.finished_at,
            ),
        )

    async def steps(self, tx: Transaction, run_id: str) -> list[RunStep]:
        """The run's steps by index."""
        t = steps_table
        result = await sql_transaction(tx, "SqlRunStore").execute(
            select(t).where(t.c.run_id == run_id).order_by(t.c.idx)
        )
        return [
            RunStep(
                run_id=r["run_id"],
                index=r["idx"],
                response=r["response"],
                tool_results=tuple(r["tool_results"]),
                usage=r["usage"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
            )
            for r in result.mappings()
        ]

    async def log(self, tx: Transaction, entry: RunLog) -> None:
        """Append a log line (buffered until the next read or commit)."""
        sql_transaction(tx, "SqlRunStore").stage_insert(
            logs_table,
            {
                "run_id": entry.run_id,
                "at": entry.at,
                "level": entry.level,
                "event": entry.event,
                "message": entry.message,
                "data": dict(entry.data),
            },
        )

    async def logs(self, tx: Transaction, run_id: str) -> list[RunLog]:
        """The run's log, oldest first, `seq` from 1."""
        t = logs_table
        result = await sql_transaction(tx, "SqlRunStore").execute(
            select(t).where(t.c.run_id == run_id).order_by(t.c.position)
        )
        return [
            RunLog(r["run_id"], r["at"], r["level"], r["event"], r["message"], r["data"], seq)
            for seq, r in enumerate(result.mappings(), start=1)
        ]

    async def begin_action(self, tx: Transaction, record: ActionRecord) -> None:
        """Insert the ledger entry; `ConflictError` if the id exists."""
        await SqlTransaction.write(
            sql_transaction(tx, "SqlRunStore"),
            insert(actions_table).values(
                action_id=record.action_id,
                run_id=record.run_id,
                org_key=_org_key(record.org_id),
                step=record.step,
                tool=record.tool,
                arguments_hash=record.arguments_hash,
                status=record.status.value,
                result=record.result,
                packet=dict(record.packet),
                created_at=record.created_at,
                updated_at=record.updated_at,
                attempts=record.attempts,
            ),
        )

    async def get_action(self, tx: Transaction, action_id: str) -> ActionRecord | None:
        """The ledger entry, or `None`."""
        t = actions_table
        result = await sql_transaction(tx, "SqlRunStore").execute(
            select(t).where(t.c.action_id == action_id)
        )
        row = result.mappings().first()
        return None if row is None else _action(row)

    async def finish_action(
        self,
        tx: Transaction,
        action_id: str,
        status: ActionStatus,
        result: Any,
        updated_at: datetime,
    ) -> ActionRecord:
        """Mark the action finished; `NotFoundError` if unknown."""
        sql = sql_transaction(tx, "SqlRunStore")
        t = actions_table
        count = await SqlTransaction.write(
            sql,
            update(t)
            .where(t.c.action_id == action_id)
            .values(status=status.value, result=result, updated_at=updated_at),
        )
        if count != 1:
            raise NotFoundError(f"action {action_id!r} is not recorded")
        found = await self.get_action(tx, action_id)
        assert found is not None  # just updated in this transaction
        return found

    async def update_action(
        self,
        tx: Transaction,
        action_id: str,
        status: ActionStatus,
        *,
        expected: Collection[ActionStatus],
        expected_attempts: int | None = None,
        updated_at: datetime,
        result: Any = None,
        step: int | None = None,
        packet: Mapping[str, Any] | None = None,
        attempts: int | None = None,
    ) -> ActionRecord:
        """Compare-and-set on status (and attempts) in one conditional UPDATE."""
        sql = sql_transaction(tx, "SqlRunStore")
        t = actions_table
        values: dict[str, Any] = {
            "status": status.value,
            "result": result,
            "updated_at": updated_at,
        }
        if step is not None:
            values["step"] = step
        if packet is not None:
            values["packet"] = dict(packet)
        if attempts is not None:
            values["attempts"] = attempts
        where = [t.c.action_id == action_id, t.c.status.in_([s.value for s in expected])]
        if expected_attempts is not None:
            where.append(t.c.attempts == expected_attempts)
        count = await SqlTransaction.write(sql, update(t).where(*where).values(values))
        found = await self.get_action(tx, action_id)
        if found is None:
            raise NotFoundError(f"action {action_id!r} is not recorded")
        if count != 1:
            raise ConflictError(
                f"action {action_id!r} is {found.status.value} (attempt {found.attempts}); "
                "another worker changed it",
                details={"action_id": action_id, "status": found.status.value},
            )
        return found

    async def actions(self, tx: Transaction, run_id: str) -> list[ActionRecord]:
        """The run's ledger entries, oldest first."""
        t = actions_table
        result = await sql_transaction(tx, "SqlRunStore").execute(
            select(t).where(t.c.run_id == run_id).order_by(t.c.created_at, t.c.step, t.c.action_id)
        )
        return [_action(r) for r in result.mappings()]


# -- budgets ----------------------------------------------------------------------------------


def _bound(stx: SqlTransaction, value: Decimal) -> Any:
    """`value` bound as the amount columns store it (scaled integer on SQLite)."""
    stored = _Amount.process_bind_param(value, stx.connection.dialect)
    if stx.dialect == "sqlite":
        return bindparam(None, stored, type_=BigInteger())
    return bindparam(None, stored, type_=_Numeric(36, 6))


_UPSERTS: dict[str, Any] = {}


def _upsert(dialect: str) -> Any:
    """The reservation statement for `dialect`, built once (bound parameters `org_key`, `key`,
    `amount`, `now` and `cap`, the cap as the column stores it)."""
    found = _UPSERTS.get(dialect)
    if found is not None:
        return found
    b = budgets_table
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(b).values(
        org_key=bindparam("org_key"),
        key=bindparam("key"),
        reserved=bindparam("amount", type_=_Amount),
        updated_at=bindparam("now", type_=UtcDateTime()),
    )
    # DecimalType is text-like to SQLAlchemy: add and compare as numbers (scaled integers on
    # SQLite), as the columns store them
    grown = type_coerce(b.c.reserved, _Numeric()) + type_coerce(stmt.excluded.reserved, _Numeric())
    cap = bindparam("cap", type_=BigInteger() if dialect == "sqlite" else _Numeric(36, 6))
    found = stmt.on_conflict_do_update(
        index_elements=[b.c.org_key, b.c.key],
        set_={"reserved": grown, "updated_at": stmt.excluded.updated_at},
        where=grown <= cap,
    ).returning(b.c.reserved)
    _UPSERTS[dialect] = found
    return found


def _hold(dialect: str) -> Any:
    """Insert the action's reservation row as `held`, or turn its `released` row `held` again
    (bound parameters `org_key`, `action_id`, `key`, `amount`, `now`); no row back: it was
    held already."""
    name = f"hold:{dialect}"
    found = _UPSERTS.get(name)
    if found is not None:
        return found
    r = budget_reservations_table
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(r).values(
        org_key=bindparam("org_key"),
        action_id=bindparam("action_id"),
        key=bindparam("key"),
        amount=bindparam("amount", type_=_Amount),
        status="held",
        created_at=bindparam("now", type_=UtcDateTime()),
        updated_at=bindparam("now", type_=UtcDateTime()),
    )
    found = stmt.on_conflict_do_update(
        index_elements=[r.c.org_key, r.c.action_id, r.c.key],
        set_={
            "status": "held",
            "amount": stmt.excluded.amount,
            "updated_at": stmt.excluded.updated_at,
        },
        where=r.c.status == "released",
    ).returning(r.c.status)
    _UPSERTS[name] = found
    return found


class SqlBudgetStore:
    """`BudgetStore` on `cs_agent_budgets` and `cs_agent_budget_reservations`.

    `reserve` raises the total with one `INSERT … ON CONFLICT DO UPDATE SET reserved = reserved +
    amount WHERE reserved + amount <= cap RETURNING reserved`: no row back means refused. It runs
    in the gateway's ledger transaction, so the reservation commits with the call's ledger entry.
    """

    __slots__ = ()

    async def reserve(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        key: str,
        action_id: str,
        amount: Decimal,
        cap: Decimal,
        now: datetime,
        new: bool = False,
    ) -> BudgetReservation:
        """Reserve `amount` if it fits (see `BudgetStore.reserve`)."""
        stx = sql_transaction(tx, "SqlBudgetStore")
        r = budget_reservations_table
        org = _org_key(org_id)
        hold: Any = None
        if not new:  # a new action holds nothing (its reservation and ledger entry commit together)
            hold = (
                await stx.execute(
                    select(r.c.status, r.c.amount).where(
                        r.c.org_key == org, r.c.action_id == action_id, r.c.key == key
                    )
                )
            ).first()
        if hold is not None and hold[0] == "held":
            used = await self._reserved(stx, org, key)
            return BudgetReservation(True, key, hold[1], used, cap, held_before=True)
        if amount > cap:
            return BudgetReservation(False, key, amount, await self._reserved(stx, org, key), cap)
        params = {
            "org_key": org,
            "key": key,
            "amount": amount,
            "now": now,
            "cap": _Amount.process_bind_param(cap, stx.connection.dialect),
        }
        row = (await stx.execute(_upsert(stx.dialect), params, write=True)).first()
        if row is None:
            return BudgetReservation(False, key, amount, await self._reserved(stx, org, key), cap)
        # the action's row: new, or a released one held again (a call refused on another
        # budget, or a known failure run again); a row held meanwhile by a concurrent
        # transaction recording the same action is a conflict
        held = (
            await stx.execute(
                _hold(stx.dialect),
                {"org_key": org, "action_id": action_id, "key": key, "amount": amount, "now": now},
                write=True,
            )
        ).first()
        if held is None:
            raise ConflictError(
                f"the reservation of action {action_id!r} on budget {key!r} was changed "
                "concurrently; decide the call again",
                details={"action_id": action_id, "key": key},
            )
        return BudgetReservation(True, key, amount, row[0], cap)

    async def release(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        action_id: str,
        now: datetime,
        keys: Collection[str] | None = None,
    ) -> Decimal:
        """Release the action's held reservations, each once (a compare-and-set on its status,
        then the total lowered by its amount)."""
        stx = sql_transaction(tx, "SqlBudgetStore")
        b, r = budgets_table, budget_reservations_table
        org = _org_key(org_id)
        where = [r.c.org_key == org, r.c.action_id == action_id, r.c.status == "held"]
        if keys is not None:
            where.append(r.c.key.in_(list(keys)))
        held: Any = (await stx.execute(select(r.c.key, r.c.amount).where(*where))).all()
        total = ZERO
        for key, amount in held:
            count = await stx.write(
                update(r)
                .where(
                    r.c.org_key == org,
                    r.c.action_id == action_id,
                    r.c.key == key,
                    r.c.status == "held",
                )
                .values(status="released", updated_at=now)
            )
            if count != 1:
                continue  # released meanwhile by another writer
            lowered = type_coerce(b.c.reserved, _Numeric()) - _bound(stx, amount)
            await stx.write(
                update(b)
                .where(b.c.org_key == org, b.c.key == key)
                .values(reserved=lowered, updated_at=now)
            )
            total += amount
        return total

    async def usage(
        self, tx: Transaction, *, org_id: str | None, key: str, action_id: str | None = None
    ) -> BudgetUsage:
        """The budget's total and the action's share."""
        stx = sql_transaction(tx, "SqlBudgetStore")
        org = _org_key(org_id)
        reserved = await self._reserved(stx, org, key)
        held = ZERO
        if action_id is not None:
            r = budget_reservations_table
            found = (
                await stx.execute(
                    select(r.c.amount).where(
                        r.c.org_key == org,
                        r.c.action_id == action_id,
                        r.c.key == key,
                        r.c.status == "held",
                    )
                )
            ).scalar()
            held = found if found is not None else ZERO
        return BudgetUsage(key, reserved, held)

    async def holds(
        self, tx: Transaction, *, org_id: str | None, action_id: str
    ) -> list[BudgetHold]:
        """The action's reservations, by key."""
        r = budget_reservations_table
        rows: Any = await sql_transaction(tx, "SqlBudgetStore").execute(
            select(r.c.key, r.c.amount, r.c.status)
            .where(r.c.org_key == _org_key(org_id), r.c.action_id == action_id)
            .order_by(r.c.key)
        )
        return [BudgetHold(action_id, k, a, s) for k, a, s in rows.all()]

    @staticmethod
    async def _reserved(stx: SqlTransaction, org: str, key: str) -> Decimal:
        b = budgets_table
        found = (
            await stx.execute(select(b.c.reserved).where(b.c.org_key == org, b.c.key == key))
        ).scalar()
        return found if found is not None else ZERO


# -- approvals --------------------------------------------------------------------------------


def _approval(row: Any, decisions: Sequence[ApprovalDecision]) -> ApprovalRequest:
    return ApprovalRequest(
        id=row["id"],
        org_id=_org_id(row["org_key"]),
        subject_type=row["subject_type"],
        subject_id=row["subject_id"],
        action=row["action"],
        arguments=row["arguments"],
        arguments_hash=row["arguments_hash"],
        reason=row["reason"],
        risk=row["risk"],
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        expires_at=row["expires_at"],
        quorum=row["quorum"],
        approvers=tuple(row["approvers"]),
        status=ApprovalStatus(row["status"]),
        decisions=tuple(decisions),
        decided_at=row["decided_at"],
        key=row["key"],
        metadata=row["metadata"],
        version=row["version"],
    )


class SqlApprovalStore:
    """`ApprovalStore` on `cs_approvals` and `cs_approval_decisions`."""

    __slots__ = ()

    async def _decisions(
        self, sql: SqlTransaction, request_ids: Sequence[str]
    ) -> dict[str, list[ApprovalDecision]]:
        out: dict[str, list[ApprovalDecision]] = {rid: [] for rid in request_ids}
        if not request_ids:
            return out
        d = approval_decisions_table
        result = await sql.execute(
            select(d)
            .where(d.c.request_id.in_(list(request_ids)))
            .order_by(d.c.decided_at, d.c.approver_id)
        )
        for r in result.mappings():
            out[r["request_id"]].append(
                ApprovalDecision(
                    r["request_id"], r["approver_id"], r["verdict"], r["comment"], r["decided_at"]
                )
            )
        return out

    async def add(self, tx: Transaction, request: ApprovalRequest) -> None:
        """Insert a request; `ConflictError` on a taken id or `(org, key)`."""
        await SqlTransaction.write(
            sql_transaction(tx, "SqlApprovalStore"),
            insert(approvals_table).values(
                id=request.id,
                org_key=_org_key(request.org_id),
                key=request.key,
                subject_type=request.subject_type,
                subject_id=request.subject_id,
                action=request.action,
                arguments=dict(request.arguments),
                arguments_hash=request.arguments_hash,
                reason=request.reason,
                risk=request.risk,
                requested_by=request.requested_by,
                requested_at=request.requested_at,
                expires_at=request.expires_at,
                quorum=request.quorum,
                approvers=list(request.approvers),
                status=request.status.value,
                decided_at=request.decided_at,
                metadata=dict(request.metadata),
                version=request.version,
            ),
        )

    async def _one(self, tx: Transaction, where: Any) -> ApprovalRequest | None:
        sql = sql_transaction(tx, "SqlApprovalStore")
        result = await sql.execute(select(approvals_table).where(where))
        row = result.mappings().first()
        if row is None:
            return None
        decisions = await self._decisions(sql, [row["id"]])
        return _approval(row, decisions[row["id"]])

    async def get(self, tx: Transaction, request_id: str) -> ApprovalRequest | None:
        """The request with its decisions, or `None`."""
        return await self._one(tx, approvals_table.c.id == request_id)

    async def get_by_key(
        self, tx: Transaction, org_id: str | None, key: str
    ) -> ApprovalRequest | None:
        """The request with this key in the org, or `None`."""
        t = approvals_table
        return await self._one(tx, and_(t.c.org_key == _org_key(org_id), t.c.key == key))

    async def save(
        self, tx: Transaction, request: ApprovalRequest, *, expected_version: int
    ) -> ApprovalRequest:
        """Compare-and-set update of status, decided time and metadata."""
        sql = sql_transaction(tx, "SqlApprovalStore")
        t = approvals_table
        count = await SqlTransaction.write(
            sql,
            update(t)
            .where(t.c.id == request.id, t.c.version == expected_version)
            .values(
                status=request.status.value,
                decided_at=request.decided_at,
                metadata=dict(request.metadata),
                version=expected_version + 1,
            ),
        )
        if count != 1:
            if await self.get(tx, request.id) is None:
                raise NotFoundError(f"approval request {request.id!r} does not exist")
            raise ConflictError(
                f"approval request {request.id!r} was decided concurrently; reload it and retry",
                details={"approval_id": request.id},
            )
        stored = await self.get(tx, request.id)
        assert stored is not None  # just updated in this transaction
        return stored

    async def add_decision(self, tx: Transaction, decision: ApprovalDecision) -> None:
        """Record a verdict; `ConflictError` if this approver already decided."""
        await SqlTransaction.write(
            sql_transaction(tx, "SqlApprovalStore"),
            insert(approval_decisions_table).values(
                request_id=decision.request_id,
                approver_id=decision.approver_id,
                verdict=decision.verdict,
                comment=decision.comment,
                decided_at=decision.decided_at,
            ),
        )

    async def find(
        self,
        tx: Transaction,
        *,
        org_id: str | None,
        status: ApprovalStatus | None = None,
        subject_type: str | None = None,
        limit: int = 100,
        newest_first: bool = False,
        before: tuple[datetime, str] | None = None,
    ) -> list[ApprovalRequest]:
        """Requests of one org, oldest first (or newest first, keyset `before`)."""
        sql = sql_transaction(tx, "SqlApprovalStore")
        t = approvals_table
        stmt = select(t).where(t.c.org_key == _org_key(org_id))
        if before is not None:
            stmt = stmt.where(_before(t.c.requested_at, t.c.id, before))
        if status is not None:
            stmt = stmt.where(t.c.status == status.value)
        if subject_type is not None:
            stmt = stmt.where(t.c.subject_type == subject_type)
        if newest_first:
            stmt = stmt.order_by(t.c.requested_at.desc(), t.c.id.desc()).limit(limit)
        else:
            stmt = stmt.order_by(t.c.requested_at, t.c.id).limit(limit)
        rows = list((await sql.execute(stmt)).mappings())
        decisions = await self._decisions(sql, [r["id"] for r in rows])
        return [_approval(r, decisions[r["id"]]) for r in rows]


def _before(at: Any, id_: Any, key: tuple[datetime, str]) -> ColumnElement[bool]:
    """Rows after `key` in `(at, id)` descending order (keyset pagination)."""
    return or_(at < key[0], and_(at == key[0], id_ < key[1]))


# -- memory -----------------------------------------------------------------------------------


class SqlAgentMemory:
    """`AgentMemory` in `cs_agent_memory`, with the same TTL, cap and summarisation rules as
    `InMemoryAgentMemory`.

    Args:
        engine: Your `AsyncEngine` (never disposed by this adapter).
        ttl_s: As for `InMemoryAgentMemory`.
        max_entries: As for `InMemoryAgentMemory`.
        summarize: As for `InMemoryAgentMemory`.
        clock: As for `InMemoryAgentMemory`.

    Raises:
        ConfigurationError: Invalid options.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl_s: float | None = None,
        max_entries: int | None = None,
        summarize: Summarizer | None = None,
        clock: Clock | None = None,
    ) -> None:
        check_memory_options(ttl_s, max_entries)
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.summarize = summarize
        self.clock: Clock = clock or SystemClock()

    def _where(self, org_id: str | None, session_id: str) -> Any:
        t = memory_table
        return and_(t.c.org_key == _org_key(org_id), t.c.session_id == session_id)

    async def load(self, session_id: str, *, org_id: str | None = None) -> list[Message]:
        """The session's live messages, oldest first."""
        t = memory_table
        stmt = select(t.c.message).where(self._where(org_id, session_id)).order_by(t.c.position)
        if self.ttl_s is not None:
            stmt = stmt.where(t.c.created_at > self.clock.now() - timedelta(seconds=self.ttl_s))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [message_from_dict(r[0]) for r in rows]

    async def append(
        self, session_id: str, messages: Sequence[Message], *, org_id: str | None = None
    ) -> None:
        """Add messages, then enforce `max_entries` (in one transaction)."""
        t = memory_table
        now = self.clock.now()
        async with self.engine.begin() as conn:
            if self.ttl_s is not None:
                await conn.execute(
                    delete(t).where(
                        self._where(org_id, session_id),
                        t.c.created_at <= now - timedelta(seconds=self.ttl_s),
                    )
                )
            if messages:
                await conn.execute(
                    insert(t),
                    [
                        {
                            "org_key": _org_key(org_id),
                            "session_id": session_id,
                            "message": m.to_dict(),
                            "created_at": now,
                        }
                        for m in messages
                    ],
                )
            if self.max_entries is None:
                return
            rows = (
                await conn.execute(
                    select(t.c.position, t.c.message, t.c.created_at)
                    .where(self._where(org_id, session_id))
                    .order_by(t.c.position)
                )
            ).all()
            if len(rows) <= self.max_entries:
                return
            entries = [MemoryEntry(message_from_dict(r[1]), r[2]) for r in rows]
            kept = await compact(entries, self.max_entries, self.summarize, now)
            await conn.execute(delete(t).where(self._where(org_id, session_id)))
            await conn.execute(
                insert(t),
                [
                    {
                        "org_key": _org_key(org_id),
                        "session_id": session_id,
                        "message": e.message.to_dict(),
                        "created_at": e.created_at,
                    }
                    for e in kept
                ],
            )

    async def clear(self, session_id: str, *, org_id: str | None = None) -> None:
        """Forget the session."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(memory_table).where(self._where(org_id, session_id)))
