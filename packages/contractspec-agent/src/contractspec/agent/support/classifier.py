"""`TicketClassifier`: category, priority, sentiment and language — keyword heuristics first, a
model second when the heuristics are unsure.

```text
classify(ticket)
  -> heuristics: category keywords, priority and sentiment word lists, language by stopword
     overlap (bm25s's NLTK lists), each with a confidence
  -> confidence >= threshold, or no runner: the heuristic answer
  -> else: the classification agent (structured output `TicketLabels`) through the AgentRunner
```

The heuristics' confidences (fractions 0-1): a category with `b` keyword hits against `s` for the
runner-up gets `0.5 + 0.5 (b - s) / (b + 1)` (one hit alone: 0.75), no hit `0.3` (the fallback
category); a language `0.5 + 2 (best - second)` of the stopword shares of its words (at most
0.95; under three words: `und`, 0.2). The classification's `confidence` is the lower of the
category's and the language's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from contractspec.agent.runner import AgentRunner
from contractspec.agent.specs import AgentSpec, define_agent
from contractspec.agent.support._text import STOPWORDS, normalize, s_stem, tokens
from contractspec.agent.support.models import (
    Priority,
    Sentiment,
    Ticket,
    TicketClassification,
    TicketLabels,
    invalid,
)
from contractspec.core import Actor, CallContext, ConfigurationError

__all__ = [
    "DEFAULT_CATEGORIES",
    "NEGATIVE_WORDS",
    "POSITIVE_WORDS",
    "PRIORITY_WORDS",
    "TicketClassifier",
]

#: Default categories and their keywords (phrases allowed; matched on normalised, S-stemmed words).
DEFAULT_CATEGORIES: Final[Mapping[str, tuple[str, ...]]] = {
    "billing": ("charge", "charged", "refund", "invoice", "payment", "paid", "pay", "bill",
                "billing", "price", "subscription", "receipt", "overcharged", "credit card"),
    "shipping": ("parcel", "package", "shipping", "delivery", "deliver", "delivered", "arrive",
                 "arrived", "tracking", "courier", "shipment", "shipped"),
    "account": ("password", "account", "login", "log in", "sign in", "username", "2fa",
                "locked out", "email address"),
    "technical": ("error", "bug", "crash", "crashes", "not working", "doesn't work", "loading",
                  "slow", "timeout", "broken"),
}  # fmt: skip
#: Words that raise the priority, by priority.
PRIORITY_WORDS: Final[Mapping[Priority, tuple[str, ...]]] = {
    "urgent": ("urgent", "asap", "immediately", "emergency", "outage", "is down", "security",
               "hacked", "breach", "fraud", "lawyer", "legal action", "chargeback"),
    "high": ("charged twice", "double charge", "cannot", "unable", "locked out",
             "not working", "lost", "stolen", "still waiting", "again"),
    "low": ("question", "wondering", "curious", "how do i", "how can i", "suggestion",
            "feature request", "just wanted"),
}  # fmt: skip
#: Negative-sentiment words.
NEGATIVE_WORDS: Final = ("angry", "annoyed", "awful", "bad", "disappointed", "disappointing",
                         "disgusted", "frustrated", "frustrating", "furious", "horrible",
                         "terrible", "worst", "unacceptable", "ridiculous", "useless", "hate",
                         "scam", "rude", "never again", "fed up", "upset", "poor", "complaint")  # fmt: skip
#: Positive-sentiment words.
POSITIVE_WORDS: Final = ("thanks", "thank you", "great", "love", "awesome", "appreciate",
                         "happy", "excellent", "perfect", "wonderful", "helpful", "amazing",
                         "pleased")  # fmt: skip
_PRIORITY_CONFIDENCE: Final[Mapping[Priority, float]] = {
    "urgent": 0.9,
    "high": 0.75,
    "low": 0.7,
    "normal": 0.6,
}
_LANGUAGE: Final = re.compile(r"^[a-z]{2,3}$")


def _phrase(text: str) -> tuple[str, ...]:
    return tuple(tokens(text, stemmer=s_stem))


def _count(words: Sequence[str], phrases: Iterable[tuple[str, ...]]) -> int:
    hits = 0
    for phrase in phrases:
        n = len(phrase)
        if n and any(tuple(words[i : i + n]) == phrase for i in range(len(words) - n + 1)):
            hits += 1
    return hits


class TicketClassifier:
    """Classifies tickets: category, priority, sentiment, language, with a confidence.

    Args:
        categories: Category name → keywords (default `DEFAULT_CATEGORIES`).
        fallback: The category when nothing matches (default `"other"`).
        runner: An `AgentRunner` for the model step; without one the heuristics always answer.
        model: Model name for the classification agent (any litellm name; a scripted model ignores
            it).
        threshold: Below this confidence (0-1) the model is asked (default 0.7).
        languages: Candidate language codes (default: every list in bm25s's stopwords).
        agent_name: The classification agent's name (default `support.classify`).

    Raises:
        ConfigurationError: Empty categories, a fallback among them, a threshold outside 0-1,
            an unknown language code (each names the field).
    """

    def __init__(
        self,
        categories: Mapping[str, Iterable[str]] | None = None,
        *,
        fallback: str = "other",
        runner: AgentRunner | None = None,
        model: str = "openai/gpt-4o-mini",
        threshold: float = 0.7,
        languages: Iterable[str] | None = None,
        agent_name: str = "support.classify",
    ) -> None:
        cats = dict(DEFAULT_CATEGORIES if categories is None else categories)
        if not cats or any(not isinstance(k, str) or not k for k in cats):
            raise ConfigurationError(
                "TicketClassifier: categories must map non-empty names to keywords, e.g. "
                "{'billing': ['refund', 'invoice']}",
                details={"field": "categories"},
            )
        if fallback in cats:
            raise ConfigurationError(
                f"TicketClassifier: the fallback {fallback!r} must not be one of the categories",
                details={"field": "fallback"},
            )
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (0 <= threshold <= 1)
        ):
            raise ConfigurationError(
                f"TicketClassifier: threshold must be a fraction 0-1, got {threshold!r}",
                details={"field": "threshold"},
            )
        langs = tuple(STOPWORDS) if languages is None else tuple(languages)
        unknown = [code for code in langs if code not in STOPWORDS]
        if unknown or not langs:
            raise ConfigurationError(
                f"TicketClassifier: languages must be codes from {sorted(STOPWORDS)}, got "
                f"{unknown or langs!r}",
                details={"field": "languages"},
            )
        self.categories: dict[str, tuple[tuple[str, ...], ...]] = {
            name: tuple(p for p in (_phrase(k) for k in words) if p) for name, words in cats.items()
        }
        self.fallback = fallback
        self.runner = runner
        self.threshold = float(threshold)
        self.languages = langs
        self._priority = {level: [_phrase(w) for w in ws] for level, ws in PRIORITY_WORDS.items()}
        self._negative = [_phrase(w) for w in NEGATIVE_WORDS]
        self._positive = [_phrase(w) for w in POSITIVE_WORDS]
        names = ", ".join([*self.categories, fallback])
        self.agent: AgentSpec = define_agent(
            agent_name,
            model=model,
            instructions=(
                "Classify the customer's support ticket. category: one of "
                f"{names}. priority: low, normal, high or urgent. sentiment: negative, neutral "
                "or positive. language: the ISO 639-1 code of the ticket's language. "
                "confidence: how sure you are, from 0 to 1."
            ),
            output_type=TicketLabels,
            description="Ticket classification (contractspec.agent.support).",
        )

    def heuristics(self, text: str) -> TicketClassification:
        """The keyword-rule classification of `text` (no model).

        Raises:
            SpecValidationError: `text` is not a string.
        """
        if not isinstance(text, str):
            raise invalid("TicketClassifier", "text", f"must be a string, got {text!r}")
        words = tokens(text, stemmer=s_stem)
        counts = sorted(
            ((_count(words, phrases), name) for name, phrases in self.categories.items()),
            key=lambda c: -c[0],
        )
        best, name = counts[0]
        second = counts[1][0] if len(counts) > 1 else 0
        if best == 0:
            category, cat_conf = self.fallback, 0.3
        else:
            category, cat_conf = name, 0.5 + 0.5 * (best - second) / (best + 1)
        sentiment, sent_conf = self._sentiment(words)
        priority: Priority = "normal"
        for level in ("urgent", "high", "low"):
            if _count(words, self._priority[level]):
                priority = level
                break
        if priority == "normal" and sentiment == "negative":
            priority = "high"
        pri_conf = _PRIORITY_CONFIDENCE[priority]
        language, lang_conf = self._language(text)
        return TicketClassification(
            category=category,
            priority=priority,
            sentiment=sentiment,
            language=language,
            confidence=min(cat_conf, lang_conf),
            source="heuristic",
            field_confidence={
                "category": cat_conf,
                "priority": pri_conf,
                "sentiment": sent_conf,
                "language": lang_conf,
            },
        )

    def _sentiment(self, words: Sequence[str]) -> tuple[Sentiment, float]:
        diff = _count(words, self._positive) - _count(words, self._negative)
        if diff == 0:
            return "neutral", 0.6
        conf = min(0.95, 0.5 + 0.15 * abs(diff))
        return ("positive" if diff > 0 else "negative"), conf

    def _language(self, text: str) -> tuple[str, float]:
        words = tokens(text)
        if len(words) < 3:
            return "und", 0.2
        shares = sorted(
            ((sum(w in STOPWORDS[code] for w in words) / len(words), code) for code in self.languages),
            key=lambda s: -s[0],
        )  # fmt: skip
        best, code = shares[0]
        second = shares[1][0] if len(shares) > 1 else 0.0
        if best == 0:
            return "und", 0.2
        return code, min(0.95, 0.5 + 2 * (best - second))

    async def classify(
        self, ticket: Ticket | str, ctx: CallContext | None = None
    ) -> TicketClassification:
        """Classify a ticket: heuristics, then the model when they are unsure and a runner is set.

        Args:
            ticket: A `Ticket` or its text.
            ctx: Who asks (default: the system actor `support.classifier` in the ticket's org).

        Returns:
            A `TicketClassification` (`source` says who answered). A model naming a category that
            is not configured gets the fallback category with confidence at most 0.3.

        Raises:
            SpecValidationError: `ticket` is neither a `Ticket` nor a string.
            AgentRunError: The model step failed (including `ModelRequestsForbiddenError` when
                real model requests are blocked).
        """
        if isinstance(ticket, Ticket):
            text, org_id = ticket.text, ticket.org_id
        elif isinstance(ticket, str):
            text, org_id = ticket, None
        else:
            raise invalid("TicketClassifier", "ticket", f"must be a Ticket or text, got {ticket!r}")
        guess = self.heuristics(text)
        if self.runner is None or guess.confidence >= self.threshold:
            return guess
        call = ctx or CallContext(
            actor=Actor.system("support.classifier"), org_id=org_id, channel="agent"
        )
        result = await self.runner.run(self.agent, text, call)
        labels: TicketLabels = result.output
        category = normalize(labels.category)
        confidence = float(labels.confidence)
        if category not in self.categories and category != self.fallback:
            category, confidence = self.fallback, min(confidence, 0.3)
        language = normalize(labels.language)
        if not _LANGUAGE.match(language):
            language = "und"
        return TicketClassification(
            category=category,
            priority=labels.priority,
            sentiment=labels.sentiment,
            language=language,
            confidence=confidence,
            source="model",
            field_confidence={
                "category": confidence,
                "priority": confidence,
                "sentiment": confidence,
                "language": confidence,
                "heuristic": guess.confidence,
            },
            run_id=result.run_id,
        )
