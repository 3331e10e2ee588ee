"""Aggregation on every backend equals a naive reference, for random events (Hypothesis)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from metering_support import App

from contractspec.metering import Aggregation, UsageEvent, Window, define_meter

BASE = datetime(2024, 1, 30, tzinfo=UTC)
SPAN_S = 70 * 24 * 3600  # a bit over two months: crosses month, day and hour boundaries


def reference_window(window: Window, at: datetime) -> datetime:
    """The window start, computed field by field (independently of window_bounds)."""
    if window is Window.HOUR:
        return datetime(at.year, at.month, at.day, at.hour, tzinfo=UTC)
    if window is Window.DAY:
        return datetime(at.year, at.month, at.day, tzinfo=UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def reference(aggregation: Aggregation, rows: list[tuple[int, UsageEvent]]) -> Decimal:
    if aggregation is Aggregation.SUM:
        return sum((e.value for _, e in rows), Decimal(0))
    if aggregation is Aggregation.COUNT:
        return Decimal(len(rows))
    if aggregation is Aggregation.MAX:
        return max(e.value for _, e in rows)
    if aggregation is Aggregation.UNIQUE_COUNT:
        return Decimal(len({e.unique_key for _, e in rows}))
    newest = max(rows, key=lambda r: (r[1].timestamp, r[0]))
    return newest[1].value


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 40),  # id: small, so duplicates happen
        # seconds after BASE: often on a coarse grid, so equal timestamps (latest's tie-break)
        # occur, else anywhere
        st.one_of(st.integers(0, 60).map(lambda k: k * 100_800), st.integers(0, SPAN_S)),
        st.integers(-(10**9), 10**12).map(lambda n: Decimal(n).scaleb(-6)),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["u1", "u2", "u3", "u4"]),
    ),
    min_size=0,
    max_size=40,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    aggregation=st.sampled_from(list(Aggregation)),
    window=st.sampled_from(list(Window)),
    raw=events_strategy,
    period=st.tuples(st.integers(0, SPAN_S), st.integers(1, SPAN_S)),
    by_subject=st.booleans(),
    batches=st.integers(1, 3),
)
async def test_aggregate_and_total_equal_a_naive_reference(
    app: App,
    aggregation: Aggregation,
    window: Window,
    raw: list[tuple[int, int, Decimal, str, str]],
    period: tuple[int, int],
    by_subject: bool,
    batches: int,
) -> None:
    """GROUP BY (subject, window) and period totals match a reference; duplicates count once."""
    org = f"org-{uuid.uuid4().hex[:10]}"
    meter = define_meter("m.x", unit="u", aggregation=aggregation, window=window)
    events = [
        UsageEvent(
            id=f"e{n}",
            org_id=org,
            user_id=None,
            subject=subject,
            meter="m.x",
            value=value,
            timestamp=BASE + timedelta(seconds=secs),
            unique_key=key,
        )
        for n, secs, value, subject, key in raw
    ]
    # record in `batches` transactions; the first of a duplicate id wins
    kept: dict[str, tuple[int, UsageEvent]] = {}
    size = max(1, len(events) // batches + 1)
    for i in range(0, len(events), size):
        tx = await app.store.unit_of_work.begin()
        for e in events[i : i + size]:
            await app.store.record(tx, e, meter)
            kept.setdefault(e.id, (len(kept), e))
        await tx.commit()
    start = BASE + timedelta(seconds=min(period[0], SPAN_S - 1))
    end = start + timedelta(seconds=period[1])
    rows = [(seq, e) for seq, e in kept.values() if start <= e.timestamp < end]
    groups: dict[tuple[str | None, datetime], list[tuple[int, UsageEvent]]] = defaultdict(list)
    for seq, e in rows:
        groups[(e.subject if by_subject else None, reference_window(window, e.timestamp))].append(
            (seq, e)
        )
    expected = [
        (subject, wstart, reference(aggregation, group))
        for (subject, wstart), group in sorted(
            groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])
        )
    ]
    got = await app.store.aggregate(meter, org, start, end, by_subject=by_subject)
    assert [(a.subject, a.window_start, a.value) for a in got] == expected
    total = await app.store.total(meter, org, start, end)
    assert total == (reference(aggregation, rows) if rows else 0)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from(list(Window)),
)
def test_bulk_ingestion_window_start_matches_window_bounds(at: datetime, window: Window) -> None:
    """The SQL adapter's bulk window start is `window_bounds(window, at)[0]` for any UTC instant."""
    pytest.importorskip("sqlalchemy")
    from contractspec.metering.specs import window_bounds
    from contractspec.metering.sql import _WINDOW_START

    assert _WINDOW_START[window](at) == window_bounds(window, at)[0]
