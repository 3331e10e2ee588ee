"""Classifier, resolver and responder: heuristics first, scripted models second, policy in code."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contractspec.agent import AgentRunner, RunStatus
from contractspec.agent.support import (
    AutoResponder,
    Document,
    KnowledgeBase,
    Resolution,
    ResponsePolicy,
    Ticket,
    TicketClassifier,
    TicketResolver,
)
from contractspec.agent.testing import ScriptedModel
from contractspec.core import ConfigurationError, SpecValidationError

DOCS = [
    Document(id="kb-1", title="Refund timelines", text="Refunds reach the original card within 5 business days.", category="billing"),
    Document(id="kb-2", title="Charged twice", text="A double charge is a pending authorisation that disappears in 3 days.", category="billing"),
    Document(id="kb-3", title="Lost parcels", text="If tracking shows no movement for 7 days we reship the parcel.", category="shipping"),
]  # fmt: skip


# -- classifier ------------------------------------------------------------------------------------


def test_heuristics_classify_category_priority_sentiment_language() -> None:
    """Keyword rules give all four fields with their confidences, no model needed."""
    clf = TicketClassifier()
    c = clf.heuristics("URGENT: I was charged twice and this is unacceptable, refund me now")
    assert (c.category, c.priority, c.sentiment, c.language) == (
        "billing",
        "urgent",
        "negative",
        "en",
    )
    assert c.source == "heuristic"
    assert c.field_confidence["category"] == pytest.approx(0.5 + 0.5 * 2 / 3)  # charged, refund
    assert c.confidence == min(c.field_confidence["category"], c.field_confidence["language"])
    happy = clf.heuristics("Thanks, the parcel arrived, great service from your courier")
    assert (happy.category, happy.sentiment, happy.priority) == ("shipping", "positive", "normal")
    german = clf.heuristics("Ich habe mein Passwort vergessen und kann mich nicht anmelden")
    assert german.language == "de"
    spanish = clf.heuristics(
        "No he recibido el paquete y el seguimiento no se mueve desde hace una semana"
    )
    assert spanish.language == "es"
    unknown = clf.heuristics("hm")
    assert (unknown.category, unknown.language, unknown.confidence) == ("other", "und", 0.2)


def test_ambiguous_heuristics_have_low_confidence() -> None:
    """One hit in two categories is a tie: confidence 0.5, below the default threshold."""
    c = TicketClassifier().heuristics("my refund for the parcel that was never delivered")
    assert c.field_confidence["category"] < 0.7


async def test_confident_heuristics_never_call_the_model() -> None:
    """Above the threshold the heuristic answer stands; the model is not asked."""
    model = ScriptedModel([])
    clf = TicketClassifier(runner=AgentRunner(model=model))
    c = await clf.classify(
        Ticket(id="t1", text="Please refund the invoice I paid twice", org_id="o1")
    )
    assert (c.source, c.category) == ("heuristic", "billing")
    assert model.requests == []


async def test_unsure_heuristics_ask_the_model_with_structured_output() -> None:
    """Below the threshold the classification agent answers (TicketLabels), run in the org."""
    model = ScriptedModel(
        [
            json.dumps(
                {
                    "category": "Shipping",
                    "priority": "high",
                    "sentiment": "negative",
                    "language": "EN",
                    "confidence": 0.82,
                }
            )
        ]
    )
    runner = AgentRunner(model=model)
    clf = TicketClassifier(runner=runner)
    c = await clf.classify(Ticket(id="t2", text="where is my stuff??", org_id="o1"))
    model.assert_consumed()
    assert (c.source, c.category, c.priority, c.sentiment, c.language, c.confidence) == (
        "model",
        "shipping",
        "high",
        "negative",
        "en",
        0.82,
    )
    assert c.run_id is not None
    run = await runner.get(c.run_id)
    assert (run.agent, run.org_id, run.status) == ("support.classify", "o1", RunStatus.COMPLETED)
    assert "billing, shipping, account, technical, other" in model.requests[0].messages[0].content


async def test_a_model_inventing_a_category_gets_the_fallback() -> None:
    """A category that is not configured becomes the fallback with confidence at most 0.3."""
    labels = {
        "category": "vip",
        "priority": "low",
        "sentiment": "neutral",
        "language": "??",
        "confidence": 0.99,
    }
    clf = TicketClassifier(runner=AgentRunner(model=ScriptedModel([json.dumps(labels)])))
    c = await clf.classify("hello there friend")
    assert (c.category, c.confidence, c.language) == ("other", 0.3, "und")


def test_classifier_options_are_checked() -> None:
    """Bad categories, fallback, threshold and languages raise ConfigurationError naming them."""
    for kwargs, name in [
        ({"categories": {}}, "categories"),
        ({"categories": {"other": ["x"]}}, "fallback"),
        ({"threshold": 1.5}, "threshold"),
        ({"languages": ["xx"]}, "languages"),
    ]:
        with pytest.raises(ConfigurationError) as info:
            TicketClassifier(**kwargs)  # type: ignore[arg-type]  # hostile input
        assert info.value.details["field"] == name
    with pytest.raises(SpecValidationError):
        TicketClassifier().heuristics(None)  # type: ignore[arg-type]  # hostile input


# -- resolver --------------------------------------------------------------------------------------


async def knowledge() -> KnowledgeBase:
    kb = KnowledgeBase()
    await kb.add(DOCS, org_id="acme")
    return kb


async def test_extractive_resolution_cites_the_best_document() -> None:
    """Without a model the best document is the answer, cited, with its term coverage."""
    resolver = TicketResolver(await knowledge())
    r = await resolver.resolve(
        Ticket(id="t1", text="tracking of my parcel shows no movement", org_id="acme")
    )
    assert (r.source_ids, r.escalated, r.reason) == (("kb-3",), False, "")
    assert r.answer == DOCS[2].text
    assert r.confidence == pytest.approx(1.0)


async def test_nothing_found_or_unsure_escalates() -> None:
    """No match escalates as no_match; low coverage as low_confidence; other tenants see nothing."""
    resolver = TicketResolver(await knowledge(), threshold=0.6)
    none = await resolver.resolve(Ticket(id="t1", text="colours hurt my eyes", org_id="acme"))
    assert (none.escalated, none.reason, none.citations) == (True, "no_match", ())
    weak = await resolver.resolve(
        Ticket(id="t2", text="parcel colours fonts layout theme", org_id="acme")
    )
    assert (weak.escalated, weak.reason, weak.source_ids) == (True, "low_confidence", ("kb-3",))
    other = await resolver.resolve(Ticket(id="t3", text="parcel tracking", org_id="globex"))
    assert other.reason == "no_match"


async def test_model_drafts_from_retrieved_sources_only() -> None:
    """The drafting agent gets the retrieved sources; valid citations and confidence pass."""
    model = ScriptedModel(
        [
            json.dumps(
                {
                    "answer": "It is a pending authorisation.",
                    "citations": ["kb-2"],
                    "confidence": 0.9,
                }
            )
        ]
    )
    runner = AgentRunner(model=model)
    resolver = TicketResolver(await knowledge(), runner=runner)
    r = await resolver.resolve(
        Ticket(id="t1", text="I was charged twice", org_id="acme"), category="billing"
    )
    assert (r.answer, r.source_ids, r.confidence, r.escalated) == (
        "It is a pending authorisation.",
        ("kb-2",),
        0.9,
        False,
    )
    sent = json.loads(model.requests[0].messages[-1].content)
    assert sent["ticket"] == "I was charged twice"
    assert next(s["id"] for s in sent["sources"]) == "kb-2"
    assert {s["id"] for s in sent["sources"]} <= {"kb-1", "kb-2"}  # the billing category only


@pytest.mark.parametrize(
    ("draft", "reason"),
    [
        ({"answer": "See kb-9.", "citations": ["kb-9"], "confidence": 0.95}, "unknown_citation"),
        ({"answer": "Trust me.", "citations": [], "confidence": 0.95}, "uncited"),
        ({"answer": "Maybe?", "citations": ["kb-2"], "confidence": 0.3}, "low_confidence"),
    ],
)
async def test_model_drafts_that_cannot_be_trusted_escalate(
    draft: dict[str, object], reason: str
) -> None:
    """Citing a source that was not retrieved, citing none, or low confidence escalates."""
    runner = AgentRunner(model=ScriptedModel([json.dumps(draft)]))
    resolver = TicketResolver(await knowledge(), runner=runner)
    r = await resolver.resolve(Ticket(id="t1", text="charged twice", org_id="acme"))
    assert (r.escalated, r.reason) == (True, reason)
    if reason != "low_confidence":
        assert (r.citations, r.confidence) == ((), 0.0)
    else:
        run = await runner.get(r.run_id or "")
        assert run.status is RunStatus.ESCALATED


# -- responder -------------------------------------------------------------------------------------

POLICY = ResponsePolicy(
    refund_limit=50,
    banned_claims=("guaranteed delivery", "lifetime warranty"),
    banned_patterns=(r"\bnever\s+fails?\b",),
    max_length=600,
)


def resolution(answer: str, *, escalated: bool = False) -> Resolution:
    hits_doc = DOCS[1]
    from contractspec.agent.support import SearchHit

    hit = SearchHit(hits_doc, 1.0, 1.0, 1.0, 1.0)
    return Resolution("t1", answer, (hit.citation,), 0.9, escalated, "", (hit,))


async def test_template_reply_in_each_tone_is_ready() -> None:
    """A clean answer becomes a reply in the chosen tone, with its sources, ready to send."""
    responder = AutoResponder(POLICY, tone="formal", signature="Acme Support")
    ticket = Ticket(id="t1", text="charged twice", org_id="acme")
    reply = await responder.respond(
        ticket, resolution("It is a pending authorisation."), customer_name="Ada"
    )
    assert reply.status == "ready"
    assert reply.sendable
    assert reply.text.startswith(
        "Dear Ada,\n\nIt is a pending authorisation.\n\nSources: Charged twice"
    )
    assert reply.text.endswith("please do not hesitate to contact us.\n\nAcme Support")
    friendly = await responder.respond(ticket, resolution("Done."), tone="friendly")
    assert friendly.text.startswith("Hi there,")
    assert friendly.tone == "friendly"
    held = await responder.respond(ticket, resolution("", escalated=True), tone="empathetic")
    assert held.status == "escalated"
    assert "passed your request to a specialist" in held.text
    with pytest.raises(ConfigurationError):
        await responder.respond(ticket, resolution("x"), tone="sarcastic")


@pytest.mark.parametrize(
    ("draft", "rules"),
    [
        ("We will refund you $120 today.", ["refund_limit"]),
        ("You'll get 75,50 EUR back as a refund.", ["refund_limit"]),
        ("As compensation we credit your account with 1,000 dollars.", ["refund_limit"]),
        ("We can offer a full refund of your order.", ["refund_amount_unknown"]),
        ("Your parcel has GUARANTEED\u00a0 delivery tomorrow.", ["banned_claim"]),
        ("It comes with a life\u200btime warranty.", ["banned_claim"]),
        ("Our courier never fails.", ["banned_claim"]),
        (
            "Refund of $499 and a lifetime warranty! " + "x" * 600,
            ["refund_limit", "banned_claim", "max_length"],
        ),
    ],
)
async def test_violating_model_replies_are_blocked_in_code(draft: str, rules: list[str]) -> None:
    """Whatever the model writes, a reply that breaks the policy is blocked, not sendable."""
    model = ScriptedModel([json.dumps({"body": draft})])
    responder = AutoResponder(POLICY, runner=AgentRunner(model=model))
    ticket = Ticket(id="t1", text="refund?", org_id="acme")
    reply = await responder.respond(ticket, resolution("Refunds take 5 days."))
    assert reply.status == "blocked"
    assert not reply.sendable
    assert [v.rule for v in reply.violations] == rules
    assert reply.run_id is not None
    assert "Never promise refunds" in model.requests[0].messages[0].content


async def test_refunds_within_the_limit_and_known_full_refunds_pass() -> None:
    """A refund at or under the limit, or a full refund of a small order, may be sent."""
    ticket = Ticket(id="t1", text="refund?", order_total=30.0)
    for draft in ("We refund $50 today.", "We will issue a full refund.", "Shipping costs $80."):
        model = ScriptedModel([json.dumps({"body": draft})])
        reply = await AutoResponder(POLICY, runner=AgentRunner(model=model)).respond(
            ticket, resolution("ok")
        )
        assert reply.status == "ready", draft
    big = Ticket(id="t2", text="refund?", order_total=80.0)
    assert [v.rule for v in POLICY.check("We will issue a full refund.", order_total=80.0)] == [
        "refund_limit"
    ]
    assert big.order_total == 80.0


@settings(max_examples=80, deadline=None)
@given(
    amount=st.integers(min_value=51, max_value=10**7),
    currency=st.sampled_from(["${}", "€{}", "{} EUR", "{} usd", "£ {}", "{} dollars"]),
    thousands=st.booleans(),
    prefix=st.text(alphabet=st.characters(categories=["L", "Zs"]), max_size=20),
)
def test_any_refund_promise_above_the_limit_is_caught(
    amount: int, currency: str, thousands: bool, prefix: str
) -> None:
    """Any amount above the limit, in any supported currency form, in a refund sentence, fails."""
    number = f"{amount:,}" if thousands else str(amount)
    text = f"{prefix} we will refund you {currency.format(number)} today"
    violations = POLICY.check(text)
    assert [v.rule for v in violations] == ["refund_limit"]
    assert violations[0].value == amount


@settings(max_examples=80, deadline=None)
@given(
    claim=st.sampled_from(POLICY.banned_claims),
    case=st.sampled_from([str.upper, str.lower, str.title]),
    gap=st.sampled_from([" ", "  ", "\n", "\t", "\u00a0", " \u200b"]),
    before=st.text(alphabet="abc .,!", max_size=10),
)
def test_banned_claims_survive_case_and_spacing_tricks(
    claim: str, case: object, gap: str, before: str
) -> None:
    """Banned phrases are found whatever their case or the whitespace between their words."""
    text = before + " " + gap.join(case(claim).split()) + "!"  # type: ignore[operator]  # a str method
    assert "banned_claim" in [v.rule for v in POLICY.check(text)]


def test_policy_options_are_checked() -> None:
    """A negative limit, an empty phrase or a bad regex is refused, naming the field."""
    for kwargs, name in [
        ({"refund_limit": -1}, "refund_limit"),
        ({"banned_claims": [" "]}, "banned_claims"),
        ({"banned_patterns": ["("]}, "banned_patterns"),
        ({"max_length": 0}, "max_length"),
    ]:
        with pytest.raises(ConfigurationError) as info:
            ResponsePolicy(**kwargs)  # type: ignore[arg-type]  # hostile input
        assert info.value.details["field"] == name


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=300))
def test_hostile_ticket_text_gives_valid_labels_and_policy_verdicts(text: str) -> None:
    """Any text: labels from the allowed sets with confidences in 0-1; policy checks never crash."""
    clf = TicketClassifier()
    c = clf.heuristics(text)
    assert c.category in {*clf.categories, "other"}
    assert c.priority in ("low", "normal", "high", "urgent")
    assert c.sentiment in ("negative", "neutral", "positive")
    assert c.language in {*clf.languages, "und"}
    assert all(0 <= v <= 1 for v in (c.confidence, *c.field_confidence.values()))
    rules = {v.rule for v in POLICY.check(text, order_total=10.0)}
    assert rules <= {"refund_limit", "refund_amount_unknown", "banned_claim", "max_length"}
    assert "refund_amount_unknown" not in rules  # the order total is known
