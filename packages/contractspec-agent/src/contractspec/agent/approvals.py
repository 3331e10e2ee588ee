"""`ApprovalWorkflow`: human decisions on exact actions, with quorum, expiry and an audit trail.

The subject of a request is general: an agent's tool call (`subject_type="agent.tool_call"`), a
spec suggestion from contractspec-evolution, anything you describe by an action name and JSON
arguments. Rules — the decision rules are core's `contractspec.core.approvals.ApprovalRules`
(the same ones workflow approval steps use; pass `decider=` to plug another `ApprovalDecider`),
backed here by the stores' unique keys and compare-and-set:

* a decision is final: once approved, rejected or expired, a request never changes again;
* the requester cannot approve (or reject) their own request;
* with `quorum=N`, N distinct approvers must approve; one rejection rejects;
* named `approvers` restrict who may decide; everyone else is denied;
* past `expires_at` nobody may decide (the expiry is recorded);
* the decider must hold the workflow's permission through core's `PolicyDecider` (deny by
  default: no decider, no decisions);
* every request and decision is audited through core's `AuditSink` (denials too) and announced
  through the `EventPublisher` (`approval.requested|approved|rejected|expired`);
* an approval is bound to `arguments_hash` (SHA-256 of the canonical JSON arguments): `verify`
  refuses other arguments, so a changed action needs a new approval;
* if the store cannot be reached, calls raise `ApprovalUnavailableError` and callers must not
  proceed (the tool gateway fails closed).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from contractspec.agent.errors import (
    ApprovalDecisionError,
    ApprovalExpiredError,
    ApprovalMismatchError,
    ApprovalUnavailableError,
)
from contractspec.agent.events import (
    approval_approved,
    approval_expired,
    approval_rejected,
    approval_requested,
    envelope,
)
from contractspec.agent.stores import (
    ApprovalDecision,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalStore,
)
from contractspec.core import (
    ApprovalRequiredError,
    AuditRecord,
    AuditSink,
    Backend,
    CallContext,
    Clock,
    ConfigurationError,
    ConflictError,
    ContractSpecError,
    Decision,
    EventPublisher,
    IdGenerator,
    MemoryBackend,
    NotFoundError,
    PolicyDecider,
    PolicyDeniedError,
    Resource,
    SpecValidationError,
    SystemClock,
    Transaction,
    UnitOfWork,
    UuidGenerator,
    canonical_json,
)
from contractspec.core._log import get_logger
from contractspec.core.approvals import (
    ApprovalCase,
    ApprovalDecider,
    ApprovalOutcome,
    ApprovalRefusal,
    ApprovalRequirement,
    ApprovalRules,
    ApprovalVote,
    RefusalCode,
)
from contractspec.core.context import Actor

__all__ = ["ApprovalWorkflow", "arguments_hash", "is_refusal_denial"]

_log = get_logger(__name__)


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """SHA-256 (64 hex characters) of the canonical JSON of `arguments` (sorted keys, no spaces).

    Raises:
        SpecValidationError: The arguments are not JSON-serialisable.
    """
    try:
        text = canonical_json(dict(arguments))
    except TypeError as exc:
        raise SpecValidationError(
            f"approval arguments must be JSON-serialisable: {exc}",
            details={"field": "arguments"},
        ) from None
    return hashlib.sha256(text.encode()).hexdigest()


class ApprovalWorkflow:
    """Request, decide, expire and verify approvals.

    Args:
        store: `MemoryApprovalStore` or `contractspec.agent.sql.SqlApprovalStore`.
        backend: Core backend giving the unit of work, event publisher and audit sink
            (`MemoryBackend()` by default; a `SqlBackend` on the engine of a SQL store).
        unit_of_work: Overrides the backend's unit of work.
        events: Overrides the backend's event publisher.
        audit: Overrides the backend's audit sink.
        policy: Decides who may decide (`permission` on `Resource("approval", id, org_id,
            attributes={"risk", "action", "subject_type"})`). Without one, nobody may decide.
        permission: The permission checked (default `approval.decide`).
        clock: Time source.
        ids: Id source.
        default_ttl_s: Seconds a request stays open when no expiry is given (default one day).
        decider: The `ApprovalDecider` that applies the decision rules (default core's
            `ApprovalRules()`).

    Example:
        ```python
        wf = ApprovalWorkflow(MemoryApprovalStore(), policy=RolePermissions({"finance": ["approval.decide"]}))
        req = await wf.request(action="refund", arguments={"order": "o1", "amount": 80},
                               requested_by=Actor.user("u-agent-owner"), reason="damaged item")
        await wf.approve(req.id, Actor.user("u-lead", roles="finance"))
        await wf.verify(req.id, {"order": "o1", "amount": 80})
        ```
    """

    def __init__(
        self,
        store: ApprovalStore,
        *,
        backend: Backend | None = None,
        unit_of_work: UnitOfWork | None = None,
        events: EventPublisher | None = None,
        audit: AuditSink | None = None,
        policy: PolicyDecider | None = None,
        permission: str = "approval.decide",
        clock: Clock | None = None,
        ids: IdGenerator | None = None,
        default_ttl_s: float = 86_400.0,
        decider: ApprovalDecider | None = None,
    ) -> None:
        if default_ttl_s <= 0:
            raise ConfigurationError(f"default_ttl_s must be positive, got {default_ttl_s!r}")
        base: Backend = backend if backend is not None else MemoryBackend()
        self.store = store
        self.unit_of_work: UnitOfWork = unit_of_work or base.unit_of_work
        self.events: EventPublisher = events or base.events
        self.audit: AuditSink | None = audit or base.audit
        self.policy = policy
        self.permission = permission
        self.clock: Clock = clock or SystemClock()
        self.ids: IdGenerator = ids or UuidGenerator()
        self.default_ttl_s = default_ttl_s
        self.decider: ApprovalDecider = decider if decider is not None else ApprovalRules()

    def case(self, request: ApprovalRequest) -> ApprovalCase:
        """`request` as the decision rules (`ApprovalDecider`) see it."""
        return ApprovalCase(
            requirement=ApprovalRequirement(count=request.quorum, approvers=request.approvers),
            subject=f"approval request {request.id!r}",
            requesters={request.requested_by: f"requested approval {request.id!r}"},
            votes=tuple(ApprovalVote(d.approver_id, d.verdict) for d in request.decisions),
            expires_at=request.expires_at,
            status=ApprovalOutcome(request.status.value),
        )

    def status_of(self, request: ApprovalRequest, now: datetime | None = None) -> ApprovalStatus:
        """The status of `request` at `now` (default: the clock's now) by the decision rules: a
        pending request past its expiry is `expired` before the expiry is recorded."""
        verdict = self.decider.evaluate(self.case(request), now or self.clock.now())
        return ApprovalStatus(verdict.outcome.value)

    # -- plumbing ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def _tx(
        self, what: str, *, readonly: bool = False, joined: Transaction | None = None
    ) -> AsyncIterator[Transaction]:
        """A transaction whose store failures become `ApprovalUnavailableError` (fail closed).

        Read-only transactions are rolled back at the end (nothing to commit). A `joined`
        transaction (the caller's) is used as it is: the caller commits or rolls it back."""
        if joined is not None:
            try:
                yield joined
            except (ContractSpecError, _Retry):
                raise
            except Exception as exc:
                raise ApprovalUnavailableError(
                    f"the approval store is unavailable ({type(exc).__name__}) while trying to "
                    f"{what}; nothing that needs approval may run until it is back",
                    details={"operation": what},
                ) from exc
            return
        try:
            tx = await self.unit_of_work.begin(readonly=readonly)
        except ContractSpecError:
            raise
        except Exception as exc:
            raise ApprovalUnavailableError(
                f"the approval store is unavailable ({type(exc).__name__}) while trying to {what}; "
                "nothing that needs approval may run until it is back",
                details={"operation": what},
            ) from exc
        try:
            yield tx
            if readonly:
                await tx.rollback()
            else:
                await tx.commit()
        except (ContractSpecError, _Retry):
            await _quiet_rollback(tx)
            raise
        except Exception as exc:
            await _quiet_rollback(tx)
            raise ApprovalUnavailableError(
                f"the approval store is unavailable ({type(exc).__name__}) while trying to {what}; "
                "nothing that needs approval may run until it is back",
                details={"operation": what},
            ) from exc
        except BaseException:
            await _quiet_rollback(tx)
            raise

    async def _announce(
        self, tx: Transaction, request: ApprovalRequest, actor: Actor | None, spec: Any
    ) -> None:
        payload = {
            "approval_id": request.id,
            "subject_type": request.subject_type,
            "subject_id": request.subject_id,
            "action": request.action,
            "risk": request.risk,
            "status": request.status.value,
            "actor_id": actor.id if actor else None,
        }
        env = envelope(
            spec,
            payload,
            clock=self.clock,
            ids=self.ids,
            org_id=request.org_id,
            actor=actor,
            correlation_id=request.subject_id,
        )
        await self.events.publish([env], tx)

    async def _audit(
        self,
        tx: Transaction | None,
        request: ApprovalRequest,
        actor: Actor | None,
        action: str,
        outcome: str,
        **details: Any,
    ) -> None:
        if self.audit is None:
            return
        record = AuditRecord(
            id=self.ids.new_id(),
            occurred_at=self.clock.now(),
            action=action,
            outcome=outcome,  # type: ignore[arg-type]  # one of success/denied/failed
            org_id=request.org_id,
            actor_id=actor.id if actor else None,
            actor_kind=actor.kind.value if actor else "system",
            target_type="approval",
            target_id=request.id,
            details={
                "subject_type": request.subject_type,
                "subject_id": request.subject_id,
                "approval_action": request.action,
                "arguments_hash": request.arguments_hash,
                "risk": request.risk,
                "status": request.status.value,
                **details,
            },
        )
        await self.audit.record(record, tx)

    # -- requests ---------------------------------------------------------------------------------

    async def request(
        self,
        *,
        action: str,
        arguments: Mapping[str, Any],
        requested_by: Actor | str,
        reason: str,
        risk: int = 2,
        org_id: str | None = None,
        subject_type: str = "action",
        subject_id: str | None = None,
        key: str | None = None,
        expires_in_s: float | None = None,
        quorum: int = 1,
        approvers: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        tx: Transaction | None = None,
    ) -> ApprovalRequest:
        """Open a request for an exact action (or return the existing one with the same `key`).

        Args:
            action: What would be done (`refund_order`).
            arguments: The exact arguments (JSON-serialisable); the approval binds to their hash.
            requested_by: The requester (an `Actor` or an id); they may not decide.
            reason: Why the action is wanted.
            risk: Risk level 0-3.
            org_id: Tenant.
            subject_type: What kind of thing the approval is about (`agent.tool_call`).
            subject_id: Which one (a run id, a suggestion id).
            key: Idempotency key: the same key in the same org returns the existing request
                (with other arguments it raises `ApprovalMismatchError`).
            expires_in_s: Seconds until it expires (default `default_ttl_s`).
            quorum: Distinct approvals needed (1-10).
            approvers: Named approvers; empty means anyone with the permission.
            metadata: Free JSON kept with the request.
            tx: Join this transaction (the caller commits it) instead of opening one.

        Returns:
            The pending `ApprovalRequest`.

        Raises:
            SpecValidationError: Empty action or reason, bad risk, quorum or expiry, quorum larger
                than the named approvers, arguments that are not JSON.
            ApprovalMismatchError: `key` exists with other arguments.
            ApprovalUnavailableError: The store is unavailable.
        """
        requester = requested_by.id if isinstance(requested_by, Actor) else str(requested_by)
        actor = requested_by if isinstance(requested_by, Actor) else Actor.user(requester)
        names = tuple(dict.fromkeys(approvers))
        _check_request(action, reason, risk, quorum, expires_in_s, names, requester)
        digest = arguments_hash(arguments)
        now = self.clock.now()
        ttl = self.default_ttl_s if expires_in_s is None else expires_in_s
        async with self._tx("request an approval", joined=tx) as tx:
            if key is not None:
                existing = await self.store.get_by_key(tx, org_id, key)
                if existing is not None:
                    if existing.arguments_hash != digest:
                        raise ApprovalMismatchError(
                            f"approval key {key!r} was requested for other arguments; use a new "
                            "key for a changed action",
                            reason="arguments differ from the approved ones",
                            action=action,
                            details={"approval_id": existing.id},
                        )
                    return existing
            req = ApprovalRequest(
                id=self.ids.new_id(),
                org_id=org_id,
                subject_type=subject_type,
                subject_id=subject_id,
                action=action,
                arguments=dict(arguments),
                arguments_hash=digest,
                reason=reason,
                risk=int(risk),
                requested_by=requester,
                requested_at=now,
                expires_at=now + timedelta(seconds=ttl),
                quorum=quorum,
                approvers=names,
                key=key,
                metadata=dict(metadata or {}),
            )
            await self.store.add(tx, req)
            await self._audit(tx, req, actor, "approval.request", "success", reason=reason)
            await self._announce(tx, req, actor, approval_requested)
        _log.info("approval.requested", approval_id=req.id, action=action, org_id=org_id)
        return req

    # -- decisions --------------------------------------------------------------------------------

    async def approve(
        self,
        request_id: str,
        approver: Actor,
        *,
        comment: str = "",
        ctx: CallContext | None = None,
        tx: Transaction | None = None,
    ) -> ApprovalRequest:
        """Approve; the request becomes `approved` once `quorum` distinct approvers agreed.

        Args:
            request_id: The request.
            approver: Who decides (an identified actor).
            comment: Their reason (kept with the decision).
            ctx: The call context the policy sees (default: the approver in the request's org).
            tx: Join this transaction (e.g. an operation handler's `ctx.tx`) instead of opening
                one: the decision, its audit record and event commit with the caller's work.
                A denial is then not audited here (the caller's pipeline records its failure)
                and an expiry found while deciding is rolled back with the caller.

        Returns:
            The request after the decision (still `pending` while the quorum is not reached).

        Raises:
            NotFoundError: No such request.
            ApprovalDecisionError: Already final, self-approval, or this approver already decided.
            ApprovalExpiredError: It expired (the expiry is recorded).
            PolicyDeniedError: Not a named approver, or the policy denies the permission.
            ApprovalUnavailableError: The store is unavailable.
        """
        return await self._decide(request_id, approver, "approve", comment, ctx, tx)

    async def reject(
        self,
        request_id: str,
        approver: Actor,
        *,
        comment: str = "",
        ctx: CallContext | None = None,
        tx: Transaction | None = None,
    ) -> ApprovalRequest:
        """Reject; one rejection makes the request `rejected` (final). Arguments as for
        `approve`.

        Raises:
            ApprovalDecisionError: As for `approve` (and every other error `approve` raises).
        """
        return await self._decide(request_id, approver, "reject", comment, ctx, tx)

    async def _decide(
        self,
        request_id: str,
        approver: Actor,
        verdict: str,
        comment: str,
        ctx: CallContext | None,
        tx: Transaction | None = None,
    ) -> ApprovalRequest:
        if not isinstance(approver, Actor):
            raise PolicyDeniedError(
                "an approval decision needs an identified actor; pass Actor.user(...)",
                reason="anonymous approver",
                action=self.permission,
            )
        for _attempt in range(5):
            try:
                return await self._decide_once(request_id, approver, verdict, comment, ctx, tx)
            except _Retry:
                continue
        raise ConflictError(  # pragma: no cover - needs five concurrent deciders in a row
            f"approval request {request_id!r} kept changing while deciding; retry",
            details={"approval_id": request_id},
        )

    async def _decide_once(
        self,
        request_id: str,
        approver: Actor,
        verdict: str,
        comment: str,
        ctx: CallContext | None,
        joined: Transaction | None = None,
    ) -> ApprovalRequest:
        now = self.clock.now()
        expired: ApprovalRequest | None = None
        denial: tuple[ApprovalRequest, ContractSpecError] | None = None
        async with self._tx(f"{verdict} an approval", joined=joined) as tx:
            req = await self.store.get(tx, request_id)
            if req is None:
                raise NotFoundError(
                    f"approval request {request_id!r} does not exist",
                    details={"approval_id": request_id},
                )
            ruling = self.decider.decide(
                self.case(req), ApprovalVote(approver.id or "", verdict), approver, now
            )
            refusal = ruling.refusal
            if refusal is not None and refusal.code is RefusalCode.EXPIRED:
                if req.status is not ApprovalStatus.PENDING:
                    raise ApprovalExpiredError(
                        refusal.message,
                        details={"approval_id": req.id, "refusal": refusal.code.value},
                    )
                expired = await self._expire(tx, req, now)
            elif refusal is not None and not refusal.is_denial:
                raise ApprovalDecisionError(
                    refusal.message,
                    details={
                        "approval_id": req.id,
                        "status": req.status.value,
                        "refusal": refusal.code.value,
                    },
                )
            else:
                problem = (
                    _refusal_error(refusal, req, self.permission)
                    if refusal is not None
                    else await self._check_policy(req, approver, ctx)
                )
                if problem is not None:
                    denial = (req, problem)
                else:
                    decision = ApprovalDecision(req.id, approver.id or "", verdict, comment, now)
                    try:
                        await self.store.add_decision(tx, decision)
                    except ConflictError:
                        raise ApprovalDecisionError(
                            f"{approver.id!r} already decided on approval request {req.id!r}; "
                            "each approver decides once",
                            details={"approval_id": req.id, "refusal": "already_decided"},
                        ) from None
                    status = ApprovalStatus(ruling.outcome.value)
                    final = status is not ApprovalStatus.PENDING
                    try:
                        saved = await self.store.save(
                            tx,
                            req.evolve(status=status, decided_at=now if final else None),
                            expected_version=req.version,
                        )
                    except ConflictError:
                        raise _Retry() from None
                    await self._audit(
                        tx,
                        saved,
                        approver,
                        f"approval.{verdict}",
                        "success",
                        verdict=verdict,
                        comment=comment,
                        approvals=ruling.approvals,
                        quorum=req.quorum,
                    )
                    if final:
                        spec = (
                            approval_approved
                            if status is ApprovalStatus.APPROVED
                            else approval_rejected
                        )
                        await self._announce(tx, saved, approver, spec)
                    _log.info(
                        "approval.decided",
                        approval_id=req.id,
                        verdict=verdict,
                        status=status.value,
                        org_id=req.org_id,
                    )
                    return saved
        if expired is not None:
            raise ApprovalExpiredError(
                f"approval request {request_id!r} expired at {expired.expires_at.isoformat()}; "
                "request a new approval",
                details={"approval_id": request_id, "refusal": RefusalCode.EXPIRED.value},
            )
        assert denial is not None
        req, problem = denial
        if joined is None:
            await self._audit(
                None, req, approver, f"approval.{verdict}", "denied", reason=problem.message
            )
        raise problem

    async def _check_policy(
        self, req: ApprovalRequest, approver: Actor, ctx: CallContext | None
    ) -> ContractSpecError | None:
        """The workflow's own permission, asked of its `PolicyDecider` (deny by default)."""
        if self.policy is None:
            return PolicyDeniedError(
                f"deciding approvals requires {self.permission!r} and no PolicyDecider is "
                "configured (deny by default); pass ApprovalWorkflow(policy=...)",
                reason="no policy decider",
                action=self.permission,
                details={"approval_id": req.id, "refusal": "policy"},
            )
        call = ctx or CallContext(actor=approver, org_id=req.org_id, channel="approval")
        resource = Resource(
            "approval",
            req.id,
            req.org_id,
            {"risk": req.risk, "action": req.action, "subject_type": req.subject_type},
        )
        decision: Any = self.policy.decide(approver, self.permission, resource, call)
        if inspect.isawaitable(decision):
            decision = await decision
        if not isinstance(decision, Decision) or not decision.allowed:
            why = decision.reason if isinstance(decision, Decision) else "invalid decision"
            return PolicyDeniedError(
                f"{approver.id!r} may not decide approval {req.id!r}: {why}",
                reason=why,
                action=self.permission,
                details={"approval_id": req.id, "refusal": "policy"},
            )
        return None

    async def _expire(
        self, tx: Transaction, req: ApprovalRequest, now: datetime
    ) -> ApprovalRequest:
        try:
            saved = await self.store.save(
                tx,
                req.evolve(status=ApprovalStatus.EXPIRED, decided_at=now),
                expected_version=req.version,
            )
        except ConflictError:
            raise _Retry() from None
        await self._audit(tx, saved, None, "approval.expire", "success")
        await self._announce(tx, saved, None, approval_expired)
        return saved

    async def expire_due(self, *, org_id: str | None) -> list[ApprovalRequest]:
        """Mark every pending request of `org_id` past its expiry as `expired` (final).

        Returns:
            The requests that expired now.

        Raises:
            ApprovalUnavailableError: The store is unavailable.
        """
        now = self.clock.now()
        out: list[ApprovalRequest] = []
        async with self._tx("expire approvals") as tx:
            for req in await self.store.find(
                tx, org_id=org_id, status=ApprovalStatus.PENDING, limit=10_000
            ):
                if self.status_of(req, now) is ApprovalStatus.EXPIRED:
                    try:
                        out.append(await self._expire(tx, req, now))
                    except _Retry:  # decided concurrently: nothing to expire
                        continue
        return out

    # -- reads ------------------------------------------------------------------------------------

    async def get(self, request_id: str, *, tx: Transaction | None = None) -> ApprovalRequest:
        """The request with its decisions (a pending request past its expiry is expired first).

        Args:
            request_id: The request.
            tx: Join this (writable) transaction instead of opening one: the read and an
                expiry it finds are part of the caller's work.

        Raises:
            NotFoundError: No such request.
            ApprovalUnavailableError: The store is unavailable.
        """
        if tx is not None:
            return await self._get_joined(request_id, tx)
        async with self._tx("read an approval", readonly=True) as tx:
            req = await self.store.get(tx, request_id)
        if req is None:
            raise NotFoundError(
                f"approval request {request_id!r} does not exist",
                details={"approval_id": request_id},
            )
        if req.status is ApprovalStatus.PENDING and self.status_of(req) is ApprovalStatus.EXPIRED:
            async with self._tx("expire an approval") as tx:
                fresh = await self.store.get(tx, request_id)
                assert fresh is not None  # requests are never deleted
                if fresh.status is ApprovalStatus.PENDING:
                    try:
                        fresh = await self._expire(tx, fresh, self.clock.now())
                    except _Retry:
                        again = await self.store.get(tx, request_id)
                        assert again is not None
                        fresh = again
                req = fresh
        return req

    async def _get_joined(self, request_id: str, joined: Transaction) -> ApprovalRequest:
        async with self._tx("read an approval", joined=joined) as tx:
            req = await self.store.get(tx, request_id)
            if req is None:
                raise NotFoundError(
                    f"approval request {request_id!r} does not exist",
                    details={"approval_id": request_id},
                )
            if (
                req.status is ApprovalStatus.PENDING
                and self.status_of(req) is ApprovalStatus.EXPIRED
            ):
                try:
                    req = await self._expire(tx, req, self.clock.now())
                except _Retry:
                    again = await self.store.get(tx, request_id)
                    assert again is not None  # requests are never deleted
                    req = again
        return req

    async def get_by_key(self, org_id: str | None, key: str) -> ApprovalRequest | None:
        """The request with idempotency `key` in the org, or `None`.

        Raises:
            ApprovalUnavailableError: The store is unavailable.
        """
        async with self._tx("read an approval", readonly=True) as tx:
            found = await self.store.get_by_key(tx, org_id, key)
        if (
            found is not None
            and found.status is ApprovalStatus.PENDING
            and self.status_of(found) is ApprovalStatus.EXPIRED
        ):
            return await self.get(found.id)
        return found

    async def pending(
        self, *, org_id: str | None, subject_type: str | None = None, limit: int = 100
    ) -> list[ApprovalRequest]:
        """Open requests of the org (not yet expired), oldest first.

        Raises:
            ApprovalUnavailableError: The store is unavailable.
        """
        now = self.clock.now()
        async with self._tx("list approvals", readonly=True) as tx:
            found = await self.store.find(
                tx, org_id=org_id, status=ApprovalStatus.PENDING, subject_type=subject_type,
                limit=limit,
            )  # fmt: skip
        return [r for r in found if self.status_of(r, now) is ApprovalStatus.PENDING]

    async def history(
        self, *, org_id: str | None, subject_type: str | None = None, limit: int = 100
    ) -> list[ApprovalRequest]:
        """Decided requests (approved, rejected, expired) of the org, most recently decided first.

        Raises:
            ApprovalUnavailableError: The store is unavailable.
        """
        async with self._tx("list approvals", readonly=True) as tx:
            found = await self.store.find(
                tx, org_id=org_id, subject_type=subject_type, limit=10_000
            )
        decided = [r for r in found if r.status is not ApprovalStatus.PENDING]
        decided.sort(key=lambda r: (r.decided_at or r.requested_at, r.id), reverse=True)
        return decided[:limit]

    async def verify(
        self, request: str | ApprovalRequest, arguments: Mapping[str, Any]
    ) -> ApprovalRequest:
        """Check that `request` is approved **for exactly these arguments**.

        Pass the id to re-read the request from the store; pass an `ApprovalRequest` you just
        read to check that object as it is (no second read).

        Returns:
            The approved request.

        Raises:
            ApprovalRequiredError: Still pending.
            ApprovalDecisionError: Rejected (`ApprovalExpiredError` when expired).
            ApprovalMismatchError: Approved for other arguments (a changed action needs a new
                approval).
            NotFoundError, ApprovalUnavailableError: As for `get`.
        """
        req = await self.get(request) if isinstance(request, str) else request
        if req.status is ApprovalStatus.PENDING:
            raise ApprovalRequiredError(
                f"approval {req.id!r} is still pending ({req.approvals}/{req.quorum} approvals)",
                details={"approval_id": req.id},
            )
        if req.status is ApprovalStatus.EXPIRED:
            raise ApprovalExpiredError(
                f"approval {req.id!r} expired; request a new approval",
                details={"approval_id": req.id},
            )
        if req.status is ApprovalStatus.REJECTED:
            raise ApprovalDecisionError(
                f"approval {req.id!r} was rejected", details={"approval_id": req.id}
            )
        if arguments_hash(arguments) != req.arguments_hash:
            raise ApprovalMismatchError(
                f"approval {req.id!r} was granted for other arguments; a changed action needs a "
                "new approval",
                reason="arguments differ from the approved ones",
                action=req.action,
                details={"approval_id": req.id},
            )
        return req


def _refusal_error(
    refusal: ApprovalRefusal, req: ApprovalRequest, permission: str
) -> ContractSpecError:
    """The error of a refusal about who decides (`refusal.is_denial`): self-approval stays an
    `ApprovalDecisionError` (as documented), the others are `PolicyDeniedError`s."""
    details = {"approval_id": req.id, "refusal": refusal.code.value}
    if refusal.code is RefusalCode.SELF_APPROVAL:
        return ApprovalDecisionError(refusal.message, details=details)
    reason = {
        RefusalCode.NOT_NAMED_APPROVER: "not a named approver",
        RefusalCode.ANONYMOUS: "anonymous approver",
    }.get(refusal.code, refusal.code.value)
    return PolicyDeniedError(refusal.message, reason=reason, action=permission, details=details)


def is_refusal_denial(error: BaseException) -> bool:
    """Whether `error`, raised by `ApprovalWorkflow.approve`/`reject`, refused *who* decides —
    by the decision rules (self-approval, not a named approver, anonymous) or by the workflow's
    own policy — rather than the request's state (final, expired, already decided).

    `approve(..., tx=...)` (joined) leaves auditing such a refusal to the caller: an operation
    handler records it with `HandlerCtx.deny` (as `register_review_operations` does).
    """
    if not isinstance(error, ContractSpecError):
        return False
    refusal = error.details.get("refusal")
    if refusal == "policy":
        return True
    try:
        return isinstance(refusal, str) and RefusalCode(refusal).is_denial
    except ValueError:
        return False


class _Retry(Exception):
    """Internal: a compare-and-set lost a race; decide again on fresh state."""


async def _quiet_rollback(tx: Transaction) -> None:
    try:
        await tx.rollback()
    except Exception:  # the store is already failing; keep the original error
        _log.warning("approval.rollback_failed", exc_info=True)


def _check_request(
    action: str,
    reason: str,
    risk: int,
    quorum: int,
    expires_in_s: float | None,
    approvers: tuple[str, ...],
    requester: str,
) -> None:
    def bad(field: str, message: str) -> SpecValidationError:
        return SpecValidationError(
            f"invalid approval request: {field}: {message}",
            errors=[{"field": field, "msg": message, "loc": [field], "type": "value_error"}],
        )

    if not isinstance(action, str) or not action.strip():
        raise bad("action", "must be a non-empty string naming what would be done")
    if not isinstance(reason, str) or not reason.strip():
        raise bad("reason", "must say why the action is wanted")
    if isinstance(risk, bool) or not isinstance(risk, int) or not 0 <= risk <= 3:
        raise bad("risk", f"must be a risk level 0-3, got {risk!r}")
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= 10:
        raise bad("quorum", f"must be an integer from 1 to 10, got {quorum!r}")
    if expires_in_s is not None and (
        isinstance(expires_in_s, bool)
        or not isinstance(expires_in_s, int | float)
        or expires_in_s <= 0
    ):
        raise bad("expires_in_s", f"must be a positive number of seconds, got {expires_in_s!r}")
    if approvers and quorum > len(approvers):
        raise bad("quorum", f"needs {quorum} approvers but only {len(approvers)} are named")
    if approvers and set(approvers) == {requester}:
        raise bad("approvers", "the requester cannot be the only approver")
    if not requester:
        raise bad("requested_by", "must identify the requester")
