"""A relay process for the two-process tests: `python bus_relay_process.py URL SCHEMA LOG MODE`.

* `slow`: delivers with a 250 ms subscriber and a 0.5 s lease, appending
  `pid event_id key start end` (monotonic seconds) to LOG after each delivery;
* `consumer-down`: delivers with a default `EventBus` whose only subscriber (`projection`) fails
  every time, so each event ends as a dead letter.

It exits when no outbox row is pending.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from contractspec.bus import EventBus, OutboxRelay, RetryPolicy
from contractspec.bus.sql import SqlOutboxStore
from contractspec.core import EventEnvelope
from contractspec.core.sql import configure_sqlite_engine


def make_engine(url: str, schema: str) -> Any:
    if url.startswith("sqlite"):
        return configure_sqlite_engine(create_async_engine(url))
    return create_async_engine(url, connect_args={"options": f"-csearch_path={schema}"})


async def main(url: str, schema: str, log_path: str, mode: str) -> None:
    engine = make_engine(url, schema)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115, ASYNC230 - a test worker: closed in finally
    try:
        outbox = SqlOutboxStore(engine)
        if mode == "slow":
            bus = EventBus()

            async def slow(event: EventEnvelope) -> None:
                start = time.monotonic()
                await asyncio.sleep(0.25)
                log.write(f"{os.getpid()} {event.id} {event.key} {start} {time.monotonic()}\n")

            bus.subscribe("crm.*", slow, name="slow")
            relay = OutboxRelay(outbox, bus, batch_size=3, lease=timedelta(seconds=0.5))
        else:
            bus = EventBus(retry=RetryPolicy(max_attempts=2, base_delay=0.01))

            def down(event: EventEnvelope) -> None:
                raise ConnectionError("projection database is down")

            bus.subscribe("crm.*", down, name="projection")
            relay = OutboxRelay(outbox, bus)
        while await outbox.messages(status="pending", limit=1):
            if await relay.run_once() == 0:
                await asyncio.sleep(0.02)
    finally:
        log.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
