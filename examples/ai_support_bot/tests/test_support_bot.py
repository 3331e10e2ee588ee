"""The support bot offline on the toolkit: classification, cited answers, policy, escalation."""

from __future__ import annotations

import json

from ai_support_bot.bot import POLICY, SupportBot, desk_agent
from ai_support_bot.knowledge import ORG, build_knowledge

from contractspec.agent import AgentRunner, RunStatus
from contractspec.agent.testing import ScriptedModel, block_model_requests, call
from contractspec.core import Actor, CallContext

block_model_requests()


async def test_search_ranks_title_matches_first() -> None:
    """The double-charge article wins for a double-charge question; unrelated text finds nothing."""
    kb = await build_knowledge()

    async def ids(query: str) -> list[str]:
        return [h.document.id for h in await kb.search(query, org_id=ORG, limit=2)]

    assert await ids("I was charged twice, refund please") == ["kb-102", "kb-101"]
    assert await ids("tracking shows nothing for my parcel") == ["kb-202"]
    assert await ids("colours hurt my eyes") == []
    assert await kb.search("parcel", org_id="another-shop") == []


async def test_offline_bot_answers_with_citations_and_replies() -> None:
    """Known problems get a cited answer and a checked reply; unknown ones are escalated."""
    bot = SupportBot()
    billing = await bot.handle("T-1", "I was charged twice for my order, can I get a refund?")
    assert (billing.category, billing.citations, billing.escalated) == (
        "billing",
        ("kb-102",),
        False,
    )
    assert billing.answer.startswith("A double charge is usually a pending authorisation")
    assert billing.draft is not None
    assert billing.draft.startswith("Hi there,\n\nA double charge")
    assert billing.draft.endswith("Helpdesk")
    other = await bot.handle("T-3", "Your app's colours hurt my eyes.")
    assert (other.category, other.escalated, other.draft) == ("other", True, None)
    runs = await bot.runner.history(org_id="helpdesk")
    assert sorted(r.agent for r in runs) == ["support.classify", "support.reply", "support.resolve"]


async def test_low_confidence_answer_is_escalated_with_the_scripted_model() -> None:
    """A scripted resolver that is unsure (0.4 < 0.6) escalates; no reply goes out."""
    model = ScriptedModel(
        [json.dumps({"answer": "Maybe lost?", "citations": ["kb-202"], "confidence": 0.4})]
    )
    bot = SupportBot(AgentRunner(model=model))
    outcome = await bot.handle("T-9", "Where is my parcel?")
    model.assert_consumed()
    assert (outcome.category, outcome.escalated, outcome.citations) == (
        "shipping",
        True,
        ("kb-202",),
    )
    assert outcome.draft is None
    assert outcome.reply is not None
    assert outcome.reply.status == "escalated"
    resolve_run = await bot.runner.get(outcome.run_ids[0])
    assert resolve_run.status is RunStatus.ESCALATED


async def test_a_reply_breaking_policy_is_blocked_and_escalated() -> None:
    """A model reply promising a refund above 50 is blocked in code and never becomes a draft."""
    model = ScriptedModel(
        [
            json.dumps(
                {"answer": "We refund duplicates.", "citations": ["kb-102"], "confidence": 0.9}
            ),
            json.dumps({"body": "Good news: we will refund you $200 right away, guaranteed!"}),
        ]
    )
    bot = SupportBot(AgentRunner(model=model))
    outcome = await bot.handle("T-5", "I was charged twice for my order")
    assert (outcome.escalated, outcome.draft) == (True, None)
    assert outcome.reply is not None
    assert [v.rule for v in outcome.reply.violations] == ["refund_limit", "banned_claim"]
    assert POLICY.refund_limit == 50


async def test_feedback_boosts_the_article_that_resolved_tickets() -> None:
    """Recording resolved tickets raises the cited article's boost and shows in the stats."""
    bot = SupportBot()
    outcome = await bot.handle("T-1", "I was charged twice for my order, can I get a refund?")
    await bot.record(outcome, resolved=True, csat=5)
    parts = await bot.parts()
    assert parts.knowledge.boost("kb-102", org_id=ORG) > 1.0
    stats = await parts.feedback.stats(org_id=ORG)
    assert (stats["billing"].resolution_rate, stats["billing"].csat) == (1.0, 1.0)


async def test_desk_agent_uses_the_toolkit_through_the_gateway() -> None:
    """The tool-using agent's policy-breaking reply is blocked by invariants; the clean one sent."""
    kb = await build_knowledge()
    sent: list[tuple[str, str]] = []
    model = ScriptedModel(
        [
            call("search_knowledge_base", query="charged twice"),
            call("send_reply", ticket_id="T-1", body="We refund you 500 EUR today."),
            call("send_reply", ticket_id="T-1", body="A double charge disappears within 3 days."),
            "sent",
        ]
    )
    ctx = CallContext(actor=Actor.system("desk"), org_id=ORG, channel="agent")
    result = await AgentRunner(model=model).run(desk_agent(kb, sent), "T-1: charged twice", ctx)
    assert [p.decision for p in result.packets] == ["execute", "blocked", "execute"]
    assert sent == [("T-1", "A double charge disappears within 3 days.")]
