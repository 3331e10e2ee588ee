"""Transactional outbox (contractspec-bus) vs the `eventsourcing` library's application recorder.

What is measured, side by side in one run, on SQLite (a file, WAL) and on PostgreSQL:

* **append**: W concurrent writers each commit N/W transactions of `--per-tx` events
  (ours: `SqlUnitOfWork` + `SqlOutboxStore.publish`, i.e. core's `cs_outbox` insert in the
  writer's transaction; eventsourcing: `ApplicationRecorder.insert_events`, which on PostgreSQL
  takes a table lock to keep notification ids gap-free);
* **deliver**: read every appended event back in order and hand it to a subscriber (ours:
  `OutboxRelay` claims batches with a lease / `SKIP LOCKED`, validates each payload into its
  pydantic model, calls an `EventBus` subscriber and marks the batch delivered; eventsourcing:
  `select_notifications` pages, JSON-decodes each event and calls the subscriber, tracking the
  position in memory, i.e. without writing anything back);
* **events/s** = N / (append + deliver). Each configuration runs `--repeat` times; medians are
  printed with the ratio ours / eventsourcing.

The durability settings each side really ran with are read back from the databases and printed
(SQLite `journal_mode` and `synchronous`, PostgreSQL `synchronous_commit`). By default each side
uses its own recommended settings: ours `sqlite_engine` (WAL, `synchronous=NORMAL`),
eventsourcing's `SQLiteDatastore` (WAL, SQLite's default `synchronous=FULL`).
`--ours-synchronous FULL` runs ours with eventsourcing's setting, for an equal-durability row.
The relay runs with its lease heartbeat and subscriber timeout (issue 14) in place.

Run: `uv run --all-packages --all-extras --group bench python benchmarks/outbox_vs_eventsourcing.py`
(PostgreSQL cases need `CONTRACTSPEC_TEST_POSTGRES_DSN=postgresql+psycopg://user@host:port/db`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contractspec.bus import EventBus, OutboxRelay
from contractspec.bus.sql import SqlOutboxStore, create_bus_tables
from contractspec.core import EventEnvelope, SpecRegistry, define_event
from contractspec.core.sql import SqlUnitOfWork, sqlite_engine


class DealCreated(BaseModel):
    deal_id: str
    title: str
    amount: int


deal_created = define_event("crm.deal.created", payload=DealCreated, key="deal_id")
REGISTRY = SpecRegistry(deal_created)
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def envelope(writer: int, n: int) -> EventEnvelope:
    deal = f"w{writer}-d{n % 50}"
    return EventEnvelope(
        id=str(uuid.uuid4()),
        name="crm.deal.created",
        version=1,
        occurred_at=T0,
        payload=DealCreated(deal_id=deal, title=f"Deal {n}", amount=n),
        org_id="org-1",
        actor_id="u-1",
        actor_kind="user",
        key=deal,
    )


# -- ours ---------------------------------------------------------------------------------------


async def ours(engine: AsyncEngine, events: int, writers: int, per_tx: int) -> tuple[float, float]:
    await create_bus_tables(engine)
    uow = SqlUnitOfWork(engine)
    outbox = SqlOutboxStore(engine)
    per_writer = events // writers

    async def writer(w: int) -> None:
        for start in range(0, per_writer, per_tx):
            tx = await uow.begin()
            await outbox.publish([envelope(w, start + i) for i in range(per_tx)], tx)
            await tx.commit()

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    appended = time.perf_counter() - started

    received = 0

    async def subscriber(event: EventEnvelope) -> None:
        nonlocal received
        received += 1

    bus = EventBus()
    bus.subscribe("crm.deal.created", subscriber, name="bench")
    relay = OutboxRelay(outbox, bus, registry=REGISTRY, batch_size=500, lease=timedelta(minutes=5))
    started = time.perf_counter()
    while await relay.run_once():
        pass
    delivered = time.perf_counter() - started
    if received != per_writer * writers:
        raise AssertionError(f"ours delivered {received} of {per_writer * writers}")
    return appended, delivered


# -- eventsourcing --------------------------------------------------------------------------------


def theirs(recorder: Any, events: int, writers: int, per_tx: int) -> tuple[float, float]:
    from eventsourcing.persistence import StoredEvent

    per_writer = events // writers

    def stored(w: int, n: int) -> Any:
        body = envelope(w, n).to_dict()
        return StoredEvent(
            originator_id=uuid.uuid4(),
            originator_version=1,
            topic="crm.deal.created",
            state=json.dumps(body).encode(),
        )

    def writer(w: int) -> None:
        for start in range(0, per_writer, per_tx):
            recorder.insert_events([stored(w, start + i) for i in range(per_tx)])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    appended = time.perf_counter() - started

    received = 0
    position = 0
    started = time.perf_counter()
    while True:
        page = recorder.select_notifications(start=position + 1, limit=500)
        if not page:
            break
        for notification in page:
            json.loads(notification.state)
            received += 1
            position = notification.id
    delivered = time.perf_counter() - started
    if received != per_writer * writers:
        raise AssertionError(f"eventsourcing delivered {received} of {per_writer * writers}")
    return appended, delivered


# -- backends -----------------------------------------------------------------------------------


SETTINGS: dict[str, str] = {}


async def ours_settings(engine: AsyncEngine) -> str:
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            sync = (await conn.execute(text("PRAGMA synchronous"))).scalar()
            return f"journal_mode={mode}, synchronous={_SYNC.get(int(sync or 0), sync)}"
        value = (await conn.execute(text("SHOW synchronous_commit"))).scalar()
        return f"synchronous_commit={value}"


def theirs_settings(recorder: Any) -> str:
    with recorder.datastore.transaction(commit=False) as curs:
        if "sqlite" in type(recorder).__module__:
            curs.execute("PRAGMA journal_mode")
            mode = curs.fetchone()[0]
            curs.execute("PRAGMA synchronous")
            sync = curs.fetchone()[0]
            return f"journal_mode={mode}, synchronous={_SYNC.get(int(sync), sync)}"
        curs.execute("SHOW synchronous_commit")
        row = curs.fetchone()
        return (
            f"synchronous_commit={row['synchronous_commit'] if isinstance(row, dict) else row[0]}"
        )


_SYNC = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def sqlite_pair(
    directory: Path, synchronous: str | None = None
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    def make_ours() -> Any:
        engine = sqlite_engine(directory / f"ours-{uuid.uuid4().hex[:6]}.db")
        if synchronous is not None:

            @event.listens_for(engine.sync_engine, "connect")
            def _sync(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                cursor.execute(f"PRAGMA synchronous={synchronous}")
                cursor.close()

        return engine

    def make_theirs() -> Any:
        from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

        datastore = SQLiteDatastore(str(directory / f"es-{uuid.uuid4().hex[:6]}.db"), pool_size=10)
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        return recorder

    return make_ours, make_theirs


def postgres_pair(dsn: str, writers: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
    url = urlparse(dsn.replace("postgresql+psycopg://", "postgresql://"))

    def new_schema() -> str:
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:10]}"
        plain = dsn.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        return schema

    def make_ours() -> Any:
        schema = new_schema()
        return create_async_engine(
            dsn,
            pool_size=writers + 2,
            connect_args={"options": f"-csearch_path={schema}"},
        )

    def make_theirs() -> Any:
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

        datastore = PostgresDatastore(
            dbname=url.path.lstrip("/") or "postgres",
            host=url.hostname or "127.0.0.1",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password or "",
            pool_size=writers + 2,
            schema=new_schema(),
        )
        recorder = PostgresApplicationRecorder(datastore)
        recorder.create_table()
        return recorder

    return make_ours, make_theirs


def run_ours(
    make: Callable[[], Any], events: int, writers: int, per_tx: int
) -> tuple[float, float]:
    async def go() -> tuple[float, float]:
        engine = make()
        try:
            result = await ours(engine, events, writers, per_tx)
            SETTINGS[f"ours {engine.dialect.name}"] = await ours_settings(engine)
            return result
        finally:
            await engine.dispose()

    return asyncio.run(go())


def run_theirs(
    make: Callable[[], Any], events: int, writers: int, per_tx: int
) -> tuple[float, float]:
    recorder = make()
    try:
        result = theirs(recorder, events, writers, per_tx)
        kind = "sqlite" if "sqlite" in type(recorder).__module__ else "postgresql"
        SETTINGS[f"eventsourcing {kind}"] = theirs_settings(recorder)
        return result
    finally:
        recorder.datastore.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events per configuration")
    parser.add_argument("--per-tx", type=int, default=1, help="events per transaction")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    parser.add_argument(
        "--ours-synchronous",
        choices=["NORMAL", "FULL"],
        default=None,
        help="SQLite synchronous for ours (default: sqlite_engine's NORMAL)",
    )
    args = parser.parse_args()
    dsn = os.environ.get("CONTRACTSPEC_TEST_POSTGRES_DSN")
    print(
        f"{args.events} events per run, {args.per_tx} event(s) per transaction, "
        f"median of {args.repeat} runs; events/s = events / (append + deliver)"
    )
    header = f"{'backend':9} {'writers':>7} | {'ours ev/s':>10} {'(append':>8} {'deliver)':>9} | {'es ev/s':>9} {'(append':>8} {'deliver)':>9} | {'ratio':>6}"  # fmt: skip
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends:
            if backend == "postgres" and not dsn:
                print("postgres  skipped: set CONTRACTSPEC_TEST_POSTGRES_DSN")
                continue
            for writers in args.writers:
                make_ours, make_theirs = (
                    sqlite_pair(Path(tmp), args.ours_synchronous)
                    if backend == "sqlite"
                    else postgres_pair(dsn or "", writers)
                )
                n = args.events - args.events % (writers * args.per_tx)
                o_runs, t_runs = [], []
                for _ in range(args.repeat):
                    o_runs.append(run_ours(make_ours, n, writers, args.per_tx))
                    t_runs.append(run_theirs(make_theirs, n, writers, args.per_tx))
                o_total = statistics.median(a + d for a, d in o_runs)
                t_total = statistics.median(a + d for a, d in t_runs)
                o_app = statistics.median(n / a for a, _ in o_runs)
                o_del = statistics.median(n / d for _, d in o_runs)
                t_app = statistics.median(n / a for a, _ in t_runs)
                t_del = statistics.median(n / d for _, d in t_runs)
                print(
                    f"{backend:9} {writers:>7} | {n / o_total:>10,.0f} {o_app:>8,.0f} {o_del:>9,.0f} | "
                    f"{n / t_total:>9,.0f} {t_app:>8,.0f} {t_del:>9,.0f} | {t_total / o_total:>5.2f}x"
                )
    print("settings read back from the databases:")
    for side, value in sorted(SETTINGS.items()):
        print(f"  {side:24} {value}")


if __name__ == "__main__":
    main()
