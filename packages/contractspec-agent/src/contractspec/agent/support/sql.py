"""SQL adapter (SQLite, PostgreSQL) for the support toolkit's ticket outcomes.

Install with `pip install 'contractspec-agent[support,sql]'` (or `[support,postgres]`). The table
`cs_support_feedback` lives on `contractspec.agent.support.sql.metadata` (core's naming
convention): add it to your Alembic `target_metadata`, or call `create_all(engine)` in tests.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.agent.support.sql needs SQLAlchemy: pip install "
        "'contractspec-agent[support,sql]' (SQLite) or 'contractspec-agent[support,postgres]'"
    ) from exc

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.agent.support.models import SupportFeedback, invalid
from contractspec.core import ConfigurationError
from contractspec.core.sql import JsonType, UtcDateTime, new_metadata
from contractspec.core.sql import create_all as _create_all

__all__ = ["SqlFeedbackStore", "create_all", "feedback_table", "metadata"]

#: The support toolkit's tables. Add it to your Alembic `target_metadata`.
metadata = new_metadata()

feedback_table = Table(
    "cs_support_feedback",
    metadata,
    Column("org_key", String(200), nullable=False),
    Column("ticket_id", String(200), nullable=False),
    Column("category", String(200), nullable=False),
    Column("resolved", Boolean, nullable=False),
    Column("escalated", Boolean, nullable=False),
    Column("csat", Integer, nullable=True),
    Column("cited", JsonType, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("org_key", "ticket_id"),
    Index(None, "org_key", "recorded_at"),
    comment="Support ticket outcomes (contractspec.agent.support): one row per tenant and ticket.",
)


async def create_all(engine: AsyncEngine) -> None:
    """Create the support tables (skipping existing ones). Use Alembic in production."""
    await _create_all(engine, metadata)


def _org_key(org_id: str | None) -> str:
    return "" if org_id is None else org_id


def _feedback(row: RowMapping) -> SupportFeedback:
    return SupportFeedback(
        ticket_id=row["ticket_id"],
        category=row["category"],
        resolved=bool(row["resolved"]),
        escalated=bool(row["escalated"]),
        csat=row["csat"],
        cited=tuple(row["cited"]),
        org_id=None if row["org_key"] == "" else row["org_key"],
        recorded_at=row["recorded_at"],
    )


class SqlFeedbackStore:
    """`FeedbackStore` on `cs_support_feedback`.

    Args:
        engine: Your `AsyncEngine` (never disposed by this adapter).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, feedback: SupportFeedback) -> None:
        """Store `feedback`, replacing the ticket's earlier outcome (an upsert: concurrent
        puts of one ticket leave exactly one row, the last to commit).

        Raises:
            SpecValidationError: `feedback` is not a `SupportFeedback`.
        """
        if not isinstance(feedback, SupportFeedback):
            raise invalid("FeedbackStore", "feedback", f"must be SupportFeedback, got {feedback!r}")
        t = feedback_table
        key = _org_key(feedback.org_id)
        row = {
            "org_key": key,
            "ticket_id": feedback.ticket_id,
            "category": feedback.category,
            "resolved": feedback.resolved,
            "escalated": feedback.escalated,
            "csat": feedback.csat,
            "cited": list(feedback.cited),
            "recorded_at": feedback.recorded_at,
        }
        dialect = self.engine.dialect.name
        upsert: Any
        if dialect == "postgresql":
            upsert = pg_insert(t).values(row)
        elif dialect == "sqlite":
            upsert = sqlite_insert(t).values(row)
        else:  # pragma: no cover - SQLite and PostgreSQL are the supported databases
            raise ConfigurationError(
                f"SqlFeedbackStore supports SQLite and PostgreSQL, not {dialect!r}",
                details={"field": "engine"},
            )
        changed = {k: upsert.excluded[k] for k in row if k not in ("org_key", "ticket_id")}
        stmt = upsert.on_conflict_do_update(index_elements=["org_key", "ticket_id"], set_=changed)
        async with self.engine.begin() as conn:
            await conn.execute(stmt)

    async def list(
        self,
        *,
        org_id: str | None,
        since: datetime | None = None,
        until: datetime | None = None,
        category: str | None = None,
    ) -> list[SupportFeedback]:
        """One tenant's outcomes in `[since, until)`, oldest first (ties by ticket id)."""
        t = feedback_table
        stmt = select(t).where(t.c.org_key == _org_key(org_id))
        if since is not None:
            stmt = stmt.where(t.c.recorded_at >= since)
        if until is not None:
            stmt = stmt.where(t.c.recorded_at < until)
        if category is not None:
            stmt = stmt.where(t.c.category == category)
        stmt = stmt.order_by(t.c.recorded_at, t.c.ticket_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_feedback(r) for r in rows]
