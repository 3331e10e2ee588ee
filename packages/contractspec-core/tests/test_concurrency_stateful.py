"""Hypothesis drives group commits full of conflicting calls — duplicate ids and emails, deals for
unknown contacts, moves of closed deals, denials before and inside handlers — keeping a model of
what must be stored; after every batch the store must equal the model (entities, events and audit
entries per request id) and the audit chain must verify (memory, SQLite file, PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from attrs import define, field
from core_guarantees_app import (
    CLOSED,
    VIEWER,
    Outcome,
    build_app,
    call_ctx,
    chain_verifies,
    make_executor,
    note_entity,
    open_backend,
    read_stored,
    run_call,
)
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from contractspec.core import (
    ConflictError,
    NotFoundError,
    PolicyDeniedError,
    SpecValidationError,
)

CONTACT_IDS = ["c1", "c2", "c3"]
EMAILS = [None, "a@x.io", "b@x.io"]
#: A call that hangs (PostgreSQL used to wait on its own audit-head lock) fails after this long.
CALL_LIMIT_S = 5.0

STEP = st.one_of(
    st.tuples(st.just("contact"), st.sampled_from(CONTACT_IDS), st.sampled_from(EMAILS)),
    st.tuples(st.just("deal"), st.sampled_from([*CONTACT_IDS, "ghost"])),
    st.tuples(st.just("move"), st.integers(0, 5), st.sampled_from(["qualified", "won", "lost"])),
    st.tuples(st.just("viewer")),
    st.tuples(st.just("guarded"), st.booleans()),
)

# Shrinking is off: a failing run can take seconds per call (a lock wait until CALL_LIMIT_S), and
# the unshrunk steps of a short machine are readable as they are.
SETTINGS = settings(
    max_examples=15,
    stateful_step_count=5,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)


@define
class Model:
    """What the store must hold."""

    contacts: dict[str, str | None] = field(factory=dict)
    deals: dict[str, str] = field(factory=dict)
    notes: set[str] = field(factory=set)
    audit: Counter[tuple[str, str]] = field(factory=Counter)
    events: Counter[tuple[str, str]] = field(factory=Counter)


def _matches(expected: str, o: Outcome) -> bool:
    error = o.error
    if expected == "ok":
        return error is None
    if expected == "conflict":
        return isinstance(error, ConflictError)
    if expected == "not_found":
        return isinstance(error, NotFoundError)
    if expected == "closed":
        return isinstance(error, SpecValidationError) and "closed" in error.message
    return isinstance(error, PolicyDeniedError)


class GroupCommitMachine(RuleBasedStateMachine):
    """Runs batches (and single calls) against one backend and a model of it."""

    def __init__(self, kind: str, directory: Path) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.stack = AsyncExitStack()
        self.app = build_app()
        try:
            self.backend = self.runner.run(
                self.stack.enter_async_context(open_backend(kind, self.app.registry, directory))
            )
        except BaseException:
            self.runner.close()
            raise
        self.ex = make_executor(self.app, self.backend)
        self.model = Model()
        self.ids = itertools.count()

    def teardown(self) -> None:
        try:
            self.runner.run(self.stack.aclose())
        finally:
            self.runner.close()

    # -- one call --------------------------------------------------------------------------------

    def _call(self, step: tuple[Any, ...], rid: str) -> tuple[str, dict[str, Any], Any, str]:
        """`(operation, input, context, expected outcome)` of a step against the model."""
        m = self.model
        kind = step[0]
        if kind == "contact":
            _, cid, email = step
            taken = cid in m.contacts or (email is not None and email in m.contacts.values())
            data = {"id": cid, "name": rid, "email": email}
            return "crm.contact.create", data, call_ctx(rid), "conflict" if taken else "ok"
        if kind == "deal":
            data = {"contact_id": step[1], "title": rid, "amount": "1"}
            expected = "ok" if step[1] in m.contacts else "not_found"
            return "crm.deal.create", data, call_ctx(rid), expected
        if kind == "move":
            deals = list(m.deals)
            deal_id = deals[step[1] % len(deals)] if deals else "missing"
            data = {"deal_id": deal_id, "to_stage": step[2]}
            expected = (
                "not_found" if not deals else "closed" if m.deals[deal_id] in CLOSED else "ok"
            )
            return "crm.deal.move", data, call_ctx(rid), expected
        if kind == "viewer":
            data = {"contact_id": "c1", "title": rid, "amount": "1"}
            return "crm.deal.create", data, call_ctx(rid, actor=VIEWER), "denied"
        catch = step[1]
        data = {"id": f"n-{rid}", "catch": catch}
        return "ops.note.guarded", data, call_ctx(rid), "ok" if catch else "denied"

    def _apply(self, step: tuple[Any, ...], o: Outcome, expected: str) -> None:
        """Record in the model what the (expected) outcome must have stored."""
        m, rid = self.model, o.request_id
        if expected == "denied" or step[0] == "guarded":
            m.audit[(rid, "denied")] += 1
        if expected != "ok":
            return
        m.audit[(rid, "success")] += 1
        if step[0] == "contact":
            m.contacts[step[1]] = step[2]
        elif step[0] == "deal":
            assert o.output is not None
            m.deals[o.output["id"]] = "lead"
            m.events[(rid, "crm.deal.created")] += 1
        elif step[0] == "move":
            m.deals[o.input["deal_id"]] = step[2]
            m.events[(rid, "crm.deal.moved")] += 1
        elif step[0] == "guarded":
            m.notes.add(o.input["id"])
            m.events[(rid, "ops.note.created")] += 1

    async def _steps(self, steps: list[tuple[Any, ...]], mismatches: list[str]) -> None:
        for step in steps:
            rid = f"r{next(self.ids)}"
            operation, data, ctx, expected = self._call(step, rid)
            o = await run_call(self.ex, operation, data, ctx, limit_s=CALL_LIMIT_S)
            if not _matches(expected, o):
                mismatches.append(f"expected {expected}: {o.describe()}")
            self._apply(step, o, expected)

    # -- rules -------------------------------------------------------------------------------------

    @rule(steps=st.lists(STEP, min_size=1, max_size=6), commit_every=st.integers(1, 4))
    def run_a_batch(self, steps: list[tuple[Any, ...]], commit_every: int) -> None:
        """A batch of steps with group commits every `commit_every` successful calls."""

        async def go() -> list[str]:
            mismatches: list[str] = []
            async with self.ex.batch(commit_every=commit_every):
                await self._steps(steps, mismatches)
            return mismatches

        self._check(self.runner.run(asyncio.wait_for(go(), 60)))

    @rule(step=STEP)
    def run_one_call(self, step: tuple[Any, ...]) -> None:
        """One step on its own transaction."""

        async def go() -> list[str]:
            mismatches: list[str] = []
            await self._steps([step], mismatches)
            return mismatches

        self._check(self.runner.run(asyncio.wait_for(go(), 60)))

    def _check(self, mismatches: list[str]) -> None:
        assert not mismatches, "\n".join(mismatches)
        self.runner.run(self._compare())

    async def _compare(self) -> None:
        m = self.model
        stored = await read_stored(self.backend)
        contacts = stored.entity(self.app.registry.get_entity("crm.contact"))
        assert {cid: row["email"] for cid, row in contacts.items()} == m.contacts
        deals = stored.entity(self.app.registry.get_entity("crm.deal"))
        assert {did: row["stage"] for did, row in deals.items()} == m.deals
        assert set(stored.entity(note_entity)) == m.notes
        assert Counter((r.request_id or "", r.outcome) for r in stored.audit) == m.audit
        assert Counter((e.request_id or "", e.name) for e in stored.events) == m.events
        assert await chain_verifies(self.backend)


def test_batches_of_conflicting_calls_store_exactly_what_the_model_says(
    backend_kind: str, tmp_path: Path
) -> None:
    """Random batches and single calls with conflicts and denials: each call reports what the
    model predicts, and after each one the store equals the model and the chain verifies."""
    run_state_machine_as_test(lambda: GroupCommitMachine(backend_kind, tmp_path), settings=SETTINGS)
