"""A durable journey store on SQLAlchemy (SQLite or PostgreSQL).

```python
from contractspec.growth.journeys import JourneyEngine
from contractspec.growth.journeys_sql import SqlJourneyStore

store = SqlJourneyStore(engine)        # your AsyncEngine, never disposed by the store
await store.create_all()               # or add store.metadata to your Alembic env
journeys = JourneyEngine([onboarding], store)
```

Three tables, every row keyed by org (`org_key`, `""` without one) and every query filtered by it:

* `cs_growth_journey_events`: the product events tracks listen to, primary key
  `(org_key, event_id)`; `add_events` is `INSERT ... ON CONFLICT DO NOTHING`, so a replayed event
  is stored once, in any number of processes.
* `cs_growth_journey_enrollments`: one row per learner and track with the version they keep;
  `enroll` is an upsert that only lowers `enrolled_at`.
* `cs_growth_journey_steps`: one row per learner, track and step (start, completion, count).
  `save_steps` locks the learner's enrollment row (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite
  write transactions are `BEGIN IMMEDIATE`), reads the stored rows and writes the merge, so of
  any number of concurrent callers exactly one reports a step as newly completed.

Install with `pip install 'contractspec-growth[sql]'` (SQLite) or `[postgres]`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Collection, Sequence
from typing import TYPE_CHECKING, Any

from contractspec.core.errors import ConflictError
from contractspec.growth.journeys import (
    Enrollment,
    JourneyEvent,
    StepChanges,
    StepRecord,
    StepState,
    _min_time,
)

if TYPE_CHECKING:
    from sqlalchemy import MetaData, Row, Table
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["SqlJourneyStore", "journey_tables"]

EVENTS_TABLE = "cs_growth_journey_events"
ENROLLMENTS_TABLE = "cs_growth_journey_enrollments"
STEPS_TABLE = "cs_growth_journey_steps"
_CHUNK = 500


def journey_tables(metadata: MetaData | None = None) -> tuple[MetaData, Table, Table, Table]:
    """The three journey tables on `metadata` (a new one with core's naming convention by default).

    Pass the `metadata` of another growth store to keep every growth table on one `MetaData` for
    Alembic; calling it again on the same `MetaData` returns the tables already there.

    Returns:
        `(metadata, events, enrollments, steps)`.
    """
    from sqlalchemy import Column, Index, Integer, PrimaryKeyConstraint, String, Table

    from contractspec.core.sql import JsonType, UtcDateTime, new_metadata

    md = metadata if metadata is not None else new_metadata()
    if EVENTS_TABLE in md.tables:
        return md, md.tables[EVENTS_TABLE], md.tables[ENROLLMENTS_TABLE], md.tables[STEPS_TABLE]
    events = Table(
        EVENTS_TABLE,
        md,
        Column("org_key", String(200), nullable=False),
        Column("event_id", String(200), nullable=False),
        Column("type", String(200), nullable=False),
        Column("actor_id", String(200), nullable=True),
        Column("occurred_at", UtcDateTime, nullable=False),
        PrimaryKeyConstraint("org_key", "event_id"),
        Index(None, "org_key", "type", "actor_id"),
        comment="Product events learning tracks listen to (one row per org and event id).",
    )
    enrollments = Table(
        ENROLLMENTS_TABLE,
        md,
        Column("org_key", String(200), nullable=False),
        Column("learner_id", String(200), nullable=False),
        Column("track", String(200), nullable=False),
        Column("version", Integer, nullable=False),
        Column("enrolled_at", UtcDateTime, nullable=False),
        Column("credits", JsonType, nullable=False),
        Column("migrated_from", Integer, nullable=True),
        PrimaryKeyConstraint("org_key", "learner_id", "track"),
        Index(None, "track", "version", "org_key"),
        comment="Learners' enrollments in a version of a learning track.",
    )
    steps = Table(
        STEPS_TABLE,
        md,
        Column("org_key", String(200), nullable=False),
        Column("learner_id", String(200), nullable=False),
        Column("track", String(200), nullable=False),
        Column("step", String(200), nullable=False),
        Column("started_at", UtcDateTime, nullable=True),
        Column("completed_at", UtcDateTime, nullable=True),
        Column("event_count", Integer, nullable=False),
        PrimaryKeyConstraint("org_key", "learner_id", "track", "step"),
        Index(None, "track", "org_key"),
        comment="Learners' progress per step of their track version.",
    )
    return md, events, enrollments, steps


def _credits_json(credits: Any) -> dict[str, str]:
    return {k: v.isoformat() for k, v in sorted(credits.items())}


class SqlJourneyStore:
    """`JourneyStore` in `cs_growth_journey_*` tables (SQLite or PostgreSQL).

    Args:
        engine: Your `AsyncEngine` (never disposed by the store): SQLite made by core's
            `sqlite_engine()` (or configured by `configure_sqlite_engine`), or PostgreSQL.
        metadata: A `MetaData` to put the tables on (for your Alembic env); a new one by default.

    Attributes:
        metadata: The `MetaData` holding the tables.
        events_table, enrollments_table, steps_table: The tables.

    Raises:
        ImportError: SQLAlchemy is not installed, with the install command.
        ConfigurationError: An unsupported dialect or an unconfigured SQLite engine.
    """

    def __init__(self, engine: AsyncEngine, *, metadata: MetaData | None = None) -> None:
        try:
            import sqlalchemy  # noqa: F401
        except ImportError as exc:  # pragma: no cover - exercised by the isolation session
            raise ImportError(
                "SqlJourneyStore needs SQLAlchemy: pip install 'contractspec-growth[sql]'"
            ) from exc
        from contractspec.core.sql import SqlUnitOfWork

        self.engine = engine
        self._uow = SqlUnitOfWork(engine)
        (
            self.metadata,
            self.events_table,
            self.enrollments_table,
            self.steps_table,
        ) = journey_tables(metadata)

    async def create_all(self) -> None:
        """Create the tables if missing (use Alembic with `metadata` in production)."""
        from contractspec.core.sql import create_all

        await create_all(self.engine, self.metadata)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction from core's `SqlUnitOfWork`: `BEGIN IMMEDIATE` on SQLite (a
        read-then-write transaction cannot dead-lock on the lock upgrade between processes, and
        the writers of one process queue in order), a plain transaction on PostgreSQL."""
        tx = await self._uow.begin()
        try:
            yield tx.connection
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()

    def _insert(self, table: Table) -> Any:
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table)

    # -- events ---------------------------------------------------------------------------------

    async def add_events(self, events: Sequence[JourneyEvent]) -> int:
        """`INSERT ... ON CONFLICT (org_key, event_id) DO NOTHING`; return how many were new."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for e in events:
            rows.setdefault(
                (e.org_key, e.id),
                {
                    "org_key": e.org_key,
                    "event_id": e.id,
                    "type": e.type,
                    "actor_id": e.actor_id,
                    "occurred_at": e.occurred_at,
                },
            )
        if not rows:
            return 0
        t = self.events_table
        values = list(rows.values())
        new = 0
        async with self._write() as conn:
            for i in range(0, len(values), _CHUNK):
                stmt = (
                    self._insert(t)
                    .values(values[i : i + _CHUNK])
                    .on_conflict_do_nothing(index_elements=["org_key", "event_id"])
                    .returning(t.c.event_id)
                )
                new += len((await conn.execute(stmt)).all())
        return new

    async def events(
        self, org_id: str, types: Collection[str], *, actor_id: str | None = None
    ) -> list[JourneyEvent]:
        """Stored events of `org_id` with a type in `types` (by `actor_id` if given)."""
        from sqlalchemy import select

        t = self.events_table
        stmt = select(t).where(t.c.org_key == org_id, t.c.type.in_(sorted(types)))
        if actor_id is not None:
            stmt = stmt.where(t.c.actor_id == actor_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            JourneyEvent(r.event_id, r.type, r.actor_id, r.org_key or None, r.occurred_at)
            for r in rows
        ]

    # -- enrollments ----------------------------------------------------------------------------

    @staticmethod
    def _enrollment(row: Row[Any]) -> Enrollment:
        m = row._mapping
        return Enrollment(
            m["org_key"],
            m["learner_id"],
            m["track"],
            m["version"],
            m["enrolled_at"],
            {k: dt.datetime.fromisoformat(v) for k, v in (m["credits"] or {}).items()},
            m["migrated_from"],
        )

    async def enroll(self, enrollment: Enrollment) -> Enrollment:
        """Upsert that keeps the stored version and lowers `enrolled_at`; return the stored row."""
        from sqlalchemy import case

        t = self.enrollments_table
        stmt = self._insert(t).values(
            org_key=enrollment.org_id,
            learner_id=enrollment.learner_id,
            track=enrollment.track,
            version=enrollment.version,
            enrolled_at=enrollment.enrolled_at,
            credits=_credits_json(enrollment.credits),
            migrated_from=enrollment.migrated_from,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["org_key", "learner_id", "track"],
            set_={
                "enrolled_at": case(
                    (stmt.excluded.enrolled_at < t.c.enrolled_at, stmt.excluded.enrolled_at),
                    else_=t.c.enrolled_at,
                )
            },
        ).returning(*t.c)
        async with self._write() as conn:
            row = (await conn.execute(stmt)).one()
        return self._enrollment(row)

    async def enrollment(self, org_id: str, learner_id: str, track: str) -> Enrollment | None:
        """The learner's enrollment in `track`, or `None`."""
        from sqlalchemy import select

        t = self.enrollments_table
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(t).where(
                        t.c.org_key == org_id, t.c.learner_id == learner_id, t.c.track == track
                    )
                )
            ).first()
        return None if row is None else self._enrollment(row)

    async def enrollments(
        self, org_id: str | None, track: str, *, version: int | None = None
    ) -> list[Enrollment]:
        """Enrollments in `track`, sorted by org then learner."""
        from sqlalchemy import select

        t = self.enrollments_table
        stmt = select(t).where(t.c.track == track).order_by(t.c.org_key, t.c.learner_id)
        if org_id is not None:
            stmt = stmt.where(t.c.org_key == org_id)
        if version is not None:
            stmt = stmt.where(t.c.version == version)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [self._enrollment(r) for r in rows]

    # -- steps ----------------------------------------------------------------------------------

    async def _lock_enrollment(
        self, conn: AsyncConnection, enrollment: Enrollment
    ) -> Row[Any] | None:
        from sqlalchemy import select

        t = self.enrollments_table
        stmt = select(t.c.version).where(
            t.c.org_key == enrollment.org_id,
            t.c.learner_id == enrollment.learner_id,
            t.c.track == enrollment.track,
        )
        if self.engine.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        return (await conn.execute(stmt)).first()

    async def save_steps(self, enrollment: Enrollment, states: Sequence[StepState]) -> StepChanges:
        """Merge states under a lock on the enrollment row; report first starts/completions.

        Raises:
            ConflictError: The stored enrollment is on another version (migrated meanwhile).
        """
        from sqlalchemy import select

        s = self.steps_table
        started: list[str] = []
        completed: list[str] = []
        async with self._write() as conn:
            locked = await self._lock_enrollment(conn, enrollment)
            if locked is None or locked.version != enrollment.version:
                raise ConflictError(
                    f"learner {enrollment.learner_id!r} is not enrolled in "
                    f"{enrollment.track}@{enrollment.version} any more; recompute their progress.",
                    details={"field": "version"},
                )
            stored = {
                r.step: StepState(r.step, r.started_at, r.completed_at, r.event_count)
                for r in (
                    await conn.execute(
                        select(s.c.step, s.c.started_at, s.c.completed_at, s.c.event_count).where(
                            s.c.org_key == enrollment.org_id,
                            s.c.learner_id == enrollment.learner_id,
                            s.c.track == enrollment.track,
                        )
                    )
                ).all()
            }
            writes: list[dict[str, Any]] = []
            for state in states:
                old = stored.get(state.step) or StepState(state.step, None, None, 0)
                if old.started_at is None and state.started_at is not None:
                    started.append(state.step)
                if old.completed_at is None and state.completed_at is not None:
                    completed.append(state.step)
                merged = StepState(
                    state.step,
                    _min_time(old.started_at, state.started_at),
                    _min_time(old.completed_at, state.completed_at),
                    max(old.count, state.count),
                )
                if merged != old or state.step not in stored:
                    writes.append(
                        {
                            "org_key": enrollment.org_id,
                            "learner_id": enrollment.learner_id,
                            "track": enrollment.track,
                            "step": merged.step,
                            "started_at": merged.started_at,
                            "completed_at": merged.completed_at,
                            "event_count": merged.count,
                        }
                    )
            if writes:
                stmt = self._insert(s)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["org_key", "learner_id", "track", "step"],
                    set_={
                        "started_at": stmt.excluded.started_at,
                        "completed_at": stmt.excluded.completed_at,
                        "event_count": stmt.excluded.event_count,
                    },
                )
                await conn.execute(stmt, writes)
        return StepChanges(tuple(started), tuple(completed))

    async def steps(self, org_id: str, learner_id: str, track: str) -> list[StepState]:
        """Stored step states of a learner's enrollment."""
        from sqlalchemy import select

        s = self.steps_table
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(s)
                    .where(s.c.org_key == org_id, s.c.learner_id == learner_id, s.c.track == track)
                    .order_by(s.c.step)
                )
            ).all()
        return [StepState(r.step, r.started_at, r.completed_at, r.event_count) for r in rows]

    async def step_records(
        self, org_id: str | None, track: str, *, version: int | None = None
    ) -> list[StepRecord]:
        """Stored step states of every learner of `track`, sorted by org, learner, step."""
        from sqlalchemy import select

        s, e = self.steps_table, self.enrollments_table
        stmt = (
            select(s, e.c.version)
            .join(
                e,
                (e.c.org_key == s.c.org_key)
                & (e.c.learner_id == s.c.learner_id)
                & (e.c.track == s.c.track),
            )
            .where(s.c.track == track)
            .order_by(s.c.org_key, s.c.learner_id, s.c.step)
        )
        if org_id is not None:
            stmt = stmt.where(s.c.org_key == org_id)
        if version is not None:
            stmt = stmt.where(e.c.version == version)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            StepRecord(
                r.org_key,
                r.learner_id,
                r.track,
                r.version,
                StepState(r.step, r.started_at, r.completed_at, r.event_count),
            )
            for r in rows
        ]

    async def move(self, enrollment: Enrollment, from_version: int) -> bool:
        """Conditional `UPDATE ... WHERE version = :from_version`, then rewrite the step rows."""
        from sqlalchemy import delete, insert, update

        t, s = self.enrollments_table, self.steps_table
        where = (
            (t.c.org_key == enrollment.org_id)
            & (t.c.learner_id == enrollment.learner_id)
            & (t.c.track == enrollment.track)
        )
        async with self._write() as conn:
            moved = (
                await conn.execute(
                    update(t)
                    .where(where, t.c.version == from_version)
                    .values(
                        version=enrollment.version,
                        enrolled_at=enrollment.enrolled_at,
                        credits=_credits_json(enrollment.credits),
                        migrated_from=enrollment.migrated_from,
                    )
                    .returning(t.c.version)
                )
            ).first()
            if moved is None:
                return False
            await conn.execute(
                delete(s).where(
                    s.c.org_key == enrollment.org_id,
                    s.c.learner_id == enrollment.learner_id,
                    s.c.track == enrollment.track,
                )
            )
            if enrollment.credits:
                await conn.execute(
                    insert(s),
                    [
                        {
                            "org_key": enrollment.org_id,
                            "learner_id": enrollment.learner_id,
                            "track": enrollment.track,
                            "step": k,
                            "started_at": at,
                            "completed_at": at,
                            "event_count": 0,
                        }
                        for k, at in sorted(enrollment.credits.items())
                    ],
                )
        return True
