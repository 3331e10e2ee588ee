"""SQL adapters (SQLite, PostgreSQL) for suggestions, intent snapshots and telemetry buckets.

Install with `pip install 'contractspec-evolution[sql]'` (or `[postgres]`). The tables live on
`contractspec.evolution.sql.metadata` (prefixed `cs_evolution_`, with core's naming convention):
add it to your Alembic `target_metadata`, or call `create_all(engine)` in tests. The stores write
inside the `SqlTransaction`s of core's `SqlUnitOfWork`, so use the same engine as your
`SqlBackend`: a suggestion, its events (outbox) and its audit records then commit together.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.evolution.sql needs SQLAlchemy: pip install 'contractspec-evolution[sql]' "
        "(SQLite) or 'contractspec-evolution[postgres]' (PostgreSQL)"
    ) from exc

from collections.abc import Sequence
from datetime import datetime
from typing import Any

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
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import ConflictError, NotFoundError, Transaction
from contractspec.core.sql import (
    JsonType,
    SqlTransaction,
    UtcDateTime,
    new_metadata,
    sql_transaction,
)
from contractspec.core.sql import create_all as _create_all
from contractspec.evolution.aggregator import TelemetryBucket
from contractspec.evolution.detector import Intent, IntentKind
from contractspec.evolution.suggestions import SpecSuggestion, SuggestionStatus

__all__ = [
    "SqlIntentStore",
    "SqlSuggestionStore",
    "SqlTelemetryBucketStore",
    "create_all",
    "intents_table",
    "metadata",
    "suggestions_table",
    "telemetry_buckets_table",
]

#: The evolution package's tables. Add it to your Alembic `target_metadata`.
metadata = new_metadata()

suggestions_table = Table(
    "cs_evolution_suggestions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("fingerprint", String(64), nullable=False, unique=True),
    Column("kind", String(40), nullable=False),
    Column("operation", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", Integer, nullable=False),
    Column("confidence", Double, nullable=False),
    Column("breaking", Boolean, nullable=False),
    Column("approval_id", String(64), nullable=True, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("decided_at", UtcDateTime, nullable=True),
    Column("decided_by", String(200), nullable=True),
    Column("envelope_path", Text, nullable=True),
    Column("body", JsonType, nullable=False),
    Column("version", Integer, nullable=False),
    Index(None, "status", "operation"),
    Index(None, "created_at"),
    comment="Spec suggestions (contractspec-evolution): patch, diff and review state.",
)

intents_table = Table(
    "cs_evolution_intents",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(40), nullable=False),
    Column("operation", String(200), nullable=False),
    Column("org_id", String(200), nullable=True),
    Column("window_start", UtcDateTime, nullable=False),
    Column("window_end", UtcDateTime, nullable=False),
    Column("severity", String(16), nullable=False),
    Column("confidence", Double, nullable=False),
    Column("body", JsonType, nullable=False),
    Index(None, "operation", "window_start"),
    Index(None, "window_start"),
    comment="Intent snapshots: what the detector found, with its evidence.",
)

telemetry_buckets_table = Table(
    "cs_evolution_telemetry_buckets",
    metadata,
    Column("position", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
           autoincrement=True),
    Column("minute", UtcDateTime, nullable=False),
    Column("operation", String(200), nullable=False),
    Column("org_id", String(200), nullable=True),
    Column("calls", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("histogram", JsonType, nullable=False),
    Column("error_histogram", JsonType, nullable=False),
    Column("error_codes", JsonType, nullable=False),
    Index(None, "minute", "operation"),
    comment="Per-minute unsampled telemetry (counts and latency histograms) per operation/tenant.",
)  # fmt: skip


async def create_all(engine: AsyncEngine) -> None:
    """Create the evolution tables (tests and quick starts; use Alembic in production)."""
    await _create_all(engine, metadata)


def _suggestion(row: Any) -> SpecSuggestion:
    body = dict(row["body"])
    body.update(
        status=row["status"],
        approval_id=row["approval_id"],
        decided_at=row["decided_at"].isoformat() if row["decided_at"] else None,
        decided_by=row["decided_by"],
        envelope_path=row["envelope_path"],
        version=row["version"],
        created_at=row["created_at"].isoformat(),
    )
    return SpecSuggestion.from_dict(body)


class SqlSuggestionStore:
    """`SuggestionStore` on `cs_evolution_suggestions` (unique id, fingerprint and approval)."""

    __slots__ = ()

    async def add(self, tx: Transaction, suggestion: SpecSuggestion) -> None:
        """Insert; `ConflictError` on a taken id or fingerprint."""
        s = suggestion
        await SqlTransaction.write(
            sql_transaction(tx, "SqlSuggestionStore"),
            insert(suggestions_table).values(
                id=s.id, fingerprint=s.fingerprint, kind=s.kind.value, operation=s.operation,
                status=s.status.value, priority=int(s.priority), confidence=s.confidence,
                breaking=s.breaking, approval_id=s.approval_id, created_at=s.created_at,
                decided_at=s.decided_at, decided_by=s.decided_by, envelope_path=s.envelope_path,
                body=s.to_dict(), version=s.version,
            ),
        )  # fmt: skip

    async def _one(self, tx: Transaction, where: Any) -> SpecSuggestion | None:
        result = await sql_transaction(tx, "SqlSuggestionStore").execute(
            select(suggestions_table).where(where)
        )
        row = result.mappings().first()
        return None if row is None else _suggestion(row)

    async def get(self, tx: Transaction, suggestion_id: str) -> SpecSuggestion | None:
        """The suggestion, or `None`."""
        return await self._one(tx, suggestions_table.c.id == suggestion_id)

    async def get_by_fingerprint(self, tx: Transaction, fingerprint: str) -> SpecSuggestion | None:
        """The suggestion with this fingerprint, or `None`."""
        return await self._one(tx, suggestions_table.c.fingerprint == fingerprint)

    async def get_by_approval(self, tx: Transaction, approval_id: str) -> SpecSuggestion | None:
        """The suggestion decided by this approval request, or `None`."""
        return await self._one(tx, suggestions_table.c.approval_id == approval_id)

    async def save(
        self, tx: Transaction, suggestion: SpecSuggestion, *, expected_version: int
    ) -> SpecSuggestion:
        """Compare-and-set update of the review fields."""
        sql = sql_transaction(tx, "SqlSuggestionStore")
        t = suggestions_table
        s = suggestion
        count = await SqlTransaction.write(
            sql,
            update(t)
            .where(t.c.id == s.id, t.c.version == expected_version)
            .values(
                status=s.status.value, approval_id=s.approval_id, decided_at=s.decided_at,
                decided_by=s.decided_by, envelope_path=s.envelope_path,
                version=expected_version + 1,
            ),
        )  # fmt: skip
        if count != 1:
            if await self.get(tx, s.id) is None:
                raise NotFoundError(f"suggestion {s.id!r} does not exist")
            raise ConflictError(
                f"suggestion {s.id!r} changed concurrently; reload it and retry",
                details={"suggestion_id": s.id},
            )
        stored = await self.get(tx, s.id)
        assert stored is not None  # just updated in this transaction
        return stored

    async def find(
        self,
        tx: Transaction,
        *,
        status: SuggestionStatus | None = None,
        operation: str | None = None,
        limit: int = 100,
        newest_first: bool = False,
        before: tuple[datetime, str] | None = None,
    ) -> list[SpecSuggestion]:
        """Suggestions, oldest first (or newest first, keyset `before`, as the protocol says)."""
        t = suggestions_table
        stmt = select(t)
        if status is not None:
            stmt = stmt.where(t.c.status == status.value)
        if operation is not None:
            stmt = stmt.where(t.c.operation == operation)
        if before is not None:
            stmt = stmt.where(
                or_(
                    t.c.created_at < before[0],
                    and_(t.c.created_at == before[0], t.c.id < before[1]),
                )
            )
        if newest_first:
            stmt = stmt.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        else:
            stmt = stmt.order_by(t.c.created_at, t.c.id).limit(limit)
        result = await sql_transaction(tx, "SqlSuggestionStore").execute(stmt)
        return [_suggestion(r) for r in result.mappings()]


class SqlIntentStore:
    """`IntentStore` on `cs_evolution_intents`."""

    __slots__ = ()

    async def add(self, tx: Transaction, intents: Sequence[Intent]) -> None:
        """Insert intents; `ConflictError` on a taken id."""
        if not intents:
            return
        await SqlTransaction.write(
            sql_transaction(tx, "SqlIntentStore"),
            insert(intents_table).values(
                [
                    {
                        "id": i.id, "kind": i.kind.value, "operation": i.operation,
                        "org_id": i.org_id, "window_start": i.window_start,
                        "window_end": i.window_end, "severity": i.severity.value,
                        "confidence": i.confidence, "body": i.to_dict(),
                    }
                    for i in intents
                ]
            ),
        )  # fmt: skip

    async def find(
        self,
        tx: Transaction,
        *,
        operation: str | None = None,
        kind: IntentKind | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[Intent]:
        """Intents by window start, oldest first."""
        t = intents_table
        stmt = select(t.c.body)
        if operation is not None:
            stmt = stmt.where(t.c.operation == operation)
        if kind is not None:
            stmt = stmt.where(t.c.kind == kind.value)
        if since is not None:
            stmt = stmt.where(t.c.window_start >= since)
        stmt = stmt.order_by(t.c.window_start, t.c.id).limit(limit)
        result = await sql_transaction(tx, "SqlIntentStore").execute(stmt)
        return [Intent.from_dict(r[0]) for r in result.all()]


def _hist_json(hist: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in dict(hist).items()}


class SqlTelemetryBucketStore:
    """`TelemetryBucketStore` on `cs_evolution_telemetry_buckets` (append-only rows)."""

    __slots__ = ()

    async def add(self, tx: Transaction, buckets: Sequence[TelemetryBucket]) -> None:
        """Append buckets."""
        if not buckets:
            return
        await SqlTransaction.write(
            sql_transaction(tx, "SqlTelemetryBucketStore"),
            insert(telemetry_buckets_table).values(
                [
                    {
                        "minute": b.minute, "operation": b.operation, "org_id": b.org_id,
                        "calls": b.calls, "errors": b.errors,
                        "histogram": _hist_json(b.histogram),
                        "error_histogram": _hist_json(b.error_histogram),
                        "error_codes": dict(b.error_codes),
                    }
                    for b in buckets
                ]
            ),
        )  # fmt: skip

    async def load(
        self, tx: Transaction, *, since: datetime, until: datetime | None = None
    ) -> list[TelemetryBucket]:
        """Buckets in `[since, until)`, ordered by minute, operation, tenant and insertion."""
        t = telemetry_buckets_table
        stmt = select(t).where(t.c.minute >= since)
        if until is not None:
            stmt = stmt.where(t.c.minute < until)
        stmt = stmt.order_by(t.c.minute, t.c.operation, t.c.org_id, t.c.position)
        result = await sql_transaction(tx, "SqlTelemetryBucketStore").execute(stmt)
        out = [
            TelemetryBucket(
                minute=r["minute"],
                operation=r["operation"],
                org_id=r["org_id"],
                calls=int(r["calls"]),
                errors=int(r["errors"]),
                histogram={int(k): int(v) for k, v in r["histogram"].items()},
                error_histogram={int(k): int(v) for k, v in r["error_histogram"].items()},
                error_codes={str(k): int(v) for k, v in r["error_codes"].items()},
            )
            for r in result.mappings()
        ]
        out.sort(key=lambda b: (b.minute, b.operation, b.org_id or ""))
        return out

    async def prune(self, tx: Transaction, *, before: datetime) -> int:
        """Delete buckets before `before`."""
        t = telemetry_buckets_table
        return await SqlTransaction.write(
            sql_transaction(tx, "SqlTelemetryBucketStore"), delete(t).where(t.c.minute < before)
        )
