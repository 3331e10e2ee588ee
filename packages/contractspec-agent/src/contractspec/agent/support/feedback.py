"""`SupportFeedbackLoop`: resolution rate, CSAT and deflection per category, fed back into
retrieval ranking.

```text
record(feedback)  -> FeedbackStore.put (one outcome per tenant and ticket; recording again replaces)
                  -> the tenant's document counts are recomputed: a cited document is helpful
                     when the ticket was resolved and not rated 1-2, unhelpful otherwise
                  -> KnowledgeBase.set_feedback: documents that resolve tickets rank higher
stats(org_id)     -> CategoryStats per category and "*" for all
```

Stores follow the conformance pattern: `MemoryFeedbackStore` here, `SqlFeedbackStore` in
`contractspec.agent.support.sql`; both pass the same suite.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Protocol, runtime_checkable

from contractspec.agent.support.knowledge import DEFAULT_SPACE, KnowledgeBase
from contractspec.agent.support.models import CategoryStats, SupportFeedback, invalid

__all__ = ["FeedbackStore", "MemoryFeedbackStore", "SupportFeedbackLoop", "category_stats"]


@runtime_checkable
class FeedbackStore(Protocol):
    """Where ticket outcomes are kept (one per tenant and ticket id)."""

    async def put(self, feedback: SupportFeedback) -> None:
        """Store `feedback`, replacing an earlier outcome of the same ticket in its tenant."""
        ...

    async def list(
        self,
        *,
        org_id: str | None,
        since: datetime | None = None,
        until: datetime | None = None,
        category: str | None = None,
    ) -> list[SupportFeedback]:
        """One tenant's outcomes recorded in `[since, until)`, oldest first (ties by ticket id)."""
        ...


class MemoryFeedbackStore:
    """`FeedbackStore` in a dict (tests, single-process apps)."""

    def __init__(self) -> None:
        self._items: dict[tuple[str | None, str], SupportFeedback] = {}

    async def put(self, feedback: SupportFeedback) -> None:
        """Store `feedback` (replacing the ticket's earlier outcome)."""
        if not isinstance(feedback, SupportFeedback):
            raise invalid("FeedbackStore", "feedback", f"must be SupportFeedback, got {feedback!r}")
        self._items[(feedback.org_id, feedback.ticket_id)] = feedback

    async def list(
        self,
        *,
        org_id: str | None,
        since: datetime | None = None,
        until: datetime | None = None,
        category: str | None = None,
    ) -> list[SupportFeedback]:
        """One tenant's outcomes in `[since, until)`, oldest first."""
        found = [
            f
            for (org, _), f in self._items.items()
            if org == org_id
            and (since is None or f.recorded_at >= since)
            and (until is None or f.recorded_at < until)
            and (category is None or f.category == category)
        ]
        return sorted(found, key=lambda f: (f.recorded_at, f.ticket_id))


def category_stats(items: Iterable[SupportFeedback]) -> dict[str, CategoryStats]:
    """`CategoryStats` per category, and `"*"` over all of `items` (only categories with
    outcomes appear; `"*"` always does)."""
    groups: dict[str, list[SupportFeedback]] = defaultdict(list)
    everything: list[SupportFeedback] = []
    for item in items:
        groups[item.category].append(item)
        everything.append(item)
    out = {name: _stats(name, group) for name, group in sorted(groups.items())}
    out["*"] = _stats("*", everything)
    return out


def _stats(name: str, group: list[SupportFeedback]) -> CategoryStats:
    n = len(group)
    ratings = [f.csat for f in group if f.csat is not None]

    def rate(count: int) -> float:
        return count / n if n else 0.0

    return CategoryStats(
        category=name,
        tickets=n,
        resolution_rate=rate(sum(f.resolved for f in group)),
        deflection_rate=rate(sum(f.deflected for f in group)),
        escalation_rate=rate(sum(f.escalated for f in group)),
        csat=sum(r >= 4 for r in ratings) / len(ratings) if ratings else None,
        csat_mean=sum(ratings) / len(ratings) if ratings else None,
        rated=len(ratings),
    )


class SupportFeedbackLoop:
    """Learns from ticket outcomes: reports per category and boosts documents that resolve
    tickets in the knowledge base's ranking.

    Args:
        store: A `FeedbackStore` (default `MemoryFeedbackStore()`).
        knowledge: The `KnowledgeBase` whose ranking the outcomes adjust (`None`: stats only).
        space: The knowledge space cited documents live in (default `"default"`).
    """

    def __init__(
        self,
        store: FeedbackStore | None = None,
        *,
        knowledge: KnowledgeBase | None = None,
        space: str = DEFAULT_SPACE,
    ) -> None:
        self.store: FeedbackStore = store if store is not None else MemoryFeedbackStore()
        self.knowledge = knowledge
        self.space = space
        self._boosted: dict[str | None, set[str]] = defaultdict(set)

    async def record(self, feedback: SupportFeedback) -> None:
        """Store one ticket's outcome and update its tenant's document boosts.

        Raises:
            SpecValidationError: `feedback` is not a `SupportFeedback`.
        """
        if not isinstance(feedback, SupportFeedback):
            raise invalid(
                "SupportFeedbackLoop", "feedback", f"must be SupportFeedback, got {feedback!r}"
            )
        await self.store.put(feedback)
        if self.knowledge is not None:
            await self.refresh(org_id=feedback.org_id)

    async def document_counts(self, *, org_id: str | None) -> dict[str, tuple[int, int]]:
        """`doc_id -> (helpful, unhelpful)` over this tenant's outcomes."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for item in await self.store.list(org_id=org_id):
            helpful = item.resolved and (item.csat is None or item.csat >= 3)
            for doc_id in dict.fromkeys(item.cited):
                counts[doc_id][0 if helpful else 1] += 1
        return {doc_id: (h, u) for doc_id, (h, u) in counts.items()}

    async def refresh(self, *, org_id: str | None) -> dict[str, float]:
        """Recompute this tenant's document boosts from the store (e.g. after a restart).

        Returns:
            `doc_id -> boost` for every document with outcomes.
        """
        counts = await self.document_counts(org_id=org_id)
        if self.knowledge is None:
            return {}
        for stale in self._boosted[org_id] - set(counts):
            # a re-recorded ticket no longer cites it: back to no feedback
            self.knowledge.set_feedback(
                stale, helpful=0, unhelpful=0, org_id=org_id, space=self.space
            )
        self._boosted[org_id] = set(counts)
        return {
            doc_id: self.knowledge.set_feedback(
                doc_id, helpful=h, unhelpful=u, org_id=org_id, space=self.space
            )
            for doc_id, (h, u) in counts.items()
        }

    async def stats(
        self,
        *,
        org_id: str | None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> dict[str, CategoryStats]:
        """Resolution rate, deflection, escalation and CSAT per category (and `"*"`), for the
        outcomes recorded in `[since, until)`."""
        return category_stats(await self.store.list(org_id=org_id, since=since, until=until))
