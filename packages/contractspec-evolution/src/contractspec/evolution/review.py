"""Review queue of spec suggestions as spec operations.

`register_review_operations(registry, orchestrator=..., org_id=...)` adds queries and commands to
*your* `SpecRegistry`; your `Executor` runs them with your policy, tenant checks, audit, outbox and
traffic recording, and your HTTP adapter serves them like any other operation.

| operation | kind | permission | effect (public API) | event |
|---|---|---|---|---|
| `evolution.review.suggestions.list` | query | `evolution.review.read` | | |
| `evolution.review.suggestions.show` | query | `evolution.review.read` | | |
| `evolution.review.suggestions.approve` | command | `evolution.review.act` | `SpecSuggestionOrchestrator.approve` | `evolution.review.suggestions.approved` |
| `evolution.review.suggestions.reject` | command | `evolution.review.act` | `SpecSuggestionOrchestrator.reject` | `evolution.review.suggestions.rejected` |
| `evolution.review.suggestions.apply` | command | `evolution.review.act` | `SpecSuggestionOrchestrator.write_envelope` | `evolution.review.suggestions.applied` |

Suggestions are about the application's spec, not tenant data: they belong to the one org named
at registration (`org_id`, e.g. your operators' org). Callers of any other org see an empty list and
`NotFoundError`. Reads and actions use the executor's transaction (`ctx.tx`), so the suggestion and
approval stores must live on the executor's backend; an action's decision, the suggestion's new
state, their events and the audit record commit together. Approve and reject also check the
approval workflow's permission (`approval.decide` by default) with the executor's policy, so a
denial is audited once; the workflow then applies its own policy and rules.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from attrs import define
from pydantic import BaseModel, Field, field_validator

from contractspec.agent import ApprovalRequest, ApprovalStatus
from contractspec.core import (
    PII,
    ConfigurationError,
    EventSpec,
    HandlerCtx,
    NotFoundError,
    OperationSpec,
    Resource,
    SpecRegistry,
    define_command,
    define_event,
    define_query,
    requires,
)
from contractspec.evolution.orchestrator import ACTION, SUBJECT_TYPE, SpecSuggestionOrchestrator
from contractspec.evolution.suggestions import (
    SpecSuggestion,
    SuggestionKind,
    SuggestionStatus,
)

__all__ = [
    "ACT_PERMISSION",
    "READ_PERMISSION",
    "ReviewOperations",
    "SuggestionApproval",
    "SuggestionDecisionRequest",
    "SuggestionDetail",
    "SuggestionItem",
    "SuggestionList",
    "SuggestionListRequest",
    "SuggestionRef",
    "SuggestionReviewed",
    "register_review_operations",
]

#: Permission of the list/show queries (`RolePermissions({"ops": ["evolution.review.*"]})`).
READ_PERMISSION = "evolution.review.read"
#: Permission of the approve/reject/apply commands.
ACT_PERMISSION = "evolution.review.act"

_STATUS = {
    ApprovalStatus.APPROVED: SuggestionStatus.APPROVED,
    ApprovalStatus.REJECTED: SuggestionStatus.REJECTED,
    ApprovalStatus.EXPIRED: SuggestionStatus.EXPIRED,
}


def _encode_cursor(at: datetime, item_id: str) -> str:
    raw = json.dumps([at.isoformat(), item_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, item_id = json.loads(raw)
        when = datetime.fromisoformat(at)
        if not isinstance(item_id, str) or when.tzinfo is None:
            raise ValueError("bad cursor")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError(
            "cursor is not one this operation returned; pass next_cursor from the previous "
            "page, or omit it for the first page"
        ) from None
    return when, item_id


class SuggestionListRequest(BaseModel):
    """Input of `evolution.review.suggestions.list`: newest suggestion first."""

    limit: Annotated[int, Field(ge=1, le=200, description="Items per page (1-200).")] = 50
    cursor: Annotated[
        str | None, Field(max_length=500, description="`next_cursor` of the previous page.")
    ] = None
    status: Literal["pending", "approved", "rejected", "expired"] | None = Field(
        "pending", description="Only suggestions stored in this state (`None`: every state)."
    )
    operation: str | None = Field(None, max_length=200, description="Only this operation.")

    @field_validator("cursor")
    @classmethod
    def _check_cursor(cls, value: str | None) -> str | None:
        if value is not None:
            _decode_cursor(value)
        return value


class SuggestionRef(BaseModel):
    """Input of `evolution.review.suggestions.show` and `.apply`."""

    suggestion_id: Annotated[str, Field(min_length=1, max_length=200)]


class SuggestionDecisionRequest(SuggestionRef):
    """Input of `evolution.review.suggestions.approve` and `.reject`."""

    comment: Annotated[str, Field(max_length=2000, description="The reviewer's reason.")] = ""


class SuggestionItem(BaseModel):
    """A suggestion in a list. `status` follows its approval request once that is final."""

    id: str
    kind: SuggestionKind
    operation: str
    title: str
    confidence: float = Field(description="Confidence of the evidence, a fraction (0-1).")
    priority: int = Field(description="Review order, 1 (first) to 4.")
    breaking: bool
    status: SuggestionStatus
    approval_id: str | None
    created_at: datetime
    decided_at: datetime | None
    decided_by: str | None


class SuggestionApproval(BaseModel):
    """The approval request deciding a suggestion."""

    id: str
    status: str
    arguments_hash: str
    quorum: int
    decisions: list[dict[str, Any]]
    expires_at: datetime


class SuggestionDetail(SuggestionItem):
    """A suggestion with its rationale, evidence, classified diff and RFC 6902 patch.

    `evidence` is personal data for traffic recording (it may quote sampled values).
    """

    rationale: str
    evidence: Annotated[dict[str, Any], PII]
    diff: list[dict[str, Any]] = Field(description="Classified changes (`Change.to_dict()`).")
    patch: list[dict[str, Any]] = Field(description="RFC 6902 operations against the IR.")
    base_ir_digest: str
    fingerprint: str
    intent_ids: list[str]
    envelope_path: str | None
    approval: SuggestionApproval | None


class SuggestionList(BaseModel):
    """A page of suggestions, newest first."""

    items: list[SuggestionItem]
    next_cursor: str | None


class SuggestionReviewed(BaseModel):
    """Payload of the `evolution.review.suggestions.*` events."""

    suggestion_id: str
    status: str
    actor_id: str | None
    envelope_path: str | None


suggestion_reviewed_approved = define_event(
    "evolution.review.suggestions.approved", payload=SuggestionReviewed, key="suggestion_id"
)
suggestion_reviewed_rejected = define_event(
    "evolution.review.suggestions.rejected", payload=SuggestionReviewed, key="suggestion_id"
)
suggestion_reviewed_applied = define_event(
    "evolution.review.suggestions.applied", payload=SuggestionReviewed, key="suggestion_id"
)

list_suggestions = define_query(
    "evolution.review.suggestions.list",
    input=SuggestionListRequest,
    output=SuggestionList,
    auth=requires(READ_PERMISSION),
    description="Spec suggestions, newest first.",
)
show_suggestion = define_query(
    "evolution.review.suggestions.show",
    input=SuggestionRef,
    output=SuggestionDetail,
    auth=requires(READ_PERMISSION),
    errors=[NotFoundError],
    description="One suggestion with its diff, patch, evidence and approval.",
)
approve_suggestion = define_command(
    "evolution.review.suggestions.approve",
    input=SuggestionDecisionRequest,
    output=SuggestionDetail,
    auth=requires(ACT_PERMISSION),
    emits=[suggestion_reviewed_approved],
    idempotent=True,
    errors=[NotFoundError, "approval_decision", "approval_expired"],
    description="Approve a suggestion as the caller (through its approval request).",
)
reject_suggestion = define_command(
    "evolution.review.suggestions.reject",
    input=SuggestionDecisionRequest,
    output=SuggestionDetail,
    auth=requires(ACT_PERMISSION),
    emits=[suggestion_reviewed_rejected],
    idempotent=True,
    errors=[NotFoundError, "approval_decision", "approval_expired"],
    description="Reject a suggestion as the caller (final).",
)
apply_suggestion = define_command(
    "evolution.review.suggestions.apply",
    input=SuggestionRef,
    output=SuggestionDetail,
    auth=requires(ACT_PERMISSION),
    emits=[suggestion_reviewed_applied],
    idempotent=True,
    errors=[NotFoundError, "conflict"],
    description=(
        "Write an approved suggestion's envelope and patch to the output directory (again) for "
        "a developer to apply; the registry and your code are never changed."
    ),
)


@define(frozen=True)
class ReviewOperations:
    """What `register_review_operations` added to the registry.

    Attributes:
        operations: The operation specs registered.
        events: The event specs they emit.
        permissions: `(READ_PERMISSION, ACT_PERMISSION)`.
    """

    operations: tuple[OperationSpec, ...]
    events: tuple[EventSpec, ...]
    permissions: tuple[str, ...] = (READ_PERMISSION, ACT_PERMISSION)

    @property
    def names(self) -> tuple[str, ...]:
        """Operation names, in registration order."""
        return tuple(op.name for op in self.operations)


def _item_fields(s: SpecSuggestion, request: ApprovalRequest | None) -> dict[str, Any]:
    status = s.status
    if request is not None and request.status in _STATUS:
        status = _STATUS[request.status]
    return {
        "id": s.id,
        "kind": s.kind,
        "operation": s.operation,
        "title": s.title,
        "confidence": s.confidence,
        "priority": int(s.priority),
        "breaking": s.breaking,
        "status": status,
        "approval_id": s.approval_id,
        "created_at": s.created_at,
        "decided_at": s.decided_at or (request.decided_at if request else None),
        "decided_by": s.decided_by
        or (request.decisions[-1].approver_id if request and request.decisions else None),
    }


def _detail(s: SpecSuggestion, request: ApprovalRequest | None) -> SuggestionDetail:
    return SuggestionDetail(
        **_item_fields(s, request),
        rationale=s.rationale,
        evidence=dict(s.evidence),
        diff=[dict(c) for c in s.diff],
        patch=[dict(p) for p in s.patch],
        base_ir_digest=s.base_ir_digest,
        fingerprint=s.fingerprint,
        intent_ids=list(s.intent_ids),
        envelope_path=s.envelope_path,
        approval=None
        if request is None
        else SuggestionApproval(
            id=request.id,
            status=request.status.value,
            arguments_hash=request.arguments_hash,
            quorum=request.quorum,
            decisions=[d.to_dict() for d in request.decisions],
            expires_at=request.expires_at,
        ),
    )


def register_review_operations(
    registry: SpecRegistry, *, orchestrator: SpecSuggestionOrchestrator, org_id: str
) -> ReviewOperations:
    """Add the spec-suggestion review queue to `registry`, with handlers.

    Args:
        registry: Your `SpecRegistry` (run it with your own `Executor` and policy).
        orchestrator: The `SpecSuggestionOrchestrator` whose suggestions are reviewed.
        org_id: The org whose members review the app's spec suggestions (e.g. `"ops"`); callers
            of another org find none.

    Returns:
        The `ReviewOperations` registered (operation and event specs, permissions).

    Raises:
        ConfigurationError: `org_id` is empty.
        SpecDefinitionError: The registry already holds one of these operations.

    Example:
        ```python
        review = register_review_operations(registry, orchestrator=orch, org_id="ops")
        policy = RolePermissions({"ops": ["evolution.review.*", "approval.decide"]})
        ```
    """
    if not isinstance(org_id, str) or not org_id:
        raise ConfigurationError(
            "register_review_operations(org_id=...) needs the org whose members review spec "
            "suggestions, e.g. org_id='ops'",
            details={"field": "org_id"},
        )
    store = orchestrator.store
    approvals = orchestrator.workflow.store
    operations = (
        list_suggestions,
        show_suggestion,
        approve_suggestion,
        reject_suggestion,
        apply_suggestion,
    )
    events = (
        suggestion_reviewed_approved,
        suggestion_reviewed_rejected,
        suggestion_reviewed_applied,
    )
    registry.register(*events, *operations)

    def check_org(ctx: HandlerCtx, suggestion_id: str) -> None:
        if ctx.org_id != org_id:
            raise NotFoundError(
                f"suggestion {suggestion_id!r} does not exist in this org",
                details={"suggestion_id": suggestion_id},
            )

    async def load(ctx: HandlerCtx, suggestion_id: str) -> SpecSuggestion:
        check_org(ctx, suggestion_id)
        found = await store.get(ctx.tx, suggestion_id)
        if found is None:
            raise NotFoundError(
                f"suggestion {suggestion_id!r} does not exist in this org",
                details={"suggestion_id": suggestion_id},
            )
        return found

    async def request_of(ctx: HandlerCtx, s: SpecSuggestion) -> ApprovalRequest | None:
        return None if s.approval_id is None else await approvals.get(ctx.tx, s.approval_id)

    @registry.handler(list_suggestions)
    async def listing(inp: SuggestionListRequest, ctx: HandlerCtx) -> SuggestionList:
        if ctx.org_id != org_id:
            return SuggestionList(items=[], next_cursor=None)
        found = await store.find(
            ctx.tx,
            status=SuggestionStatus(inp.status) if inp.status else None,
            operation=inp.operation,
            limit=inp.limit + 1,
            newest_first=True,
            before=_decode_cursor(inp.cursor) if inp.cursor else None,
        )
        page = found[: inp.limit]
        more = len(found) > inp.limit
        return SuggestionList(
            items=[SuggestionItem(**_item_fields(s, None)) for s in page],
            next_cursor=_encode_cursor(page[-1].created_at, page[-1].id) if more else None,
        )

    @registry.handler(show_suggestion)
    async def show(inp: SuggestionRef, ctx: HandlerCtx) -> SuggestionDetail:
        s = await load(ctx, inp.suggestion_id)
        return _detail(s, await request_of(ctx, s))

    async def act(s: SpecSuggestion, ctx: HandlerCtx, spec: EventSpec) -> SuggestionDetail:
        request = await request_of(ctx, s)
        ctx.emit(
            spec,
            SuggestionReviewed(
                suggestion_id=s.id,
                status=s.status.value,
                actor_id=ctx.actor.id,
                envelope_path=s.envelope_path,
            ),
        )
        return _detail(s, request)

    async def may_decide(ctx: HandlerCtx, s: SpecSuggestion) -> None:
        # The workflow's permission, checked by the executor's policy first so that a denial is
        # audited exactly once by the pipeline (the joined workflow does not audit denials).
        resource = Resource(
            "approval",
            s.approval_id or s.id,
            ctx.org_id,
            {"risk": 3 if s.breaking else 1, "action": ACTION, "subject_type": SUBJECT_TYPE},
        )
        await ctx.authorize(orchestrator.workflow.permission, resource)

    @registry.handler(approve_suggestion)
    async def approve(inp: SuggestionDecisionRequest, ctx: HandlerCtx) -> SuggestionDetail:
        await may_decide(ctx, await load(ctx, inp.suggestion_id))
        ctx.set_audit_target("spec_suggestion", inp.suggestion_id)
        s = await orchestrator.approve(
            inp.suggestion_id, ctx.actor, comment=inp.comment, ctx=ctx.call, tx=ctx.tx
        )
        return await act(s, ctx, suggestion_reviewed_approved)

    @registry.handler(reject_suggestion)
    async def reject(inp: SuggestionDecisionRequest, ctx: HandlerCtx) -> SuggestionDetail:
        await may_decide(ctx, await load(ctx, inp.suggestion_id))
        ctx.set_audit_target("spec_suggestion", inp.suggestion_id)
        s = await orchestrator.reject(
            inp.suggestion_id, ctx.actor, comment=inp.comment, ctx=ctx.call, tx=ctx.tx
        )
        return await act(s, ctx, suggestion_reviewed_rejected)

    @registry.handler(apply_suggestion)
    async def apply(inp: SuggestionRef, ctx: HandlerCtx) -> SuggestionDetail:
        await load(ctx, inp.suggestion_id)
        ctx.set_audit_target("spec_suggestion", inp.suggestion_id)
        s = await orchestrator.write_envelope(inp.suggestion_id, tx=ctx.tx)
        return await act(s, ctx, suggestion_reviewed_applied)

    return ReviewOperations(operations, events)
