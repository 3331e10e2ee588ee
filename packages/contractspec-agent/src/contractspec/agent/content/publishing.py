"""Publishing: a person approves the exact draft (L2), then `content.publish` runs through the
executor and `content.published` leaves through the outbox.

```text
ContentPublisher.request_approval(draft)  -> guardrails proven again
                                          -> ApprovalWorkflow.request(action="content.publish",
                                             risk=L2, arguments = brief + kind + draft + channel)
(a person approves or rejects it: ApprovalWorkflow.approve / reject, the review queue, ...)
ContentPublisher.publish(approval_id)     -> Executor: content.publish (idempotent, key
                                             "content.publish:<approval id>")
    handler: the approval is read in the call's transaction and verified for exactly these
             arguments (pending, rejected, expired or changed -> refused) -> guardrails proven
             again -> content.publication stored -> content.published emitted (outbox)
```

The handler does the checks, so calling `content.publish` directly (HTTP, MCP, another agent)
cannot skip the approval or publish a changed draft.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final

from pydantic import BaseModel, Field

from contractspec.agent.approvals import ApprovalWorkflow
from contractspec.agent.content.brief import ContentBrief
from contractspec.agent.content.drafts import ContentKind, draft_from_dict
from contractspec.agent.content.events import CONTENT_EVENTS, content_published
from contractspec.agent.content.generators import (
    ContentRefusedError,
    GeneratedDraft,
    draft_id_for,
)
from contractspec.agent.content.guardrails import check_guardrails
from contractspec.agent.errors import (
    ApprovalDecisionError,
    ApprovalExpiredError,
    ApprovalMismatchError,
)
from contractspec.agent.stores import ApprovalRequest, ApprovalStatus
from contractspec.agent.tools import RiskLevel
from contractspec.core import (
    ApprovalRequiredError,
    CallContext,
    ConflictError,
    Executor,
    HandlerCtx,
    NotFoundError,
    SpecLike,
    SpecRegistry,
    define_command,
    define_entity,
    requires,
)

__all__ = [
    "CONTENT_SPECS",
    "ContentPublisher",
    "Publication",
    "PublishContent",
    "default_channel",
    "publication_entity",
    "publish_content",
    "register_content_operations",
]

#: The approval action and the operation name.
PUBLISH_ACTION: Final = "content.publish"
_CHANNELS: Final = {
    "blog_post": "blog",
    "landing_page": "web",
    "email": "email",
    "social_posts": "social",
}


def default_channel(kind: str) -> str:
    """`blog`, `web`, `email` or `social` for the kinds, in that order."""
    return _CHANNELS.get(kind, kind)


class PublishContent(BaseModel):
    """Input of `content.publish`: the approved arguments plus the approval id."""

    brief: ContentBrief
    kind: ContentKind
    draft: dict[str, Any]
    channel: Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[a-z0-9_.-]+$")]
    approval_id: Annotated[str, Field(min_length=1, max_length=200)]


class Publication(BaseModel):
    """A published piece (stored as `content.publication`, returned by `content.publish`).

    Attributes:
        id: Publication id.
        brief_id, kind, channel: What it is and where it went.
        title: Title or subject (empty for social posts).
        draft_id: Content-addressed id of the draft.
        approval_id: The approval it was published under.
        content_hash: SHA-256 hex of the published Markdown.
        markdown: The published page.
    """

    id: str
    brief_id: str
    kind: str
    channel: str
    title: str
    draft_id: str
    approval_id: str
    content_hash: str
    markdown: str


publication_entity = define_entity(
    "content.publication",
    Publication,
    indexes=["brief_id", "approval_id"],
    description="Published content: what went out, where, under which approval.",
)
publish_content = define_command(
    PUBLISH_ACTION,
    input=PublishContent,
    output=Publication,
    auth=requires("content.publish"),
    emits=[content_published],
    idempotent=True,
    errors=[
        ApprovalRequiredError,
        ApprovalDecisionError,
        ApprovalExpiredError,
        ApprovalMismatchError,
        ContentRefusedError,
        NotFoundError,
    ],
    description=(
        "Publish a draft under its approval: refused unless the approval is granted for exactly "
        "these arguments and the draft passes its brief's guardrails."
    ),
)

#: Specs to register (`register_content_operations` does it and binds the handler).
CONTENT_SPECS: Final[tuple[SpecLike, ...]] = (publication_entity, publish_content, *CONTENT_EVENTS)


def _arguments(
    brief: ContentBrief, kind: str, draft: Mapping[str, Any], channel: str
) -> dict[str, Any]:
    return {
        "brief": brief.model_dump(mode="json"),
        "kind": kind,
        "draft": dict(draft),
        "channel": channel,
    }


def register_content_operations(registry: SpecRegistry, approvals: ApprovalWorkflow) -> None:
    """Register `CONTENT_SPECS` in `registry` and bind the `content.publish` handler.

    A SQL backend builds its tables from the registry it is given: register `CONTENT_SPECS`
    before building it (`SpecRegistry(*CONTENT_SPECS)`), then call this once the approval
    workflow exists (registering the same specs again is a no-op).

    Args:
        registry: Your `SpecRegistry` (the executor's).
        approvals: The `ApprovalWorkflow` whose store holds the publish approvals (on the same
            backend as the executor: the approval is read in the call's transaction).
    """
    registry.register(*CONTENT_SPECS)

    @registry.handler(publish_content)
    async def publish(inp: PublishContent, ctx: HandlerCtx) -> Publication:
        req = await approvals.get(inp.approval_id, tx=ctx.tx)
        if req.action != PUBLISH_ACTION or req.org_id != ctx.org_id:
            raise ApprovalMismatchError(
                f"approval {inp.approval_id!r} is not a content.publish approval of this org",
                reason="approval for another action or org",
                action=PUBLISH_ACTION,
                details={"field": "approval_id", "approval_id": inp.approval_id},
            )
        draft_json = dict(inp.draft)
        await approvals.verify(req, _arguments(inp.brief, inp.kind, draft_json, inp.channel))
        draft = draft_from_dict(inp.kind, draft_json)
        report = check_guardrails(draft, inp.brief)
        if not report.passed:
            raise ContentRefusedError(
                f"the approved {inp.kind} breaks its brief's guardrails "
                f"({', '.join(report.failed)}); it cannot be published",
                reason=f"failed: {', '.join(report.failed)}",
                action=PUBLISH_ACTION,
                details={"field": "draft", "failed": list(report.failed)},
            )
        markdown = draft.markdown()
        pub = Publication(
            id=ctx.new_id(),
            brief_id=inp.brief.id,
            kind=inp.kind,
            channel=inp.channel,
            title=draft.title_text,
            draft_id=draft_id_for(inp.kind, inp.brief.id, draft),
            approval_id=req.id,
            content_hash=hashlib.sha256(markdown.encode()).hexdigest(),
            markdown=markdown,
        )
        await ctx.repo(publication_entity).add(pub)
        ctx.emit(
            content_published,
            {
                "publication_id": pub.id,
                "brief_id": pub.brief_id,
                "kind": pub.kind,
                "channel": pub.channel,
                "draft_id": pub.draft_id,
                "approval_id": pub.approval_id,
                "content_hash": pub.content_hash,
            },
        )
        ctx.set_audit_target("content.publication", pub.id)
        return pub


class ContentPublisher:
    """Ask a person to approve a draft, then publish it through the executor.

    Args:
        executor: Runs `content.publish` (its registry went through
            `register_content_operations`).
        approvals: The same `ApprovalWorkflow` the handler was registered with.
        approval_ttl_s: Seconds a publish approval stays open (`None`: the workflow's default).
    """

    def __init__(
        self,
        executor: Executor,
        approvals: ApprovalWorkflow,
        *,
        approval_ttl_s: float | None = None,
    ) -> None:
        self.executor = executor
        self.approvals = approvals
        self.approval_ttl_s = approval_ttl_s

    async def request_approval(
        self,
        generated: GeneratedDraft,
        ctx: CallContext,
        *,
        channel: str | None = None,
        reason: str | None = None,
        approvers: Iterable[str] = (),
        quorum: int = 1,
    ) -> ApprovalRequest:
        """Open (or find) the L2 approval request for publishing `generated` on `channel`.

        The request holds the exact arguments `content.publish` will get (brief, kind, draft,
        channel); its metadata holds the guardrail proof, the SEO report, the title and the
        page as Markdown for the reviewer. The same draft on the same channel gets the same
        request (key `content.publish:<draft id>:<channel>`): pending, approved or rejected (a
        rejected draft must change to be asked again). After an expiry a new request is opened.

        Raises:
            ContentRefusedError: The draft does not pass its guardrails (proven again here).
            SpecValidationError: Bad quorum, approvers or reason (from the workflow).
            ApprovalUnavailableError: The approval store is unavailable.
        """
        report = check_guardrails(generated.draft, generated.brief)
        if not report.passed:
            raise ContentRefusedError(
                f"the {generated.kind} draft breaks its brief's guardrails "
                f"({', '.join(report.failed)}); it cannot be sent for approval",
                reason=f"failed: {', '.join(report.failed)}",
                action=PUBLISH_ACTION,
                details={"field": "draft", "failed": list(report.failed)},
            )
        where = channel or default_channel(generated.kind)
        draft_id = generated.draft_id
        arguments = _arguments(
            generated.brief, generated.kind, generated.draft.model_dump(mode="json"), where
        )
        return await self.approvals.request(
            action=PUBLISH_ACTION,
            arguments=arguments,
            requested_by=ctx.actor,
            reason=reason
            or f"publish the {generated.kind.replace('_', ' ')} for brief {generated.brief.id} "
            f"on {where}",
            risk=int(RiskLevel.L2),
            org_id=ctx.org_id,
            subject_type="content.draft",
            subject_id=draft_id,
            key=await self._key(f"{PUBLISH_ACTION}:{draft_id}:{where}", ctx.org_id),
            expires_in_s=self.approval_ttl_s,
            quorum=quorum,
            approvers=approvers,
            metadata={
                "title": generated.draft.title_text,
                "markdown": generated.draft.markdown(),
                "guardrails": report.to_dict(),
                "seo": generated.seo.to_dict(),
                "run_ids": list(generated.run_ids),
            },
        )

    async def _key(self, base: str, org_id: str | None) -> str:
        """`base`, or, once the request under it expired, `base:after:<expired request id>`
        (the same draft may be sent again after an expiry; a rejection stays final)."""
        key = base
        for _ in range(1000):
            existing = await self.approvals.get_by_key(org_id, key)
            if existing is None or self.approvals.status_of(existing) is not ApprovalStatus.EXPIRED:
                return key
            key = f"{base}:after:{existing.id}"
        raise ConflictError(  # pragma: no cover - a thousand expiries of one draft
            f"approval key {base!r} expired too often; change the draft or the channel",
            details={"field": "key"},
        )

    async def publish(self, approval_id: str, ctx: CallContext) -> Publication:
        """Publish the draft of an approved request (exactly once: repeating the call returns
        the same `Publication` and emits nothing more).

        Args:
            approval_id: The approval request.
            ctx: Who publishes (needs the `content.publish` permission), in the request's org.

        Raises:
            ApprovalRequiredError: The request is still pending.
            ApprovalDecisionError: It was rejected (`ApprovalExpiredError`: it expired).
            ApprovalMismatchError: It approved other arguments, another action or another org.
            ContentRefusedError: The draft fails its guardrails.
            NotFoundError: No such request.
            PolicyDeniedError: The caller may not publish.
        """
        req = await self.approvals.get(approval_id)
        if req.action != PUBLISH_ACTION:
            raise ApprovalMismatchError(
                f"approval {approval_id!r} is for {req.action!r}, not {PUBLISH_ACTION!r}",
                reason="approval for another action",
                action=PUBLISH_ACTION,
                details={"field": "approval_id", "approval_id": approval_id},
            )
        payload = {**req.arguments, "approval_id": approval_id}
        call = ctx.replace(idempotency_key=f"{PUBLISH_ACTION}:{approval_id}")
        out = await self.executor.execute(PUBLISH_ACTION, payload, call)
        assert isinstance(out, Publication)
        return out
