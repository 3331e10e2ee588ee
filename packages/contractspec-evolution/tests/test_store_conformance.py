"""One conformance suite for the suggestion, intent and telemetry-bucket stores (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from attrs import define
from evolution_support import T0

from contractspec.core import ConflictError, MemoryUnitOfWork, NotFoundError, UnitOfWork
from contractspec.core.testing import temporary_sql_engine
from contractspec.evolution import TelemetryBucket
from contractspec.evolution.detector import Intent, IntentKind, IntentSeverity
from contractspec.evolution.stores import (
    IntentStore,
    MemoryIntentStore,
    MemorySuggestionStore,
    MemoryTelemetryBucketStore,
    SuggestionStore,
    TelemetryBucketStore,
)
from contractspec.evolution.suggestions import (
    SpecSuggestion,
    SuggestionKind,
    SuggestionPriority,
    SuggestionStatus,
)


@define
class Stores:
    uow: UnitOfWork
    suggestions: SuggestionStore
    intents: IntentStore
    buckets: TelemetryBucketStore


@pytest.fixture
async def stores(backend_kind: str, tmp_path: Path) -> AsyncIterator[Stores]:
    """The three stores on memory, a SQLite file or a PostgreSQL schema."""
    if backend_kind == "memory":
        yield Stores(MemoryUnitOfWork(), MemorySuggestionStore(), MemoryIntentStore(),
                     MemoryTelemetryBucketStore())  # fmt: skip
        return
    from contractspec.core.sql import SqlUnitOfWork
    from contractspec.evolution.sql import (
        SqlIntentStore,
        SqlSuggestionStore,
        SqlTelemetryBucketStore,
        create_all,
    )

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        await create_all(engine)
        yield Stores(SqlUnitOfWork(engine), SqlSuggestionStore(), SqlIntentStore(),
                     SqlTelemetryBucketStore())  # fmt: skip


def suggestion(
    sid: str, *, op: str = "crm.deal.move", minutes: int = 0, fp: str | None = None
) -> SpecSuggestion:
    return SpecSuggestion(
        id=sid,
        kind=SuggestionKind.TIMEOUT_POLICY,
        operation=op,
        title=f"Add a timeout to {op}",
        rationale="p95 doubled",
        evidence={"timeout_ms": 200, "nested": {"a": [1, 2]}},
        confidence=0.75,
        priority=SuggestionPriority.P1,
        patch=({"op": "add", "path": "/specs/operation_policy", "value": []},),
        base_ir_digest="sha256:0123456789abcdef",
        diff=({"rule": "spec-added", "severity": "info", "kind": "operation_policy",
               "spec": f"{op}@1", "path": "", "message": "operation_policy added"},),
        breaking=False,
        intent_ids=("i-1",),
        fingerprint=fp or ("f" * 60 + sid[-4:].rjust(4, "0")),
        created_at=T0 + timedelta(minutes=minutes),
    )  # fmt: skip


def intent(iid: str, *, op: str = "crm.deal.move", minutes: int = 0,
           kind: IntentKind = IntentKind.LATENCY_REGRESSION) -> Intent:  # fmt: skip
    return Intent(
        id=iid, kind=kind, operation=op, org_id="*",
        window_start=T0 + timedelta(minutes=minutes),
        window_end=T0 + timedelta(minutes=minutes + 15),
        detected_at=T0 + timedelta(minutes=minutes + 16), confidence=0.6,
        severity=IntentSeverity.WARNING, summary="slow",
        evidence={"methods": ["robust_z_mad"], "robust_z": 7.5},
    )  # fmt: skip


async def in_tx(uow: UnitOfWork, fn: Any, *, commit: bool = True) -> Any:
    tx = await uow.begin()
    try:
        result = await fn(tx)
    except BaseException:
        await tx.rollback()
        raise
    if commit:
        await tx.commit()
    else:
        await tx.rollback()
    return result


async def test_suggestion_round_trip_and_lookups(stores: Stores) -> None:
    """A suggestion round-trips with every field; it is found by id, fingerprint and approval."""
    s = suggestion("s-0001")
    await in_tx(stores.uow, lambda tx: stores.suggestions.add(tx, s))
    got = await in_tx(stores.uow, lambda tx: stores.suggestions.get(tx, "s-0001"))
    assert got == s
    by_fp = await in_tx(
        stores.uow, lambda tx: stores.suggestions.get_by_fingerprint(tx, s.fingerprint)
    )
    assert by_fp == s
    assert await in_tx(stores.uow, lambda tx: stores.suggestions.get(tx, "nope")) is None
    decided = s.evolve(status=SuggestionStatus.APPROVED, approval_id="ap-1",
                       decided_at=T0 + timedelta(hours=1), decided_by="u-lead",
                       envelope_path="/tmp/x.json")  # fmt: skip
    saved = await in_tx(
        stores.uow, lambda tx: stores.suggestions.save(tx, decided, expected_version=1)
    )
    assert saved == decided.evolve(version=2)
    by_approval = await in_tx(stores.uow, lambda tx: stores.suggestions.get_by_approval(tx, "ap-1"))
    assert by_approval == saved


async def test_suggestion_conflicts_and_compare_and_set(stores: Stores) -> None:
    """A taken id or fingerprint conflicts; a stale version conflicts; an unknown id is not found."""
    s = suggestion("s-0001")
    await in_tx(stores.uow, lambda tx: stores.suggestions.add(tx, s))
    with pytest.raises(ConflictError):
        await in_tx(
            stores.uow, lambda tx: stores.suggestions.add(tx, suggestion("s-0001", fp="a" * 64))
        )
    with pytest.raises(ConflictError):
        await in_tx(
            stores.uow,
            lambda tx: stores.suggestions.add(tx, suggestion("s-0002", fp=s.fingerprint)),
        )
    await in_tx(
        stores.uow,
        lambda tx: stores.suggestions.save(tx, s.evolve(approval_id="a"), expected_version=1),
    )
    with pytest.raises(ConflictError):
        await in_tx(stores.uow, lambda tx: stores.suggestions.save(tx, s, expected_version=1))
    with pytest.raises(NotFoundError):
        await in_tx(
            stores.uow,
            lambda tx: stores.suggestions.save(tx, suggestion("s-0009"), expected_version=1),
        )


async def test_suggestion_rollback_leaves_nothing(stores: Stores) -> None:
    """Writes of a rolled-back transaction disappear (adds and saves)."""
    await in_tx(
        stores.uow, lambda tx: stores.suggestions.add(tx, suggestion("s-0001")), commit=False
    )
    assert await in_tx(stores.uow, lambda tx: stores.suggestions.get(tx, "s-0001")) is None
    await in_tx(stores.uow, lambda tx: stores.suggestions.add(tx, suggestion("s-0001")))
    await in_tx(
        stores.uow,
        lambda tx: stores.suggestions.save(
            tx, suggestion("s-0001").evolve(status=SuggestionStatus.REJECTED), expected_version=1
        ),
        commit=False,
    )
    again = await in_tx(stores.uow, lambda tx: stores.suggestions.get(tx, "s-0001"))
    assert (again.status, again.version) == (SuggestionStatus.PENDING, 1)


async def test_suggestion_find_filters_and_orders(stores: Stores) -> None:
    """find filters by status and operation and orders by creation time."""

    async def seed(tx: Any) -> None:
        await stores.suggestions.add(tx, suggestion("s-0003", minutes=3))
        await stores.suggestions.add(tx, suggestion("s-0001", minutes=1, op="crm.deal.create"))
        await stores.suggestions.add(tx, suggestion("s-0002", minutes=2))

    await in_tx(stores.uow, seed)
    await in_tx(
        stores.uow,
        lambda tx: stores.suggestions.save(
            tx, suggestion("s-0002").evolve(status=SuggestionStatus.REJECTED), expected_version=1
        ),
    )
    ids = lambda found: [s.id for s in found]  # noqa: E731
    assert ids(await in_tx(stores.uow, lambda tx: stores.suggestions.find(tx))) == [
        "s-0001",
        "s-0002",
        "s-0003",
    ]
    pending_move = await in_tx(
        stores.uow,
        lambda tx: stores.suggestions.find(
            tx, status=SuggestionStatus.PENDING, operation="crm.deal.move"
        ),
    )
    assert ids(pending_move) == ["s-0003"]
    assert ids(await in_tx(stores.uow, lambda tx: stores.suggestions.find(tx, limit=1))) == [
        "s-0001"
    ]


async def test_suggestion_find_pages_newest_first_with_a_keyset_cursor(stores: Stores) -> None:
    """`newest_first` reverses the order; `before=(created_at, id)` continues after that key,
    ties on the time ordered by id."""

    async def seed(tx: Any) -> None:
        for sid, minutes in [("s-a", 1), ("s-b", 2), ("s-c", 2), ("s-d", 2), ("s-e", 3)]:
            await stores.suggestions.add(tx, suggestion(sid, minutes=minutes, fp=sid))

    await in_tx(stores.uow, seed)
    newest = await in_tx(stores.uow, lambda tx: stores.suggestions.find(tx, newest_first=True))
    key = (T0 + timedelta(minutes=2), "s-c")
    after = await in_tx(
        stores.uow,
        lambda tx: stores.suggestions.find(tx, newest_first=True, before=key, limit=5),
    )
    assert [s.id for s in newest] == ["s-e", "s-d", "s-c", "s-b", "s-a"]
    assert [s.id for s in after] == ["s-b", "s-a"]


async def test_intents_round_trip_filter_and_conflict(stores: Stores) -> None:
    """Intents round-trip through their JSON form, filter by operation/kind/since, ids are unique."""
    a, b = intent("i-1", minutes=30), intent("i-2", minutes=0, op="crm.deal.create",
                                              kind=IntentKind.ERROR_SPIKE)  # fmt: skip
    await in_tx(stores.uow, lambda tx: stores.intents.add(tx, [a, b]))
    found = await in_tx(stores.uow, lambda tx: stores.intents.find(tx))
    assert [i.id for i in found] == ["i-2", "i-1"]
    assert found[1].to_dict() == a.to_dict()
    assert [
        i.id
        for i in await in_tx(
            stores.uow, lambda tx: stores.intents.find(tx, operation="crm.deal.move")
        )
    ] == ["i-1"]
    assert [
        i.id
        for i in await in_tx(
            stores.uow, lambda tx: stores.intents.find(tx, kind=IntentKind.ERROR_SPIKE)
        )
    ] == ["i-2"]
    assert [
        i.id
        for i in await in_tx(
            stores.uow, lambda tx: stores.intents.find(tx, since=T0 + timedelta(minutes=10))
        )
    ] == ["i-1"]
    with pytest.raises(ConflictError):
        await in_tx(stores.uow, lambda tx: stores.intents.add(tx, [intent("i-1")]))
    await in_tx(stores.uow, lambda tx: stores.intents.add(tx, [intent("i-3")]), commit=False)
    assert len(await in_tx(stores.uow, lambda tx: stores.intents.find(tx))) == 2


async def test_buckets_append_load_and_prune(stores: Stores) -> None:
    """Buckets append (two rows of one minute both load), load by range, prune by minute."""

    def bucket(minute: int, org: str | None, calls: int) -> TelemetryBucket:
        return TelemetryBucket(
            minute=T0 + timedelta(minutes=minute), operation="crm.deal.move", org_id=org,
            calls=calls, errors=1, histogram={346: calls - 1}, error_histogram={12: 1},
            error_codes={"conflict": 1},
        )  # fmt: skip

    rows = [bucket(0, "o1", 3), bucket(0, "o1", 5), bucket(1, None, 2), bucket(2, "o2", 4)]
    await in_tx(stores.uow, lambda tx: stores.buckets.add(tx, rows))
    loaded = await in_tx(
        stores.uow, lambda tx: stores.buckets.load(tx, since=T0, until=T0 + timedelta(minutes=2))
    )
    assert sorted((b.minute, b.org_id, b.calls) for b in loaded) == sorted(
        (b.minute, b.org_id, b.calls) for b in rows[:3]
    )
    assert loaded[0].histogram == {346: loaded[0].calls - 1}
    assert loaded[0].error_codes == {"conflict": 1}
    pruned = await in_tx(
        stores.uow, lambda tx: stores.buckets.prune(tx, before=T0 + timedelta(minutes=1))
    )
    assert pruned == 2
    rest = await in_tx(stores.uow, lambda tx: stores.buckets.load(tx, since=T0))
    assert [b.calls for b in rest] == [2, 4]
    await in_tx(stores.uow, lambda tx: stores.buckets.add(tx, [bucket(5, None, 9)]), commit=False)
    assert len(await in_tx(stores.uow, lambda tx: stores.buckets.load(tx, since=T0))) == 2


def test_sql_metadata_follows_the_conventions() -> None:
    """The tables are prefixed cs_evolution_ and named by core's naming convention."""
    from contractspec.core.sql import NAMING_CONVENTION
    from contractspec.evolution.sql import metadata

    assert sorted(metadata.tables) == [
        "cs_evolution_intents", "cs_evolution_suggestions", "cs_evolution_telemetry_buckets",
    ]  # fmt: skip
    assert dict(metadata.naming_convention) == NAMING_CONVENTION
    suggestions = metadata.tables["cs_evolution_suggestions"]
    unique = sorted(c.name for c in suggestions.constraints if c.name and c.name.startswith("uq_"))
    assert unique == [
        "uq_cs_evolution_suggestions_approval_id",
        "uq_cs_evolution_suggestions_fingerprint",
    ]


async def test_exporter_needs_an_aggregator_that_keeps_closed_minutes() -> None:
    """TelemetryExporter refuses an aggregator without export_buckets=True, naming the fix."""
    from contractspec.core import ConfigurationError, MemoryUnitOfWork
    from contractspec.evolution import IntentAggregator, TelemetryExporter

    with pytest.raises(ConfigurationError, match="export_buckets=True"):
        TelemetryExporter(IntentAggregator(), MemoryTelemetryBucketStore(), MemoryUnitOfWork())
