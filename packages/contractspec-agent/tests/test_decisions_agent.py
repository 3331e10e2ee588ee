"""Agent decision points: an agent asks a growth bandit which offer to make, the decision is
logged with its propensity once, the offer goes through the gateway (invariants, L2 approval),
overrides become labels and outcomes arrive as rewards over the bus. Memory, SQLite, PostgreSQL."""

from __future__ import annotations

import ast
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from contractspec.agent import (
    AgentRunner,
    ModelRequest,
    RiskLevel,
    RiskRule,
    RunStatus,
    ToolMessage,
    budget_cap,
    define_agent,
    margin_floor,
    tool,
)
from contractspec.agent.decisions import DecisionPoint, DecisionPort, LabelPort
from contractspec.agent.testing import FunctionModel, Reply, call
from contractspec.bus import EventBus
from contractspec.core import Actor, CallContext
from contractspec.core.errors import NotFoundError, SpecDefinitionError, SpecValidationError
from contractspec.core.policy import RolePermissions
from contractspec.core.records import EventEnvelope
from contractspec.core.testing import FakeClock, temporary_sql_engine
from contractspec.growth import BanditService, LinearIGW, MemoryDecisionLog, SqlDecisionLog
from contractspec.growth.decisions import (
    DecisionLoop,
    MemoryOutcomeStore,
    OutcomeStatus,
    RewardTerm,
    define_reward_model,
)
from contractspec.growth.decisions_sql import SqlOutcomeStore

T0 = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
ARMS = {"none": "no offer", "pct10": "10 % off the next order", "pct30": "30 % off"}
DISCOUNT = {"none": 0.0, "pct10": 0.10, "pct30": 0.30}
REWARD = define_reward_model(
    "retention.offer.reward",
    terms=[
        RewardTerm("shop.order.paid", amount="margin"),
        RewardTerm("support.complaint.filed", weight=-20.0, guardrail=True),
    ],
    horizon=dt.timedelta(days=14),
)
CTX = CallContext(actor=Actor.system("autopilot"), org_id="shop", channel="agent")
ANN = Actor.user("ann", roles=["approver"])
POLICY = RolePermissions({"approver": ["approval.*"], "system": ["*"]})


class Customer(BaseModel):
    """What the agent knows about the customer."""

    customer_id: str
    churn_risk: float = Field(ge=0, le=1)
    orders: int = Field(ge=0)


class Payload(BaseModel):
    decision_id: str
    margin: float | None = None


@pytest.fixture
async def loop(backend_kind: str, tmp_path: Path) -> AsyncIterator[DecisionLoop]:
    """A decision loop over a LinearIGW policy with its log and outcomes on each backend."""
    clock = FakeClock(T0)
    policy = LinearIGW("offers", list(ARMS), n_features=3, seed=4)
    if backend_kind == "memory":
        service = BanditService(policy, log=MemoryDecisionLog(), clock=clock)
        yield DecisionLoop(service, REWARD, outcomes=MemoryOutcomeStore(), clock=clock)
        return
    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        log = SqlDecisionLog(engine)
        outcomes = SqlOutcomeStore(engine, metadata=log.metadata)
        await log.create_all()
        await outcomes.create_all()
        service = BanditService(policy, log=log, clock=clock)
        yield DecisionLoop(service, REWARD, outcomes=outcomes, clock=clock)


def _point(port: DecisionPort, labels: LabelPort | None = None) -> DecisionPoint:
    return DecisionPoint(
        "choose_offer",
        port=port,
        input=Customer,
        features=lambda c: [1.0, c.churn_risk, c.orders / 10],
        arms=ARMS,
        labels=labels,
    )


SENT: list[dict[str, Any]] = []
SPENT = {"total": 40.0}


def _evidence(args: Any, ctx: Any) -> dict[str, Any]:
    return {"projected_margin": 0.45 - DISCOUNT[args.arm], "budget_spent": SPENT["total"]}


@tool(
    risk=RiskLevel.L1,
    invariants=[margin_floor(0.1), budget_cap(100, amount="cost")],
    risk_rules=[RiskRule("discount >= 0.2", RiskLevel.L2, "big_discount")],
    evidence=_evidence,
)
async def send_offer(
    customer_id: str, decision_id: str, arm: str, discount: float, cost: float
) -> str:
    """Send the retention offer chosen by the policy."""
    SENT.append({"customer_id": customer_id, "decision_id": decision_id, "arm": arm})
    return f"offer {arm} sent to {customer_id}"


def _brain(request: ModelRequest) -> Reply:
    """Choose with the decision point, send what it chose, then report."""
    results = [m for m in request.messages if isinstance(m, ToolMessage)]
    if not results:
        return call("choose_offer", customer_id="c-17", churn_risk=0.8, orders=3)
    chosen = json.loads(results[0].content)
    if len(results) == 1:
        return call(
            "send_offer",
            customer_id="c-17",
            decision_id=chosen["decision_id"],
            arm=chosen["arm"],
            discount=DISCOUNT[chosen["arm"]],
            cost=DISCOUNT[chosen["arm"]] * 100,
        )
    return f"done: {results[-1].content}"


def _agent(point: DecisionPoint) -> Any:
    return define_agent(
        "retention.offer",
        model="offline",
        instructions="Choose an offer with choose_offer, then send it with send_offer.",
        tools=[point.tool(), send_offer],
    )


def test_growth_services_are_decision_ports_structurally() -> None:
    """BanditService and DecisionLoop satisfy DecisionPort (and the loop LabelPort) with no import
    of the agent package in growth."""
    service = BanditService(LinearIGW("p", ["a", "b"], n_features=1, seed=1))
    loop = DecisionLoop(service, REWARD)
    port: DecisionPort = service
    labelled: LabelPort = loop
    assert isinstance(port, DecisionPort)
    assert isinstance(loop, DecisionPort)
    assert isinstance(labelled, LabelPort)
    import contractspec.growth.decisions as growth_decisions

    tree = ast.parse(Path(growth_decisions.__file__).read_text(encoding="utf-8"))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported
    assert not [m for m in imported if m.startswith("contractspec.agent")]


async def test_the_agent_decides_through_the_bandit_and_the_decision_is_logged_once(
    loop: DecisionLoop,
) -> None:
    """The agent's choose_offer call logs one decision with its context and propensity; the
    offer it sends carries the decision id; a re-run of the same tool call replays it."""
    SENT.clear()
    point = _point(loop, labels=loop)
    runner = AgentRunner(model=FunctionModel(_brain), policy=POLICY)
    agent = _agent(point)
    result = await runner.run(agent, "retain c-17", CTX)
    (decision,) = await loop.service.log.decisions()
    assert decision.context == (1.0, 0.8, 0.3)
    assert decision.propensity == decision.probabilities[decision.arm]
    assert 0 < decision.propensity <= 1
    if decision.arm == "pct30":  # L2: waits for a person
        assert result.status is RunStatus.WAITING_APPROVAL
        assert SENT == []
    else:
        assert result.status is RunStatus.COMPLETED
        assert [{"customer_id": "c-17", "decision_id": decision.decision_id,
                         "arm": decision.arm}] == SENT  # fmt: skip
    packets = await runner.packets(result.run_id)
    assert packets[0]["tool"] == "choose_offer"
    assert packets[0]["risk"] == 0
    assert len(await loop.service.log.decisions()) == 1


async def test_the_agent_decision_belongs_to_the_call_org_and_other_orgs_cannot_reward_it(
    loop: DecisionLoop,
) -> None:
    """The decision tool passes the run's org (CTX: shop) to the loop: another org's order event
    naming the decision is FOREIGN_ORG and not recorded, an override without the org is refused,
    and the shop's own event and override are recorded."""
    SENT.clear()
    point = _point(loop, labels=loop)
    runner = AgentRunner(model=FunctionModel(_brain), policy=POLICY)
    await runner.run(_agent(point), "retain c-17", CTX)
    (decision,) = await loop.service.log.decisions()
    assert await loop.outcomes.org_of(decision.decision_id) == "shop"
    paid = Payload(decision_id=decision.decision_id, margin=99.0)
    foreign = EventEnvelope("x1", "shop.order.paid", 1, T0, paid, org_id="rival")
    assert await loop.handle(foreign) is OutcomeStatus.FOREIGN_ORG
    own = EventEnvelope("s1", "shop.order.paid", 1, T0, paid, org_id="shop")
    assert await loop.handle(own) is OutcomeStatus.RECORDED
    assert [o.event_id for o in await loop.outcomes.outcomes(decision.decision_id)] == ["s1"]
    other = next(a for a in ARMS if a != decision.arm)
    with pytest.raises(NotFoundError):
        await point.record_override(decision.decision_id, other, actor="mallory")
    await point.record_override(decision.decision_id, other, actor="ann", org_id="shop")
    (label,) = await loop.outcomes.labels()
    assert (label.actor, label.org_id) == ("ann", "shop")


async def test_the_same_decision_call_later_in_a_run_replays_the_logged_decision(
    loop: DecisionLoop,
) -> None:
    """The model asking choose_offer again with the same facts gets the same decision back from
    the gateway's ledger; the policy logs one decision, not two."""

    def twice(request: ModelRequest) -> Reply:
        results = [m for m in request.messages if isinstance(m, ToolMessage)]
        if len(results) < 2:
            return call("choose_offer", customer_id="c-17", churn_risk=0.8, orders=3)
        return f"{results[0].content} | {results[1].content}"

    runner = AgentRunner(model=FunctionModel(twice), policy=POLICY)
    result = await runner.run(_agent(_point(loop)), "retain c-17", CTX)
    assert result.status is RunStatus.COMPLETED
    first, second = result.output.split(" | ")
    assert json.loads(first) == json.loads(second)
    (decision,) = await loop.service.log.decisions()
    assert json.loads(first)["decision_id"] == decision.decision_id


async def test_an_l2_offer_waits_for_approval_and_a_rejection_becomes_a_label(
    loop: DecisionLoop,
) -> None:
    """When the policy picks the 30 % offer the run waits (L2); the reviewer rejects it and the
    override 'none' is recorded as a label; resuming logs no second decision."""
    SENT.clear()
    forced = _Forced(loop, "pct30")
    point = _point(forced, labels=loop)
    runner = AgentRunner(model=FunctionModel(_brain), policy=POLICY)
    result = await runner.run(_agent(point), "retain c-17", CTX)
    assert result.status is RunStatus.WAITING_APPROVAL
    (approval_id,) = result.pending_approvals
    (decision,) = await loop.service.log.decisions()
    await runner.approvals.reject(approval_id, ANN, comment="too generous for this customer")
    await point.record_override(decision.decision_id, "none", actor="ann", reason="too generous")
    resumed = await runner.resume(result.run_id)
    assert resumed.status is RunStatus.COMPLETED
    assert SENT == []
    (label,) = await loop.outcomes.labels()
    assert (label.decision_id, label.arm, label.actor) == (decision.decision_id, "none", "ann")
    assert len(await loop.service.log.decisions()) == 1


async def test_an_offer_over_budget_is_blocked_by_the_gateway(loop: DecisionLoop) -> None:
    """With 90 of the 100 budget spent, the 30 % offer (cost 30) fails the budget invariant: it
    is neither sent nor sent for approval, whatever the bandit chose."""
    SENT.clear()
    SPENT["total"] = 90.0
    try:
        runner = AgentRunner(model=FunctionModel(_brain), policy=POLICY)
        result = await runner.run(_agent(_point(_Forced(loop, "pct30"))), "retain c-17", CTX)
    finally:
        SPENT["total"] = 40.0
    assert result.status is RunStatus.COMPLETED
    assert result.pending_approvals == ()
    assert SENT == []
    packet = (await runner.packets(result.run_id))[1]
    assert packet["tool"] == "send_offer"
    assert packet["decision"] == "blocked"
    assert "budget_cap" in packet["reason"]


async def test_an_approved_l2_offer_is_sent_once(loop: DecisionLoop) -> None:
    """An approved 30 % offer is sent exactly once after the resume."""
    SENT.clear()
    point = _point(_Forced(loop, "pct30"))
    runner = AgentRunner(model=FunctionModel(_brain), policy=POLICY)
    result = await runner.run(_agent(point), "retain c-17", CTX)
    await runner.approvals.approve(result.pending_approvals[0], ANN)
    resumed = await runner.resume(result.run_id)
    assert resumed.status is RunStatus.COMPLETED
    assert [s["arm"] for s in SENT] == ["pct30"]


class _Forced:
    """A port whose policy always prefers `arm` (logged with a uniform propensity, like an
    exploring policy that drew it), so the L2 path is exercised deterministically."""

    def __init__(self, loop: DecisionLoop, arm: str) -> None:
        self.loop = loop
        self.arm = arm

    async def choose(self, context: Any = None, *, decision_id: str | None = None) -> Any:
        return await _choose_arm(self.loop, context, decision_id, self.arm)


async def _choose_arm(loop: DecisionLoop, context: Any, decision_id: str | None, arm: str) -> Any:
    from contractspec.growth import BanditDecision

    decision = BanditDecision(
        decision_id=decision_id or "forced",
        policy=loop.service.policy.name,
        arm=arm,
        propensity=1 / 3,
        probabilities=dict.fromkeys(ARMS, 1 / 3),
        context=tuple(context),
        decided_at=T0,
    )
    await loop.service.log.record(decision)
    return decision


async def test_outcomes_arrive_over_the_bus_and_settle_the_reward(loop: DecisionLoop) -> None:
    """Order and complaint events delivered on the event bus are joined by decision id; settling
    rewards the policy with margin minus the complaint penalty; a bad event is dead-lettered."""
    bus = EventBus(sleep=_no_sleep)
    bus.subscribe("shop.*", loop.handle, name="decision-loop")
    bus.subscribe("support.*", loop.handle, name="decision-loop-support")
    point = _point(loop)
    decision = await point.decide(
        Customer(customer_id="c-1", churn_risk=0.4, orders=2), decision_id="c-1:retention"
    )
    for i, (name, payload) in enumerate(
        [
            ("shop.order.paid", Payload(decision_id=decision.decision_id, margin=42.0)),
            ("support.complaint.filed", Payload(decision_id=decision.decision_id)),
            ("shop.order.paid", Payload(decision_id=decision.decision_id)),  # no margin
        ]
    ):
        report = await bus.deliver(EventEnvelope(f"e{i}", name, 1, T0, payload))
        assert report.ok is (i < 2)
    (dead,) = await bus.dead_letters.list()
    assert "margin" in dead.error
    settled = await loop.settle(decision.decision_id)
    assert settled.reward == pytest.approx(22.0)


async def _no_sleep(_: float) -> None:
    return None


def test_bad_decision_points_are_refused_by_field() -> None:
    """A bad tool name, input model, arms or port is a SpecDefinitionError naming the field."""
    service = BanditService(LinearIGW("p", list(ARMS), n_features=3, seed=1))
    good: dict[str, Any] = {"port": service, "input": Customer,
                            "features": lambda c: [1.0, 0.0, 0.0], "arms": ARMS}  # fmt: skip
    for changes, field in (
        ({"name": "choose offer!"}, "name"),
        ({"input": dict}, "input"),
        ({"arms": {"only": "one"}}, "arms"),
        ({"port": object()}, "port"),
        ({"features": 3}, "features"),
    ):
        kwargs = {"name": "choose_offer", **good, **changes}
        with pytest.raises(SpecDefinitionError) as err:
            DecisionPoint(**kwargs)
        assert err.value.details["field"] == field


async def test_bad_features_and_unknown_arms_are_refused_before_logging() -> None:
    """Non-finite features are refused naming `features`, with nothing logged; an arm the point
    does not list is refused naming `arms`."""
    service = BanditService(LinearIGW("p", list(ARMS), n_features=3, seed=1))
    point = DecisionPoint("choose_offer", port=service, input=Customer,
                          features=lambda c: [1.0, float("nan"), 0.0], arms=ARMS)  # fmt: skip
    with pytest.raises(SpecValidationError) as err:
        await point.decide({"customer_id": "c", "churn_risk": 0.1, "orders": 1}, decision_id="d")
    assert err.value.details["field"] == "features"
    assert await service.log.decisions() == []
    with pytest.raises(SpecValidationError) as err:
        await point.decide({"customer_id": "c", "churn_risk": 7, "orders": 1}, decision_id="d")
    assert err.value.details["field"] == "input"
    narrow = DecisionPoint("choose_offer", port=service, input=Customer,
                           features=lambda c: [1.0, 0.0, 0.0],
                           arms={"zzz": "x", "yyy": "y"})  # fmt: skip
    with pytest.raises(SpecValidationError) as err:
        await narrow.decide({"customer_id": "c", "churn_risk": 0.1, "orders": 1}, decision_id="d2")
    assert err.value.details["field"] == "arms"
    with pytest.raises(SpecDefinitionError):
        await narrow.record_override("d2", "zzz", actor="ann")


async def test_numbers_past_the_float_range_are_refused_naming_the_field() -> None:
    """A feature or a budget limit too large for a float is a clear error naming the field,
    not an OverflowError."""
    from contractspec.agent.orchestration import Budget

    service = BanditService(LinearIGW("p", list(ARMS), n_features=3, seed=1))
    point = DecisionPoint("choose_offer", port=service, input=Customer,
                          features=lambda c: [1.0, 10**400, 0.0], arms=ARMS)  # fmt: skip
    with pytest.raises(SpecValidationError) as err:
        await point.decide({"customer_id": "c", "churn_risk": 0.1, "orders": 1}, decision_id="d")
    assert err.value.details["field"] == "features"
    assert await service.log.decisions() == []
    with pytest.raises(SpecValidationError) as budget_err:
        Budget(cost=10**400)
    assert budget_err.value.details["field"] == "budget.cost"
