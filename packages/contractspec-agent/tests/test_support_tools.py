"""create_support_tools(): an AgentRunner with a scripted model uses them through the gateway."""

from __future__ import annotations

import json

import pytest

from contractspec.agent import AgentRunner, RiskLevel, ToolMessage, define_agent
from contractspec.agent.support import (
    Document,
    KnowledgeBase,
    ResponsePolicy,
    SupportFeedbackLoop,
    TicketClassifier,
    create_support_tools,
)
from contractspec.agent.testing import ScriptedModel, call
from contractspec.core import Actor, CallContext, ConfigurationError

POLICY = ResponsePolicy(refund_limit=50, banned_claims=("guaranteed",))


async def setup() -> tuple[KnowledgeBase, list[tuple[str, str, str | None]], SupportFeedbackLoop]:
    kb = KnowledgeBase()
    await kb.add(
        [Document(id="kb-2", title="Charged twice", text="A double charge disappears in 3 days.")],
        org_id="acme",
    )
    await kb.add(
        [Document(id="gx-1", title="Charged twice", text="Globex refunds double charges at once.")],
        org_id="globex",
    )
    return kb, [], SupportFeedbackLoop(knowledge=kb)


def results(model: ScriptedModel, request: int) -> list[ToolMessage]:
    return [m for m in model.requests[request].messages if isinstance(m, ToolMessage)]


async def test_tools_have_risk_levels_and_only_enabled_ones_exist() -> None:
    """Search and classification are L0; sending, escalating and recording are L1."""
    kb, sent, loop = await setup()
    tools = create_support_tools(
        kb,
        classifier=TicketClassifier(),
        policy=POLICY,
        send=lambda t, b, o: sent.append((t, b, o)),
        escalate=lambda t, r, o: None,
        feedback=loop,
    )
    assert [(t.name, t.risk) for t in tools] == [
        ("search_knowledge_base", RiskLevel.L0),
        ("classify_ticket", RiskLevel.L0),
        ("send_reply", RiskLevel.L1),
        ("escalate_ticket", RiskLevel.L1),
        ("record_ticket_outcome", RiskLevel.L1),
    ]
    assert [t.name for t in create_support_tools(kb)] == ["search_knowledge_base"]
    assert "org_id" not in json.dumps(tools[0].parameters)
    with pytest.raises(ConfigurationError):
        create_support_tools(kb, max_results=0)


async def test_agent_searches_its_own_tenant_replies_and_records_through_the_gateway() -> None:
    """A scripted agent: search (its org only), a reply that breaks policy is blocked by the
    gateway's invariants, a clean reply is sent, the outcome boosts the cited document."""
    kb, sent, loop = await setup()
    tools = create_support_tools(
        kb,
        classifier=TicketClassifier(),
        policy=POLICY,
        send=lambda t, b, o: sent.append((t, b, o)),
        feedback=loop,
    )
    agent = define_agent(
        "support.desk", model="scripted", instructions="Help the customer.", tools=tools
    )
    model = ScriptedModel(
        [
            [call("classify_ticket", text="charged twice!"), call("search_knowledge_base", query="charged twice")],
            call("send_reply", ticket_id="T-1", body="Guaranteed: we refund you $200 now."),
            call("send_reply", ticket_id="T-1", body="A double charge disappears in 3 days."),
            call("record_ticket_outcome", ticket_id="T-1", category="billing", resolved=True, cited=["kb-2"]),
            "Answered T-1.",
        ]
    )  # fmt: skip
    runner = AgentRunner(model=model)
    ctx = CallContext(actor=Actor.system("desk"), org_id="acme", channel="agent")
    result = await runner.run(agent, "Ticket T-1: I was charged twice!", ctx)
    model.assert_consumed()
    assert result.output == "Answered T-1."

    classified, found = (json.loads(m.content) for m in results(model, 1))
    assert classified["category"] == "billing"
    assert [h["source_id"] for h in found] == ["kb-2"]  # never globex's gx-1

    blocked = result.packets[2]
    assert (blocked.tool, blocked.decision) == ("send_reply", "blocked")
    assert {r.name: r.passed for r in blocked.proof} == {
        "reply_policy": False,
        "refund_limit": False,
        "refund_amount_known": True,
    }
    assert blocked.evidence["refund_promised"] == 200.0
    assert results(model, 2)[-1].is_error

    sent_packet = result.packets[3]
    assert (sent_packet.decision, sent_packet.passed) == ("execute", True)
    assert sent == [("T-1", "A double charge disappears in 3 days.", "acme")]

    stats = await loop.stats(org_id="acme")
    assert stats["billing"].deflection_rate == 1.0
    assert kb.boost("kb-2", org_id="acme") > 1.0
    assert kb.boost("gx-1", org_id="globex") == 1.0


async def test_escalation_tool_hands_over_in_the_callers_tenant() -> None:
    """escalate_ticket hands over in the run's org even when the model names another one."""
    kb, _, _ = await setup()
    handed: list[tuple[str, str, str | None]] = []

    async def hand_over(ticket_id: str, reason: str, org_id: str | None) -> None:
        handed.append((ticket_id, reason, org_id))

    agent = define_agent(
        "support.triage",
        model="scripted",
        instructions="Escalate.",
        tools=create_support_tools(kb, escalate=hand_over),
    )
    model = ScriptedModel(
        [call("escalate_ticket", ticket_id="T-2", reason="legal threat", org_id="acme"), "done"]
    )
    ctx = CallContext(actor=Actor.system("desk"), org_id="globex", channel="agent")
    await AgentRunner(model=model).run(agent, "T-2", ctx)
    # an org_id the model slips into the arguments is not part of the schema and changes nothing
    assert handed == [("T-2", "legal threat", "globex")]
