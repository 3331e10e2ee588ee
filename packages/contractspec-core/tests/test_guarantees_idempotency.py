"""Once per idempotency key: concurrent calls with one key run the handler once; the others get
the same output or `IdempotencyInProgressError`, never a second effect; later repeats replay and are
audited as `replayed` (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio

import pytest
from core_guarantees_app import (
    GuaranteesApp,
    build_app,
    call_ctx,
    chain_verifies,
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
    IdempotencyConflictError,
    SpecRegistry,
)
from contractspec.core.specs import EntitySpec

DEAL = {"contact_id": "c1", "title": "Big deal", "amount": "10"}


@pytest.fixture
def app() -> GuaranteesApp:
    """The guarantees app (its registry also builds the `backend` fixture's tables)."""
    return build_app()


@pytest.fixture
def registry(app: GuaranteesApp) -> SpecRegistry:
    """Overrides conftest's registry so `backend` has this app's tables."""
    return app.registry


def _deals(app: GuaranteesApp) -> EntitySpec[object]:
    return app.registry.get_entity("crm.deal")


def test_idempotency_in_progress_error_is_a_public_409_conflict() -> None:
    """`IdempotencyInProgressError` is exported, is a ConflictError with code
    idempotency_in_progress, and adapters answer it with 409."""
    error_type = core.IdempotencyInProgressError
    assert issubclass(error_type, ConflictError)
    assert error_type.code == "idempotency_in_progress"
    assert HTTP_STATUS[error_type.code] == 409
    assert "IdempotencyInProgressError" in core.__all__


@pytest.mark.parametrize("callers", [5, 20])
async def test_concurrent_calls_with_one_key_run_the_handler_once(
    app: GuaranteesApp, backend: Backend, callers: int
) -> None:
    """Concurrent calls with one key: the handler runs once, one deal and one event are stored,
    every caller gets that deal or IdempotencyInProgressError."""
    ex = make_executor(app, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, call_ctx("seed"))

    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(
                run_call(ex, "crm.deal.create", DEAL, call_ctx(f"r{i}", idempotency_key="k1"))
                for i in range(callers)
            )
        ),
        90,
    )

    runs = app.runs[("crm.deal.create", "k1")]
    assert runs == 1, f"the handler ran {runs} times for one key: {summary(outcomes)}"
    ok = [o for o in outcomes if o.ok]
    assert ok, summary(outcomes)
    for o in outcomes:
        if not o.ok:
            assert isinstance(o.error, ConflictError), o.describe()
            assert o.code == "idempotency_in_progress", o.describe()
    deal_ids = {o.output["id"] for o in ok if o.output}
    assert len(deal_ids) == 1, summary(outcomes)
    stored = await read_stored(backend)
    assert sorted(stored.entity(_deals(app))) == sorted(deal_ids)
    assert [e.name for e in stored.events] == ["crm.deal.created"]
    successes = [r for r in stored.audit if r.action == "crm.deal.create"]
    assert [r.outcome for r in successes if r.outcome == "success"] == ["success"]
    ran = [o for o in ok if stored.event_names_for(o.request_id) == ["crm.deal.created"]]
    assert len(ran) == 1, summary(outcomes)
    for o in outcomes:
        expected = [] if not o.ok else ["success"] if o is ran[0] else ["replayed"]
        assert stored.outcomes_for(o.request_id) == expected, o.describe()
    assert await chain_verifies(backend)


async def test_a_repeat_after_completion_replays_and_is_audited_as_replayed(
    app: GuaranteesApp, backend: Backend
) -> None:
    """A repeat with the same key and input returns the stored output without running the handler
    and writes one `replayed` audit entry; another input with that key is an IdempotencyConflictError."""
    ex = make_executor(app, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, call_ctx("seed"))
    first = await ex.execute("crm.deal.create", DEAL, call_ctx("r1", idempotency_key="k1"))

    again = await ex.execute("crm.deal.create", DEAL, call_ctx("r2", idempotency_key="k1"))
    assert again.model_dump(mode="json") == first.model_dump(mode="json")
    with pytest.raises(IdempotencyConflictError):
        await ex.execute(
            "crm.deal.create", {**DEAL, "amount": "11"}, call_ctx("r3", idempotency_key="k1")
        )

    assert app.runs[("crm.deal.create", "k1")] == 1
    stored = await read_stored(backend)
    assert list(stored.entity(_deals(app))) == [first.model_dump()["id"]]
    assert stored.outcomes_for("r1") == ["success"]
    assert stored.outcomes_for("r2") == ["replayed"]
    assert stored.events_for("r2") == []
    assert stored.audit_for("r3") == []
    assert await chain_verifies(backend)
