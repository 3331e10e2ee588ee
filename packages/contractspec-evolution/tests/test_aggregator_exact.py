"""IntentAggregator against exact statistics: windows closed together, several ingests per window.

Every closed row is compared with the exact figures of its samples: calls and errors exactly (as
are the per-minute burn-rate counters), p50/p95/p99 of successful calls within the sketch's 1 %
relative accuracy of the exact quantile (rank `floor(q (n - 1))`, numpy's `method="lower"`). Samples arrive in several batches per window,
operations and tenants appear in later batches (the key layout grows), and many windows close in
one call, in groups when the dense per-operation matrix would be large.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from contractspec.evolution import ALL_TENANTS, IntentAggregator, TelemetryBatch, WindowStats
from contractspec.evolution import aggregator as aggregator_module

T0 = datetime(2026, 1, 5, tzinfo=UTC)
QS = (0.5, 0.95, 0.99)


def make_samples(
    rng: np.random.Generator, n: int, hours: float, ops: int, tenants: int
) -> dict[str, np.ndarray]:
    return {
        "timestamp_s": T0.timestamp() + np.sort(rng.uniform(0, hours * 3600, n)),
        "duration_ms": rng.lognormal(np.log(20.0), 1.0, n),
        "success": rng.random(n) >= 0.1,
        "operation": rng.integers(0, ops, n),
        "org": rng.integers(0, tenants, n),
    }


def exact_rows(
    data: dict[str, np.ndarray], ops: list[str], orgs: list[str | None], window: int
) -> dict[tuple[int, str, str | None], tuple[int, int, list[float]]]:
    """(window start minute, operation, tenant or ALL_TENANTS) -> calls, errors, ok durations."""
    cells: dict[tuple[int, str, str | None], list[list[float] | int]] = defaultdict(
        lambda: [0, 0, []]
    )
    minutes = np.floor(data["timestamp_s"] / 60).astype(np.int64)
    for m, d, ok, o, g in zip(
        minutes.tolist(), data["duration_ms"].tolist(), data["success"].tolist(),
        data["operation"].tolist(), data["org"].tolist(), strict=True,
    ):  # fmt: skip
        start = m - m % window
        for org in (orgs[g], ALL_TENANTS):
            cell = cells[(start, ops[o], org)]
            cell[0] += 1  # type: ignore[operator]
            if ok:
                cell[2].append(d)  # type: ignore[union-attr]
            else:
                cell[1] += 1  # type: ignore[operator]
    return {k: (int(v[0]), int(v[1]), list(v[2])) for k, v in cells.items()}  # type: ignore[arg-type]


def assert_matches(closed: list[WindowStats], exact: dict, window: int) -> None:
    got = {}
    for st in closed:
        start = int(st.start.timestamp() // 60)
        assert st.end - st.start == timedelta(minutes=window)
        if st.calls == 0:  # the zero window of an operation that stopped (documented)
            assert st.org_id == ALL_TENANTS
            continue
        got[(start, st.operation, st.org_id)] = st
    assert set(got) == set(exact)
    for key, (calls, errors, ok) in exact.items():
        st = got[key]
        assert (st.calls, st.errors) == (calls, errors), key
        ours = (st.p50_ms, st.p95_ms, st.p99_ms)
        if not ok:
            assert all(np.isnan(ours)), key
            continue
        want = np.quantile(np.asarray(ok), QS, method="lower")
        for value, w in zip(ours, want.tolist(), strict=True):
            assert abs(value / w - 1.0) <= 0.01, (key, value, w)
    # order: window start, operation name, every tenant first, then tenant id (None as "")
    order = [
        (int(st.start.timestamp()), st.operation, st.org_id != ALL_TENANTS, st.org_id or "")
        for st in closed
    ]
    assert order == sorted(order)


def assert_minute_counts(
    agg: IntentAggregator, data: dict[str, np.ndarray], ops: list[str], orgs: list[str | None]
) -> None:
    """The burn-rate counters of closed minutes equal the exact calls and errors per minute."""
    minutes = np.floor(data["timestamp_s"] / 60).astype(np.int64)
    for o, name in enumerate(ops):
        for g, org in [(None, ALL_TENANTS), *enumerate(orgs)]:
            mine = data["operation"] == o
            if g is not None:
                mine &= data["org"] == g
            got = agg.minute_counts(name, org, include_open=False)
            want, calls = np.unique(minutes[mine], return_counts=True)
            errors = [int((~data["success"][mine & (minutes == m)]).sum()) for m in want.tolist()]
            assert got.minutes.tolist() == want.tolist(), (name, org)
            assert got.calls.tolist() == calls.tolist(), (name, org)
            assert got.errors.tolist() == errors, (name, org)


@pytest.mark.parametrize("dense_cells", [1 << 21, 1], ids=["one group", "one window per group"])
def test_windows_closed_together_match_exact_statistics_within_the_sketch_accuracy(
    monkeypatch: pytest.MonkeyPatch, dense_cells: int
) -> None:
    """Four batches over 3 hours, operations and tenants (one without tenant) appearing in later
    batches: 12 windows closing in one `advance`, each row equal to the exact statistics."""
    monkeypatch.setattr(aggregator_module, "_DENSE_CELLS", dense_cells)
    rng = np.random.default_rng(15)
    ops = [f"crm.op{i}.run" for i in range(7)][::-1]  # codes not in name order
    orgs: list[str | None] = ["org-b", None, "org-a", "org-c", "org-d"]
    data = make_samples(rng, 20_000, 3.0, len(ops), len(orgs))
    agg = IntentAggregator(window_minutes=15, lateness_minutes=10_000)
    # batches interleaved in time, the first ones with few operations and tenants
    part = rng.integers(0, 4, len(data["success"]))
    part[(data["operation"] >= 3) & (part == 0)] = 1
    part[(data["org"] >= 3) & (part <= 1)] = 2
    for k in range(4):
        mine = part == k
        agg.ingest(
            TelemetryBatch.from_arrays(operations=ops, orgs=orgs, **{n: c[mine] for n, c in data.items()})
        )  # fmt: skip
    assert agg.pop_closed() == []
    end = datetime.fromtimestamp(float(data["timestamp_s"].max()), UTC) + timedelta(minutes=15)
    agg.lateness_minutes = 0
    closed = agg.advance(end)
    assert len({st.start for st in closed}) == 12
    assert_matches(closed, exact_rows(data, ops, orgs, 15), 15)
    assert_minute_counts(agg, data, ops, orgs)
    # the period histogram is the exact merge of the windows: its quantiles are within 1 %
    for o, name in enumerate(ops):
        buckets, counts = agg.latency_histogram(name)
        mine = (data["operation"] == o) & data["success"]
        assert int(counts.sum()) == int(mine.sum())
        values = np.repeat(agg.mapping.value(buckets), counts)
        want = np.quantile(data["duration_ms"][mine], QS, method="lower")
        assert np.all(np.abs(np.quantile(values, QS, method="lower") / want - 1) <= 0.01)


def test_a_batch_spanning_months_uses_wide_keys_and_stays_exact() -> None:
    """Samples over 200 days with 40 operations x 30 tenants do not fit 32-bit sort keys: the
    64-bit path gives the same exact counts and quantiles."""
    rng = np.random.default_rng(16)
    ops = [f"shop.op{i:02d}.run" for i in range(40)]
    orgs: list[str | None] = [f"org-{i:02d}" for i in range(30)]
    data = make_samples(rng, 30_000, 200 * 24.0, len(ops), len(orgs))
    agg = IntentAggregator(window_minutes=1440, lateness_minutes=0, history_windows=300)
    stride = len(ops) * len(orgs) * 2 * agg.mapping.bucket_count * 1440
    assert 200 * stride >= 2**32
    agg.ingest(TelemetryBatch.from_arrays(operations=ops, orgs=orgs, **data))
    end = datetime.fromtimestamp(float(data["timestamp_s"].max()), UTC) + timedelta(days=2)
    closed = agg.advance(end)
    assert_matches(closed, exact_rows(data, ops, orgs, 1440), 1440)


def test_restored_buckets_close_like_the_samples_they_came_from() -> None:
    """Minutes exported by two processes and merged (`ingest_buckets`, summed counts) give the
    same rows as all samples ingested directly, several windows closing at once."""
    rng = np.random.default_rng(17)
    ops = ["crm.deal.move", "crm.deal.create", "crm.note.add"]
    orgs: list[str | None] = ["org-2", "org-1", None]
    data = make_samples(rng, 6_000, 2.0, len(ops), len(orgs))
    half = rng.random(len(data["success"])) < 0.5
    processes = []
    for mine in (half, ~half):
        agg = IntentAggregator(window_minutes=15, lateness_minutes=10_000)
        agg.ingest(TelemetryBatch.from_arrays(operations=ops, orgs=orgs,
                                              **{n: c[mine] for n, c in data.items()}))  # fmt: skip
        processes.append(agg.buckets())
    merged = IntentAggregator(window_minutes=15, lateness_minutes=0)
    assert merged.ingest_buckets(processes[0] + processes[1]) == len(data["success"])
    end = datetime.fromtimestamp(float(data["timestamp_s"].max()), UTC) + timedelta(minutes=20)
    closed = merged.advance(end)
    assert len({st.start for st in closed if st.calls}) == 8
    assert_matches(closed, exact_rows(data, ops, orgs, 15), 15)
    assert_minute_counts(merged, data, ops, orgs)
