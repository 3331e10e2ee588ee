"""The audit log: a hash chain per org, the one verifier, and anchors kept outside the database.

Every audited call appends one `AuditRecord` to its org's hash chain,
`hash_n = sha256(hash_{n-1} + "\\n" + canonical_json(body_n))`, or, for a **keyed chain**,
`HMAC-SHA256(key, same message)` with a key only the app holds (see
`contractspec.core.records.audit_hash`). A head per org stores the last position and hash.
`MemoryAuditLog` is the in-memory `AuditSink`; `contractspec.core.sql.SqlAuditLog` the SQL one;
contractspec-bus's audit trails add queries and retention on top of the same chain.

Every store verifies with `ChainVerifier` (or `verify_chain`), which returns a `VerifyResult` naming
the first broken position. It detects edited, deleted, reordered and moved entries, indexed columns
that disagree with the hashed body, a missing head, entries beyond the head (forged appends),
unkeyed or wrongly keyed entries in a keyed chain, a forged retention `Checkpoint`, and — given a
`ChainAnchor` exported earlier with `anchor()` — a chain rewritten or truncated after that anchor.

Two different things mark a position in a chain:

* a `Checkpoint` (contractspec-bus retention) says where the stored chain *starts* after a purge;
  it lives in the same database, next to the chain;
* a `ChainAnchor` is a copy of the chain's *head* that the app exports to a place a database writer
  cannot reach (an `AnchorSink`: a file on another host, a WORM bucket, a log shipper), so that
  re-hashing history after it is detected later.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

from attrs import define

from contractspec.core.errors import ConfigurationError, ContractSpecError
from contractspec.core.ports import Clock, SystemClock
from contractspec.core.records import KEYED_HASH_PREFIX, AuditRecord, audit_hash, canonical_json
from contractspec.core.transactions import Transaction

__all__ = [
    "PURGE_ACTION",
    "AnchorSink",
    "AuditEntry",
    "AuditTamperedError",
    "ChainAnchor",
    "ChainVerifier",
    "Checkpoint",
    "JsonlAnchorSink",
    "MemoryAuditLog",
    "VerifiableAuditLog",
    "VerifyResult",
    "check_audit_key",
    "verify_chain",
]

#: Action of the chain entry a retention purge appends (contractspec-bus `purge_older_than`).
PURGE_ACTION = "audit.purged"

#: Shortest HMAC key accepted, in bytes (use 32 random bytes: `secrets.token_bytes(32)`).
MIN_KEY_BYTES: Final = 16

#: `(seq, hash)` of an org's chain head; `(0, None)` for a head before any entry.
Head = tuple[int, str | None]


class AuditTamperedError(ContractSpecError, RuntimeError):
    """An org's audit chain was changed outside the audit log, so it is not extended.

    Raised when appending to a chain that has entries beyond its head (forged appends) or entries
    but no head (the head was deleted): extending it would either collide with the forged
    positions or bless them. The audited call fails (all or nothing), so nothing is recorded on top
    of a tampered chain. Run `verify(org_id)` to see what is wrong, then remove the forged rows or
    restore the head from a backup or an anchor. `details` holds `org_id`, `head_seq` (or `None`)
    and `last_seq`.
    """

    code = "audit_tampered"

    @classmethod
    def for_chain(
        cls, org_id: str | None, head_seq: int | None, last_seq: int
    ) -> AuditTamperedError:
        """The error for a chain: head at `head_seq` (`None`: missing), entries up to `last_seq`."""
        details = {"org_id": org_id, "head_seq": head_seq, "last_seq": last_seq}
        todo = (
            f"refusing to extend a tampered chain: run verify({org_id!r}), then remove the forged "
            "entries or restore the head"
        )
        if head_seq is None:
            return cls(
                f"the audit chain of org {org_id!r} has entries (up to {last_seq}) but no head: "
                f"the head was deleted; {todo}",
                details=details,
            )
        return cls(
            f"the audit chain of org {org_id!r} has entries beyond its head ({head_seq}), up to "
            f"{last_seq}: they were not appended through the audit log (forged); {todo}",
            details=details,
        )


def check_audit_key(key: bytes | None) -> bytes | None:
    """Validate the HMAC key of a keyed chain (returned unchanged; `None` means unkeyed).

    Raises:
        ConfigurationError: `key` is not `bytes` or shorter than 16 bytes.
    """
    if key is None:
        return None
    if not isinstance(key, bytes | bytearray) or len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"the audit chain key must be at least {MIN_KEY_BYTES} bytes "
            "(use secrets.token_bytes(32) and keep it outside the database)",
            details={"field": "key"},
        )
    return bytes(key)


@define(frozen=True)
class AuditEntry:
    """One stored audit-chain entry: the record, its position and its hashes.

    Attributes:
        seq: Position in the org's chain, from 1.
        record: The `AuditRecord`.
        prev_hash: Hash of the previous entry of the same org (`None` for the first).
        hash: `audit_hash(prev_hash, record.to_dict())` (with the key, in a keyed chain).
    """

    seq: int
    record: AuditRecord
    prev_hash: str | None
    hash: str


@define(frozen=True)
class Checkpoint:
    """Where an org's stored chain starts after a retention purge (contractspec-bus).

    Kept in the same database as the chain and repeated by a chained `audit.purged` entry, so a
    moved checkpoint is detected. Not to be confused with a `ChainAnchor`, which is an exported copy
    of the head.

    Attributes:
        org_id: Tenant.
        seq: Position of the last purged entry.
        hash: Hash of the last purged entry (the `prev_hash` of the first remaining one).
        purged: Entries purged so far in total.
        created_at: UTC time of the purge.
    """

    org_id: str | None
    seq: int
    hash: str
    purged: int
    created_at: datetime


@define(frozen=True)
class ChainAnchor:
    """A copy of an org's chain head, exported to a place a database writer cannot reach.

    `verify(org_id, anchor=anchor)` then checks that the chain still holds entry `seq` with this
    `hash`: rewriting or truncating the chain at or before `seq` — even re-hashing every later
    entry and the head — no longer goes unnoticed.

    Attributes:
        org_id: Tenant.
        seq: Position of the head when exported (0 for an empty chain).
        hash: Hash of that entry (`None` for an empty chain).
        at: UTC time of the export.
    """

    org_id: str | None
    seq: int
    hash: str | None
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON form: `{"org_id", "seq", "hash", "at"}` (`at` in ISO 8601)."""
        return {
            "org_id": self.org_id,
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChainAnchor:
        """Rebuild an anchor from `to_dict()` output."""
        return cls(
            data["org_id"], int(data["seq"]), data["hash"], datetime.fromisoformat(data["at"])
        )


@runtime_checkable
class AnchorSink(Protocol):
    """Where exported chain heads go: anything a database writer cannot rewrite."""

    async def store(self, anchor: ChainAnchor) -> None:
        """Keep `anchor` (append; never overwrite earlier anchors)."""
        ...


class JsonlAnchorSink:
    """An `AnchorSink` appending one JSON line per anchor to a file (an example to adapt).

    Each `store` appends `ChainAnchor.to_dict()` as canonical JSON and `fsync`s the file. Put the
    file where the database's writers cannot reach it (another host, an append-only mount), or
    ship it onwards (a log shipper, object storage with retention locks).

    Args:
        path: The JSON-lines file (created on first `store`).
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def store(self, anchor: ChainAnchor) -> None:
        """Append `anchor` as one line (in a worker thread)."""
        await asyncio.to_thread(self._append, canonical_json(anchor.to_dict()) + "\n")

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    async def anchors(self, org_id: str | None) -> list[ChainAnchor]:
        """Every anchor stored for `org_id`, oldest first (`[]` if the file does not exist)."""
        rows = await asyncio.to_thread(self._read)
        return [a for a in map(ChainAnchor.from_dict, rows) if a.org_id == org_id]

    async def latest(self, org_id: str | None) -> ChainAnchor | None:
        """The anchor stored last for `org_id`, or `None`."""
        found = await self.anchors(org_id)
        return found[-1] if found else None

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


@define(frozen=True)
class VerifyResult:
    """Outcome of verifying one org's chain. Truthy when the chain is intact.

    Attributes:
        ok: Whether every check passed.
        org_id: Tenant verified.
        checked: Entries checked.
        first_bad_seq: Position where the chain first breaks, or `None` (also when the break has
            no position, such as a missing head).
        reason: What is wrong there, in words (`"hash mismatch: the entry was edited"`, ...).
    """

    ok: bool
    org_id: str | None
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.ok


def _column_mismatch(columns: Mapping[str, Any], body: Mapping[str, Any]) -> str | None:
    """The first column whose stored value differs from the hashed body's, or `None`."""
    for name, value in columns.items():
        expected: Any = body.get(name)
        if name == "occurred_at":
            try:
                expected = datetime.fromisoformat(expected)
            except (TypeError, ValueError):
                return name
        if value != expected:
            return name
    return None


class _Unset(Enum):
    UNSET = "unset"


_UNSET: Final = _Unset.UNSET


class ChainVerifier:
    """Incremental chain check: feed entries in `seq` order, then `finish()`.

    Lets SQL adapters verify a chain page by page in constant memory; `verify_chain` runs it over
    an iterable. Checks, in order, for each entry: beyond the head (forged append), position
    contiguous, body's `org_id`, indexed columns against the body, `prev_hash` link, hash scheme
    (keyed or not) and the hash itself, and the anchor; then at the end the retention checkpoint,
    the head and the anchor.

    Args:
        org_id: Tenant whose chain is checked (each body's `org_id` must match).
        checkpoint: Retention checkpoint after purges (contractspec-bus): the chain starts after
            its `seq` and must contain the `audit.purged` entry that repeats it.
        head: The head's `(seq, hash)`, or `None` when the org has no head row. Read it before the
            entries, in the same snapshot; given here, entries beyond it are reported as forged as
            soon as they are fed. May instead be passed to `finish()`.
        key: HMAC key of a keyed chain. Without it a keyed entry fails with
            `"keyed chain: verify with the key"`; with it every entry after the anchor (or all of
            them, without one) must be keyed.
        anchor: A `ChainAnchor` exported earlier. The chain must still hold its position with its
            hash; unkeyed entries up to it are accepted in a keyed chain (history written before
            the key was introduced).

    Raises:
        ConfigurationError: `anchor` belongs to another org, or `key` is too short.
    """

    __slots__ = (
        "_anchor_checked",
        "anchor",
        "checked",
        "checkpoint",
        "expected",
        "head",
        "key",
        "last_purge",
        "org_id",
        "prev",
    )

    def __init__(
        self,
        org_id: str | None,
        checkpoint: Checkpoint | None = None,
        *,
        head: Head | _Unset | None = _UNSET,
        key: bytes | None = None,
        anchor: ChainAnchor | None = None,
    ) -> None:
        if anchor is not None and anchor.org_id != org_id:
            raise ConfigurationError(
                f"the anchor belongs to org {anchor.org_id!r}, not {org_id!r}",
                details={"field": "anchor"},
            )
        self.org_id = org_id
        self.checkpoint = checkpoint
        self.head = head
        self.key = check_audit_key(key)
        self.anchor = anchor
        self.expected = (checkpoint.seq + 1) if checkpoint else 1
        self.prev: str | None = checkpoint.hash if checkpoint else None
        self.last_purge: tuple[int, str] | None = None
        self.checked = 0
        self._anchor_checked = False

    def fail(self, seq: int | None, reason: str) -> VerifyResult:
        """A failed result at `seq`."""
        return VerifyResult(False, self.org_id, self.checked, seq, reason)

    def feed(
        self,
        seq: int,
        body: Mapping[str, Any],
        prev_hash: str | None,
        digest: str,
        columns: Mapping[str, Any] | None = None,
    ) -> VerifyResult | None:
        """Check the next entry; return the failure, or `None` while the chain holds.

        Args:
            seq: The entry's stored position.
            body: Its hashed body (`AuditRecord.to_dict()`).
            prev_hash: Its stored link to the previous entry.
            digest: Its stored hash.
            columns: Values stored next to the body that must repeat it (SQL's indexed columns:
                `{"actor_id": ..., "occurred_at": datetime, ...}`), or `None`.
        """
        self.checked += 1
        head = self.head
        if head is None:
            return self.fail(
                None, "the chain head row is missing: entries exist but the head was deleted"
            )
        if not isinstance(head, _Unset) and seq > head[0]:
            return self.fail(
                seq,
                f"entry {seq} is beyond the chain head ({head[0]}): it was not appended through "
                "the audit log (forged)",
            )
        if seq != self.expected:
            reason = (
                f"entry {self.expected} is missing (found {seq}): entries were deleted"
                if seq > self.expected
                else f"entry {seq} is out of place: entries were reordered or duplicated"
            )
            return self.fail(self.expected, reason)
        if body.get("org_id") != self.org_id:
            return self.fail(
                seq,
                f"entry {seq} belongs to org {body.get('org_id')!r}: it was moved between chains",
            )
        if columns:
            column = _column_mismatch(columns, body)
            if column is not None:
                return self.fail(
                    seq, f"column {column} disagrees with the hashed body: the entry was edited"
                )
        if prev_hash != self.prev:
            return self.fail(
                seq,
                "link broken: prev_hash does not match the previous entry (reordered or deleted)",
            )
        keyed = digest.startswith(KEYED_HASH_PREFIX)
        anchor = self.anchor
        if keyed and self.key is None:
            return self.fail(seq, "keyed chain: verify with the key (the entries are HMAC-SHA256)")
        if not keyed and self.key is not None and (anchor is None or seq > anchor.seq):
            return self.fail(
                seq,
                f"entry {seq} is not keyed in a keyed chain: it was re-hashed by a writer without "
                "the key (entries older than the key verify only up to an anchor taken before it)",
            )
        if audit_hash(self.prev, body, key=self.key if keyed else None) != digest:
            return self.fail(
                seq,
                "hash mismatch: the entry was edited"
                + (", or the chain was keyed with another key" if keyed else ""),
            )
        if anchor is not None and seq == anchor.seq:
            if digest != anchor.hash:
                return self.fail(
                    seq,
                    f"entry {seq} differs from the anchor exported at {anchor.at.isoformat()}: "
                    "the chain was rewritten",
                )
            self._anchor_checked = True
        if body.get("action") == PURGE_ACTION:
            details = body.get("details") or {}
            self.last_purge = (
                int(details.get("through_seq", -1)),
                str(details.get("through_hash")),
            )
        self.prev = digest
        self.expected += 1
        return None

    def finish(self, head: Head | _Unset | None = _UNSET) -> VerifyResult:
        """Check the checkpoint, the head and the anchor against the end of the chain.

        Args:
            head: The head's `(seq, hash)` or `None`; defaults to the one given to the constructor.

        Raises:
            ConfigurationError: No head was given, here or to the constructor.
        """
        if isinstance(head, _Unset):
            head = self.head
        if isinstance(head, _Unset):
            raise ConfigurationError("pass the chain head to ChainVerifier() or finish()")
        last_seq = self.expected - 1
        cp = self.checkpoint
        if cp is not None and self.last_purge != (cp.seq, cp.hash):
            return self.fail(
                cp.seq, "checkpoint does not match the chained audit.purged entry: it was forged"
            )
        if head is None:
            if self.checked or cp is not None:
                return self.fail(None, "the chain head row is missing")
        else:
            head_seq, head_hash = head
            if head_seq < last_seq:
                return self.fail(
                    head_seq + 1,
                    f"entry {head_seq + 1} is beyond the chain head ({head_seq}): it was not "
                    "appended through the audit log (forged)",
                )
            if head_seq != last_seq or head_hash != self.prev:
                return self.fail(
                    last_seq + 1 if head_seq > last_seq else head_seq,
                    f"the head says the chain ends at {head_seq} but it ends at {last_seq}: "
                    "the latest entries were deleted or the head was altered",
                )
        failed = self._check_anchor(last_seq)
        if failed is not None:
            return failed
        return VerifyResult(True, self.org_id, self.checked)

    def _check_anchor(self, last_seq: int) -> VerifyResult | None:
        anchor = self.anchor
        if anchor is None or anchor.seq == 0 or self._anchor_checked:
            return None
        at = anchor.at.isoformat()
        if anchor.seq > last_seq:
            return self.fail(
                last_seq + 1,
                f"the chain ends at {last_seq} but was anchored at {anchor.seq} on {at}: "
                "entries were deleted",
            )
        cp = self.checkpoint
        if cp is not None and anchor.seq == cp.seq and anchor.hash == cp.hash:
            return None
        if cp is not None and anchor.seq <= cp.seq:
            return self.fail(
                anchor.seq,
                f"the anchor (entry {anchor.seq}, {at}) is not in the chain any more: it was "
                f"purged up to {cp.seq}; verify against an anchor taken after the purge",
            )
        return self.fail(anchor.seq, f"entry {anchor.seq} of the anchor ({at}) was not found")


def verify_chain(
    org_id: str | None,
    rows: Iterable[tuple[int, Mapping[str, Any], str | None, str]],
    head: Head | None,
    checkpoint: Checkpoint | None = None,
    *,
    key: bytes | None = None,
    anchor: ChainAnchor | None = None,
) -> VerifyResult:
    """Check one org's chain: positions contiguous, each `prev_hash` linked, each hash recomputed.

    Args:
        org_id: Tenant (for the result; each body's `org_id` must match).
        rows: `(seq, body, prev_hash, hash)` ordered by `seq`.
        head: `(seq, hash)` of the org's head, or `None` when it has none.
        checkpoint: The org's retention checkpoint after purges, or `None`.
        key: HMAC key of a keyed chain (see `ChainVerifier`).
        anchor: A `ChainAnchor` exported earlier that the chain must still contain.

    Returns:
        The `VerifyResult`: the first break found, or `ok=True`. A deleted entry shows as a gap
        (or a head that points past the end), an edited one as a hash mismatch, a reordered one
        as a broken link, a forged append as an entry beyond the head; a forged checkpoint
        disagrees with the chained `audit.purged` entry.

    Raises:
        ConfigurationError: `anchor` belongs to another org, or `key` is too short.
    """
    verifier = ChainVerifier(org_id, checkpoint, head=head, key=key, anchor=anchor)
    for seq, body, prev_hash, digest in rows:
        failed = verifier.feed(seq, body, prev_hash, digest)
        if failed is not None:
            return failed
    return verifier.finish()


@runtime_checkable
class VerifiableAuditLog(Protocol):
    """An audit log whose chains can be verified and anchored (memory and SQL logs, bus trails)."""

    async def verify(
        self, org_id: str | None, *, anchor: ChainAnchor | None = None
    ) -> VerifyResult:
        """Verify the org's chain (see `ChainVerifier`), also against `anchor` when given."""
        ...

    async def anchor(self, org_id: str | None, *, sink: AnchorSink | None = None) -> ChainAnchor:
        """The org's current head as a `ChainAnchor`, also stored in `sink` when given."""
        ...


class MemoryAuditLog:
    """An `AuditSink` keeping a hash-chained log per org in memory.

    Appending is O(1); the chain hashes (`audit_hash`) are computed when entries are first read, so
    the log costs nothing on the hot path of tests and benchmarks. Hashes are fixed from then on:
    records changed, removed or reordered in `records` afterwards no longer match them.

    Args:
        key: HMAC key for a keyed chain (at least 16 bytes), or `None`.
        clock: Time source of anchors.

    Attributes:
        heads: `{org_id: seq}`, the chain head of each org (what `verify` checks the end against;
            exposed for tools and tests).
        key: The HMAC key, or `None`.

    Raises:
        ConfigurationError: `key` is too short.
    """

    __slots__ = ("_chained", "_counts", "_records", "_size", "clock", "heads", "key")

    def __init__(self, *, key: bytes | None = None, clock: Clock | None = None) -> None:
        self.key = check_audit_key(key)
        self.clock: Clock = clock or SystemClock()
        self.heads: dict[str | None, int] = {}
        self._records: list[AuditRecord] = []
        self._chained: list[AuditEntry] = []
        self._counts: dict[str | None, int] = {}
        self._size = 0

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """Append `entry` now (`tx=None`) or when `tx` commits.

        Raises:
            AuditTamperedError: The org's chain has records beyond its head, or records but no
                head (checked now, so the call fails before it commits).
        """
        org = entry.org_id
        if self._counts.get(org, 0) != self.heads.get(org, 0) or len(self._records) != self._size:
            self._check_appendable(org)
        if tx is None:
            self._append(entry)
        else:
            tx.on_commit(partial(self._append, entry))

    def _append(self, entry: AuditRecord) -> None:
        org = entry.org_id
        heads = self.heads
        self._records.append(entry)
        heads[org] = self._counts[org] = heads.get(org, 0) + 1
        self._size += 1

    def _check_appendable(self, org: str | None) -> None:
        """Slow path, after `records` or `heads` were changed behind the log's back."""
        present = sum(1 for r in self._records if r.org_id == org)
        head = self.heads.get(org)
        if present and head is None:
            raise AuditTamperedError.for_chain(org, None, present)
        if head is not None and present > head:
            raise AuditTamperedError.for_chain(org, head, present)
        self._counts[org] = head or 0
        self._size = len(self._records)

    @property
    def records(self) -> list[AuditRecord]:
        """Every committed `AuditRecord`, oldest first (all orgs)."""
        return self._records

    @property
    def entries(self) -> list[AuditEntry]:
        """Every committed `AuditEntry` with its chain position and hashes, oldest first."""
        chained = self._chained
        if len(chained) < len(self._records):
            heads: dict[str | None, tuple[int, str | None]] = {}
            for entry in chained:
                heads[entry.record.org_id] = (entry.seq, entry.hash)
            key = self.key
            for record in self._records[len(chained) :]:
                seq, prev = heads.get(record.org_id, (0, None))
                digest = audit_hash(prev, record.to_dict(), key=key)
                chained.append(AuditEntry(seq + 1, record, prev, digest))
                heads[record.org_id] = (seq + 1, digest)
        return chained

    def for_org(self, org_id: str | None) -> list[AuditEntry]:
        """The chain of one org, oldest first."""
        return [e for e in self.entries if e.record.org_id == org_id]

    async def target_entries(
        self,
        org_id: str | None,
        target_type: str,
        target_id: str,
        *,
        after_seq: int = 0,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """The org's committed entries about one target (`target_type`, `target_id`), oldest
        first, after chain position `after_seq`, at most `limit` (the `AuditTargetReader`
        protocol; workflows with `history="audit"` read their history here)."""
        out = [
            e
            for e in self.for_org(org_id)
            if e.seq > after_seq
            and e.record.target_type == target_type
            and e.record.target_id == target_id
        ]
        return out if limit is None else out[:limit]

    def _head(self, org_id: str | None, chain: list[AuditEntry]) -> Head | None:
        seq = self.heads.get(org_id)
        if seq is None:
            return None
        found = [e.hash for e in chain if e.seq == seq]
        return (seq, found[0] if found else None)

    async def verify(
        self, org_id: str | None, *, anchor: ChainAnchor | None = None
    ) -> VerifyResult:
        """Recompute the org's chain with `ChainVerifier` (see there for what is detected).

        The records are checked as they are now against the hashes fixed when they were first
        read, and the end against `heads`.

        Args:
            org_id: Tenant.
            anchor: A `ChainAnchor` from `anchor()` that the chain must still contain.

        Raises:
            ConfigurationError: `anchor` belongs to another org.
        """
        chain = self.for_org(org_id)
        records = [r for r in self._records if r.org_id == org_id]
        verifier = ChainVerifier(
            org_id, head=self._head(org_id, chain), key=self.key, anchor=anchor
        )
        for entry, current in zip(chain, records, strict=False):
            failed = verifier.feed(entry.seq, current.to_dict(), entry.prev_hash, entry.hash)
            if failed is not None:
                return failed
        return verifier.finish()

    async def anchor(self, org_id: str | None, *, sink: AnchorSink | None = None) -> ChainAnchor:
        """The org's current head as a `ChainAnchor` (also stored in `sink` when given).

        Anchor a chain you have verified: `verify(org_id, anchor=previous)` first.
        """
        head = self._head(org_id, self.for_org(org_id)) or (0, None)
        anchor = ChainAnchor(org_id, head[0], head[1], self.clock.now())
        if sink is not None:
            await sink.store(anchor)
        return anchor

    def __len__(self) -> int:
        return len(self._records)
