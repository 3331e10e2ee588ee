"""`create_support_tools()`: the support toolkit as agent tools, for any agent.

Every tool acts in the tenant of the run's `CallContext` (`ctx.call.org_id`), never one named in
its arguments, so a model cannot reach another tenant's knowledge. Calls go through the
`ToolGateway` like any tool: validation, invariants, risk levels, approvals, audit.

| tool | risk | what it does |
|---|---|---|
| `search_knowledge_base` | L0 | BM25 search; results carry `source_id`s to cite |
| `classify_ticket` | L0 | category, priority, sentiment, language (heuristics only) |
| `send_reply` | L1 | sends a reply; invariants `reply_policy` and `refund_limit` block any that breaks the `ResponsePolicy` |
| `escalate_ticket` | L1 | hands a ticket to a person |
| `record_ticket_outcome` | L1 | feeds the `SupportFeedbackLoop` |
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from contractspec.agent.invariants import Invariant
from contractspec.agent.support.classifier import TicketClassifier
from contractspec.agent.support.feedback import SupportFeedbackLoop
from contractspec.agent.support.knowledge import DEFAULT_SPACE, KnowledgeBase
from contractspec.agent.support.models import SupportFeedback
from contractspec.agent.support.responder import ResponsePolicy
from contractspec.agent.tools import RiskLevel, Tool, ToolContext, tool
from contractspec.core import ConfigurationError

__all__ = ["EscalateFunction", "SendFunction", "create_support_tools"]

#: `(ticket_id, body, org_id) -> anything` (may be async): delivers a reply to the customer.
SendFunction = Callable[[str, str, str | None], Awaitable[Any] | Any]
#: `(ticket_id, reason, org_id) -> anything` (may be async): hands a ticket to a person.
EscalateFunction = Callable[[str, str, str | None], Awaitable[Any] | Any]


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def create_support_tools(
    knowledge: KnowledgeBase,
    *,
    space: str = DEFAULT_SPACE,
    classifier: TicketClassifier | None = None,
    policy: ResponsePolicy | None = None,
    send: SendFunction | None = None,
    escalate: EscalateFunction | None = None,
    feedback: SupportFeedbackLoop | None = None,
    max_results: int = 5,
) -> list[Tool]:
    """Tools that give an agent the support toolkit.

    Args:
        knowledge: Searched by `search_knowledge_base` (in the run's tenant).
        space: The knowledge space searched.
        classifier: Enables `classify_ticket` (its heuristics: no nested model call).
        policy: Checked by `send_reply`'s invariants (default: no rules).
        send: Enables `send_reply`: delivers the reply.
        escalate: Enables `escalate_ticket`: hands the ticket to a person.
        feedback: Enables `record_ticket_outcome`.
        max_results: The most results one search returns (default 5).

    Returns:
        The tools, in the order of the table in the module docs (those enabled).

    Raises:
        ConfigurationError: `max_results` below 1.
    """
    if isinstance(max_results, bool) or not isinstance(max_results, int) or max_results < 1:
        raise ConfigurationError(
            f"create_support_tools: max_results must be a positive integer, got {max_results!r}",
            details={"field": "max_results"},
        )
    rules = policy or ResponsePolicy()
    tools: list[Tool] = []

    @tool(risk=RiskLevel.L0, name="search_knowledge_base")
    async def search_knowledge_base(
        query: str, ctx: ToolContext, limit: int = 3
    ) -> list[dict[str, Any]]:
        """Search the help-centre knowledge base; cite results by their source_id."""
        hits = await knowledge.search(
            query, org_id=ctx.call.org_id, space=space, limit=max(1, min(limit, max_results))
        )
        return [
            {
                "source_id": h.document.id,
                "title": h.document.title,
                "text": h.document.text,
                "url": h.document.url,
                "score": round(h.score, 6),
            }
            for h in hits
        ]

    tools.append(search_knowledge_base)

    if classifier is not None:
        clf = classifier

        @tool(risk=RiskLevel.L0, name="classify_ticket")
        async def classify_ticket(text: str) -> dict[str, Any]:
            """Classify a support ticket: category, priority, sentiment, language, confidence."""
            c = clf.heuristics(text)
            return {
                "category": c.category,
                "priority": c.priority,
                "sentiment": c.sentiment,
                "language": c.language,
                "confidence": c.confidence,
            }

        tools.append(classify_ticket)

    if send is not None:
        deliver = send

        def reply_evidence(args: BaseModel, ctx: ToolContext) -> dict[str, Any]:
            body = str(getattr(args, "body", ""))
            promised = rules.refund_promised(body)
            return {
                "policy_violations": len(rules.check(body)),
                "refund_amount_known": promised is not None,
                "refund_promised": 0.0 if promised is None else float(promised),
            }

        invariants = [
            Invariant(
                "reply_policy",
                "policy_violations == 0",
                "the reply breaks no ResponsePolicy rule (refund limit, banned claims, length)",
            )
        ]
        if rules.refund_limit is not None:
            invariants += [
                Invariant(
                    "refund_limit",
                    f"refund_promised <= {rules.refund_limit}",
                    f"a reply may not promise a refund above {rules.refund_limit}",
                ),
                Invariant(
                    "refund_amount_known",
                    "refund_amount_known == true",
                    "a reply may not promise a full refund of an unknown amount",
                ),
            ]

        @tool(
            risk=RiskLevel.L1,
            name="send_reply",
            invariants=invariants,
            evidence=reply_evidence,
        )
        async def send_reply(ticket_id: str, body: str, ctx: ToolContext) -> dict[str, Any]:
            """Send a reply to the customer of a ticket (checked against the reply policy)."""
            await _call(deliver, ticket_id, body, ctx.call.org_id)
            return {"ticket_id": ticket_id, "sent": True}

        tools.append(send_reply)

    if escalate is not None:
        hand_over = escalate

        @tool(risk=RiskLevel.L1, name="escalate_ticket")
        async def escalate_ticket(ticket_id: str, reason: str, ctx: ToolContext) -> dict[str, Any]:
            """Hand a ticket to a person, saying why."""
            await _call(hand_over, ticket_id, reason, ctx.call.org_id)
            return {"ticket_id": ticket_id, "escalated": True}

        tools.append(escalate_ticket)

    if feedback is not None:
        loop = feedback

        @tool(risk=RiskLevel.L1, name="record_ticket_outcome")
        async def record_ticket_outcome(
            ticket_id: str,
            category: str,
            resolved: bool,
            ctx: ToolContext,
            cited: list[str] | None = None,
            escalated: bool = False,
            csat: int | None = None,
        ) -> dict[str, Any]:
            """Record how a ticket ended (resolved, escalated, cited sources, CSAT 1-5)."""
            await loop.record(
                SupportFeedback(
                    ticket_id=ticket_id,
                    category=category,
                    resolved=resolved,
                    escalated=escalated,
                    csat=csat,
                    cited=tuple(cited) if cited else (),
                    org_id=ctx.call.org_id,
                )
            )
            return {"ticket_id": ticket_id, "recorded": True}

        tools.append(record_ticket_outcome)

    return tools
