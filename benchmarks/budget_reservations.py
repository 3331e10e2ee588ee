"""Budget reservations: `SqlBudgetStore.reserve` (one conditional upsert) vs a hand-written
lock-read-write reservation, under concurrent reservers.

Each round starts C concurrent reservers on one budget key (a fresh key per round and side), each
making R reservations of 1 against a cap of C * R / 2, one transaction per reservation: half are
granted, half refused, so both paths (grant and refusal) are timed. Both sides run in
`SqlUnitOfWork` transactions on the same engine and write the same rows (the total in
`cs_agent_budgets`, one `held` row per granted action in `cs_agent_budget_reservations`):

* **ours**: `SqlBudgetStore().reserve(..., new=True)` as the gateway calls it for a first
  attempt: `INSERT … ON CONFLICT (org_key, key) DO UPDATE SET reserved = reserved + :amount WHERE
  reserved + :amount <= :cap RETURNING reserved` (one cached statement), then the reservation
  row; a refusal re-reads the total for the call's proof.
* **baseline** (the usual pattern: lock the row, read, decide in Python, write): `SELECT reserved
  … FOR UPDATE` (PostgreSQL; SQLite's write transaction already excludes other writers), then
  `UPDATE … SET reserved = :new` when it fits, then the reservation row.

Both must grant exactly C * R / 2 (checked). SQLite: `contractspec.core.sql.sqlite_engine(file)`
through `temporary_sql_engine`; PostgreSQL: `CONTRACTSPEC_TEST_POSTGRES_DSN` in a fresh schema
(skipped when unset). Figure: median over rounds of reservations/s; ratio = ours / baseline of
the medians; sides alternate first within each round.

Run: `uv run --all-packages --all-extras --group bench python benchmarks/budget_reservations.py`
(`--rounds 5 --concurrency 20 --per 25`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert, select, update

from contractspec.agent.sql import (
    SqlBudgetStore,
    budget_reservations_table,
    budgets_table,
    create_all,
)
from contractspec.core.sql import SqlUnitOfWork, sql_transaction
from contractspec.core.testing import temporary_sql_engine

NOW = datetime(2024, 1, 1, tzinfo=UTC)


async def ours(uow: SqlUnitOfWork, key: str, action: str, cap: Decimal) -> bool:
    tx = await uow.begin()
    try:
        got = await SqlBudgetStore().reserve(
            tx,
            org_id="org",
            key=key,
            action_id=action,
            amount=Decimal(1),
            cap=cap,
            now=NOW,
            new=True,
        )
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise
    return got.granted


async def baseline(uow: SqlUnitOfWork, key: str, action: str, cap: Decimal) -> bool:
    b, r = budgets_table, budget_reservations_table
    tx = await uow.begin()
    try:
        stx = sql_transaction(tx)
        stmt = select(b.c.reserved).where(b.c.org_key == "org", b.c.key == key)
        if stx.dialect == "postgresql":
            stmt = stmt.with_for_update()
        current = (await stx.execute(stmt, locks=True)).scalar()
        assert current is not None  # seeded
        granted = current + 1 <= cap
        if granted:
            await stx.write(
                update(b)
                .where(b.c.org_key == "org", b.c.key == key)
                .values(reserved=current + 1, updated_at=NOW)
            )
            await stx.write(
                insert(r).values(
                    org_key="org",
                    action_id=action,
                    key=key,
                    amount=Decimal(1),
                    status="held",
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise
    return granted


async def side(uow: SqlUnitOfWork, fn: object, key: str, args: argparse.Namespace) -> float:
    reserve = fn  # ours or baseline
    assert callable(reserve)
    cap = Decimal(args.concurrency * args.per // 2)
    tx = await uow.begin()  # the row exists: every reserver takes the same (update) path
    await SqlBudgetStore().reserve(
        tx, org_id="org", key=key, action_id=f"{key}-seed", amount=Decimal(0), cap=cap, now=NOW
    )
    await tx.commit()

    async def worker(w: int) -> int:
        return sum([await reserve(uow, key, f"{key}-{w}-{i}", cap) for i in range(args.per)])

    start = time.perf_counter()
    granted = sum(await asyncio.gather(*(worker(w) for w in range(args.concurrency))))
    elapsed = time.perf_counter() - start
    assert granted == cap, (key, granted, cap)
    return args.concurrency * args.per / elapsed


async def database(kind: str, args: argparse.Namespace, directory: Path) -> tuple[float, float]:
    async with temporary_sql_engine(kind, directory) as engine:
        await create_all(engine)
        uow = SqlUnitOfWork(engine)
        await side(uow, ours, "warm-ours", args)
        await side(uow, baseline, "warm-base", args)
        mine: list[float] = []
        peer: list[float] = []
        for n in range(args.rounds):
            pair = [(mine, ours, f"ours-{n}"), (peer, baseline, f"base-{n}")]
            for out, fn, key in pair if n % 2 == 0 else reversed(pair):
                out.append(await side(uow, fn, key, args))
        return statistics.median(mine), statistics.median(peer)


async def main(args: argparse.Namespace) -> None:
    print(
        f"budget_reservations: rounds={args.rounds} concurrency={args.concurrency} "
        f"per={args.per} (cap = half of all reservations; one transaction each)"
    )
    print(f"{'database':<10} {'ours res/s':>11} {'baseline res/s':>15} {'ratio':>7}")
    with tempfile.TemporaryDirectory() as directory:
        kinds = ["sqlite"] + (
            ["postgres"] if os.environ.get("CONTRACTSPEC_TEST_POSTGRES_DSN") else []
        )
        for kind in kinds:
            mine, peer = await database(kind, args, Path(directory))
            print(f"{kind:<10} {mine:>11,.0f} {peer:>15,.0f} {mine / peer:>6.2f}x")
        if "postgres" not in kinds:
            print("postgres   skipped: CONTRACTSPEC_TEST_POSTGRES_DSN is unset")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median is printed)")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent reservers")
    parser.add_argument("--per", type=int, default=25, help="reservations per reserver")
    asyncio.run(main(parser.parse_args()))
