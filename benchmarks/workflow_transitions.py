"""Workflow transitions/s: a ContractSpec workflow vs python-statemachine + hand-written persistence.

Both sides drive the same model — states draft -> submitted -> approved -> done, transitions
`submit` (with a guard), `approve`, `finish`, each allowed to the role `clerk` — and every
transition does the same durable work in ONE database transaction:

* **ours**: `define_workflow` run by `Executor(registry, backend=SqlBackend(engine, registry),
  policy=RolePermissions({"clerk": ["bench.ticket.move"]}))`; each `bench.flow.<transition>` loads
  the instance, checks the policy, source state and guard, updates the instance (optimistic
  `record_version`), inserts a history step, writes `bench.flow.transitioned` to the outbox
  (`cs_outbox`) and an audit entry (`cs_audit_log`, hash-chained: one more head-row update).
* **peer**: a `statemachine.StateMachine` subclass (python-statemachine, the way its docs show a
  domain model: a model object with a `state` field, the guard as `cond="may_submit"`, persistence
  in the model's async `after_transition` callback) plus hand-written SQLAlchemy 2.x Core:
  in `engine.begin()`, SELECT the row, check the actor's role, bind a machine to the loaded model
  and `await machine.send(event)`; the callback UPDATEs the row `WHERE version = :loaded` (0 rows
  -> conflict), INSERTs a history row, an audit row (plain, no chain) and an outbox row.
  `--peer-audit-chain` gives the peer ours' audit guarantee too (SHA-256 chain under a per-org
  head row locked with SELECT ... FOR UPDATE and updated in the same transaction): equal work.

N instances are started per round (not timed), then every instance is moved through the whole
lifecycle (3 N transitions, timed). On PostgreSQL an extra untimed pass counts the round trips
per transition of each side from libpq's protocol trace (enabled per pool checkout, so no
statement listener switches ours off its driver fast path): ours sends BEGIN, the read, the
writes with the outbox key lock and the audit head lock, then the audit row with COMMIT (4);
the peer BEGIN, SELECT, UPDATE, three INSERTs, COMMIT (7; 9 with `--peer-audit-chain`). Sides alternate within each round; the figure is the median
transitions/s of the rounds. Engines: both sides share one engine per database. SQLite: a file,
`contractspec.core.sql.sqlite_engine(path)` — WAL, `synchronous=NORMAL`, stdlib `sqlite3` run
inline on the loop, no pool ROLLBACK on check-in — which is also the fastest async SQLite engine
the peer can use (a plain `create_async_engine("sqlite+aiosqlite:///…")` hops to a thread per
statement and runs SQLite's default `synchronous=FULL`, rollback journal). PostgreSQL:
`create_async_engine(CONTRACTSPEC_TEST_POSTGRES_DSN)` (psycopg 3, default pool) in a fresh
schema; skipped with a note when the variable is unset. The memory backend figure of ours is
printed for reference (no peer row: the peer has no in-memory persistence).

Run: `uv run --all-packages --all-extras --group bench python benchmarks/workflow_transitions.py`
(`--rounds 5 --n 100`; `--profile [sqlite|postgres]` prints a cProfile of our transition path,
CPU time, on that database).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import json
import os
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from statemachine import State, StateMachine

from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
    define_workflow,
    requires,
    transition,
)
from contractspec.core.sql import SqlBackend, sqlite_engine
from contractspec.core.testing import postgres_dsn, temporary_postgres_engine

LIFECYCLE = ("submit", "approve", "finish")
ACTOR = Actor.user("u-1", roles="clerk")
CTX = CallContext(actor=ACTOR, org_id="org-1")

# --------------------------------------------------------------------------- ours


def rates(n: int, started: float, cpu: float) -> tuple[float, float]:
    """(transitions/s wall clock, CPU microseconds of this process per transition)."""
    count = 3 * n
    return count / (time.perf_counter() - started), (time.process_time() - cpu) / count * 1e6


flow = define_workflow(
    "bench.flow",
    states=["draft", "submitted", "approved", "done"],
    initial="draft",
    final=["done"],
    transitions=[
        transition(
            "submit",
            source="draft",
            target="submitted",
            guard=lambda _inst, _inp: True,
            auth=requires("bench.ticket.move"),
        ),
        transition(
            "approve", source="submitted", target="approved", auth=requires("bench.ticket.move")
        ),
        transition("finish", source="approved", target="done", auth=requires("bench.ticket.move")),
    ],
)
REGISTRY = SpecRegistry(flow)
POLICY = RolePermissions({"clerk": ["bench.ticket.move", "bench.flow.start"]})
# `start` defaults to authenticated(); the grant above is harmless and keeps the policy explicit.


async def ours_round(ex: Executor, n: int) -> tuple[float, float]:
    ids = [(await ex.execute("bench.flow.start", {}, CTX)).model_dump()["id"] for _ in range(n)]
    started, cpu = time.perf_counter(), time.process_time()
    for iid in ids:
        for name in LIFECYCLE:
            await ex.execute(f"bench.flow.{name}", {"instance_id": iid}, CTX)
    return rates(n, started, cpu)


# --------------------------------------------------------------------------- peer

peer_md = MetaData()
sm_ticket = Table(
    "sm_ticket",
    peer_md,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("state", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("data", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
sm_step = Table(
    "sm_ticket_step",
    peer_md,
    Column("id", String(36), primary_key=True),
    Column("ticket_id", String(36), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("transition", String(32), nullable=False),
    Column("from_state", String(32), nullable=False),
    Column("to_state", String(32), nullable=False),
    Column("actor_id", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)
sm_audit = Table(
    "sm_audit",
    peer_md,
    Column("id", String(36), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("actor_id", String(64), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("target", String(36), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("prev_hash", String(64), nullable=True),
    Column("hash", String(64), nullable=True),
)
sm_audit_head = Table(
    "sm_audit_head",
    peer_md,
    Column("org_id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=True),
)
sm_outbox = Table(
    "sm_outbox",
    peer_md,
    Column("id", String(36), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("key", String(36), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=True),
)


class Conflict(Exception):
    """The row changed since it was loaded (optimistic version check)."""


class Ticket:
    """The domain model python-statemachine drives: `state` is its state field."""

    #: `--peer-audit-chain`: hash-chain the audit rows under a locked per-org head row, as ours
    #: does (two more statements per transition: SELECT ... FOR UPDATE, UPDATE head).
    audit_chain = False

    def __init__(self, row: Any, conn: AsyncConnection, actor: Actor) -> None:
        self.id: str = row.id
        self.org_id: str = row.org_id
        self.state: str = row.state
        self.version: int = row.version
        self.conn = conn
        self.actor = actor

    def may_submit(self) -> bool:
        return True

    async def after_transition(self, event: Any, source: State, target: State) -> None:
        now = datetime.now(UTC)
        name = event.id
        result = await self.conn.execute(
            update(sm_ticket)
            .where(sm_ticket.c.id == self.id, sm_ticket.c.version == self.version)
            .values(state=target.id, version=self.version + 1, updated_at=now)
        )
        if result.rowcount != 1:
            raise Conflict(self.id)
        self.version += 1
        await self.conn.execute(
            insert(sm_step).values(
                id=str(uuid.uuid4()), ticket_id=self.id, seq=self.version, transition=name,
                from_state=source.id, to_state=target.id, actor_id=self.actor.id, at=now,
            )
        )  # fmt: skip
        audit = {
            "id": str(uuid.uuid4()), "org_id": self.org_id, "actor_id": self.actor.id,
            "operation": f"ticket.{name}", "target": self.id, "outcome": "ok", "at": now,
        }  # fmt: skip
        if self.audit_chain:
            head = (
                await self.conn.execute(
                    select(sm_audit_head.c.seq, sm_audit_head.c.hash)
                    .where(sm_audit_head.c.org_id == self.org_id)
                    .with_for_update()
                )
            ).one()
            body = json.dumps({**audit, "at": now.isoformat()}, sort_keys=True)
            audit["prev_hash"] = head.hash
            audit["hash"] = hashlib.sha256(f"{head.hash or ''}\n{body}".encode()).hexdigest()
            await self.conn.execute(
                update(sm_audit_head)
                .where(sm_audit_head.c.org_id == self.org_id)
                .values(seq=head.seq + 1, hash=audit["hash"])
            )
        await self.conn.execute(insert(sm_audit).values(**audit))
        await self.conn.execute(
            insert(sm_outbox).values(
                id=str(uuid.uuid4()), name="ticket.transitioned", org_id=self.org_id, key=self.id,
                payload={"id": self.id, "transition": name, "from_state": source.id,
                         "to_state": target.id, "actor_id": self.actor.id},
                occurred_at=now,
            )
        )  # fmt: skip


class TicketMachine(StateMachine):
    draft = State(initial=True)
    submitted = State()
    approved = State()
    done = State(final=True)

    submit = draft.to(submitted, cond="may_submit")
    approve = submitted.to(approved)
    finish = approved.to(done)


async def peer_fire(engine: AsyncEngine, ticket_id: str, event: str, actor: Actor) -> None:
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                select(sm_ticket).where(sm_ticket.c.id == ticket_id, sm_ticket.c.org_id == "org-1")
            )
        ).one_or_none()
        if row is None:
            raise LookupError(ticket_id)
        if "clerk" not in actor.roles:
            raise PermissionError(f"{actor.id} may not {event}")
        await TicketMachine(Ticket(row, conn, actor)).send(event)


async def peer_round(engine: AsyncEngine, n: int) -> tuple[float, float]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for tid in ids:
        async with engine.begin() as conn:
            await conn.execute(
                insert(sm_ticket).values(
                    id=tid, org_id="org-1", state="draft", version=1, data={},
                    updated_at=datetime.now(UTC),
                )
            )  # fmt: skip
    started, cpu = time.perf_counter(), time.process_time()
    for tid in ids:
        for name in LIFECYCLE:
            await peer_fire(engine, tid, name, ACTOR)
    return rates(n, started, cpu)


async def check_peer(engine: AsyncEngine) -> None:
    """The peer really persisted what it claims: states, versions and one row per write."""
    async with engine.connect() as conn:
        states = {r.state for r in await conn.execute(select(sm_ticket.c.state))}
        tickets = len((await conn.execute(select(sm_ticket.c.id))).all())
        steps = len((await conn.execute(select(sm_step.c.id))).all())
        outbox = len((await conn.execute(select(sm_outbox.c.id))).all())
    assert states == {"done"}, states
    assert steps == outbox == 3 * tickets, (steps, outbox, tickets)


async def check_ours(engine: AsyncEngine) -> None:
    """Ours really moved every instance to `done` and wrote a step per start and transition."""
    async with engine.connect() as conn:
        states = {r[0] for r in await conn.execute(text("SELECT state FROM cs_workflow_instance"))}
        n = (await conn.execute(text("SELECT count(*) FROM cs_workflow_instance"))).scalar_one()
        steps = (await conn.execute(text("SELECT count(*) FROM cs_workflow_step"))).scalar_one()
        outbox = (await conn.execute(text("SELECT count(*) FROM cs_outbox"))).scalar_one()
    assert states == {"done"}, states
    assert steps == outbox == 4 * n, (steps, outbox, n)


# --------------------------------------------------------------------------- driver


@contextmanager
def protocol_trace(engine: AsyncEngine) -> Iterator[list[int]]:
    """Count client-to-server round trips on `engine`'s PostgreSQL connections: libpq traces
    every protocol message (`PQtrace`, enabled at checkout); a round trip is a run of frontend
    messages after backend ones. Yields a one-item list that holds the count on exit."""
    from psycopg import pq

    fd, name = tempfile.mkstemp(suffix=".trace")
    count = [0]

    def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        pgconn = dbapi_conn.driver_connection.pgconn
        pgconn.trace(fd)
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def on_checkin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.driver_connection.pgconn.untrace()

    event.listen(engine.sync_engine, "checkout", on_checkout)
    event.listen(engine.sync_engine, "checkin", on_checkin)
    try:
        yield count
    finally:
        event.remove(engine.sync_engine, "checkout", on_checkout)
        event.remove(engine.sync_engine, "checkin", on_checkin)
        last = "B"
        for line in Path(name).read_text().splitlines():
            side = line[:1]
            if side == "F" and last == "B":
                count[0] += 1
            last = side
        os.close(fd)
        os.unlink(name)


async def round_trips(engine: AsyncEngine, ex: Executor, n: int = 10) -> tuple[float, float]:
    """Round trips per transition `(ours, peer)` over `n` instances (untimed)."""
    ids = [(await ex.execute("bench.flow.start", {}, CTX)).model_dump()["id"] for _ in range(n)]
    with protocol_trace(engine) as ours:
        for iid in ids:
            for name in LIFECYCLE:
                await ex.execute(f"bench.flow.{name}", {"instance_id": iid}, CTX)
    tids = [str(uuid.uuid4()) for _ in range(n)]
    for tid in tids:
        async with engine.begin() as conn:
            await conn.execute(
                insert(sm_ticket).values(
                    id=tid, org_id="org-1", state="draft", version=1, data={},
                    updated_at=datetime.now(UTC),
                )
            )  # fmt: skip
    with protocol_trace(engine) as peer:
        for tid in tids:
            for name in LIFECYCLE:
                await peer_fire(engine, tid, name, ACTOR)
    return ours[0] / (3 * n), peer[0] / (3 * n)


async def compare(
    kind: str, engine: AsyncEngine, rounds: int, n: int, note: str
) -> tuple[float, float]:
    backend = SqlBackend(engine, REGISTRY)
    await backend.create_all()
    async with engine.begin() as conn:
        await conn.run_sync(peer_md.create_all)
        await conn.execute(insert(sm_audit_head).values(org_id="org-1", seq=0, hash=None))
    ex = Executor(REGISTRY, backend=backend, policy=POLICY)
    ours: list[tuple[float, float]] = []
    peer: list[tuple[float, float]] = []
    await ours_round(ex, 10)  # warm-up (imports, statement caches)
    await peer_round(engine, 10)
    for r in range(rounds):
        sides: list[
            tuple[list[tuple[float, float]], Callable[[], Awaitable[tuple[float, float]]]]
        ] = [
            (ours, lambda: ours_round(ex, n)),
            (peer, lambda: peer_round(engine, n)),
        ]
        for bucket, fn in sides if r % 2 == 0 else sides[::-1]:
            bucket.append(await fn())
    trips = ""
    if engine.dialect.name == "postgresql":
        o_trips, p_trips = await round_trips(engine, ex)
        trips = f"; round trips/transition ours {o_trips:.1f}, peer {p_trips:.1f}"
    await check_peer(engine)
    await check_ours(engine)
    o, p = statistics.median(r[0] for r in ours), statistics.median(r[0] for r in peer)
    o_cpu, p_cpu = statistics.median(r[1] for r in ours), statistics.median(r[1] for r in peer)
    print(
        f"{kind:9s} ours {o:7.0f} transitions/s   python-statemachine+SQLAlchemy {p:7.0f}/s   "
        f"ours/peer {o / p:4.2f}x   CPU/transition ours {o_cpu:5.0f} us, peer {p_cpu:5.0f} us\n"
        f"{'':9s} ({note}{trips})"
    )
    return o, p


async def profile_ours(engine: AsyncEngine, n: int) -> None:
    backend = SqlBackend(engine, REGISTRY)
    await backend.create_all()
    ex = Executor(REGISTRY, backend=backend, policy=POLICY)
    await ours_round(ex, 10)
    prof = cProfile.Profile(time.process_time)  # CPU time: waits on the database are not ours
    prof.enable()
    await ours_round(ex, n)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(45)


async def main(args: argparse.Namespace) -> None:
    ex = Executor(REGISTRY, backend=MemoryBackend(), policy=POLICY)
    await ours_round(ex, 10)
    mem = statistics.median([(await ours_round(ex, 5 * args.n))[0] for _ in range(args.rounds)])
    print(f"{'memory':9s} ours {mem:7.0f} transitions/s   (reference: no database)")
    if args.profile == "postgres":
        async with temporary_postgres_engine() as pg:
            await profile_ours(pg, args.n)
        return
    with tempfile.TemporaryDirectory() as tmp:
        engine = sqlite_engine(Path(tmp) / "bench.db")
        try:
            if args.profile:
                await profile_ours(engine, args.n)
                return
            await compare(
                "sqlite", engine, args.rounds, args.n,
                "file, sqlite_engine: WAL, synchronous=NORMAL, inline sqlite3",
            )  # fmt: skip
        finally:
            await engine.dispose()
    if not postgres_dsn():
        print("postgres  skipped: set CONTRACTSPEC_TEST_POSTGRES_DSN=postgresql+psycopg://…")
        return
    async with temporary_postgres_engine() as pg:
        async with pg.connect() as conn:
            server = {
                name: (await conn.execute(text(f"SHOW {name}"))).scalar_one()
                for name in ("server_version", "fsync", "synchronous_commit")
            }
        await compare(
            "postgres", pg, args.rounds, args.n,
            "both sides: one psycopg 3 engine, create_async_engine defaults; server "
            + ", ".join(f"{k}={v}" for k, v in server.items()),
        )  # fmt: skip


if __name__ == "__main__":
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (median is printed)")
    parser.add_argument("--n", type=int, default=100, help="instances per round (3 transitions)")
    parser.add_argument(
        "--peer-audit-chain",
        action="store_true",
        help="the peer also hash-chains its audit rows under a locked head row (equal work)",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="sqlite",
        choices=["sqlite", "postgres"],
        help="cProfile (CPU time) ours on SQLite (default) or PostgreSQL instead of comparing",
    )
    ns = parser.parse_args()
    Ticket.audit_chain = ns.peer_audit_chain
    print(
        sys.version.split()[0], "| python-statemachine", __import__("statemachine").__version__,
        f"| rounds {ns.rounds} | {ns.n} instances x 3 transitions per round and side",
        "| peer audit:", "hash-chained" if ns.peer_audit_chain else "plain rows",
    )  # fmt: skip
    asyncio.run(main(ns))
