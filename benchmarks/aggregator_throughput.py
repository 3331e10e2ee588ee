"""IntentAggregator vs pandas: the same 15-minute window statistics from the same samples.

Both sides get identical numpy columns (timestamp, duration, success, operation code, tenant code)
and compute, per (15-minute window, operation, tenant): calls, errors and the p50/p95/p99 latency
of successful calls. pandas does it with one `groupby(...).quantile(interpolation="lower")` (exact
quantiles); the aggregator ingests the columns into per-minute DDSketch histograms (1 % relative
accuracy) and closes the windows. The script checks that counts agree exactly and quantiles within
1 %, then prints the median rate of each side over `--repeat` runs and the ratio.

    uv run python benchmarks/aggregator_throughput.py                    # 2M samples
    uv run python benchmarks/aggregator_throughput.py --samples 10000000 # the 10M figure

Data: `--operations` operations x `--tenants` tenants, samples uniformly spread over
`--hours` hours, log-normal latencies (median 20 ms), 2 % errors.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from contractspec.core import TelemetrySample
from contractspec.evolution import IntentAggregator, TelemetryBatch

QS = (0.5, 0.95, 0.99)


def make_data(n: int, ops: int, tenants: int, hours: float, seed: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 1, 5, tzinfo=UTC).timestamp()
    return {
        "timestamp_s": t0 + np.sort(rng.uniform(0, hours * 3600, n)),
        "duration_ms": rng.lognormal(np.log(20.0), 0.8, n),
        "success": rng.random(n) >= 0.02,
        "operation": rng.integers(0, ops, n),
        "org": rng.integers(0, tenants, n),
    }


def run_ours(data: dict[str, np.ndarray], ops: list[str], orgs: list[str]) -> tuple[float, list]:
    started = time.perf_counter()
    batch = TelemetryBatch.from_arrays(operations=ops, orgs=orgs, **data)
    agg = IntentAggregator(window_minutes=15, lateness_minutes=0)
    agg.ingest(batch)
    end = datetime.fromtimestamp(float(data["timestamp_s"][-1]), UTC) + timedelta(minutes=30)
    agg.advance(end)
    stats = [s for s in agg.pop_closed() if s.org_id != "*"]
    return time.perf_counter() - started, stats


def run_record_path(data: dict[str, np.ndarray], ops: list[str], orgs: list[str], n: int) -> float:
    """Samples/s through `record()` (the executor's TelemetrySink path), objects built beforehand."""
    base = datetime.fromtimestamp(0, UTC)
    samples = [
        TelemetrySample(
            operation=ops[int(data["operation"][i])], version=1, variant=None,
            org_id=orgs[int(data["org"][i])], actor_id=None, channel="bench",
            duration_ms=float(data["duration_ms"][i]), success=bool(data["success"][i]),
            error_code=None if data["success"][i] else "internal_error", payload_size=None,
            trace_id=None, timestamp=base + timedelta(seconds=float(data["timestamp_s"][i])),
        )
        for i in range(n)
    ]  # fmt: skip
    agg = IntentAggregator(window_minutes=15)
    started = time.perf_counter()
    for sample in samples:
        agg.record(sample)
    agg.flush()
    return n / (time.perf_counter() - started)


def run_pandas(data: dict[str, np.ndarray]) -> tuple[float, pd.DataFrame]:
    started = time.perf_counter()
    df = pd.DataFrame(
        {
            "window": (np.floor(data["timestamp_s"] / 60).astype(np.int64) // 15) * 15,
            "op": data["operation"],
            "org": data["org"],
            "d": data["duration_ms"],
            "ok": data["success"],
        }
    )
    df["err"] = ~df["ok"]
    keys = ["window", "op", "org"]
    counts = df.groupby(keys).agg(calls=("d", "size"), errors=("err", "sum"))
    quant = df[df["ok"]].groupby(keys)["d"].quantile(list(QS), interpolation="lower").unstack()
    result = counts.join(quant)
    return time.perf_counter() - started, result


def check(stats: list, frame: pd.DataFrame, ops: list[str], orgs: list[str]) -> float:
    assert len(stats) == len(frame), (len(stats), len(frame))
    op_index = {o: i for i, o in enumerate(ops)}
    org_index = {o: i for i, o in enumerate(orgs)}
    worst = 0.0
    for s in stats:
        key = (int(s.start.timestamp() // 60), op_index[s.operation], org_index[s.org_id])
        row = frame.loc[key]
        assert (s.calls, s.errors) == (int(row["calls"]), int(row["errors"])), key
        exact = np.array([row[q] for q in QS])
        ours = np.array([s.p50_ms, s.p95_ms, s.p99_ms])
        worst = max(worst, float(np.max(np.abs(ours / exact - 1.0))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--operations", type=int, default=20)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record-samples", type=int, default=200_000)
    args = parser.parse_args()
    ops = [f"crm.op{i:02d}.run" for i in range(args.operations)]
    orgs = [f"org-{i:03d}" for i in range(args.tenants)]
    data = make_data(args.samples, args.operations, args.tenants, args.hours)
    ours_t: list[float] = []
    pandas_t: list[float] = []
    stats: list = []
    frame = pd.DataFrame()
    for _ in range(args.repeat):
        gc.collect()
        t, stats = run_ours(data, ops, orgs)
        ours_t.append(t)
        gc.collect()
        t, frame = run_pandas(data)
        pandas_t.append(t)
    worst = check(stats, frame, ops, orgs)
    n = args.samples
    ours_rate = n / statistics.median(ours_t)
    pandas_rate = n / statistics.median(pandas_t)
    print(
        f"{n:,} samples, {args.operations} operations x {args.tenants} tenants over "
        f"{args.hours:g} h -> {len(stats):,} window rows (15 min, per operation and tenant)"
    )
    print(f"quantiles agree within {worst:.2%} (DDSketch bound 1%), counts exactly")
    print(
        f"IntentAggregator  median {statistics.median(ours_t):7.3f} s  {ours_rate / 1e6:6.2f} M samples/s"
    )
    print(
        f"pandas groupby    median {statistics.median(pandas_t):7.3f} s  {pandas_rate / 1e6:6.2f} M samples/s"
    )
    print(f"ratio (aggregator / pandas throughput): {ours_rate / pandas_rate:.2f}x")
    if args.record_samples:
        m = min(args.record_samples, n)
        rate = run_record_path(data, ops, orgs, m)
        print(
            f"record() path (one TelemetrySample at a time, {m:,} samples): {rate / 1e6:.2f} M samples/s"
        )


if __name__ == "__main__":
    main()
