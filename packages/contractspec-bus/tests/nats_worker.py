"""A JetStream worker process for the crash tests.

`python nats_worker.py relay URL SCHEMA NATS_URL NAME:PREFIX LOG HANG_AT`: relays the outbox to
JetStream; after JetStream acknowledged event number HANG_AT (and before the relay marks it) it
logs `hanging` and hangs, so the parent can SIGKILL it mid-batch. Exits when nothing is pending.

`python nats_worker.py relay-run ...`: a `JetStreamRelay` in `run()` (batch 10, lease 1 s,
lingering 60 s after a batch that was not full); once HANG_AT events are delivered (their marks
kept back for the next claim) it logs `hanging` and hangs.

`python nats_worker.py consume URL SCHEMA NATS_URL NAME:PREFIX LOG HANG_AT`: a `JetStreamSubscriber`
(durable `effects`) whose idempotent consumer inserts one `crm_effect` row per event; at event
number HANG_AT it logs `hanging` after the consumer's transaction committed and before the ack,
and hangs (blocking the process, so nothing times out). Otherwise it runs until killed, logging `handled <id>`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta
from typing import Any

import nats
from bus_crash_relay import Effect, effect_entity, effect_tables, make_engine
from bus_support import build_registry

from contractspec.bus import IdempotentConsumer, OutboxRelay
from contractspec.bus.nats import (
    JetStreamPublisher,
    JetStreamRelay,
    JetStreamSpec,
    JetStreamSubscriber,
)
from contractspec.bus.sql import SqlDeadLetterStore, SqlOutboxStore, SqlProcessedEventStore
from contractspec.core import EventEnvelope, Transaction
from contractspec.core.sql import SqlEntityStore, SqlUnitOfWork


class HangingPublisher(JetStreamPublisher):
    def __init__(self, *args: Any, hang_at: int, log: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hang_at = hang_at
        self.log = log
        self.seen = 0

    async def deliver(self, event: EventEnvelope, **kwargs: Any) -> Any:
        report = await super().deliver(event, **kwargs)
        self.seen += 1
        self.log.write(f"published {event.id}\n")
        if self.hang_at and self.seen == self.hang_at:
            self.log.write("hanging\n")
            os.fsync(self.log.fileno())
            time.sleep(3600)  # noqa: ASYNC251 - frozen (no heartbeat, no cancellation) until killed
        return report


async def main(
    mode: str, url: str, schema: str, nats_url: str, stream_name: str, log_path: str, hang_at: int
) -> None:
    engine = make_engine(url, schema)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    registry = build_registry()
    name, prefix = stream_name.split(":")
    stream = JetStreamSpec.from_registry(registry, name=name, prefix=prefix)
    await stream.ensure(js)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115, ASYNC230 - a test worker: closed in finally
    try:
        if mode == "relay":
            outbox = SqlOutboxStore(engine)
            publisher = HangingPublisher(js, stream, hang_at=hang_at, log=log)
            relay = OutboxRelay(outbox, publisher, batch_size=10, lease=timedelta(seconds=1))
            while True:
                await relay.drain()
                if not await outbox.messages(status="pending", limit=1):
                    break
                await asyncio.sleep(0.1)
            log.write("done\n")
            return
        if mode == "relay-run":
            outbox = SqlOutboxStore(engine)
            publisher = HangingPublisher(js, stream, hang_at=0, log=log)
            waves = JetStreamRelay(
                outbox,
                publisher,
                batch_size=10,
                lease=timedelta(seconds=1),
                poll_interval=60,
                linger=60,
            )

            async def freeze_once_delivered() -> None:
                while waves.stats.delivered < hang_at:  # noqa: ASYNC110 - a test hook
                    await asyncio.sleep(0.005)
                log.write("hanging\n")
                os.fsync(log.fileno())
                time.sleep(3600)  # noqa: ASYNC251 - frozen, marks unsent, until killed

            watcher = asyncio.create_task(freeze_once_delivered())
            await waves.run()
            watcher.cancel()
            return
        store = SqlEntityStore(effect_tables)

        async def effect(event: EventEnvelope, tx: Transaction) -> None:
            repo = store.repository(effect_entity, tx, None)
            await repo.add(Effect(id=event.id, deal_id=event.payload.deal_id))  # type: ignore[attr-defined]

        consumer = IdempotentConsumer(
            "effects",
            effect,
            unit_of_work=SqlUnitOfWork(engine),
            processed=SqlProcessedEventStore(engine),
        )
        seen = 0

        async def handler(event: EventEnvelope) -> None:
            nonlocal seen
            seen += 1
            await consumer(event)  # committed when it returns
            if hang_at and seen == hang_at:
                log.write(f"hanging {event.id}\n")
                os.fsync(log.fileno())
                time.sleep(3600)  # noqa: ASYNC251 - frozen until the parent kills it: never acked
            log.write(f"handled {event.id}\n")

        subscriber = JetStreamSubscriber(
            js,
            stream,
            durable="effects",
            handler=handler,
            all_orgs=True,
            registry=registry,
            dead_letters=SqlDeadLetterStore(engine),
            ack_wait=3.0,
            handler_timeout=2.5,
            batch=5,
        )
        await subscriber.run()
    finally:
        log.close()
        await nc.close()
        await engine.dispose()


if __name__ == "__main__":
    a = sys.argv[1:]
    asyncio.run(main(a[0], a[1], a[2], a[3], a[4], a[5], int(a[6])))
