"""Denials are fast and recorded once, never blocked by the caller's own open transaction (also in
a batch, after earlier calls flushed their audit entries); anonymous callers are denied without
writing to the tenant's audit chain (memory, SQLite file, PostgreSQL; default engine settings)."""

from __future__ import annotations

import asyncio

import pytest
from core_guarantees_app import (
    DENIED_ACTION,
    ORG,
    GuaranteesApp,
    Outcome,
    audit_head_orgs,
    build_app,
    call_ctx,
    chain_verifies,
    make_executor,
    note_entity,
    read_stored,
    run_call,
)

from contractspec.core import Backend, MemoryBackend, PolicyDeniedError, SpecRegistry

#: A denial must be answered well within this many seconds (it used to take 10-16 s on SQLite).
FAST_S = 1.0
ANON_ORG = "org-anon"


@pytest.fixture
def app() -> GuaranteesApp:
    """The guarantees app (its registry also builds the `backend` fixture's tables)."""
    return build_app()


@pytest.fixture
def registry(app: GuaranteesApp) -> SpecRegistry:
    """Overrides conftest's registry so `backend` has this app's tables."""
    return app.registry


def _assert_fast_denial(outcome: Outcome) -> None:
    assert isinstance(outcome.error, PolicyDeniedError), outcome.describe()
    assert outcome.error.action == DENIED_ACTION, outcome.describe()
    assert outcome.elapsed_s < FAST_S, f"the denial took {outcome.elapsed_s:.2f} s"


async def test_a_denial_inside_a_handler_is_fast_and_recorded_once(
    app: GuaranteesApp, backend: Backend
) -> None:
    """`ctx.authorize()` denied inside a command handler raises PolicyDeniedError in under a
    second; one `denied` audit entry is stored and nothing the handler wrote."""
    ex = make_executor(app, backend)

    outcome = await run_call(ex, "ops.note.guarded", {"id": "n1"}, call_ctx("deny-1"))

    _assert_fast_denial(outcome)
    stored = await read_stored(backend)
    assert stored.outcomes_for("deny-1") == ["denied"]
    [record] = stored.audit_for("deny-1")
    assert record.details["permission"] == DENIED_ACTION
    assert stored.entity(note_entity) == {}
    assert stored.events == []
    assert await chain_verifies(backend)


async def test_a_denial_inside_a_batch_is_fast_and_keeps_the_batch(
    app: GuaranteesApp, backend: Backend
) -> None:
    """In a batch, after calls whose audit entries were flushed, a denial inside a handler is
    answered in under a second (no wait on the batch's own locks), recorded once, and the calls
    around it are stored."""
    ex = make_executor(app, backend)
    outcomes: list[Outcome] = []

    async def run_batch() -> None:
        async with ex.batch(commit_every=100):
            outcomes.append(
                await run_call(ex, "crm.contact.create", {"id": "c1", "name": "A"}, call_ctx("b0"))
            )
            outcomes.append(await run_call(ex, "ops.note.create", {"id": "n0"}, call_ctx("b1")))
            outcomes.append(
                await run_call(ex, "ops.note.guarded", {"id": "n1"}, call_ctx("b2"), limit_s=5)
            )
            outcomes.append(await run_call(ex, "ops.note.create", {"id": "n3"}, call_ctx("b3")))

    await asyncio.wait_for(run_batch(), 30)

    assert [o.code for o in outcomes] == ["ok", "ok", "policy_denied", "ok"], [
        o.describe() for o in outcomes
    ]
    _assert_fast_denial(outcomes[2])
    stored = await read_stored(backend)
    assert {rid: stored.outcomes_for(rid) for rid in ("b0", "b1", "b2", "b3")} == {
        "b0": ["success"],
        "b1": ["success"],
        "b2": ["denied"],
        "b3": ["success"],
    }
    assert sorted(stored.entity(note_entity)) == ["n0", "n3"]
    assert [e.request_id for e in stored.events] == ["b1", "b3"]
    assert await chain_verifies(backend)


@pytest.mark.parametrize("in_batch", [False, True], ids=["alone", "in_batch"])
async def test_a_handler_that_catches_a_denial_leaves_one_denied_and_one_success_entry(
    app: GuaranteesApp, backend: Backend, in_batch: bool
) -> None:
    """A handler that catches the PolicyDeniedError and returns normally: the call succeeds with
    its writes and events, and its request has exactly one `denied` and one `success` entry."""
    ex = make_executor(app, backend)
    outcomes: list[Outcome] = []

    async def calls() -> None:
        outcomes.append(await run_call(ex, "ops.note.create", {"id": "n0"}, call_ctx("c0")))
        outcomes.append(
            await run_call(
                ex, "ops.note.guarded", {"id": "n1", "catch": True}, call_ctx("c1"), limit_s=5
            )
        )

    async def run() -> None:
        if in_batch:
            async with ex.batch(commit_every=100):
                await calls()
        else:
            await calls()

    await asyncio.wait_for(run(), 30)

    assert [o.code for o in outcomes] == ["ok", "ok"], [o.describe() for o in outcomes]
    assert outcomes[1].elapsed_s < FAST_S, f"the call took {outcomes[1].elapsed_s:.2f} s"
    stored = await read_stored(backend)
    assert stored.outcomes_for("c1") == ["denied", "success"]
    assert stored.outcomes_for("c0") == ["success"]
    assert sorted(stored.entity(note_entity)) == ["n0", "n1"]
    assert stored.event_names_for("c1") == ["ops.note.created"]
    assert await chain_verifies(backend)


async def test_anonymous_callers_are_denied_without_an_audit_entry(
    app: GuaranteesApp, backend: Backend
) -> None:
    """Anonymous calls of a `requires(...)` operation naming an org are denied and write nothing
    to that org's audit chain (no entry, no chain head); the executor counts them instead."""
    ex = make_executor(app, backend)

    for i in range(2):
        outcome = await run_call(
            ex,
            "crm.contact.create",
            {"id": f"c{i}", "name": "Eve"},
            call_ctx(f"anon-{i}", actor=None, org_id=ANON_ORG),
        )
        assert isinstance(outcome.error, PolicyDeniedError), outcome.describe()

    stored = await read_stored(backend, ANON_ORG)
    assert stored.audit == []
    assert stored.entity(app.registry.get_entity("crm.contact")) == {}
    if not isinstance(backend, MemoryBackend):
        assert ANON_ORG not in await audit_head_orgs(backend)
    assert ex.unauthenticated_denials == 2
    assert (await read_stored(backend, ORG)).audit == []
