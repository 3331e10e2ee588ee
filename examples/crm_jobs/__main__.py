"""`python -m crm_jobs [--serve FILE]`: the demo on a temporary database, or the real worker."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from contractspec.core.sql import sqlite_engine
from contractspec.core.testing import FakeClock
from crm_jobs.app import build_app
from crm_jobs.demo import run_demo, serve


async def demo() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(Path(tmp) / "crm.db")
        try:
            clock = FakeClock()
            outcome = await run_demo(await build_app(engine, clock=clock), clock)
        finally:
            await engine.dispose()
    for fire in outcome.fires:
        print(f"{fire.schedule:<22} {fire.fire_time.isoformat()}  enqueued={fire.enqueued}")
    print(
        "nightly report:", {k: outcome.report[k] for k in ("contacts", "deals", "pipeline_value")}
    )
    print("reminders sent:", outcome.reminded)
    print("jobs:", outcome.statuses)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m crm_jobs", description=__doc__)
    parser.add_argument("--serve", metavar="FILE", help="run scheduler + worker on a SQLite file")
    args = parser.parse_args()
    asyncio.run(serve(args.serve) if args.serve else demo())


if __name__ == "__main__":
    main()
