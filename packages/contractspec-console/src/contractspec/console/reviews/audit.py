"""The audit log section: an org's hash-chained audit records, paginated, with the chain's
verification status (`contractspec.core.audit`: `verify`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, cast

from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contractspec.console.sections import ConsoleHost
from contractspec.core import (
    PII,
    ConfigurationError,
    ContractSpecError,
    HandlerCtx,
    SpecRegistry,
    define_query,
    requires,
)
from contractspec.core.audit import AuditEntry, MemoryAuditLog, VerifiableAuditLog
from contractspec.core.errors import NotFoundError

__all__ = [
    "AuditLog",
    "AuditPage",
    "AuditPageInput",
    "AuditRow",
    "ChainStatus",
    "register_audit_queries",
]

LIST_OPERATION = "console.audit.list"
VERIFY_OPERATION = "console.audit.verify"


class AuditPageInput(BaseModel):
    """Input of `console.audit.list`: entries after chain position `after_seq`, oldest first."""

    after_seq: int = Field(0, ge=0, description="`next_after` of the previous page (0: first).")
    limit: int = Field(50, ge=1, le=200, description="Entries per page (1-200).")


class AuditRow(BaseModel):
    """One audit-chain entry as the console shows it (`details` is personal data)."""

    seq: int
    id: str
    occurred_at: datetime
    action: str
    outcome: str
    actor_id: str | None
    actor_kind: str | None
    target_type: str | None
    target_id: str | None
    request_id: str | None
    details: Annotated[dict[str, Any], PII]
    hash: str
    prev_hash: str | None


class AuditPage(BaseModel):
    """A page of the caller's org's chain, oldest first."""

    items: list[AuditRow]
    next_after: int | None = Field(description="Pass back as `after_seq`; `None` on the last page.")


class ChainStatus(BaseModel):
    """Output of `console.audit.verify` (see `contractspec.core.audit.VerifyResult`)."""

    ok: bool
    checked: int = Field(description="Entries checked.")
    first_bad_seq: int | None
    reason: str | None


class _Empty(BaseModel):
    pass


def _row(entry: AuditEntry) -> AuditRow:
    r = entry.record
    return AuditRow(
        seq=entry.seq,
        id=r.id,
        occurred_at=r.occurred_at,
        action=r.action,
        outcome=str(getattr(r.outcome, "value", r.outcome)),
        actor_id=r.actor_id,
        actor_kind=r.actor_kind,
        target_type=r.target_type,
        target_id=r.target_id,
        request_id=r.request_id,
        details=dict(r.details or {}),
        hash=entry.hash,
        prev_hash=entry.prev_hash,
    )


async def _entries(
    audit: VerifiableAuditLog, org_id: str | None, after_seq: int, limit: int
) -> list[AuditEntry]:
    if isinstance(audit, MemoryAuditLog):
        return [e for e in audit.for_org(org_id) if e.seq > after_seq][:limit]
    entries: Any = cast(Any, audit).entries  # SqlAuditLog.entries(org_id, limit=, after_seq=)
    found: list[AuditEntry] = await entries(org_id, limit=limit, after_seq=after_seq)
    return found


def register_audit_queries(
    registry: SpecRegistry, audit: VerifiableAuditLog, *, permission: str = "audit.read"
) -> tuple[str, str]:
    """Register `console.audit.list` and `console.audit.verify` (both need `permission`).

    Both read only the caller's org's chain (`ctx.org_id`). Does nothing when they are
    registered already.

    Args:
        registry: The registry the console's executor runs.
        audit: The executor's audit log (`MemoryAuditLog` or `SqlAuditLog`: `backend.audit`).
        permission: What the policy must grant to read the log.

    Returns:
        The two operation names.

    Raises:
        ConfigurationError: `audit` cannot be verified or listed.
    """
    listable = isinstance(audit, MemoryAuditLog) or callable(getattr(audit, "entries", None))
    if not isinstance(audit, VerifiableAuditLog) or not listable:
        raise ConfigurationError(
            f"AuditLog needs the executor's audit log (MemoryAuditLog or SqlAuditLog, e.g. "
            f"backend.audit), got {type(audit).__name__}",
            details={"field": "audit"},
        )
    try:
        registry.get(LIST_OPERATION)
        return LIST_OPERATION, VERIFY_OPERATION
    except NotFoundError:
        pass
    listing = define_query(
        LIST_OPERATION,
        input=AuditPageInput,
        output=AuditPage,
        auth=requires(permission),
        tags=("console", "audit"),
        description="The caller's org's audit chain, oldest first.",
    )
    verifying = define_query(
        VERIFY_OPERATION,
        input=_Empty,
        output=ChainStatus,
        auth=requires(permission),
        tags=("console", "audit"),
        description="Verify the caller's org's audit chain (hashes, order, head).",
    )
    registry.register(listing, verifying)

    @registry.handler(listing)
    async def list_entries(inp: AuditPageInput, ctx: HandlerCtx) -> AuditPage:
        found = await _entries(audit, ctx.org_id, inp.after_seq, inp.limit + 1)
        page = found[: inp.limit]
        more = len(found) > inp.limit
        return AuditPage(
            items=[_row(e) for e in page], next_after=page[-1].seq if more and page else None
        )

    @registry.handler(verifying)
    async def verify(inp: _Empty, ctx: HandlerCtx) -> ChainStatus:
        result = await audit.verify(ctx.org_id)
        return ChainStatus(
            ok=result.ok,
            checked=result.checked,
            first_bad_seq=result.first_bad_seq,
            reason=result.reason,
        )

    return LIST_OPERATION, VERIFY_OPERATION


class AuditLog:
    """The caller's org's audit records, paginated by chain position, under the chain's
    verification status (intact, or where and why it breaks).

    Constructing the section registers `console.audit.list` and `console.audit.verify` (see
    `register_audit_queries`) in `registry`; build it before the executor serves calls.

    Args:
        registry: The registry the console's executor runs.
        audit: The executor's audit log (`backend.audit`).
        permission: What the policy must grant to see the log (default `audit.read`).
        key: URL segment.
        title: Navigation label.
        page_size: Entries per page (1-200).
    """

    template_dir: Path | None = None

    def __init__(
        self,
        registry: SpecRegistry,
        audit: VerifiableAuditLog,
        *,
        permission: str = "audit.read",
        key: str = "audit",
        title: str = "Audit log",
        page_size: int = 50,
    ) -> None:
        self.key = key
        self.title = title
        self.page_size = AuditPageInput(limit=page_size).limit
        self.list_operation, self.verify_operation = register_audit_queries(
            registry, audit, permission=permission
        )

    async def visible(self, console: ConsoleHost, request: Request) -> bool:
        """Shown to callers the policy lets read the log."""
        return await console.may(request, self.list_operation)

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """`/` (a page of the chain, `?after=<seq>`)."""

        async def page(request: Request) -> Response:
            return await self.page(console, request)

        return [Route("/", page, methods=["GET"])]

    async def page(self, console: ConsoleHost, request: Request) -> Response:
        """Verify the chain, then list a page of it."""
        after = request.query_params.get("after", "0")
        try:
            status = await console.execute(request, self.verify_operation, {})
            entries = await console.execute(
                request, self.list_operation, {"after_seq": after or "0", "limit": self.page_size}
            )
        except ContractSpecError as exc:
            return console.render_error(request, exc)
        return console.render(
            request,
            "reviews/audit.html",
            {"section": self, "status": status, "page": entries},
        )
