"""Durable outcomes and labels of the decision loop, on SQLAlchemy (SQLite or PostgreSQL).

```python
from contractspec.growth.decisions_sql import SqlOutcomeStore

outcomes = SqlOutcomeStore(engine)      # your AsyncEngine, never disposed by the store
await outcomes.create_all()             # or add outcomes.metadata to your Alembic env
loop = DecisionLoop(service, reward_model, outcomes=outcomes)
```

Two tables: `cs_growth_decision_outcomes` (primary key `event_id`, so an event counts once even
when several consumers deliver it at the same time: `INSERT ... ON CONFLICT DO NOTHING`) and
`cs_growth_decision_labels` (primary key `decision_id`: one label per decision). A `position`
column (auto-increment) gives the insertion order.

Install with `pip install 'contractspec-growth[sql]'` (SQLite) or `[postgres]`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from contractspec.growth.decisions import Label, Outcome, _label_conflict

if TYPE_CHECKING:
    from sqlalchemy import MetaData, Table
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SqlOutcomeStore", "outcome_tables"]

OUTCOME_TABLE = "cs_growth_decision_outcomes"
LABEL_TABLE = "cs_growth_decision_labels"


def outcome_tables(metadata: MetaData | None = None) -> tuple[MetaData, Table, Table]:
    """The outcome and label tables on `metadata` (a new core-convention `MetaData` by default;
    pass another growth store's to keep every growth table on one `MetaData` for Alembic)."""
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

    async def create_all(self) -> None:
        """Create the tables if missing (use Alembic with `metadata` in production)."""
        from contractspec.core.sql import create_all

        await create_all(self.engine, self.metadata)

    def _insert(self, table: Table, row: dict[str, Any], key: str) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(table)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
        return (
            stmt.values(row)
            .on_conflict_do_nothing(index_elements=[key])
            .returning(table.c.position)
        )

    async def add(self, outcome: Outcome) -> bool:
        """Insert an outcome; `False` when its event id is already recorded."""
        row = {
            "event_id": outcome.event_id,
            "decision_id": outcome.decision_id,
            "event": outcome.event,
            "value": outcome.value,
            "guardrail": outcome.guardrail,
            "occurred_at": outcome.occurred_at,
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
                t.c.event_id, t.c.decision_id, t.c.event, t.c.value, t.c.guardrail, t.c.occurred_at
            )
            .where(t.c.decision_id == decision_id)
            .order_by(t.c.position)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            Outcome(r.event_id, r.decision_id, r.event, r.value, bool(r.guardrail), r.occurred_at)
            for r in rows
        ]

    async def add_label(self, label: Label) -> None:
        """Insert a label.

        Raises:
            ConflictError: The decision is already labelled.
        """
        row = {
            "decision_id": label.decision_id,
            "arm": label.arm,
            "actor": label.actor,
            "reason": label.reason,
            "labelled_at": label.labelled_at,
        }
        async with self.engine.begin() as conn:
            inserted = (
                await conn.execute(self._insert(self.label_table, row, "decision_id"))
            ).first()
        if inserted is None:
            raise _label_conflict(label.decision_id)

    async def labels(self, decision_ids: Iterable[str] | None = None) -> list[Label]:
        """Labels in insertion order (only these decisions' when `decision_ids` is given)."""
        from sqlalchemy import select

        t = self.label_table
        stmt = select(t.c.decision_id, t.c.arm, t.c.actor, t.c.reason, t.c.labelled_at).order_by(
            t.c.position
        )
        if decision_ids is not None:
            wanted = list(decision_ids)
            if not wanted:
                return []
            stmt = stmt.where(t.c.decision_id.in_(wanted))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [Label(r.decision_id, r.arm, r.actor, r.reason, r.labelled_at) for r in rows]
