"""Stage 3: run the handler inside a transaction and commit what it did, or nothing.

Outside a batch a call gets its own transaction (read-only for queries). Inside
`Executor.batch()` it runs in a savepoint of the batch's transaction; the savepoint is released
only after the call's writes reached the database (so a constraint violation fails *this* call,
never a neighbour), and its events and audit record join the batch's next group commit.

Order inside the transaction: idempotency reservation → handler (through middleware) → output
check → declared events (outbox) → audit record → idempotency outcome → denials recorded inside
the handler. Denials of a call that failed are written after its transaction (or savepoint) has
rolled back, so they never wait on a lock the call itself holds.

With `connection=` the call joins the caller's transaction (`join`): it runs in a SAVEPOINT of
it and the caller's COMMIT makes it durable. Its denials (and those of the authorize stage) are
written on their own once the caller's transaction has ended (`defer_denials`), so they are
recorded once whether the caller commits or not, and never wait on the caller's locks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from contractspec.core._log import get_logger
from contractspec.core.batch import BATCH, Batch
from contractspec.core.context import CallContext
from contractspec.core.errors import ConfigurationError, SpecValidationError
from contractspec.core.handler import HandlerCtx, Invocation, Middleware, NextFn
from contractspec.core.pipeline.authorize import record_denials
from contractspec.core.pipeline.idempotency import fingerprint, reserve
from contractspec.core.ports import IdempotencyRecord
from contractspec.core.records import AuditRecord, EntityChange, EventEnvelope
from contractspec.core.repository import check_storable

if TYPE_CHECKING:
    from contractspec.core.executor import Executor
    from contractspec.core.pipeline.plan import Plan

__all__ = ["check_joinable", "defer_denials", "run"]

_log = get_logger(__name__)


async def run(
    ex: Executor,
    plan: Plan,
    value: BaseModel,
    call: CallContext,
    emitted: list[EventEnvelope] | None = None,
    connection: Any = None,
) -> BaseModel:
    """Run the call in its own transaction (or the current batch's savepoint); return its output.

    With `emitted`, the events the call committed are appended to it (for traffic records). With
    `connection` (the caller's `AsyncConnection` or `AsyncSession`, checked by
    `check_joinable`) the call runs in a savepoint of the caller's transaction.

    Raises:
        SpecValidationError: An idempotency key was given for an operation that is not idempotent.
        ContractSpecError: Whatever the handler, a store or the commit raised.
    """
    key = call.idempotency_key if plan.is_command else None
    if key is not None and not plan.idempotent:
        raise SpecValidationError(
            f"{plan.spec.ref} is not declared idempotent, so it cannot take an idempotency key; "
            "declare it with idempotent=True or drop the key",
            details={"operation": plan.spec.ref, "field": "idempotency_key"},
        )
    if connection is not None:  # a savepoint of the caller's transaction, which commits
        tx = await ex.unit_of_work.join(  # type: ignore[attr-defined]
            connection, readonly=not plan.is_command
        )
        return await _run_in(ex, tx, plan, value, call, key, emitted, joined=True)
    batch = BATCH.get()
    if batch is not None and batch._executor is ex:
        batch._enter(plan.spec.ref)
        try:
            return await _run_in_batch(ex, batch, plan, value, call, key, emitted)
        finally:
            batch._busy = False
    tx = await ex.unit_of_work.begin(readonly=not plan.is_command)
    return await _run_in(ex, tx, plan, value, call, key, emitted, joined=False)


def check_joinable(ex: Executor, connection: Any) -> None:
    """Refuse `connection=` where a call cannot join the caller's transaction.

    Raises:
        ConfigurationError: The executor's unit of work cannot join a SQL transaction (the memory
            backend), or the call runs inside `executor.batch()`.
    """
    if not callable(getattr(ex.unit_of_work, "join", None)):
        raise ConfigurationError(
            "connection= joins the caller's SQL transaction, but this executor's unit of work "
            f"({type(ex.unit_of_work).__name__}) has none to join; configure the executor with "
            "backend=SqlBackend(engine, registry) on the engine of that connection",
            details={"field": "connection"},
        )
    batch = BATCH.get()
    if batch is not None and batch._executor is ex:
        raise ConfigurationError(
            "connection= cannot be used inside executor.batch(): a batch runs its calls in its "
            "own transaction; call execute(..., connection=...) outside the batch",
            details={"field": "connection"},
        )


async def defer_denials(ex: Executor, connection: Any, denials: list[AuditRecord]) -> None:
    """Write `denials` on their own once the caller's transaction on `connection` has ended."""
    if ex.audit is None or not denials:
        return
    try:
        await ex.unit_of_work.after_caller_transaction(  # type: ignore[attr-defined]
            connection, _denials_writer(ex, list(denials))
        )
    except Exception:  # never raised over the PolicyDeniedError the caller must see
        _log.exception("contractspec.denial_audit_failed", action=denials[0].action)


async def _run_in(
    ex: Executor,
    tx: Any,
    plan: Plan,
    value: BaseModel,
    call: CallContext,
    key: str | None,
    emitted: list[EventEnvelope] | None,
    *,
    joined: bool,
) -> BaseModel:
    """The call in `tx`: its own transaction, or (`joined`) a savepoint of the caller's.

    Its own transaction records the handler's denials inside it (then they are committed with
    the call) or, when the call fails, after the rollback; a joined call leaves them to be written
    once the caller's transaction has ended.
    """
    hctx: HandlerCtx | None = None
    try:
        digest = None
        if key is not None:
            digest = fingerprint(plan.spec, value)
            replay = await reserve(ex, tx, plan, call, key, digest)
            if replay is not None:
                await tx.commit()
                return replay
        hctx = HandlerCtx(ex, plan, call, tx)
        output = await invoke(ex, plan, value, hctx, 0, key, digest, denials_inside=not joined)
        if plan.is_command:
            await tx.commit()
            if not joined:
                hctx._denials.clear()  # committed with the call
            if emitted is not None:
                emitted.extend(hctx._events)
        else:
            await tx.rollback()
        return output
    except BaseException:
        await tx.rollback()
        raise
    finally:
        if hctx is not None and hctx._denials:
            if joined:
                tx.after_caller_transaction(_denials_writer(ex, list(hctx._denials)))
            else:
                await record_denials(ex, hctx._denials, None)


def _denials_writer(ex: Executor, denials: list[AuditRecord]) -> Any:
    async def write() -> None:
        await record_denials(ex, denials, None)

    return write


async def _run_in_batch(
    ex: Executor,
    batch: Batch,
    plan: Plan,
    value: BaseModel,
    call: CallContext,
    key: str | None,
    emitted: list[EventEnvelope] | None,
) -> BaseModel:
    tx = await batch._transaction()
    savepoint = await tx.savepoint()
    tx.readonly = not plan.is_command
    hctx: HandlerCtx | None = None
    try:
        replay = None
        digest = None
        if key is not None:
            digest = fingerprint(plan.spec, value)
            replay = await reserve(ex, tx, plan, call, key, digest)
        if replay is None:
            hctx = HandlerCtx(ex, plan, call, tx)
            output = await invoke(ex, plan, value, hctx, len(tx.changes), key, digest)
        else:
            output = replay
        await savepoint.release()  # flushes the call's writes: a conflict fails this call only
    except BaseException:
        tx.readonly = False
        await batch._rolled_back(savepoint)
        if hctx is not None and hctx._denials:
            await record_denials(ex, hctx._denials, tx)  # into the batch, outside the savepoint
        raise
    tx.readonly = False
    if emitted is not None and hctx is not None:
        emitted.extend(hctx._events)
    if hctx is not None and hctx._denials:
        if not plan.is_command:  # a query's denials were not staged with its (read-only) work
            await record_denials(ex, hctx._denials, tx)
        hctx._denials.clear()
    await batch._succeeded()
    return output


async def invoke(
    ex: Executor,
    plan: Plan,
    value: BaseModel,
    hctx: HandlerCtx,
    change_mark: int,
    key: str | None,
    digest: str | None,
    *,
    denials_inside: bool = True,
) -> BaseModel:
    """Run the handler (through middleware) and stage its events, audit record and outcome.

    With `denials_inside=False` (a joined call) the handler's denials are left to the caller.
    """
    if ex.middleware:
        output = await _through_middleware(ex.middleware, plan, Invocation(plan.spec, value, hctx))
    else:
        output = await plan.handler(value, hctx)
    output = plan.check_output(output)
    tx = hctx.tx
    if hctx._events:
        await ex.events.publish(hctx._events, tx)
    if plan.audit and ex.audit is not None:
        await ex.audit.record(_audit_record(ex, plan, hctx, tx.changes[change_mark:]), tx)
    if key is not None:
        assert digest is not None  # computed by the caller with the reservation
        stored = output.model_dump(mode="json")
        check_storable(stored, lambda: f"the output of {plan.spec.ref}")
        call = hctx.call
        await ex.idempotency.complete(
            tx,
            IdempotencyRecord(
                org_id=call.org_id,
                operation=plan.spec.name,
                key=key,
                fingerprint=digest,
                output=stored,
                created_at=ex.clock.now(),
            ),
        )
    if hctx._denials and plan.is_command and denials_inside:
        await record_denials(ex, hctx._denials, tx)
    return output


async def _through_middleware(
    middleware: tuple[Middleware, ...], plan: Plan, invocation: Invocation
) -> BaseModel:
    handler = plan.handler

    async def innermost(inv: Invocation) -> BaseModel:
        return await handler(inv.input, inv.ctx)

    call_next: NextFn = innermost
    for mw in reversed(middleware):
        call_next = _wrap(mw, call_next)
    return await call_next(invocation)


def _wrap(mw: Middleware, call_next: NextFn) -> NextFn:
    async def step(inv: Invocation) -> BaseModel:
        return await mw(inv, call_next)

    return step


def _audit_record(
    ex: Executor, plan: Plan, hctx: HandlerCtx, changes: list[EntityChange]
) -> AuditRecord:
    call = hctx.call
    target = hctx._audit_target
    if target is None and changes:
        target = (changes[0].entity, changes[0].entity_id)
    return AuditRecord(
        id=ex.ids.new_id(),
        occurred_at=hctx._timestamp(),
        action=plan.spec.name,
        outcome="success",
        org_id=call.org_id,
        actor_id=call.actor.id,
        actor_kind=call.actor.kind.value,
        operation_version=plan.spec.version,
        target_type=target[0] if target else None,
        target_id=target[1] if target else None,
        changes=tuple(changes),
        request_id=call.request_id,
        trace_id=call.trace_id,
        details=_details(hctx),
    )


def _details(hctx: HandlerCtx) -> dict[str, Any]:
    details: dict[str, Any] = {"events": [e.name for e in hctx._events]} if hctx._events else {}
    if hctx._audit_details:
        details.update(hctx._audit_details)
    return details
