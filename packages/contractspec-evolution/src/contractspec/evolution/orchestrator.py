"""`SpecSuggestionOrchestrator`: store suggestions, route them through human approval, write the
approved ones out for review.

**One source of truth.** Each suggestion gets one request in contractspec-agent's
`ApprovalWorkflow` (`subject_type="evolution.suggestion"`, idempotency key `suggestion:<id>`,
arguments bound to the suggestion's fingerprint, patch and base IR digest). The approval request
decides; the suggestion's `status` is a projection of it. Deciding through the orchestrator
decides the approval request, and a request decided anywhere else (an approvals inbox, the
workflow API, expiry) resolves the suggestion on the next `get`, `sync` or `reconcile` (or at once
when `handle_event` receives the `approval.*` event). A decided suggestion is never decided
again: `approve`/`reject` raise `ApprovalDecisionError`, like the workflow itself.

**Limits.** At most `max_suggestions_per_operation` pending suggestions per operation (more are
skipped and reported; the count is checked in the storing transaction, so two pipelines submitting
at the same instant may each add one), a fingerprint is stored once — a unique constraint, strict
across processes — so a rejected proposal is not proposed again,
and `auto_approve_threshold` is off unless set: when set, non-breaking suggestions at or above it
are approved by the configured `auto_approver` through the same workflow (so the policy, the audit
trail and the events still apply); breaking suggestions always wait for a human.

**Envelopes.** On approval the orchestrator writes `<output_dir>/<suggestion id>.json` (the
reviewable envelope: suggestion, approval, diff, base IR digest and whether the patch still applies
to the current spec) and `<suggestion id>.patch.json` (the RFC 6902 patch against the IR),
atomically. `output_dir` is yours: a directory inside an installed ContractSpec package is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import tempfile
from collections.abc import Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from attrs import define

import contractspec
from contractspec.agent import (
    ApprovalDecisionError,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalWorkflow,
)
from contractspec.core import (
    Actor,
    CallContext,
    Clock,
    ConfigurationError,
    ConflictError,
    EventEnvelope,
    EventPublisher,
    NotFoundError,
    SpecRegistry,
    SystemClock,
    Transaction,
    UnitOfWork,
    UuidGenerator,
)
from contractspec.core._log import get_logger
from contractspec.core.ir import ir_digest, to_ir
from contractspec.evolution.events import make_envelope, suggestion_created, suggestion_decided
from contractspec.evolution.stores import SuggestionStore
from contractspec.evolution.suggestions import (
    SpecSuggestion,
    SuggestionStatus,
    apply_patch,
)

__all__ = ["ENVELOPE_FORMAT", "SUBJECT_TYPE", "SpecSuggestionOrchestrator", "SubmitResult"]

T = TypeVar("T")

_log = get_logger(__name__)
#: The caller's transaction that `approve`/`reject`/`sync(tx=...)` joined (else `None`).
_JOINED: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar(
    "contractspec_evolution_joined_tx", default=None
)

#: `subject_type` of the approval requests.
SUBJECT_TYPE: Final = "evolution.suggestion"
#: `action` of the approval requests.
ACTION: Final = "evolution.apply_suggestion"
#: `format` of the written envelopes.
ENVELOPE_FORMAT: Final = "contractspec.suggestion-envelope"

_STATUS: Final = {
    ApprovalStatus.APPROVED: SuggestionStatus.APPROVED,
    ApprovalStatus.REJECTED: SuggestionStatus.REJECTED,
    ApprovalStatus.EXPIRED: SuggestionStatus.EXPIRED,
}


@define(frozen=True)
class SubmitResult:
    """What `submit` did with each suggestion.

    Attributes:
        created: Stored and sent for approval (auto-approved ones included, already approved).
        duplicates: Already stored (same fingerprint): the stored suggestion.
        skipped: `(suggestion, reason)` for those refused by `max_suggestions_per_operation`.
    """

    created: tuple[SpecSuggestion, ...]
    duplicates: tuple[SpecSuggestion, ...]
    skipped: tuple[tuple[SpecSuggestion, str], ...]


def _library_roots() -> list[Path]:
    return [Path(p).resolve() for p in getattr(contractspec, "__path__", [])]


def _check_output_dir(output_dir: str | os.PathLike[str]) -> Path:
    path = Path(output_dir).expanduser().resolve()
    for root in _library_roots():
        if path == root or root in path.parents:
            raise ConfigurationError(
                f"output_dir {str(path)!r} is inside the installed ContractSpec library ({root}); "
                "write suggestions to a directory of your own project, e.g. ./spec-suggestions",
                details={"field": "output_dir"},
            )
    if path.exists() and not path.is_dir():
        raise ConfigurationError(
            f"output_dir {str(path)!r} exists and is not a directory",
            details={"field": "output_dir"},
        )
    return path


class SpecSuggestionOrchestrator:
    """Stores suggestions, requests and mirrors their approvals, writes approved envelopes.

    Args:
        store: `MemorySuggestionStore` or `contractspec.evolution.sql.SqlSuggestionStore`.
        workflow: The agent package's `ApprovalWorkflow` (its store, policy and audit decide).
        output_dir: Your directory for approved envelopes and patches (created when needed).
        registry: The live spec, to record whether an approved patch still applies to it.
        unit_of_work: Transactions for the store (default: the workflow's).
        events: Publisher of `suggestion.created` / `suggestion.decided` (default: the workflow's).
        max_suggestions_per_operation: Pending suggestions allowed per operation (default 3).
        auto_approve_threshold: Confidence at or above which non-breaking suggestions are approved
            by `auto_approver`; `None` (default) never auto-approves.
        auto_approver: The actor that auto-approves (needs the workflow's permission; must differ
            from `requested_by`).
        requested_by: The requester recorded on approval requests.
        approvers: Named approvers of every request (empty: anyone with the permission).
        quorum: Distinct approvals every request needs.
        expires_in_s: Seconds a request stays open (default: the workflow's).
        clock: Time source for envelopes and events.

    Raises:
        ConfigurationError: `output_dir` inside the library, a threshold outside [0, 1], an
            auto-approve threshold without an `auto_approver`, or a non-positive limit.
    """

    def __init__(
        self,
        store: SuggestionStore,
        workflow: ApprovalWorkflow,
        *,
        output_dir: str | os.PathLike[str],
        registry: SpecRegistry | None = None,
        unit_of_work: UnitOfWork | None = None,
        events: EventPublisher | None = None,
        max_suggestions_per_operation: int = 3,
        auto_approve_threshold: float | None = None,
        auto_approver: Actor | None = None,
        requested_by: Actor | str = "contractspec.evolution",
        approvers: Sequence[str] = (),
        quorum: int = 1,
        expires_in_s: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if (
            isinstance(max_suggestions_per_operation, bool)
            or not isinstance(max_suggestions_per_operation, int)
            or max_suggestions_per_operation < 1
        ):
            raise ConfigurationError(
                "max_suggestions_per_operation must be a positive integer, got "
                f"{max_suggestions_per_operation!r}",
                details={"field": "max_suggestions_per_operation"},
            )
        if auto_approve_threshold is not None:
            if not 0.0 <= auto_approve_threshold <= 1.0:
                raise ConfigurationError(
                    f"auto_approve_threshold must be a confidence in [0, 1] or None, got "
                    f"{auto_approve_threshold!r}",
                    details={"field": "auto_approve_threshold"},
                )
            if auto_approver is None:
                raise ConfigurationError(
                    "auto_approve_threshold needs auto_approver=Actor(...) (an actor allowed to "
                    "decide approvals, other than the requester)",
                    details={"field": "auto_approver"},
                )
        self.store = store
        self.workflow = workflow
        self.output_dir = _check_output_dir(output_dir)
        self.registry = registry
        self.unit_of_work: UnitOfWork = unit_of_work or workflow.unit_of_work
        self.events: EventPublisher = events or workflow.events
        self.max_suggestions_per_operation = max_suggestions_per_operation
        self.auto_approve_threshold = auto_approve_threshold
        self.auto_approver = auto_approver
        self.requested_by = requested_by
        self.approvers = tuple(approvers)
        self.quorum = quorum
        self.expires_in_s = expires_in_s
        self.clock: Clock = clock or workflow.clock or SystemClock()
        self.ids = workflow.ids or UuidGenerator()

    # -- plumbing ---------------------------------------------------------------------------------

    async def _in_tx(self, fn: Any, *, readonly: bool = False) -> Any:
        joined = _JOINED.get()
        if joined is not None:  # the caller commits or rolls back
            return await fn(joined)
        tx = await self.unit_of_work.begin(readonly=readonly)
        try:
            result = await fn(tx)
        except BaseException:
            await tx.rollback()
            raise
        if readonly:
            await tx.rollback()
        else:
            await tx.commit()
        return result

    async def _load(self, suggestion_id: str) -> SpecSuggestion:
        found = await self._in_tx(lambda tx: self.store.get(tx, suggestion_id), readonly=True)
        if found is None:
            raise NotFoundError(
                f"suggestion {suggestion_id!r} does not exist",
                details={"suggestion_id": suggestion_id},
            )
        assert isinstance(found, SpecSuggestion)
        return found

    @staticmethod
    def _arguments(s: SpecSuggestion) -> dict[str, Any]:
        return {
            "suggestion_id": s.id,
            "fingerprint": s.fingerprint,
            "base_ir_digest": s.base_ir_digest,
            "patch": [dict(p) for p in s.patch],
        }

    # -- submission -------------------------------------------------------------------------------

    async def submit(self, suggestions: Iterable[SpecSuggestion]) -> SubmitResult:
        """Store new suggestions, publish `suggestion.created`, and request their approval.

        Returns:
            What happened to each suggestion.

        Raises:
            ApprovalUnavailableError: The approval store is unavailable (the suggestion stays
                stored without a request; `reconcile()` requests it later).
        """
        created: list[SpecSuggestion] = []
        duplicates: list[SpecSuggestion] = []
        skipped: list[tuple[SpecSuggestion, str]] = []
        for suggestion in suggestions:
            outcome = await self._in_tx(lambda tx, s=suggestion: self._store_new(tx, s))
            if isinstance(outcome, str):
                skipped.append((suggestion, outcome))
                continue
            stored, is_new = outcome
            if not is_new:
                duplicates.append(stored)
                continue
            created.append(await self._request_approval(stored))
        return SubmitResult(tuple(created), tuple(duplicates), tuple(skipped))

    async def _store_new(
        self, tx: Transaction, s: SpecSuggestion
    ) -> tuple[SpecSuggestion, bool] | str:
        existing = await self.store.get_by_fingerprint(tx, s.fingerprint)
        if existing is not None:
            return existing, False
        pending = await self.store.find(
            tx, status=SuggestionStatus.PENDING, operation=s.operation,
            limit=self.max_suggestions_per_operation,
        )  # fmt: skip
        if len(pending) >= self.max_suggestions_per_operation:
            return (
                f"{s.operation} already has {len(pending)} pending suggestions "
                f"(max_suggestions_per_operation={self.max_suggestions_per_operation}); decide "
                "those first"
            )
        try:
            await self.store.add(tx, s)
        except ConflictError:  # stored concurrently by another pipeline
            again = await self.store.get_by_fingerprint(tx, s.fingerprint)
            if again is None:
                raise
            return again, False
        await self.events.publish(
            [
                make_envelope(
                    suggestion_created,
                    {
                        "suggestion_id": s.id, "kind": s.kind.value, "operation": s.operation,
                        "title": s.title, "breaking": s.breaking, "confidence": s.confidence,
                        "priority": int(s.priority), "fingerprint": s.fingerprint,
                    },
                    clock=self.clock, ids=self.ids, correlation_id=s.id,
                )
            ],
            tx,
        )  # fmt: skip
        return s, True

    async def _request_approval(self, s: SpecSuggestion) -> SpecSuggestion:
        request = await self.workflow.request(
            action=ACTION,
            arguments=self._arguments(s),
            requested_by=self.requested_by,
            reason=f"{s.title} ({'breaking' if s.breaking else 'non-breaking'}): {s.rationale}",
            risk=3 if s.breaking else 1,
            subject_type=SUBJECT_TYPE,
            subject_id=s.id,
            key=f"suggestion:{s.id}",
            expires_in_s=self.expires_in_s,
            quorum=self.quorum,
            approvers=self.approvers,
            metadata={"kind": s.kind.value, "operation": s.operation, "priority": int(s.priority),
                      "confidence": s.confidence, "breaking": s.breaking},
            tx=_JOINED.get(),
        )  # fmt: skip
        current = s
        if current.approval_id != request.id:
            current = await self._in_tx(
                lambda tx: self.store.save(
                    tx, s.evolve(approval_id=request.id), expected_version=s.version
                )
            )
        if (
            self.auto_approve_threshold is not None
            and self.auto_approver is not None
            and not s.breaking
            and s.confidence >= self.auto_approve_threshold
        ):
            await self.workflow.approve(
                request.id,
                self.auto_approver,
                comment=f"auto-approved: confidence {s.confidence} >= {self.auto_approve_threshold}",
                tx=_JOINED.get(),
            )
            return await self.sync(current.id)
        return current

    # -- decisions --------------------------------------------------------------------------------

    async def approve(
        self,
        suggestion_id: str,
        approver: Actor,
        *,
        comment: str = "",
        ctx: CallContext | None = None,
        tx: Transaction | None = None,
    ) -> SpecSuggestion:
        """Approve through the workflow; once its quorum is met the envelope is written.

        Args:
            suggestion_id: The suggestion.
            approver: Who decides.
            comment: Their reason.
            ctx: The call context the workflow's policy sees.
            tx: Join this transaction (e.g. an operation handler's `ctx.tx`; it must be of the
                workflow's and the store's backend): the decision, the suggestion's new state and
                their events commit with the caller's work. The envelope file is written before
                the caller commits (rewriting it is harmless: same path, same content).

        Returns:
            The suggestion after the decision (still `pending` while the quorum is not met).

        Raises:
            NotFoundError: Unknown suggestion.
            ApprovalDecisionError: Already decided (here or in the workflow), self-approval, or
                this approver already decided.
            PolicyDeniedError: The approver may not decide.
            ApprovalUnavailableError: The approval store is unavailable.
        """
        return await self._joined(
            tx, self._decide(suggestion_id, approver, "approve", comment, ctx)
        )

    async def reject(
        self,
        suggestion_id: str,
        approver: Actor,
        *,
        comment: str = "",
        ctx: CallContext | None = None,
        tx: Transaction | None = None,
    ) -> SpecSuggestion:
        """Reject through the workflow (final; the fingerprint is never proposed again).
        Arguments as for `approve`.

        Raises:
            NotFoundError: Unknown suggestion.
            ApprovalDecisionError: Already decided, self-decision, or a second decision.
            PolicyDeniedError: The approver may not decide.
            ApprovalUnavailableError: The approval store is unavailable.
        """
        return await self._joined(tx, self._decide(suggestion_id, approver, "reject", comment, ctx))

    @staticmethod
    async def _joined(tx: Transaction | None, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` with `tx` as the joined transaction (when given)."""
        token = _JOINED.set(tx) if tx is not None else None
        try:
            return await work
        finally:
            if token is not None:
                _JOINED.reset(token)

    async def _decide(
        self,
        suggestion_id: str,
        approver: Actor,
        verdict: str,
        comment: str,
        ctx: CallContext | None = None,
    ) -> SpecSuggestion:
        s = await self.sync(suggestion_id)
        if s.status.final:
            raise ApprovalDecisionError(
                f"suggestion {s.id!r} is already {s.status.value}; decisions are final",
                details={"suggestion_id": s.id, "status": s.status.value},
            )
        if s.approval_id is None:
            s = await self._request_approval(s)
            assert s.approval_id is not None
        joined = _JOINED.get()
        if verdict == "approve":
            await self.workflow.approve(
                s.approval_id, approver, comment=comment, ctx=ctx, tx=joined
            )
        else:
            await self.workflow.reject(s.approval_id, approver, comment=comment, ctx=ctx, tx=joined)
        return await self.sync(s.id)

    # -- mirroring the approval -------------------------------------------------------------------

    async def get(self, suggestion_id: str) -> SpecSuggestion:
        """The suggestion, resolved from its approval request first.

        Raises:
            NotFoundError: Unknown suggestion.
        """
        return await self.sync(suggestion_id)

    async def sync(self, suggestion_id: str, *, tx: Transaction | None = None) -> SpecSuggestion:
        """Mirror the approval request's state onto the suggestion (idempotent).

        A final request makes the suggestion final (writing the envelope when approved) and
        publishes `suggestion.decided` once. `tx` joins the caller's transaction, as for
        `approve`.

        Raises:
            NotFoundError: Unknown suggestion.
            ApprovalUnavailableError: The approval store is unavailable.
        """
        if tx is not None:
            return await self._joined(tx, self.sync(suggestion_id))
        s = await self._load(suggestion_id)
        if s.approval_id is None:
            return s
        request = await self.workflow.get(s.approval_id, tx=_JOINED.get())
        return await self._mirror(s, request)

    async def write_envelope(
        self, suggestion_id: str, *, tx: Transaction | None = None
    ) -> SpecSuggestion:
        """Write an approved suggestion's envelope and patch to `output_dir` again (after the
        directory was cleaned, or to refresh whether the patch still applies to the live spec).

        Approval writes them already; this is idempotent (same paths, atomic replace). The
        registry and your code are never changed: a developer applies the patch.

        Args:
            suggestion_id: The suggestion.
            tx: Join the caller's transaction, as for `approve`.

        Returns:
            The suggestion with its `envelope_path`.

        Raises:
            NotFoundError: Unknown suggestion.
            ConflictError: The suggestion is not approved (approve it first).
        """
        if tx is not None:
            return await self._joined(tx, self.write_envelope(suggestion_id))
        s = await self.sync(suggestion_id)
        if s.status is not SuggestionStatus.APPROVED or s.approval_id is None:
            raise ConflictError(
                f"suggestion {s.id!r} is {s.status.value}; only an approved suggestion has an "
                "envelope to write (approve it first)",
                details={"suggestion_id": s.id, "status": s.status.value},
            )
        request = await self.workflow.get(s.approval_id, tx=_JOINED.get())
        path = await asyncio.to_thread(self._write_envelope, s, request)
        if s.envelope_path == str(path):
            return s
        return await self._write_and_save(s, request)

    async def _mirror(self, s: SpecSuggestion, request: ApprovalRequest) -> SpecSuggestion:
        status = _STATUS.get(request.status)
        if status is None or s.status is status:
            if s.status is SuggestionStatus.APPROVED and s.envelope_path is None:
                return await self._write_and_save(s, request)
            return s
        if s.status.final:  # pragma: no cover - the request is final and never changes
            return s
        last = request.decisions[-1].approver_id if request.decisions else None
        decided = s.evolve(status=status, decided_at=request.decided_at, decided_by=last)
        if status is SuggestionStatus.APPROVED:
            path = await asyncio.to_thread(self._write_envelope, decided, request)
            decided = decided.evolve(envelope_path=str(path))

        async def save(tx: Transaction) -> SpecSuggestion:
            saved = await self.store.save(tx, decided, expected_version=s.version)
            await self.events.publish(
                [
                    make_envelope(
                        suggestion_decided,
                        {"suggestion_id": s.id, "status": status.value,
                         "approval_id": request.id, "decided_by": last,
                         "envelope_path": saved.envelope_path},
                        clock=self.clock, ids=self.ids, correlation_id=s.id,
                    )
                ],
                tx,
            )  # fmt: skip
            return saved

        try:
            saved: SpecSuggestion = await self._in_tx(save)
        except ConflictError:  # mirrored concurrently: the stored one is as good
            return await self._load(s.id)
        _log.info("evolution.suggestion_decided", suggestion_id=s.id, status=status.value)
        return saved

    async def _write_and_save(self, s: SpecSuggestion, request: ApprovalRequest) -> SpecSuggestion:
        path = await asyncio.to_thread(self._write_envelope, s, request)
        try:
            saved: SpecSuggestion = await self._in_tx(
                lambda tx: self.store.save(
                    tx, s.evolve(envelope_path=str(path)), expected_version=s.version
                )
            )
        except ConflictError:
            return await self._load(s.id)
        return saved

    async def reconcile(self, *, limit: int = 1000) -> list[SpecSuggestion]:
        """Mirror every pending suggestion's approval (and request missing approvals).

        Returns:
            The suggestions that changed state.
        """
        pending = await self._in_tx(
            lambda tx: self.store.find(tx, status=SuggestionStatus.PENDING, limit=limit),
            readonly=True,
        )
        changed: list[SpecSuggestion] = []
        for s in pending:
            after = await (self._request_approval(s) if s.approval_id is None else self.sync(s.id))
            if after.status is not s.status:
                changed.append(after)
        return changed

    async def handle_event(self, event: EventEnvelope) -> SpecSuggestion | None:
        """Resolve a suggestion from an `approval.approved|rejected|expired` event (bus handler).

        Returns:
            The resolved suggestion, or `None` when the event is about something else.
        """
        payload = event.payload
        if getattr(payload, "subject_type", None) != SUBJECT_TYPE:
            return None
        subject = getattr(payload, "subject_id", None)
        if not subject:
            return None
        try:
            return await self.sync(str(subject))
        except NotFoundError:
            return None

    async def pending(
        self, *, operation: str | None = None, limit: int = 100
    ) -> list[SpecSuggestion]:
        """Pending suggestions (oldest first), mirrored from their approvals."""
        found = await self._in_tx(
            lambda tx: self.store.find(
                tx, status=SuggestionStatus.PENDING, operation=operation, limit=limit
            ),
            readonly=True,
        )
        out = [await self.sync(s.id) for s in found]
        return [s for s in out if s.status is SuggestionStatus.PENDING]

    async def list(
        self,
        *,
        status: SuggestionStatus | None = None,
        operation: str | None = None,
        limit: int = 100,
    ) -> list[SpecSuggestion]:
        """Stored suggestions (oldest first), as stored."""
        result: list[SpecSuggestion] = await self._in_tx(
            lambda tx: self.store.find(tx, status=status, operation=operation, limit=limit),
            readonly=True,
        )
        return result

    # -- envelopes --------------------------------------------------------------------------------

    def envelope(self, s: SpecSuggestion, request: ApprovalRequest) -> dict[str, Any]:
        """The reviewable envelope of an approved suggestion (JSON-compatible)."""
        current = None
        applies: bool | None = None
        if self.registry is not None:
            ir = to_ir(self.registry)
            current = ir_digest(ir)
            try:
                apply_patch(ir, s.patch)
                applies = True
            except ConfigurationError:
                applies = False
        return {
            "format": ENVELOPE_FORMAT,
            "format_version": 1,
            "written_at": self.clock.now().isoformat(),
            "suggestion": s.to_dict(),
            "approval": {
                "id": request.id,
                "status": request.status.value,
                "arguments_hash": request.arguments_hash,
                "decisions": [d.to_dict() for d in request.decisions],
                "decided_at": request.decided_at.isoformat() if request.decided_at else None,
            },
            "base_ir_digest": s.base_ir_digest,
            "current_ir_digest": current,
            "patch_applies_to_current_spec": applies,
            "breaking": s.breaking,
            "diff": [dict(c) for c in s.diff],
            "patch_file": f"{s.id}.patch.json",
        }

    def _write_envelope(self, s: SpecSuggestion, request: ApprovalRequest) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / f"{s.id}.json"
        envelope = self.envelope(s.evolve(envelope_path=str(path)), request)
        _atomic_write(self.output_dir / f"{s.id}.patch.json", [dict(p) for p in s.patch])
        _atomic_write(path, envelope)
        _log.info("evolution.envelope_written", suggestion_id=s.id, path=str(path))
        return path


def _atomic_write(path: Path, data: Any) -> None:
    """Write JSON to `path` via a temporary file and `os.replace` (readers never see half a file)."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
