"""Where recorded traffic is kept: the `TrafficStore` Protocol, memory and JSON Lines adapters.

The SQLAlchemy adapter lives in `contractspec.testing.sql` (install `contractspec-testing[sql]`).
Every adapter passes one conformance suite, so they are interchangeable:

```python
store = JsonlTrafficStore("traffic.jsonl")
await store.append([snapshot])
recent = await store.query(operation="crm.deal.create", since=week_ago)
```

`open_store(url)` opens one from a URL, as the CLI does: `memory:`, `jsonl:traffic.jsonl` (or any
path ending in `.jsonl`), `sqlite:///traffic.db`, `postgresql+psycopg://user@host/db`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from contractspec.core import ConfigurationError
from contractspec.testing._snapshot import Snapshot
from contractspec.testing.errors import SnapshotFormatError, TrafficStoreError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "JsonlTrafficStore",
    "MemoryTrafficStore",
    "TrafficStore",
    "open_store",
]


@runtime_checkable
class TrafficStore(Protocol):
    """Keeps recorded `Snapshot`s and answers queries over them.

    Semantics every adapter honours (checked by the conformance suite):

    * `append` is idempotent per snapshot id: appending a snapshot whose id is stored keeps one.
    * `query` returns snapshots ordered by `recorded_at`, then by order of append; every filter is
      optional and they combine with AND; `since` is inclusive and `until` exclusive.
    * Values round-trip exactly (any JSON: unicode, NUL characters, big integers, nesting).
    """

    async def append(self, snapshots: Sequence[Snapshot]) -> None:
        """Store `snapshots` (already redacted)."""
        ...

    async def query(
        self,
        *,
        operation: str | None = None,
        version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        org_id: str | None = None,
        limit: int | None = None,
    ) -> list[Snapshot]:
        """Snapshots matching every given filter, oldest first, at most `limit` of them.

        Args:
            operation: Operation name.
            version: Operation version.
            since: Inclusive lower bound of `recorded_at` (aware datetime).
            until: Exclusive upper bound of `recorded_at`.
            outcome: `"success"` or an error code (`"not_found"`).
            org_id: Tenant.
            limit: Maximum number returned (the oldest ones), `None` for all.
        """
        ...

    async def operations(self) -> list[tuple[str, int, int]]:
        """`(operation, version, count)` of everything stored, sorted by operation and version."""
        ...

    async def delete_before(self, when: datetime) -> int:
        """Delete snapshots recorded before `when` (retention); return how many were deleted."""
        ...


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigurationError(
            f"limit must be a non-negative integer or None, got {limit!r}",
            details={"field": "limit"},
        )


def _check_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ConfigurationError(
            f"{name} must be a timezone-aware datetime (e.g. datetime.now(UTC)), got {value!r}",
            details={"field": name},
        )


def _select(
    snapshots: Iterable[Snapshot],
    *,
    operation: str | None,
    version: int | None,
    since: datetime | None,
    until: datetime | None,
    outcome: str | None,
    org_id: str | None,
    limit: int | None,
) -> list[Snapshot]:
    _check_limit(limit)
    _check_aware("since", since)
    _check_aware("until", until)
    seen: set[str] = set()
    out: list[Snapshot] = []
    for snap in snapshots:
        if snap.id in seen:
            continue
        seen.add(snap.id)
        if operation is not None and snap.operation != operation:
            continue
        if version is not None and snap.version != version:
            continue
        if since is not None and snap.recorded_at < since:
            continue
        if until is not None and snap.recorded_at >= until:
            continue
        if outcome is not None and snap.outcome != outcome:
            continue
        if org_id is not None and snap.org_id != org_id:
            continue
        out.append(snap)
    out.sort(key=lambda s: s.recorded_at)  # stable: append order breaks ties
    return out if limit is None else out[:limit]


def _count(snapshots: Iterable[Snapshot]) -> list[tuple[str, int, int]]:
    counts: dict[tuple[str, int], int] = {}
    seen: set[str] = set()
    for snap in snapshots:
        if snap.id in seen:
            continue
        seen.add(snap.id)
        key = (snap.operation, snap.version)
        counts[key] = counts.get(key, 0) + 1
    return [(name, version, n) for (name, version), n in sorted(counts.items())]


class MemoryTrafficStore:
    """A `TrafficStore` in a Python list: for tests, notebooks and the pytest plugin.

    Attributes:
        snapshots: Everything appended, in append order (read it in assertions).
    """

    __slots__ = ("_ids", "snapshots")

    def __init__(self, snapshots: Iterable[Snapshot] = ()) -> None:
        self.snapshots: list[Snapshot] = []
        self._ids: set[str] = set()
        self.append_nowait(list(snapshots))

    def append_nowait(self, snapshots: Sequence[Snapshot]) -> None:
        """`append` without awaiting (the recorder uses it to store synchronously)."""
        for snap in snapshots:
            if snap.id not in self._ids:
                self._ids.add(snap.id)
                self.snapshots.append(snap)

    async def append(self, snapshots: Sequence[Snapshot]) -> None:
        """Store `snapshots`; ids already stored are skipped."""
        self.append_nowait(snapshots)

    async def query(
        self,
        *,
        operation: str | None = None,
        version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        org_id: str | None = None,
        limit: int | None = None,
    ) -> list[Snapshot]:
        """See `TrafficStore.query`."""
        return _select(
            self.snapshots, operation=operation, version=version, since=since, until=until,
            outcome=outcome, org_id=org_id, limit=limit,
        )  # fmt: skip

    async def operations(self) -> list[tuple[str, int, int]]:
        """See `TrafficStore.operations`."""
        return _count(self.snapshots)

    async def delete_before(self, when: datetime) -> int:
        """See `TrafficStore.delete_before`."""
        _check_aware("when", when)
        keep = [s for s in self.snapshots if s.recorded_at >= when]
        deleted = len(self.snapshots) - len(keep)
        self.snapshots = keep
        self._ids = {s.id for s in keep}
        return deleted


class JsonlTrafficStore:
    """A `TrafficStore` in a JSON Lines file: one `Snapshot.to_dict()` object per line, UTF-8.

    Appends are single `write` calls in append mode (`O_APPEND`), so several processes can record
    into one file. File I/O runs in a worker thread, off the event loop. A last line cut short by a
    crash is ignored; any other malformed line raises `SnapshotFormatError` with its line number.

    Args:
        path: The file; created (with its parent directories) on first append.
    """

    __slots__ = ("_lock", "path")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _write(self, lines: str) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8", newline="\n") as fh:
                fh.write(lines)

    def _read(self) -> list[Snapshot]:
        with self._lock:
            try:
                text = self.path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return []
            except (OSError, UnicodeDecodeError) as exc:
                raise TrafficStoreError(
                    f"cannot read traffic file {str(self.path)!r}: {exc}"
                ) from exc
        lines = text.split("\n")
        out: list[Snapshot] = []
        last = len(lines) - 1
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                if number - 1 == last:  # an append cut short: the line has no newline yet
                    continue
                raise SnapshotFormatError(
                    f"{self.path}:{number}: not a JSON line ({exc.msg}); remove or fix the line",
                    details={"line": number},
                ) from None
            try:
                out.append(Snapshot.from_dict(data))
            except SnapshotFormatError as exc:
                raise SnapshotFormatError(
                    f"{self.path}:{number}: {exc.message}", details={"line": number}
                ) from None
        return out

    async def append(self, snapshots: Sequence[Snapshot]) -> None:
        """Append one line per snapshot (duplicates by id are dropped when read)."""
        if not snapshots:
            return
        lines = "".join(
            json.dumps(s.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
            for s in snapshots
        )
        await asyncio.to_thread(self._write, lines)

    async def query(
        self,
        *,
        operation: str | None = None,
        version: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: str | None = None,
        org_id: str | None = None,
        limit: int | None = None,
    ) -> list[Snapshot]:
        """See `TrafficStore.query` (reads the whole file)."""
        snapshots = await asyncio.to_thread(self._read)
        return _select(
            snapshots, operation=operation, version=version, since=since, until=until,
            outcome=outcome, org_id=org_id, limit=limit,
        )  # fmt: skip

    async def operations(self) -> list[tuple[str, int, int]]:
        """See `TrafficStore.operations`."""
        return _count(await asyncio.to_thread(self._read))

    def _rewrite(self, when: datetime) -> int:
        snapshots = self._read()
        seen: set[str] = set()
        keep: list[Snapshot] = []
        for snap in snapshots:
            if snap.id in seen:
                continue
            seen.add(snap.id)
            if snap.recorded_at >= when:
                keep.append(snap)
        deleted = len(seen) - len(keep)
        if deleted:
            tmp = self.path.with_name(self.path.name + ".tmp")
            with self._lock:
                tmp.write_text(
                    "".join(
                        json.dumps(s.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
                        for s in keep
                    ),
                    encoding="utf-8",
                )
                os.replace(tmp, self.path)
        return deleted

    async def delete_before(self, when: datetime) -> int:
        """See `TrafficStore.delete_before` (rewrites the file atomically)."""
        _check_aware("when", when)
        return await asyncio.to_thread(self._rewrite, when)


@asynccontextmanager
async def open_store(
    url: str, *, create: bool = True, must_exist: bool = False
) -> AsyncIterator[TrafficStore]:
    """Open a `TrafficStore` from a URL; SQL engines made here are disposed on exit.

    Args:
        url: `memory:`; `jsonl:PATH` or a path ending in `.jsonl`/`.ndjson`; a SQLAlchemy URL
            (`sqlite:///traffic.db`, `sqlite+aiosqlite:///traffic.db`,
            `postgresql+psycopg://user@host/db`; `postgresql://` means psycopg 3).
        create: Create the `cs_traffic` table when it does not exist (SQL only).
        must_exist: Refuse a JSONL or SQLite file that does not exist yet instead of starting
            an empty store (for readers: a mistyped path is an error, not "no traffic").

    Raises:
        TrafficStoreError: The URL has no known scheme, or `must_exist` and its file is missing.
        ImportError: A SQL URL without `contractspec-testing[sql]` installed (the message has the
            install command).
    """
    if url in ("memory:", "memory://"):
        yield MemoryTrafficStore()
        return
    if url.startswith("jsonl:") or url.endswith((".jsonl", ".ndjson")):
        path = url.removeprefix("jsonl:")
        path = path.removeprefix("//") if path.startswith("///") else path
        if must_exist:
            _require_file(url, path)
        yield JsonlTrafficStore(path)
        return
    scheme = url.partition("://")[0]
    if scheme in ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+psycopg"):
        from contractspec.testing.sql import SqlTrafficStore

        if must_exist and scheme.startswith("sqlite"):
            rest = url.partition("://")[2]
            path = rest[1:] if rest.startswith("/") else rest
            if path and path != ":memory:":
                _require_file(url, path)
        engine = _engine_for(url)
        try:
            store = SqlTrafficStore(engine)
            if create:
                await store.create_all()
            yield store
        finally:
            await engine.dispose()
        return
    raise TrafficStoreError(
        f"unknown traffic store URL {url!r}: use memory:, jsonl:PATH (or a .jsonl path), "
        "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB",
        details={"field": "store"},
    )


def _require_file(url: str, path: str) -> None:
    if not Path(path).is_file():
        raise TrafficStoreError(
            f"traffic store {url!r} does not exist (no file at {Path(path).absolute()}): "
            "fix the path, or record traffic into it first",
            details={"field": "store"},
        )


def _engine_for(url: str) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

    from contractspec.core.sql import sqlite_engine

    scheme, _, rest = url.partition("://")
    if scheme.startswith("sqlite"):
        path = rest[1:] if rest.startswith("/") else rest
        return sqlite_engine(path or ":memory:")
    return create_async_engine("postgresql+psycopg://" + rest)
