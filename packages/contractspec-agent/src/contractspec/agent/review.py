"""Review queues as spec operations: pending approvals, agent runs and shadow reports.

`register_review_operations(registry, approvals=..., runner=...)` adds queries and commands to
*your* `SpecRegistry`; your `Executor` runs them with your policy, tenant checks, audit, outbox
and traffic recording, and your HTTP adapter serves them like any other operation.

| operation | kind | permission | effect (public API) | event |
|---|---|---|---|---|
| `agent.review.approvals.list` | query | `agent.review.read` | | |
| `agent.review.approvals.show` | query | `agent.review.read` | | |
| `agent.review.approvals.approve` | command | `agent.review.act` | `ApprovalWorkflow.approve` | `agent.review.approvals.approved` |
| `agent.review.approvals.reject` | command | `agent.review.act` | `ApprovalWorkflow.reject` | `agent.review.approvals.rejected` |
| `agent.review.runs.list` | query | `agent.review.read` | | |
| `agent.review.runs.show` | query | `agent.review.read` | | |
| `agent.review.runs.cancel` | command | `agent.review.act` | `AgentRunner.cancel` | `agent.review.runs.cancelled` |
| `agent.review.shadow.show` | query | `agent.review.read` | `shadow_report` | |

Every operation is scoped to the caller's tenant (`ctx.org_id`): an approval or run of another
org is reported as not found. Approve and reject also check the workflow's permission
(`approval.decide` by default) with the executor's policy, so a denial is audited once; the
workflow then applies its own policy and rules (no self-approval, named approvers, quorum), and a
refusal of *who* decides by those (`is_refusal_denial`) is audited once too, as `denied`
(`HandlerCtx.deny`), while the caller sees the workflow's own error. Reads and actions use the executor's transaction (`ctx.tx`), so the
stores must live on the executor's backend (the same `SqlBackend`, or memory stores with a
`MemoryBackend`); an action's effect, its review event and its audit record commit together.
Deciding an approval also needs the workflow's own permission (`approval.decide` by default).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from attrs import define
from pydantic import BaseModel, Field, field_validator

from contractspec.agent.approvals import ApprovalWorkflow, is_refusal_denial
from contractspec.agent.gateway import shadow_report
from contractspec.agent.runner import AgentRunner
from contractspec.agent.stores import ApprovalRequest, ApprovalStatus, Run, RunStatus
from contractspec.core import (
    PII,
    ConfigurationError,
    ContractSpecError,
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

__all__ = [
    "ACT_PERMISSION",
    "READ_PERMISSION",
    "ApprovalDecisionItem",
    "ApprovalDecisionRequest",
    "ApprovalItem",
    "ApprovalList",
    "ApprovalListRequest",
    "ApprovalRef",
    "ApprovalReviewed",
    "ReviewOperations",
    "RunActionItem",
    "RunCancelRequest",
    "RunCancelledByReviewer",
    "RunDetail",
    "RunItem",
    "RunList",
    "RunListRequest",
    "RunLogItem",
    "RunRef",
    "RunStepItem",
    "RunToolCall",
    "ShadowDecision",
    "ShadowReportOut",
    "ShadowReportRequest",
    "register_review_operations",
]

#: Permission of the list/show queries (`RolePermissions({"reviewer": ["agent.review.*"]})`).
READ_PERMISSION = "agent.review.read"
#: Permission of the approve/reject/cancel commands.
ACT_PERMISSION = "agent.review.act"

_MAX_LIMIT = 200


# -- cursors ----------------------------------------------------------------------------------


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


class _Page(BaseModel):
    limit: Annotated[int, Field(ge=1, le=_MAX_LIMIT, description="Items per page (1-200).")] = 50
    cursor: Annotated[
        str | None, Field(max_length=500, description="`next_cursor` of the previous page.")
    ] = None

    @field_validator("cursor")
    @classmethod
    def _check_cursor(cls, value: str | None) -> str | None:
        if value is not None:
            _decode_cursor(value)
        return value


# -- approvals --------------------------------------------------------------------------------


class ApprovalListRequest(_Page):
    """Input of `agent.review.approvals.list`: newest request first."""

    status: Literal["pending", "approved", "rejected", "expired"] | None = Field(
        "pending", description="Only requests in this state (`None`: every state)."
    )
    subject_type: str | None = Field(
        None, max_length=200, description="Only this subject type (`agent.tool_call`, ...)."
    )


class ApprovalRef(BaseModel):
    """Input of `agent.review.approvals.show`."""

    approval_id: Annotated[str, Field(min_length=1, max_length=200)]


class ApprovalDecisionRequest(ApprovalRef):
    """Input of `agent.review.approvals.approve` and `.reject`."""

    comment: Annotated[str, Field(max_length=2000, description="The reviewer's reason.")] = ""


class ApprovalDecisionItem(BaseModel):
    """One approver's verdict."""

    approver_id: str
    verdict: str
    comment: str
    decided_at: datetime


class ApprovalItem(BaseModel):
    """A request for a human decision on an exact action.

    `arguments` are the exact arguments the decision binds to and `arguments_hash` their SHA-256
    (canonical JSON); `status` is `expired` for a pending request past `expires_at`.
    `arguments` and `metadata` are personal data for traffic recording (redacted there).
    """

    id: str
    subject_type: str
    subject_id: str | None
    action: str
    arguments: Annotated[dict[str, Any], PII]
    arguments_hash: str
    reason: str
    risk: int
    requested_by: str
    requested_at: datetime
    expires_at: datetime
    quorum: int
    approvals: int
    approvers: list[str]
    status: str
    decisions: list[ApprovalDecisionItem]
    decided_at: datetime | None
    run_id: str | None
    metadata: Annotated[dict[str, Any], PII]


class ApprovalList(BaseModel):
    """A page of approval requests, newest first."""

    items: list[ApprovalItem]
    next_cursor: str | None


class ApprovalReviewed(BaseModel):
    """Payload of `agent.review.approvals.approved` / `.rejected`."""

    approval_id: str
    verdict: str
    status: str
    actor_id: str | None
    arguments_hash: str


# -- runs -------------------------------------------------------------------------------------


class RunListRequest(_Page):
    """Input of `agent.review.runs.list`: newest run first."""

    status: RunStatus | None = Field(None, description="Only runs in this state.")
    agent: str | None = Field(None, max_length=200, description="Only runs of this agent.")


class RunRef(BaseModel):
    """Input of `agent.review.runs.show`."""

    run_id: Annotated[str, Field(min_length=1, max_length=200)]


class RunCancelRequest(RunRef):
    """Input of `agent.review.runs.cancel`."""

    reason: Annotated[str, Field(max_length=2000)] = ""


class RunItem(BaseModel):
    """An agent run as a reviewer sees it in a list (`input` is personal data)."""

    id: str
    agent: str
    agent_version: int
    status: RunStatus
    input: Annotated[str, PII]
    steps: int
    created_at: datetime
    updated_at: datetime
    session_id: str | None
    error: dict[str, Any] | None
    confidence: float | None
    usage: dict[str, Any]
    waiting_for: list[str] = Field(description="Approval ids the run waits for.")
    lease_owner: str | None
    lease_expires_at: datetime | None


class RunToolCall(BaseModel):
    """One tool call of a step and its result (`content` is personal data)."""

    tool_call_id: str | None
    name: str | None
    status: str | None
    action_id: str | None
    is_error: bool | None
    content: Annotated[Any, PII] = None
    risk: int | None = Field(
        default=None,
        description="Effective risk level (0-3) the gateway applied; None when the call never "
        "reached a decision or the step was stored before risk was recorded.",
    )


class RunStepItem(BaseModel):
    """One model step: the model's reply and its tool calls (`response` is personal data)."""

    index: int
    response: Annotated[dict[str, Any], PII]
    tool_calls: list[RunToolCall]
    usage: dict[str, Any]
    started_at: datetime
    finished_at: datetime


class RunActionItem(BaseModel):
    """A side-effecting tool call in the idempotency ledger (`result` is personal data)."""

    action_id: str
    step: int
    tool: str
    status: str
    arguments_hash: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    result: Annotated[Any, PII] = None


class RunLogItem(BaseModel):
    """One log line of the run."""

    seq: int
    at: datetime
    level: str
    event: str
    message: str


class RunDetail(RunItem):
    """A run with its output, steps, tool calls (ledger) and log (`output` is personal data)."""

    output: Annotated[Any, PII] = None
    step_details: list[RunStepItem]
    actions: list[RunActionItem]
    logs: list[RunLogItem]


class RunList(BaseModel):
    """A page of runs, newest first."""

    items: list[RunItem]
    next_cursor: str | None


class RunCancelledByReviewer(BaseModel):
    """Payload of `agent.review.runs.cancelled`."""

    run_id: str
    agent: str
    previous_status: str
    actor_id: str | None


# -- shadow -----------------------------------------------------------------------------------


class ShadowReportRequest(RunRef):
    """Input of `agent.review.shadow.show`: a run's shadow decisions compared with what people
    did (`actual`: subject -> `execute`, `blocked` or `needs_approval`)."""

    actual: dict[str, Literal["execute", "blocked", "needs_approval"]] = Field(
        default_factory=dict, max_length=10_000
    )
    subject: Annotated[str, Field(pattern=r"^(action_id|arguments\.[A-Za-z_][\w.]*)$")] = (
        "action_id"
    )


class ShadowDecision(BaseModel):
    """One call the agent made in shadow mode: what it would have done."""

    action_id: str | None
    step: int
    tool: str
    would: str | None
    reason: str
    arguments_hash: str
    arguments: Annotated[dict[str, Any], PII]


class ShadowReportOut(BaseModel):
    """Output of `agent.review.shadow.show` (see `contractspec.agent.shadow_report`)."""

    run_id: str
    decisions: list[ShadowDecision]
    total: int
    agreed: int
    agreement_rate: float | None = Field(description="agreed / total, a fraction (0-1).")
    disagreements: list[dict[str, Any]]
    unmatched: list[str]
    by_decision: dict[str, int]


# -- specs ------------------------------------------------------------------------------------

approval_reviewed_approved = define_event(
    "agent.review.approvals.approved", payload=ApprovalReviewed, key="approval_id"
)
approval_reviewed_rejected = define_event(
    "agent.review.approvals.rejected", payload=ApprovalReviewed, key="approval_id"
)
run_cancelled_by_reviewer = define_event(
    "agent.review.runs.cancelled",
    payload=RunCancelledByReviewer,
    key="run_id",
    severity="warning",
)

list_approvals = define_query(
    "agent.review.approvals.list",
    input=ApprovalListRequest,
    output=ApprovalList,
    auth=requires(READ_PERMISSION),
    description="Approval requests of the caller's org, newest first.",
)
show_approval = define_query(
    "agent.review.approvals.show",
    input=ApprovalRef,
    output=ApprovalItem,
    auth=requires(READ_PERMISSION),
    errors=[NotFoundError],
    description="One approval request with the exact arguments, their hash and the decisions.",
)
approve_approval = define_command(
    "agent.review.approvals.approve",
    input=ApprovalDecisionRequest,
    output=ApprovalItem,
    auth=requires(ACT_PERMISSION),
    emits=[approval_reviewed_approved],
    idempotent=True,
    errors=[NotFoundError, "approval_decision", "approval_expired"],
    description="Approve a request as the caller (ApprovalWorkflow.approve).",
)
reject_approval = define_command(
    "agent.review.approvals.reject",
    input=ApprovalDecisionRequest,
    output=ApprovalItem,
    auth=requires(ACT_PERMISSION),
    emits=[approval_reviewed_rejected],
    idempotent=True,
    errors=[NotFoundError, "approval_decision", "approval_expired"],
    description="Reject a request as the caller (ApprovalWorkflow.reject).",
)
list_runs = define_query(
    "agent.review.runs.list",
    input=RunListRequest,
    output=RunList,
    auth=requires(READ_PERMISSION),
    description="Agent runs of the caller's org, newest first.",
)
show_run = define_query(
    "agent.review.runs.show",
    input=RunRef,
    output=RunDetail,
    auth=requires(READ_PERMISSION),
    errors=[NotFoundError],
    description="One run with its steps, tool calls and log.",
)
cancel_run = define_command(
    "agent.review.runs.cancel",
    input=RunCancelRequest,
    output=RunItem,
    auth=requires(ACT_PERMISSION),
    emits=[run_cancelled_by_reviewer],
    idempotent=True,
    errors=[NotFoundError, "conflict"],
    description="Cancel a running or waiting run (AgentRunner.cancel).",
)
show_shadow = define_query(
    "agent.review.shadow.show",
    input=ShadowReportRequest,
    output=ShadowReportOut,
    auth=requires(READ_PERMISSION),
    errors=[NotFoundError],
    description="A run's shadow decisions compared with what people did.",
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


# -- conversions ------------------------------------------------------------------------------


def _approval_item(
    workflow: ApprovalWorkflow, req: ApprovalRequest, now: datetime | None = None
) -> ApprovalItem:
    status = workflow.status_of(req, now).value  # `expired` for a pending one past expires_at
    run_id = req.metadata.get("run_id")
    return ApprovalItem(
        id=req.id,
        subject_type=req.subject_type,
        subject_id=req.subject_id,
        action=req.action,
        arguments=dict(req.arguments),
        arguments_hash=req.arguments_hash,
        reason=req.reason,
        risk=req.risk,
        requested_by=req.requested_by,
        requested_at=req.requested_at,
        expires_at=req.expires_at,
        quorum=req.quorum,
        approvals=req.approvals,
        approvers=list(req.approvers),
        status=status,
        decisions=[
            ApprovalDecisionItem(
                approver_id=d.approver_id,
                verdict=d.verdict,
                comment=d.comment,
                decided_at=d.decided_at,
            )
            for d in req.decisions
        ],
        decided_at=req.decided_at,
        run_id=run_id if isinstance(run_id, str) else None,
        metadata=dict(req.metadata),
    )


def _approval_resource(req: ApprovalRequest) -> Resource:
    return Resource(
        "approval",
        req.id,
        req.org_id,
        {"risk": req.risk, "action": req.action, "subject_type": req.subject_type},
    )


def _run_fields(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "agent": run.agent,
        "agent_version": run.agent_version,
        "status": run.status,
        "input": run.input,
        "steps": run.steps,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "session_id": run.session_id,
        "error": dict(run.error) if run.error is not None else None,
        "confidence": run.confidence,
        "usage": dict(run.usage),
        "waiting_for": [
            str(p["approval_id"]) for p in run.pending if p.get("approval_id") is not None
        ],
        "lease_owner": run.lease_owner,
        "lease_expires_at": run.lease_expires_at,
    }


def _tool_call(data: Mapping[str, Any]) -> RunToolCall:
    return RunToolCall(
        tool_call_id=data.get("tool_call_id"),
        name=data.get("name"),
        status=data.get("status"),
        action_id=data.get("action_id"),
        is_error=data.get("is_error"),
        content=data.get("content"),
        risk=data.get("risk"),
    )


# -- registration -----------------------------------------------------------------------------


def register_review_operations(
    registry: SpecRegistry,
    *,
    approvals: ApprovalWorkflow | None = None,
    runner: AgentRunner | None = None,
) -> ReviewOperations:
    """Add the agent's review-queue operations to `registry`, with handlers.

    Pass the `ApprovalWorkflow` to get the approval queue (`agent.review.approvals.*`) and the
    `AgentRunner` to get the run queue and shadow reports (`agent.review.runs.*`,
    `agent.review.shadow.show`); with only a runner, its `runner.approvals` serves the approval
    queue too. The stores must be reachable through the executor's transaction (same backend).

    Args:
        registry: Your `SpecRegistry` (run it with your own `Executor` and policy).
        approvals: The workflow whose requests are reviewed (default `runner.approvals`).
        runner: The runner whose runs are reviewed and cancelled.

    Returns:
        The `ReviewOperations` registered (operation and event specs, permissions).

    Raises:
        ConfigurationError: Neither `approvals` nor `runner` was given.
        SpecDefinitionError: The registry already holds one of these operations.

    Example:
        ```python
        review = register_review_operations(registry, runner=runner)
        policy = RolePermissions({"reviewer": ["agent.review.*", "approval.decide"]})
        ```
    """
    if approvals is None and runner is None:
        raise ConfigurationError(
            "register_review_operations() needs approvals=ApprovalWorkflow(...) and/or "
            "runner=AgentRunner(...): the queues are read from their stores",
            details={"field": "approvals"},
        )
    workflow = approvals if approvals is not None else runner.approvals if runner else None
    ops: list[OperationSpec] = []
    events: list[EventSpec] = []
    if workflow is not None:
        _register_approvals(registry, workflow)
        ops += [list_approvals, show_approval, approve_approval, reject_approval]
        events += [approval_reviewed_approved, approval_reviewed_rejected]
    if runner is not None:
        _register_runs(registry, runner)
        ops += [list_runs, show_run, cancel_run, show_shadow]
        events += [run_cancelled_by_reviewer]
    return ReviewOperations(tuple(ops), tuple(events))


def _register_approvals(registry: SpecRegistry, workflow: ApprovalWorkflow) -> None:
    store = workflow.store
    registry.register(
        approval_reviewed_approved,
        approval_reviewed_rejected,
        list_approvals,
        show_approval,
        approve_approval,
        reject_approval,
    )

    async def own(ctx: HandlerCtx, approval_id: str) -> ApprovalRequest:
        req = await store.get(ctx.tx, approval_id)
        if req is None or req.org_id != ctx.org_id:
            raise NotFoundError(
                f"approval request {approval_id!r} does not exist in this org",
                details={"approval_id": approval_id},
            )
        return req

    @registry.handler(list_approvals)
    async def listing(inp: ApprovalListRequest, ctx: HandlerCtx) -> ApprovalList:
        now = workflow.clock.now()
        status = ApprovalStatus(inp.status) if inp.status else None
        cursor = _decode_cursor(inp.cursor) if inp.cursor else None
        items: list[ApprovalItem] = []
        more = True
        while more and len(items) < inp.limit:
            want = inp.limit - len(items)
            found = await store.find(
                ctx.tx, org_id=ctx.org_id, status=status, subject_type=inp.subject_type,
                limit=want + 1, newest_first=True, before=cursor,
            )  # fmt: skip
            more = len(found) > want
            for req in found[:want]:
                cursor = (req.requested_at, req.id)
                item = _approval_item(workflow, req, now)
                # A pending request past its expiry is no longer actionable: it is expired.
                if status is not ApprovalStatus.PENDING or item.status == "pending":
                    items.append(item)
        return ApprovalList(
            items=items,
            next_cursor=_encode_cursor(*cursor) if more and cursor is not None else None,
        )

    @registry.handler(show_approval)
    async def show(inp: ApprovalRef, ctx: HandlerCtx) -> ApprovalItem:
        return _approval_item(workflow, await own(ctx, inp.approval_id))

    async def decide(inp: ApprovalDecisionRequest, ctx: HandlerCtx, verdict: str) -> ApprovalItem:
        found = await own(ctx, inp.approval_id)
        ctx.set_audit_target("approval", inp.approval_id)
        # The workflow's permission, checked by the executor's policy first so that a denial is
        # audited exactly once by the pipeline (the joined workflow does not audit denials).
        await ctx.authorize(workflow.permission, _approval_resource(found))
        act = workflow.approve if verdict == "approve" else workflow.reject
        try:
            req = await act(
                inp.approval_id, ctx.actor, comment=inp.comment, ctx=ctx.call, tx=ctx.tx
            )
        except ContractSpecError as exc:
            if is_refusal_denial(exc):
                # The joined workflow leaves auditing its own refusals (self-approval, not a
                # named approver, its policy) to us: one `denied` record, written when the call
                # ends; the caller still sees the workflow's error.
                refusal = str(exc.details.get("refusal"))
                ctx.deny(f"approval.{verdict}", exc.message, rule=refusal)
            raise
        spec = approval_reviewed_approved if verdict == "approve" else approval_reviewed_rejected
        ctx.emit(
            spec,
            ApprovalReviewed(
                approval_id=req.id,
                verdict=verdict,
                status=req.status.value,
                actor_id=ctx.actor.id,
                arguments_hash=req.arguments_hash,
            ),
        )
        return _approval_item(workflow, req)

    @registry.handler(approve_approval)
    async def approve(inp: ApprovalDecisionRequest, ctx: HandlerCtx) -> ApprovalItem:
        return await decide(inp, ctx, "approve")

    @registry.handler(reject_approval)
    async def reject(inp: ApprovalDecisionRequest, ctx: HandlerCtx) -> ApprovalItem:
        return await decide(inp, ctx, "reject")


def _register_runs(registry: SpecRegistry, runner: AgentRunner) -> None:
    runs = runner.runs
    registry.register(run_cancelled_by_reviewer, list_runs, show_run, cancel_run, show_shadow)

    async def own(ctx: HandlerCtx, run_id: str) -> Run:
        run = await runs.get(ctx.tx, run_id)
        if run is None or run.org_id != ctx.org_id:
            raise NotFoundError(
                f"run {run_id!r} does not exist in this org", details={"run_id": run_id}
            )
        return run

    @registry.handler(list_runs)
    async def listing(inp: RunListRequest, ctx: HandlerCtx) -> RunList:
        before = _decode_cursor(inp.cursor) if inp.cursor else None
        found = await runs.find(
            ctx.tx, org_id=ctx.org_id, agent=inp.agent, status=inp.status,
            limit=inp.limit + 1, before=before,
        )  # fmt: skip
        page = found[: inp.limit]
        more = len(found) > inp.limit
        return RunList(
            items=[RunItem(**_run_fields(r)) for r in page],
            next_cursor=_encode_cursor(page[-1].created_at, page[-1].id) if more else None,
        )

    @registry.handler(show_run)
    async def show(inp: RunRef, ctx: HandlerCtx) -> RunDetail:
        run = await own(ctx, inp.run_id)
        steps = await runs.steps(ctx.tx, run.id)
        actions = await runs.actions(ctx.tx, run.id)
        logs = await runs.logs(ctx.tx, run.id)
        return RunDetail(
            **_run_fields(run),
            output=run.output,
            step_details=[
                RunStepItem(
                    index=s.index,
                    response=dict(s.response),
                    tool_calls=[_tool_call(r) for r in s.tool_results],
                    usage=dict(s.usage),
                    started_at=s.started_at,
                    finished_at=s.finished_at,
                )
                for s in steps
            ],
            actions=[
                RunActionItem(
                    action_id=a.action_id,
                    step=a.step,
                    tool=a.tool,
                    status=a.status.value,
                    arguments_hash=a.arguments_hash,
                    attempts=a.attempts,
                    created_at=a.created_at,
                    updated_at=a.updated_at,
                    result=a.result,
                )
                for a in actions
            ],
            logs=[
                RunLogItem(seq=g.seq, at=g.at, level=g.level, event=g.event, message=g.message)
                for g in logs
            ],
        )

    @registry.handler(cancel_run)
    async def cancel(inp: RunCancelRequest, ctx: HandlerCtx) -> RunItem:
        run = await own(ctx, inp.run_id)
        ctx.set_audit_target("agent_run", run.id)
        saved = await runner.cancel(run.id, actor=ctx.actor, reason=inp.reason, tx=ctx.tx)
        if run.status is not RunStatus.CANCELLED:
            ctx.emit(
                run_cancelled_by_reviewer,
                RunCancelledByReviewer(
                    run_id=run.id,
                    agent=run.agent,
                    previous_status=run.status.value,
                    actor_id=ctx.actor.id,
                ),
            )
        return RunItem(**_run_fields(saved))

    @registry.handler(show_shadow)
    async def shadow(inp: ShadowReportRequest, ctx: HandlerCtx) -> ShadowReportOut:
        run = await own(ctx, inp.run_id)
        packets = [
            dict(line.data["packet"])
            for line in await runs.logs(ctx.tx, run.id)
            if isinstance(line.data.get("packet"), Mapping)
        ]
        shadowed = [p for p in packets if p.get("mode") == "shadow"]
        report = shadow_report(shadowed, inp.actual, subject=inp.subject)
        return ShadowReportOut(
            run_id=run.id,
            decisions=[
                ShadowDecision(
                    action_id=p.get("action_id"),
                    step=int(p.get("step", 0)),
                    tool=str(p.get("tool")),
                    would=p.get("would"),
                    reason=str(p.get("reason", "")),
                    arguments_hash=str(p.get("arguments_hash", "")),
                    arguments=dict(p.get("arguments") or {}),
                )
                for p in shadowed
            ],
            total=report.total,
            agreed=report.agreed,
            agreement_rate=report.agreement_rate,
            disagreements=[dict(d) for d in report.disagreements],
            unmatched=list(report.unmatched),
            by_decision=dict(report.by_decision),
        )
