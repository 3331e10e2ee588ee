"""An engine made with `isolation_level="AUTOCOMMIT"` keeps autocommit connections after an enqueue."""

from __future__ import annotations

import os

import pytest
from jobs_app import send_email
from sqlalchemy import text

from contractspec.core.testing import postgres_dsn, temporary_postgres_engine
from contractspec.jobs.sql import SqlJobQueue

pytestmark = pytest.mark.postgres


def _require_postgres() -> None:
    if postgres_dsn() is None:
        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "CONTRACTSPEC_REQUIRE_POSTGRES=1 but CONTRACTSPEC_TEST_POSTGRES_DSN is unset"
            )
        pytest.skip("autocommit engines are PostgreSQL's")


async def test_enqueue_on_an_autocommit_engine_leaves_its_connection_in_autocommit() -> None:
    """The driver-path enqueue restores the mode it found: on an AUTOCOMMIT engine the pooled
    connection stays autocommit, so a later write on it is committed at once (before the fix it was
    left in a transaction no one commits: the write stayed invisible to other connections)."""
    _require_postgres()
    async with temporary_postgres_engine(isolation_level="AUTOCOMMIT", pool_size=1) as engine:
        queue = SqlJobQueue(engine, [send_email])
        await queue.create_all()
        async with engine.connect() as conn:
            await conn.execute(text("CREATE TABLE probe (n int)"))
        job_id = await queue.enqueue(send_email, {"to": "ada@x.io"})  # one job: the driver path
        async with engine.connect() as conn:  # the one pooled connection
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.autocommit is True
            await conn.execute(text("INSERT INTO probe VALUES (1)"))  # no commit: autocommit
        async with engine.connect() as pooled, engine.connect() as other:  # `other` is new
            assert pooled is not other
            assert (await other.execute(text("SELECT count(*) FROM probe"))).scalar_one() == 1
        assert await queue.get(job_id) is not None
        await queue.close()


async def test_enqueue_on_a_traced_engine_runs_through_sqlalchemy_so_listeners_see_it() -> None:
    """An engine with a cursor-execute listener (tracing, query logs) keeps SQLAlchemy's path:
    the listener sees the enqueue's INSERT (the driver path would bypass it), the job is stored
    once, and the pooled connection is back out of autocommit (SQLAlchemy's own transaction)."""
    _require_postgres()
    from sqlalchemy import event

    async with temporary_postgres_engine(pool_size=1) as engine:
        queue = SqlJobQueue(engine, [send_email])
        await queue.create_all()
        seen: list[str] = []

        @event.listens_for(engine.sync_engine, "before_cursor_execute")
        def _trace(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
            seen.append(statement)

        job_id = await queue.enqueue(send_email, {"to": "ada@x.io"})
        inserts = [s for s in seen if "INSERT INTO cs_jobs" in s]
        assert len(inserts) == 1, seen
        assert await queue.get(job_id) is not None
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert raw.driver_connection.autocommit is False
            count = (await conn.execute(text("SELECT count(*) FROM cs_jobs"))).scalar_one()
        assert count == 1
        await queue.close()
