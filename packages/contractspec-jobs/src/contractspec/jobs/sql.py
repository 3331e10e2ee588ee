"""Durable job queue and schedule store on SQLAlchemy: SQLite (embedded) and PostgreSQL (scale).

Install with `pip install 'contractspec-jobs[sql]'` (SQLite) or `'contractspec-jobs[postgres]'`.

```python
from contractspec.core.sql import sqlite_engine
from contractspec.jobs.sql import SqlJobQueue

engine = sqlite_engine("app.db")
queue = SqlJobQueue(engine, registry)
await queue.create_all()
```

Tables `cs_jobs` and `cs_job_schedules` live on `contractspec.jobs.sql.metadata` (with core's
`NAMING_CONVENTION`): add it to your Alembic `target_metadata`.

On PostgreSQL, many workers on many machines lease with `FOR UPDATE SKIP LOCKED` (no two workers
ever get the same job, and none waits for another's lock), enqueues `NOTIFY` the `cs_jobs` channel
and idle workers `LISTEN` on it, with short polling as the fallback. On SQLite, writers are
serialised by `BEGIN IMMEDIATE`; run workers in one process (or a few on one machine).
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.jobs.sql needs SQLAlchemy: pip install 'contractspec-jobs[sql]' (SQLite) "
        "or 'contractspec-jobs[postgres]' (PostgreSQL)"
    ) from exc

import asyncio
import builtins
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contractspec.core import Clock, ConfigurationError, IdGenerator, SpecRegistry, Transaction
from contractspec.core._log import get_logger
from contractspec.core.sql import (
    JsonType,
    SqlTransaction,
    SqlUnitOfWork,
    UtcDateTime,
    WriteBuffer,
    autocommit_statement,
    create_all,
    new_metadata,
)
from contractspec.jobs._health import describe_error
from contractspec.jobs.errors import LeaseLostError
from contractspec.jobs.queue import (
    Job,
    JobFactory,
    JobStatus,
    NewJob,
    check_limit,
    check_status,
    lease_error,
)
from contractspec.jobs.specs import JobSpec

__all__ = [
    "NOTIFY_CHANNEL",
    "SqlJobQueue",
    "SqlScheduleStore",
    "jobs_table",
    "metadata",
    "schedules_table",
]

_log = get_logger(__name__)

#: PostgreSQL channel that enqueues notify and idle workers listen on.
NOTIFY_CHANNEL = "cs_jobs"

#: The tables of contractspec-jobs. Add it to your Alembic `target_metadata`.
metadata: MetaData = new_metadata()

_LEASABLE = ("queued", "failed")

jobs_table = Table(
    "cs_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("type", String(200), nullable=False),
    Column("queue", String(100), nullable=False),
    Column("payload", JsonType, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("scheduled_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("leased_until", UtcDateTime, nullable=True),
    Column("lease_token", String(64), nullable=True),
    Column("worker_id", String(200), nullable=True),
    Column("unique_key", String(200), nullable=True),
    Column("org_id", String(200), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("result", JsonType, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    comment="Background jobs (contractspec-jobs): queued, running, finished and dead-lettered.",
)
# Dequeue order per queue, only over leasable rows, so a large backlog of finished jobs costs nothing
# and a large backlog of due jobs is read in index order (no sort).
Index(
    "ix_cs_jobs_dequeue",
    jobs_table.c.queue,
    jobs_table.c.priority.desc(),
    jobs_table.c.scheduled_at,
    jobs_table.c.id,
    postgresql_where=jobs_table.c.status.in_(_LEASABLE),
    sqlite_where=jobs_table.c.status.in_(_LEASABLE),
)
Index(
    "ix_cs_jobs_leases",
    jobs_table.c.leased_until,
    postgresql_where=jobs_table.c.status == "running",
    sqlite_where=jobs_table.c.status == "running",
)
Index("ix_cs_jobs_status_created_at", jobs_table.c.status, jobs_table.c.created_at)
#: The tenant a unique key belongs to: `org_id`, or `''` for jobs without one.
_org_scope = func.coalesce(jobs_table.c.org_id, literal_column("''"))
_has_key = jobs_table.c.unique_key.is_not(None)
# A unique key is unique within its org (jobs without an org form one scope of their own), so two
# tenants enqueueing `remind:{invoice_id}` each get their own job. Partial: keyless jobs (most of
# them) cost this index nothing.
Index(
    "uq_cs_jobs_org_unique_key",
    _org_scope,
    jobs_table.c.unique_key,
    unique=True,
    postgresql_where=_has_key,
    sqlite_where=_has_key,
)
Index("ix_cs_jobs_type_created_at", jobs_table.c.type, jobs_table.c.created_at)

schedules_table = Table(
    "cs_job_schedules",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("next_fire_at", UtcDateTime, nullable=True),
    Column("revision", BigInteger, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    comment="Next fire time of each schedule (contractspec-jobs scheduler).",
)

_J = jobs_table.c


def _job(row: Row[Any]) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        type=m["type"],
        payload=m["payload"],
        status=JobStatus(m["status"]),
        queue=m["queue"],
        priority=m["priority"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        scheduled_at=m["scheduled_at"],
        created_at=m["created_at"],
        leased_until=m["leased_until"],
        lease_token=m["lease_token"],
        worker_id=m["worker_id"],
        unique_key=m["unique_key"],
        org_id=m["org_id"],
        last_error=m["last_error"],
        result=m["result"],
        finished_at=m["finished_at"],
    )


def _row(new: NewJob) -> dict[str, Any]:
    return {
        "id": new.id,
        "type": new.type,
        "queue": new.queue,
        "payload": new.payload,
        "status": "queued",
        "priority": new.priority,
        "attempts": 0,
        "max_attempts": new.max_attempts,
        "scheduled_at": new.scheduled_at,
        "created_at": new.created_at,
        "unique_key": new.unique_key,
        "org_id": new.org_id,
    }


_held = and_(
    _J.id == bindparam("b_id"),
    _J.lease_token == bindparam("b_token"),
    _J.status == "running",
)
_COMPLETE = (
    update(jobs_table)
    .where(_held)
    .values(
        status="succeeded",
        result=bindparam("b_result", type_=JsonType),
        finished_at=bindparam("b_now", type_=UtcDateTime()),
        leased_until=None,
        lease_token=None,
    )
)


# One statement for any number of jobs (arrays, not a VALUES list), so it is prepared once.
_COMPLETE_MANY = text(
    "UPDATE cs_jobs SET status = 'succeeded', result = v.result, finished_at = :now, "
    "leased_until = NULL, lease_token = NULL "
    "FROM unnest(CAST(:ids AS text[]), CAST(:tokens AS text[]), "
    "CAST(CAST(:results AS text[]) AS jsonb[])) AS v(id, token, result) "
    "WHERE cs_jobs.id = v.id AND cs_jobs.lease_token = v.token AND cs_jobs.status = 'running' "
    "RETURNING cs_jobs.id"
).bindparams(bindparam("now", type_=UtcDateTime()))

_HEARTBEAT_MANY = text(
    "UPDATE cs_jobs SET leased_until = :until "
    "FROM unnest(CAST(:ids AS text[]), CAST(:tokens AS text[])) AS v(id, token) "
    "WHERE cs_jobs.id = v.id AND cs_jobs.lease_token = v.token AND cs_jobs.status = 'running' "
    "RETURNING cs_jobs.id"
).bindparams(bindparam("until", type_=UtcDateTime()))

#: Up to this many jobs, an enqueue without `tx` on PostgreSQL is one multi-row statement (the
#: protocol allows 65,535 parameters); larger batches go through one transaction of `executemany`.
_AUTOCOMMIT_ROWS = 500

_INSERT_SQL = (
    "INSERT INTO cs_jobs (id, type, queue, payload, status, priority, attempts, max_attempts, "
    "scheduled_at, created_at, unique_key, org_id) VALUES (%(id)s, %(type)s, %(queue)s, "
    "%(payload)s, 'queued', %(priority)s, 0, %(max_attempts)s, %(scheduled_at)s, "
    "%(created_at)s, %(unique_key)s, %(org_id)s) "
    "ON CONFLICT (coalesce(org_id, ''), unique_key) WHERE unique_key IS NOT NULL DO NOTHING "
    "RETURNING id"
)
#: One job, one round trip: the insert and the wake-up of idle workers commit together.
_ENQUEUE_NOTIFY_SQL = (
    f"WITH ins AS ({_INSERT_SQL}) SELECT id, pg_notify('{NOTIFY_CHANNEL}', '') FROM ins"
)
_ENQUEUE_SQL = f"WITH ins AS ({_INSERT_SQL}) SELECT id FROM ins"

_lease_cache: dict[bool, Any] = {}


def _lease_statement(by_queue: bool) -> Any:
    """The (cached) lease statement: one UPDATE over the next due ids, locked SKIP LOCKED."""
    stmt = _lease_cache.get(by_queue)
    if stmt is None:
        candidates = select(_J.id).where(
            _J.status.in_(_LEASABLE), _J.scheduled_at <= bindparam("b_now", type_=UtcDateTime())
        )
        if by_queue:
            candidates = candidates.where(_J.queue == bindparam("b_queue"))
        candidates = (
            candidates.order_by(_J.priority.desc(), _J.scheduled_at, _J.id)
            .limit(bindparam("b_limit", type_=Integer()))
            .with_for_update(skip_locked=True)
        )
        stmt = _lease_cache[by_queue] = (
            update(jobs_table)
            .where(_J.id.in_(candidates.scalar_subquery()))
            .values(
                status="running",
                attempts=_J.attempts + 1,
                leased_until=bindparam("b_until", type_=UtcDateTime()),
                lease_token=bindparam("b_token"),
                worker_id=bindparam("b_worker"),
            )
            .returning(*jobs_table.c)
        )
    return stmt


class SqlJobQueue:
    """A durable `JobQueue` on SQLite or PostgreSQL (tables `cs_jobs`, `cs_job_schedules`).

    Enqueue with `tx=` (a `SqlTransaction`, as handlers get from `ctx.tx`) writes the job in the
    caller's transaction, so it exists iff the transaction commits. Without `tx`, each call runs
    in its own transaction.

    Args:
        engine: Your `AsyncEngine` (SQLite configured by `configure_sqlite_engine`, or PostgreSQL
            via psycopg). Never disposed by the queue.
        specs: `SpecRegistry` or job specs validating payloads (`None`: no validation).
        clock: Time source. Lease expiry compares the clocks of workers, so keep machines in sync
            (NTP); skew shorter than the lease is harmless.
        ids: Id source (UUIDv7 by default, which keeps the primary-key index compact).
        notify: On PostgreSQL, `NOTIFY` workers when jobs are enqueued (default `True`).

    Raises:
        ConfigurationError: Unsupported dialect or an unconfigured SQLite engine.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        specs: SpecRegistry | Sequence[JobSpec[Any]] | None = None,
        *,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        notify: bool = True,
    ) -> None:
        self.engine = engine
        self.unit_of_work = SqlUnitOfWork(engine)
        self._factory = JobFactory(specs, clock, ids)
        self._pg = engine.dialect.name == "postgresql"
        self._psycopg = self._pg and engine.dialect.driver == "psycopg"
        self.notify = notify and self._pg
        self._local = asyncio.Event()
        self._listener: AsyncConnection | None = None
        self._listen_lock = asyncio.Lock()
        self._listen_broken = False

    @property
    def clock(self) -> Clock:
        """The queue's clock."""
        return self._factory.clock

    @property
    def factory(self) -> JobFactory:
        """Validation and defaults shared with the other adapters."""
        return self._factory

    async def create_all(self) -> None:
        """Create `cs_jobs` and `cs_job_schedules` if missing (tests, prototypes; use Alembic
        in production)."""
        await create_all(self.engine, metadata)

    def schedule_store(self) -> SqlScheduleStore:
        """The schedule store on the same engine (what `Scheduler` uses by default)."""
        return SqlScheduleStore(self)

    # -- plumbing -------------------------------------------------------------------------------

    async def _write(self, stmt: Any, params: Any = None) -> list[Row[Any]] | int:
        """Run one write statement in its own transaction; rows if it returns any, else rowcount."""
        if self._pg:
            async with self.engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                result = await auto.execute(stmt, params)
                return builtins.list(result.fetchall()) if result.returns_rows else result.rowcount
        tx = await self.unit_of_work.begin()
        try:
            res: Any = await tx.execute(stmt, params, write=True)
            out = builtins.list(res.fetchall()) if res.returns_rows else res.rowcount
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        return out

    async def _read(self, stmt: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            if self._pg:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            result = await conn.execute(stmt)
            rows = builtins.list(result.fetchall())
            if not self._pg:
                await conn.rollback()
            return rows

    def _insert(self, *, returning: bool) -> Any:
        dialect_insert = postgresql.insert if self._pg else sqlite.insert
        stmt = dialect_insert(jobs_table).on_conflict_do_nothing(
            index_elements=[_org_scope, _J.unique_key], index_where=_has_key
        )
        return stmt.returning(_J.id) if returning else stmt

    async def _notify_hook(self, conn: AsyncConnection, buffer: WriteBuffer) -> None:
        if buffer.inserts.get(jobs_table):
            await conn.execute(text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL})

    # -- enqueue --------------------------------------------------------------------------------

    async def enqueue(
        self,
        job_type: str | JobSpec[Any],
        payload: BaseModel | dict[str, Any],
        *,
        tx: Transaction | None = None,
        **options: Any,
    ) -> str:
        """Validate and store a job; return its id (see `JobQueue.enqueue`).

        Raises:
            SpecValidationError: Invalid payload or option.
            UnknownJobTypeError: The type is not registered.
            ConfigurationError: `tx` is not a `SqlTransaction` of a SQL unit of work.
        """
        return (await self.enqueue_many([(job_type, payload)], tx=tx, **options))[0]

    async def enqueue_many(
        self,
        jobs: Sequence[tuple[str | JobSpec[Any], BaseModel | dict[str, Any]]],
        *,
        tx: Transaction | None = None,
        **options: Any,
    ) -> list[str]:
        """Enqueue several jobs in one transaction: one multi-row INSERT for keyless jobs.

        Raises:
            SpecValidationError: Any payload or option is invalid (nothing is enqueued).
            UnknownJobTypeError: A type is not registered.
            ConfigurationError: `tx` is not a `SqlTransaction`.
        """
        built = [self._factory.build(t, p, options) for t, p in jobs]
        if tx is not None:
            if not isinstance(tx, SqlTransaction):
                raise ConfigurationError(
                    "SqlJobQueue.enqueue(tx=...) needs a SqlTransaction (from SqlUnitOfWork or an "
                    f"Executor on a SqlBackend), got {type(tx).__name__}; use MemoryJobQueue with "
                    "memory backends"
                )
            return await self._enqueue_in(tx, built)
        if self._pg and len(built) <= _AUTOCOMMIT_ROWS:
            return await self._enqueue_autocommit(built)
        own = await self.unit_of_work.begin()
        try:
            ids = await self._enqueue_in(own, built)
            await own.commit()
        except BaseException:
            await own.rollback()
            raise
        self._local.set()
        return ids

    async def _enqueue_autocommit(self, built: list[NewJob]) -> list[str]:
        """PostgreSQL without a caller transaction: one statement, one round trip.

        `WITH ins AS (INSERT ... ON CONFLICT (org scope, unique_key) DO NOTHING RETURNING id)
        SELECT id, pg_notify(...) FROM ins`: the insert and the wake-up of idle workers commit
        together (PostgreSQL folds identical notifications of one transaction into one).
        """
        rows: list[Any] | int | None = None
        if len(built) == 1 and self._psycopg:  # the common case: one statement on the driver
            rows = await self._enqueue_one_driver(built[0])
        if rows is None:
            inserted = (
                postgresql.insert(jobs_table)
                .values([_row(new) for new in built])
                .on_conflict_do_nothing(
                    index_elements=[_org_scope, _J.unique_key], index_where=_has_key
                )
                .returning(_J.id)
                .cte("ins")
            )
            columns: list[Any] = [inserted.c.id]
            if self.notify:
                columns.append(func.pg_notify(NOTIFY_CHANNEL, ""))
            rows = await self._write(select(*columns))
        assert isinstance(rows, builtins.list)
        got = {r[0] for r in rows}
        ids = [new.id for new in built]
        missing = [new for new in built if new.id not in got]
        if missing:  # unique keys already taken in their org: answer with the existing jobs' ids
            by_key: dict[tuple[str, str | None], str] = {}
            for scope in {new.org_id or "" for new in missing}:
                keys = [new.unique_key for new in missing if (new.org_id or "") == scope]
                found = await self._read(
                    select(_J.unique_key, _J.id).where(_org_scope == scope, _J.unique_key.in_(keys))
                )
                by_key.update(((scope, key), job_id) for key, job_id in found)
            ids = [
                new.id if new.id in got else by_key.get((new.org_id or "", new.unique_key), new.id)
                for new in built
            ]
        self._local.set()
        return ids

    async def _enqueue_one_driver(self, new: NewJob) -> list[Any] | None:
        """Insert (and notify) one job through psycopg directly, in autocommit mode.

        This is the hottest path of a job system (every request that schedules work); going
        through the driver saves SQLAlchemy's per-statement machinery, which costs as much as the
        round trip itself. The connection still comes from (and returns to) your engine's pool.
        `None` on engines with cursor-execute listeners (tracing, query logs): the caller then
        enqueues through SQLAlchemy, so they see the statement.
        """
        from psycopg.types.json import Jsonb

        params = {
            "id": new.id,
            "type": new.type,
            "queue": new.queue,
            "payload": Jsonb(new.payload),
            "priority": new.priority,
            "max_attempts": new.max_attempts,
            "scheduled_at": new.scheduled_at,
            "created_at": new.created_at,
            "unique_key": new.unique_key,
            "org_id": new.org_id,
        }
        async with self.engine.connect() as conn:
            done = await autocommit_statement(
                conn, _ENQUEUE_NOTIFY_SQL if self.notify else _ENQUEUE_SQL, params, fetch=True
            )
        return None if done is None else done[1]

    async def _enqueue_in(self, tx: SqlTransaction, built: list[NewJob]) -> list[str]:
        tx.check_writable("enqueueing a job")
        if self.notify:
            tx.add_flush_hook("contractspec.jobs.notify", self._notify_hook)
        ids: list[str] = []
        for new in built:
            if new.unique_key is None:
                tx.stage_insert(jobs_table, _row(new))
                ids.append(new.id)
                continue
            result = await tx.execute(self._insert(returning=True).values(_row(new)), write=True)
            inserted = result.scalar_one_or_none()
            if inserted is None:
                found = await tx.execute(
                    select(_J.id).where(
                        _org_scope == (new.org_id or ""), _J.unique_key == new.unique_key
                    )
                )
                existing = found.scalar_one_or_none()
                ids.append(existing if existing is not None else new.id)
            else:
                ids.append(inserted)
                if self.notify:
                    await tx.execute(
                        text("SELECT pg_notify(:c, '')"), {"c": NOTIFY_CHANNEL}, write=True
                    )
        return ids

    # -- workers ------------------------------------------------------------------------------

    async def lease(
        self,
        *,
        worker_id: str,
        limit: int = 1,
        lease_for: timedelta = timedelta(seconds=30),
        queues: Sequence[str] | None = None,
    ) -> list[Job]:
        """Lease up to `limit` due jobs (per queue: highest priority, then oldest).

        On PostgreSQL the candidate rows are locked with `FOR UPDATE SKIP LOCKED`, so concurrent
        workers never block each other nor lease the same job. With several queues, they are
        served in the order given (each read in index order).
        """
        check_limit(limit)
        leased: list[Job] = []
        for queue in queues if queues is not None else [None]:
            if len(leased) >= limit:
                break
            leased.extend(await self._lease_one(worker_id, limit - len(leased), lease_for, queue))
        return leased

    async def _lease_one(
        self, worker_id: str, limit: int, lease_for: timedelta, queue: str | None
    ) -> list[Job]:
        now = self.clock.now()
        params = {
            "b_now": now,
            "b_until": now + lease_for,
            "b_token": self._factory.ids.new_id(),
            "b_worker": worker_id,
            "b_limit": limit,
        }
        if queue is not None:
            params["b_queue"] = queue
        rows = await self._write(_lease_statement(queue is not None), params)
        assert isinstance(rows, builtins.list)
        jobs = [_job(r) for r in rows]
        jobs.sort(key=lambda j: (-j.priority, j.scheduled_at, j.id))
        return jobs

    async def heartbeat(self, job_id: str, lease_token: str, *, lease_for: timedelta) -> bool:
        """Extend the lease; `False` when it was lost."""
        stmt = update(jobs_table).where(_held).values(leased_until=self.clock.now() + lease_for)
        count = await self._write(stmt, {"b_id": job_id, "b_token": lease_token})
        return count == 1

    async def heartbeat_many(
        self, held: Sequence[tuple[str, str]], *, lease_for: timedelta
    ) -> list[str]:
        """Extend several leases in one statement; returns the ids that were lost."""
        if not held:
            return []
        until = self.clock.now() + lease_for
        if not self._pg:
            return [
                job_id
                for job_id, token in held
                if not await self.heartbeat(job_id, token, lease_for=lease_for)
            ]
        rows = await self._write(
            _HEARTBEAT_MANY,
            {"ids": [i for i, _ in held], "tokens": [t for _, t in held], "until": until},
        )
        assert isinstance(rows, builtins.list)
        kept = {r[0] for r in rows}
        return [job_id for job_id, _ in held if job_id not in kept]

    def _lost(self, job_id: str) -> LeaseLostError:
        return LeaseLostError(
            f"job {job_id!r} is no longer held by this lease (it expired and was taken over, or "
            "was cancelled); its result is dropped",
            details={"job_id": job_id},
        )

    async def complete(self, job_id: str, lease_token: str, result: Any = None) -> None:
        """Mark the job succeeded.

        Raises:
            LeaseLostError: The lease was lost.
        """
        count = await self._write(
            _COMPLETE,
            {"b_id": job_id, "b_token": lease_token, "b_result": result, "b_now": self.clock.now()},
        )
        if count != 1:
            raise self._lost(job_id)

    async def complete_many(self, done: Sequence[tuple[str, str, Any]]) -> list[str]:
        """Mark several leased jobs succeeded in one statement (`UPDATE ... FROM (VALUES ...)`).

        Args:
            done: `(job_id, lease_token, result)` triples.

        Returns:
            Ids whose lease was lost (their results were dropped).
        """
        if not done:
            return []
        now = self.clock.now()
        if not self._pg:  # one local transaction; SQLite has no VALUES column aliases
            lost: list[str] = []
            tx = await self.unit_of_work.begin()
            try:
                for job_id, token, result in done:
                    params = {"b_id": job_id, "b_token": token, "b_result": result, "b_now": now}
                    res: Any = await tx.execute(_COMPLETE, params, write=True)
                    if res.rowcount != 1:
                        lost.append(job_id)
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
            return lost
        params = {
            "ids": [job_id for job_id, _, _ in done],
            "tokens": [token for _, token, _ in done],
            "results": [json.dumps(result) for _, _, result in done],
            "now": now,
        }
        stmt = _COMPLETE_MANY
        rows = await self._write(stmt, params)
        assert isinstance(rows, builtins.list)
        got = {r[0] for r in rows}
        return [job_id for job_id, _, _ in done if job_id not in got]

    async def fail(
        self, job_id: str, lease_token: str, error: str, *, retry_at: datetime | None
    ) -> JobStatus:
        """Record a failed run: `failed` (retried at `retry_at`) or `dead`.

        Raises:
            LeaseLostError: The lease was lost.
        """
        now = self.clock.now()
        params = {"b_id": job_id, "b_token": lease_token}
        base = {"last_error": lease_error(error), "leased_until": None, "lease_token": None}
        if retry_at is not None:
            count = await self._write(
                update(jobs_table)
                .where(_held, _J.attempts < _J.max_attempts)
                .values(status="failed", scheduled_at=retry_at, **base),
                params,
            )
            if count == 1:
                return JobStatus.FAILED
        count = await self._write(
            update(jobs_table).where(_held).values(status="dead", finished_at=now, **base), params
        )
        if count != 1:
            raise self._lost(job_id)
        return JobStatus.DEAD

    async def release(self, job_id: str, lease_token: str) -> None:
        """Put the job back unrun (attempt not counted).

        Raises:
            LeaseLostError: The lease was lost.
        """
        count = await self._write(
            update(jobs_table)
            .where(_held)
            .values(
                status="queued",
                attempts=func.max(_J.attempts - 1, 0)
                if not self._pg
                else func.greatest(_J.attempts - 1, 0),
                leased_until=None,
                lease_token=None,
            ),
            {"b_id": job_id, "b_token": lease_token},
        )
        if count != 1:
            raise self._lost(job_id)
        self._local.set()

    async def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not finished; its worker stops it at the next heartbeat."""
        count = await self._write(
            update(jobs_table)
            .where(_J.id == job_id, _J.status.in_(("queued", "failed", "running")))
            .values(
                status="cancelled",
                leased_until=None,
                lease_token=None,
                finished_at=self.clock.now(),
            )
        )
        return count == 1

    async def _write_in(self, tx: Transaction | None, stmt: Any, what: str) -> int:
        """Run an UPDATE on its own (`tx=None`) or inside the caller's `SqlTransaction`."""
        if tx is None:
            count = await self._write(stmt)
            assert isinstance(count, int)
            return count
        if not isinstance(tx, SqlTransaction):
            raise ConfigurationError(
                f"SqlJobQueue.{what}(tx=...) needs a SqlTransaction (from SqlUnitOfWork or an "
                f"Executor on a SqlBackend), got {type(tx).__name__}"
            )
        tx.check_writable(f"{what} of a job")
        result = await tx.execute(stmt, write=True)
        rowcount: int = result.rowcount  # type: ignore[attr-defined]  # UPDATE results have it
        return rowcount

    async def retry(
        self, job_id: str, *, delay: timedelta | None = None, tx: Transaction | None = None
    ) -> bool:
        """Requeue a dead, cancelled or failed job with fresh attempts (in `tx`, if given).

        Raises:
            ConfigurationError: `tx` is not a `SqlTransaction`.
        """
        count = await self._write_in(
            tx,
            update(jobs_table)
            .where(_J.id == job_id, _J.status.in_(("dead", "cancelled", "failed")))
            .values(
                status="queued",
                attempts=0,
                scheduled_at=self.clock.now() + (delay or timedelta(0)),
                finished_at=None,
            ),
            "retry",
        )
        if count == 1 and tx is None:
            self._local.set()
        elif count == 1 and isinstance(tx, SqlTransaction):
            tx.on_commit(self._local.set)
            if self.notify:
                tx.add_flush_hook("contractspec.jobs.notify", self._notify_hook)
        return count == 1

    async def discard(self, job_id: str, *, tx: Transaction | None = None) -> bool:
        """Cancel a dead or failed job (an operator gave up on it), in `tx` if given.

        Raises:
            ConfigurationError: `tx` is not a `SqlTransaction`.
        """
        count = await self._write_in(
            tx,
            update(jobs_table)
            .where(_J.id == job_id, _J.status.in_(("dead", "failed")))
            .values(status="cancelled", finished_at=self.clock.now()),
            "discard",
        )
        return count == 1

    async def recover_expired(self) -> int:
        """Requeue running jobs whose lease expired; dead-letter those out of attempts."""
        now = self.clock.now()
        expired = and_(_J.status == "running", _J.leased_until < now)
        message = "lease expired while a worker ran the job (the worker died or stalled); "
        dead = await self._write(
            update(jobs_table)
            .where(expired, _J.attempts >= _J.max_attempts)
            .values(
                status="dead",
                leased_until=None,
                lease_token=None,
                finished_at=now,
                last_error=message + "no attempts left",
            )
        )
        requeued = await self._write(
            update(jobs_table)
            .where(expired)
            .values(
                status="queued",
                leased_until=None,
                lease_token=None,
                last_error=message + "requeued",
            )
        )
        assert isinstance(dead, int)
        assert isinstance(requeued, int)
        if requeued:
            self._local.set()
            _log.warning("contractspec.jobs.leases_recovered", requeued=requeued, dead=dead)
        return dead + requeued

    # -- inspection -----------------------------------------------------------------------------

    async def get(self, job_id: str, *, tx: Transaction | None = None) -> Job | None:
        """The job, or `None`; read inside `tx` (a `SqlTransaction`) when given."""
        stmt = select(jobs_table).where(_J.id == job_id)
        if isinstance(tx, SqlTransaction):
            row = (await tx.execute(stmt)).first()
            return _job(row) if row is not None else None
        rows = await self._read(stmt)
        return _job(rows[0]) if rows else None

    async def list(
        self,
        *,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        queue: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs matching the filters, oldest first.

        Raises:
            SpecValidationError: Unknown status or a limit outside 1..10000.
        """
        wanted = check_status(status)
        check_limit(limit)
        stmt = select(jobs_table)
        if wanted is not None:
            stmt = stmt.where(_J.status == wanted.value)
        if job_type is not None:
            stmt = stmt.where(_J.type == job_type)
        if queue is not None:
            stmt = stmt.where(_J.queue == queue)
        rows = await self._read(stmt.order_by(_J.created_at, _J.id).limit(limit))
        return [_job(r) for r in rows]

    async def browse(
        self,
        *,
        org_id: str | None,
        status: JobStatus | str | None = None,
        job_type: str | None = None,
        limit: int = 50,
        before: tuple[datetime, str] | None = None,
        tx: Transaction | None = None,
    ) -> builtins.list[Job]:
        """Jobs of one tenant, newest first, after the keyset cursor `before`.

        Raises:
            SpecValidationError: Unknown status or a limit outside 1..10000.
        """
        wanted = check_status(status)
        check_limit(limit)
        stmt = select(jobs_table).where(
            _J.org_id.is_(None) if org_id is None else _J.org_id == org_id
        )
        if wanted is not None:
            stmt = stmt.where(_J.status == wanted.value)
        if job_type is not None:
            stmt = stmt.where(_J.type == job_type)
        if before is not None:
            at, last_id = before
            stmt = stmt.where(or_(_J.created_at < at, and_(_J.created_at == at, _J.id < last_id)))
        stmt = stmt.order_by(_J.created_at.desc(), _J.id.desc()).limit(limit)
        if isinstance(tx, SqlTransaction):
            return [_job(r) for r in (await tx.execute(stmt)).all()]
        return [_job(r) for r in await self._read(stmt)]

    async def counts(self, *, queue: str | None = None) -> dict[JobStatus, int]:
        """Jobs per status (every status present)."""
        stmt = select(_J.status, func.count()).group_by(_J.status)
        if queue is not None:
            stmt = stmt.where(_J.queue == queue)
        result = dict.fromkeys(JobStatus, 0)
        for row in await self._read(stmt):
            result[JobStatus(row[0])] = int(row[1])
        return result

    async def purge(
        self,
        *,
        older_than: timedelta,
        statuses: Sequence[JobStatus] = (JobStatus.SUCCEEDED, JobStatus.CANCELLED),
    ) -> int:
        """Delete finished jobs that finished before `now - older_than`."""
        cutoff = self.clock.now() - older_than
        count = await self._write(
            delete(jobs_table).where(
                _J.status.in_([JobStatus(s).value for s in statuses]), _J.finished_at < cutoff
            )
        )
        assert isinstance(count, int)
        return count

    async def next_due(self, queues: Sequence[str] | None = None) -> datetime | None:
        """Earliest `scheduled_at` of a leasable job, or `None`."""
        stmt = select(func.min(_J.scheduled_at)).where(_J.status.in_(_LEASABLE))
        if queues is not None:
            stmt = stmt.where(_J.queue.in_(builtins.list(queues)))
        rows = await self._read(stmt)
        value = rows[0][0] if rows else None
        if isinstance(value, str):  # SQLite aggregates lose the column type
            value = datetime.fromisoformat(value)
        if isinstance(value, datetime) and value.tzinfo is None:
            from datetime import UTC

            value = value.replace(tzinfo=UTC)
        return value

    # -- waiting --------------------------------------------------------------------------------

    async def wait_for_jobs(self, max_wait: float) -> None:
        """Return when jobs may be available (a NOTIFY on PostgreSQL, an enqueue in this process),
        or after `max_wait` seconds (the polling fallback)."""
        if self.notify:
            try:
                await self._wait_notify(max_wait)
            except (
                Exception
            ) as exc:  # the listener broke: fall back to polling, reconnect next time
                if not self._listen_broken:  # one line per state change, not one per attempt
                    self._listen_broken = True
                    _log.warning("contractspec.jobs.listen_failed", error=describe_error(exc))
                await self._close_listener()
            else:
                if self._listen_broken:
                    self._listen_broken = False
                    _log.info("contractspec.jobs.listen_restored")
                return
        try:
            await asyncio.wait_for(self._local.wait(), max_wait)
        except TimeoutError:
            pass
        finally:
            self._local.clear()

    async def _wait_notify(self, max_wait: float) -> None:
        async with self._listen_lock:
            if self._listener is None:
                # Shielded: a cancelled wait must not strand a half-opened connection.
                await asyncio.shield(self._open_listener())
            listener = self._listener
            assert listener is not None
            raw = await listener.get_raw_connection()
            driver: Any = raw.driver_connection
            if self._local.is_set():
                self._local.clear()
                return
            try:
                async for _ in driver.notifies(timeout=max_wait, stop_after=1):
                    break
            except asyncio.CancelledError:
                # The generator was interrupted mid-read: the connection's state is unknown.
                await asyncio.shield(self._close_listener())
                raise

    async def _open_listener(self) -> None:
        conn = await self.engine.connect()
        try:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(f"LISTEN {NOTIFY_CHANNEL}")
        except BaseException:
            await conn.invalidate()
            await conn.close()
            raise
        self._listener = conn

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None:
            return
        try:
            await conn.exec_driver_sql(f"UNLISTEN {NOTIFY_CHANNEL}")
        except Exception:  # the connection is broken: do not return it to the pool
            await conn.invalidate()
        finally:
            await conn.close()

    async def close(self) -> None:
        """Release the LISTEN connection (workers call it when they stop). The engine stays yours."""
        async with self._listen_lock:
            await self._close_listener()


class SqlScheduleStore:
    """Next fire time per schedule in `cs_job_schedules`, advanced with compare-and-set.

    Moving a schedule forward and enqueueing its fire happen in one transaction, and each fire's
    job carries the unique key `schedule:<name>:<fire time>`: scheduler instances racing on the
    same fire enqueue it once.
    """

    def __init__(self, queue: SqlJobQueue) -> None:
        self.queue = queue

    async def load(self, name: str) -> tuple[bool, datetime | None]:
        """`(known, next_fire_at)` of a schedule."""
        rows = await self.queue._read(
            select(schedules_table.c.next_fire_at).where(schedules_table.c.name == name)
        )
        if not rows:
            return False, None
        value: datetime | None = rows[0][0]
        return True, value

    async def advance(
        self,
        name: str,
        expected: datetime | None,
        known: bool,
        next_fire_at: datetime | None,
        enqueue: list[tuple[JobSpec[Any], dict[str, Any], dict[str, Any]]],
        queue: Any = None,
    ) -> bool:
        """Move `name` from `expected` to `next_fire_at` and enqueue `enqueue`, atomically.

        Returns:
            `False` (nothing written) when another scheduler moved the schedule first.
        """
        t = schedules_table
        tx = await self.queue.unit_of_work.begin()
        try:
            now = self.queue.clock.now()
            if known:
                cond = (
                    t.c.next_fire_at.is_(None) if expected is None else t.c.next_fire_at == expected
                )
                result: Any = await tx.execute(
                    update(t)
                    .where(t.c.name == name, cond)
                    .values(next_fire_at=next_fire_at, revision=t.c.revision + 1, updated_at=now),
                    write=True,
                )
                moved = result.rowcount == 1
            else:
                dialect_insert = postgresql.insert if self.queue._pg else sqlite.insert
                result = await tx.execute(
                    dialect_insert(t)
                    .values(name=name, next_fire_at=next_fire_at, revision=1, updated_at=now)
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(t.c.name),
                    write=True,
                )
                moved = result.scalar_one_or_none() is not None
            if not moved:
                await tx.rollback()
                return False
            for spec, payload, options in enqueue:
                await self.queue.enqueue(spec, payload, tx=tx, **options)
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
        if enqueue:
            self.queue._local.set()
        return True
