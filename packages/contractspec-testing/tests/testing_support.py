"""Test helpers: snapshots made to order and the traffic-store fixture over every adapter."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from contractspec.core.testing import POSTGRES_DSN_ENV, postgres_dsn, temporary_sql_engine
from contractspec.testing import JsonlTrafficStore, MemoryTrafficStore, Snapshot, TrafficStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

STORE_KINDS = ["memory", "jsonl", "sqlite", "postgres"]


def snap(n: int, **changes: Any) -> Snapshot:
    """Snapshot number `n`: `crm.deal.create@1`, recorded `n` minutes after T0."""
    values: dict[str, Any] = {
        "id": f"s-{n:04d}",
        "operation": "crm.deal.create",
        "version": 1,
        "recorded_at": T0 + timedelta(minutes=n),
        "input": {"title": f"deal {n}", "amount": "10.00"},
        "output": {"id": f"d-{n}", "title": f"deal {n}"},
        "duration_ms": 1.5,
        "org_id": "org-1",
        "actor_id": "u-1",
        "trace_id": f"t-{n}",
        "request_id": f"r-{n}",
        "channel": "api",
    }
    values.update(changes)
    return Snapshot(**values)


def check_postgres(kind: str) -> None:
    """Skip PostgreSQL cases without a DSN (fail when CONTRACTSPEC_REQUIRE_POSTGRES=1)."""
    if kind == "postgres" and not postgres_dsn():
        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"CONTRACTSPEC_REQUIRE_POSTGRES=1 but {POSTGRES_DSN_ENV} is unset")
        pytest.skip(f"PostgreSQL tests need {POSTGRES_DSN_ENV}")


async def open_test_store(kind: str, tmp_path: Path) -> AsyncIterator[TrafficStore]:
    """A fresh store of `kind` (memory, JSONL file, SQLite file, PostgreSQL schema)."""
    check_postgres(kind)
    if kind == "memory":
        yield MemoryTrafficStore()
    elif kind == "jsonl":
        yield JsonlTrafficStore(tmp_path / "traffic.jsonl")
    else:
        from contractspec.testing.sql import SqlTrafficStore

        async with temporary_sql_engine(kind, tmp_path) as engine:
            store = SqlTrafficStore(engine)
            await store.create_all()
            yield store
