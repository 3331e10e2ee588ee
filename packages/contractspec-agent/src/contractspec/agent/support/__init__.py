"""The support toolkit: classify tickets, answer them from a per-tenant knowledge base with
citations, write replies that cannot break policy, escalate when unsure, and learn from outcomes.

Install with `pip install 'contractspec-agent[support]'` (BM25 by `bm25s`).

```python
from contractspec.agent.support import (
    AutoResponder, KnowledgeBase, ResponsePolicy, SupportFeedbackLoop, Ticket,
    TicketClassifier, TicketResolver, create_support_tools,
)
```

```text
Ticket -> TicketClassifier (heuristics, then a model)   -> category, priority, sentiment, language
       -> TicketResolver (KnowledgeBase.search in the ticket's tenant -> cited draft -> confidence)
       -> AutoResponder (tone; ResponsePolicy checked in code) -> ready | blocked | escalated
       -> SupportFeedbackLoop.record(outcome) -> stats per category; boosts in the ranking
```

Every model step is an agent run through `AgentRunner` (so offline tests use
`contractspec.agent.testing`'s scripted models); without a runner each component works on its
heuristics alone. `create_support_tools()` gives any agent these capabilities as gateway tools.
SQL storage of outcomes lives in `contractspec.agent.support.sql`.
"""

from __future__ import annotations

from contractspec.agent.support._text import STOPWORDS, s_stem
from contractspec.agent.support.classifier import DEFAULT_CATEGORIES, TicketClassifier
from contractspec.agent.support.embeddings import Embedder, LiteLLMEmbedder
from contractspec.agent.support.feedback import (
    FeedbackStore,
    MemoryFeedbackStore,
    SupportFeedbackLoop,
    category_stats,
)
from contractspec.agent.support.knowledge import DEFAULT_SPACE, KnowledgeBase
from contractspec.agent.support.models import (
    CategoryStats,
    Citation,
    Document,
    DraftAnswer,
    PolicyViolation,
    ReplyDraft,
    ReplyText,
    Resolution,
    SearchHit,
    SupportFeedback,
    Ticket,
    TicketClassification,
    TicketLabels,
)
from contractspec.agent.support.resolver import TicketResolver
from contractspec.agent.support.responder import TONES, AutoResponder, ResponsePolicy, Tone
from contractspec.agent.support.tools import create_support_tools

__all__ = [
    "DEFAULT_CATEGORIES",
    "DEFAULT_SPACE",
    "STOPWORDS",
    "TONES",
    "AutoResponder",
    "CategoryStats",
    "Citation",
    "Document",
    "DraftAnswer",
    "Embedder",
    "FeedbackStore",
    "KnowledgeBase",
    "LiteLLMEmbedder",
    "MemoryFeedbackStore",
    "PolicyViolation",
    "ReplyDraft",
    "ReplyText",
    "Resolution",
    "ResponsePolicy",
    "SearchHit",
    "SupportFeedback",
    "SupportFeedbackLoop",
    "Ticket",
    "TicketClassification",
    "TicketClassifier",
    "TicketLabels",
    "TicketResolver",
    "Tone",
    "category_stats",
    "create_support_tools",
    "s_stem",
]
