"""Throughput of the CRM example's CDNOW import through the runtime, on SQLite and PostgreSQL.

Every purchase of the real CDNOW history (69,659 rows) becomes validated, authorized operations
(contact, deal create, moves, tasks) persisted with their outbox events and hash-chained audit
records, in group commits of 1,000 calls. PostgreSQL runs when CONTRACTSPEC_TEST_POSTGRES_DSN is set
(in a throw-away schema). Pass a row limit as the first argument for a quicker run.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from crm_pipeline.main import data_file, read_purchases, run

from contractspec.core.testing import postgres_dsn, temporary_sql_engine


async def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else None
    path = data_file()
    if not path.is_file():
        print(f"cdnow_import: skipped, data not found at {path}")
        return
    purchases = read_purchases(path, limit)
    kinds = ["sqlite"] + (["postgres"] if postgres_dsn() else [])
    print(f"cdnow_import  {len(purchases):,} purchases")
    for kind in kinds:
        with tempfile.TemporaryDirectory() as tmp:
            async with temporary_sql_engine(kind, Path(tmp)) as engine:
                stats, _summary, verified = await run(engine, purchases, show_progress=False)
        print(
            f"  {kind:<8} {stats.calls:>8,} operations in {stats.seconds:6.1f} s: "
            f"{stats.calls_per_second:>8,.0f} operations/s, "
            f"{stats.purchases / stats.seconds:>7,.0f} purchases/s, failures {stats.failures}, "
            f"audit chain {'verified' if verified else 'BROKEN'}"
        )
    if not postgres_dsn():
        print("  postgres skipped: set CONTRACTSPEC_TEST_POSTGRES_DSN")


if __name__ == "__main__":
    asyncio.run(main())
