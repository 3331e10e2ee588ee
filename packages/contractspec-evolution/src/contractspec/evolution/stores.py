"""Stores of the evolution loop: suggestions, intent snapshots and telemetry buckets.

Each is a Protocol with an in-memory adapter here and a SQLAlchemy adapter in
`contractspec.evolution.sql`; both pass one conformance suite (memory, SQLite, PostgreSQL). Like
core's stores they write inside core `Transaction`s: what a method writes commits or rolls back
with the transaction (the in-memory adapters register undo callbacks).

Suggestions are not tenant data (they change the app's spec), so they are not scoped by org.
`SuggestionStore.save` is compare-and-set on `version`; `add` refuses a taken id or fingerprint,
so the same proposal is never stored twice, even by two pipelines at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from contractspec.core import ConflictError, NotFoundError, Transaction
from contractspec.evolution.aggregator import TelemetryBucket
from contractspec.evolution.detector import Intent, IntentKind
from contractspec.evolution.suggestions import SpecSuggestion, SuggestionStatus

__all__ = [
    "IntentStore",
    "MemoryIntentStore",
    "MemorySuggestionStore",
    "MemoryTelemetryBucketStore",
    "SuggestionStore",
    "TelemetryBucketStore",
]


@runtime_checkable
class SuggestionStore(Protocol):
    """Spec suggestions and their review state."""

    async def add(self, tx: Transaction, suggestion: SpecSuggestion) -> None:
        """Insert. Raises `ConflictError` if the id or the fingerprint exists."""
        ...

    async def get(self, tx: Transaction, suggestion_id: str) -> SpecSuggestion | None:
        """The suggestion, or `None`."""
        ...

    async def get_by_fingerprint(self, tx: Transaction, fingerprint: str) -> SpecSuggestion | None:
        """The suggestion with this fingerprint, or `None`."""
        ...

    async def get_by_approval(self, tx: Transaction, approval_id: str) -> SpecSuggestion | None:
        """The suggestion decided by this approval request, or `None`."""
        ...

    async def save(
        self, tx: Transaction, suggestion: SpecSuggestion, *, expected_version: int
    ) -> SpecSuggestion:
        """Replace the review fields (status, approval, decision, envelope) if the stored version
        is `expected_version`; return it with the version incremented. Raises `ConflictError` on a
        stale version and `NotFoundError` for an unknown id."""
        ...

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
        """Suggestions, oldest first by `(created_at, id)` (newest first with `newest_first`);
        with `before` (needs `newest_first`), only those after that `(created_at, id)` key in the
        newest-first order (keyset pagination)."""
        ...


@runtime_checkable
class IntentStore(Protocol):
    """Snapshots of detected intents (`IntentSnapshot` rows)."""

    async def add(self, tx: Transaction, intents: Sequence[Intent]) -> None:
        """Insert intents. Raises `ConflictError` if an id exists."""
        ...

    async def find(
        self,
        tx: Transaction,
        *,
        operation: str | None = None,
        kind: IntentKind | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[Intent]:
        """Intents by window start (then id), oldest first; `since` bounds the window start."""
        ...


@runtime_checkable
class TelemetryBucketStore(Protocol):
    """Per-minute telemetry buckets written by many processes and merged by the pipeline."""

    async def add(self, tx: Transaction, buckets: Sequence[TelemetryBucket]) -> None:
        """Append buckets (several rows for one minute and series add up when loaded)."""
        ...

    async def load(
        self, tx: Transaction, *, since: datetime, until: datetime | None = None
    ) -> list[TelemetryBucket]:
        """Buckets with `since <= minute < until`, ordered by minute, operation and tenant."""
        ...

    async def prune(self, tx: Transaction, *, before: datetime) -> int:
        """Delete buckets of minutes before `before`; return how many rows went."""
        ...


class MemorySuggestionStore:
    """`SuggestionStore` in dictionaries; writes are undone if their transaction rolls back."""

    def __init__(self) -> None:
        self._items: dict[str, SpecSuggestion] = {}
        self._fingerprints: dict[str, str] = {}

    async def add(self, tx: Transaction, suggestion: SpecSuggestion) -> None:
        """Insert; `ConflictError` on a taken id or fingerprint."""
        tx.check_writable("MemorySuggestionStore.add")
        if suggestion.id in self._items or suggestion.fingerprint in self._fingerprints:
            raise ConflictError(
                f"suggestion {suggestion.id!r} (fingerprint {suggestion.fingerprint[:12]}) "
                "already exists",
                details={"suggestion_id": suggestion.id},
            )
        tx.undo_item(self._items, suggestion.id)
        self._items[suggestion.id] = suggestion
        tx.undo_item(self._fingerprints, suggestion.fingerprint)
        self._fingerprints[suggestion.fingerprint] = suggestion.id

    async def get(self, tx: Transaction, suggestion_id: str) -> SpecSuggestion | None:
        """The suggestion, or `None`."""
        return self._items.get(suggestion_id)

    async def get_by_fingerprint(self, tx: Transaction, fingerprint: str) -> SpecSuggestion | None:
        """The suggestion with this fingerprint, or `None`."""
        sid = self._fingerprints.get(fingerprint)
        return None if sid is None else self._items.get(sid)

    async def get_by_approval(self, tx: Transaction, approval_id: str) -> SpecSuggestion | None:
        """The suggestion decided by this approval request, or `None`."""
        return next((s for s in self._items.values() if s.approval_id == approval_id), None)

    async def save(
        self, tx: Transaction, suggestion: SpecSuggestion, *, expected_version: int
    ) -> SpecSuggestion:
        """Compare-and-set update of the review fields."""
        tx.check_writable("MemorySuggestionStore.save")
        current = self._items.get(suggestion.id)
        if current is None:
            raise NotFoundError(f"suggestion {suggestion.id!r} does not exist")
        if current.version != expected_version:
            raise ConflictError(
                f"suggestion {suggestion.id!r} changed concurrently; reload it and retry",
                details={"suggestion_id": suggestion.id},
            )
        stored = current.evolve(
            status=suggestion.status,
            approval_id=suggestion.approval_id,
            decided_at=suggestion.decided_at,
            decided_by=suggestion.decided_by,
            envelope_path=suggestion.envelope_path,
            version=expected_version + 1,
        )
        tx.undo_item(self._items, suggestion.id)
        self._items[suggestion.id] = stored
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
        """Suggestions, oldest first (or newest first, keyset `before`)."""
        found = [
            s
            for s in self._items.values()
            if (status is None or s.status is status)
            and (operation is None or s.operation == operation)
            and (before is None or (s.created_at, s.id) < before)
        ]
        found.sort(key=lambda s: (s.created_at, s.id), reverse=newest_first)
        return found[:limit]


class MemoryIntentStore:
    """`IntentStore` in a dictionary; writes are undone if their transaction rolls back."""

    def __init__(self) -> None:
        self._items: dict[str, Intent] = {}

    async def add(self, tx: Transaction, intents: Sequence[Intent]) -> None:
        """Insert intents; `ConflictError` on a taken id."""
        tx.check_writable("MemoryIntentStore.add")
        ids = [i.id for i in intents]
        if len(set(ids)) != len(ids) or any(i in self._items for i in ids):
            raise ConflictError("an intent with this id already exists", details={"ids": ids})
        for intent in intents:
            tx.undo_item(self._items, intent.id)
            self._items[intent.id] = intent

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
        found = [
            i
            for i in self._items.values()
            if (operation is None or i.operation == operation)
            and (kind is None or i.kind is kind)
            and (since is None or i.window_start >= since)
        ]
        found.sort(key=lambda i: (i.window_start, i.id))
        return found[:limit]


class MemoryTelemetryBucketStore:
    """`TelemetryBucketStore` in a list; writes are undone if their transaction rolls back."""

    def __init__(self) -> None:
        self._rows: list[TelemetryBucket] = []

    async def add(self, tx: Transaction, buckets: Sequence[TelemetryBucket]) -> None:
        """Append buckets."""
        tx.check_writable("MemoryTelemetryBucketStore.add")
        mark = len(self._rows)
        self._rows.extend(buckets)

        def undo() -> None:
            del self._rows[mark:]

        tx.add_undo(undo)

    async def load(
        self, tx: Transaction, *, since: datetime, until: datetime | None = None
    ) -> list[TelemetryBucket]:
        """Buckets in `[since, until)`, ordered by minute, operation and tenant."""
        found = [b for b in self._rows if b.minute >= since and (until is None or b.minute < until)]
        return sorted(found, key=lambda b: (b.minute, b.operation, b.org_id or ""))

    async def prune(self, tx: Transaction, *, before: datetime) -> int:
        """Delete buckets before `before`."""
        tx.check_writable("MemoryTelemetryBucketStore.prune")
        previous = list(self._rows)
        self._rows[:] = [b for b in self._rows if b.minute >= before]

        def undo() -> None:
            self._rows[:] = previous

        tx.add_undo(undo)
        return len(previous) - len(self._rows)
