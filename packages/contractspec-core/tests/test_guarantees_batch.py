"""All or nothing per call inside group commit: a call of `Executor.batch()` whose insert hits a
unique constraint fails at that very call with `ConflictError`, and every other call of the batch is
stored with its events and its audit entry (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from attrs import define
from core_guarantees_app import (
    GuaranteesApp,
    Outcome,
    build_app,
    call_ctx,
    chain_verifies,
    make_executor,
    read_stored,
    run_call,
)

from contractspec.core import Backend, ContractSpecError, SpecRegistry
from contractspec.core.specs import EntitySpec


@pytest.fixture
def app() -> GuaranteesApp:
    """The guarantees app (its registry also builds the `backend` fixture's tables)."""
    return build_app()


@pytest.fixture
def registry(app: GuaranteesApp) -> SpecRegistry:
    """Overrides conftest's registry so `backend` has this app's tables."""
    return app.registry


@define(frozen=True)
class Step:
    """One call of a scenario and what it must report: `ok` or `conflict`."""

    operation: str
    data: dict[str, Any]
    expect: str


def contact(cid: str, email: str | None = None, expect: str = "ok") -> Step:
    return Step("crm.contact.create", {"id": cid, "name": f"name-{cid}", "email": email}, expect)


def deal(cid: str) -> Step:
    return Step("crm.deal.create", {"contact_id": cid, "title": f"deal-{cid}", "amount": "1"}, "ok")


#: scenario -> (commit_every, steps)
SCENARIOS: dict[str, tuple[int, list[Step]]] = {
    # the same primary key twice in one uncommitted group
    "duplicate_id": (
        100,
        [
            contact("c1"),
            deal("c1"),
            contact("c1", expect="conflict"),
            contact("c2"),
            deal("c2"),
        ],
    ),
    # a unique index (email) collides in one group; the next call does not read the database
    "duplicate_email": (
        100,
        [
            contact("c1", "a@x.io"),
            contact("c2", "a@x.io", expect="conflict"),
            contact("c3", "b@x.io"),
            deal("c3"),
        ],
    ),
    # several commits: the duplicates collide with rows committed by an earlier group
    "several_commits": (
        2,
        [
            contact("c1", "a@x.io"),
            contact("c2", "b@x.io"),
            deal("c1"),
            contact("c1", "z@x.io", expect="conflict"),
            contact("c3", "a@x.io", expect="conflict"),
            contact("c4", "c@x.io"),
            deal("c4"),
            contact("c5", "d@x.io"),
        ],
    ),
    # the conflicting call is the one that would fill the group and trigger its commit
    "conflict_last_before_commit": (
        3,
        [
            contact("c1", "a@x.io"),
            deal("c1"),
            contact("c2", "a@x.io", expect="conflict"),
            contact("c3", "b@x.io"),
            deal("c3"),
            contact("c4", "c@x.io"),
        ],
    ),
    # the conflicting call is the last call of the batch: the commit at exit must not lose the rest
    "conflict_at_batch_end": (
        100,
        [
            contact("c1", "a@x.io"),
            deal("c1"),
            contact("c2", "a@x.io", expect="conflict"),
        ],
    ),
}

EVENTS = {"crm.contact.create": [], "crm.deal.create": ["crm.deal.created"]}


def _entity(app: GuaranteesApp, name: str) -> EntitySpec[Any]:
    return app.registry.get_entity(name)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_a_unique_conflict_in_a_batch_fails_at_that_call_and_keeps_its_neighbours(
    app: GuaranteesApp, backend: Backend, scenario: str
) -> None:
    """The conflicting call raises ConflictError itself; every other call is stored with exactly
    its events and one success audit entry; the chain verifies; only ContractSpecErrors escape."""
    commit_every, steps = SCENARIOS[scenario]
    ex = make_executor(app, backend)
    outcomes: list[Outcome] = []

    async def run_batch() -> None:
        async with ex.batch(commit_every=commit_every):
            for i, step in enumerate(steps):
                outcomes.append(
                    await run_call(ex, step.operation, step.data, call_ctx(f"{scenario}-{i}"))
                )

    exit_error: BaseException | None = None
    try:
        await asyncio.wait_for(run_batch(), 60)
    except Exception as exc:  # judged below: the batch must end cleanly
        exit_error = exc

    reported = [o.code for o in outcomes]
    expected = [s.expect for s in steps]
    assert reported == expected, f"expected {expected}, reported {reported}:\n" + "\n".join(
        o.describe() for o in outcomes
    )
    for o in outcomes:
        assert o.error is None or isinstance(o.error, ContractSpecError), o.describe()
    assert exit_error is None, f"leaving the batch raised {exit_error!r}"

    stored = await read_stored(backend)
    ok = [o for o in outcomes if o.ok]
    failed = [o for o in outcomes if not o.ok]
    for o in ok:
        assert stored.outcomes_for(o.request_id) == ["success"], o.describe()
        assert stored.event_names_for(o.request_id) == EVENTS[o.operation], o.describe()
    for o in failed:
        assert stored.audit_for(o.request_id) == [], o.describe()
        assert stored.events_for(o.request_id) == [], o.describe()

    contacts = stored.entity(_entity(app, "crm.contact"))
    expected_contacts = {
        o.input["id"]: o.input["email"] for o in ok if o.operation == "crm.contact.create"
    }
    assert {cid: row["email"] for cid, row in contacts.items()} == expected_contacts
    deals = stored.entity(_entity(app, "crm.deal"))
    assert sorted(deals) == sorted(
        o.output["id"] for o in ok if o.operation == "crm.deal.create" and o.output
    )
    assert len(stored.audit) == len(ok)
    assert len(stored.events) == sum(len(EVENTS[o.operation]) for o in ok)
    assert await chain_verifies(backend)
