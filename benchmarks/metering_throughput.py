"""Usage metering: events/s ingested + aggregated vs hand-written SQL; quota-check overhead per call.

**Part 1 — ingestion and aggregation (SQLite file, PostgreSQL).** Each round generates N raw usage
records (dicts: id, org, user, subject among 20, value as decimal text, timestamp over 48 hours)
plus 10 % of them sent again (the at-least-once redeliveries idempotency exists for), shuffled, and
ingests them in transactions of B records, then runs one aggregation: usage per subject and hour
over the 48 hours. Both sides write the same columns (`org_id, id, meter, subject, user_id, value,
unique_key, timestamp, window_start`, value as `NUMERIC(36, 6)` on PostgreSQL and integer
micro-units on SQLite, a unique `(org_id, id)`):

* **ours**: `UsageEvent(...)` per record (validation), `Metering.record_many(batch)` on
  `SqlMeteringStore` (PostgreSQL: one statement per batch, the rows as one JSON parameter,
  `INSERT … SELECT FROM jsonb_array_elements(…) ON CONFLICT DO NOTHING RETURNING org_id, id`
  and in the same statement the stored rows of the duplicates; SQLite, per 500 rows: a read of
  the ids already stored (one JSON array parameter, `json_each`), the others buffered as plain
  inserts that the unit of work writes with one driver executemany before the next statement or
  the commit; so each caller gets the stored event back), then `Metering.usage(meter, org, start, end)`
  (`GROUP BY subject, window_start`). The meter has no limits, so no quota counters
  are written (they would be one extra upsert per window and batch).
* **baseline**: hand-written SQLAlchemy Core on a table of the same shape (`bench_usage`): per
  batch, in `engine.begin()`, row dicts (window start computed in Python) sent with
  `conn.execute(insert(t).on_conflict_do_nothing(), rows)` (executemany: SQLAlchemy's
  insertmanyvalues batching) — the same idempotency, no per-record answer — then `SELECT subject,
  window_start, SUM(value) … GROUP BY subject, window_start`.

Both sides share one engine per database: SQLite `contractspec.core.sql.sqlite_engine(file)` (WAL,
`synchronous=NORMAL`, stdlib sqlite3 inline on the loop); PostgreSQL
`CONTRACTSPEC_TEST_POSTGRES_DSN` (psycopg 3, default pool) in a fresh schema (skipped when unset).
Sides alternate within a round, each on a fresh org; the figure is the median over rounds of
records/s (redeliveries included) for ingest + aggregation; ratio = ours / baseline of those
medians, paired = median of the per-round ratios (less sensitive to load that changes between
rounds on a shared machine). Target >= 0.8x.

**Part 2 — quota check overhead (memory).** One command `bench.call` through
`Executor(registry, backend=MemoryBackend())`, called M times in a row per round, with and without
`Metering.middleware()` (plan with a feature gate and a 10¹² monthly limit on a `count` meter: plan
lookup, feature check, counter pre-check, the usage event recorded with an atomic counter update in
the call's transaction). Overhead = median per-call time with the middleware minus without, over
rounds (µs). Target < 20 µs.

Run: `uv run --all-packages --all-extras --group bench python benchmarks/metering_throughput.py`
(`--rounds 5 --n 10000 --batch 1000 --calls 20000`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Column, Index, Table, UniqueConstraint, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    HandlerCtx,
    MemoryBackend,
    SpecRegistry,
    define_command,
)
from contractspec.core.sql import create_all, new_metadata
from contractspec.core.testing import temporary_sql_engine
from contractspec.metering import (
    Feature,
    Limit,
    MemoryMeteringStore,
    Metering,
    UsageEvent,
    define_meter,
    define_plan,
    meter_operation,
)
from contractspec.metering.sql import SqlMeteringStore, usage_events_table
from contractspec.metering.sql import metadata as metering_metadata

START = datetime(2024, 5, 1, tzinfo=UTC)
HOURS = 48
tokens = define_meter("llm.tokens", unit="token", aggregation="sum", window="hour")

peer_metadata = new_metadata()
# the same columns, types and unique (org_id, id); a plain index for the aggregation's filter
peer_table = Table(
    "bench_usage",
    peer_metadata,
    *(
        Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            autoincrement=c.autoincrement,
            nullable=c.nullable,
        )
        for c in usage_events_table.columns
    ),
    UniqueConstraint("org_id", "id"),
    Index(None, "org_id", "meter", "timestamp"),
)


def records(n: int, org: str, rng: random.Random) -> list[dict[str, Any]]:
    """N raw usage records plus 10 % redeliveries, shuffled."""
    rows = [
        {
            "id": f"ev-{i}",
            "org_id": org,
            "user_id": f"user-{rng.randrange(50)}",
            "subject": f"key-{rng.randrange(20)}",
            "value": f"{rng.randrange(1, 5000)}.{rng.randrange(1000):03d}",
            "timestamp": START + timedelta(seconds=rng.randrange(HOURS * 3600)),
        }
        for i in range(n)
    ]
    rows += rng.sample(rows, n // 10)
    rng.shuffle(rows)
    return rows


async def ours_round(metering: Metering, raw: list[dict[str, Any]], batch: int, org: str) -> float:
    started = time.perf_counter()
    for i in range(0, len(raw), batch):
        await metering.record_many(
            [
                UsageEvent(
                    id=r["id"],
                    org_id=r["org_id"],
                    user_id=r["user_id"],
                    subject=r["subject"],
                    meter="llm.tokens",
                    value=Decimal(r["value"]),
                    timestamp=r["timestamp"],
                )
                for r in raw[i : i + batch]
            ]
        )
    rows = await metering.usage(tokens, org, START, START + timedelta(hours=HOURS))
    elapsed = time.perf_counter() - started
    assert len(rows) > 0
    return len(raw) / elapsed


async def peer_round(engine: AsyncEngine, raw: list[dict[str, Any]], batch: int, org: str) -> float:
    t = peer_table
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(t).on_conflict_do_nothing()
    started = time.perf_counter()
    for i in range(0, len(raw), batch):
        rows = [
            {
                "org_id": r["org_id"],
                "id": r["id"],
                "meter": "llm.tokens",
                "subject": r["subject"],
                "user_id": r["user_id"],
                "value": Decimal(r["value"]),
                "unique_key": None,
                "timestamp": r["timestamp"],
                "window_start": r["timestamp"].replace(minute=0, second=0, microsecond=0),
            }
            for r in raw[i : i + batch]
        ]
        async with engine.begin() as conn:
            await conn.execute(stmt, rows)
    query = (
        select(t.c.subject, t.c.window_start, func.sum(t.c.value, type_=t.c.value.type))
        .where(
            t.c.org_id == org,
            t.c.meter == "llm.tokens",
            t.c.timestamp >= START,
            t.c.timestamp < START + timedelta(hours=HOURS),
        )
        .group_by(t.c.subject, t.c.window_start)
        .order_by(t.c.subject, t.c.window_start)
    )
    async with engine.connect() as conn:
        result = (await conn.execute(query)).all()
    elapsed = time.perf_counter() - started
    assert len(result) > 0
    return len(raw) / elapsed


async def check_equal(metering: Metering, engine: AsyncEngine, org: str) -> None:
    """Both sides stored the same usage: identical per-(subject, hour) sums."""
    ours = await metering.usage(tokens, org, START, START + timedelta(hours=HOURS))
    t = peer_table
    async with engine.connect() as conn:
        peer = (
            await conn.execute(
                select(t.c.subject, t.c.window_start, func.sum(t.c.value, type_=t.c.value.type))
                .where(t.c.org_id == org)
                .group_by(t.c.subject, t.c.window_start)
                .order_by(t.c.subject, t.c.window_start)
            )
        ).all()
    assert [(a.subject, a.window_start, a.value) for a in ours] == [
        (s, w, Decimal(v).normalize() if v != v.to_integral_value() else Decimal(v).quantize(1))
        for s, w, v in peer
    ], "ours and the baseline disagree"


async def ingestion(
    kind: str, args: argparse.Namespace, directory: Path
) -> tuple[float, float, float]:
    async with temporary_sql_engine(kind, directory) as engine:
        await create_all(engine, metering_metadata, peer_metadata)
        metering = Metering(SpecRegistry(tokens), SqlMeteringStore(engine))
        rng = random.Random(7)
        ours: list[float] = []
        peer: list[float] = []
        # one untimed warm-up of each side (connections, statement caches)
        warm = records(500, "warm", rng)
        await ours_round(metering, warm, args.batch, "warm")
        await peer_round(engine, warm, args.batch, "warm")
        for r in range(args.rounds):
            raw = records(args.n, f"org-{r}", rng)
            if r % 2 == 0:
                ours.append(await ours_round(metering, raw, args.batch, f"org-{r}"))
                peer.append(await peer_round(engine, raw, args.batch, f"org-{r}"))
            else:
                peer.append(await peer_round(engine, raw, args.batch, f"org-{r}"))
                ours.append(await ours_round(metering, raw, args.batch, f"org-{r}"))
            await check_equal(metering, engine, f"org-{r}")
        paired = statistics.median(o / p for o, p in zip(ours, peer, strict=True))
        return statistics.median(ours), statistics.median(peer), paired


class CallIn(BaseModel):
    n: int


class CallOut(BaseModel):
    n: int


async def overhead(args: argparse.Namespace) -> tuple[float, float]:
    call = define_command("bench.call", input=CallIn, output=CallOut)
    calls = define_meter("api.calls", unit="call", aggregation="count", window="day")
    plan = define_plan(
        "unlimited", entitlements=[Feature("api"), Limit("api.calls", 10**12, window="month")]
    )
    registry = SpecRegistry(call, calls, plan, meter_operation(call, meter=calls, feature="api"))

    @registry.handler(call)
    async def _call(inp: CallIn, ctx: HandlerCtx) -> CallOut:
        return CallOut(n=inp.n)

    metering = Metering(registry, MemoryMeteringStore())
    await metering.assign_plan("org-1", "unlimited")
    on = Executor(registry, backend=MemoryBackend(), middleware=[metering.middleware()])
    off = Executor(registry, backend=MemoryBackend())
    ctx = CallContext(actor=Actor.user("u1"), org_id="org-1")

    async def per_call(ex: Executor) -> float:
        started = time.perf_counter()
        for i in range(args.calls):
            await ex.execute("bench.call", {"n": i}, ctx)
        return float((time.perf_counter() - started) / args.calls * 1e6)

    await per_call(on)
    await per_call(off)
    with_mw: list[float] = []
    without: list[float] = []
    for r in range(args.rounds):
        pair = (on, off) if r % 2 == 0 else (off, on)
        for ex in pair:
            (with_mw if ex is on else without).append(await per_call(ex))
    used = await metering.current("api.calls", "org-1")
    assert used.value == args.calls * (args.rounds + 1), used
    return statistics.median(with_mw), statistics.median(without)


async def main(args: argparse.Namespace) -> None:
    print(
        f"metering_throughput: rounds={args.rounds} n={args.n} (+10% redeliveries) batch={args.batch}"
    )
    print(
        f"{'database':<11} {'ours rec/s':>11} {'baseline rec/s':>15} {'ratio':>7} "
        f"{'paired':>7}  target >= 0.80x"
    )
    with tempfile.TemporaryDirectory() as directory:
        kinds = ["sqlite"] + (
            ["postgres"] if os.environ.get("CONTRACTSPEC_TEST_POSTGRES_DSN") else []
        )
        for kind in kinds:
            ours, peer, paired = await ingestion(kind, args, Path(directory))
            verdict = "met" if ours / peer >= 0.8 else "NOT met"
            print(
                f"{kind:<11} {ours:>11,.0f} {peer:>15,.0f} {ours / peer:>6.2f}x "
                f"{paired:>6.2f}x  {verdict}"
            )
        if "postgres" not in kinds:
            print("postgres    skipped: CONTRACTSPEC_TEST_POSTGRES_DSN is unset")
    with_mw, without = await overhead(args)
    diff = with_mw - without
    verdict = "met" if diff < 20 else "NOT met"
    print(
        f"quota check overhead (memory, {args.calls} calls/round): with middleware "
        f"{with_mw:.1f} us/call, without {without:.1f} us/call, overhead {diff:.1f} us "
        f"(target < 20 us: {verdict})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median is printed)")
    parser.add_argument("--n", type=int, default=10_000, help="usage records per round")
    parser.add_argument("--batch", type=int, default=1_000, help="records per transaction")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per overhead round")
    asyncio.run(main(parser.parse_args()))
