"""`SqlOutbox` rows read back exactly as `outbox_row` built them, on SQLite and PostgreSQL.

On psycopg each outbox row travels as one JSON literal expanded by `jsonb_populate_record`
(`outbox_row_inserts`) instead of 14 values bound one by one. These tests hold what must not
change: every column's value (text with quotes, backslashes and non-ASCII, nested payloads,
datetimes as instants, naive ones as UTC), emission order of several rows in one transaction
(outside and inside a savepoint, where the rows are sent at once rather than deferred), and that
bad input fails the transaction with nothing written.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import EventEnvelope, SpecValidationError
from contractspec.core.sql import SqlOutbox, SqlUnitOfWork, create_all, metadata, outbox_table
from contractspec.core.sql._stores import outbox_row


class Note(BaseModel):
    text: str
    tags: list[str]
    amount: int | None = None
    nested: dict[str, Any] = {}


T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _env(n: int, **over: Any) -> EventEnvelope:
    fields: dict[str, Any] = {
        "id": f"ev-{n}",
        "name": "app.note.added",
        "version": 1,
        "occurred_at": T0 + timedelta(seconds=n),
        "payload": Note(text=f"note {n}", tags=["a"]),
        "org_id": "org-1",
        "actor_id": "u-1",
        "actor_kind": "user",
        "key": f"k-{n % 2}",
    }
    fields.update(over)
    return EventEnvelope(**fields)


async def _publish(engine: AsyncEngine, events: list[EventEnvelope], *, savepoint: bool) -> None:
    tx = await SqlUnitOfWork(engine).begin()
    try:
        if engine.dialect.name == "postgresql":  # a naive time read as local time would move
            await tx.connection.exec_driver_sql("SET LOCAL TIME ZONE 'Asia/Kolkata'")
        if savepoint:  # a call's savepoint: the rows are written before it is released
            sp = await tx.savepoint()
            await SqlOutbox().publish(events, tx)
            await sp.release()
        else:  # outside calls: deferred to the COMMIT's round trip on PostgreSQL
            await SqlOutbox().publish(events, tx)
        await tx.commit()
    except BaseException:
        await tx.rollback()
        raise


async def _rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(outbox_table).order_by(outbox_table.c.position))
        return [dict(r._mapping) for r in result]


def _expected(env: EventEnvelope) -> dict[str, Any]:
    row = outbox_row(env)
    at = row["occurred_at"]
    row["occurred_at"] = row["available_at"] = (
        at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    )
    return row


@pytest.mark.parametrize("savepoint", [False, True], ids=["deferred", "in-savepoint"])
async def test_rows_read_back_as_built_in_emission_order(
    sql_engine: AsyncEngine, savepoint: bool
) -> None:
    await create_all(sql_engine, metadata)
    tricky = "it's a \\ back'slash \"quote\" é ☃ 𝄞 \n tab\t end"
    events = [
        _env(1),
        _env(
            2,
            payload=Note(text=tricky, tags=[tricky, ""], amount=-(2**62), nested={"a": [1, None]}),
            org_id="o'rg\\2",
            key=tricky,
            actor_id=tricky,
        ),
        _env(3, org_id=None, key=None, actor_id=None, actor_kind=None),
        # aware in another zone: the same instant in UTC; naive: taken as UTC
        _env(4, occurred_at=datetime(2024, 5, 6, 9, 0, tzinfo=timezone(timedelta(hours=2)))),
        _env(5, occurred_at=datetime(2024, 5, 6, 7, 0)),
    ]
    await _publish(sql_engine, events, savepoint=savepoint)
    rows = await _rows(sql_engine)
    assert [r["id"] for r in rows] == [e.id for e in events]  # positions in emission order
    for got, env in zip(rows, events, strict=True):
        assert {k: v for k, v in got.items() if k != "position"} == _expected(env)
    assert rows[3]["occurred_at"] == datetime(2024, 5, 6, 7, 0, tzinfo=UTC)
    assert rows[4]["occurred_at"] == datetime(2024, 5, 6, 7, 0, tzinfo=UTC)


# text PostgreSQL stores: no NUL (text columns and jsonb refuse it), no lone surrogates
_TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    text=_TEXT,
    tags=st.lists(_TEXT, max_size=3),
    amount=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
    org=st.none() | _TEXT.filter(bool),
    key=st.none() | _TEXT.filter(bool),
)
async def test_any_text_round_trips(
    sql_engine: AsyncEngine,
    text: str,
    tags: list[str],
    amount: int | None,
    org: str | None,
    key: str | None,
) -> None:
    await create_all(sql_engine, metadata)
    async with sql_engine.begin() as conn:
        await conn.execute(outbox_table.delete())
    env = _env(1, payload=Note(text=text, tags=tags, amount=amount), org_id=org, key=key)
    await _publish(sql_engine, [env], savepoint=False)
    [got] = await _rows(sql_engine)
    assert {k: v for k, v in got.items() if k != "position"} == _expected(env)


async def test_a_value_the_database_refuses_fails_the_transaction_and_writes_nothing(
    sql_engine: AsyncEngine, sql_kind: str
) -> None:
    """A NUL character: PostgreSQL's jsonb refuses it; the error surfaces at commit as a
    `SpecValidationError` and neither the first (valid) row nor the second is written. SQLite
    stores it."""
    await create_all(sql_engine, metadata)
    events = [_env(1), _env(2, payload=Note(text="nul \x00 here", tags=[]))]
    if sql_kind == "postgres":
        with pytest.raises(SpecValidationError, match="cannot be stored") as caught:
            await _publish(sql_engine, events, savepoint=False)
        assert caught.value.details["sqlstate"] == "22P05"  # untranslatable character
        async with sql_engine.connect() as conn:
            count = (await conn.execute(select(func.count()).select_from(outbox_table))).scalar()
        assert count == 0
    else:
        await _publish(sql_engine, events, savepoint=False)
        rows = await _rows(sql_engine)
        assert rows[1]["payload"]["text"] == "nul \x00 here"
