"""One conformance suite for every `TrafficStore`: memory, JSON Lines, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testing_support import STORE_KINDS, T0, open_test_store, snap

from contractspec.core import ConfigurationError
from contractspec.testing import Snapshot, TrafficStore


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TrafficStore]:
    """A fresh store of each kind."""
    async for s in open_test_store(request.param, tmp_path):
        yield s


async def test_append_then_query_returns_snapshots_oldest_first(store: TrafficStore) -> None:
    """Snapshots come back ordered by recorded_at, whatever the append order."""
    await store.append([snap(3), snap(1)])
    await store.append([snap(2)])
    got = await store.query()
    assert [s.id for s in got] == ["s-0001", "s-0002", "s-0003"]
    assert got[0] == snap(1)


async def test_ties_on_recorded_at_keep_append_order(store: TrafficStore) -> None:
    """Snapshots recorded at the same instant come back in append order."""
    await store.append([snap(5, id="b", recorded_at=T0), snap(6, id="a", recorded_at=T0)])
    await store.append([snap(7, id="c", recorded_at=T0)])
    assert [s.id for s in await store.query()] == ["b", "a", "c"]


async def test_append_is_idempotent_per_id(store: TrafficStore) -> None:
    """Appending a snapshot whose id is stored keeps a single copy."""
    await store.append([snap(1), snap(2)])
    await store.append([snap(1)])
    assert [s.id for s in await store.query()] == ["s-0001", "s-0002"]
    assert await store.operations() == [("crm.deal.create", 1, 2)]


async def test_filters_combine(store: TrafficStore) -> None:
    """operation, version, since/until, outcome and org_id filter with AND semantics."""
    error = {"code": "not_found", "type": "NotFoundError", "message": "no such contact"}
    await store.append(
        [
            snap(1),
            snap(2, operation="crm.deal.move"),
            snap(3, version=2),
            snap(4, error=error, output=None),
            snap(5, org_id="org-2"),
            snap(6),
        ]
    )
    assert [s.id for s in await store.query(operation="crm.deal.create", version=1)] == [
        "s-0001",
        "s-0004",
        "s-0005",
        "s-0006",
    ]
    window = await store.query(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=6))
    assert [s.id for s in window] == ["s-0002", "s-0003", "s-0004", "s-0005"]
    assert [s.id for s in await store.query(outcome="not_found")] == ["s-0004"]
    assert [s.id for s in await store.query(outcome="success", org_id="org-2")] == ["s-0005"]
    assert [s.id for s in await store.query(operation="crm.deal.create", limit=2)] == [
        "s-0001",
        "s-0003",
    ]
    assert await store.query(operation="crm.nothing") == []


async def test_operations_counts_per_version(store: TrafficStore) -> None:
    """operations() lists (operation, version, count) sorted."""
    await store.append([snap(1), snap(2, version=2), snap(3), snap(4, operation="a.b")])
    assert await store.operations() == [
        ("a.b", 1, 1),
        ("crm.deal.create", 1, 2),
        ("crm.deal.create", 2, 1),
    ]


async def test_delete_before_removes_old_snapshots(store: TrafficStore) -> None:
    """delete_before deletes what was recorded strictly before the instant and counts it."""
    await store.append([snap(1), snap(2), snap(3)])
    assert await store.delete_before(T0 + timedelta(minutes=2)) == 1
    assert [s.id for s in await store.query()] == ["s-0002", "s-0003"]
    assert await store.delete_before(T0) == 0


async def test_naive_datetimes_and_bad_limits_are_rejected(store: TrafficStore) -> None:
    """A naive `since` or a negative limit raises ConfigurationError naming the field."""
    with pytest.raises(ConfigurationError, match="since must be a timezone-aware"):
        await store.query(since=T0.replace(tzinfo=None))
    with pytest.raises(ConfigurationError, match="limit must be a non-negative integer"):
        await store.query(limit=-1)


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payload=json_values, message=st.text())
async def test_any_json_round_trips(store: TrafficStore, payload: Any, message: str) -> None:
    """Any JSON input/output/error (NUL characters, big integers, unicode) round-trips exactly."""
    before = len(await store.query())
    original = snap(
        before + 1,
        input=payload,
        output={"echo": payload},
        error={"code": "conflict", "type": "ConflictError", "message": message},
    )
    await store.append([original])
    got = await store.query()
    assert len(got) == before + 1
    assert got[-1] == original
    assert isinstance(got[-1], Snapshot)


async def test_events_round_trip(store: TrafficStore) -> None:
    """A snapshot's events (type, version, payload) come back as they were appended."""
    events = [{"type": "crm.deal.created", "version": 1, "payload": {"id": "d1", "amount": "9.50"}}]
    await store.append([snap(1, events=events)])
    (got,) = await store.query()
    assert got.events is not None
    assert [dict(e) for e in got.events] == events


def test_malformed_events_are_a_snapshot_format_error() -> None:
    """`events` that is not a list of typed objects is refused, naming the snapshot."""
    from contractspec.testing.errors import SnapshotFormatError

    data = snap(1).to_dict() | {"events": [{"payload": {}}]}
    with pytest.raises(SnapshotFormatError, match="events must be a list"):
        Snapshot.from_dict(data)
    old = snap(1).to_dict()
    del old["events"]
    assert Snapshot.from_dict(old).events is None  # recorded before events were kept
