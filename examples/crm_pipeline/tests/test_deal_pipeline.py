"""The deal stages are the `crm.deal.pipeline` workflow on the deals themselves (memory, a SQLite
file, PostgreSQL): `crm.deal.move` keeps its contract, a move is one update of the deal, the
workflow's history comes from the audit trail, and of concurrent moves of one deal one wins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from crm_pipeline.spec import policy, registry

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConflictError,
    Executor,
    MemoryBackend,
    NotFoundError,
    SpecValidationError,
)
from contractspec.core.testing import postgres_dsn, temporary_sql_engine

SALES = CallContext(actor=Actor.user("rep-1", roles="sales"), org_id="acme")
OTHER = CallContext(actor=Actor.user("rep-2", roles="sales"), org_id="acme")


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def executor(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Executor]:
    kind = request.param
    if kind == "memory":
        yield Executor(registry, backend=MemoryBackend(), policy=policy())
        return
    if kind == "postgres" and not postgres_dsn():
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(kind, tmp_path) as engine:
        backend: Backend = SqlBackend(engine, registry)
        await backend.create_all()  # type: ignore[attr-defined]
        yield Executor(registry, backend=backend, policy=policy())


async def _deal(ex: Executor, deal_id: str = "d1") -> None:
    await ex.execute("crm.contact.create", {"id": "c1", "name": "Ada"}, SALES)
    await ex.execute(
        "crm.deal.create", {"id": deal_id, "contact_id": "c1", "title": "T", "amount": "5"}, SALES
    )


def test_the_pipeline_keeps_no_rows_of_its_own() -> None:
    """The workflow is on `crm.deal` (`stage`): no workflow instance or step tables."""
    entities = {e.name for e in registry.entities()}
    assert not {n for n in entities if n.startswith("cs.workflow.")}
    [wf] = registry.to_ir()["specs"]["workflow"]
    assert (wf["entity"], wf["state_field"], wf["history"]) == ("crm.deal", "stage", "audit")


async def test_move_keeps_its_contract_and_the_history_comes_from_the_audit(
    executor: Executor,
) -> None:
    """Moves change the stage (won sets closed_on), closed and same-stage moves are refused as
    before, an unknown deal is not found; the pipeline's history lists creation and moves."""
    ex = executor
    await _deal(ex)
    await ex.execute("crm.deal.move", {"deal_id": "d1", "to_stage": "qualified"}, SALES)
    with pytest.raises(SpecValidationError, match="is already in qualified"):
        await ex.execute("crm.deal.move", {"deal_id": "d1", "to_stage": "qualified"}, SALES)
    avail = await ex.execute("crm.deal.pipeline.available", {"instance_id": "d1"}, SALES)
    assert [t["name"] for t in avail.model_dump()["transitions"]] == [
        "reopen", "propose", "negotiate", "win", "lose"
    ]  # fmt: skip
    won = await ex.execute(
        "crm.deal.move", {"deal_id": "d1", "to_stage": "won", "on": "2026-02-03"}, OTHER
    )
    assert (won.model_dump()["stage"], str(won.model_dump()["closed_on"])) == ("won", "2026-02-03")
    with pytest.raises(SpecValidationError, match="closed deals cannot move"):
        await ex.execute("crm.deal.move", {"deal_id": "d1", "to_stage": "lead"}, SALES)
    with pytest.raises(NotFoundError, match=r"crm\.deal 'nope' not found"):
        await ex.execute("crm.deal.move", {"deal_id": "nope", "to_stage": "won"}, SALES)
    page = await ex.execute("crm.deal.pipeline.history", {"instance_id": "d1"}, SALES)
    steps = [
        (s["kind"], s["transition"], s["from_state"], s["to_state"], s["actor_id"])
        for s in page.model_dump()["items"]
    ]
    assert steps == [
        ("start", None, None, "lead", "rep-1"),
        ("transition", "qualify", "lead", "qualified", "rep-1"),
        ("transition", "win", "qualified", "won", "rep-2"),
    ]


async def test_concurrent_moves_of_one_deal_have_one_winner(executor: Executor) -> None:
    """Ten moves closing one lead (won or lost) race: exactly one succeeds; the others are
    refused (a version conflict, or the closed-deal check once the winner is stored), and the
    history holds that one move."""
    ex = executor
    await _deal(ex)
    stages = ["won", "lost"] * 5

    async def one(stage: str) -> Any:
        try:
            return await ex.execute("crm.deal.move", {"deal_id": "d1", "to_stage": stage}, SALES)
        except (ConflictError, SpecValidationError) as exc:
            return exc

    results = await asyncio.wait_for(asyncio.gather(*(one(s) for s in stages)), 120)
    wins = [r for r in results if not isinstance(r, Exception)]
    assert len(wins) == 1, results
    page = await ex.execute("crm.deal.pipeline.history", {"instance_id": "d1"}, SALES)
    moves = [s for s in page.model_dump()["items"] if s["kind"] == "transition"]
    assert [m["to_state"] for m in moves] == [wins[0].model_dump()["stage"]]
