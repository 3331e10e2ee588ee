"""The support bot, built on `contractspec.agent.support`.

* `TicketClassifier` labels the ticket (category, priority, sentiment, language): keyword rules
  first, the `support.classify` agent only when they are unsure;
* `TicketResolver` searches the `KnowledgeBase` in the ticket's tenant and has the
  `support.resolve` agent draft a cited answer; below 0.6 confidence, without citations, or
  citing an article it was not given, the ticket is escalated to a person;
* `AutoResponder` has the `support.reply` agent write the reply in a friendly tone, then checks
  it in code against the `ResponsePolicy` (no refund promise above 50, no banned claims): a reply
  that breaks it is blocked, never sendable;
* `SupportFeedbackLoop` records each outcome: stats per category, and articles that resolve
  tickets rank higher next time.

`desk_agent()` shows the other way in: one agent given the toolkit as gateway tools
(`create_support_tools`).
"""

from __future__ import annotations

import json
import os

from attrs import define, field

from ai_support_bot.knowledge import ORG, build_knowledge
from contractspec.agent import AgentRunner, AgentSpec, ModelClient, ModelRequest, define_agent
from contractspec.agent.support import (
    AutoResponder,
    KnowledgeBase,
    ReplyDraft,
    ResponsePolicy,
    SupportFeedback,
    SupportFeedbackLoop,
    Ticket,
    TicketClassifier,
    TicketResolver,
    create_support_tools,
)
from contractspec.agent.testing import FunctionModel, Reply

__all__ = [
    "CATEGORIES",
    "POLICY",
    "SupportBot",
    "TicketOutcome",
    "configured_model",
    "desk_agent",
    "offline_model",
]

MODEL = os.environ.get("SUPPORT_BOT_MODEL", "offline")
#: The help desk's categories and the words that signal them.
CATEGORIES = {
    "billing": ("charge", "charged", "refund", "invoice", "paid"),
    "shipping": ("parcel", "shipping", "delivery", "arrive", "tracking"),
    "account": ("password", "account", "sign in"),
}
#: What no reply may say, whoever wrote it.
POLICY = ResponsePolicy(
    refund_limit=50,
    banned_claims=("guaranteed", "lifetime warranty", "we never lose parcels"),
)


def _brain(request: ModelRequest) -> Reply:
    """A deterministic offline model for the three agents (known by their output schema)."""
    schema = (request.output_schema or {}).get("title")
    payload = request.messages[-1].content or ""
    if schema == "TicketLabels":  # the heuristics were unsure: say so
        labels = {"category": "other", "priority": "normal", "sentiment": "neutral"}
        return json.dumps({**labels, "language": "en", "confidence": 0.3})
    data = json.loads(payload)
    if schema == "DraftAnswer":  # answer from the best source, cite it
        best = data["sources"][0]
        confidence = 0.85 if len(data["sources"]) == 1 else 0.7
        return json.dumps(
            {"answer": best["text"], "citations": [best["id"]], "confidence": confidence}
        )
    parts = (data["greeting"], data["answer"], data["closing"], data["signature"])
    return json.dumps({"body": "\n\n".join(p for p in parts if p)})


def offline_model() -> FunctionModel:
    """The offline model used when no real model is configured."""
    return FunctionModel(_brain, model_name="offline")


def configured_model() -> ModelClient:
    """A litellm model when `SUPPORT_BOT_MODEL` is set, else the offline model."""
    if os.environ.get("SUPPORT_BOT_MODEL"):
        from contractspec.agent.litellm import LiteLLMModel

        return LiteLLMModel()
    return offline_model()


@define(frozen=True)
class TicketOutcome:
    """What happened to one ticket."""

    ticket_id: str
    category: str
    answer: str
    citations: tuple[str, ...]
    escalated: bool
    draft: str | None
    run_ids: tuple[str, ...]
    reply: ReplyDraft | None = None


@define
class _Parts:
    knowledge: KnowledgeBase
    classifier: TicketClassifier
    resolver: TicketResolver
    responder: AutoResponder
    feedback: SupportFeedbackLoop
    runs: list[str] = field(factory=list)


class SupportBot:
    """Classify → resolve with citations → write a policy-checked reply → escalate when unsure.

    Args:
        runner: An `AgentRunner` (its model answers the three agents); default: the configured
            model (`SUPPORT_BOT_MODEL`, else offline).
        knowledge: The knowledge base (default: the six `ARTICLES` in the `helpdesk` tenant).
    """

    def __init__(
        self, runner: AgentRunner | None = None, knowledge: KnowledgeBase | None = None
    ) -> None:
        self.runner = runner or AgentRunner(model=configured_model())
        self._knowledge = knowledge
        self._parts: _Parts | None = None

    async def parts(self) -> _Parts:
        """The toolkit components (built on first use)."""
        if self._parts is None:
            kb = self._knowledge or await build_knowledge()
            self._parts = _Parts(
                knowledge=kb,
                classifier=TicketClassifier(CATEGORIES, runner=self.runner, model=MODEL),
                resolver=TicketResolver(kb, runner=self.runner, model=MODEL, threshold=0.6),
                responder=AutoResponder(
                    POLICY, runner=self.runner, model=MODEL, signature="Helpdesk"
                ),
                feedback=SupportFeedbackLoop(knowledge=kb),
            )
        return self._parts

    async def handle(self, ticket_id: str, text: str) -> TicketOutcome:
        """Run the pipeline on one ticket of the help desk."""
        p = await self.parts()
        ticket = Ticket(id=ticket_id, text=text, org_id=ORG)
        labels = await p.classifier.classify(ticket)
        run_ids = tuple(r for r in (labels.run_id,) if r)
        if labels.category == p.classifier.fallback:
            return TicketOutcome(ticket_id, labels.category, "", (), True, None, run_ids)
        resolution = await p.resolver.resolve(ticket, category=labels.category)
        run_ids += tuple(r for r in (resolution.run_id,) if r)
        reply = await p.responder.respond(ticket, resolution)
        run_ids += tuple(r for r in (reply.run_id,) if r)
        escalated = resolution.escalated or not reply.sendable
        return TicketOutcome(
            ticket_id,
            labels.category,
            resolution.answer,
            resolution.source_ids,
            escalated,
            None if escalated else reply.text,
            run_ids,
            reply,
        )

    async def record(
        self, outcome: TicketOutcome, *, resolved: bool, csat: int | None = None
    ) -> None:
        """Feed a ticket's result back (stats per category; boosts of the cited articles)."""
        p = await self.parts()
        await p.feedback.record(
            SupportFeedback(
                ticket_id=outcome.ticket_id,
                category=outcome.category,
                resolved=resolved,
                escalated=outcome.escalated,
                csat=csat,
                cited=outcome.citations,
                org_id=ORG,
            )
        )


def desk_agent(knowledge: KnowledgeBase, sent: list[tuple[str, str]]) -> AgentSpec:
    """One agent with the toolkit as gateway tools: it searches, then sends a reply that the
    gateway's invariants check against `POLICY` (the sent replies are appended to `sent`)."""

    def send(ticket_id: str, body: str, org_id: str | None) -> None:
        sent.append((ticket_id, body))

    return define_agent(
        "support.desk",
        model=MODEL,
        instructions="Answer the ticket from the knowledge base and send the reply with send_reply.",
        tools=create_support_tools(
            knowledge, classifier=TicketClassifier(CATEGORIES), policy=POLICY, send=send
        ),
    )
