"""The support bot offline: classification, cited answers, drafts and escalation."""

from __future__ import annotations

import json

from ai_support_bot.bot import SupportBot, classify_agent, resolve_agent
from ai_support_bot.knowledge import search

from contractspec.agent import AgentRunner, RunStatus
from contractspec.agent.testing import ScriptedModel, block_model_requests, call

block_model_requests()


def test_search_ranks_title_matches_first() -> None:
    """The double-charge article wins for a double-charge question; unrelated text finds nothing."""
    assert [a.id for a in search("I was charged twice, refund please")] == ["kb-102", "kb-101"]
    assert [a.id for a in search("tracking shows nothing for my parcel")] == ["kb-202"]
    assert search("colours hurt my eyes") == []


async def test_offline_bot_answers_with_citations_and_drafts() -> None:
    """Known problems get a cited answer and a saved draft; unknown ones are escalated."""
    bot = SupportBot()
    billing = await bot.handle("T-1", "I was charged twice for my order, can I get a refund?")
    assert (billing.category, billing.citations, billing.escalated) == (
        "billing",
        ("kb-102",),
        False,
    )
    assert billing.answer.startswith("A double charge is usually a pending authorisation")
    assert billing.draft is not None
    assert billing.draft.endswith("[kb-102]")
    other = await bot.handle("T-3", "Your app's colours hurt my eyes.")
    assert (other.category, other.escalated, other.draft) == ("other", True, None)
    runs = await bot.runner.history(org_id="helpdesk")
    assert sorted(r.agent for r in runs) == [
        "support.classify",
        "support.classify",
        "support.resolve",
    ]


async def test_low_confidence_answer_is_escalated_with_the_scripted_model() -> None:
    """A scripted resolver that is unsure (0.4 < 0.6) escalates the ticket."""
    model = ScriptedModel(
        [
            json.dumps({"category": "shipping", "confidence": 0.8}),
            call("search_kb", query="parcel"),
            json.dumps({"answer": "Maybe lost?", "citations": ["kb-202"], "confidence": 0.4}),
        ]
    )
    bot = SupportBot(AgentRunner(model=model))
    outcome = await bot.handle("T-9", "Where is my parcel?")
    model.assert_consumed()
    assert (outcome.category, outcome.escalated, outcome.citations) == (
        "shipping",
        True,
        ("kb-202",),
    )
    resolve_run = await bot.runner.get(outcome.run_ids[1])
    assert resolve_run.status is RunStatus.ESCALATED
    assert [t.name for t in model.requests[1].tools] == ["search_kb", "draft_reply"]
    assert classify_agent.output_type is not None
    assert resolve_agent.policy.confidence_threshold == 0.6
