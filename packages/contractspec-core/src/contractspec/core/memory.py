"""In-memory adapters for every store and port: for users' tests, notebooks and small tools.

They honour the same contracts as the SQL adapters (one conformance suite runs over both):
writes made inside a transaction are undone when it rolls back, published events and audit
entries appear only once it commits, tenant data is scoped by `org_id`.

Reads see other transactions' uncommitted writes (read-uncommitted): fine for tests, which is
what these adapters are for.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

from attrs import define, field
from pydantic import BaseModel

from contractspec.core.audit import AuditEntry, MemoryAuditLog
from contractspec.core.errors import (
    ConcurrentUpdateError,
    ConflictError,
    IdempotencyInProgressError,
)
from contractspec.core.ports import IdempotencyRecord
from contractspec.core.records import CallRecord, EventEnvelope, TelemetrySample
from contractspec.core.repository import (
    BaseRepository,
    Condition,
    check_aggregate,
    parse_order_by,
    parse_where,
)
from contractspec.core.specs import EntitySpec
from contractspec.core.transactions import MemoryUnitOfWork, Transaction

__all__ = [
    "AuditEntry",
    "MemoryAuditLog",
    "MemoryBackend",
    "MemoryEntityStore",
    "MemoryIdempotencyStore",
    "MemoryOutbox",
    "MemoryRepository",
    "MemoryTelemetrySink",
    "MemoryTrafficSink",
]

M = TypeVar("M", bound=BaseModel)
_Key = tuple[str | None, Any]


def _norm(value: Any) -> Any:
    """Comparable form of a stored value (enums compare by value, like in SQL)."""
    return value.value if isinstance(value, enum.Enum) else value


def _matches(row: Mapping[str, Any], cond: Condition) -> bool:
    value = _norm(row.get(cond.field))
    op = cond.op
    if op == "is_null":
        return (value is None) is cond.value
    if op == "icontains":
        return value is not None and cond.value.lower() in str(value).lower()
    if value is None:
        return False  # SQL three-valued logic: NULL matches no comparison
    if op == "in":
        return value in [_norm(v) for v in cond.value]
    if op == "not_in":
        return value not in [_norm(v) for v in cond.value]
    target = _norm(cond.value)
    if op == "eq":
        return bool(value == target)
    if op == "ne":
        return bool(value != target)
    if op == "lt":
        return bool(value < target)
    if op == "le":
        return bool(value <= target)
    if op == "gt":
        return bool(value > target)
    return bool(value >= target)


#: How long a memory transaction waits for another one holding a row or an idempotency key.
LOCK_TIMEOUT_S = 30.0


class _Table:
    """Rows of one entity: `(org_id, pk) -> python-mode dict`, versions, claims, unique indexes."""

    __slots__ = ("claims", "rows", "unique", "versions")

    def __init__(self, entity: EntitySpec[Any]) -> None:
        self.rows: dict[_Key, dict[str, Any]] = {}
        #: Version of each row, bumped by every write (`ConcurrentUpdateError` on a stale one).
        self.versions: dict[_Key, int] = {}
        #: Rows written (or locked) by a transaction that has not ended: other writers wait.
        self.claims: dict[_Key, Transaction] = {}
        self.unique: dict[tuple[str, ...], dict[tuple[Any, ...], Any]] = {
            idx.fields: {} for idx in entity.indexes if idx.unique
        }


class MemoryEntityStore:
    """Entity records in dictionaries, with transactional undo, tenancy and unique indexes.

    Concurrency behaves like PostgreSQL's row locks under READ COMMITTED, except that reads see
    other transactions' uncommitted writes: a write (or `get_for_update`) claims the row until
    the transaction ends; another transaction writing the same row waits for it, then finds the
    row's version changed (`ConcurrentUpdateError`) or not (the first one rolled back).
    """

    __slots__ = ("_tables",)

    def __init__(self) -> None:
        self._tables: dict[str, _Table] = {}

    def repository(
        self, entity: EntitySpec[M], tx: Transaction, org_id: str | None
    ) -> MemoryRepository[M]:
        """A `MemoryRepository` for `entity` inside `tx`, scoped to `org_id`."""
        table = self._tables.get(entity.name)
        if table is None:
            table = self._tables[entity.name] = _Table(entity)
        return MemoryRepository(entity, tx, org_id, table)

    def clear(self) -> None:
        """Forget every record."""
        self._tables.clear()


class MemoryRepository(BaseRepository[M]):
    """`Repository` over a `MemoryEntityStore` table."""

    __slots__ = ("_table",)

    def __init__(
        self, entity: EntitySpec[M], tx: Transaction, org_id: str | None, table: _Table
    ) -> None:
        super().__init__(entity, tx, org_id)
        self._table = table

    def _load(self, row: Mapping[str, Any]) -> M:
        return self._entity.model.model_validate(row)

    def _visible(self) -> list[dict[str, Any]]:
        org = self._org_id
        return [row for (row_org, _), row in self._table.rows.items() if row_org == org]

    def _seen(self) -> dict[tuple[str, _Key], int]:
        """Versions this transaction read or wrote, per row (what its writes expect)."""
        seen: dict[tuple[str, _Key], int] | None = self._tx.info.get("memory_versions")
        if seen is None:
            seen = self._tx.info["memory_versions"] = {}
        return seen

    def _remember(self, key: _Key) -> None:
        if key in self._table.rows:
            self._seen().setdefault((self._entity.name, key), self._table.versions.get(key, 1))

    async def _claim(self, key: _Key) -> None:
        """Wait until no other live transaction holds `key`, then hold it until ours ends."""
        table = self._table
        tx = self._tx
        while True:
            owner = table.claims.get(key)
            if owner is None or owner is tx:
                break
            if not owner.active:
                del table.claims[key]
                break
            await tx.wait_for(owner, f"{self._entity.name} {key[1]!r}", LOCK_TIMEOUT_S)
        if table.claims.get(key) is not tx:
            table.claims[key] = tx
            claims = table.claims

            def release() -> None:
                if claims.get(key) is tx:
                    del claims[key]

            tx.on_end(release)

    def _check_version(self, key: _Key, pk: Any) -> None:
        expected = self._seen().get((self._entity.name, key))
        current = self._table.versions.get(key, 1)
        if expected is not None and expected != current:
            raise ConcurrentUpdateError(
                f"{self._entity.name} {pk!r} changed since this call read it; read it again and "
                "retry (or read it with get_for_update() so concurrent calls wait)",
                details={"entity": self._entity.name, "id": str(pk)},
            )

    def _unique_keys(self, row: Mapping[str, Any]) -> list[tuple[tuple[str, ...], tuple[Any, ...]]]:
        keys = []
        for fields in self._table.unique:
            values = tuple(_norm(row.get(f)) for f in fields)
            if any(v is None for v in values):
                continue  # NULLs never collide, as in SQL
            keys.append((fields, (self._org_id, *values)))
        return keys

    async def _wait_unique(self, row: Mapping[str, Any], pk: Any) -> None:
        """Wait for live transactions holding a row that takes one of `row`'s unique values."""
        for fields, key in self._unique_keys(row):
            owner_pk = self._table.unique[fields].get(key)
            if owner_pk is not None and owner_pk != pk:
                owner = self._table.claims.get((self._org_id, owner_pk))
                if owner is not None and owner is not self._tx and owner.active:
                    await self._tx.wait_for(
                        owner, f"{self._entity.name} unique index", LOCK_TIMEOUT_S
                    )

    def _claim_unique(
        self, row: Mapping[str, Any], pk: Any, previous: Mapping[str, Any] | None
    ) -> None:
        old = dict(self._unique_keys(previous)) if previous is not None else {}
        new = self._unique_keys(row)
        for fields, key in new:
            owner = self._table.unique[fields].get(key)
            if owner is not None and owner != pk:
                raise ConflictError(
                    f"{self._entity.name}: another record already has this "
                    f"{', '.join(fields)} (unique index)",
                    details={"entity": self._entity.name, "fields": list(fields)},
                )
        for fields, key in old.items():
            if self._table.unique[fields].get(key) == pk:
                del self._table.unique[fields][key]
        for fields, key in new:
            self._table.unique[fields][key] = pk

    def _store(
        self, key: _Key, row: dict[str, Any] | None, previous: dict[str, Any] | None
    ) -> None:
        """Write (or delete, with `row=None`), bump the version and register the undo."""
        pk = key[1]
        table = self._table
        if row is None:
            self._claim_unique({}, pk, previous)
            del table.rows[key]
        else:
            self._claim_unique(row, pk, previous)
            table.rows[key] = row
        old_version = table.versions.get(key)
        version = table.versions[key] = (old_version or 0) + 1
        seen = self._seen()
        seen_key = (self._entity.name, key)
        old_seen = seen.get(seen_key)
        seen[seen_key] = version

        def undo() -> None:
            current = table.rows.get(key)
            if previous is None:
                table.rows.pop(key, None)
            else:
                table.rows[key] = previous
            if old_version is None:
                table.versions.pop(key, None)
            else:
                table.versions[key] = old_version
            # What this transaction expects goes back too: a batch call rolled back to its
            # savepoint must not leave later calls expecting the version it undid.
            if old_seen is None:
                seen.pop(seen_key, None)
            else:
                seen[seen_key] = old_seen
            self._claim_unique(previous or {}, pk, current)

        self._tx.add_undo(undo)

    async def get(self, id: Any) -> M | None:
        """The record with primary key `id` in this tenant, or `None`."""
        key = (self._org_id, self._coerce_pk(id))
        row = self._table.rows.get(key)
        if row is None:
            return None
        self._remember(key)
        return self._load(row)

    async def get_for_update(self, id: Any) -> M | None:
        """The record, claimed by this transaction until it ends (other writers wait), or `None`."""
        key = (self._org_id, self._coerce_pk(id))
        await self._claim(key)
        row = self._table.rows.get(key)
        if row is None:
            return None
        self._seen()[(self._entity.name, key)] = self._table.versions.get(key, 1)
        return self._load(row)

    async def add(self, obj: M | Mapping[str, Any]) -> M:
        """Insert; `ConflictError` on a taken primary key or unique index."""
        self._tx.check_writable(f"adding {self._entity.name}")
        model = self._coerce_new(obj)
        pk = self._pk_of(model)
        key = (self._org_id, pk)
        row = model.model_dump()
        if self._entity.tenant_scoped:
            row["org_id"] = self._org_id
        await self._claim(key)  # waits for a concurrent insert of this key to end
        await self._wait_unique(row, pk)
        if key in self._table.rows:
            raise ConflictError(
                f"{self._entity.name} {pk!r} already exists",
                details={"entity": self._entity.name, "id": str(pk)},
            )
        self._store(key, row, None)
        self._record("create", pk, None, model)
        return model

    async def update(self, obj: M) -> M:
        """Replace the record with `obj`'s primary key.

        Raises:
            NotFoundError: No such record. ConcurrentUpdateError: It changed since it was read.
        """
        self._tx.check_writable(f"updating {self._entity.name}")
        model = self._coerce_new(obj)
        pk = self._pk_of(model)
        key = (self._org_id, pk)
        self._remember(key)
        await self._claim(key)
        previous = self._table.rows.get(key)
        if previous is None:
            if (self._entity.name, key) in self._seen():
                self._check_version(key, pk)
            raise self._not_found(pk)
        self._check_version(key, pk)
        row = model.model_dump()
        if self._entity.tenant_scoped:
            row["org_id"] = self._org_id
        await self._wait_unique(row, pk)
        self._store(key, row, previous)
        self._record("update", pk, self._load(previous), model)
        return model

    async def delete(self, id: Any) -> bool:
        """Delete; return whether the record existed (`ConcurrentUpdateError` if it changed)."""
        self._tx.check_writable(f"deleting {self._entity.name}")
        pk = self._coerce_pk(id)
        key = (self._org_id, pk)
        self._remember(key)
        await self._claim(key)
        previous = self._table.rows.get(key)
        if previous is None:
            return False
        self._check_version(key, pk)
        self._store(key, None, previous)
        self._record("delete", pk, self._load(previous), None)
        return True

    def _select(self, where: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        conditions = parse_where(self._entity, where)
        rows = self._visible()
        return [r for r in rows if all(_matches(r, c) for c in conditions)]

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        order_by: str | Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[M]:
        """Matching records, ordered (NULLs last ascending) and paginated."""
        self._check_page(limit, offset)
        terms = parse_order_by(self._entity, order_by)
        rows = self._select(where)
        for term in reversed(terms):
            name = term.field
            rows.sort(
                key=lambda r, f=name: (
                    r.get(f) is None,
                    _norm(r.get(f)) if r.get(f) is not None else 0,
                ),  # type: ignore[misc]
                reverse=term.descending,
            )
        end = None if limit is None else offset + limit
        return [self._load(r) for r in rows[offset:end]]

    async def count(self, where: Mapping[str, Any] | None = None) -> int:
        """Number of matching records."""
        return len(self._select(where))

    async def aggregate(
        self,
        *,
        group_by: Sequence[str] = (),
        sum: Sequence[str] = (),
        where: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Grouped counts and sums, ordered by the group fields (NULL groups last)."""
        check_aggregate(self._entity, group_by, sum)
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for row in self._select(where):
            groups[tuple(_norm(row.get(f)) for f in group_by)].append(row)
        if not group_by and not groups:
            groups[()] = []
        out: list[dict[str, Any]] = []
        for key in sorted(
            groups, key=lambda k: tuple((v is None, v if v is not None else 0) for v in k)
        ):
            rows = groups[key]
            item: dict[str, Any] = dict(zip(group_by, key, strict=True))
            item["count"] = len(rows)
            for f in sum:
                values = [r[f] for r in rows if r.get(f) is not None]
                item[f"sum_{f}"] = _total(values)
            out.append(item)
        return out


def _total(values: list[Any]) -> Any:
    if not values:
        return None
    total: Any = Decimal(0) if isinstance(values[0], Decimal) else 0
    for v in values:
        total += v
    return total


class MemoryIdempotencyStore:
    """Idempotency records in a dictionary, reserved by a transaction until it ends."""

    __slots__ = ("_owners", "_records")

    def __init__(self) -> None:
        self._records: dict[tuple[str | None, str, str], IdempotencyRecord] = {}
        self._owners: dict[tuple[str | None, str, str], Transaction] = {}

    async def get(
        self, tx: Transaction, org_id: str | None, operation: str, key: str
    ) -> IdempotencyRecord | None:
        """The stored record, including one staged in `tx` and not yet committed."""
        k = (org_id, operation, key)
        owner = self._owners.get(k)
        if owner is not None and owner is not tx and owner.active:
            return None  # another transaction's reservation is not visible
        return self._records.get(k)

    async def reserve(
        self,
        tx: Transaction,
        org_id: str | None,
        operation: str,
        key: str,
        fingerprint: str,
        now: datetime,
    ) -> IdempotencyRecord | None:
        """Claim the key for `tx` (waiting for another live claimant), or return its record."""
        k = (org_id, operation, key)
        while True:
            owner = self._owners.get(k)
            if owner is None or owner is tx or not owner.active:
                break
            try:
                await tx.wait_for(owner, f"idempotency key {key!r}", LOCK_TIMEOUT_S)
            except ConflictError as exc:
                raise IdempotencyInProgressError(
                    f"the first call with idempotency key {key!r} of {operation} has not "
                    "finished; retry later",
                    details={"operation": operation, "field": "idempotency_key"},
                ) from exc
        existing = self._records.get(k)
        if existing is not None:
            return existing
        self._records[k] = IdempotencyRecord(org_id, operation, key, fingerprint, None, now)
        self._owners[k] = tx
        records, owners = self._records, self._owners

        def undo() -> None:
            records.pop(k, None)

        def release() -> None:
            if owners.get(k) is tx:
                del owners[k]

        tx.add_undo(undo)
        tx.on_end(release)
        return None

    async def complete(self, tx: Transaction, record: IdempotencyRecord) -> None:
        """Store the outcome of the call that reserved the key in `tx`."""
        k = (record.org_id, record.operation, record.key)
        reserved = self._records.get(k)
        self._records[k] = (
            record
            if reserved is None
            else IdempotencyRecord(
                record.org_id,
                record.operation,
                record.key,
                record.fingerprint,
                record.output,
                reserved.created_at,
            )
        )

    def __len__(self) -> int:
        return len(self._records)


class MemoryOutbox:
    """An `EventPublisher` that keeps committed events in order, in memory.

    Attributes:
        events: Every committed `EventEnvelope`, oldest first.
    """

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[EventEnvelope] = []

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Append `events` when `tx` commits."""
        tx.on_commit(partial(self.events.extend, tuple(events)))

    def names(self) -> list[str]:
        """Names of the committed events, oldest first."""
        return [e.name for e in self.events]

    def clear(self) -> None:
        """Forget every event."""
        self.events.clear()


class MemoryTelemetrySink:
    """A `TelemetrySink` that keeps every sample in a list (bounded by `max_samples`)."""

    __slots__ = ("max_samples", "samples")

    def __init__(self, max_samples: int = 100_000) -> None:
        self.max_samples = max_samples
        self.samples: list[TelemetrySample] = []

    def record(self, sample: TelemetrySample) -> None:
        """Keep the sample; the oldest half is dropped when the bound is reached."""
        if len(self.samples) >= self.max_samples:
            del self.samples[: self.max_samples // 2]
        self.samples.append(sample)


class MemoryTrafficSink:
    """A `TrafficSink` that keeps every `CallRecord` (no sampling, no redaction): for tests."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    def record(self, call: CallRecord) -> None:
        """Keep the call record."""
        self.calls.append(call)


@define
class MemoryBackend:
    """Everything the executor persists, in memory: the default backend.

    Attributes:
        unit_of_work, entities, idempotency, events, audit: The memory adapters, reachable for
            assertions in tests (`backend.events.names()`, `await backend.audit.verify(org)`).
    """

    unit_of_work: MemoryUnitOfWork = field(factory=MemoryUnitOfWork)
    entities: MemoryEntityStore = field(factory=MemoryEntityStore)
    idempotency: MemoryIdempotencyStore = field(factory=MemoryIdempotencyStore)
    events: MemoryOutbox = field(factory=MemoryOutbox)
    audit: MemoryAuditLog = field(factory=MemoryAuditLog)
