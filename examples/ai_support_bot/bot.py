"""The support bot: two agents and a pipeline around them.

* `support.classify` turns a ticket into a category with a confidence (structured output);
* `support.resolve` searches the knowledge base (tool, L0), answers with citations and a
  confidence, and drafts the reply (tool, L0: a draft, nothing is sent). Below 0.6 confidence
  the run is escalated to a person (`agent.escalated`).
"""

from __future__ import annotations

import json
import os
from typing import Literal

from attrs import define, field
from pydantic import BaseModel, Field

from ai_support_bot.knowledge import search
from contractspec.agent import (
    AgentPolicy,
    AgentRunner,
    ModelClient,
    ModelRequest,
    RiskLevel,
    ToolContext,
    ToolMessage,
    UserMessage,
    define_agent,
    tool,
)
from contractspec.agent.testing import FunctionModel, Reply, call
from contractspec.core import Actor, CallContext

__all__ = ["Classification", "Resolution", "SupportBot", "TicketOutcome", "offline_model"]

Category = Literal["billing", "shipping", "account", "other"]


class Classification(BaseModel):
    """What the ticket is about."""

    category: Category
    confidence: float = Field(ge=0, le=1)


class Resolution(BaseModel):
    """The answer, the articles it relies on, and how sure the model is."""

    answer: str
    citations: list[str]
    confidence: float = Field(ge=0, le=1)


@define
class Drafts:
    """Reply drafts by ticket id (what a help desk would show an agent to send)."""

    by_ticket: dict[str, str] = field(factory=dict)


@tool(risk=RiskLevel.L0)
async def search_kb(query: str, limit: int = 2) -> list[dict[str, str]]:
    """Search the help-center knowledge base; cite results by their id."""
    return [{"id": a.id, "title": a.title, "text": a.text} for a in search(query, limit)]


@tool(risk=RiskLevel.L0, side_effects=True)
async def draft_reply(ticket_id: str, body: str, ctx: ToolContext) -> str:
    """Save a reply draft for a ticket (a person sends it)."""
    drafts: Drafts = ctx.deps
    drafts.by_ticket[ticket_id] = body
    return f"draft saved for {ticket_id}"


classify_agent = define_agent(
    "support.classify",
    model=os.environ.get("SUPPORT_BOT_MODEL", "offline"),
    instructions="Classify the support ticket as billing, shipping, account or other.",
    output_type=Classification,
)
resolve_agent = define_agent(
    "support.resolve",
    model=os.environ.get("SUPPORT_BOT_MODEL", "offline"),
    instructions=(
        "Answer the customer using only knowledge-base articles found with search_kb; cite their "
        "ids. Save the reply with draft_reply. Report your confidence from 0 to 1."
    ),
    tools=[search_kb, draft_reply],
    output_type=Resolution,
    policy=AgentPolicy(confidence_threshold=0.6),
)


def _brain(request: ModelRequest) -> Reply:
    """A deterministic offline model: keyword classification and KB-grounded answers."""
    ticket = next(m.content for m in request.messages if isinstance(m, UserMessage))
    if request.tools == () or not request.tools:
        text = ticket.lower()
        for category, words in (
            ("billing", ("charge", "refund", "invoice", "paid")),
            ("shipping", ("parcel", "shipping", "delivery", "arrive", "tracking")),
            ("account", ("password", "account", "sign")),
        ):
            if any(w in text for w in words):
                return json.dumps({"category": category, "confidence": 0.9})
        return json.dumps({"category": "other", "confidence": 0.3})
    results = [m for m in request.messages if isinstance(m, ToolMessage)]
    ticket_id, _, question = ticket.partition(": ")
    if not results:
        return call("search_kb", query=question)
    found = json.loads(results[0].content)
    if len(results) == 1:
        if not found:
            return json.dumps({"answer": "", "citations": [], "confidence": 0.1})
        body = " ".join(a["text"] for a in found[:1]) + f" [{found[0]['id']}]"
        return call("draft_reply", ticket_id=ticket_id, body=body)
    return json.dumps(
        {
            "answer": found[0]["text"],
            "citations": [found[0]["id"]],
            "confidence": 0.85 if len(found) == 1 else 0.7,
        }
    )


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


class SupportBot:
    """Classify → resolve with citations → draft → escalate when unsure.

    Args:
        runner: An `AgentRunner` (its model answers both agents).
    """

    def __init__(self, runner: AgentRunner | None = None) -> None:
        self.runner = runner or AgentRunner(model=configured_model())
        self.drafts = Drafts()
        self.ctx = CallContext(
            actor=Actor.system("support-bot"), org_id="helpdesk", channel="agent"
        )

    async def handle(self, ticket_id: str, text: str) -> TicketOutcome:
        """Run the pipeline on one ticket."""
        classified = await self.runner.run(classify_agent, f"{ticket_id}: {text}", self.ctx)
        category = classified.output.category
        if category == "other" or classified.escalated:
            return TicketOutcome(ticket_id, category, "", (), True, None, (classified.run_id,))
        resolved = await self.runner.run(
            resolve_agent, f"{ticket_id}: {text}", self.ctx, deps=self.drafts
        )
        out: Resolution = resolved.output
        escalated = resolved.escalated or not out.citations
        return TicketOutcome(
            ticket_id,
            category,
            out.answer,
            tuple(out.citations),
            escalated,
            self.drafts.by_ticket.get(ticket_id),
            (classified.run_id, resolved.run_id),
        )
