"""A call joins the caller's transaction (`execute(..., connection=conn_or_session)`): the app's
writes and the call's rows, events, audit record and idempotency record commit or roll back
together; a failed call leaves the caller's transaction usable; denials are recorded once, on their
own, after the caller's transaction ends. SQLite file and PostgreSQL (the `sql_kind` fixture)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from core_guarantees_app import (
    DENIED_ACTION,
    ORG,
    VIEWER,
    GuaranteesApp,
    build_app,
    call_ctx,
    chain_verifies,
    counter_entity,
    make_executor,
    note_entity,
    read_stored,
)
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, event, func, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from contractspec.core import (
    ConcurrentUpdateError,
    ConfigurationError,
    ConflictError,
    Executor,
    InternalError,
    MemoryBackend,
    PolicyDeniedError,
)
from contractspec.core.handler import Invocation, NextFn
from contractspec.core.sql import SqlBackend, idempotency_table, sqlite_engine
from contractspec.core.testing import temporary_sql_engine

# -- the app's own tables --------------------------------------------------------------------------

app_metadata = MetaData()
#: A table the app writes with SQLAlchemy Core.
orders = Table(
    "app_orders",
    app_metadata,
    Column("id", String(40), primary_key=True),
    Column("note_id", String(40)),
)


class Base(DeclarativeBase):
    pass


class Invoice(Base):
    """A table the app writes with the ORM."""

    __tablename__ = "app_invoices"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    amount: Mapped[int] = mapped_column(Integer)


@pytest.fixture
def app() -> GuaranteesApp:
    """The guarantees app: notes, counters, deals, a handler that is denied inside."""
    return build_app()


@pytest.fixture
async def backend(app: GuaranteesApp, sql_engine: AsyncEngine) -> SqlBackend:
    """A SqlBackend on the test engine, with the app's own tables created next to it."""
    sql = SqlBackend(sql_engine, app.registry)
    await sql.create_all()
    async with sql_engine.begin() as conn:
        await conn.run_sync(app_metadata.create_all)
        await conn.run_sync(Base.metadata.create_all)
    return sql


@pytest.fixture
def executor(app: GuaranteesApp, backend: SqlBackend) -> Executor:
    """An executor over the SQL backend with the tests' role grants."""
    return make_executor(app, backend)


async def _count(engine: AsyncEngine, table: Any) -> int:
    """Committed rows of `table` (read on a fresh connection)."""
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def _order_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return sorted((await conn.execute(select(orders.c.id))).scalars())


# -- commit and rollback together --------------------------------------------------------------------


async def test_app_write_and_call_commit_together(
    executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """An app Core write and a joined call are invisible to others until the caller commits;
    then the app row, the call's entity row, its outbox event and audit entry are all stored."""
    async with sql_engine.connect() as conn:
        await conn.begin()
        await conn.execute(insert(orders).values(id="o1", note_id="n1"))
        note = await executor.execute(
            "ops.note.create", {"id": "n1", "note_body": "hello"}, call_ctx("r1"), connection=conn
        )
        assert note.model_dump()["id"] == "n1"
        # Before the caller's commit nothing of either is visible to another connection.
        before = await read_stored(backend)
        assert before.entity(note_entity) == {}
        assert before.audit_for("r1") == []
        assert before.events_for("r1") == []
        # ...but the caller's own connection sees the call's row.
        seen = await conn.execute(select(backend.table(note_entity).c.id))
        assert list(seen.scalars()) == ["n1"]
        await conn.commit()

    stored = await read_stored(backend)
    assert await _order_ids(sql_engine) == ["o1"]
    assert list(stored.entity(note_entity)) == ["n1"]
    assert stored.event_names_for("r1") == ["ops.note.created"]
    assert stored.outcomes_for("r1") == ["success"]
    assert await chain_verifies(backend)


async def test_caller_rollback_leaves_nothing_of_either(
    app: GuaranteesApp, executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """When the caller rolls back, neither its row nor the calls' rows, events, audit entries or
    idempotency record remain; the same idempotency key then runs the handler again."""
    async with sql_engine.connect() as conn:
        await conn.begin()
        await conn.execute(insert(orders).values(id="o1"))
        await executor.execute(
            "crm.contact.create", {"id": "c1", "name": "Ada"}, call_ctx("r1"), connection=conn
        )
        await executor.execute(
            "crm.deal.create",
            {"contact_id": "c1", "title": "T", "amount": "5"},
            call_ctx("r2", idempotency_key="k1"),
            connection=conn,
        )
        await conn.rollback()

    stored = await read_stored(backend)
    assert await _order_ids(sql_engine) == []
    assert stored.rows == {name: {} for name in stored.rows}
    assert stored.audit == []
    assert stored.events == []
    assert await _count(sql_engine, idempotency_table) == 0

    ok = await executor.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, call_ctx("r3"))
    assert ok.model_dump()["id"] == "c1"
    await executor.execute(
        "crm.deal.create",
        {"contact_id": "c1", "title": "T", "amount": "5"},
        call_ctx("r4", idempotency_key="k1"),
    )
    assert app.runs[("crm.deal.create", "k1")] == 2  # the rolled-back run left no reservation


async def test_a_failed_call_leaves_nothing_and_the_callers_transaction_usable(
    executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """A joined call that fails on a taken key (after its write reached the database) is undone
    to its savepoint: the caller's transaction goes on and commits its rows and the first call."""
    async with sql_engine.connect() as conn:
        await conn.begin()
        await conn.execute(insert(orders).values(id="o1"))
        await executor.execute(
            "ops.note.create", {"id": "n1", "note_body": "first"}, call_ctx("r1"), connection=conn
        )
        with pytest.raises(ConflictError):
            await executor.execute(
                "ops.note.create",
                {"id": "n1", "note_body": "again"},
                call_ctx("r2"),
                connection=conn,
            )
        # On PostgreSQL a failed statement outside a savepoint would abort the transaction here.
        await conn.execute(insert(orders).values(id="o2"))
        assert (await read_stored(backend)).entity(note_entity) == {}  # still the caller's
        await conn.commit()

    stored = await read_stored(backend)
    assert await _order_ids(sql_engine) == ["o1", "o2"]
    assert stored.entity(note_entity)["n1"]["note_body"] == "first"
    assert stored.outcomes_for("r1") == ["success"]
    assert stored.audit_for("r2") == []
    assert stored.events_for("r2") == []
    assert await chain_verifies(backend)


async def test_a_handler_failing_after_its_writes_reached_the_database_leaves_nothing(
    app: GuaranteesApp, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """A joined call whose handler fails after its row was written to the database (a read
    flushed it inside the call's savepoint) raises InternalError; its row, event and audit entry
    are gone, and the caller's own rows before and after it commit."""

    async def fail_after_flush(inv: Invocation, call_next: NextFn) -> BaseModel:
        output = await call_next(inv)
        if inv.ctx.call.request_id == "r-fail":
            assert await inv.ctx.repo(note_entity).count() == 2  # flushed: n1 and this call's n2
            raise RuntimeError("the handler's bug")
        return output

    executor = make_executor(app, backend, middleware=[fail_after_flush])
    async with sql_engine.connect() as conn:
        await conn.begin()
        await conn.execute(insert(orders).values(id="o1"))
        await executor.execute(
            "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection=conn
        )
        with pytest.raises(InternalError):
            await executor.execute(
                "ops.note.create",
                {"id": "n2", "note_body": "x"},
                call_ctx("r-fail"),
                connection=conn,
            )
        await conn.execute(insert(orders).values(id="o2"))
        assert (await read_stored(backend)).entity(note_entity) == {}  # n1 waits for the commit
        await conn.commit()

    stored = await read_stored(backend)
    assert await _order_ids(sql_engine) == ["o1", "o2"]
    assert list(stored.entity(note_entity)) == ["n1"]
    assert stored.audit_for("r-fail") == []
    assert stored.events_for("r-fail") == []
    assert stored.outcomes_for("r1") == ["success"]


async def test_joining_through_sqlalchemys_savepoint_when_statements_are_listened_to(
    executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """With a statement listener on the engine (tracing, query logs) the joined call uses
    SQLAlchemy's `begin_nested()` instead of the driver fast path, with the same outcome: a failed
    call is undone to its savepoint, the first call and the caller's rows commit, and the
    listener saw the call's statements."""
    seen: list[str] = []

    def listener(*args: Any) -> None:
        seen.append(args[2])  # the statement text

    event.listen(sql_engine.sync_engine, "before_cursor_execute", listener)
    try:
        async with sql_engine.connect() as conn:
            await conn.begin()
            await conn.execute(insert(orders).values(id="o1"))
            await executor.execute(
                "ops.note.create", {"id": "n1", "note_body": "a"}, call_ctx("r1"), connection=conn
            )
            with pytest.raises(ConflictError):
                await executor.execute(
                    "ops.note.create",
                    {"id": "n1", "note_body": "b"},
                    call_ctx("r2"),
                    connection=conn,
                )
            await conn.execute(insert(orders).values(id="o2"))
            await conn.commit()
    finally:
        event.remove(sql_engine.sync_engine, "before_cursor_execute", listener)
    assert any(s.startswith("SAVEPOINT") for s in seen)
    assert any("ops_note" in s and s.startswith("INSERT") for s in seen)
    stored = await read_stored(backend)
    assert await _order_ids(sql_engine) == ["o1", "o2"]
    assert stored.entity(note_entity)["n1"]["note_body"] == "a"
    assert stored.outcomes_for("r1") == ["success"]
    assert stored.audit_for("r2") == []


async def test_a_joined_query_sees_the_callers_uncommitted_rows(
    executor: Executor, sql_engine: AsyncEngine
) -> None:
    """A query joined to the caller's transaction reads what the caller (and earlier joined
    calls) wrote but did not commit; the same query outside does not."""
    async with sql_engine.connect() as conn:
        await conn.begin()
        await executor.execute(
            "crm.contact.create", {"id": "c1", "name": "Ada"}, call_ctx("r1"), connection=conn
        )
        await executor.execute(
            "crm.deal.create",
            {"contact_id": "c1", "title": "T", "amount": "5"},
            call_ctx("r2"),
            connection=conn,
        )
        inside = await executor.execute("crm.deal.search", {}, call_ctx("q1"), connection=conn)
        outside = await executor.execute("crm.deal.search", {}, call_ctx("q2"))
        assert inside.model_dump()["total"] == 1
        assert outside.model_dump()["total"] == 0
        await conn.commit()


# -- sessions, the repro, an endpoint ----------------------------------------------------------


async def test_flush_then_execute_does_not_wait_for_the_lock(
    app: GuaranteesApp, sql_kind: str, tmp_path: Path
) -> None:
    """The issue's repro: an ORM write is flushed, then the call runs. Joined to the session it
    completes without waiting for the lock the session holds; stored together at commit.

    The engine's lock wait is 0.2 s: a call writing on a connection of its own would fail with
    `database is locked` (SQLite) instead of completing.
    """
    if sql_kind == "sqlite":
        engine = sqlite_engine(tmp_path / "repro.db", busy_timeout_ms=200)
        await _run_repro(app, engine)
        await engine.dispose()
    else:
        async with temporary_sql_engine("postgres", tmp_path) as engine:
            await _run_repro(app, engine)


async def _run_repro(app: GuaranteesApp, engine: AsyncEngine) -> None:
    backend = SqlBackend(engine, app.registry)
    await backend.create_all()
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    executor = make_executor(app, backend)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session, session.begin():
        session.add(Invoice(id="i1", amount=10))
        await session.flush()
        await executor.execute(
            "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection=session
        )
        assert (await read_stored(backend)).entity(note_entity) == {}  # commits with the session
    stored = await read_stored(backend)
    assert list(stored.entity(note_entity)) == ["n1"]
    assert stored.outcomes_for("r1") == ["success"]
    assert await _count(engine, Invoice.__table__) == 1


def _endpoint_app(executor: Executor, sessions: async_sessionmaker[AsyncSession]) -> Starlette:
    """A Starlette endpoint writing an invoice (ORM) and running a command in one transaction."""

    async def create(request: Request) -> JSONResponse:
        body = await request.json()
        async with sessions() as session, session.begin():
            session.add(Invoice(id=body["invoice"], amount=body["amount"]))
            await session.flush()
            note = await executor.execute(
                "ops.note.create",
                {"id": body["note"], "note_body": "invoice"},
                call_ctx(body["request_id"]),
                connection=session,
            )
            if body["amount"] < 0:  # a check after the call: the endpoint fails, all rolls back
                return JSONResponse({"error": "negative amount"}, status_code=422)
            return JSONResponse({"note": note.model_dump()["id"]}, status_code=201)

    return Starlette(routes=[Route("/invoices", create, methods=["POST"])])


async def test_an_endpoint_with_an_async_session(
    executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """A Starlette endpoint using `async with session.begin()`: a request that succeeds stores
    the invoice and the call's note, event and audit entry; one that raises after the call stores
    neither."""
    sessions = async_sessionmaker(sql_engine, expire_on_commit=False)

    class Failed(Exception):
        pass

    async def raising(request: Request) -> JSONResponse:
        async with sessions() as session, session.begin():
            session.add(Invoice(id="i-bad", amount=1))
            await executor.execute(
                "ops.note.create",
                {"id": "n-bad", "note_body": "x"},
                call_ctx("r-bad"),
                connection=session,
            )
            raise Failed  # the session's context manager rolls everything back

    api = _endpoint_app(executor, sessions)
    api.router.routes.append(Route("/boom", raising, methods=["POST"]))
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        good = await http.post(
            "/invoices", json={"invoice": "i1", "note": "n1", "amount": 5, "request_id": "r1"}
        )
        bad = await http.post("/boom", json={})
    assert good.status_code == 201, good.text
    assert bad.status_code == 500
    stored = await read_stored(backend)
    assert list(stored.entity(note_entity)) == ["n1"]
    assert stored.outcomes_for("r1") == ["success"]
    assert stored.event_names_for("r1") == ["ops.note.created"]
    assert stored.audit_for("r-bad") == []
    async with sql_engine.connect() as conn:
        assert list((await conn.execute(select(Invoice.id))).scalars()) == ["i1"]


# -- denials ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("caller", ["connection", "session"])
@pytest.mark.parametrize("ending", ["commit", "rollback"])
async def test_denials_are_recorded_once_after_the_callers_transaction(
    app: GuaranteesApp, sql_kind: str, tmp_path: Path, ending: str, caller: str
) -> None:
    """A denial inside a joined handler and one at the authorize stage are each recorded once,
    whether the caller (a connection or a session) commits or rolls back, and only after its
    transaction ended (a write of their own while the caller holds its locks would fail: the lock
    wait is 0.2 s on SQLite)."""
    if sql_kind == "sqlite":
        engine = sqlite_engine(tmp_path / "deny.db", busy_timeout_ms=200)
    else:
        engine = None
    async with _engine_or_temporary(engine, tmp_path) as eng:
        backend = SqlBackend(eng, app.registry)
        await backend.create_all()
        async with eng.begin() as conn:
            await conn.run_sync(app_metadata.create_all)
        executor = make_executor(app, backend)
        async with eng.connect() as conn, AsyncSession(eng) as session:
            target: AsyncConnection | AsyncSession = conn if caller == "connection" else session
            if caller == "connection":
                await conn.begin()
            await target.execute(insert(orders).values(id="o1"))
            await executor.execute(
                "ops.note.create", {"id": "n0", "note_body": "x"}, call_ctx("r0"), connection=target
            )
            with pytest.raises(PolicyDeniedError) as inside:
                await executor.execute(
                    "ops.note.guarded", {"id": "n1"}, call_ctx("r1"), connection=target
                )
            with pytest.raises(PolicyDeniedError):
                await executor.execute(
                    "ops.note.create",
                    {"id": "n2", "note_body": "x"},
                    call_ctx("r2", actor=VIEWER),
                    connection=target,
                )
            assert inside.value.action == DENIED_ACTION
            assert (await read_stored(backend)).audit == []  # nothing before the caller ends
            await (target.commit() if ending == "commit" else target.rollback())
        await backend.unit_of_work.wait_joined()

        stored = await read_stored(backend)
        assert stored.outcomes_for("r1") == ["denied"]
        assert stored.outcomes_for("r2") == ["denied"]
        assert "n1" not in stored.entity(note_entity)  # the denied handler's write is undone
        committed = ending == "commit"
        assert stored.outcomes_for("r0") == (["success"] if committed else [])
        assert list(stored.entity(note_entity)) == (["n0"] if committed else [])
        assert await _order_ids(eng) == (["o1"] if committed else [])
        assert await chain_verifies(backend)


async def test_a_denial_before_the_caller_began_is_recorded_at_once(
    executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """Denied at the authorize stage with a connection that has no transaction open: the denial
    is written at once and no transaction is begun on the caller's connection."""
    async with sql_engine.connect() as conn:
        with pytest.raises(PolicyDeniedError):
            await executor.execute(
                "ops.note.create",
                {"id": "n1", "note_body": "x"},
                call_ctx("r1", actor=VIEWER),
                connection=conn,
            )
        assert not conn.in_transaction()
        assert (await read_stored(backend)).outcomes_for("r1") == ["denied"]


def _engine_or_temporary(engine: AsyncEngine | None, tmp_path: Path) -> Any:
    if engine is None:
        return temporary_sql_engine("postgres", tmp_path)

    class _Own:
        async def __aenter__(self) -> AsyncEngine:
            assert engine is not None
            return engine

        async def __aexit__(self, *exc: object) -> None:
            assert engine is not None
            await engine.dispose()

    return _Own()


# -- after-commit callbacks --------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["commit", "rollback"])
async def test_after_commit_callbacks_wait_for_the_callers_commit(
    app: GuaranteesApp, backend: SqlBackend, sql_engine: AsyncEngine, ending: str
) -> None:
    """`tx.on_commit` callbacks of a joined call run once the caller's COMMIT succeeded, and
    never when the caller rolls back."""
    ran: list[str] = []

    async def on_commit_probe(inv: Invocation, call_next: NextFn) -> BaseModel:
        output = await call_next(inv)
        inv.ctx.tx.on_commit(lambda: ran.append(inv.ctx.call.request_id or ""))
        return output

    executor = make_executor(app, backend, middleware=[on_commit_probe])
    async with sql_engine.connect() as conn:
        await conn.begin()
        await executor.execute(
            "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection=conn
        )
        assert ran == []  # the call returned; the caller has not committed
        await (conn.commit() if ending == "commit" else conn.rollback())
    await backend.unit_of_work.wait_joined()
    assert ran == (["r1"] if ending == "commit" else [])


@pytest.mark.usefixtures("postgres_only")
@pytest.mark.parametrize("roll_back_at_once", [True, False])
async def test_after_commit_callbacks_do_not_run_when_the_callers_commit_fails(
    app: GuaranteesApp,
    backend: SqlBackend,
    sql_engine: AsyncEngine,
    roll_back_at_once: bool,
) -> None:
    """A COMMIT refused by a deferred constraint stores nothing of the call, and its
    after-commit callbacks never run (whether the caller rolls back at once or only when its
    connection closes)."""
    async with sql_engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE app_codes (code TEXT, CONSTRAINT app_codes_code_key UNIQUE (code) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    ran: list[str] = []

    async def on_commit_probe(inv: Invocation, call_next: NextFn) -> BaseModel:
        output = await call_next(inv)
        inv.ctx.tx.on_commit(lambda: ran.append("ran"))
        return output

    executor = make_executor(app, backend, middleware=[on_commit_probe])
    async with sql_engine.connect() as conn:
        await conn.begin()
        await conn.execute(text("INSERT INTO app_codes VALUES ('x'), ('x')"))  # checked at COMMIT
        await executor.execute(
            "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection=conn
        )
        with pytest.raises(IntegrityError):
            await conn.commit()
        if roll_back_at_once:
            await conn.rollback()
    await backend.unit_of_work.wait_joined()
    assert ran == []
    stored = await read_stored(backend)
    assert stored.entity(note_entity) == {}
    assert stored.audit_for("r1") == []


# -- refused configurations -----------------------------------------------------------------------------


async def test_connection_with_the_memory_backend_is_refused(
    app: GuaranteesApp, sql_engine: AsyncEngine
) -> None:
    """The memory backend cannot join a SQL transaction: ConfigurationError naming the fix."""
    executor = make_executor(app, MemoryBackend())
    async with sql_engine.connect() as conn:
        with pytest.raises(ConfigurationError, match="SqlBackend") as err:
            await executor.execute(
                "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection=conn
            )
    assert err.value.details == {"field": "connection"}


async def test_connection_inside_a_batch_is_refused(
    executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """A call inside `executor.batch()` cannot also join the caller's transaction."""
    async with sql_engine.connect() as conn, executor.batch() as batch:
        with pytest.raises(ConfigurationError, match=r"executor\.batch\(\)"):
            await executor.execute(
                "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection=conn
            )
        assert batch.calls == 0
    assert (await read_stored(backend)).entity(note_entity) == {}


async def test_a_connection_to_another_database_or_not_a_connection_is_refused(
    executor: Executor, sql_kind: str, tmp_path: Path
) -> None:
    """`connection=` must be an AsyncConnection/AsyncSession on the backend's database."""
    with pytest.raises(ConfigurationError, match="AsyncConnection or AsyncSession"):
        await executor.execute(
            "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection="db"
        )
    other = sqlite_engine(tmp_path / "other.db")
    try:
        async with other.connect() as conn:
            with pytest.raises(ConfigurationError, match="another database"):
                await executor.execute(
                    "ops.note.create",
                    {"id": "n1", "note_body": "x"},
                    call_ctx("r1"),
                    connection=conn,
                )
    finally:
        await other.dispose()


async def test_a_second_engine_on_the_same_sqlite_file_may_join(
    app: GuaranteesApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's own engine on the backend's SQLite file (named by a relative path) joins: the
    call's row commits with the app's."""
    monkeypatch.chdir(tmp_path)
    ours = sqlite_engine(tmp_path / "shared.db")
    theirs = sqlite_engine("shared.db")
    try:
        backend = SqlBackend(ours, app.registry)
        await backend.create_all()
        async with theirs.begin() as conn:
            await conn.run_sync(app_metadata.create_all)
        executor = make_executor(app, backend)
        async with theirs.connect() as conn:
            await conn.begin()
            await conn.execute(insert(orders).values(id="o1"))
            await executor.execute(
                "ops.note.create", {"id": "n1", "note_body": "x"}, call_ctx("r1"), connection=conn
            )
            await conn.commit()
        assert list((await read_stored(backend)).entity(note_entity)) == ["n1"]
        assert await _order_ids(ours) == ["o1"]
    finally:
        await theirs.dispose()
        await ours.dispose()


async def test_an_unconfigured_sqlite_engine_is_refused(
    executor: Executor, sql_kind: str, sql_engine: AsyncEngine
) -> None:
    """A SQLite connection from an engine not set up by `configure_sqlite_engine` is refused
    (its driver's implicit transactions break savepoints)."""
    if sql_kind != "sqlite":
        pytest.skip("SQLite engines only")
    plain = create_async_engine(sql_engine.url)
    try:
        async with plain.connect() as conn:
            with pytest.raises(ConfigurationError, match="configure_sqlite_engine"):
                await executor.execute(
                    "ops.note.create",
                    {"id": "n1", "note_body": "x"},
                    call_ctx("r1"),
                    connection=conn,
                )
    finally:
        await plain.dispose()


# -- concurrent callers (PostgreSQL) ---------------------------------------------------------------------


@pytest.fixture
def postgres_only(sql_kind: str) -> None:
    """Concurrent writers are a PostgreSQL matter (SQLite has one writer at a time)."""
    if sql_kind != "postgres":
        pytest.skip("concurrent joined transactions need PostgreSQL")


async def _joined_call(
    engine: AsyncEngine,
    executor: Executor,
    order_id: str,
    operation: str,
    data: dict[str, Any],
    request_id: str,
    key: str | None = None,
    *,
    commit: bool = True,
) -> BaseModel | Exception:
    """App write + joined call, then commit (or roll back) on a connection of its own; the
    call's result or error."""
    conn: AsyncConnection
    async with engine.connect() as conn:
        await conn.begin()
        await conn.execute(insert(orders).values(id=order_id))
        try:
            result: BaseModel | Exception = await executor.execute(
                operation, data, call_ctx(request_id, idempotency_key=key), connection=conn
            )
        except (ConcurrentUpdateError, ConflictError) as exc:
            result = exc
        await asyncio.sleep(0)  # let the other callers run while this one holds its locks
        await (conn.commit() if commit else conn.rollback())
        return result


#: Callers that commit; the others roll back after their call returned.
COMMITTING = range(0, 8, 2)
ROLLING_BACK = range(1, 8, 2)


@pytest.mark.usefixtures("postgres_only")
async def test_concurrent_joined_callers_run_the_handler_once_per_key(
    app: GuaranteesApp, executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine
) -> None:
    """Eight callers with one idempotency key, each in its own transaction; the odd ones roll
    back after their call. Exactly one deal is stored, every committing caller got it, and only
    committing callers left audit entries (one `success`, the rest `replayed`)."""
    await executor.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, call_ctx("setup"))
    data = {"contact_id": "c1", "title": "T", "amount": "5"}
    results = await asyncio.gather(
        *(
            _joined_call(
                sql_engine,
                executor,
                f"o{i}",
                "crm.deal.create",
                data,
                f"r{i}",
                "k1",
                commit=i in COMMITTING,
            )
            for i in range(8)
        )
    )
    assert all(isinstance(r, BaseModel) for r in results), results
    stored = await read_stored(backend)
    [deal_id] = stored.rows["crm.deal"]
    assert {results[i].model_dump()["id"] for i in COMMITTING} == {deal_id}  # type: ignore[union-attr]
    outcomes = sorted(o for i in COMMITTING for o in stored.outcomes_for(f"r{i}"))
    assert outcomes == ["replayed"] * 3 + ["success"]
    assert [o for i in ROLLING_BACK for o in stored.outcomes_for(f"r{i}")] == []
    assert 1 <= app.runs[("crm.deal.create", "k1")] <= 1 + len(ROLLING_BACK)
    assert await _order_ids(sql_engine) == [f"o{i}" for i in COMMITTING]
    assert await chain_verifies(backend)


@pytest.mark.usefixtures("postgres_only")
@pytest.mark.parametrize("locked", [False, True])
async def test_concurrent_joined_increments_lose_no_update(
    executor: Executor, backend: SqlBackend, sql_engine: AsyncEngine, locked: bool
) -> None:
    """Eight joined callers increment one counter, the odd ones roll back afterwards. The stored
    value counts exactly the increments that returned and were committed (a stale plain read is a
    ConcurrentUpdateError; with `get_for_update` callers take turns and none fails)."""
    await executor.execute("ops.counter.create", {"id": "k"}, call_ctx("setup"))
    operation = "ops.counter.increment_locked" if locked else "ops.counter.increment"
    results = await asyncio.gather(
        *(
            _joined_call(
                sql_engine,
                executor,
                f"o{i}",
                operation,
                {"id": "k"},
                f"r{i}",
                commit=i in COMMITTING,
            )
            for i in range(8)
        )
    )
    assert all(isinstance(r, BaseModel | ConcurrentUpdateError) for r in results), results
    kept = [i for i in COMMITTING if isinstance(results[i], BaseModel)]
    if locked:
        assert all(isinstance(r, BaseModel) for r in results), results
    stored = await read_stored(backend)
    assert stored.entity(counter_entity)["k"]["value"] == len(kept)
    assert [i for i in range(8) if stored.outcomes_for(f"r{i}") == ["success"]] == kept
    assert await chain_verifies(backend, ORG)
