"""Durable outcomes and labels of the decision loop, on SQLAlchemy (SQLite or PostgreSQL).

```python
from contractspec.growth.decisions_sql import SqlOutcomeStore

outcomes = SqlOutcomeStore(engine)      # your AsyncEngine, never disposed by the store
await outcomes.create_all()             # or add outcomes.metadata to your Alembic env
loop = DecisionLoop(service, reward_model, outcomes=outcomes)
```

Three tables: `cs_growth_decision_outcomes` (unique `event_id`, so an event counts once even
when several consumers deliver it at the same time: `INSERT ... ON CONFLICT DO NOTHING`),
`cs_growth_decision_labels` (unique `decision_id`: one label per decision) and
`cs_growth_decision_states` (one row per decision: its tenant `org_id` and its status, `open`,
`settled` or `overridden`; settling and overriding are conditional upserts on this row, so a
decision is settled or overridden, never both). A `position` column (auto-increment) gives the
insertion order.

Install with `pip install 'contractspec-growth[sql]'` (SQLite) or `[postgres]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from contractspec.growth.decisions import (
    DecisionStatus,
    Label,
    Outcome,
    _check_org,
    _label_conflict,
    _settled_conflict,
)

if TYPE_CHECKING:
    from sqlalchemy import MetaData, Table
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SqlOutcomeStore", "outcome_tables"]

OUTCOME_TABLE = "cs_growth_decision_outcomes"
LABEL_TABLE = "cs_growth_decision_labels"
STATE_TABLE = "cs_growth_decision_states"


def outcome_tables(metadata: MetaData | None = None) -> tuple[MetaData, Table, Table]:
    """The outcome and label tables on `metadata` (a new core-convention `MetaData` by default;
    pass another growth store's to keep every growth table on one `MetaData` for Alembic).
    The per-decision state table is added to the same `MetaData` (`md.tables[STATE_TABLE]`)."""
    from sqlalchemy import (
        BigInteger,
        Boolean,
        Column,
        Double,
        Index,
        Integer,
        String,
        Table,
        Text,
    )

    from contractspec.core.sql import UtcDateTime, new_metadata

    md = metadata if metadata is not None else new_metadata()
    if OUTCOME_TABLE in md.tables:
        return md, md.tables[OUTCOME_TABLE], md.tables[LABEL_TABLE]
    Table(
        STATE_TABLE,
        md,
        Column("decision_id", String(200), primary_key=True),
        Column("org_id", String(200), nullable=True),
        Column("status", String(16), nullable=False),
        comment="Tenant and status (open, settled, overridden) of each decision of a loop.",
    )
    position = BigInteger().with_variant(Integer(), "sqlite")
    outcomes = Table(
        OUTCOME_TABLE,
        md,
        Column("position", position, primary_key=True, autoincrement=True),
        Column("event_id", String(200), nullable=False, unique=True),
        Column("decision_id", String(200), nullable=False),
        Column("event", String(200), nullable=False),
        Column("value", Double, nullable=False),
        Column("guardrail", Boolean, nullable=False),
        Column("occurred_at", UtcDateTime, nullable=False),
        Column("org_id", String(200), nullable=True),
        Index(None, "decision_id", "position"),
        comment="Business events joined to bandit decisions (one row per event id).",
    )
    labels = Table(
        LABEL_TABLE,
        md,
        Column("position", position, primary_key=True, autoincrement=True),
        Column("decision_id", String(200), nullable=False, unique=True),
        Column("arm", String(200), nullable=False),
        Column("actor", String(200), nullable=False),
        Column("reason", Text, nullable=False),
        Column("labelled_at", UtcDateTime, nullable=False),
        Column("org_id", String(200), nullable=True),
        comment="Human overrides of bandit decisions (one per decision).",
    )
    return md, outcomes, labels


class SqlOutcomeStore:
    """`OutcomeStore` in `cs_growth_decision_outcomes` and `cs_growth_decision_labels`.

    Args:
        engine: Your `AsyncEngine` (never disposed by the store).
        metadata: A `MetaData` to put the tables on; a new one by default.

    Raises:
        ImportError: SQLAlchemy is not installed, with the install command.
    """

    def __init__(self, engine: AsyncEngine, *, metadata: MetaData | None = None) -> None:
        try:
            import sqlalchemy  # noqa: F401
        except ImportError as exc:  # pragma: no cover - exercised by the isolation session
            raise ImportError(
                "SqlOutcomeStore needs SQLAlchemy: pip install 'contractspec-growth[sql]'"
            ) from exc
        self.engine = engine
        self.metadata, self.outcome_table, self.label_table = outcome_tables(metadata)
        self.state_table = self.metadata.tables[STATE_TABLE]

    async def create_all(self) -> None:
        """Create the tables if missing (use Alembic with `metadata` in production)."""
        from contractspec.core.sql import create_all

        await create_all(self.engine, self.metadata)

    def _dialect_insert(self, table: Table) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    def _insert(self, table: Table, row: dict[str, Any], key: str) -> Any:
        return (
            self._dialect_insert(table)
            .values(row)
            .on_conflict_do_nothing(index_elements=[key])
            .returning(table.c.position)
        )

    def _set_status(
        self, decision_id: str, status: DecisionStatus, *allowed: DecisionStatus
    ) -> Any:
        """One upsert: a new row with `status`, or the row's status set to `status` when it is
        one of `allowed`; returns a row only when it wrote."""
        t = self.state_table
        stmt = self._dialect_insert(t).values(
            decision_id=decision_id, org_id=None, status=status.value
        )
        return stmt.on_conflict_do_update(
            index_elements=[t.c.decision_id],
            set_={"status": status.value},
            where=t.c.status.in_([a.value for a in allowed]),
        ).returning(t.c.decision_id)

    async def register(self, decision_id: str, org_id: str | None) -> None:
        """Record a new decision's tenant (status `open`, or the status a row written before
        registration holds)."""
        row = {"decision_id": decision_id, "org_id": _check_org(org_id), "status": "open"}
        stmt = (
            self._dialect_insert(self.state_table)
            .values(row)
            .on_conflict_do_update(index_elements=["decision_id"], set_={"org_id": row["org_id"]})
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def org_of(self, decision_id: str) -> str | None:
        """The decision's tenant (`None` when none was recorded)."""
        from sqlalchemy import select

        t = self.state_table
        async with self.engine.connect() as conn:
            org = (
                await conn.execute(select(t.c.org_id).where(t.c.decision_id == decision_id))
            ).scalar()
        return None if org is None else str(org)

    async def claim_settlement(self, decision_id: str) -> bool:
        """`settled` unless `overridden` (one conditional upsert)."""
        stmt = self._set_status(
            decision_id, DecisionStatus.SETTLED, DecisionStatus.OPEN, DecisionStatus.SETTLED
        )
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).first() is not None

    async def release_settlement(self, decision_id: str) -> None:
        """`settled` back to `open`."""
        from sqlalchemy import update

        t = self.state_table
        stmt = (
            update(t)
            .where(t.c.decision_id == decision_id, t.c.status == DecisionStatus.SETTLED.value)
            .values(status=DecisionStatus.OPEN.value)
        )
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def add(self, outcome: Outcome) -> bool:
        """Insert an outcome; `False` when its event id is already recorded."""
        row = {
            "event_id": outcome.event_id,
            "decision_id": outcome.decision_id,
            "event": outcome.event,
            "value": outcome.value,
            "guardrail": outcome.guardrail,
            "occurred_at": outcome.occurred_at,
            "org_id": outcome.org_id,
        }
        async with self.engine.begin() as conn:
            inserted = (
                await conn.execute(self._insert(self.outcome_table, row, "event_id"))
            ).first()
        return inserted is not None

    async def outcomes(self, decision_id: str) -> list[Outcome]:
        """A decision's outcomes in insertion order."""
        from sqlalchemy import select

        t = self.outcome_table
        stmt = (
            select(
                t.c.event_id,
                t.c.decision_id,
                t.c.event,
                t.c.value,
                t.c.guardrail,
                t.c.occurred_at,
                t.c.org_id,
            )
            .where(t.c.decision_id == decision_id)
            .order_by(t.c.position)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Outcome(
                r.event_id,
                r.decision_id,
                r.event,
                r.value,
                bool(r.guardrail),
                r.occurred_at,
                r.org_id,
            )
            for r in rows
        ]

    async def add_label(self, label: Label, *, override: bool = False) -> None:
        """Insert a label; with `override`, in the same transaction mark the decision
        `overridden` (a conditional upsert: only from `open`).

        Raises:
            ConflictError: The decision is already labelled, or (`override`) already settled.
        """
        row = {
            "decision_id": label.decision_id,
            "arm": label.arm,
            "actor": label.actor,
            "reason": label.reason,
            "labelled_at": label.labelled_at,
            "org_id": label.org_id,
        }
        async with self.engine.begin() as conn:
            inserted = (
                await conn.execute(self._insert(self.label_table, row, "decision_id"))
            ).first()
            if inserted is None:
                raise _label_conflict(label.decision_id)
            if override:
                stmt = self._set_status(
                    label.decision_id, DecisionStatus.OVERRIDDEN, DecisionStatus.OPEN
                )
                if (await conn.execute(stmt)).first() is None:
                    raise _settled_conflict(label.decision_id)  # rolls the label back

    async def labels(self, decision_ids: Iterable[str] | None = None) -> list[Label]:
        """Labels in insertion order (only these decisions' when `decision_ids` is given)."""
        from sqlalchemy import select

        t = self.label_table
        stmt = select(
            t.c.decision_id, t.c.arm, t.c.actor, t.c.reason, t.c.labelled_at, t.c.org_id
        ).order_by(t.c.position)
        if decision_ids is not None:
            wanted = list(decision_ids)
            if not wanted:
                return []
            stmt = stmt.where(t.c.decision_id.in_(wanted))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Label(r.decision_id, r.arm, r.actor, r.reason, r.labelled_at, r.org_id) for r in rows
        ]
