"""A relay process for the crash test: `python bus_crash_relay.py URL SCHEMA LOG HANG_AT`.

It delivers the outbox to an idempotent consumer that inserts one `crm_effect` row per event (in
the consumer's own transaction, next to the processed-events record) and appends every raw
delivery to LOG. With HANG_AT > 0 it announces `hanging` in LOG when it reaches that event and
hangs inside the handler, so the parent can SIGKILL it between the claim's commit and the
batch's `mark_delivered`. It exits when every outbox row is delivered.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from typing import Any

from bus_support import build_registry
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from contractspec.bus import EventBus, IdempotentConsumer, OutboxRelay
from contractspec.bus.sql import SqlOutboxStore, SqlProcessedEventStore
from contractspec.core import EventEnvelope, Transaction, define_entity
from contractspec.core.sql import (
    EntityTables,
    SqlEntityStore,
    SqlUnitOfWork,
    configure_sqlite_engine,
)


class Effect(BaseModel):
    id: str
    deal_id: str


effect_entity = define_entity("crm.effect", Effect, tenant_scoped=False)
effect_tables = EntityTables([effect_entity])


def make_engine(url: str, schema: str) -> Any:
    if url.startswith("sqlite"):
        return configure_sqlite_engine(create_async_engine(url))
    return create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})


async def main(url: str, schema: str, log_path: str, hang_at: int) -> None:
    engine = make_engine(url, schema)
    seen = 0
    log = open(log_path, "a", buffering=1)  # noqa: SIM115, ASYNC230 - a test worker: closed in finally
    try:
        store = SqlEntityStore(effect_tables)

        async def effect(event: EventEnvelope, tx: Transaction) -> None:
            repo = store.repository(effect_entity, tx, None)
            await repo.add(Effect(id=event.id, deal_id=event.payload.deal_id))  # type: ignore[attr-defined]

        consumer = IdempotentConsumer(
            "crash-test",
            effect,
            unit_of_work=SqlUnitOfWork(engine),
            processed=SqlProcessedEventStore(engine),
        )

        async def handler(event: EventEnvelope) -> None:
            nonlocal seen
            seen += 1
            if hang_at and seen == hang_at:
                log.write("hanging\n")
                os.fsync(log.fileno())
                await asyncio.sleep(3600)
            await consumer(event)
            log.write(f"delivered {event.id}\n")

        bus = EventBus(registry=build_registry())
        bus.subscribe("crm.*", handler, name="crash-test")
        outbox = SqlOutboxStore(engine)
        relay = OutboxRelay(outbox, bus, batch_size=10, lease=timedelta(seconds=1))
        while True:
            await relay.drain()
            if not await outbox.messages(status="pending", limit=1):
                break
            await asyncio.sleep(0.2)
        log.write("done\n")
    finally:
        log.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
