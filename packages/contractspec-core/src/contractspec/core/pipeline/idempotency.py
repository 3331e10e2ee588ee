"""Idempotency: the key is reserved before the handler runs, in the call's transaction.

`reserve` asks the `IdempotencyStore` to claim `(org, operation, key)` inside the call's
transaction. The SQL store inserts the record first (`INSERT … ON CONFLICT DO NOTHING`), so a
concurrent caller with the same key waits on the database's unique index until the first call
commits (then it replays the stored output) or rolls back (then it runs); the memory store waits on
the owning transaction the same way. The handler therefore runs once per key across concurrent
callers, on every backend, and a crashed call leaves no reservation behind (its transaction rolled
back). A replay is audited with the outcome `replayed`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from pydantic import BaseModel

from contractspec.core.context import CallContext
from contractspec.core.errors import IdempotencyConflictError, IdempotencyInProgressError
from contractspec.core.records import AuditRecord
from contractspec.core.specs import OperationSpec

if TYPE_CHECKING:
    from contractspec.core.executor import Executor
    from contractspec.core.pipeline.plan import Plan
    from contractspec.core.transactions import Transaction

__all__ = ["fingerprint", "reserve"]


def fingerprint(spec: OperationSpec, value: BaseModel) -> str:
    """SHA-256 (hex) of the operation version and the canonical JSON of the validated input."""
    digest = hashlib.sha256(f"{spec.name}@{spec.version}\n".encode())
    digest.update(value.model_dump_json().encode())
    return digest.hexdigest()


async def reserve(
    ex: Executor,
    tx: Transaction,
    plan: Plan,
    call: CallContext,
    key: str,
    digest: str,
) -> BaseModel | None:
    """Reserve `key` for this call, or return the stored output of the call that used it first.

    Returns:
        `None` when the key is now this call's (run the handler), else the replayed output (its
        `replayed` audit record is staged in `tx`).

    Raises:
        IdempotencyConflictError: The key was used with a different input.
        IdempotencyInProgressError: The key's first call has not finished in time.
    """
    spec = plan.spec
    record = await ex.idempotency.reserve(tx, call.org_id, spec.name, key, digest, ex.clock.now())
    if record is None:
        return None
    if record.fingerprint != digest:
        raise IdempotencyConflictError(
            f"idempotency key {key!r} was already used for {spec.name} with a different "
            "input; use a new key for a new request",
            details={"operation": spec.ref, "field": "idempotency_key"},
        )
    if record.output is None:
        raise IdempotencyInProgressError(
            f"the first call with idempotency key {key!r} of {spec.name} has not finished; "
            "retry later",
            details={"operation": spec.ref, "field": "idempotency_key"},
        )
    output = spec.output.model_validate(record.output)
    if plan.audit and ex.audit is not None:
        actor = call.actor
        await ex.audit.record(
            AuditRecord(
                id=ex.ids.new_id(),
                occurred_at=ex.clock.now(),
                action=spec.name,
                outcome="replayed",
                org_id=call.org_id,
                actor_id=actor.id,
                actor_kind=actor.kind.value,
                operation_version=spec.version,
                request_id=call.request_id,
                trace_id=call.trace_id,
                details={
                    "idempotency_key": key,
                    "first_call_at": record.created_at.isoformat(),
                },
            ),
            tx,
        )
    return output
