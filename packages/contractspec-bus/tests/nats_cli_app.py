"""A user's factory for `python -m contractspec.bus.nats consume nats_cli_app:make_subscriber`."""

from __future__ import annotations

import os

import nats
from bus_support import build_registry

from contractspec.bus import MemoryDeadLetterStore
from contractspec.bus.nats import JetStreamSpec, JetStreamSubscriber
from contractspec.core import EventEnvelope


async def make_subscriber() -> JetStreamSubscriber:
    """Settings from the environment, as an app would read them."""
    nc = await nats.connect(os.environ["NATS_URL"])
    name, prefix = os.environ["STREAM"].split(":")
    stream = JetStreamSpec.from_registry(build_registry(), name=name, prefix=prefix)
    await stream.ensure(nc.jetstream())
    log = os.environ["LOG"]

    async def handler(event: EventEnvelope) -> None:
        with open(log, "a") as f:  # noqa: ASYNC230 - a test app
            f.write(f"handled {event.id}\n")

    return JetStreamSubscriber(
        nc.jetstream(),
        stream,
        durable="cli",
        handler=handler,
        all_orgs=True,
        registry=build_registry(),
        dead_letters=MemoryDeadLetterStore(),
    )


def not_a_relay() -> object:
    """A factory returning the wrong thing."""
    return object()
