"""Stage 2: who may run the call: an authenticated actor, a member of the tenant, with permissions.

Denials never touch the database while a transaction may be open. `denied()` builds the
`PolicyDeniedError` and the denial's `AuditRecord`, and adds the record to the call's list of
denials; the `invoke` stage writes that list exactly once when the call ends (`record_denials`).
An unauthenticated caller's denial is never written to an audit chain: it is counted on the
executor (`Executor.unauthenticated_denials`) and logged, so anonymous traffic cannot grow the
audit log or create a tenant's chain.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from contractspec.core._log import get_logger
from contractspec.core.context import CallContext, Resource
from contractspec.core.errors import ConfigurationError, PolicyDeniedError
from contractspec.core.records import AuditRecord, Decision
from contractspec.core.specs import OperationSpec

if TYPE_CHECKING:
    from contractspec.core.executor import Executor
    from contractspec.core.pipeline.plan import Plan
    from contractspec.core.transactions import Transaction

__all__ = ["authorize", "decide", "denied", "pending_denial", "record_denials"]

_log = get_logger("contractspec.core.executor")


async def authorize(ex: Executor, plan: Plan, call: CallContext) -> None:
    """Check the actor, its tenant membership and every permission the operation requires.

    Raises:
        PolicyDeniedError: The first check that fails; its audit record (not written yet) is
            `pending_denial(error)`.
    """
    denials = None
    spec = plan.spec
    actor = call.actor
    if actor.is_anonymous:
        raise denied(
            ex,
            spec,
            call,
            spec.auth.permissions[0] if spec.auth.permissions else "authenticate",
            f"{spec.ref} requires an authenticated actor; pass CallContext(actor=...)",
            None,
            denials,
        )
    org = call.org_id
    if org is not None and ex._is_member is not None:
        member: Any = ex._is_member(actor, org)
        if inspect.isawaitable(member):
            member = await member
        if not member:
            raise denied(
                ex,
                spec,
                call,
                "tenant.member",
                f"{actor.kind.value} {actor.id!r} is not a member of org {org!r}; "
                f"{spec.ref} runs only for members of the tenant it names",
                Decision.deny(f"not a member of org {org!r}", "tenant_membership"),
                denials,
            )
    if plan.auth_kind == "authenticated":
        return
    resource = plan.resource(org)
    policy = ex.policy
    for permission in plan.permissions:
        # Fast path: a synchronous decider that allows needs no extra coroutine.
        if policy is not None:
            decision = policy.decide(actor, permission, resource, call)
            if type(decision) is Decision and decision.allowed:
                continue
            if type(decision) is not Decision and inspect.isawaitable(decision):
                decision = await decision
            check_decision(ex, spec, call, permission, decision, denials)
        else:
            await decide(ex, spec, call, permission, resource, denials)


async def decide(
    ex: Executor,
    spec: OperationSpec,
    call: CallContext,
    action: str,
    resource: Resource,
    denials: list[AuditRecord] | None,
) -> Decision:
    """Ask the policy about one action; return the allowing decision.

    Raises:
        PolicyDeniedError: Denied, or no `PolicyDecider` is configured (deny by default).
        ConfigurationError: The decider returned something that is not a `Decision`.
    """
    policy = ex.policy
    if policy is None:
        raise denied(
            ex,
            spec,
            call,
            action,
            f"{spec.ref} requires {action!r} and no PolicyDecider is configured "
            "(deny by default); pass Executor(policy=...)",
            None,
            denials,
        )
    decision: Any = policy.decide(call.actor, action, resource, call)
    if type(decision) is not Decision and inspect.isawaitable(decision):
        decision = await decision
    return check_decision(ex, spec, call, action, decision, denials)


def check_decision(
    ex: Executor,
    spec: OperationSpec,
    call: CallContext,
    action: str,
    decision: Any,
    denials: list[AuditRecord] | None,
) -> Decision:
    """`decision` if it allows; raise the denial otherwise."""
    if not isinstance(decision, Decision):
        raise ConfigurationError(
            f"the PolicyDecider returned {type(decision).__name__}; it must return a Decision"
        )
    if not decision.allowed:
        raise denied(
            ex,
            spec,
            call,
            action,
            f"{call.actor.kind.value} {call.actor.id!r} may not {action!r} on {spec.ref}: "
            f"{decision.reason}",
            decision,
            denials,
        )
    return decision


def denied(
    ex: Executor,
    spec: OperationSpec,
    call: CallContext,
    action: str,
    message: str,
    decision: Decision | None,
    denials: list[AuditRecord] | None,
) -> PolicyDeniedError:
    """The `PolicyDeniedError` of a denial, its audit record added to `denials` (no I/O).

    With `denials=None` (the authorize stage) the record rides on the error instead, for
    `pending_denial`.

    Unauthenticated callers' denials are counted and logged instead of audited. Denials for not
    being a member of the named tenant go to the system chain (`org_id=None`) with the claimed org
    in the details, so an outsider never adds entries to (or creates) another tenant's chain.
    """
    reason = decision.reason if decision else message
    error = PolicyDeniedError(
        message, reason=reason, action=action, details={"operation": spec.ref}
    )
    actor = call.actor
    if actor.is_anonymous:
        ex.unauthenticated_denials += 1
        _log.info(
            "contractspec.denied_unauthenticated",
            operation=spec.ref,
            claimed_org=call.org_id,
            request_id=call.request_id,
            total=ex.unauthenticated_denials,
        )
    elif ex.audit is not None:
        outsider = decision is not None and decision.matched_rule == "tenant_membership"
        details: dict[str, Any] = {
            "permission": action,
            "reason": reason,
            "matched_rule": decision.matched_rule if decision else None,
        }
        if outsider:
            details["claimed_org"] = call.org_id
        record = AuditRecord(
            id=ex.ids.new_id(),
            occurred_at=ex.clock.now(),
            action=spec.name,
            outcome="denied",
            org_id=None if outsider else call.org_id,
            actor_id=actor.id,
            actor_kind=actor.kind.value,
            operation_version=spec.version,
            request_id=call.request_id,
            trace_id=call.trace_id,
            details=details,
        )
        if denials is None:
            error.__dict__[_PENDING] = record
        else:
            denials.append(record)
    return error


_PENDING = "_contractspec_pending_denial"


def pending_denial(error: PolicyDeniedError) -> AuditRecord | None:
    """The audit record of a denial raised by the authorize stage, not written yet."""
    record: AuditRecord | None = error.__dict__.pop(_PENDING, None)
    return record


async def record_denials(ex: Executor, denials: list[AuditRecord], tx: Transaction | None) -> None:
    """Write the call's denial records: in `tx` when given, else each on its own.

    Called when the call's own transaction is over (or, for a successful call, inside it), so a
    denial never waits on a lock the call itself holds. The list is left as it is: the caller
    clears it once the records are durable (after its commit), so a commit that fails leaves
    them to be written on their own. Failures to write are logged, never raised over the
    `PolicyDeniedError` the caller must see.
    """
    audit = ex.audit
    if audit is None or not denials:
        return
    for record in denials:
        try:
            await audit.record(record, tx)
        except Exception:
            _log.exception("contractspec.denial_audit_failed", action=record.action)
