"""Records the runtime hands to its ports: events, audit entries, decisions, telemetry, calls.

All are `attrs` value objects compared by value. `Decision` and `EntityChange` are frozen; the four
records made on every call (`EventEnvelope`, `AuditRecord`, `TelemetrySample`, `CallRecord`) are
slotted but not frozen, because a frozen attrs class costs about three times as much to build and
they are built on the hot path. Treat them as immutable: one record is handed to several ports.
Their JSON forms (`to_dict()`) are what SQL stores persist, so they are stable and documented here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID

from attrs import define, field
from pydantic import BaseModel

if TYPE_CHECKING:
    from contractspec.core.errors import ContractSpecError
    from contractspec.core.specs import OperationSpec

__all__ = [
    "KEYED_HASH_PREFIX",
    "REDACTED",
    "AuditRecord",
    "CallRecord",
    "Decision",
    "EntityChange",
    "EventEnvelope",
    "TelemetrySample",
    "audit_hash",
    "canonical_json",
    "redact",
]

#: Placeholder that replaces personal data in audit records and error messages.
REDACTED = "[redacted]"

#: Prefix of a keyed audit-chain hash (`audit_hash(..., key=...)`); unkeyed hashes are plain hex.
KEYED_HASH_PREFIX = "hmac-sha256:"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"cannot serialise {type(value).__name__} to canonical JSON")


def canonical_json(value: Any) -> str:
    """Serialise to canonical JSON: sorted keys, no whitespace, UTF-8 text, stable across runs.

    Datetimes and dates become ISO 8601 strings, decimals and UUIDs strings, enums their values.
    This is the form hashed by the audit chain and idempotency fingerprints.

    Raises:
        TypeError: A value has no canonical JSON form.
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def redact(data: Any, paths: frozenset[str] | set[str], prefix: str = "") -> Any:
    """Return a copy of JSON-like `data` with every dotted path in `paths` replaced by `REDACTED`.

    Paths traverse mappings by key and apply to every element of lists
    (`"contacts.email"` redacts the email of each contact).
    """
    if not paths:
        return data
    if isinstance(data, Mapping):
        out: dict[str, Any] = {}
        for key, value in data.items():
            path = f"{prefix}{key}"
            if path in paths and value is not None:
                out[key] = REDACTED
            elif any(p.startswith(path + ".") for p in paths):
                out[key] = redact(value, paths, path + ".")
            else:
                out[key] = value
        return out
    if isinstance(data, list):
        return [redact(item, paths, prefix) for item in data]
    return data


@define(frozen=True)
class Decision:
    """The answer of a `PolicyDecider`.

    Attributes:
        allowed: Whether the action may proceed.
        reason: Human-readable explanation (always set, also for allows).
        matched_rule: Identifier of the rule or binding that decided, if any.
    """

    allowed: bool
    reason: str
    matched_rule: str | None = None

    @classmethod
    def allow(cls, reason: str, matched_rule: str | None = None) -> Decision:
        """An allowing decision."""
        return cls(True, reason, matched_rule)

    @classmethod
    def deny(cls, reason: str, matched_rule: str | None = None) -> Decision:
        """A denying decision."""
        return cls(False, reason, matched_rule)


@define(hash=False)
class EventEnvelope:
    """One emitted event with its metadata, as published through the `EventPublisher` port.

    Attributes:
        id: Unique event id (from the executor's `IdGenerator`).
        name, version: The event spec it conforms to.
        occurred_at: UTC timestamp from the executor's `Clock`.
        payload: The validated payload model instance.
        org_id: Tenant of the call that emitted it.
        actor_id, actor_kind: Who caused it.
        trace_id, correlation_id, request_id: Propagated from the call context.
        causation_id: The operation call (`operation@version`) or message that caused it.
        key: Ordering key (value of the event spec's `key` field), or `None`.
        operation: `name@version` of the operation whose handler emitted it.
    """

    id: str
    name: str
    version: int
    occurred_at: datetime
    payload: BaseModel
    org_id: str | None = None
    actor_id: str | None = None
    actor_kind: str | None = None
    trace_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    request_id: str | None = None
    key: str | None = None
    operation: str | None = None

    def payload_json(self) -> dict[str, Any]:
        """The payload as a JSON-compatible dict."""
        return self.payload.model_dump(mode="json")

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (payload included) as stored by outboxes."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": self.payload_json(),
            "org_id": self.org_id,
            "actor_id": self.actor_id,
            "actor_kind": self.actor_kind,
            "trace_id": self.trace_id,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "request_id": self.request_id,
            "key": self.key,
            "operation": self.operation,
        }


ChangeOp = Literal["create", "update", "delete"]


@define(frozen=True)
class EntityChange:
    """One write a handler made through a repository, recorded for the audit trail.

    Attributes:
        entity: Entity spec name.
        entity_id: Primary-key value as a string.
        op: `create`, `update` or `delete`.
        before: JSON form of the record before the write (`None` for creates), PII redacted.
        after: JSON form after the write (`None` for deletes), PII redacted.
    """

    entity: str
    entity_id: str
    op: ChangeOp
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None

    def diff(self) -> dict[str, list[Any]]:
        """Field diff `{field: [before, after]}` of the fields that changed."""
        before = dict(self.before or {})
        after = dict(self.after or {})
        return {
            key: [before.get(key), after.get(key)]
            for key in sorted(before.keys() | after.keys())
            if before.get(key) != after.get(key)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form with the field diff."""
        return {
            "entity": self.entity,
            "entity_id": self.entity_id,
            "op": self.op,
            "changes": self.diff(),
        }


AuditOutcome = Literal["success", "denied", "failed", "replayed"]


@define(hash=False)
class AuditRecord:
    """What an `AuditSink` receives for each audited call.

    Attributes:
        id: Unique id.
        occurred_at: UTC timestamp.
        action: Operation name (`crm.deal.move`) or another action name.
        outcome: `success`, `denied` (policy said no), `failed`, or `replayed` (a repeat of an
            idempotent call answered from its stored outcome; the handler did not run).
        org_id: Tenant.
        actor_id, actor_kind: Who acted.
        operation_version: Version of the operation, when the action is an operation.
        target_type, target_id: The resource acted upon (from the first entity change, or set by
            the handler with `ctx.set_audit_target`).
        changes: Entity writes with before/after (PII redacted).
        request_id, trace_id: Correlation with logs and traces.
        details: Extra JSON data (denial reason, error code, ...).
    """

    id: str
    occurred_at: datetime
    action: str
    outcome: AuditOutcome
    org_id: str | None = None
    actor_id: str | None = None
    actor_kind: str | None = None
    operation_version: int | None = None
    target_type: str | None = None
    target_id: str | None = None
    changes: tuple[EntityChange, ...] = ()
    request_id: str | None = None
    trace_id: str | None = None
    details: Mapping[str, Any] = field(factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """Rebuild a record from `to_dict()` output (changes keep their field diff)."""
        changes = tuple(
            EntityChange(
                entity=c["entity"],
                entity_id=c["entity_id"],
                op=c["op"],
                before=None if c["op"] == "create" else {k: v[0] for k, v in c["changes"].items()},
                after=None if c["op"] == "delete" else {k: v[1] for k, v in c["changes"].items()},
            )
            for c in data.get("changes", ())
        )
        return cls(
            id=data["id"],
            occurred_at=datetime.fromisoformat(data["occurred_at"]),
            action=data["action"],
            outcome=data["outcome"],
            org_id=data.get("org_id"),
            actor_id=data.get("actor_id"),
            actor_kind=data.get("actor_kind"),
            operation_version=data.get("operation_version"),
            target_type=data.get("target_type"),
            target_id=data.get("target_id"),
            changes=changes,
            request_id=data.get("request_id"),
            trace_id=data.get("trace_id"),
            details=dict(data.get("details") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form; the body hashed by the audit chain."""
        return {
            "id": self.id,
            "occurred_at": self.occurred_at.isoformat(),
            "action": self.action,
            "outcome": self.outcome,
            "org_id": self.org_id,
            "actor_id": self.actor_id,
            "actor_kind": self.actor_kind,
            "operation_version": self.operation_version,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "changes": [c.to_dict() for c in self.changes],
            "request_id": self.request_id,
            "trace_id": self.trace_id,
            "details": dict(self.details),
        }


def audit_hash(prev_hash: str | None, body: Mapping[str, Any], *, key: bytes | None = None) -> str:
    """Hash of one audit-chain entry over `prev_hash` and the canonical JSON body.

    Unkeyed (the default): `hash_n = sha256(hash_{n-1} + "\\n" + canonical_json(body_n))` as 64
    lowercase hex characters, with the empty string as the first entry's previous hash. Keyed
    (`key=`): `"hmac-sha256:" + base64url(HMAC-SHA256(key, same message))` without padding
    (RFC 2104 HMAC, RFC 4648 section 5 alphabet), 55 characters, so a writer without the key cannot
    recompute it. Editing, deleting or reordering any entry changes every later hash, which is what
    `verify()` in the audit stores checks.

    Args:
        prev_hash: Hash of the previous entry of the same org, or `None` for the first.
        body: `AuditRecord.to_dict()` of the entry.
        key: HMAC key of a keyed chain, or `None`.

    Returns:
        64 lowercase hex characters, or `"hmac-sha256:"` + 43 base64url characters when keyed.
    """
    message = (prev_hash or "").encode() + b"\n" + canonical_json(body).encode()
    if key is None:
        return hashlib.sha256(message).hexdigest()
    mac = hmac.new(key, message, hashlib.sha256).digest()
    return KEYED_HASH_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


@define(hash=False)
class TelemetrySample:
    """One call's unsampled telemetry, as received by the `TelemetrySink` port.

    Attributes:
        operation, version: What ran.
        variant: The version chosen by the `VariantResolver`, or `None` when none was involved.
        org_id, actor_id, channel: Who, for which tenant, from where.
        duration_ms: Wall time of the whole pipeline, in milliseconds.
        success: Whether the call returned a result.
        error_code: `ContractSpecError.code` of the failure, or `internal_error`.
        payload_size: Size of the raw input in bytes when the adapter knows it, else `None`.
        trace_id: Trace identifier.
        timestamp: UTC start time of the call.
    """

    operation: str
    version: int
    variant: int | None
    org_id: str | None
    actor_id: str | None
    channel: str
    duration_ms: float
    success: bool
    error_code: str | None
    payload_size: int | None
    trace_id: str | None
    timestamp: datetime


@define(hash=False)
class CallRecord:
    """A complete call (input, output or error), as received by the `TrafficSink` port.

    Sinks decide themselves what to keep and serialise: the executor only hands references.

    Attributes:
        spec: The operation spec that ran (or was resolved before the failure).
        input: The validated input model, or the raw input when validation failed.
        output: The output model, or `None` on failure.
        error: The `ContractSpecError` raised, or `None`.
        org_id, actor_id, trace_id, request_id, channel: From the call context.
        actor_kind, actor_roles: The caller's kind (`user`, `agent`, ...) and roles, so replays
            can run as the same kind of caller.
        started_at: UTC start time.
        duration_ms: Wall time in milliseconds.
        variant: Version chosen by the `VariantResolver`, if any.
        events: The events the call emitted and committed, in emission order (empty for failed
            calls, queries and idempotent replays).
    """

    spec: OperationSpec
    input: Any
    output: BaseModel | None
    error: ContractSpecError | None
    org_id: str | None
    actor_id: str | None
    trace_id: str | None
    request_id: str | None
    channel: str
    started_at: datetime
    duration_ms: float
    variant: int | None = None
    actor_kind: str | None = None
    actor_roles: frozenset[str] = frozenset()
    events: tuple[EventEnvelope, ...] = ()
