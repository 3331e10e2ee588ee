"""IntentAggregator vs pandas and polars: the same 15-minute window statistics from the same samples.

All three get identical numpy columns (timestamp, duration, success, operation code, tenant code)
and compute, per (15-minute window, operation, tenant): calls, errors and the p50/p95/p99 latency
of successful calls.

* pandas: one `groupby(...).agg(...)` for the counts and one
  `groupby(...).quantile(interpolation="lower")` -- **exact** quantiles.
* polars: one lazy `group_by(...).agg(...)` with `quantile(q, interpolation="lower")` of the
  successful durations -- **exact** quantiles, on polars' own thread pool (all cores unless
  `--polars-threads` is given).
* IntentAggregator: ingests the columns into per-minute DDSketch histograms (1 % relative
  accuracy) and closes the windows -- **sketch** quantiles. Its time also covers what the others do
  not compute: the every-tenant rows, the per-minute counters for burn rates and the window history.

Tolerance rules, checked at every size: counts agree exactly on all three sides; pandas' and
polars' quantiles agree exactly (both exact, rank `floor(q (n - 1))`); the aggregator's quantiles are
within 1 % of the exact ones. Then each side's median over the runs is printed: the wall-clock rate
(samples/s) with its time, and the CPU time of the process (`time.process_time`, every thread:
for polars the work of its whole pool). The ratios are throughput ratios (the other side's time
/ the aggregator's; above 1 the aggregator is faster), on wall clock and on CPU time -- on a
shared, busy machine the CPU figure is the steadier one.

    uv run python benchmarks/aggregator_throughput.py                       # 100k .. 10M
    uv run python benchmarks/aggregator_throughput.py --samples 2000000     # one size

Data: `--operations` operations x `--tenants` tenants, samples uniformly spread over
`--hours` hours, log-normal latencies (median 20 ms), 2 % errors. Sizes of 5M samples and more run
once (`--repeat-large`), smaller ones `--repeat` times, after one untimed warm-up run of each side
(`--warmup`: the first run at a size pays page faults the next ones do not); runs of the three
sides alternate.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from contractspec.core import TelemetrySample
from contractspec.evolution import IntentAggregator, TelemetryBatch

QS = (0.5, 0.95, 0.99)
SIZES = (100_000, 300_000, 1_000_000, 3_000_000, 10_000_000)


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


def timed(fn: Any, *args: Any) -> tuple[float, float, Any]:
    """`(wall s, CPU s of this process -- every thread, result)` of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, result


def run_ours(data: dict[str, np.ndarray], ops: list[str], orgs: list[str]) -> list:
    batch = TelemetryBatch.from_arrays(operations=ops, orgs=orgs, **data)
    agg = IntentAggregator(window_minutes=15, lateness_minutes=0)
    agg.ingest(batch)
    end = datetime.fromtimestamp(float(data["timestamp_s"][-1]), UTC) + timedelta(minutes=30)
    agg.advance(end)
    return [s for s in agg.pop_closed() if s.org_id != "*"]


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


def window_column(data: dict[str, np.ndarray]) -> np.ndarray:
    return (np.floor(data["timestamp_s"] / 60).astype(np.int64) // 15) * 15


def run_pandas(data: dict[str, np.ndarray]) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "window": window_column(data),
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
    return counts.join(quant)


def run_polars(pl: Any, data: dict[str, np.ndarray]) -> Any:
    df = pl.DataFrame(
        {
            "window": window_column(data),
            "op": data["operation"],
            "org": data["org"],
            "d": data["duration_ms"],
            "ok": data["success"],
        }
    )
    ok_d = pl.col("d").filter(pl.col("ok"))
    return (
        df.lazy()
        .group_by(["window", "op", "org"])
        .agg(
            pl.len().alias("calls"),
            (~pl.col("ok")).sum().alias("errors"),
            *[ok_d.quantile(q, interpolation="lower").alias(str(q)) for q in QS],
        )
        .collect()
    )


def check(
    stats: list, frame: pd.DataFrame, polars_frame: Any, ops: list[str], orgs: list[str]
) -> float:
    """Counts equal on all sides, polars' quantiles equal to pandas', ours within 1 %: returns
    the aggregator's worst relative quantile error."""
    assert len(stats) == len(frame) == polars_frame.height, (
        len(stats),
        len(frame),
        polars_frame.height,
    )
    theirs = (
        pd.DataFrame({c: polars_frame[c].to_numpy() for c in polars_frame.columns})
        .set_index(["window", "op", "org"])
        .sort_index()
    )
    assert (theirs["calls"].to_numpy() == frame["calls"].to_numpy()).all()
    assert (theirs["errors"].to_numpy() == frame["errors"].to_numpy()).all()
    for q in QS:  # both exact, rank floor(q (n - 1)): identical values
        assert np.array_equal(theirs[str(q)].to_numpy(), frame[q].to_numpy(), equal_nan=True), q
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
    assert worst <= 0.01 + 1e-12, worst
    return worst


def measure(
    pl: Any, n: int, args: argparse.Namespace, ops: list[str], orgs: list[str]
) -> dict[str, Any]:
    data = make_data(n, args.operations, args.tenants, args.hours)
    repeat = args.repeat if n < 5_000_000 else args.repeat_large
    wall: dict[str, list[float]] = {"ours": [], "pandas": [], "polars": []}
    cpu: dict[str, list[float]] = {"ours": [], "pandas": [], "polars": []}
    results: dict[str, Any] = {}
    sides = {
        "ours": (run_ours, data, ops, orgs),
        "pandas": (run_pandas, data),
        "polars": (run_polars, pl, data),
    }
    for fn, *fn_args in sides.values():  # warm-up, untimed: first-touch costs
        for _ in range(args.warmup):
            fn(*fn_args)
    for _ in range(repeat):
        for side, (fn, *fn_args) in sides.items():
            gc.collect()
            w, c, results[side] = timed(fn, *fn_args)
            wall[side].append(w)
            cpu[side].append(c)
    worst = check(results["ours"], results["pandas"], results["polars"], ops, orgs)
    out: dict[str, Any] = {"n": n, "rows": len(results["ours"]), "repeat": repeat, "worst": worst}
    for side in sides:
        out[side] = statistics.median(wall[side])
        out[side + "_cpu"] = statistics.median(cpu[side])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--operations", type=int, default=20)
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=5, help="runs per size below 5M samples")
    parser.add_argument("--repeat-large", type=int, default=1, help="runs per size from 5M")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side and size")
    parser.add_argument("--polars-threads", type=int, default=None)
    parser.add_argument("--record-samples", type=int, default=200_000)
    args = parser.parse_args()
    if args.polars_threads:
        os.environ["POLARS_MAX_THREADS"] = str(args.polars_threads)
    import polars as pl  # after POLARS_MAX_THREADS is set

    ops = [f"crm.op{i:02d}.run" for i in range(args.operations)]
    orgs = [f"org-{i:03d}" for i in range(args.tenants)]
    print(
        f"{args.operations} operations x {args.tenants} tenants over {args.hours:g} h, 15-minute "
        f"windows; pandas {pd.__version__} (exact), polars {pl.__version__} (exact, "
        f"{pl.thread_pool_size()} threads), IntentAggregator (DDSketch, 1 %); {os.cpu_count()} CPUs"
    )
    print(
        "| samples | window rows | runs | IntentAggregator | pandas | polars "
        "| aggregator / pandas | aggregator / polars |"
    )
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for n in args.samples:
        r = measure(pl, n, args, ops, orgs)
        worst = max(worst, r["worst"])

        def cell(side: str, r: dict[str, Any] = r) -> str:
            return (
                f"{r['n'] / r[side] / 1e6:.2f} M/s ({r[side]:.3f} s; CPU {r[side + '_cpu']:.3f} s)"
            )

        def ratio(other: str, r: dict[str, Any] = r) -> str:
            wall = r[other] / r["ours"]
            cpu = r[other + "_cpu"] / r["ours_cpu"]
            return f"{wall:.2f}x (CPU {cpu:.2f}x)"

        print(
            f"| {n:,} | {r['rows']:,} | {r['repeat']} | {cell('ours')} | {cell('pandas')} "
            f"| {cell('polars')} | {ratio('pandas')} | {ratio('polars')} |",
            flush=True,
        )
    print(
        f"counts equal on all sides; polars' quantiles equal pandas'; the aggregator's within "
        f"{worst:.2%} of them (DDSketch bound 1 %)"
    )
    if args.record_samples:
        m = args.record_samples
        data = make_data(m, args.operations, args.tenants, args.hours)
        rate = run_record_path(data, ops, orgs, m)
        print(
            f"record() path (one TelemetrySample at a time, {m:,} samples): {rate / 1e6:.2f} M samples/s"
        )


if __name__ == "__main__":
    main()
