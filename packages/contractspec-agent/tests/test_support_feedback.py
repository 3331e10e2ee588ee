"""Support feedback: one store suite (memory, SQLite, PostgreSQL), stats, boosts in the ranking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.agent.support import (
    Document,
    FeedbackStore,
    KnowledgeBase,
    MemoryFeedbackStore,
    SupportFeedback,
    SupportFeedbackLoop,
)
from contractspec.agent.support.sql import SqlFeedbackStore, create_all, metadata
from contractspec.core import SpecValidationError
from contractspec.core.testing import temporary_sql_engine
from contractspec.core.testing.migrations import (
    downgrade_and_check,
    metadata_from_config,
    migrate_and_check,
    titled_block,
)

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def outcome(
    ticket: str,
    category: str = "billing",
    *,
    resolved: bool = True,
    escalated: bool = False,
    csat: int | None = None,
    cited: tuple[str, ...] = (),
    org: str | None = "acme",
    minutes: int = 0,
) -> SupportFeedback:
    return SupportFeedback(
        ticket_id=ticket,
        category=category,
        resolved=resolved,
        escalated=escalated,
        csat=csat,
        cited=cited,
        org_id=org,
        recorded_at=T0 + timedelta(minutes=minutes),
    )


@pytest.fixture
async def store(backend_kind: str, tmp_path: Path) -> AsyncIterator[FeedbackStore]:
    """A feedback store on memory, a SQLite file or a PostgreSQL schema."""
    if backend_kind == "memory":
        yield MemoryFeedbackStore()
        return
    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        await create_all(engine)
        yield SqlFeedbackStore(engine)


async def test_store_round_trips_and_replaces_per_ticket(store: FeedbackStore) -> None:
    """Outcomes round-trip exactly; recording a ticket again replaces its earlier outcome."""
    first = outcome("t1", csat=2, cited=("kb-1", "kb-2"), resolved=False, escalated=True)
    await store.put(first)
    await store.put(outcome("t2", "shipping", minutes=1))
    assert await store.list(org_id="acme") == [first, outcome("t2", "shipping", minutes=1)]
    again = outcome("t1", csat=5, cited=("kb-1",), minutes=2)
    await store.put(again)
    assert await store.list(org_id="acme") == [outcome("t2", "shipping", minutes=1), again]


async def test_concurrent_puts_of_one_ticket_leave_one_outcome(store: FeedbackStore) -> None:
    """Eight concurrent puts of the same ticket: exactly one stored outcome, one of those put."""
    puts = [outcome("t1", csat=1 + i % 5, minutes=i) for i in range(8)]
    await asyncio.gather(*(store.put(p) for p in puts))
    stored = await store.list(org_id="acme")
    assert len(stored) == 1
    assert stored[0] in puts


async def test_store_is_per_tenant_and_filters_by_time_and_category(store: FeedbackStore) -> None:
    """Each tenant sees only its outcomes; since/until is half-open; category filters."""
    await store.put(outcome("t1", org="acme", minutes=0))
    await store.put(outcome("t1", org="globex", minutes=0, csat=1))
    await store.put(outcome("t2", "shipping", org="acme", minutes=10))
    await store.put(outcome("t3", org=None, minutes=5))
    assert [f.org_id for f in await store.list(org_id="globex")] == ["globex"]
    assert [f.ticket_id for f in await store.list(org_id=None)] == ["t3"]
    window = await store.list(
        org_id="acme", since=T0 + timedelta(minutes=0), until=T0 + timedelta(minutes=10)
    )
    assert [f.ticket_id for f in window] == ["t1"]
    assert [f.ticket_id for f in await store.list(org_id="acme", category="shipping")] == ["t2"]


async def test_stats_per_category_resolution_deflection_csat(store: FeedbackStore) -> None:
    """Resolution, deflection, escalation rates and CSAT (share of 4-5) per category and overall."""
    loop = SupportFeedbackLoop(store)
    for f in [
        outcome("t1", resolved=True, csat=5),
        outcome("t2", resolved=True, escalated=True, csat=4),
        outcome("t3", resolved=False, escalated=True, csat=1),
        outcome("t4", "shipping", resolved=True),
    ]:
        await loop.record(f)
    stats = await loop.stats(org_id="acme")
    billing = stats["billing"]
    assert (billing.tickets, billing.rated) == (3, 3)
    assert billing.resolution_rate == pytest.approx(2 / 3)
    assert billing.deflection_rate == pytest.approx(1 / 3)
    assert billing.escalation_rate == pytest.approx(2 / 3)
    assert billing.csat == pytest.approx(2 / 3)
    assert billing.csat_mean == pytest.approx(10 / 3)
    shipping = stats["shipping"]
    assert (shipping.resolution_rate, shipping.deflection_rate, shipping.csat) == (1.0, 1.0, None)
    overall = stats["*"]
    assert (overall.tickets, overall.resolution_rate) == (4, 0.75)
    assert (await loop.stats(org_id="globex"))["*"].tickets == 0
    assert list(await loop.stats(org_id="acme", since=T0 + timedelta(minutes=1))) == ["*"]


async def test_resolved_tickets_boost_their_documents_in_the_ranking(store: FeedbackStore) -> None:
    """Documents cited by resolved tickets move up; after a restart the store restores it."""
    kb = KnowledgeBase()
    docs = [
        Document(id="a", text="change the delivery address in settings"),
        Document(id="b", text="change the delivery address in settings"),
    ]
    await kb.add(docs, org_id="acme")
    await kb.add(docs, org_id="globex")
    loop = SupportFeedbackLoop(store, knowledge=kb)
    query = "change delivery address"
    assert [h.document.id for h in await kb.search(query, org_id="acme")] == ["a", "b"]
    await loop.record(outcome("t1", cited=("b",), csat=5))
    await loop.record(outcome("t2", cited=("b",)))
    await loop.record(outcome("t3", cited=("a",), resolved=False))
    assert [h.document.id for h in await kb.search(query, org_id="acme")] == ["b", "a"]
    assert [h.document.id for h in await kb.search(query, org_id="globex")] == ["a", "b"]
    assert await loop.document_counts(org_id="acme") == {"b": (2, 0), "a": (0, 1)}

    restarted = KnowledgeBase()
    await restarted.add(docs, org_id="acme")
    boosts = await SupportFeedbackLoop(store, knowledge=restarted).refresh(org_id="acme")
    assert boosts == {"b": pytest.approx(1 + 0.5 * 2 / 4), "a": pytest.approx(1 - 0.5 / 3)}
    assert [h.document.id for h in await restarted.search(query, org_id="acme")] == ["b", "a"]


async def test_low_csat_counts_against_a_document_and_rerecording_resets_it() -> None:
    """A resolved ticket rated 1-2 is unhelpful; re-recording without the citation clears it."""
    kb = KnowledgeBase()
    await kb.add([Document(id="a", text="x y z")])
    loop = SupportFeedbackLoop(knowledge=kb)
    await loop.record(outcome("t1", cited=("a",), csat=2, org=None))
    assert kb.boost("a") == pytest.approx(1 - 0.5 / 3)
    await loop.record(outcome("t1", cited=(), csat=2, org=None))
    assert kb.boost("a") == 1.0


def test_bad_feedback_names_the_field() -> None:
    """CSAT outside 1-5, empty ids, naive timestamps and non-bool flags are refused by name."""
    for kwargs, name in [
        ({"csat": 6}, "csat"),
        ({"csat": True}, "csat"),
        ({"ticket_id": ""}, "ticket_id"),
        ({"category": ""}, "category"),
        ({"cited": ("",)}, "cited"),
        ({"resolved": "yes"}, "resolved"),
        ({"recorded_at": datetime(2024, 1, 1)}, "recorded_at"),
        ({"org_id": ""}, "org_id"),
    ]:
        args: dict[str, object] = {"ticket_id": "t", "category": "c", "resolved": True, **kwargs}
        with pytest.raises(SpecValidationError) as info:
            SupportFeedback(**args)  # type: ignore[arg-type]  # hostile input
        assert info.value.details["field"] == name


DOCS = Path(__file__).resolve().parents[3] / "docs" / "core" / "sql.md"


async def test_feedback_table_under_alembic(sql_engine: AsyncEngine, tmp_path: Path) -> None:
    """The autogenerated migration creates cs_support_feedback, `alembic check` finds no diff,
    the migrated schema stores outcomes, and downgrade drops it."""
    env_py = metadata_from_config(
        titled_block(DOCS, "migrations/env.py"), "from myapp.db import target_metadata"
    )
    env = await migrate_and_check(sql_engine, tmp_path / "migrations", [metadata], env_py=env_py)
    store = SqlFeedbackStore(sql_engine)  # no create_all: the migration made the schema
    await store.put(outcome("t1", csat=4, cited=("kb-1",)))
    assert await store.list(org_id="acme") == [outcome("t1", csat=4, cited=("kb-1",))]
    await downgrade_and_check(env, sql_engine)


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"ticket": "t\x00"}, "ticket_id"),
        ({"ticket": "t-1", "category": "bill\ud800"}, "category"),
        ({"ticket": "t-1", "cited": ("doc\x00",)}, "cited"),
        ({"ticket": "t-1", "org": "acme\x00"}, "org_id"),
    ],
)
async def test_unstorable_feedback_is_refused_naming_the_field(
    store: FeedbackStore, fields: dict[str, object], field_name: str
) -> None:
    """NUL or a lone surrogate in a ticket id, category, cited id or org id is refused with
    SpecValidationError naming the field before any store sees it (PostgreSQL raised a bare
    DataError and every SQL store an encoding error); nothing is stored."""
    with pytest.raises(SpecValidationError) as err:
        await store.put(outcome(**fields))  # type: ignore[arg-type]
    assert err.value.details["field"] == field_name
    assert await store.list(org_id="acme") == []
