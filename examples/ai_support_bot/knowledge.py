"""A small knowledge base and a keyword search over it.

Scoring is deliberately simple for six articles: words are cut to their first five letters (a
crude stem: "charged" and "charges" meet), and a shared term counts twice in a title, once in
the text.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

__all__ = ["ARTICLES", "Article", "search"]


class Article(BaseModel):
    """One help-center article; `id` is what answers cite."""

    id: str
    title: str
    category: str
    text: str


ARTICLES: tuple[Article, ...] = (
    Article(id="kb-101", title="Refund timelines", category="billing",
            text="Refunds are issued to the original payment method within 5 business days of approval."),
    Article(id="kb-102", title="Double charges", category="billing",
            text="A double charge is usually a pending authorisation that disappears within 3 days. "
                 "If both charges settle, we refund the duplicate."),
    Article(id="kb-201", title="Shipping times", category="shipping",
            text="Standard shipping takes 3 to 5 business days; express shipping takes 1 to 2."),
    Article(id="kb-202", title="Lost parcels", category="shipping",
            text="If tracking shows no movement for 7 days, we open an investigation and reship "
                 "or refund the order."),
    Article(id="kb-301", title="Reset your password", category="account",
            text="Use 'Forgot password' on the sign-in page; the reset link is valid for 1 hour."),
    Article(id="kb-302", title="Close your account", category="account",
            text="Accounts can be closed from Settings > Privacy; closure is final after 30 days."),
)  # fmt: skip

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "the",
        "is",
        "my",
        "to",
        "of",
        "for",
        "in",
        "on",
        "it",
        "i",
        "was",
        "be",
        "we",
        "you",
        "your",
        "our",
        "not",
    ]
)


def _terms(text: str) -> set[str]:
    return {w[:5] for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 2}


def search(query: str, limit: int = 2) -> list[Article]:
    """Articles sharing the most terms with `query` (ties by id), only those sharing at least one."""
    wanted = _terms(query)
    scored = [
        (2 * len(wanted & _terms(a.title)) + len(wanted & _terms(a.text)), a.id, a)
        for a in ARTICLES
    ]
    hits = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))
    return [a for _, _, a in hits[:limit]]
