"""Record the CRM's real traffic and generate its golden pytest suites from it.

1. **Record**: the real CDNOW import (`crm_pipeline.main.import_purchases`, first `LIMIT` purchases)
   runs through an executor whose `TrafficRecorder` keeps every call (rate 1.0), redacted; then a
   sales user's dashboard session (reports, board, searches) and a few failing calls run on top.
2. **Generate**: one golden module per operation in `WORLDS`, into `tests/golden/`, each replayed
   in its world (`crm_golden.worlds`) to detect non-deterministic fields and to leave out calls that
   do not replay. Existing modules are merged: nothing is deleted.

Run: `uv run python -m crm_golden.generate [--store URL]` (default: a temporary JSON Lines file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any

from crm_pipeline.main import ORG_ID, import_purchases
from crm_pipeline.spec import policy, registry

from contractspec.core import Actor, CallContext, ContractSpecError, Executor
from contractspec.testing import (
    GeneratedSuite,
    GoldenTestGenerator,
    RecorderStats,
    TrafficRecorder,
    TrafficStore,
    open_store,
)
from contractspec.testing._literal import identifier
from crm_golden.worlds import WORLDS, purchases

__all__ = ["GOLDEN_DIR", "REGISTRY_REF", "SESSION", "generate", "record"]

GOLDEN_DIR = Path(__file__).parent / "tests" / "golden"
REGISTRY_REF = "crm_pipeline.spec:registry"

#: A sales user's session after the import: reads, then calls that fail or write.
SESSION: list[tuple[str, dict[str, Any]]] = [
    ("crm.report.summary", {"top": 5}),
    ("crm.report.summary", {}),
    ("crm.pipeline.board", {"per_column": 3}),
    ("crm.pipeline.board", {"per_column": 0}),
    ("crm.deal.search", {"stage": "won", "limit": 5}),
    ("crm.deal.search", {"stage": "lost", "limit": 5}),
    ("crm.deal.search", {"min_amount": "100.00", "limit": 3}),
    ("crm.deal.search", {"text": "ordered 1997-01", "contact_id": "cdnow-00003"}),
    ("crm.deal.search", {"limit": 0}),
    ("crm.contact.search", {"text": "customer 0001", "limit": 5}),
    ("crm.contact.search", {"text": "nobody"}),
    ("crm.deal.create", {"contact_id": "cdnow-99999", "title": "Box set", "amount": "59.90"}),
    ("crm.contact.create", {"id": "cdnow-00001", "name": "Duplicate of customer 1"}),
    (
        "crm.contact.create",
        {"id": "ann-lee", "name": "Ann Lee", "email": "ann.lee@example.org", "source": "web"},
    ),
]


async def record(store: TrafficStore, *, sample_rate: float = 1.0) -> RecorderStats:
    """Run the import and the session through a recording executor; return the recorder's stats."""
    recorder = TrafficRecorder(store, sample_rate=sample_rate)
    executor = Executor(registry, policy=policy(), traffic=recorder)
    stats = await import_purchases(executor, purchases())
    if stats.failures:
        raise RuntimeError(f"the CDNOW import failed while recording: {stats.errors}")
    user = Actor.user("ana", roles="sales")
    for n, (operation, payload) in enumerate(SESSION):
        call = CallContext(
            actor=user,
            org_id=ORG_ID,
            channel="http",
            trace_id=f"dashboard-{n}",
            request_id=f"req-{n}",
        )
        with contextlib.suppress(ContractSpecError):  # failures are recorded like successes
            await executor.execute(operation, payload, call)
    await recorder.aclose()
    return recorder.stats


async def generate(store: TrafficStore, out_dir: Path = GOLDEN_DIR) -> list[GeneratedSuite]:
    """Write (or extend) one golden module per operation of `WORLDS` from the store's traffic."""
    snapshots = await store.query()
    results = []
    for operation, world in WORLDS.items():
        generator = GoldenTestGenerator(
            registry, registry_ref=REGISTRY_REF, executor_factory=world, max_cases=12
        )
        target = out_dir / f"test_{identifier(operation)}.py"
        results.append(await generator.write(target, snapshots, operation))
    return results


async def _main(store_url: str | None, out_dir: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = store_url or f"jsonl:{Path(tmp) / 'crm-traffic.jsonl'}"
        async with open_store(url) as store:
            stats = await record(store)
            print(f"recorded {stats.stored} of {stats.seen} calls into {url}")
            for result in await generate(store, out_dir):
                suite = result.suite
                print(
                    f"{suite.operation}: {len(result.added)} added, {len(result.kept)} kept, "
                    f"{len(result.skipped)} left out; mask {list(suite.mask)}"
                )


def main() -> None:
    """Entry point: `python -m crm_golden.generate`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None, help="traffic store URL (default: temp JSONL)")
    parser.add_argument("--out", type=Path, default=GOLDEN_DIR, help="where the modules go")
    args = parser.parse_args()
    asyncio.run(_main(args.store, args.out))


if __name__ == "__main__":
    main()
