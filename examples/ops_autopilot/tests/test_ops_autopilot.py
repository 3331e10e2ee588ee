"""The ops autopilot end to end, offline, on the real CDNOW customers (a 300-customer slice):
churn risk → retention task → bandit offer through the gateway → approval → events → rewards."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ops_autopilot.__main__ import run
from ops_autopilot.autopilot import Autopilot, approve_when_cheap, open_on_sqlite
from ops_autopilot.data import AS_OF, CustomerFacts, data_file, load_customers
from ops_autopilot.spec import MARGIN_FLOOR, OFFERS, REWARD
from rich.console import Console

from contractspec.agent import ApprovalStatus
from contractspec.agent.testing import block_model_requests
from contractspec.core import Actor
from contractspec.core.sql import sqlite_engine
from contractspec.core.testing import FakeClock, SequentialIds
from contractspec.growth import MemoryDecisionLog
from contractspec.growth.decisions import MemoryOutcomeStore, Outcome

block_model_requests()

DATA = data_file()
pytestmark = pytest.mark.skipif(not DATA.is_file(), reason=f"CDNOW data not found at {DATA}")
LEAD = Actor.user("lead-1", roles=["retention-lead"])


@pytest.fixture(scope="module")
def customers() -> list[CustomerFacts]:
    """The first 300 CDNOW customers, scored by the churn model."""
    return load_customers(DATA, customers=300)


@pytest.fixture(params=["memory", "sqlite"])
async def pilot(
    request: pytest.FixtureRequest, customers: list[CustomerFacts], tmp_path: Path
) -> AsyncIterator[tuple[Autopilot, FakeClock]]:
    """An autopilot with its decisions and outcomes in memory or in a SQLite file."""
    clock = FakeClock(AS_OF.replace(tzinfo=dt.UTC))
    if request.param == "memory":
        yield Autopilot(customers, log=MemoryDecisionLog(), outcomes=MemoryOutcomeStore(),
                        clock=clock, budget=300.0, ids=SequentialIds("run")), clock  # fmt: skip
        return
    engine = sqlite_engine(tmp_path / "autopilot.db")
    try:
        yield await open_on_sqlite(customers, engine, clock=clock, budget=300.0,
                                   ids=SequentialIds("run")), clock  # fmt: skip
    finally:
        await engine.dispose()


def test_churn_risk_comes_from_the_growth_model_on_cdnow(customers: list[CustomerFacts]) -> None:
    """The slice has 300 customers, riskiest first; a recent frequent buyer scores low and a
    customer silent for 9 months scores high."""
    assert len(customers) == 300
    risks = [c.churn_risk for c in customers]
    assert risks == sorted(risks, reverse=True)
    by_id = {c.customer_id: c for c in customers}
    assert (by_id["00095"].band, by_id["00095"].orders) == ("low", 9)
    assert by_id["00001"].band == "high"
    assert by_id["00001"].churn_risk > by_id["00095"].churn_risk


async def test_the_retention_loop_runs_end_to_end(pilot: tuple[Autopilot, FakeClock]) -> None:
    """Every at-risk active customer gets one task and one logged decision; offers stay within
    budget and margin; 25 % offers wait for the lead (rejections become labels, so do gateway
    blocks); business events settle as the reward model says; the policy learns."""
    p, clock = pilot
    tasks = await p.scan()
    expected = {c.customer_id for c in p.customers.values()
                if c.churn_risk >= 0.5 and c.orders > 0}  # fmt: skip
    assert {t.customer_id for t in tasks} == expected
    decisions = await p.service.decisions()
    assert len(decisions) == len(tasks)
    assert {t.decision_id for t in tasks} == {d.decision_id for d in decisions}
    for d in decisions:
        assert d.propensity == d.probabilities[d.arm]
        assert d.context is not None
        assert len(d.context) == 4
    waiting = [t for t in tasks if t.outcome == "waiting_approval"]
    assert waiting
    assert all(t.arm == "pct25" for t in waiting)
    assert all(t.arm != "pct25" for t in tasks if t.outcome == "sent")
    await p.review(approve_when_cheap(p), LEAD)
    final = list(p.tasks.values())
    for t in final:
        if t.arm == "pct25" and t.outcome == "sent":
            assert t.approval_id is not None
            req = await p.runner.approvals.get(t.approval_id)
            assert req.status is ApprovalStatus.APPROVED
    assert p.budget.spent <= p.budget.cap
    assert p.budget.spent == pytest.approx(sum(s.cost for s in p.sent.values()))
    for s in p.sent.values():
        avg = p.customers[s.customer_id].avg_order
        assert OFFERS[s.arm].projected_margin(avg) >= MARGIN_FLOOR
    labels = {x.decision_id: x for x in await p.loop.outcomes.labels()}
    overridden = [t for t in final if t.outcome in ("rejected", "blocked")]
    assert overridden
    assert {t.decision_id for t in overridden} == set(labels)
    for t in overridden:
        expected_actor = "lead-1" if t.outcome == "rejected" else "gateway"
        assert labels[str(t.decision_id)].actor == expected_actor

    delivered = await p.observe()
    assert delivered > 0
    before = p.service.policy.predict([1.0, 0.8, 1.0, 0.3])  # type: ignore[attr-defined]
    assert await p.settle() == []  # the 30-day horizon has not passed
    clock.advance(dt.timedelta(days=31))
    settled = {d.decision_id: d.reward for d in await p.settle()}
    assert set(settled) == set(p.sent)
    for offer in p.sent.values():
        decided = await p.service.log.get(offer.decision_id)
        events = p.world.outcomes(p.customers[offer.customer_id], offer, decided.decided_at)
        expected_reward = REWARD.reward(
            Outcome(e.id, offer.decision_id, e.name, REWARD.term(e.name).value(e.payload_json()),  # type: ignore[union-attr]
                    False, e.occurred_at)
            for e in events
        )  # fmt: skip
        assert settled[offer.decision_id] == pytest.approx(expected_reward)
    assert p.service.policy.predict([1.0, 0.8, 1.0, 0.3]) != before  # type: ignore[attr-defined]
    for t in overridden:
        assert (await p.service.log.get(str(t.decision_id))).reward is None
    evaluation = await p.evaluate("pct10")
    assert evaluation.n == len(settled)


async def test_an_offer_approved_after_the_budget_ran_out_is_not_sent(
    customers: list[CustomerFacts],
) -> None:
    """With a $40 budget the lead approves every 25 % offer, but the gateway re-checks the budget
    when an approved call executes: offers that no longer fit are blocked, never sent, and
    labelled as the gateway's override; the budget is never exceeded."""
    clock = FakeClock(AS_OF.replace(tzinfo=dt.UTC))
    p = Autopilot(customers, log=MemoryDecisionLog(), outcomes=MemoryOutcomeStore(),
                  clock=clock, budget=40.0, ids=SequentialIds("run"))  # fmt: skip
    await p.scan()
    waiting = [t for t in p.tasks.values() if t.outcome == "waiting_approval"]
    assert waiting
    await p.review(lambda request: True, LEAD)
    assert p.budget.spent <= 40.0
    assert p.budget.spent == pytest.approx(sum(s.cost for s in p.sent.values()))
    late = [p.tasks[t.task_id] for t in waiting if p.tasks[t.task_id].outcome == "blocked"]
    assert late
    labels = {x.decision_id: x for x in await p.loop.outcomes.labels()}
    for t in late:
        assert t.approval_id is not None
        request = await p.runner.approvals.get(t.approval_id)
        assert request.status is ApprovalStatus.APPROVED
        assert t.decision_id not in p.sent
        assert labels[str(t.decision_id)].actor == "gateway"
        assert "budget_cap" in labels[str(t.decision_id)].reason


async def test_runs_are_repeatable_with_sequential_ids(customers: list[CustomerFacts]) -> None:
    """Two autopilots with the same seed and id generator choose the same offers."""
    arms = []
    for _ in range(2):
        p = Autopilot(customers, log=MemoryDecisionLog(), outcomes=MemoryOutcomeStore(),
                      clock=FakeClock(AS_OF.replace(tzinfo=dt.UTC)), ids=SequentialIds("run"))  # fmt: skip
        arms.append([t.arm for t in await p.scan()])
    assert arms[0] == arms[1]


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_the_demo_runs_its_waves_and_prints_the_estimates(store: str, tmp_path: Path) -> None:
    """`python -m ops_autopilot` on 300 customers in two waves prints both tables."""
    out = io.StringIO()
    pilot = await run(
        customers=300, waves=2, per_wave=30, budget=500.0,
        sqlite=tmp_path / "demo.db" if store == "sqlite" else None,
        console=Console(file=out, width=140), shadow_from=2,
    )  # fmt: skip
    text = out.getvalue()
    assert "retention waves" in text
    assert "off-policy value per decision" in text
    assert "shadow mode from wave 2" in text
    assert len(pilot.tasks) == 60
    shadows = await pilot.service.log.decisions("retention.offer.candidate")
    assert len(shadows) == 30
    assert all(d.decision_id.startswith("shadow:") and d.reward is None for d in shadows)
    assert {d.policy for d in await pilot.service.log.decisions(rewarded=True)} == {
        "retention.offer"
    }


async def test_pending_offers_survive_a_restart_on_sqlite(
    customers: list[CustomerFacts], tmp_path: Path
) -> None:
    """Runs waiting for approval, their decisions and the ledger are in the SQLite file: a new
    autopilot process (new engine, new runner) finds the pending 25 % offers, and after the lead
    approves them the resumed runs send each offer once, with no second decision logged."""
    path = tmp_path / "autopilot.db"
    clock = FakeClock(AS_OF.replace(tzinfo=dt.UTC))
    first_engine = sqlite_engine(path)
    try:
        first = await open_on_sqlite(customers, first_engine, clock=clock,
                                     budget=10_000.0, ids=SequentialIds("run"))  # fmt: skip
        await first.scan(limit=20)
        waiting = {t.run_id for t in first.tasks.values() if t.outcome == "waiting_approval"}
        assert waiting
        logged = len(await first.service.decisions())
    finally:
        await first_engine.dispose()

    engine = sqlite_engine(path)
    try:
        second = await open_on_sqlite(customers, engine, clock=clock, budget=10_000.0,
                                      ids=SequentialIds("restarted"))  # fmt: skip
        pending = await second.runner.approvals.pending(org_id="cdnow")
        assert {str(r.subject_id) for r in pending} == waiting
        for request in pending:
            await second.runner.approvals.approve(request.id, LEAD)
            result = await second.runner.resume(str(request.subject_id), deps=second)
            assert result.status.value == "completed"
        assert sorted(s.arm for s in second.sent.values()) == ["pct25"] * len(waiting)
        assert len(await second.service.decisions()) == logged
        for request in pending:  # resuming again executes nothing twice
            await second.runner.resume(str(request.subject_id), deps=second)
        assert len(second.sent) == len(waiting)
    finally:
        await engine.dispose()
