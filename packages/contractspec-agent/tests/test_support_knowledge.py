"""KnowledgeBase: BM25 retrieval per tenant, citations, feedback boosts, optional embeddings."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.agent import ModelRequestsForbiddenError
from contractspec.agent.support import Document, KnowledgeBase, LiteLLMEmbedder, s_stem
from contractspec.core import ConfigurationError, SpecValidationError
from contractspec.core.sync import run_sync

ARTICLES = [
    Document(id="kb-1", title="Refund timelines", text="Refunds reach the original card within 5 business days.", category="billing"),
    Document(id="kb-2", title="Charged twice", text="A double charge is a pending authorisation that disappears in 3 days.", category="billing"),
    Document(id="kb-3", title="Lost parcels", text="If tracking shows no movement for 7 days we reship the parcel.", category="shipping"),
    Document(id="kb-4", title="Reset your password", text="Use 'Forgot password' on the sign-in page.", category="account"),
]  # fmt: skip


async def kb_with(org: str | None = "acme", **options: object) -> KnowledgeBase:
    kb = KnowledgeBase(**options)  # type: ignore[arg-type]  # options are checked by the test
    await kb.add(ARTICLES, org_id=org)
    return kb


async def test_search_ranks_by_bm25_and_cites_source_ids() -> None:
    """The matching article comes first, with its id as the citation and its term coverage."""
    kb = await kb_with()
    hits = await kb.search("my parcel tracking has not moved", org_id="acme")
    assert [h.document.id for h in hits] == ["kb-3"]
    assert hits[0].citation.source_id == "kb-3"
    assert hits[0].citation.title == "Lost parcels"
    assert hits[0].citation.snippet.startswith("If tracking shows")
    assert hits[0].coverage == pytest.approx(2 / 3)  # parcel, tracking of parcel, tracking, moved
    assert hits[0].boost == 1.0
    assert hits[0].score == hits[0].bm25 > 0


async def test_plural_and_singular_meet_through_the_s_stemmer() -> None:
    """'refunds' finds the article titled 'Refund ...' and 'parcels' the one about 'parcel'."""
    kb = await kb_with()
    assert [h.document.id for h in await kb.search("refunds", org_id="acme")][:1] == ["kb-1"]
    assert s_stem("parcels") == "parcel"
    assert s_stem("policies") == "policy"
    assert s_stem("glass") == "glass"
    assert s_stem("status") == "status"


async def test_title_terms_weigh_more_than_body_terms() -> None:
    """With the same word in one title and another body, the title wins; weight 0 ignores it."""
    docs = [
        Document(id="body", title="Other", text="password help for everyone here"),
        Document(id="title", title="Password", text="help for everyone here today"),
    ]
    kb = KnowledgeBase()
    await kb.add(docs)
    assert [h.document.id for h in await kb.search("password")] == ["title", "body"]
    flat = KnowledgeBase(title_weight=0)
    await flat.add(docs)
    assert [h.document.id for h in await flat.search("password")] == ["body"]


async def test_a_tenant_never_retrieves_another_tenants_documents() -> None:
    """Identical text in two tenants: each search sees only its own tenant's copy."""
    kb = KnowledgeBase()
    await kb.add([Document(id="a-1", text="secret refund procedure for acme")], org_id="acme")
    await kb.add([Document(id="b-1", text="secret refund procedure for globex")], org_id="globex")
    acme = await kb.search("secret refund procedure", org_id="acme", limit=10)
    globex = await kb.search("secret refund procedure", org_id="globex", limit=10)
    assert [h.document.id for h in acme] == ["a-1"]
    assert [h.document.id for h in globex] == ["b-1"]
    assert await kb.search("secret refund procedure", org_id=None) == []
    assert await kb.search("secret", org_id="acme", space="other") == []
    assert kb.get("b-1", org_id="acme") is None
    assert kb.spaces(org_id="acme") == ["default"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=st.lists(
        st.tuples(st.sampled_from(["t1", "t2", "t3"]), st.text(min_size=1, max_size=40)),
        min_size=1,
        max_size=12,
    ),
    query=st.text(max_size=40),
)
def test_hostile_text_never_crosses_tenants(docs: list[tuple[str, str]], query: str) -> None:
    """Any documents and any query: hits only ever come from the searching tenant."""

    async def check() -> None:
        kb = KnowledgeBase()
        for i, (org, text) in enumerate(docs):
            if text.strip():
                await kb.add([Document(id=f"{org}-{i}", text=text)], org_id=org)
        for org in ("t1", "t2", "t3", "t4"):
            for hit in await kb.search(query, org_id=org, limit=20):
                assert hit.document.id.startswith(f"{org}-")
                assert hit.score > 0

    run_sync(check())


async def test_category_filter_and_limit() -> None:
    """A category filter keeps only that category; `limit` cuts the list."""
    kb = await kb_with()
    billing = await kb.search("refund charge days", org_id="acme", category="billing")
    assert {h.document.category for h in billing} == {"billing"}
    assert len(await kb.search("days", org_id="acme", limit=1)) == 1


async def test_adding_an_existing_id_replaces_and_remove_deletes() -> None:
    """Re-adding an id replaces the document in place; removed ones are no longer found."""
    kb = await kb_with()
    await kb.add([Document(id="kb-3", text="Parcels are insured up to 100 EUR.")], org_id="acme")
    assert [d.id for d in kb.documents(org_id="acme")] == ["kb-1", "kb-2", "kb-3", "kb-4"]
    assert (await kb.search("insured", org_id="acme"))[0].document.id == "kb-3"
    assert await kb.search("reship", org_id="acme") == []
    assert await kb.remove(["kb-3", "nope"], org_id="acme") == 1
    assert await kb.search("insured", org_id="acme") == []


async def test_feedback_boost_reorders_equal_documents() -> None:
    """Two equally good documents: the one with helpful feedback ranks first; unhelpful sinks."""
    kb = KnowledgeBase()
    await kb.add(
        [
            Document(id="first", text="how to change the delivery address"),
            Document(id="second", text="how to change the delivery address"),
        ]
    )
    before = await kb.search("change delivery address")
    assert [h.document.id for h in before] == ["first", "second"]
    boost = kb.set_feedback("second", helpful=3, unhelpful=0)
    assert boost == pytest.approx(1 + 0.5 * 3 / 5)
    after = await kb.search("change delivery address")
    assert [h.document.id for h in after] == ["second", "first"]
    assert after[0].score == pytest.approx(after[0].bm25 * boost)
    kb.set_feedback("second", helpful=0, unhelpful=4)
    assert kb.boost("second") == pytest.approx(1 - 0.5 * 4 / 6)
    assert [h.document.id for h in await kb.search("change delivery address")] == [
        "first",
        "second",
    ]


class HashingEmbedder:
    """A deterministic bag-of-words embedding (hashed words into 1024 dimensions)."""

    def __init__(self, synonyms: dict[str, str] | None = None) -> None:
        self.synonyms = synonyms or {}
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        out = []
        for text in texts:
            vec = [0.0] * 1024
            for word in re.findall(r"\w+", text.lower()):
                word = self.synonyms.get(word, word)
                vec[int(hashlib.sha256(word.encode()).hexdigest(), 16) % 1024] += 1.0
            out.append(vec)
        return out


async def test_embeddings_find_what_bm25_misses_through_rank_fusion() -> None:
    """A query sharing no term with a document still finds it through the embedding (RRF)."""
    embedder = HashingEmbedder({"package": "parcel", "vanished": "movement"})
    kb = KnowledgeBase(embedder=embedder)
    await kb.add(ARTICLES, org_id="acme")
    lexical = KnowledgeBase()
    await lexical.add(ARTICLES, org_id="acme")
    assert await lexical.search("package vanished", org_id="acme") == []
    hits = await kb.search("package vanished", org_id="acme", limit=2)
    assert hits[0].document.id == "kb-3"
    assert hits[0].bm25 == 0.0
    assert hits[0].score == pytest.approx(1 / 61)
    both = await kb.search("parcel tracking", org_id="acme", limit=1)
    assert both[0].document.id == "kb-3"
    assert both[0].score == pytest.approx(2 / 61)
    assert embedder.calls == 3  # one for the documents, one per query


async def test_litellm_embedder_is_blocked_offline() -> None:
    """With real model requests blocked, LiteLLMEmbedder raises before any network call."""
    kb = KnowledgeBase(embedder=LiteLLMEmbedder("openai/text-embedding-3-small"))
    with pytest.raises(ModelRequestsForbiddenError, match="blocked"):
        await kb.add(ARTICLES)


async def test_bad_input_names_the_field() -> None:
    """Bad documents, queries, tenants and options raise errors naming the field."""
    kb = KnowledgeBase()
    cases = [
        (lambda: Document(id="", text="x"), "id"),
        (lambda: Document(id="d", text="  "), "text"),
        (lambda: Document.from_dict({"id": "d"}), "text"),
        (lambda: Document.from_dict({"id": "d", "text": "x", "body": "y"}), "body"),
    ]
    for build, name in cases:
        with pytest.raises(SpecValidationError) as info:
            build()
        assert info.value.details["field"] == name
    with pytest.raises(SpecValidationError) as dup:
        await kb.add([{"id": "d", "text": "x"}, {"id": "d", "text": "y"}])
    assert dup.value.details["field"] == "id"
    assert kb.documents() == []
    for call, name in [
        (kb.search(7, org_id="a"), "query"),  # type: ignore[arg-type]  # hostile input
        (kb.search("x", org_id="a", limit=0), "limit"),
        (kb.search("x", org_id=""), "org_id"),
        (kb.search("x", space=""), "space"),
    ]:
        with pytest.raises(SpecValidationError) as info:
            await call
        assert info.value.details["field"] == name
    for options, name in [
        ({"b": 2}, "b"),
        ({"k1": -1}, "k1"),
        ({"method": "nope"}, "method"),
        ({"feedback_weight": 1.5}, "feedback_weight"),
        ({"embedder": object()}, "embedder"),
    ]:
        with pytest.raises(ConfigurationError) as conf:
            KnowledgeBase(**options)  # type: ignore[arg-type]  # hostile input
        assert conf.value.details["field"] == name
    with pytest.raises(SpecValidationError, match="not a known language"):
        KnowledgeBase(stopwords="klingon")


async def test_documents_added_while_a_query_is_embedded_do_not_break_the_search() -> None:
    """A search waiting on the embedder while documents are added ranks one consistent state."""
    gate = asyncio.Event()
    inner = HashingEmbedder()

    class SlowQueries:
        async def embed(self, texts: Sequence[str]) -> list[list[float]]:
            if len(texts) == 1 and texts[0] == "parcel":
                await gate.wait()
            return await inner.embed(texts)

    kb = KnowledgeBase(embedder=SlowQueries())
    await kb.add(ARTICLES, org_id="acme")
    search = asyncio.ensure_future(kb.search("parcel", org_id="acme"))
    await asyncio.sleep(0)
    await kb.add([Document(id="kb-9", text="parcel lockers and parcel shops")], org_id="acme")
    gate.set()
    hits = await search
    assert {h.document.id for h in hits} >= {"kb-3", "kb-9"}
