"""Throughput of the CRM example's CDNOW import through the runtime, on SQLite and PostgreSQL.

Every purchase of the real CDNOW history (69,659 rows) becomes validated, authorized operations
(contact, deal create, moves, tasks) persisted with their outbox events and hash-chained audit
records, in group commits of 1,000 calls. Rows:

* `sqlite`: one writer on a SQLite file;
* `postgres`: one writer on PostgreSQL;
* `postgres x4`: four writers on PostgreSQL (asyncio tasks, each with its own `executor.batch()`,
  purchases split by customer so they never touch the same records).

Each row then reruns the import on the same database, which finds everything stored and issues no
call (the cost of resuming: reading the stored state). PostgreSQL runs when
CONTRACTSPEC_TEST_POSTGRES_DSN is set (in a throw-away schema). Pass a row limit as the first
argument for a quicker run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from crm_pipeline.main import Purchase, data_file, read_purchases, run

from contractspec.core.testing import postgres_dsn, temporary_sql_engine

ROWS = [("sqlite", 1), ("postgres", 1), ("postgres", 4)]


async def row(kind: str, writers: int, purchases: list[Purchase]) -> None:
    """Import into a fresh database, print the figures, then time a rerun on it."""
    with tempfile.TemporaryDirectory() as tmp:
        async with temporary_sql_engine(kind, Path(tmp)) as engine:
            stats, _summary, verified = await run(
                engine, purchases, show_progress=False, writers=writers
            )
            again, _, _ = await run(engine, purchases, show_progress=False, writers=writers)
    name = kind if writers == 1 else f"{kind} x{writers}"
    print(
        f"  {name:<11} {stats.calls:>8,} operations in {stats.seconds:6.1f} s: "
        f"{stats.calls_per_second:>8,.0f} operations/s, "
        f"{stats.purchases / stats.seconds:>7,.0f} purchases/s, failures {stats.failures}, "
        f"committed {stats.committed.calls:,}, audit chain "
        + ("verified" if verified else f"BROKEN ({verified.reason})")
    )
    print(
        f"  {'':<11} rerun: {again.calls:,} operations, {again.skipped:,} purchases already "
        f"stored, {again.state_seconds + again.seconds:.2f} s"
    )


async def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
    path = data_file()
    if not path.is_file():
        print(f"cdnow_import: skipped, data not found at {path}")
        return
    purchases = read_purchases(path, limit)
    print(f"cdnow_import  {len(purchases):,} purchases, group commits of 1,000 calls")
    for kind, writers in ROWS:
        if kind == "postgres" and not postgres_dsn():
            print("  postgres skipped: set CONTRACTSPEC_TEST_POSTGRES_DSN")
            break
        await row(kind, writers, purchases)


if __name__ == "__main__":
    asyncio.run(main())
