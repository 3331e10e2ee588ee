"""`TicketResolver`: retrieve → draft an answer with citations → confidence → escalate below the
threshold.

```text
resolve(ticket)
  -> KnowledgeBase.search in the ticket's tenant (category first when given, else all)
  -> nothing found: escalated (no_match)
  -> without a runner: the best document's text, cited; confidence = its coverage of the
     ticket's terms
  -> with a runner: the drafting agent (structured output `DraftAnswer`) answers from the
     retrieved sources only; citations must be among them (else escalated: unknown_citation),
     at least one (else: uncited); confidence = the model's
  -> confidence < threshold: escalated (low_confidence)
```
"""

from __future__ import annotations

import json

from contractspec.agent.runner import AgentRunner
from contractspec.agent.specs import AgentPolicy, AgentSpec, define_agent
from contractspec.agent.support.knowledge import DEFAULT_SPACE, KnowledgeBase
from contractspec.agent.support.models import (
    Citation,
    DraftAnswer,
    Resolution,
    SearchHit,
    Ticket,
    invalid,
)
from contractspec.core import Actor, CallContext, ConfigurationError

__all__ = ["TicketResolver"]


class TicketResolver:
    """Answers tickets from a `KnowledgeBase` with citations, or escalates them.

    Args:
        knowledge: The knowledge base (searched in the ticket's `org_id`).
        runner: An `AgentRunner` whose model drafts answers; without one the best document is
            the answer (extractive).
        model: Model name for the drafting agent.
        threshold: Escalate below this confidence (fraction 0-1, default 0.6).
        limit: Documents retrieved per ticket (default 3).
        space: The knowledge space (default `"default"`).
        agent_name: The drafting agent's name (default `support.resolve`).

    Raises:
        ConfigurationError: A threshold outside 0-1 or a limit below 1.
    """

    def __init__(
        self,
        knowledge: KnowledgeBase,
        *,
        runner: AgentRunner | None = None,
        model: str = "openai/gpt-4o-mini",
        threshold: float = 0.6,
        limit: int = 3,
        space: str = DEFAULT_SPACE,
        agent_name: str = "support.resolve",
    ) -> None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (0 <= threshold <= 1)
        ):
            raise ConfigurationError(
                f"TicketResolver: threshold must be a fraction 0-1, got {threshold!r}",
                details={"field": "threshold"},
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(
                f"TicketResolver: limit must be a positive integer, got {limit!r}",
                details={"field": "limit"},
            )
        self.knowledge = knowledge
        self.runner = runner
        self.threshold = float(threshold)
        self.limit = limit
        self.space = space
        self.agent: AgentSpec = define_agent(
            agent_name,
            model=model,
            instructions=(
                "Answer the customer's ticket using only the sources given with it. In "
                "`citations` list the ids of the sources your answer relies on. Report your "
                "confidence from 0 to 1; if the sources do not answer the ticket, say so and "
                "report a confidence below 0.5."
            ),
            output_type=DraftAnswer,
            policy=AgentPolicy(confidence_threshold=self.threshold),
            description="Drafts cited answers to support tickets (contractspec.agent.support).",
        )

    async def retrieve(self, ticket: Ticket, *, category: str | None = None) -> list[SearchHit]:
        """The documents retrieved for `ticket` (its category's first, then any)."""
        hits: list[SearchHit] = []
        if category is not None:
            hits = await self.knowledge.search(
                ticket.text,
                org_id=ticket.org_id,
                space=self.space,
                limit=self.limit,
                category=category,
            )
        if not hits:
            hits = await self.knowledge.search(
                ticket.text, org_id=ticket.org_id, space=self.space, limit=self.limit
            )
        return hits

    async def resolve(
        self, ticket: Ticket, *, category: str | None = None, ctx: CallContext | None = None
    ) -> Resolution:
        """Resolve one ticket.

        Args:
            ticket: The ticket (its `org_id` picks the tenant's knowledge).
            category: Prefer documents of this category (e.g. from `TicketClassifier`).
            ctx: Who asks (default: the system actor `support.resolver` in the ticket's org).

        Returns:
            A `Resolution`; `escalated` with a `reason` when a person must answer.

        Raises:
            SpecValidationError: `ticket` is not a `Ticket`.
            AgentRunError: The drafting model failed.
        """
        if not isinstance(ticket, Ticket):
            raise invalid("TicketResolver", "ticket", f"must be a Ticket, got {ticket!r}")
        hits = tuple(await self.retrieve(ticket, category=category))
        if not hits:
            return Resolution(ticket.id, "", (), 0.0, True, "no_match", hits)
        if self.runner is None:
            best = hits[0]
            return self._verdict(
                ticket, best.document.text, (best.citation,), best.coverage, hits, None
            )
        sources = [
            {"id": h.document.id, "title": h.document.title, "text": h.document.text} for h in hits
        ]
        call = ctx or CallContext(
            actor=Actor.system("support.resolver"), org_id=ticket.org_id, channel="agent"
        )
        result = await self.runner.run(
            self.agent, json.dumps({"ticket": ticket.text, "sources": sources}), call
        )
        draft: DraftAnswer = result.output
        by_id = {h.document.id: h for h in hits}
        unknown = [c for c in draft.citations if c not in by_id]
        if unknown:
            return Resolution(
                ticket.id, draft.answer, (), 0.0, True, "unknown_citation", hits, result.run_id
            )
        cited = tuple(by_id[c].citation for c in dict.fromkeys(draft.citations))
        if not cited:
            return Resolution(
                ticket.id, draft.answer, (), 0.0, True, "uncited", hits, result.run_id
            )
        return self._verdict(ticket, draft.answer, cited, draft.confidence, hits, result.run_id)

    def _verdict(
        self,
        ticket: Ticket,
        answer: str,
        citations: tuple[Citation, ...],
        confidence: float,
        hits: tuple[SearchHit, ...],
        run_id: str | None,
    ) -> Resolution:
        low = confidence < self.threshold
        return Resolution(
            ticket.id,
            answer,
            citations,
            float(confidence),
            low,
            "low_confidence" if low else "",
            hits,
            run_id,
        )
