"""A second app process for the cross-process tests: it keeps its engine fresh with `PolicySync`
and reports when a decision turns to denied.

Usage: `python identity_sync_process.py KIND TARGET USER PERMISSION ORG POLL_S`, where TARGET is
the SQLite file (KIND `sqlite`) or `DSN#SCHEMA` (KIND `postgres`). It prints `ready <allowed>`
once synced, then `denied <unix time>` when `USER` loses `PERMISSION` in `ORG`, and exits.
"""

from __future__ import annotations

import asyncio
import sys
import time

import structlog

from contractspec.core import Executor, SpecRegistry
from contractspec.core.sql import SqlBackend, sqlite_engine
from contractspec.identity import register_identity
from contractspec.identity.sql import SqlIdentityStore


async def main(kind: str, target: str, user: str, permission: str, org: str, poll: float) -> None:
    # stdout carries the protocol; logs go to stderr (inherited: the test runner captures it)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if kind == "sqlite":
        engine = sqlite_engine(target)
    else:
        from sqlalchemy.ext.asyncio import create_async_engine

        dsn, schema = target.split("#")
        engine = create_async_engine(dsn, connect_args={"options": f"-csearch_path={schema}"})
    registry = SpecRegistry()
    identity = register_identity(registry)
    backend = SqlBackend(engine, registry)
    identity.store = SqlIdentityStore(backend.tables)
    executor = Executor(registry, backend=backend, policy=identity.engine)
    try:
        async with identity.sync(executor.unit_of_work, poll_interval_s=poll, max_staleness_s=None):
            allowed = identity.engine.check(user, permission, org_id=org).allowed
            print(f"ready {allowed}", flush=True)
            # polls the decision itself: what a request in this process would get
            while identity.engine.check(user, permission, org_id=org).allowed:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            print(f"denied {time.time()}", flush=True)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    k, t, u, p, o, s = sys.argv[1:7]
    asyncio.run(main(k, t, u, p, o, float(s)))
