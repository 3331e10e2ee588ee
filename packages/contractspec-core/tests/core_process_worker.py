"""A second app process for the cross-process tests: `python core_process_worker.py SPEC.json`.

SPEC holds the database (`url`, PostgreSQL `schema`), what to run and where to write the report:
`increments` (plain and locked read-modify-write calls on counter `ctr`), `idempotent` (one
`crm.deal.create` per key in `keys`), and `exit_after` (call `os._exit(1)` inside an open batch
after that many calls, without committing). The report lists every call's outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from core_guarantees_app import build_app, call_ctx, make_executor
from sqlalchemy.ext.asyncio import create_async_engine

from contractspec.core import ContractSpecError, UuidGenerator
from contractspec.core.sql import SqlBackend, sqlite_engine


def make_engine(url: str, schema: str) -> Any:
    if url.startswith("sqlite"):
        return sqlite_engine(url.split("///", 1)[1])
    return create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})


async def main(spec: dict[str, Any]) -> None:
    engine = make_engine(spec["url"], spec["schema"])
    app = build_app()
    backend = SqlBackend(engine, app.registry)
    ex = make_executor(app, backend, ids=UuidGenerator())  # unique across processes
    name = spec["name"]
    report: dict[str, Any] = {"outcomes": [], "committed": 0}
    out = Path(spec["report"])

    async def call(operation: str, data: dict[str, Any], rid: str, key: str | None = None) -> None:
        try:
            result = await ex.execute(operation, data, call_ctx(rid, idempotency_key=key))
        except ContractSpecError as exc:
            report["outcomes"].append([rid, operation, exc.code, None])
        else:
            report["outcomes"].append([rid, operation, "ok", result.model_dump(mode="json")])

    try:
        for i in range(spec.get("increments", 0)):
            op = "ops.counter.increment_locked" if i % 2 else "ops.counter.increment"
            await call(op, {"id": "ctr"}, f"{name}-inc-{i}")
        for key in spec.get("keys", ()):
            data = {"contact_id": "seed", "title": f"idem-{key}", "amount": "5"}
            await call("crm.deal.create", data, f"{name}-idem-{key}", key)
        exit_after = spec.get("exit_after")
        if exit_after is not None:
            async with ex.batch(commit_every=spec.get("commit_every", 5)) as batch:
                for i in range(10_000):
                    if i == exit_after:
                        out.write_text(json.dumps(report))  # noqa: ASYNC240 - the process ends here
                        os._exit(1)  # mid-batch: the calls since the last commit are lost
                    await call("ops.counter.increment_locked", {"id": "ctr"}, f"{name}-b-{i}")
                    if batch.pending == 0:  # this call's group just committed
                        report["committed"] = batch.calls
        out.write_text(json.dumps(report))  # noqa: ASYNC240 - a small report, once
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
