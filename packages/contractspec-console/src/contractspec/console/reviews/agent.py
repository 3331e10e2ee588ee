"""Agent review sections: the approval queue and the agent runs (contractspec-agent)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from contractspec.console.reviews._common import (
    QueueAction,
    QueueSection,
    require_package,
)
from contractspec.console.sections import ConsoleHost
from contractspec.core import ConfigurationError, ContractSpecError

__all__ = ["AgentRuns", "ApprovalsQueue", "ShadowReports"]

_AGENT = "contractspec-agent"


def _approval_extra(item: Any) -> dict[str, Any]:
    quorum = max(int(item.quorum), 1)
    return {"quorum_percent": min(100, round(100 * int(item.approvals) / quorum))}


class ApprovalsQueue(QueueSection):
    """Pending approvals: exact arguments and their hash, approve/reject with a comment, quorum.

    Runs `agent.review.approvals.{list,show,approve,reject}` (register them with
    `contractspec.agent.review.register_review_operations`). The workflow's refusals (no
    self-approval, not a named approver, expired) are shown on the request's page.

    Raises:
        ConfigurationError: contractspec-agent is not installed.
    """

    def __init__(self, *, key: str = "approvals", title: str = "Approvals") -> None:
        require_package("contractspec.agent.review", _AGENT, "ApprovalsQueue")
        prefix = "agent.review.approvals"
        super().__init__(
            key=key,
            title=title,
            list_operation=f"{prefix}.list",
            show_operation=f"{prefix}.show",
            id_field="approval_id",
            actions=(
                QueueAction("approve", f"{prefix}.approve", "Approve"),
                QueueAction("reject", f"{prefix}.reject", "Reject", danger=True),
            ),
            list_template="reviews/approvals.html",
            detail_template="reviews/approval.html",
            filters=("status", "subject_type"),
            detail_extra=_approval_extra,
        )


class AgentRuns(QueueSection):
    """Agent runs: steps, tool calls (with risk and the idempotency ledger), cost, status.

    Runs `agent.review.runs.{list,show,cancel}`. A run's page refreshes its status fragment
    (`/<run>/status`) with htmx polling every 2 s while the run is not finished.

    Args:
        key: URL segment.
        title: Navigation label.
        approvals_key: Key of the `ApprovalsQueue` section the run's "waiting for" approval ids
            link to (`None`: plain text).

    Raises:
        ConfigurationError: contractspec-agent is not installed.
    """

    def __init__(
        self,
        *,
        key: str = "runs",
        title: str = "Agent runs",
        approvals_key: str | None = "approvals",
    ) -> None:
        require_package("contractspec.agent.review", _AGENT, "AgentRuns")
        prefix = "agent.review.runs"
        super().__init__(
            key=key,
            title=title,
            list_operation=f"{prefix}.list",
            show_operation=f"{prefix}.show",
            id_field="run_id",
            actions=(
                QueueAction(
                    "cancel", f"{prefix}.cancel", "Cancel run", comment="reason", danger=True
                ),
            ),
            list_template="reviews/runs.html",
            detail_template="reviews/run.html",
            filters=("status", "agent"),
        )
        #: Key of the `ApprovalsQueue` section the "waiting for" links point to (`None`: no links).
        self.approvals_key = approvals_key

    def routes(self, console: ConsoleHost) -> Sequence[BaseRoute]:
        """The queue's routes and `/{item_id}/status` (the polled fragment)."""

        async def status(request: Request) -> Response:
            return await self.status_fragment(console, request, request.path_params["item_id"])

        base = list(super().routes(console))
        return [base[0], Route("/{item_id}/status", status, methods=["GET"]), *base[1:]]

    async def more_context(
        self, console: ConsoleHost, request: Request, item: Any
    ) -> dict[str, Any]:
        """The approvals the run waits for (action, risk level, quorum), when the caller may
        read the approval queue."""
        waiting: list[Any] = []
        show = "agent.review.approvals.show"
        if item.waiting_for and await console.may(request, show):
            for approval_id in item.waiting_for:
                try:
                    waiting.append(
                        await console.execute(request, show, {"approval_id": approval_id})
                    )
                except ContractSpecError:
                    continue  # decided and purged, or not visible to the caller
        return {"waiting": waiting}

    async def status_fragment(
        self, console: ConsoleHost, request: Request, run_id: str
    ) -> Response:
        """The run's status block alone (what the detail page polls)."""
        try:
            run = await console.execute(request, self.show_operation, {"run_id": run_id})
        except ContractSpecError as exc:
            return console.render_error(request, exc)
        return console.render(
            request, "reviews/_run_status.html", {"section": self, "item": run, "item_id": run_id}
        )


def _subject_of(decision: Any, subject: str) -> str | None:
    if subject == "action_id":
        return None if decision.action_id is None else str(decision.action_id)
    value: Any = decision.arguments
    for part in subject.removeprefix("arguments.").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value is None else str(value)


class ShadowReports(QueueSection):
    """Shadow-mode runs: what the agent would have done per tool call, compared with what
    people did (chosen per decision on the page; the comparison is a query, nothing is stored).

    Runs `agent.review.runs.list` and `agent.review.shadow.show`.

    Args:
        subject: How a decision is matched with what people did: `action_id`, or
            `arguments.<field>` (e.g. `arguments.order_id`).
        key: URL segment.
        title: Navigation label.

    Raises:
        ConfigurationError: contractspec-agent is not installed.
    """

    def __init__(
        self, *, subject: str = "action_id", key: str = "shadow", title: str = "Shadow reports"
    ) -> None:
        review = require_package("contractspec.agent.review", _AGENT, "ShadowReports")
        try:  # the operation's own input model checks the subject path
            review.ShadowReportRequest(run_id="-", subject=subject)
        except ValueError:
            raise ConfigurationError(
                f"ShadowReports(subject={subject!r}): use 'action_id' or 'arguments.<field>', "
                "e.g. 'arguments.order_id'",
                details={"field": "subject"},
            ) from None
        super().__init__(
            key=key,
            title=title,
            list_operation="agent.review.runs.list",
            show_operation="agent.review.shadow.show",
            id_field="run_id",
            actions=(),
            list_template="reviews/runs.html",
            detail_template="reviews/shadow.html",
            filters=("status", "agent"),
            detail_extra=self._subjects,
        )
        self.subject = subject

    def _subjects(self, report: Any) -> dict[str, Any]:
        return {"subjects": [_subject_of(d, self.subject) for d in report.decisions]}

    def show_input(self, request: Request, item_id: str) -> dict[str, Any]:
        """The run, the subject path, and `actual` from the query string (`did.<subject>`)."""
        actual = {
            k.removeprefix("did."): v
            for k, v in request.query_params.items()
            if k.startswith("did.") and v
        }
        return {"run_id": item_id, "subject": self.subject, "actual": actual}
