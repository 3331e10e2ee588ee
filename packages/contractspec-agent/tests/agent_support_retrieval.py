"""Retrieval evaluation of the support KnowledgeBase on a real, labelled help-centre FAQ.

Data: `data/swedish_construction_faq/faq-en.jsonl`, the English half of the Swedish Construction FAQ
by Zaragoza AB (CC BY 4.0; PyPI package `zaragoza-construction-faq` 1.2.1; see the README beside
it). 503 question/answer pairs of a construction company's customer FAQ in 39 categories.

Task (FAQ retrieval): the corpus is the 503 answers (no titles: the questions are the queries);
each distinct question is a query whose relevant documents are the answers given to it (497
queries: 6 questions occur twice, each with two answers). Labels are the dataset's own
question-answer pairing, graded 1.

Metrics (Järvelin and Kekäläinen 2002 for nDCG): nDCG@10 with binary gains,
`DCG = sum rel_i / log2(i + 1)` over ranks 1-10, divided by the ideal DCG; recall@10 = share of a
query's relevant answers in the top 10; both averaged over queries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from attrs import define

from contractspec.agent.support import Document, KnowledgeBase

__all__ = [
    "DATA",
    "Faq",
    "Scores",
    "evaluate",
    "load_faq",
    "ndcg_at",
    "ours",
    "plain_bm25s",
    "recall_at",
]

DATA = Path(__file__).parent / "data" / "swedish_construction_faq" / "faq-en.jsonl"


@define(frozen=True)
class Faq:
    """The corpus, the queries and their relevant document ids."""

    documents: tuple[Document, ...]
    queries: dict[str, str]
    relevant: dict[str, frozenset[str]]


@define(frozen=True)
class Scores:
    """Mean nDCG@10 and recall@10 over the queries."""

    ndcg10: float
    recall10: float
    queries: int


def load_faq(path: Path = DATA) -> Faq:
    """The vendored FAQ as documents (answers) and queries (distinct questions)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    docs = tuple(Document(id=r["id"], text=r["a"], category=r["category"]) for r in rows)
    by_question: dict[str, set[str]] = {}
    for r in rows:
        by_question.setdefault(r["q"], set()).add(r["id"])
    queries: dict[str, str] = {}
    relevant: dict[str, frozenset[str]] = {}
    for i, (question, ids) in enumerate(by_question.items()):
        qid = f"q{i:03d}"
        queries[qid] = question
        relevant[qid] = frozenset(ids)
    return Faq(docs, queries, relevant)


def ndcg_at(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    """nDCG@k with binary gains."""
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if d in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked: Sequence[str], relevant: frozenset[str], k: int = 10) -> float:
    """Share of the relevant documents in the top k."""
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


async def evaluate(faq: Faq, rank: Callable[[str], Awaitable[list[str]]]) -> Scores:
    """Mean nDCG@10 and recall@10 of `rank(query) -> document ids, best first`."""
    ndcg = recall = 0.0
    for qid, text in faq.queries.items():
        ranked = await rank(text)
        ndcg += ndcg_at(ranked, faq.relevant[qid])
        recall += recall_at(ranked, faq.relevant[qid])
    n = len(faq.queries)
    return Scores(ndcg / n, recall / n, n)


async def ours(
    docs: Iterable[Document], **options: object
) -> Callable[[str], Awaitable[list[str]]]:
    """A ranking function over our `KnowledgeBase` (defaults unless `options` say otherwise)."""
    kb = KnowledgeBase(**options)  # type: ignore[arg-type]  # options are the caller's to get right
    await kb.add(docs, org_id="eval")

    async def rank(query: str) -> list[str]:
        return [h.document.id for h in await kb.search(query, org_id="eval", limit=10)]

    return rank


def plain_bm25s(docs: Sequence[Document]) -> Callable[[str], Awaitable[list[str]]]:
    """A ranking function over bm25s with its defaults: `bm25s.tokenize` (English stopwords, no
    stemmer), `BM25()` (lucene, k1=1.5, b=0.75)."""
    import bm25s  # type: ignore[import-untyped]  # bm25s ships no type information

    ids = [d.id for d in docs]
    retriever = bm25s.BM25()
    corpus = bm25s.tokenize([d.text for d in docs], return_ids=False, show_progress=False)
    retriever.index(corpus, show_progress=False)
    k = min(10, len(ids))

    async def rank(query: str) -> list[str]:
        q = bm25s.tokenize([query], return_ids=False, show_progress=False)
        found, scores = retriever.retrieve(q, k=k, show_progress=False)
        return [ids[int(i)] for i, s in zip(found[0], scores[0], strict=True) if s > 0]

    return rank
