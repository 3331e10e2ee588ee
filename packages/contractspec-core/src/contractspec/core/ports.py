"""Ports: the `typing.Protocol`s through which the runtime talks to everything else.

Core defines them; packages implement them (identity → `PolicyDecider`, bus → `EventPublisher` and
`AuditSink`, jobs → `JobEnqueuer`, evolution → `TelemetrySink`, testing → `TrafficSink`, growth →
`VariantResolver`). Packages never import each other sideways: they meet here.

All protocols are `runtime_checkable`, so `isinstance(obj, EventPublisher)` checks the shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from os import urandom
from time import time_ns
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from attrs import define

if TYPE_CHECKING:
    from pydantic import BaseModel

    from contractspec.core.context import Actor, CallContext, Resource
    from contractspec.core.records import (
        AuditRecord,
        CallRecord,
        Decision,
        EventEnvelope,
        TelemetrySample,
    )
    from contractspec.core.repository import Repository
    from contractspec.core.specs import EntitySpec
    from contractspec.core.transactions import Transaction

__all__ = [
    "AuditSink",
    "Clock",
    "EntityStore",
    "EventPublisher",
    "IdGenerator",
    "IdempotencyRecord",
    "IdempotencyStore",
    "JobEnqueuer",
    "MembershipChecker",
    "PolicyDecider",
    "SystemClock",
    "TelemetrySink",
    "TrafficSink",
    "UnitOfWork",
    "UuidGenerator",
    "VariantResolver",
]


@runtime_checkable
class Clock(Protocol):
    """Source of the current time. Must return timezone-aware UTC datetimes."""

    def now(self) -> datetime:
        """The current instant, timezone-aware, in UTC."""
        ...


@runtime_checkable
class IdGenerator(Protocol):
    """Source of unique identifiers for events, audit entries and generated records."""

    def new_id(self) -> str:
        """A new identifier, unique for the lifetime of the data."""
        ...


class SystemClock:
    """The real clock: `datetime.now(UTC)`."""

    __slots__ = ()

    def now(self) -> datetime:
        """The current UTC time."""
        return datetime.now(UTC)


_UUID7_MASK = ~(0xF << 76) & ~(0x3 << 62)
_UUID7_BITS = (0x7 << 76) | (0x2 << 62)  # version 7 in bits 76-79, variant 0b10 in bits 62-63
_RANDOM_BLOCK = 10 * 512


class UuidGenerator:
    """Time-ordered UUIDv7 identifiers (RFC 9562, section 5.7) as 36-character strings.

    48 bits of Unix time in milliseconds, then 74 random bits from `os.urandom` (the OS CSPRNG,
    read in blocks of 512 ids to avoid a system call per id). Ids sort roughly by creation time,
    which keeps B-tree indexes compact, and are unique without coordination.
    """

    __slots__ = ("_block", "_offset")

    def __init__(self) -> None:
        self._block = b""
        self._offset = _RANDOM_BLOCK

    def new_id(self) -> str:
        """A new UUIDv7 string, e.g. `'01936f3e-7c2a-7b1d-9f3e-2c4b5d6e7f80'`."""
        offset = self._offset
        if offset >= _RANDOM_BLOCK:
            self._block = urandom(_RANDOM_BLOCK)
            offset = 0
        self._offset = offset + 10
        rand = int.from_bytes(self._block[offset : offset + 10], "big")
        h = "%032x" % (((time_ns() // 1_000_000) << 80 | rand) & _UUID7_MASK | _UUID7_BITS)
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@runtime_checkable
class PolicyDecider(Protocol):
    """Decides whether `subject` may perform `action` on `resource`.

    The executor calls it for every permission an operation `requires(...)`, with
    `resource=Resource(type=<spec resource or operation name>, org_id=ctx.org_id)`. It may return a
    `Decision` or an awaitable of one. Deny by default: anything not explicitly allowed is denied.
    """

    def decide(
        self, subject: Actor, action: str, resource: Resource, ctx: CallContext
    ) -> Decision | Awaitable[Decision]:
        """Return the decision with its reason and the rule that matched."""
        ...


@runtime_checkable
class MembershipChecker(Protocol):
    """A `PolicyDecider` that knows which orgs an actor belongs to (the identity `PolicyEngine`).

    When the executor's policy also has this method, every call of a non-public operation that
    names a tenant (`CallContext.org_id`) is first checked for membership: a caller who is not a
    member of the org is denied, whatever permissions its roles grant elsewhere. A tenant therefore
    never comes from the client alone, even behind a misconfigured adapter.
    """

    def is_member(self, subject: Actor, org_id: str) -> bool | Awaitable[bool]:
        """Whether `subject` belongs to `org_id` (sync or async)."""
        ...


@runtime_checkable
class EventPublisher(Protocol):
    """Receives the events a successful call emitted.

    `tx` is the call's transaction: transactional publishers (an outbox) write through it so the
    events commit or roll back with the handler's writes; others defer delivery with
    `tx.on_commit(...)`. Publishing must not deliver anything from a call that later rolls back.
    """

    async def publish(self, events: Sequence[EventEnvelope], tx: Transaction) -> None:
        """Stage `events` (in emission order) for delivery when `tx` commits."""
        ...


@runtime_checkable
class AuditSink(Protocol):
    """Receives one `AuditRecord` per audited call.

    Successful calls are recorded inside the call's transaction (`tx` given); denials are recorded
    on their own (`tx=None`) since nothing else is written.
    """

    async def record(self, entry: AuditRecord, tx: Transaction | None) -> None:
        """Append `entry`; with a transaction, it commits or rolls back with it."""
        ...


@runtime_checkable
class TelemetrySink(Protocol):
    """Receives one unsampled `TelemetrySample` per call. Must be fast and must not raise."""

    def record(self, sample: TelemetrySample) -> None:
        """Accept the sample (buffer it; do not block)."""
        ...


@runtime_checkable
class TrafficSink(Protocol):
    """Receives finished calls; decides itself what to sample, redact and store.

    A sink may also define `wants(spec, trace_id) -> bool`: the executor then asks it first and builds
    the `CallRecord` of a *successful* call only when it answers `True` (failed calls are always
    handed over, so a rare error is never missed). That keeps a sink sampling at rate 0 nearly free.
    """

    def record(self, call: CallRecord) -> None:
        """Accept the call record. Must be fast and must not raise."""
        ...


@runtime_checkable
class VariantResolver(Protocol):
    """Chooses which version of an operation serves a call (staged rollouts, experiments)."""

    def resolve(self, name: str, ctx: CallContext) -> int | None:
        """Return the version to run for this caller, or `None` for the latest version."""
        ...


@runtime_checkable
class JobEnqueuer(Protocol):
    """Enqueues background jobs, inside the caller's transaction when one is given."""

    async def enqueue(
        self,
        job_type: str,
        payload: BaseModel | dict[str, Any],
        *,
        tx: Transaction | None = None,
        **options: Any,
    ) -> str:
        """Enqueue a job and return its id; with `tx`, the job exists iff `tx` commits."""
        ...


@runtime_checkable
class UnitOfWork(Protocol):
    """Begins transactions. Memory and SQL implementations ship with core."""

    async def begin(self, *, readonly: bool = False) -> Transaction:
        """Begin a transaction; `readonly=True` for queries."""
        ...


@runtime_checkable
class EntityStore(Protocol):
    """Gives repositories over entity specs, bound to one transaction and one tenant."""

    def repository(
        self, entity: EntitySpec[Any], tx: Transaction, org_id: str | None
    ) -> Repository[Any]:
        """A repository for `entity` inside `tx`, scoped to `org_id` when the entity is tenant-scoped.

        Raises:
            TenantScopeError: The entity is tenant-scoped and `org_id` is `None`.
            NotFoundError: The entity is not known to this store.
        """
        ...


@define(frozen=True)
class IdempotencyRecord:
    """The stored outcome of one idempotent command call.

    Attributes:
        org_id: Tenant (`None` for calls without one).
        operation: Operation name (keys are scoped per operation).
        key: The caller's idempotency key.
        fingerprint: SHA-256 of the operation version and canonical input.
        output: JSON form of the output model; `None` only while the reserving call runs (never
            visible to other transactions).
        created_at: UTC time the key was reserved.
    """

    org_id: str | None
    operation: str
    key: str
    fingerprint: str
    output: dict[str, Any] | None
    created_at: datetime


@runtime_checkable
class IdempotencyStore(Protocol):
    """Reserves idempotency keys and stores the outcomes of idempotent calls.

    The executor reserves the key *before* the handler runs, inside the call's transaction, and
    completes it with the output in the same transaction: concurrent callers with one key run the
    handler once, and a call that rolls back (or crashes) leaves no reservation behind.
    """

    async def get(
        self, tx: Transaction, org_id: str | None, operation: str, key: str
    ) -> IdempotencyRecord | None:
        """The stored record for the key (including one staged in `tx`), or `None`."""
        ...

    async def reserve(
        self,
        tx: Transaction,
        org_id: str | None,
        operation: str,
        key: str,
        fingerprint: str,
        now: datetime,
    ) -> IdempotencyRecord | None:
        """Claim the key for `tx`, waiting for a concurrent claimant to finish first.

        Returns:
            `None` when the key is now `tx`'s; otherwise the record of the call that used the key
            first (committed, or earlier in `tx`).

        Raises:
            IdempotencyInProgressError: A concurrent claimant did not finish in time.
        """
        ...

    async def complete(self, tx: Transaction, record: IdempotencyRecord) -> None:
        """Store the outcome of the call that reserved the key in `tx`."""
        ...
