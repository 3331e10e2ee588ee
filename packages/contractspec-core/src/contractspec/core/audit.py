"""The audit log's append side in memory, and what every audit store shares.

Every audited call appends one `AuditRecord` to its org's hash chain,
`hash_n = sha256(hash_{n-1} + "\\n" + canonical_json(body_n))` (see
`contractspec.core.records.audit_hash`). `MemoryAuditLog` is the in-memory `AuditSink`;
`contractspec.core.sql.SqlAuditLog` is the SQL one.
"""

from __future__ import annotations

from functools import partial

from attrs import define

from contractspec.core.records import AuditRecord, audit_hash
from contractspec.core.transactions import Transaction

__all__ = ["AuditEntry", "MemoryAuditLog"]


@define(frozen=True)
class AuditEntry:
    """One stored audit-chain entry: the record, its position and its hashes.

    Attributes:
        seq: Position in the org's chain, from 1.
        record: The `AuditRecord`.
        prev_hash: Hash of the previous entry of the same org (`None` for the first).
        hash: `audit_hash(prev_hash, record.to_dict())`.
    """

    seq: int
    record: AuditRecord
    prev_hash: str | None
    hash: str


class MemoryAuditLog:
    """An `AuditSink` keeping a hash-chained log per org in memory.

    Appending is O(1); the chain hashes (`audit_hash`) are computed when entries are read, so the
    log costs nothing on the hot path of tests and benchmarks.
    """

    __slots__ = ("_appended", "_chained", "_records")

    def __init__(self) -> None:
        self._records: list[AuditRecord] = []
        self._chained: list[AuditEntry] = []
        self._appended: dict[str | None, int] = {}

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """Append `entry` now (`tx=None`) or when `tx` commits."""
        if tx is None:
            self._append(entry)
        else:
            tx.on_commit(partial(self._append, entry))

    def _append(self, entry: AuditRecord) -> None:
        self._records.append(entry)
        appended = self._appended
        appended[entry.org_id] = appended.get(entry.org_id, 0) + 1

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
            for record in self._records[len(chained) :]:
                seq, prev = heads.get(record.org_id, (0, None))
                digest = audit_hash(prev, record.to_dict())
                chained.append(AuditEntry(seq + 1, record, prev, digest))
                heads[record.org_id] = (seq + 1, digest)
        return chained

    def for_org(self, org_id: str | None) -> list[AuditEntry]:
        """The chain of one org, oldest first."""
        return [e for e in self.entries if e.record.org_id == org_id]

    def verify(self, org_id: str | None) -> bool:
        """Recompute the org's chain; `False` if any entry was edited, removed or reordered.

        Hashes are fixed when entries are first read (`entries`, `for_org`, `verify`); records
        changed, removed or reordered in `records` after that no longer match them. The number of
        entries appended per org acts as the chain head, so removing the newest entry is caught.
        """
        chain = self.for_org(org_id)
        records = [r for r in self._records if r.org_id == org_id]
        if not (len(records) == len(chain) == self._appended.get(org_id, 0)):
            return False
        prev: str | None = None
        for expected_seq, (entry, current) in enumerate(zip(chain, records, strict=True), start=1):
            if entry.seq != expected_seq or entry.prev_hash != prev or entry.record is not current:
                return False
            if audit_hash(prev, current.to_dict()) != entry.hash:
                return False
            prev = entry.hash
        return True

    def __len__(self) -> int:
        return len(self._records)
