"""Group commit (`Executor.batch`) keeps every call atomic; arbitrary input only ever yields
ContractSpecErrors and leaves nothing half-written (Hypothesis, on every backend)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from core_app import FLUSHING_OPERATION, POLICY_GRANTS, deal_entity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConfigurationError,
    ContractSpecError,
    Executor,
    NotFoundError,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.testing import FakeClock, SequentialIds

CTX = CallContext(actor=Actor.user("u1", roles="sales"), org_id="org-1")


def make(registry: SpecRegistry, backend: Backend) -> Executor:
    return Executor(
        registry,
        backend=backend,
        policy=RolePermissions(POLICY_GRANTS),
        clock=FakeClock(),
        ids=SequentialIds(),
    )


async def state(ex: Executor) -> tuple[int, int, int]:
    """(deals, committed events, audit entries) as seen by a fresh transaction."""
    tx = await ex.unit_of_work.begin(readonly=True)
    try:
        deals = await ex.entities.repository(deal_entity, tx, "org-1").count()
    finally:
        await tx.rollback()
    backend = ex.backend
    if hasattr(backend, "engine"):
        from sqlalchemy import func, select

        from contractspec.core.sql import audit_table, outbox_table

        async with backend.engine.connect() as conn:
            events = (
                await conn.execute(select(func.count()).select_from(outbox_table))
            ).scalar_one()
            audits = (
                await conn.execute(select(func.count()).select_from(audit_table))
            ).scalar_one()
        return deals, int(events), int(audits)
    return deals, len(backend.events.events), len(backend.audit)  # type: ignore[attr-defined, arg-type]


async def test_a_failed_call_in_a_batch_rolls_back_only_itself(
    registry: SpecRegistry, backend: Backend
) -> None:
    """Writes, events and audit of a failing call vanish; the calls around it commit."""
    ex = make(registry, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)
    before = await state(ex)
    async with ex.batch(commit_every=2) as batch:
        first = await ex.execute(
            "crm.deal.create", {"contact_id": "c1", "title": "A", "amount": "1"}, CTX
        )
        with pytest.raises(NotFoundError):
            await ex.execute(
                "crm.deal.create", {"contact_id": "nobody", "title": "B", "amount": "1"}, CTX
            )
        # fails after writing and emitting: the move is undone, the deal stays in lead
        await ex.execute(
            "crm.deal.move", {"deal_id": first.model_dump()["id"], "to_stage": "won"}, CTX
        )
        with pytest.raises(SpecValidationError, match="is closed"):
            await ex.execute(
                "crm.deal.move", {"deal_id": first.model_dump()["id"], "to_stage": "lost"}, CTX
            )
        third = await ex.execute(
            "crm.deal.create", {"contact_id": "c1", "title": "C", "amount": "3"}, CTX
        )
    assert (batch.calls, batch.commits) == (3, 2)
    after = await state(ex)
    assert after == (before[0] + 2, before[1] + 3, before[2] + 3)
    listed = await ex.execute("crm.deal.search", {}, CTX)
    assert sorted(d["id"] for d in listed.model_dump()["deals"]) == sorted(
        [first.model_dump()["id"], third.model_dump()["id"]]
    )
    assert [
        d["stage"] for d in listed.model_dump()["deals"] if d["id"] == first.model_dump()["id"]
    ] == ["won"]


async def test_a_failure_after_a_mid_call_flush_is_rolled_back(
    registry: SpecRegistry, backend: Backend
) -> None:
    """A call that writes, reads (flushing its writes inside its savepoint) and then fails leaves
    nothing behind, while the call before it in the same group commits."""
    ex = make(registry, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)
    before = await state(ex)
    async with ex.batch(commit_every=100):
        await ex.execute(
            "crm.deal.create", {"contact_id": "c1", "title": "keep", "amount": "1"}, CTX
        )
        with pytest.raises(NotFoundError, match="no such deal"):
            await ex.execute(
                FLUSHING_OPERATION, {"contact_id": "c1", "title": "drop", "amount": "2"}, CTX
            )
    listed = await ex.execute("crm.deal.search", {}, CTX)
    assert [d["title"] for d in listed.model_dump()["deals"]] == ["keep"]
    assert await state(ex) == (before[0] + 1, before[1] + 1, before[2] + 1)


async def test_an_exception_escaping_the_batch_rolls_back_the_tail(
    registry: SpecRegistry, backend: Backend
) -> None:
    """Calls since the last group commit are rolled back when the block raises."""
    ex = make(registry, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)

    async def three_deals_then_crash() -> None:
        async with ex.batch(commit_every=2):
            for title in ("a", "b", "c"):
                await ex.execute(
                    "crm.deal.create", {"contact_id": "c1", "title": title, "amount": "1"}, CTX
                )
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        await three_deals_then_crash()
    listed = await ex.execute("crm.deal.search", {}, CTX)
    assert sorted(d["title"] for d in listed.model_dump()["deals"]) == ["a", "b"]


async def test_batches_validate_their_arguments(registry: SpecRegistry) -> None:
    """commit_every must be positive; batches do not nest."""
    ex = Executor(registry)
    with pytest.raises(ConfigurationError, match="commit_every must be a positive integer"):
        async with ex.batch(commit_every=0):
            pass
    with pytest.raises(ConfigurationError, match="cannot be nested"):
        async with ex.batch(), ex.batch():
            pass


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=300),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "contact_id": JSON | st.sampled_from(["c1", "", "x" * 65]),
        "title": JSON | st.text(min_size=150, max_size=260),
        "amount": JSON | st.sampled_from(["1.005", "-3", "1e30", "12345678901.00", "NaN", "7"]),
        "deal_id": JSON,
        "to_stage": JSON | st.sampled_from(["won", "lost", "nope"]),
        "id": JSON,
        "name": JSON,
        "email": JSON,
    },
)
OPERATIONS = [
    "crm.contact.create",
    "crm.deal.create",
    "crm.deal.move",
    "crm.deal.search",
    "crm.nope.nothing",
]


@pytest.fixture(params=["memory", "sqlite"])
async def fuzz_executor(
    request: pytest.FixtureRequest, registry: SpecRegistry, tmp_path: Path
) -> AsyncIterator[Executor]:
    """An executor with one contact, on memory or a SQLite file, shared by all examples."""
    from contractspec.core import MemoryBackend
    from contractspec.core.sql import SqlBackend, sqlite_engine

    engine = sqlite_engine(tmp_path / "fuzz.db") if request.param == "sqlite" else None
    backend: Backend = MemoryBackend() if engine is None else SqlBackend(engine, registry)
    if isinstance(backend, SqlBackend):
        await backend.create_all()
    ex = make(registry, backend)
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, CTX)
    try:
        yield ex
    finally:
        if engine is not None:
            await engine.dispose()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(op=st.sampled_from(OPERATIONS), raw=FIELDS | JSON)
async def test_arbitrary_input_yields_only_contractspec_errors(
    fuzz_executor: Executor, op: str, raw: Any
) -> None:
    """Random JSON-like input: either a result or a ContractSpecError, and failures write nothing."""
    before = await state(fuzz_executor)
    error: ContractSpecError | None = None
    try:
        await fuzz_executor.execute(op, raw, CTX)
    except ContractSpecError as exc:
        error = exc
    if error is not None:
        assert error.code in {"validation_error", "unknown_operation", "not_found", "conflict"}, (
            error
        )
        assert error.message
        assert await state(fuzz_executor) == before, f"{op} failed ({error.code}) but left writes"
