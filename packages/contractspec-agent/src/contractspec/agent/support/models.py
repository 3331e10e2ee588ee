"""The support toolkit's value objects: tickets, documents, citations, classifications,
resolutions, reply drafts and feedback; plus the pydantic models the toolkit's agents answer with.

Inputs you build (`Ticket`, `Document`, `SupportFeedback`) check their fields when constructed and
raise `SpecValidationError` naming the field and the fix; the model-facing answers
(`TicketLabels`, `DraftAnswer`, `ReplyText`) are pydantic models used as agents' `output_type`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from attrs import define, field
from pydantic import BaseModel, Field

from contractspec.core import SpecValidationError

__all__ = [
    "PRIORITIES",
    "SENTIMENTS",
    "CategoryStats",
    "Citation",
    "Document",
    "DraftAnswer",
    "PolicyViolation",
    "Priority",
    "ReplyDraft",
    "ReplyText",
    "Resolution",
    "SearchHit",
    "Sentiment",
    "SupportFeedback",
    "Ticket",
    "TicketClassification",
    "TicketLabels",
]

Priority = Literal["low", "normal", "high", "urgent"]
Sentiment = Literal["negative", "neutral", "positive"]
#: Priorities, lowest first.
PRIORITIES: tuple[Priority, ...] = ("low", "normal", "high", "urgent")
#: Sentiments.
SENTIMENTS: tuple[Sentiment, ...] = ("negative", "neutral", "positive")

_ID_MAX = 200


def invalid(what: str, name: str, message: str) -> SpecValidationError:
    """A `SpecValidationError` naming `what.name` (the field) and the fix."""
    return SpecValidationError(
        f"{what}: {name} {message}",
        errors=[{"field": name, "loc": [name], "msg": message, "type": "value_error"}],
        details={"field": name},
    )


def _id(what: str, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip() or len(value) > _ID_MAX:
        raise invalid(
            what, name, f"must be a non-empty string of at most {_ID_MAX} characters, got {value!r}"
        )
    if _UNSTORABLE.search(value):
        raise invalid(
            what, name, f"must not hold a NUL character or a lone surrogate (no store keeps them), "
            f"got {value!r}",
        )  # fmt: skip


# Characters no store keeps: NUL (PostgreSQL text and jsonb) and lone surrogates (not UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _text(what: str, name: str, value: Any, *, empty: bool = True) -> None:
    if not isinstance(value, str) or (not empty and not value.strip()):
        need = "a string" if empty else "a non-empty string"
        raise invalid(what, name, f"must be {need}, got {value!r}")


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _org(what: str, value: Any) -> None:
    if value is not None:
        _id(what, "org_id", value)


@define(frozen=True)
class Ticket:
    """A customer's support request.

    Attributes:
        id: Your help desk's ticket id.
        text: What the customer wrote (subject and body).
        org_id: The tenant the ticket belongs to (`None` for a single-tenant app).
        customer_id: Who wrote it (optional).
        order_total: The amount of the order it concerns, in your currency's units (optional);
            `AutoResponder` counts a "full refund" promise as this amount.
        metadata: Anything else (channel, locale, ...), JSON-serialisable.

    Raises:
        SpecValidationError: An empty id or a non-string text (the error names the field).
    """

    id: str
    text: str
    org_id: str | None = None
    customer_id: str | None = None
    order_total: float | None = None
    metadata: Mapping[str, Any] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        _id("Ticket", "id", self.id)
        _text("Ticket", "text", self.text)
        _org("Ticket", self.org_id)
        if self.order_total is not None and (
            isinstance(self.order_total, bool)
            or not isinstance(self.order_total, int | float)
            or not self.order_total >= 0
        ):
            raise invalid(
                "Ticket", "order_total", f"must be a number >= 0 or None, got {self.order_total!r}"
            )


@define(frozen=True)
class Document:
    """One knowledge-base article (or passage); `id` is what answers cite.

    Attributes:
        id: Stable source id, unique within its tenant's knowledge space.
        text: The body that is searched and quoted.
        title: Optional title (weighted higher than the body when searching).
        category: Optional category (`billing`, ...); searches may filter on it.
        url: Optional link shown with citations.
        metadata: Anything else, JSON-serialisable.

    Raises:
        SpecValidationError: An empty id or text, or a non-string title/category/url.
    """

    id: str
    text: str
    title: str = ""
    category: str | None = None
    url: str | None = None
    metadata: Mapping[str, Any] = field(factory=dict)

    def __attrs_post_init__(self) -> None:
        _id("Document", "id", self.id)
        _text("Document", "text", self.text, empty=False)
        _text("Document", "title", self.title)
        if self.category is not None:
            _id("Document", "category", self.category)
        if self.url is not None:
            _text("Document", "url", self.url)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Document:
        """Build from a mapping (`{"id", "text", "title"?, "category"?, "url"?, "metadata"?}`).

        Raises:
            SpecValidationError: A missing or bad field (named in the error).
        """
        if not isinstance(data, Mapping):
            raise invalid("Document", "document", f"must be a Document or a mapping, got {data!r}")
        unknown = set(data) - {"id", "text", "title", "category", "url", "metadata"}
        if unknown:
            raise invalid(
                "Document", sorted(unknown)[0], "is not a Document field (id, text, title, "
                "category, url, metadata)",
            )  # fmt: skip
        for required in ("id", "text"):
            if required not in data:
                raise invalid("Document", required, "is required")
        return cls(
            id=data["id"],
            text=data["text"],
            title=data.get("title", ""),
            category=data.get("category"),
            url=data.get("url"),
            metadata=dict(data.get("metadata") or {}),
        )


@define(frozen=True)
class Citation:
    """Where a statement comes from.

    Attributes:
        source_id: The cited `Document.id`.
        title: Its title.
        url: Its link, if any.
        snippet: The start of its text (at most 200 characters).
    """

    source_id: str
    title: str = ""
    url: str | None = None
    snippet: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "source_id": self.source_id,
            "title": self.title,
            "url": self.url,
            "snippet": self.snippet,
        }


@define(frozen=True)
class SearchHit:
    """One retrieved document.

    Attributes:
        document: The document.
        score: Final ranking score (BM25, times the feedback boost; RRF when embeddings fuse).
        bm25: The plain BM25 score (0 when only the embedding matched).
        boost: The feedback multiplier applied (1.0 without feedback).
        coverage: Fraction (0-1) of the query's distinct terms the document contains.
    """

    document: Document
    score: float
    bm25: float
    boost: float = 1.0
    coverage: float = 0.0

    @property
    def citation(self) -> Citation:
        """The `Citation` for this hit."""
        d = self.document
        return Citation(d.id, d.title, d.url, d.text[:200])


@define(frozen=True)
class TicketClassification:
    """What a ticket is about, how urgent, how the customer feels, and in which language.

    Attributes:
        category: One of the classifier's categories.
        priority: `low`, `normal`, `high` or `urgent`.
        sentiment: `negative`, `neutral` or `positive`.
        language: ISO 639-1 code (`en`, `de`, ...), or `und` when unknown.
        confidence: Fraction 0-1: the lowest of the category and language confidences.
        source: `heuristic` (keyword rules) or `model` (the classification agent answered).
        field_confidence: Confidence (0-1) per field.
        run_id: The agent run when `source == "model"`.
    """

    category: str
    priority: Priority
    sentiment: Sentiment
    language: str
    confidence: float
    source: Literal["heuristic", "model"] = "heuristic"
    field_confidence: Mapping[str, float] = field(factory=dict)
    run_id: str | None = None


@define(frozen=True)
class Resolution:
    """What `TicketResolver` made of a ticket.

    Attributes:
        ticket_id: The ticket.
        answer: The drafted answer (`""` when nothing was found).
        citations: Sources the answer relies on (every one was retrieved for this ticket).
        confidence: Fraction 0-1.
        escalated: Handed to a person (confidence below the threshold, nothing found, or an
            answer citing sources that were not retrieved).
        reason: Why it was escalated (`no_match`, `low_confidence`, `uncited`,
            `unknown_citation`), `""` when not.
        hits: What retrieval returned, best first.
        run_id: The drafting agent's run, when a model drafted the answer.
    """

    ticket_id: str
    answer: str
    citations: tuple[Citation, ...]
    confidence: float
    escalated: bool
    reason: str = ""
    hits: tuple[SearchHit, ...] = ()
    run_id: str | None = None

    @property
    def source_ids(self) -> tuple[str, ...]:
        """The cited document ids."""
        return tuple(c.source_id for c in self.citations)


@define(frozen=True)
class PolicyViolation:
    """One breach of a `ResponsePolicy` found in a reply.

    Attributes:
        rule: `refund_limit`, `refund_amount_unknown`, `banned_claim` or `max_length`.
        message: What is wrong, for the person reviewing the reply.
        excerpt: The offending text (a sentence or the matched claim).
        value: The amount (refunds) or length found, when numeric.
    """

    rule: str
    message: str
    excerpt: str = ""
    value: float | None = None


@define(frozen=True)
class ReplyDraft:
    """A reply to a customer and whether it may go out.

    Attributes:
        ticket_id: The ticket.
        text: The reply.
        tone: The tone it was written in.
        status: `ready` (passed every policy check), `blocked` (a check failed: a person must
            rewrite it) or `escalated` (the ticket went to a person; `text` is a holding reply).
        violations: Policy breaches (empty when `ready`).
        citations: Sources the reply relies on.
        run_id: The writing agent's run, when a model wrote it.
    """

    ticket_id: str
    text: str
    tone: str
    status: Literal["ready", "blocked", "escalated"]
    violations: tuple[PolicyViolation, ...] = ()
    citations: tuple[Citation, ...] = ()
    run_id: str | None = None

    @property
    def sendable(self) -> bool:
        """Whether the reply may be sent without a person (`status == "ready"`)."""
        return self.status == "ready"


@define(frozen=True)
class SupportFeedback:
    """The outcome of one ticket, which the feedback loop learns from.

    Attributes:
        ticket_id: The ticket (one outcome per ticket and tenant: recording again replaces it).
        category: The ticket's category.
        resolved: Whether the customer's problem was solved.
        escalated: Whether a person had to step in (a ticket resolved without one is deflected).
        csat: Customer satisfaction rating 1-5, or `None` when not rated.
        cited: Document ids the answer cited.
        org_id: The tenant.
        recorded_at: When (UTC; default now).

    Raises:
        SpecValidationError: An empty id or category, a CSAT outside 1-5, a non-string cited id.
    """

    ticket_id: str
    category: str
    resolved: bool
    escalated: bool = False
    csat: int | None = None
    cited: tuple[str, ...] = field(default=(), converter=_str_tuple)
    org_id: str | None = None
    recorded_at: datetime = field(factory=lambda: datetime.now(UTC))

    def __attrs_post_init__(self) -> None:
        _id("SupportFeedback", "ticket_id", self.ticket_id)
        _id("SupportFeedback", "category", self.category)
        _org("SupportFeedback", self.org_id)
        for name in ("resolved", "escalated"):
            if not isinstance(getattr(self, name), bool):
                raise invalid("SupportFeedback", name, "must be True or False")
        if self.csat is not None and (
            isinstance(self.csat, bool) or not isinstance(self.csat, int) or not 1 <= self.csat <= 5
        ):
            raise invalid("SupportFeedback", "csat", f"must be 1-5 or None, got {self.csat!r}")
        for source in self.cited:
            _id("SupportFeedback", "cited", source)
        if not isinstance(self.recorded_at, datetime) or self.recorded_at.tzinfo is None:
            raise invalid(
                "SupportFeedback", "recorded_at", "must be a timezone-aware datetime (UTC)"
            )

    @property
    def deflected(self) -> bool:
        """Resolved without a person."""
        return self.resolved and not self.escalated


@define(frozen=True)
class CategoryStats:
    """Support outcomes of one category (or `"*"` for all).

    Attributes:
        category: The category.
        tickets: Tickets with a recorded outcome.
        resolution_rate: Fraction resolved (0-1).
        deflection_rate: Fraction resolved without a person (0-1).
        escalation_rate: Fraction a person stepped in (0-1).
        csat: CSAT as the fraction of ratings that are 4 or 5 (the usual CSAT definition), or
            `None` without ratings.
        csat_mean: Mean rating (1-5), or `None`.
        rated: Tickets with a rating.
    """

    category: str
    tickets: int
    resolution_rate: float
    deflection_rate: float
    escalation_rate: float
    csat: float | None
    csat_mean: float | None
    rated: int


class TicketLabels(BaseModel):
    """The classification agent's answer (structured output)."""

    category: str = Field(description="One of the categories listed in the instructions.")
    priority: Priority
    sentiment: Sentiment
    language: str = Field(description="ISO 639-1 code of the ticket's language, e.g. 'en'.")
    confidence: float = Field(ge=0, le=1)


class DraftAnswer(BaseModel):
    """The resolver agent's answer: text, the source ids it relies on, and its confidence."""

    answer: str
    citations: list[str] = Field(description="Ids of the provided sources the answer uses.")
    confidence: float = Field(ge=0, le=1)


class ReplyText(BaseModel):
    """The reply-writing agent's answer."""

    body: str
