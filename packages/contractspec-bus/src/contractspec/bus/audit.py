"""Audit trail: queries, retention with checkpoints, tamper-evident verification, event auditing.

The append side and the verifier are core's: `MemoryAuditLog` / `SqlAuditLog` write
`AuditRecord`s into a hash chain per org, `hash_n = sha256(hash_{n-1} + "\\n" +
canonical_json(body_n))` or an HMAC of the same with an app-held key (see
`contractspec.core.audit_hash`), and `contractspec.core.ChainVerifier` checks it. This module adds
what operators need on top:

* `query(...)` by actor, target, action, outcome and time range, with cursor pagination;
* `purge_older_than(org_id, cutoff)` that deletes a prefix of the chain, stores a **checkpoint**
  (the last purged position and hash) and appends an `audit.purged` entry to the chain that
  repeats it, so the remaining chain still verifies and a forged checkpoint is detected;
* `verify(org_id, anchor=...)` returning a `VerifyResult` that names the first edited, deleted,
  reordered or forged entry (core's verifier; `ChainVerifier`, `VerifyResult`, `Checkpoint`,
  `verify_chain` and `PURGE_ACTION` are re-exported from `contractspec.core`);
* `anchor(org_id, sink=...)` exporting the head as a `ChainAnchor` to check later;
* `AuditableEventBus`, an `EventPublisher` wrapper that audits every published event, with the
  payload's personal data redacted or hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from attrs import define
from pydantic import BaseModel

from contractspec.bus.stores import Page, check_page
from contractspec.core import (
    PURGE_ACTION,
    REDACTED,
    AnchorSink,
    AuditEntry,
    AuditRecord,
    AuditSink,
    AuditTamperedError,
    ChainAnchor,
    ChainVerifier,
    Checkpoint,
    Clock,
    ConfigurationError,
    EventEnvelope,
    EventPublisher,
    IdGenerator,
    SpecRegistry,
    SystemClock,
    Transaction,
    UuidGenerator,
    VerifyResult,
    audit_hash,
    canonical_json,
    verify_chain,
)
from contractspec.core.audit import check_audit_key
from contractspec.core.specs import PiiMarker

__all__ = [
    "PURGE_ACTION",
    "AuditFilter",
    "AuditTrail",
    "AuditableEventBus",
    "ChainVerifier",
    "Checkpoint",
    "MemoryAuditTrail",
    "PurgeResult",
    "VerifyResult",
    "mask_pii",
    "pii_paths",
    "verify_chain",
]


@define(frozen=True)
class AuditFilter:
    """Conditions of an audit query (all optional, combined with AND).

    Attributes:
        actor_id, actor_kind: Who acted.
        action: Exact action name, or a prefix ending in `*` (`crm.deal.*`).
        outcome: `success`, `denied` or `failed`.
        target_type, target_id: What was acted upon.
        since: Inclusive lower bound of `occurred_at` (UTC).
        until: Exclusive upper bound of `occurred_at` (UTC).
        request_id, trace_id: Correlation ids.
    """

    actor_id: str | None = None
    actor_kind: str | None = None
    action: str | None = None
    outcome: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    request_id: str | None = None
    trace_id: str | None = None

    def __attrs_post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ConfigurationError(
                    f"{name} must be a timezone-aware datetime (UTC), got a naive one",
                    details={"field": name},
                )
        if self.since and self.until and self.since >= self.until:
            raise ConfigurationError("since must be before until", details={"field": "since"})
        if self.action is not None and "*" in self.action[:-1]:
            raise ConfigurationError(
                f"action {self.action!r}: '*' is only allowed at the end (a prefix match)",
                details={"field": "action"},
            )

    def matches(self, record: AuditRecord) -> bool:
        """Whether `record` satisfies every condition (the memory adapter's query)."""
        for name in (
            "actor_id",
            "actor_kind",
            "outcome",
            "target_type",
            "target_id",
            "request_id",
            "trace_id",
        ):
            wanted = getattr(self, name)
            if wanted is not None and getattr(record, name) != wanted:
                return False
        if self.action is not None:
            if self.action.endswith("*"):
                if not record.action.startswith(self.action[:-1]):
                    return False
            elif record.action != self.action:
                return False
        if self.since is not None and record.occurred_at < self.since:
            return False
        return not (self.until is not None and record.occurred_at >= self.until)


@define(frozen=True)
class PurgeResult:
    """Outcome of `purge_older_than`.

    Attributes:
        purged: Entries deleted by this call.
        checkpoint: The checkpoint now in force (`None` if nothing was ever purged).
    """

    purged: int
    checkpoint: Checkpoint | None


@runtime_checkable
class AuditTrail(Protocol):
    """An audit log you can append to, query, purge, verify and anchor (memory and SQL adapters).

    It is a `contractspec.core.VerifiableAuditLog` too.
    """

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """`AuditSink`: append `entry` (in `tx` when given)."""
        ...

    async def query(
        self,
        org_id: str | None,
        filter: AuditFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> Page:
        """Entries (`AuditEntry`) of one org matching `filter`, one page at a time."""
        ...

    async def verify(
        self, org_id: str | None, *, anchor: ChainAnchor | None = None
    ) -> VerifyResult:
        """Verify the org's chain from its checkpoint (core's `ChainVerifier`), and `anchor`."""
        ...

    async def anchor(self, org_id: str | None, *, sink: AnchorSink | None = None) -> ChainAnchor:
        """The org's current head as a `ChainAnchor`, also stored in `sink` when given."""
        ...

    async def purge_older_than(
        self, org_id: str | None, cutoff: datetime, *, actor_id: str = "system"
    ) -> PurgeResult:
        """Delete the org's oldest entries that occurred before `cutoff`, keeping it verifiable."""
        ...

    async def checkpoint(self, org_id: str | None) -> Checkpoint | None:
        """The org's checkpoint, or `None` if nothing was purged."""
        ...


def _purge_record(
    ids: IdGenerator,
    at: datetime,
    org_id: str | None,
    cp: Checkpoint,
    n: int,
    cutoff: datetime,
    actor_id: str,
) -> AuditRecord:
    return AuditRecord(
        id=ids.new_id(),
        occurred_at=at,
        action=PURGE_ACTION,
        outcome="success",
        org_id=org_id,
        actor_id=actor_id,
        actor_kind="system",
        target_type="audit_log",
        target_id=org_id or "",
        details={
            "through_seq": cp.seq,
            "through_hash": cp.hash,
            "purged": n,
            "cutoff": cutoff.isoformat(),
        },
    )


def _check_cutoff(cutoff: datetime) -> None:
    if not isinstance(cutoff, datetime) or cutoff.tzinfo is None:
        raise ConfigurationError(
            f"cutoff must be a timezone-aware datetime (UTC), got {cutoff!r}",
            details={"field": "cutoff"},
        )


class MemoryAuditTrail:
    """`AuditTrail` in memory: entries are hashed into their org's chain when they commit.

    Args:
        key: HMAC key for a keyed chain (at least 16 bytes), or `None`.
        clock: Time source of purge entries and anchors.
        ids: Id source of purge entries.

    Attributes:
        chains: `{org_id: [AuditEntry, ...]}`, the stored chains (exposed for tools and tests).
        heads: `{org_id: (seq, hash)}`, the last position and hash of each chain.

    Raises:
        ConfigurationError: `key` is too short.
    """

    def __init__(
        self,
        *,
        key: bytes | None = None,
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
    ) -> None:
        self.key = check_audit_key(key)
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self.chains: dict[str | None, list[AuditEntry]] = {}
        self.heads: dict[str | None, tuple[int, str | None]] = {}
        self._checkpoints: dict[str | None, Checkpoint] = {}

    def _check_appendable(self, org: str | None) -> None:
        chain = self.chains.get(org)
        if not chain:
            return
        head = self.heads.get(org)
        if head is None:
            raise AuditTamperedError.for_chain(org, None, chain[-1].seq)
        if chain[-1].seq > head[0]:
            raise AuditTamperedError.for_chain(org, head[0], chain[-1].seq)

    def _append(self, record: AuditRecord) -> None:
        org = record.org_id
        seq, prev = self.heads.get(org, (0, None))
        digest = audit_hash(prev, record.to_dict(), key=self.key)
        self.chains.setdefault(org, []).append(AuditEntry(seq + 1, record, prev, digest))
        self.heads[org] = (seq + 1, digest)

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """Append now (`tx=None`) or when `tx` commits.

        Raises:
            AuditTamperedError: The org's chain has entries beyond its head, or no head.
        """
        self._check_appendable(entry.org_id)
        if tx is None:
            self._append(entry)
        else:
            tx.on_commit(lambda: self._append(entry))

    async def query(
        self,
        org_id: str | None,
        filter: AuditFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
        newest_first: bool = True,
    ) -> Page:
        """Matching entries; the cursor is the position of the last entry returned."""
        check_page(limit)
        bound = _seq_cursor(cursor)
        entries = list(self.chains.get(org_id, ()))
        if newest_first:
            entries.reverse()
        out: list[AuditEntry] = []
        more = False
        for e in entries:
            if bound is not None and (e.seq >= bound if newest_first else e.seq <= bound):
                continue
            if filter is not None and not filter.matches(e.record):
                continue
            if len(out) == limit:
                more = True
                break
            out.append(e)
        return Page(tuple(out), str(out[-1].seq) if more and out else None)

    async def verify(
        self, org_id: str | None, *, anchor: ChainAnchor | None = None
    ) -> VerifyResult:
        """Recompute the org's chain from its checkpoint (see `contractspec.core.ChainVerifier`).

        Raises:
            ConfigurationError: `anchor` belongs to another org.
        """
        rows = [
            (e.seq, e.record.to_dict(), e.prev_hash, e.hash) for e in self.chains.get(org_id, ())
        ]
        return verify_chain(
            org_id,
            rows,
            self.heads.get(org_id),
            self._checkpoints.get(org_id),
            key=self.key,
            anchor=anchor,
        )

    async def anchor(self, org_id: str | None, *, sink: AnchorSink | None = None) -> ChainAnchor:
        """The org's current head as a `ChainAnchor` (also stored in `sink` when given)."""
        seq, digest = self.heads.get(org_id, (0, None))
        anchor = ChainAnchor(org_id, seq, digest, self.clock.now())
        if sink is not None:
            await sink.store(anchor)
        return anchor

    async def checkpoint(self, org_id: str | None) -> Checkpoint | None:
        """The org's checkpoint."""
        return self._checkpoints.get(org_id)

    async def purge_older_than(
        self, org_id: str | None, cutoff: datetime, *, actor_id: str = "system"
    ) -> PurgeResult:
        """Delete the longest prefix of entries older than `cutoff`; checkpoint and chain it."""
        _check_cutoff(cutoff)
        chain = self.chains.get(org_id, [])
        n = 0
        while n < len(chain) and chain[n].record.occurred_at < cutoff:
            n += 1
        current = self._checkpoints.get(org_id)
        if n == 0:
            return PurgeResult(0, current)
        last = chain[n - 1]
        cp = Checkpoint(
            org_id, last.seq, last.hash, (current.purged if current else 0) + n, self.clock.now()
        )
        del chain[:n]
        self._checkpoints[org_id] = cp
        self._append(_purge_record(self.ids, cp.created_at, org_id, cp, n, cutoff, actor_id))
        return PurgeResult(n, cp)


def _seq_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise ConfigurationError(
            f"cursor {cursor!r} is not valid: pass back the next_cursor of a previous page",
            details={"field": "cursor"},
        )
    return int(cursor)


# --------------------------------------------------------------------------------------------
# PII and event auditing
# --------------------------------------------------------------------------------------------


def pii_paths(
    model: type[BaseModel], prefix: str = "", _seen: frozenset[type] = frozenset()
) -> set[str]:
    """Dotted paths of fields annotated with `PII` in `model` and the models nested in it."""
    if model in _seen:
        return set()
    found: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        if any(isinstance(m, PiiMarker) for m in info.metadata):
            found.add(path)
        for nested in _models_in(info.annotation):
            found |= pii_paths(nested, path + ".", _seen | {model})
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    from typing import get_args

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


PiiMode = Literal["redact", "hash"]


def mask_pii(
    data: Any,
    paths: frozenset[str] | set[str],
    *,
    mode: PiiMode = "redact",
    key: bytes | None = None,
    prefix: str = "",
) -> Any:
    """Copy of JSON-like `data` with the values at `paths` redacted or hashed.

    `redact` replaces a value with `"[redacted]"`. `hash` replaces it with
    `"hmac-sha256:<hex>"` of its canonical JSON under `key` (or `"sha256:<hex>"` without a key,
    which a dictionary attack can reverse for guessable values such as emails: pass a key). Equal
    values hash equally, so audits stay searchable without keeping the data. Paths cross lists.
    """
    if not paths:
        return data
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for k, v in data.items():
            path = f"{prefix}{k}"
            if path in paths and v is not None:
                out[k] = _mask_value(v, mode, key)
            elif any(p.startswith(path + ".") for p in paths):
                out[k] = mask_pii(v, paths, mode=mode, key=key, prefix=path + ".")
            else:
                out[k] = v
        return out
    if isinstance(data, list):
        return [mask_pii(v, paths, mode=mode, key=key, prefix=prefix) for v in data]
    return data


def _mask_value(value: Any, mode: PiiMode, key: bytes | None) -> str:
    if mode == "redact":
        return REDACTED
    raw = canonical_json(value).encode()
    if key is not None:
        return "hmac-sha256:" + hmac.new(key, raw, hashlib.sha256).hexdigest()
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class AuditableEventBus:
    """An `EventPublisher` that audits every event it publishes, then hands them on.

    Each event becomes an `AuditRecord` (action = event name, actor and correlation from the
    envelope, target = the event's aggregate and key, details = event id, version and payload with
    personal data masked) recorded in the publishing transaction, so the audit entry and the
    event commit together.

    Args:
        inner: The publisher events go to next (an `EventBus`, `SqlOutboxStore`, ...).
        audit: Where audit records go (core's `SqlAuditLog`/`MemoryAuditLog`, or an `AuditTrail`).
        registry: Event specs whose `pii` paths are masked; without one (or for events it does not
            know) fields annotated with `PII` in the payload model are masked.
        pii: `redact` (default) or `hash`.
        pii_key: HMAC key for `hash` mode.
        include_payload: Store the (masked) payload in the record's details.
        ids: Id and time sources for the audit records.
        clock: Id and time sources for the audit records.

    Raises:
        ConfigurationError: Unknown `pii` mode.
    """

    def __init__(
        self,
        inner: EventPublisher,
        audit: AuditSink,
        *,
        registry: SpecRegistry | None = None,
        pii: PiiMode = "redact",
        pii_key: bytes | None = None,
        include_payload: bool = True,
        ids: IdGenerator | None = None,
        clock: Clock | None = None,
    ) -> None:
        if pii not in ("redact", "hash"):
            raise ConfigurationError(
                f"pii must be 'redact' or 'hash', got {pii!r}", details={"field": "pii"}
            )
        self.inner = inner
        self.audit = audit
        self.registry = registry
        self.pii: PiiMode = pii
        self.pii_key = pii_key
        self.include_payload = include_payload
        self.ids: IdGenerator = ids or UuidGenerator()
        self.clock: Clock = clock or SystemClock()
        self._paths: dict[tuple[str, int], frozenset[str]] = {}

    def _pii_for(self, event: EventEnvelope) -> frozenset[str]:
        key = (event.name, event.version)
        found = self._paths.get(key)
        if found is None:
            paths: set[str] = set()
            if self.registry is not None:
                with contextlib.suppress(LookupError):
                    paths |= self.registry.get_event(event.name, event.version).pii
            paths |= pii_paths(type(event.payload))
            found = self._paths[key] = frozenset(paths)
        return found

    def audit_record(self, event: EventEnvelope) -> AuditRecord:
        """The audit record of one event (PII masked)."""
        details: dict[str, Any] = {
            "event_id": event.id,
            "event_version": event.version,
            "operation": event.operation,
            "correlation_id": event.correlation_id,
            "causation_id": event.causation_id,
        }
        if self.include_payload:
            details["payload"] = mask_pii(
                event.payload_json(), self._pii_for(event), mode=self.pii, key=self.pii_key
            )
        return AuditRecord(
            id=self.ids.new_id(),
            occurred_at=event.occurred_at,
            action=event.name,
            outcome="success",
            org_id=event.org_id,
            actor_id=event.actor_id,
            actor_kind=event.actor_kind,
            target_type=event.name.rsplit(".", 1)[0] if event.key is not None else None,
            target_id=event.key,
            request_id=event.request_id,
            trace_id=event.trace_id,
            details=details,
        )

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Record one audit entry per event in `tx`, then publish through `inner`."""
        for event in events:
            await self.audit.record(self.audit_record(event), tx)
        await self.inner.publish(events, tx)

    def __getattr__(self, name: str) -> Any:
        # Delegate everything else (subscribe, deliver, drain, ...) to the wrapped publisher.
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)
