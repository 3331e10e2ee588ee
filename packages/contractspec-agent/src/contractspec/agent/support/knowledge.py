"""`KnowledgeBase`: BM25 retrieval (bm25s) in knowledge spaces per tenant, with citations, feedback
boosts and optional embeddings.

```text
add(documents, org_id=, space=)      -> the space (org_id, space) is re-indexed on the next search
search(query, org_id=, space=)       -> BM25 over that space only (never another tenant's)
                                        x feedback boost per document
                                        (+ embeddings fused by reciprocal rank fusion, if set)
```

Ranking: Okapi BM25 as bm25s implements it (`method="lucene"`, `k1=1.5`, `b=0.75` by default),
over tokens that are NFKC-normalised and case-folded, split with bm25s's token pattern, without
stopwords (bm25s's English-plus list by default) and stemmed (Harman's S-stemmer by default; pass
PyStemmer's `Stemmer.Stemmer("english").stemWord` for Snowball). A document's title counts
`title_weight` times. The feedback boost of a document is
`1 + feedback_weight * (helpful - unhelpful) / (helpful + unhelpful + feedback_prior)`, between
`1 - feedback_weight` and `1 + feedback_weight`, from the outcomes of tickets that cited it
(`SupportFeedbackLoop` feeds it). With an `Embedder`, the BM25 ranking and the cosine-similarity
ranking are fused by reciprocal rank fusion (Cormack, Clarke and Buettcher 2009:
`sum 1 / (rrf_k + rank)`, `rrf_k = 60`) before the boost.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import bm25s  # type: ignore[import-untyped]  # bm25s ships no type information
import numpy as np
from attrs import define, field

from contractspec.agent.support._text import Stemmer, s_stem, stopword_list, tokens
from contractspec.agent.support.embeddings import Embedder
from contractspec.agent.support.models import Document, SearchHit, invalid
from contractspec.core import ConfigurationError

__all__ = ["DEFAULT_SPACE", "KnowledgeBase"]

#: The knowledge space used when none is named.
DEFAULT_SPACE = "default"
_MAX_LIMIT = 1000


@define
class _Space:
    docs: dict[str, Document] = field(factory=dict)
    terms: dict[str, frozenset[str]] = field(factory=dict)
    vectors: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = field(factory=dict)
    helpful: dict[str, int] = field(factory=dict)
    unhelpful: dict[str, int] = field(factory=dict)
    order: list[str] = field(factory=list)
    index: bm25s.BM25 | None = None
    dirty: bool = True
    # per position in `order`, rebuilt lazily: feedback multipliers and categories
    boosts: np.ndarray[Any, np.dtype[np.float64]] | None = None
    categories: np.ndarray[Any, np.dtype[np.object_]] | None = None


def _check_org(org_id: Any) -> None:
    if org_id is not None and (not isinstance(org_id, str) or not org_id.strip()):
        raise invalid(
            "KnowledgeBase", "org_id", f"must be a non-empty string or None, got {org_id!r}"
        )


def _check_space(space: Any) -> None:
    if not isinstance(space, str) or not space.strip():
        raise invalid("KnowledgeBase", "space", f"must be a non-empty string, got {space!r}")


class KnowledgeBase:
    """Help-centre documents per tenant, searched with BM25 and cited by id.

    Every method takes `org_id` (the tenant; `None` is a tenant of its own, for single-tenant
    apps) and `space` (a knowledge space within the tenant, default `"default"`). A search reads
    one `(org_id, space)` only, so a tenant never retrieves another's documents.

    Args:
        stopwords: A language code (`"en"`, `"de"`, ... as in bm25s), a list of words, or `None`.
        stemmer: `word -> stem` (default Harman's S-stemmer), or `None`.
        title_weight: How many times a title's terms count (0 ignores titles; default 2).
        k1: BM25 term-frequency saturation (default 1.5).
        b: BM25 length normalisation, 0-1 (default 0.75).
        method: bm25s variant: `lucene` (default), `robertson`, `atire`, `bm25l`, `bm25+`.
        embedder: Optional `Embedder`; its ranking is fused with BM25 (RRF).
        rrf_k: The RRF constant (default 60).
        feedback_weight: Largest relative change feedback makes to a score, 0-1 (default 0.5).
        feedback_prior: Pseudo-count smoothing the feedback ratio (default 2).

    Raises:
        ConfigurationError: An option out of range (the error names it).
    """

    def __init__(
        self,
        *,
        stopwords: str | Iterable[str] | None = "en",
        stemmer: Stemmer | None = s_stem,
        title_weight: int = 2,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        embedder: Embedder | None = None,
        rrf_k: int = 60,
        feedback_weight: float = 0.5,
        feedback_prior: float = 2.0,
    ) -> None:
        checks: tuple[tuple[str, bool, str], ...] = (
            ("title_weight", _int_at_least(title_weight, 0), "an integer >= 0"),
            ("k1", _number(k1) and k1 >= 0, "a number >= 0"),
            ("b", _number(b) and 0 <= b <= 1, "a number between 0 and 1"),
            ("rrf_k", _int_at_least(rrf_k, 1), "an integer >= 1"),
            ("feedback_weight", _number(feedback_weight) and 0 <= feedback_weight < 1,
             "a fraction in [0, 1)"),
            ("feedback_prior", _number(feedback_prior) and feedback_prior > 0, "a number > 0"),
            ("method", method in ("lucene", "robertson", "atire", "bm25l", "bm25+"),
             "one of lucene, robertson, atire, bm25l, bm25+"),
            ("embedder", embedder is None or isinstance(embedder, Embedder),
             "an Embedder (async embed(texts) -> vectors) or None"),
            ("stemmer", stemmer is None or callable(stemmer), "a function word -> stem or None"),
        )  # fmt: skip
        for name, ok, need in checks:
            if not ok:
                raise ConfigurationError(
                    f"KnowledgeBase: {name} must be {need}", details={"field": name}
                )
        self.stopwords = stopword_list(stopwords)
        self.stemmer = stemmer
        self.title_weight = title_weight
        self.k1 = float(k1)
        self.b = float(b)
        self.method = method
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.feedback_weight = float(feedback_weight)
        self.feedback_prior = float(feedback_prior)
        self._spaces: dict[tuple[str | None, str], _Space] = {}

    # -- documents --------------------------------------------------------------------------------

    def analyze(self, text: str) -> list[str]:
        """The terms `text` is indexed and searched by (normalised, stopwords out, stemmed)."""
        return tokens(text, stopwords=self.stopwords, stemmer=self.stemmer)

    def _space(self, org_id: str | None, space: str, *, create: bool = False) -> _Space | None:
        _check_org(org_id)
        _check_space(space)
        key = (org_id, space)
        found = self._spaces.get(key)
        if found is None and create:
            found = self._spaces[key] = _Space()
        return found

    async def add(
        self,
        documents: Iterable[Document | Mapping[str, Any]],
        *,
        org_id: str | None = None,
        space: str = DEFAULT_SPACE,
    ) -> int:
        """Add documents to a tenant's space; a document with an existing id replaces it.

        Args:
            documents: `Document`s or mappings with their fields.
            org_id: The tenant.
            space: The knowledge space.

        Returns:
            How many documents were added or replaced.

        Raises:
            SpecValidationError: A bad document (the error names the field) or duplicate ids in
                one call; nothing is added then.
        """
        docs = [d if isinstance(d, Document) else Document.from_dict(d) for d in documents]
        ids = [d.id for d in docs]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise invalid("KnowledgeBase.add", "id", f"{dup!r} appears twice in one call")
        target = self._space(org_id, space, create=True)
        assert target is not None
        vectors: list[list[float]] = []
        if self.embedder is not None and docs:
            vectors = await self.embedder.embed([f"{d.title}\n{d.text}" for d in docs])
            if len(vectors) != len(docs):
                raise ConfigurationError(
                    f"the embedder returned {len(vectors)} vectors for {len(docs)} documents",
                    details={"field": "embedder"},
                )
        for i, doc in enumerate(docs):
            if doc.id not in target.docs:
                target.order.append(doc.id)
            target.docs[doc.id] = doc
            target.terms[doc.id] = frozenset(self.analyze(f"{doc.title} {doc.text}"))
            if vectors:
                target.vectors[doc.id] = _unit(vectors[i])
        target.dirty = True
        return len(docs)

    async def remove(
        self, ids: Iterable[str], *, org_id: str | None = None, space: str = DEFAULT_SPACE
    ) -> int:
        """Remove documents by id from a tenant's space; returns how many existed."""
        target = self._space(org_id, space)
        if target is None:
            return 0
        removed = 0
        for doc_id in set(ids):
            if target.docs.pop(doc_id, None) is not None:
                removed += 1
                target.terms.pop(doc_id, None)
                target.vectors.pop(doc_id, None)
                target.order.remove(doc_id)
        target.dirty = target.dirty or removed > 0
        return removed

    def get(
        self, doc_id: str, *, org_id: str | None = None, space: str = DEFAULT_SPACE
    ) -> Document | None:
        """The document with `doc_id` in this tenant's space, or `None`."""
        target = self._space(org_id, space)
        return None if target is None else target.docs.get(doc_id)

    def documents(self, *, org_id: str | None = None, space: str = DEFAULT_SPACE) -> list[Document]:
        """This tenant's documents in `space`, in the order they were first added."""
        target = self._space(org_id, space)
        return [] if target is None else [target.docs[i] for i in target.order]

    def spaces(self, *, org_id: str | None = None) -> list[str]:
        """The knowledge spaces this tenant has, sorted."""
        _check_org(org_id)
        return sorted(s for (org, s) in self._spaces if org == org_id)

    # -- feedback ---------------------------------------------------------------------------------

    def set_feedback(
        self,
        doc_id: str,
        *,
        helpful: int,
        unhelpful: int,
        org_id: str | None = None,
        space: str = DEFAULT_SPACE,
    ) -> float:
        """Set the outcome counts of tickets that cited `doc_id`; returns its new boost.

        Raises:
            SpecValidationError: Negative counts.
        """
        for name, value in (("helpful", helpful), ("unhelpful", unhelpful)):
            if not _int_at_least(value, 0):
                raise invalid("KnowledgeBase.set_feedback", name, "must be an integer >= 0")
        target = self._space(org_id, space, create=True)
        assert target is not None
        target.helpful[doc_id] = helpful
        target.unhelpful[doc_id] = unhelpful
        target.boosts = None
        return self._boost(target, doc_id)

    def boost(self, doc_id: str, *, org_id: str | None = None, space: str = DEFAULT_SPACE) -> float:
        """The feedback multiplier of `doc_id` (1.0 without feedback)."""
        target = self._space(org_id, space)
        return 1.0 if target is None else self._boost(target, doc_id)

    def _boost(self, target: _Space, doc_id: str) -> float:
        h = target.helpful.get(doc_id, 0)
        u = target.unhelpful.get(doc_id, 0)
        return 1.0 + self.feedback_weight * (h - u) / (h + u + self.feedback_prior)

    # -- search -----------------------------------------------------------------------------------

    def _reindex(self, target: _Space) -> None:
        corpus = []
        for doc_id in target.order:
            doc = target.docs[doc_id]
            corpus.append(self.analyze(doc.title) * self.title_weight + self.analyze(doc.text))
        target.index = None
        target.boosts = None
        target.categories = np.array([target.docs[i].category for i in target.order], dtype=object)
        if any(corpus):  # bm25s divides by the mean length: an all-empty corpus has none
            target.index = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
            target.index.index(corpus, show_progress=False)
        target.dirty = False

    async def search(
        self,
        query: str,
        *,
        org_id: str | None = None,
        space: str = DEFAULT_SPACE,
        limit: int = 5,
        category: str | None = None,
    ) -> list[SearchHit]:
        """The best documents for `query` in this tenant's space, best first.

        Only documents sharing at least one term with the query are returned (or, with an
        embedder, also those among the nearest by cosine similarity).

        Args:
            query: The question or ticket text.
            org_id: The tenant (only its documents are searched).
            space: The knowledge space.
            limit: At most this many hits (1-1000).
            category: Only documents of this category.

        Returns:
            `SearchHit`s (score, BM25 score, feedback boost, term coverage); ties keep the order
            documents were added in.

        Raises:
            SpecValidationError: A non-string query, a bad org id, space or limit.
        """
        if not isinstance(query, str):
            raise invalid("KnowledgeBase.search", "query", f"must be a string, got {query!r}")
        if not _int_at_least(limit, 1) or limit > _MAX_LIMIT:
            raise invalid(
                "KnowledgeBase.search", "limit", f"must be an integer 1-{_MAX_LIMIT}, got {limit!r}"
            )
        target = self._space(org_id, space)
        if target is None or not target.docs:
            return []
        query_vector = None
        if self.embedder is not None and target.vectors and query.strip():
            # embed first: nothing below awaits, so the space cannot change under the ranking
            (vector,) = await self.embedder.embed([query])
            query_vector = _unit(vector)
        if target.dirty:
            self._reindex(target)
        terms = self.analyze(query)
        wanted = frozenset(terms)
        n = len(target.order)
        bm25 = np.zeros(n, dtype=np.float64)
        if terms and target.index is not None:
            bm25 = np.asarray(target.index.get_scores(terms), dtype=np.float64)
        assert target.categories is not None
        allowed = np.ones(n, dtype=bool) if category is None else target.categories == category
        scores = bm25 if category is None else np.where(allowed, bm25, 0.0)
        if query_vector is not None:
            scores = self._fuse(target, query_vector, scores, allowed, limit)
        if target.boosts is None:
            target.boosts = np.array([self._boost(target, i) for i in target.order])
        boosts = target.boosts
        final = scores * boosts
        candidates = np.flatnonzero(final > 0)
        # stable: equal scores keep insertion order (candidates are in insertion order)
        order = candidates[np.argsort(-final[candidates], kind="stable")]
        ranked = [int(i) for i in order[:limit]]
        hits = []
        for i in ranked:
            doc_id = target.order[i]
            coverage = len(wanted & target.terms[doc_id]) / len(wanted) if wanted else 0.0
            hits.append(
                SearchHit(
                    target.docs[doc_id],
                    float(final[i]),
                    float(bm25[i]),
                    float(boosts[i]),
                    coverage,
                )
            )
        return hits

    def _fuse(
        self,
        target: _Space,
        q: np.ndarray[Any, np.dtype[np.float64]],
        bm25: np.ndarray[Any, np.dtype[np.float64]],
        allowed: np.ndarray[Any, np.dtype[np.bool_]],
        limit: int,
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        dense = np.full(len(target.order), -np.inf)
        for i, doc_id in enumerate(target.order):
            vec = target.vectors.get(doc_id)
            if vec is not None and allowed[i] and vec.shape == q.shape:
                dense[i] = float(vec @ q)
        depth = max(limit * 4, 20)
        fused = np.zeros(len(target.order))
        lexical = [int(i) for i in np.argsort(-bm25, kind="stable") if bm25[i] > 0][:depth]
        nearest = [int(i) for i in np.argsort(-dense, kind="stable") if dense[i] > 0][:depth]
        for ranking in (lexical, nearest):
            for rank, i in enumerate(ranking, start=1):
                fused[i] += 1.0 / (self.rrf_k + rank)
        return fused


def _unit(vector: Sequence[float]) -> np.ndarray[Any, np.dtype[np.float64]]:
    arr = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 0 else arr


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value == value


def _int_at_least(value: Any, minimum: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= minimum
