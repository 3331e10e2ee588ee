"""Every backend stores the same things the same way: strings no database can hold are refused
with a SpecValidationError before anything is written, a model's own `org_id` field holds the
caller's tenant, and the default in-memory SQLite engine copes with concurrent calls."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from core_guarantees_app import (
    ORG,
    GuaranteesApp,
    Outcome,
    build_app,
    call_ctx,
    chain_verifies,
    make_executor,
    note_entity,
    read_stored,
    run_call,
    summary,
    tagged_entity,
)

from contractspec.core import (
    Backend,
    ConfigurationError,
    SpecRegistry,
    SpecValidationError,
)

#: name -> a string PostgreSQL refuses (NUL) or no driver can encode (a lone surrogate)
BAD_STRINGS = {"nul": "a\x00b", "surrogate": "a\ud800b"}
#: where the bad string goes -> (operation, input for it, the field the error must name)
PLACES: dict[str, tuple[str, Any, str]] = {
    "entity_column": ("ops.note.create", lambda bad: {"id": "bad", "note_body": bad}, "note_body"),
    "entity_json": ("ops.note.create", lambda bad: {"id": "bad", "tags": ["ok", bad]}, "tags"),
    "event_payload": ("ops.note.announce", lambda bad: {"headline": bad}, "headline"),
}


@pytest.fixture
def app() -> GuaranteesApp:
    """The guarantees app (its registry also builds the `backend` fixture's tables)."""
    return build_app()


@pytest.fixture
def registry(app: GuaranteesApp) -> SpecRegistry:
    """Overrides conftest's registry so `backend` has this app's tables."""
    return app.registry


@pytest.mark.parametrize("in_batch", [False, True], ids=["alone", "in_batch"])
@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("bad", sorted(BAD_STRINGS))
async def test_unstorable_strings_are_refused_with_a_validation_error_naming_the_field(
    app: GuaranteesApp, backend: Backend, bad: str, place: str, in_batch: bool
) -> None:
    """A NUL character or a lone surrogate in a stored field or an event payload: the call fails
    with SpecValidationError (validation_error) naming the field, and leaves nothing behind."""
    operation, make_input, field_name = PLACES[place]
    ex = make_executor(app, backend)
    outcomes: list[Outcome] = []

    async def calls() -> None:
        outcomes.append(await run_call(ex, "ops.note.create", {"id": "n0"}, call_ctx("s0")))
        outcomes.append(await run_call(ex, operation, make_input(BAD_STRINGS[bad]), call_ctx("s1")))
        outcomes.append(await run_call(ex, "ops.note.create", {"id": "n2"}, call_ctx("s2")))

    async def run() -> None:
        if in_batch:
            async with ex.batch(commit_every=100):
                await calls()
        else:
            await calls()

    await asyncio.wait_for(run(), 30)

    first, refused, last = outcomes
    assert first.ok, first.describe()
    assert isinstance(refused.error, SpecValidationError), refused.describe()
    assert refused.error.code == "validation_error"
    assert field_name in str(refused.error.to_dict()), refused.error.to_dict()
    assert last.ok, last.describe()
    stored = await read_stored(backend)
    assert sorted(stored.entity(note_entity)) == ["n0", "n2"]
    assert stored.audit_for("s1") == []
    assert stored.events_for("s1") == []
    assert [r.request_id for r in stored.audit] == ["s0", "s2"]
    assert await chain_verifies(backend)


async def test_a_model_org_id_field_holds_the_callers_tenant_on_every_backend(
    backend: Backend,
) -> None:
    """A record whose model declares `org_id` is stored, and read back, with the repository's
    tenant, whatever the payload said; the named tenant never sees it."""
    tx = await backend.unit_of_work.begin()
    repo = backend.entities.repository(tagged_entity, tx, ORG)
    await repo.add({"id": "t1", "org_id": "org-evil", "name": "x"})
    await tx.commit()

    check = await backend.unit_of_work.begin(readonly=True)
    try:
        mine = backend.entities.repository(tagged_entity, check, ORG)
        got = await mine.get("t1")
        listed = await mine.find()
        theirs = await backend.entities.repository(tagged_entity, check, "org-evil").get("t1")
    finally:
        await check.rollback()
    assert got is not None
    assert got.org_id == ORG
    assert [t.org_id for t in listed] == [ORG]
    assert theirs is None


async def test_the_default_in_memory_sqlite_engine_handles_concurrent_calls(
    app: GuaranteesApp,
) -> None:
    """`sqlite_engine()` (":memory:") with 20 concurrent calls: all succeed and are stored, or the
    engine is refused with a clear ConfigurationError — never a driver error."""
    from contractspec.core.sql import SqlBackend, sqlite_engine

    engine = sqlite_engine()
    try:
        try:
            backend = SqlBackend(engine, app.registry)
            await backend.create_all()
        except ConfigurationError:
            return  # refused up front, with a message saying what to use instead
        ex = make_executor(app, backend)
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                *(
                    run_call(ex, "ops.note.create", {"id": f"n{i}"}, call_ctx(f"r{i}"))
                    for i in range(20)
                )
            ),
            60,
        )
        for o in outcomes:
            assert o.ok or isinstance(o.error, ConfigurationError), summary(outcomes)
        ok = [o for o in outcomes if o.ok]
        stored = await read_stored(backend)
        assert sorted(stored.entity(note_entity)) == sorted(o.input["id"] for o in ok)
        assert sorted(r.request_id or "" for r in stored.audit) == sorted(o.request_id for o in ok)
        assert await chain_verifies(backend)
    finally:
        await engine.dispose()
