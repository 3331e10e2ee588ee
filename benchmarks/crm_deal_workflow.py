"""What moving the CRM's deal stages onto a workflow costs the CDNOW import, side by side.

Runs the CRM example's full CDNOW import (`crm_pipeline.main.run`: every purchase becomes
validated, authorized calls persisted with their outbox events and hash-chained audit records,
group commits of 1,000 calls, one writer, a fresh SQLite file) from two source trees:

* `before`: `packages/contractspec-core/src` and `examples/crm_pipeline` of a git revision
  (default `6aa9435`: the CRM with its own stage field, on the core the example moved with);
* `after`: the same two directories of another revision, or of the working tree (the default,
  `WORKTREE`: today's CRM, whose deal stages are the `crm.deal.pipeline` workflow on the deals).
  Any two revisions can be compared, e.g. `--before 27ea5d0~1 --after 487ebc5` (the first
  workflow version of the CRM, 1.14x CPU).

Each run is a fresh process (`PYTHONPATH` points at the side's tree); the sides are interleaved
(before/after, then after/before, ...) so load changes on a shared machine hit both alike. It
prints each run, then per side the median (and range) of the import's wall seconds
(`ImportStats.seconds`) and of the importing process's CPU seconds (`time.process_time` around
`run`, steadier under load), and the after/before ratios.

    .venv/bin/python benchmarks/crm_deal_workflow.py [--runs 3] [--limit N] [--before REV]
        [--after REV|WORKTREE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("packages/contractspec-core/src", "examples/crm_pipeline")

CHILD = r"""
import asyncio, json, sys, tempfile, time
from pathlib import Path
import contractspec.core, crm_pipeline
from crm_pipeline.main import data_file, read_purchases, run
from contractspec.core.testing import temporary_sql_engine

limit = int(sys.argv[1]) if sys.argv[1] != "all" else None
purchases = read_purchases(data_file(), limit)

async def go():
    with tempfile.TemporaryDirectory() as tmp:
        async with temporary_sql_engine("sqlite", Path(tmp)) as engine:
            cpu = time.process_time()
            stats, _summary, verified = await run(engine, purchases, show_progress=False)
            cpu = time.process_time() - cpu
    return {
        "wall": stats.seconds, "cpu": cpu, "calls": stats.calls, "failures": stats.failures,
        "purchases": len(purchases), "verified": bool(verified),
        "core": contractspec.core.__file__, "crm": crm_pipeline.__file__,
    }

print(json.dumps(asyncio.run(go())))
"""


def tree_of_revision(rev: str, into: Path) -> Path:
    """`PARTS` of git revision `rev`, extracted under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, *PARTS], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def tree_of_worktree(into: Path) -> Path:
    """A copy of `PARTS` of the working tree (so edits during the run do not mix in)."""
    for part in PARTS:
        shutil.copytree(
            ROOT / part, into / part, ignore=shutil.ignore_patterns("__pycache__", "tests")
        )
    return into


def one_run(tree: Path, limit: str) -> dict[str, object]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{tree / PARTS[0]}{os.pathsep}{tree / 'examples'}"
    env.setdefault("CONTRACTSPEC_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, limit], check=True, capture_output=True, text=True, env=env
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    if not str(result["core"]).startswith(str(tree)) or not str(result["crm"]).startswith(
        str(tree)
    ):
        raise RuntimeError(f"the run imported the wrong tree: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", default="all", help="purchases to import (default all)")
    parser.add_argument("--before", default="6aa9435", help="git revision of the before side")
    parser.add_argument(
        "--after", default="WORKTREE", help="git revision of the after side, or WORKTREE"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        after = Path(tmp) / "after"
        sides = {
            "before": tree_of_revision(args.before, Path(tmp) / "before"),
            "after": tree_of_worktree(after)
            if args.after == "WORKTREE"
            else tree_of_revision(args.after, after),
        }
        print(
            f"crm_deal_workflow: CDNOW import ({args.limit} purchases), SQLite file, one writer, "
            f"group commits of 1,000 calls, {args.runs} interleaved runs per side, fresh process "
            f"each; before = {args.before} (CRM with its own stage field), after = {args.after} "
            "(deal stages as the crm.deal.pipeline workflow on the deals)"
        )
        results: dict[str, list[dict[str, object]]] = {"before": [], "after": []}
        for i in range(args.runs):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for side in order:
                r = one_run(sides[side], args.limit)
                results[side].append(r)
                print(
                    f"  run {i + 1} {side:<6} wall {r['wall']:7.1f} s  cpu {r['cpu']:7.1f} s  "
                    f"calls {r['calls']:,}  failures {r['failures']}  audit "
                    + ("verified" if r["verified"] else "BROKEN"),
                    flush=True,
                )
    medians = {}
    for side, runs in results.items():
        wall = [float(str(r["wall"])) for r in runs]
        cpu = [float(str(r["cpu"])) for r in runs]
        medians[side] = (statistics.median(wall), statistics.median(cpu))
        print(
            f"  {side:<6} median wall {medians[side][0]:7.1f} s ({min(wall):.1f}-{max(wall):.1f})"
            f"  median cpu {medians[side][1]:7.1f} s ({min(cpu):.1f}-{max(cpu):.1f})"
        )
    wall_ratio = medians["after"][0] / medians["before"][0]
    cpu_ratio = medians["after"][1] / medians["before"][1]
    print(f"  after/before: wall {wall_ratio:.2f}x, cpu {cpu_ratio:.2f}x (goal <= 1.10x)")


if __name__ == "__main__":
    main()
