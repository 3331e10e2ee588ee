"""A 3-node JetStream cluster: the stream leader is killed while the relay publishes."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bus_support import build_registry, envelope
from nats_support import running_cluster

nats = pytest.importorskip("nats")

from contractspec.bus import RetryPolicy  # noqa: E402
from contractspec.bus.nats import JetStreamPublisher, JetStreamRelay, JetStreamSpec  # noqa: E402
from contractspec.core import ConfigurationError  # noqa: E402
from contractspec.core.testing import temporary_sql_engine  # noqa: E402


async def _until(what: str, seconds: float, attempt: Any) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await attempt()
        except (ConfigurationError, nats.errors.Error, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: {exc!r}") from exc
            await asyncio.sleep(0.2)  # polling a cluster that elects its leaders


@pytest.mark.slow
async def test_killing_the_stream_leader_while_publishing_loses_no_acknowledged_event(
    tmp_path: Path,
) -> None:
    """replicas=3: SIGKILL the stream's leader after 20 of 60 events were acked and marked; the
    relay carries on against the new leader; the stream holds all 60, each exactly once."""
    from contractspec.bus.sql import SqlOutboxStore, create_bus_tables
    from contractspec.core.sql import SqlUnitOfWork

    with running_cluster(tmp_path / "cluster") as servers:
        nc = await nats.connect(
            servers=[s.url for s in servers], connect_timeout=10, max_reconnect_attempts=-1
        )
        try:
            js = nc.jetstream(timeout=5)
            stream = JetStreamSpec.from_registry(build_registry(), name="HA", replicas=3)
            await _until("the cluster never accepted the stream", 60, lambda: stream.ensure(js))
            async with temporary_sql_engine("sqlite", tmp_path) as engine:
                await create_bus_tables(engine)
                outbox = SqlOutboxStore(engine)
                events = [envelope(i, key=f"d{i % 4}", deal_id=f"d{i % 4}") for i in range(60)]
                tx = await SqlUnitOfWork(engine).begin()
                await outbox.publish(events, tx)
                await tx.commit()
                publisher = JetStreamPublisher(js, stream, timeout=2)
                relay = JetStreamRelay(
                    outbox,
                    publisher,
                    batch_size=5,
                    lease=timedelta(seconds=10),
                    retry=RetryPolicy(max_attempts=100, base_delay=0.1, max_delay=0.5),
                    poll_interval=0.1,
                )
                for _ in range(4):
                    assert await relay.run_once() == 5
                info = await js.stream_info(stream.name)
                assert info.state.messages == 20
                leader = info.cluster.leader
                victim = next(s for s in servers if leader == s.args[s.args.index("--name") + 1])
                victim.kill()
                deadline = time.monotonic() + 90
                while await outbox.messages(status="pending", limit=1):
                    assert time.monotonic() < deadline, "the relay never recovered"
                    if await relay.run_once() == 0:
                        await asyncio.sleep(0.1)  # rows waiting for their retry time
                assert {m.status for m in await outbox.messages()} == {"delivered"}

                async def count() -> int:
                    info = await js.stream_info(stream.name)
                    assert info.cluster.leader != leader
                    return int(info.state.messages)

                assert await _until("no new leader answered", 60, count) == 60
                seqs = [
                    (await js.get_msg(stream.name, seq)).headers["Nats-Msg-Id"]
                    for seq in range(1, 61)
                ]
                assert sorted(seqs) == sorted(e.id for e in events)  # all, each once
                for key in ("d0", "d1", "d2", "d3"):
                    ids = [i for i in seqs if int(i[-4:]) % 4 == int(key[1])]
                    assert ids == sorted(ids)  # per-key order survived the fail-over
        finally:
            await nc.close()
