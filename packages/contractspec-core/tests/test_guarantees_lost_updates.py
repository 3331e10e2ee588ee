"""No lost updates: concurrent read-modify-write calls on one record either wait for each other
(`Repository.get_for_update`) or fail with `ConcurrentUpdateError`; concurrent transitions of one
deal have exactly one winner (memory, SQLite file, PostgreSQL; 20 calls in `asyncio.gather`)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from core_guarantees_app import (
    ORG,
    GuaranteesApp,
    Outcome,
    build_app,
    call_ctx,
    chain_verifies,
    counter_entity,
    make_executor,
    read_stored,
    run_call,
    summary,
)

import contractspec.core as core
from contractspec.core import (
    HTTP_STATUS,
    Backend,
    ConflictError,
    ContractSpecError,
    SpecRegistry,
    SpecValidationError,
)

N = 20


@pytest.fixture
def app() -> GuaranteesApp:
    """The guarantees app (its registry also builds the `backend` fixture's tables)."""
    return build_app()


@pytest.fixture
def registry(app: GuaranteesApp) -> SpecRegistry:
    """Overrides conftest's registry so `backend` has this app's tables."""
    return app.registry


async def _gather(calls: list[Coroutine[Any, Any, Outcome]]) -> list[Outcome]:
    """Run the calls concurrently; the whole group must finish within 90 s."""
    return list(await asyncio.wait_for(asyncio.gather(*calls), 90))


def test_concurrent_update_error_is_a_public_409_conflict() -> None:
    """`ConcurrentUpdateError` is exported, is a ConflictError with code concurrent_update, and
    adapters answer it with 409."""
    error_type = core.ConcurrentUpdateError
    assert issubclass(error_type, ConflictError)
    assert error_type.code == "concurrent_update"
    assert HTTP_STATUS[error_type.code] == 409
    assert "ConcurrentUpdateError" in core.__all__


async def test_concurrent_moves_of_one_deal_have_exactly_one_winner(
    app: GuaranteesApp, backend: Backend
) -> None:
    """20 concurrent moves of one deal to `won`: one succeeds, with one event and one success audit
    entry; the others fail with ConflictError or the 'closed' validation error."""
    ex = make_executor(app, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, call_ctx("seed-1"))
    created = await ex.execute(
        "crm.deal.create", {"contact_id": "c1", "title": "A", "amount": "10"}, call_ctx("seed-2")
    )
    deal_id = created.model_dump()["id"]

    outcomes = await _gather(
        [
            run_call(
                ex, "crm.deal.move", {"deal_id": deal_id, "to_stage": "won"}, call_ctx(f"m{i}")
            )
            for i in range(N)
        ]
    )

    winners = [o for o in outcomes if o.ok]
    assert len(winners) == 1, f"{len(winners)} moves succeeded:\n{summary(outcomes)}"
    for o in outcomes:
        if o.ok:
            continue
        assert isinstance(o.error, ConflictError) or (
            isinstance(o.error, SpecValidationError) and "closed" in o.error.message
        ), o.describe()
    stored = await read_stored(backend)
    moved = [e for e in stored.events if e.name == "crm.deal.moved" and e.key == deal_id]
    assert [e.request_id for e in moved] == [winners[0].request_id]
    moves = [
        r
        for r in stored.audit
        if r.action == "crm.deal.move" and r.outcome == "success" and r.target_id == deal_id
    ]
    assert [r.request_id for r in moves] == [winners[0].request_id]
    assert stored.entity(app.registry.get_entity("crm.deal"))[deal_id]["stage"] == "won"
    assert await chain_verifies(backend)


async def test_locked_read_modify_write_calls_wait_for_each_other(
    app: GuaranteesApp, backend: Backend
) -> None:
    """20 concurrent increments through `get_for_update` all succeed, each sees its own value,
    and the counter ends at 20 with 20 events and 20 success audit entries."""
    ex = make_executor(app, backend)
    await ex.execute("ops.counter.create", {"id": "ctr"}, call_ctx("seed-1"))

    outcomes = await _gather(
        [
            run_call(ex, "ops.counter.increment_locked", {"id": "ctr"}, call_ctx(f"i{i}"))
            for i in range(N)
        ]
    )

    assert all(o.ok for o in outcomes), summary(outcomes)
    assert sorted(o.output["value"] for o in outcomes if o.output) == list(range(1, N + 1))
    stored = await read_stored(backend)
    assert stored.entity(counter_entity)["ctr"]["value"] == N
    for o in outcomes:
        assert stored.outcomes_for(o.request_id) == ["success"], o.describe()
        assert stored.event_names_for(o.request_id) == ["ops.counter.incremented"], o.describe()
    assert await chain_verifies(backend)


async def test_plain_read_modify_write_never_loses_an_update(
    app: GuaranteesApp, backend: Backend
) -> None:
    """20 concurrent get()+update() increments: every increment reported ok is in the final value
    (no lost update); the others fail with ConcurrentUpdateError and leave nothing."""
    ex = make_executor(app, backend)
    await ex.execute("ops.counter.create", {"id": "ctr"}, call_ctx("seed-1"))

    outcomes = await _gather(
        [run_call(ex, "ops.counter.increment", {"id": "ctr"}, call_ctx(f"i{i}")) for i in range(N)]
    )

    ok = [o for o in outcomes if o.ok]
    stored = await read_stored(backend)
    final = stored.entity(counter_entity)["ctr"]["value"]
    assert final == len(ok), (
        f"counter is {final} after {len(ok)} ok increments:\n{summary(outcomes)}"
    )
    assert sorted(o.output["value"] for o in ok if o.output) == list(range(1, len(ok) + 1))
    for o in outcomes:
        if o.ok:
            assert stored.outcomes_for(o.request_id) == ["success"], o.describe()
            assert stored.event_names_for(o.request_id) == ["ops.counter.incremented"]
        else:
            assert isinstance(o.error, ContractSpecError), o.describe()
            assert o.code == "concurrent_update", o.describe()
            assert stored.audit_for(o.request_id) == [], o.describe()
            assert stored.events_for(o.request_id) == [], o.describe()
    assert await chain_verifies(backend)


async def test_a_stale_write_raises_concurrent_update_error(
    backend: Backend, backend_kind: str
) -> None:
    """Two transactions read one record; the second to write after the first committed gets
    ConcurrentUpdateError (at update() or at the latest on commit), and the first write stays."""
    if backend_kind == "sqlite":
        pytest.skip("SQLite serialises write transactions: two writers cannot interleave")
    tx = await backend.unit_of_work.begin()
    await backend.entities.repository(counter_entity, tx, ORG).add({"id": "ctr", "value": 0})
    await tx.commit()

    first = await backend.unit_of_work.begin()
    second = await backend.unit_of_work.begin()
    try:
        repo1 = backend.entities.repository(counter_entity, first, ORG)
        repo2 = backend.entities.repository(counter_entity, second, ORG)
        seen1 = await repo1.get("ctr")
        seen2 = await repo2.get("ctr")
        assert seen1 is not None
        assert seen2 is not None
        await repo1.update(seen1.model_copy(update={"value": 1}))
        await first.commit()

        async def write_stale() -> None:
            await repo2.update(seen2.model_copy(update={"value": 100}))
            await second.commit()

        with pytest.raises(ConflictError) as caught:
            await write_stale()
        assert caught.value.code == "concurrent_update"
    finally:
        await first.rollback()
        await second.rollback()

    check = await backend.unit_of_work.begin(readonly=True)
    try:
        stored = await backend.entities.repository(counter_entity, check, ORG).get("ctr")
    finally:
        await check.rollback()
    assert stored is not None
    assert stored.value == 1
