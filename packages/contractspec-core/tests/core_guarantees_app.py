"""The app behind the guarantee and concurrency tests, and helpers that read back what was stored.

The CRM specs of `core_app` are bound here to handlers that count their runs and yield to the event
loop between reading and writing (as a handler awaiting another service does), so concurrent calls
really interleave, also on the memory backend. Added to them: a counter (read-modify-write, with
and without `Repository.get_for_update`), notes (a handler that is denied inside, strings no
database can store) and a record whose model declares its own `org_id`.

Every call in these tests carries a unique `request_id`; audit records and events carry it too, so
`read_stored()` lets a test check, call by call, what a backend kept.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

from attrs import define, field
from core_app import (
    Contact,
    CreateContact,
    CreateDeal,
    Deal,
    DealCreated,
    DealList,
    MoveDeal,
    SearchDeals,
    Stage,
    contact_entity,
    create_contact,
    create_deal,
    deal_created,
    deal_entity,
    deal_moved,
    move_deal,
    search_deals,
)
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    AuditRecord,
    Backend,
    CallContext,
    ContractSpecError,
    EntitySpec,
    Executor,
    HandlerCtx,
    MemoryBackend,
    NotFoundError,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
    define_command,
    define_entity,
    define_event,
    requires,
)
from contractspec.core.testing import SequentialIds, temporary_sql_engine

__all__ = [
    "CLOSED",
    "DENIED_ACTION",
    "GRANTS",
    "ORG",
    "SALES",
    "VIEWER",
    "GuaranteesApp",
    "Outcome",
    "Stored",
    "StoredEvent",
    "audit_head_orgs",
    "build_app",
    "call_ctx",
    "chain_verifies",
    "counter_entity",
    "make_executor",
    "note_entity",
    "open_backend",
    "read_stored",
    "run_call",
    "summary",
    "tagged_entity",
]

ORG = "org-1"
#: Role grants of the tests' RolePermissions decider; `something.denied` is granted to nobody.
GRANTS = {"sales": ["deal.*", "contact.*", "note.*", "counter.*"]}
DENIED_ACTION = "something.denied"
SALES = Actor.user("u-sales", roles="sales")
VIEWER = Actor.user("u-viewer", roles="viewer")
CLOSED = (Stage.WON.value, Stage.LOST.value)


# -- specs ---------------------------------------------------------------------------------------


class CounterRecord(BaseModel):
    id: str
    value: int = 0


class CounterRef(BaseModel):
    id: str


class CounterIncremented(BaseModel):
    counter_id: str
    value: int


class Note(BaseModel):
    id: str
    note_body: str
    tags: list[str] = []


class NewNote(BaseModel):
    id: str
    note_body: str = "note"
    tags: list[str] = []


class NoteCreated(BaseModel):
    note_id: str


class Announcement(BaseModel):
    headline: str


class GuardedNote(BaseModel):
    id: str
    catch: bool = False


class Tagged(BaseModel):
    id: str
    org_id: str | None = None
    name: str = "x"


counter_entity = define_entity("ops.counter", CounterRecord)
note_entity = define_entity("ops.note", Note)
tagged_entity = define_entity("ops.tagged", Tagged)

counter_incremented = define_event(
    "ops.counter.incremented", payload=CounterIncremented, key="counter_id"
)
note_created = define_event("ops.note.created", payload=NoteCreated, key="note_id")
note_announced = define_event("ops.note.announced", payload=Announcement)

create_counter = define_command(
    "ops.counter.create", input=CounterRef, output=CounterRecord, auth=requires("counter.write")
)
increment = define_command(
    "ops.counter.increment",
    input=CounterRef,
    output=CounterRecord,
    emits=[counter_incremented],
    auth=requires("counter.write"),
    description="Read with get(), add one, update(): a stale write must be refused.",
)
increment_locked = define_command(
    "ops.counter.increment_locked",
    input=CounterRef,
    output=CounterRecord,
    emits=[counter_incremented],
    auth=requires("counter.write"),
    description="Read with get_for_update(), add one, update(): concurrent calls wait in turn.",
)
create_note = define_command(
    "ops.note.create",
    input=NewNote,
    output=Note,
    emits=[note_created],
    auth=requires("note.write"),
)
announce_note = define_command(
    "ops.note.announce",
    input=Announcement,
    output=Announcement,
    emits=[note_announced],
    auth=requires("note.write"),
)
guarded_note = define_command(
    "ops.note.guarded",
    input=GuardedNote,
    output=Note,
    emits=[note_created],
    auth=requires("note.write"),
    description="Reads (flushing earlier writes), writes a note, then asks for a denied permission.",
)


@define
class GuaranteesApp:
    """A registry plus the number of handler runs per `(operation, idempotency key)`."""

    registry: SpecRegistry
    runs: Counter[tuple[str, str | None]] = field(factory=Counter)


async def _pause() -> None:
    """Yield to the event loop, as a handler awaiting another service would."""
    await asyncio.sleep(0)


def build_app() -> GuaranteesApp:
    """A fresh registry with counting, yielding handlers."""
    registry = SpecRegistry(
        contact_entity,
        deal_entity,
        counter_entity,
        note_entity,
        tagged_entity,
        create_contact,
        create_deal,
        move_deal,
        search_deals,
        create_counter,
        increment,
        increment_locked,
        create_note,
        announce_note,
        guarded_note,
    )
    app = GuaranteesApp(registry)
    runs = app.runs

    @registry.handler(create_contact)
    async def _create_contact(inp: CreateContact, ctx: HandlerCtx) -> Contact:
        runs[(create_contact.name, ctx.idempotency_key)] += 1
        await _pause()
        return await ctx.repo(contact_entity).add(
            Contact(id=inp.id, name=inp.name, email=inp.email)
        )

    @registry.handler(create_deal)
    async def _create_deal(inp: CreateDeal, ctx: HandlerCtx) -> Deal:
        runs[(create_deal.name, ctx.idempotency_key)] += 1
        if await ctx.repo(contact_entity).get(inp.contact_id) is None:
            raise NotFoundError(f"contact {inp.contact_id!r} not found")
        await _pause()
        deal = Deal(
            id=ctx.new_id(),
            contact_id=inp.contact_id,
            title=inp.title,
            amount=inp.amount,
            created_at=ctx.now(),
        )
        await ctx.repo(deal_entity).add(deal)
        ctx.emit(deal_created, DealCreated(deal_id=deal.id, amount=deal.amount))
        return deal

    @registry.handler(move_deal)
    async def _move_deal(inp: MoveDeal, ctx: HandlerCtx) -> Deal:
        runs[(move_deal.name, ctx.idempotency_key)] += 1
        repo = ctx.repo(deal_entity)
        deal = await repo.require(inp.deal_id)
        await _pause()
        if deal.stage in (Stage.WON, Stage.LOST):
            raise SpecValidationError(f"deal {deal.id} is closed ({deal.stage}); it cannot move")
        closed = ctx.now() if inp.to_stage in (Stage.WON, Stage.LOST) else None
        moved = deal.model_copy(update={"stage": inp.to_stage, "closed_at": closed})
        await repo.update(moved)
        ctx.emit(
            deal_moved, {"deal_id": deal.id, "from_stage": deal.stage, "to_stage": inp.to_stage}
        )
        return moved

    @registry.handler(search_deals)
    async def _search(inp: SearchDeals, ctx: HandlerCtx) -> DealList:
        repo = ctx.repo(deal_entity)
        where = {"stage": inp.stage} if inp.stage else None
        deals = await repo.find(where, order_by=["-amount"], limit=inp.limit)
        return DealList(deals=deals, total=await repo.count(where))

    @registry.handler(create_counter)
    async def _create_counter(inp: CounterRef, ctx: HandlerCtx) -> CounterRecord:
        return await ctx.repo(counter_entity).add(CounterRecord(id=inp.id))

    async def _increment(inp: CounterRef, ctx: HandlerCtx, *, locked: bool) -> CounterRecord:
        repo = ctx.repo(counter_entity)
        current = await (repo.get_for_update(inp.id) if locked else repo.get(inp.id))
        if current is None:
            raise NotFoundError(f"counter {inp.id!r} not found")
        await _pause()
        updated = await repo.update(current.model_copy(update={"value": current.value + 1}))
        ctx.emit(counter_incremented, {"counter_id": inp.id, "value": updated.value})
        return updated

    @registry.handler(increment)
    async def _increment_plain(inp: CounterRef, ctx: HandlerCtx) -> CounterRecord:
        runs[(increment.name, ctx.idempotency_key)] += 1
        return await _increment(inp, ctx, locked=False)

    @registry.handler(increment_locked)
    async def _increment_locked(inp: CounterRef, ctx: HandlerCtx) -> CounterRecord:
        runs[(increment_locked.name, ctx.idempotency_key)] += 1
        return await _increment(inp, ctx, locked=True)

    @registry.handler(create_note)
    async def _create_note(inp: NewNote, ctx: HandlerCtx) -> Note:
        note = await ctx.repo(note_entity).add(
            Note(id=inp.id, note_body=inp.note_body, tags=inp.tags)
        )
        ctx.emit(note_created, {"note_id": note.id})
        return note

    @registry.handler(announce_note)
    async def _announce(inp: Announcement, ctx: HandlerCtx) -> Announcement:
        ctx.emit(note_announced, {"headline": inp.headline})
        return inp

    @registry.handler(guarded_note)
    async def _guarded(inp: GuardedNote, ctx: HandlerCtx) -> Note:
        runs[(guarded_note.name, ctx.idempotency_key)] += 1
        repo = ctx.repo(note_entity)
        await repo.count()  # a read: SQL flushes the writes of earlier calls of a batch here
        note = await repo.add(Note(id=inp.id, note_body="guarded"))
        try:
            await ctx.authorize(DENIED_ACTION)
        except PolicyDeniedError:
            if not inp.catch:
                raise
        ctx.emit(note_created, {"note_id": note.id})
        return note

    return app


def make_executor(app: GuaranteesApp, backend: Backend, **kwargs: Any) -> Executor:
    """An executor over `backend` with the tests' role grants and readable ids."""
    kwargs.setdefault("ids", SequentialIds("id"))
    return Executor(app.registry, backend=backend, policy=RolePermissions(GRANTS), **kwargs)


def call_ctx(
    request_id: str,
    *,
    actor: Actor | None = SALES,
    org_id: str | None = ORG,
    idempotency_key: str | None = None,
) -> CallContext:
    """A call context with a unique request id (`actor=None` for an anonymous caller)."""
    if actor is None:
        return CallContext(org_id=org_id, request_id=request_id, idempotency_key=idempotency_key)
    return CallContext(
        actor=actor, org_id=org_id, request_id=request_id, idempotency_key=idempotency_key
    )


# -- outcomes --------------------------------------------------------------------------------------


@define
class Outcome:
    """What one call reported: its output (as JSON) or the exception it raised."""

    request_id: str
    operation: str
    input: Mapping[str, Any]
    output: dict[str, Any] | None = None
    error: BaseException | None = None
    elapsed_s: float = 0.0
    tag: str = ""

    @property
    def ok(self) -> bool:
        """Whether the call returned normally."""
        return self.error is None

    @property
    def code(self) -> str:
        """`ok`, the ContractSpecError code, or the name of any other exception type."""
        if self.error is None:
            return "ok"
        if isinstance(self.error, ContractSpecError):
            return self.error.code
        return type(self.error).__name__

    def describe(self) -> str:
        """One line for assertion messages."""
        what = self.code if self.error is None else f"{self.code}: {self.error!r}"[:300]
        return f"{self.request_id} {self.operation} {dict(self.input)} -> {what}"


async def run_call(
    executor: Executor,
    operation: str,
    data: Mapping[str, Any],
    ctx: CallContext,
    *,
    limit_s: float = 30.0,
    tag: str = "",
) -> Outcome:
    """Run one call under `asyncio.wait_for(..., limit_s)`, recording what it reported.

    A call that hangs is cancelled and recorded with a `TimeoutError`.
    """
    assert ctx.request_id is not None, "every call of these tests needs a request id"
    outcome = Outcome(ctx.request_id, operation, dict(data), tag=tag)
    started = perf_counter()
    try:
        result = await asyncio.wait_for(executor.execute(operation, data, ctx), limit_s)
    except Exception as exc:  # recorded and judged by the test
        outcome.error = exc
    else:
        outcome.output = result.model_dump(mode="json")
    outcome.elapsed_s = perf_counter() - started
    return outcome


def summary(outcomes: Iterable[Outcome]) -> str:
    """Counts per reported code, with the first call of each code: for assertion messages."""
    counts: Counter[str] = Counter()
    first: dict[str, Outcome] = {}
    for o in outcomes:
        counts[o.code] += 1
        first.setdefault(o.code, o)
    return "; ".join(f"{n} x {first[code].describe()}" for code, n in counts.most_common())


# -- what a backend stored ---------------------------------------------------------------------------


@define(frozen=True)
class StoredEvent:
    """A committed event, as kept by the memory outbox or a `cs_outbox` row."""

    name: str
    request_id: str | None
    key: str | None
    payload: Mapping[str, Any]


@define
class Stored:
    """One org's committed audit chain, events and entity rows."""

    audit: list[AuditRecord]
    events: list[StoredEvent]
    rows: dict[str, dict[str, dict[str, Any]]]

    def audit_for(self, request_id: str) -> list[AuditRecord]:
        """Audit records of one call, in chain order."""
        return [r for r in self.audit if r.request_id == request_id]

    def outcomes_for(self, request_id: str) -> list[str]:
        """Sorted outcomes (`success`, `denied`, `replayed`, ...) of one call's audit records."""
        return sorted(r.outcome for r in self.audit_for(request_id))

    def events_for(self, request_id: str) -> list[StoredEvent]:
        """Events of one call, in outbox order."""
        return [e for e in self.events if e.request_id == request_id]

    def event_names_for(self, request_id: str) -> list[str]:
        """Names of one call's events, in outbox order."""
        return [e.name for e in self.events_for(request_id)]

    def entity(self, entity: EntitySpec[Any]) -> dict[str, dict[str, Any]]:
        """`{primary key: row as JSON}` of one entity."""
        return self.rows.get(entity.name, {})


ALL_ENTITIES: tuple[EntitySpec[Any], ...] = (
    contact_entity,
    deal_entity,
    counter_entity,
    note_entity,
    tagged_entity,
)


async def read_stored(
    backend: Backend, org_id: str = ORG, entities: Iterable[EntitySpec[Any]] = ALL_ENTITIES
) -> Stored:
    """What `backend` committed for `org_id`: audit records, events, rows (a fresh transaction)."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    tx = await backend.unit_of_work.begin(readonly=True)
    try:
        for entity in entities:
            found = await backend.entities.repository(entity, tx, org_id).find()
            rows[entity.name] = {
                str(getattr(m, entity.primary_key)): m.model_dump(mode="json") for m in found
            }
    finally:
        await tx.rollback()
    if isinstance(backend, MemoryBackend):
        audit = [r for r in backend.audit.records if r.org_id == org_id]
        events = [
            StoredEvent(e.name, e.request_id, e.key, e.payload_json())
            for e in backend.events.events
            if e.org_id == org_id
        ]
        return Stored(audit, events, rows)
    from sqlalchemy import select

    from contractspec.core.sql import SqlAuditLog, outbox_table

    assert isinstance(backend.audit, SqlAuditLog)
    audit = [entry.record for entry in await backend.audit.entries(org_id)]
    t = outbox_table
    engine = backend.audit.unit_of_work.engine
    async with engine.connect() as conn:
        result = await conn.execute(
            select(t.c.name, t.c.headers, t.c.aggregate_key, t.c.payload)
            .where(t.c.org_id == org_id)
            .order_by(t.c.position)
        )
        events = [
            StoredEvent(name, (headers or {}).get("request_id"), key, payload)
            for name, headers, key, payload in result.all()
        ]
    return Stored(audit, events, rows)


async def chain_verifies(backend: Backend, org_id: str = ORG) -> Any:
    """`backend.audit.verify(org_id)`, awaited when it is a coroutine: truthy when the chain is
    intact (a `bool` or a `VerifyResult`, whose repr says where it breaks)."""
    # every audit store has verify(); the AuditSink port (the append side) does not declare it
    result: Any = backend.audit.verify(org_id)  # type: ignore[attr-defined]
    if inspect.isawaitable(result):
        result = await result
    return result


async def audit_head_orgs(backend: Backend) -> set[str]:
    """Orgs with a row in `cs_audit_head` (SQL backends only)."""
    from sqlalchemy import select

    from contractspec.core.sql import SqlAuditLog, audit_head_table

    assert isinstance(backend.audit, SqlAuditLog)
    async with backend.audit.unit_of_work.engine.connect() as conn:
        result = await conn.execute(select(audit_head_table.c.org_key))
        return {row[0] for row in result.all()}


@asynccontextmanager
async def open_backend(
    kind: str, registry: SpecRegistry, directory: Path | str
) -> AsyncIterator[Backend]:
    """A backend with the registry's tables: `memory`, `sqlite` (a file) or `postgres` (a schema)."""
    if kind == "memory":
        yield MemoryBackend()
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(kind, directory) as engine:
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        yield backend
