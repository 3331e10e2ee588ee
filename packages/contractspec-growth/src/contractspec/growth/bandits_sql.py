"""A durable decision log for the bandit policy service, on SQLAlchemy (SQLite or PostgreSQL).

```python
from contractspec.growth.bandits_sql import SqlDecisionLog

log = SqlDecisionLog(engine)            # your AsyncEngine, never disposed by the log
await log.create_all()                  # or add log.metadata to your Alembic env
service = BanditService(policy, log=log, ids=UuidGenerator())
```

Decisions live in `cs_growth_bandit_decisions`: the action distribution (`probabilities`, as a
JSON array of `[arm, p]` pairs so the policy's arm order survives PostgreSQL's JSONB) and the
`context` as JSON, `decided_at` as a UTC timestamp, and a `position` (auto-increment) that gives
the insertion order `decisions()` pages through. A reward is set with one conditional
`UPDATE ... SET reward = :r WHERE decision_id = :id AND reward IS NULL RETURNING ...`: the
database lets exactly one of any number of concurrent calls win, in any number of processes.

Install with `pip install 'contractspec-growth[sql]'` (SQLite) or `[postgres]`.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from contractspec.growth.bandits import (
    BanditDecision,
    _check_reward_value,
    _DecisionQuery,
    _duplicate_decision,
    _reward_conflict,
    _unknown_decision,
)

if TYPE_CHECKING:
    from sqlalchemy import MetaData, Row, Table
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["SqlDecisionLog", "decision_table"]

#: Name of the decision table.
DECISION_TABLE = "cs_growth_bandit_decisions"


def decision_table(metadata: MetaData | None = None) -> tuple[MetaData, Table]:
    """The `cs_growth_bandit_decisions` table on `metadata`.

    A new `MetaData` with core's naming convention by default; pass the `metadata` of another
    growth store (`SqlTrackingStore(engine).metadata`, `SqlRolloutStore(engine).metadata`) to keep
    every growth table on one `MetaData` for Alembic. Calling it again on the same `MetaData`
    returns the table already there.

    Columns: `position` (primary key, auto-increment: insertion order), `decision_id` (unique),
    `policy`, `arm`, `propensity`, `probabilities` (JSON `[[arm, p], ...]`), `context` (JSON array
    or NULL), `decided_at` (UTC), `reward` (NULL until rewarded). Indexes on
    `(policy, position)` and `decided_at`.
    """
    from sqlalchemy import BigInteger, Column, Double, Index, Integer, String, Table

    from contractspec.core.sql import JsonType, UtcDateTime, new_metadata

    md = metadata if metadata is not None else new_metadata()
    if DECISION_TABLE in md.tables:
        return md, md.tables[DECISION_TABLE]
    table = Table(
        DECISION_TABLE,
        md,
        Column(
            "position",
            BigInteger().with_variant(Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        Column("decision_id", String(200), nullable=False, unique=True),
        Column("policy", String(200), nullable=False),
        Column("arm", String(200), nullable=False),
        Column("propensity", Double, nullable=False),
        Column("probabilities", JsonType, nullable=False),
        Column("context", JsonType, nullable=True),
        Column("decided_at", UtcDateTime, nullable=False),
        Column("reward", Double, nullable=True),
        Index(None, "policy", "position"),
        Index(None, "decided_at"),
        comment="Bandit decisions with their propensities and (once) their rewards.",
    )
    return md, table


class SqlDecisionLog:
    """`DecisionLog` in `cs_growth_bandit_decisions` (SQLite or PostgreSQL).

    Every method runs in its own short transaction on `engine`. `record` is
    `INSERT ... ON CONFLICT (decision_id) DO NOTHING RETURNING position`; `set_reward` is a
    conditional `UPDATE ... WHERE reward IS NULL RETURNING ...`, never read-then-write.

    Insertion order is the order of `position`. On PostgreSQL, positions are taken from a
    sequence when rows are inserted, so a decision committed late by a slow concurrent
    transaction can carry a smaller position than one already read: page with `after` over
    decisions older than your longest transaction (e.g. `until=now - 1 minute`) when that matters.

    Args:
        engine: Your `AsyncEngine` (never disposed by the log).
        metadata: A `MetaData` to put the table on (for your Alembic env); a new one by default.

    Attributes:
        metadata: The `MetaData` holding the table.
        table: The `cs_growth_bandit_decisions` table.

    Raises:
        ImportError: SQLAlchemy is not installed, with the install command.
    """

    def __init__(self, engine: AsyncEngine, *, metadata: MetaData | None = None) -> None:
        try:
            import sqlalchemy  # noqa: F401
        except ImportError as exc:  # pragma: no cover - exercised by the isolation session
            raise ImportError(
                "SqlDecisionLog needs SQLAlchemy: pip install 'contractspec-growth[sql]'"
            ) from exc
        self.engine = engine
        self.metadata, self.table = decision_table(metadata)

    async def create_all(self) -> None:
        """Create the table if missing (use Alembic with `metadata` in production)."""
        from contractspec.core.sql import create_all

        await create_all(self.engine, self.metadata)

    @staticmethod
    def _row(decision: BanditDecision) -> dict[str, Any]:
        return {
            "decision_id": decision.decision_id,
            "policy": decision.policy,
            "arm": decision.arm,
            "propensity": decision.propensity,
            "probabilities": [[arm, p] for arm, p in decision.probabilities.items()],
            "context": None if decision.context is None else list(decision.context),
            "decided_at": decision.decided_at,
            "reward": decision.reward,
        }

    @staticmethod
    def _decision(row: Row[Any]) -> BanditDecision:
        m = row._mapping
        return BanditDecision(
            decision_id=m["decision_id"],
            policy=m["policy"],
            arm=m["arm"],
            propensity=m["propensity"],
            probabilities={str(arm): float(p) for arm, p in m["probabilities"]},
            context=None if m["context"] is None else tuple(float(v) for v in m["context"]),
            decided_at=m["decided_at"],
            reward=m["reward"],
        )

    def _columns(self) -> list[Any]:
        return [c for c in self.table.c if c.name != "position"]

    async def record(self, decision: BanditDecision) -> None:
        """Insert a new decision.

        Raises:
            ConflictError: The decision id is already logged.
        """
        t = self.table
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt: Any = pg_insert(t)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(t)
        stmt = (
            stmt.values(self._row(decision))
            .on_conflict_do_nothing(index_elements=["decision_id"])
            .returning(t.c.position)
        )
        async with self.engine.begin() as conn:
            inserted = (await conn.execute(stmt)).first()
        if inserted is None:
            raise _duplicate_decision(decision.decision_id)

    async def get(self, decision_id: str) -> BanditDecision:
        """Select one decision.

        Raises:
            NotFoundError: Unknown decision id.
        """
        from sqlalchemy import select

        t = self.table
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(*self._columns()).where(t.c.decision_id == decision_id))
            ).first()
        if row is None:
            raise _unknown_decision(decision_id)
        return self._decision(row)

    async def set_reward(self, decision_id: str, reward: float) -> BanditDecision:
        """Set the reward with one conditional `UPDATE ... WHERE reward IS NULL RETURNING ...`.

        Raises:
            SpecValidationError: `reward` is not a finite number.
            NotFoundError: Unknown decision id.
            ConflictError: The decision already has a reward (also when a concurrent call won).
        """
        from sqlalchemy import select, update

        value = _check_reward_value(reward)
        t = self.table
        stmt = (
            update(t)
            .where(t.c.decision_id == decision_id, t.c.reward.is_(None))
            .values(reward=value)
            .returning(*self._columns())
        )
        existing = None
        async with self.engine.begin() as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                # Nothing updated: say why (read committed, so a concurrent winner is visible).
                existing = (
                    await conn.execute(select(t.c.reward).where(t.c.decision_id == decision_id))
                ).first()
        if row is not None:
            return self._decision(row)
        if existing is None:
            raise _unknown_decision(decision_id)
        raise _reward_conflict(decision_id, existing.reward)

    async def decisions(
        self,
        policy: str | None = None,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        rewarded: bool | None = None,
        after: str | None = None,
        limit: int | None = None,
    ) -> list[BanditDecision]:
        """Decisions in insertion order (`ORDER BY position`), filtered in SQL.

        See `DecisionLog.decisions` for the filters; `after` is a keyset cursor (`position >`
        the position of that decision), so pages stay cheap however deep.

        Raises:
            SpecValidationError: A bad filter.
            NotFoundError: `after` is not a logged decision id.
        """
        from sqlalchemy import select

        query = _DecisionQuery.of(policy, since, until, rewarded, after, limit)
        t = self.table
        stmt = select(*self._columns()).order_by(t.c.position)
        if query.policy is not None:
            stmt = stmt.where(t.c.policy == query.policy)
        if query.since is not None:
            stmt = stmt.where(t.c.decided_at >= query.since)
        if query.until is not None:
            stmt = stmt.where(t.c.decided_at < query.until)
        if query.rewarded is not None:
            stmt = stmt.where(t.c.reward.is_not(None) if query.rewarded else t.c.reward.is_(None))
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        async with self.engine.connect() as conn:
            if query.after is not None:
                cursor = (
                    await conn.execute(select(t.c.position).where(t.c.decision_id == query.after))
                ).first()
                if cursor is None:
                    raise _unknown_decision(query.after, "after")
                stmt = stmt.where(t.c.position > cursor.position)
            rows = (await conn.execute(stmt)).all()
        return [self._decision(row) for row in rows]
