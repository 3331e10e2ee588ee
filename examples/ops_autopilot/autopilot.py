"""Support → Retention on autopilot: churn risk → retention task → bandit-chosen offer → gateway
(budget and margin invariants, approval of big discounts) → business events → rewards.

* `scan` publishes a `retention.task.created` event on the bus for every customer whose churn
  risk (contractspec-growth's `ChurnPredictor`) crosses the threshold;
* the task subscriber runs the `ops.retention` agent: it asks the `choose_offer` decision point
  (a `LinearIGW` contextual bandit behind growth's `DecisionLoop`, logged with propensities),
  then calls `send_offer`, an L1 tool whose invariants keep the projected margin at or above 10 %,
  the campaign within budget and the offer equal to the policy's choice; offers of 20 % or more
  are L2 and wait for a person;
* `review` decides the pending approvals; a rejection is recorded as a label (the override), and
  so is an offer the gateway blocked (nothing was sent, so the policy's arm never acted);
* outcome events (`shop.order.paid`, `shop.refund.issued`, `support.complaint.filed`) reach the
  decision loop over the bus and `settle` turns them into rewards once the 30-day horizon passed.

`World` stands in for the customers: a seeded simulation of who buys again after which offer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np
from attrs import define
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.agent import (
    AgentRunner,
    ApprovalRequest,
    ApprovalStore,
    ApprovalWorkflow,
    Invariant,
    MemoryApprovalStore,
    ModelClient,
    ModelRequest,
    RiskLevel,
    RiskRule,
    RunStatus,
    RunStore,
    ToolContext,
    ToolMessage,
    UsageLimits,
    UserMessage,
    budget_cap,
    define_agent,
    margin_floor,
    tool,
)
from contractspec.agent.decisions import DecisionPoint
from contractspec.agent.testing import FunctionModel, Reply, call
from contractspec.bus import EventBus
from contractspec.core import Actor, Backend, CallContext, SpecRegistry
from contractspec.core.policy import RolePermissions
from contractspec.core.ports import Clock, IdGenerator
from contractspec.core.records import EventEnvelope
from contractspec.growth import BanditDecision, BanditService, DecisionLog, LinearIGW
from contractspec.growth.decisions import (
    DecisionLoop,
    OutcomeStore,
    PolicyEvaluation,
    evaluate_policy,
)
from ops_autopilot.data import CustomerFacts
from ops_autopilot.spec import (
    ARMS,
    MARGIN_FLOOR,
    OFFERS,
    REWARD,
    ComplaintFiled,
    OrderPaid,
    RefundIssued,
    RetentionTask,
)

__all__ = [
    "Autopilot",
    "Budget",
    "CustomerBrief",
    "SentOffer",
    "TaskResult",
    "World",
    "approve_when_cheap",
    "open_on_sqlite",
]

ORG = "cdnow"
AGENT_CTX = CallContext(actor=Actor.system("ops-autopilot"), org_id=ORG, channel="agent")
#: Who may decide approvals: retention leads.
POLICY = RolePermissions({"retention-lead": ["approval.*"]})


class CustomerBrief(BaseModel):
    """What the agent passes to the decision point."""

    customer_id: str
    churn_risk: float = Field(ge=0, le=1)
    orders: int = Field(ge=0)
    avg_order: float = Field(ge=0)


def features(brief: CustomerBrief) -> list[float]:
    """The bandit's context: intercept, churn risk, log(1 + orders), average order / 100."""
    return [1.0, brief.churn_risk, math.log1p(brief.orders), brief.avg_order / 100.0]


@define
class Budget:
    """The campaign budget (US dollars)."""

    cap: float
    spent: float = 0.0


@define(frozen=True)
class SentOffer:
    """An offer that went out."""

    customer_id: str
    decision_id: str
    arm: str
    cost: float


@define
class TaskResult:
    """What happened to one retention task."""

    task_id: str
    customer_id: str
    run_id: str
    status: str
    decision_id: str | None = None
    arm: str | None = None
    approval_id: str | None = None
    outcome: str = "pending"  # sent, blocked, waiting_approval, rejected, failed


# -- the agent's tools --------------------------------------------------------------------------


async def _offer_evidence(args: Any, ctx: ToolContext) -> dict[str, Any]:
    pilot: Autopilot = ctx.deps
    offer = OFFERS.get(args.arm)
    customer = pilot.customers.get(args.customer_id)
    if offer is None or customer is None:
        return {}  # the invariants then fail closed on missing facts
    try:
        decided = await pilot.service.log.get(args.decision_id)
        decided_arm: str | None = decided.arm
    except Exception:
        decided_arm = None
    return {
        "discount": offer.discount,
        "cost": offer.cost(customer.avg_order),
        "projected_margin": round(offer.projected_margin(customer.avg_order), 4),
        "budget_spent": round(pilot.budget.spent, 2),
        "budget_cap": pilot.budget.cap,
        "decided_arm": decided_arm,
    }


@tool(
    risk=RiskLevel.L1,
    invariants=[
        margin_floor(MARGIN_FLOOR),
        budget_cap(amount="cost"),
        Invariant(
            "follows_the_policy",
            "arm == decided_arm",
            "send the offer the decision point chose for this decision id",
        ),
    ],
    risk_rules=[RiskRule("discount >= 0.2", RiskLevel.L2, "big_discount")],
    evidence=_offer_evidence,
)
async def send_offer(customer_id: str, decision_id: str, arm: str, ctx: ToolContext) -> str:
    """Send the retention offer the decision point chose (arm) to the customer."""
    pilot: Autopilot = ctx.deps
    offer = OFFERS[arm]
    cost = offer.cost(pilot.customers[customer_id].avg_order)
    if pilot.budget.spent + cost > pilot.budget.cap:  # approved after the budget ran out
        raise ValueError(
            f"the budget has {pilot.budget.cap - pilot.budget.spent:.2f} left, the offer costs "
            f"{cost:.2f}"
        )
    pilot.budget.spent = round(pilot.budget.spent + cost, 2)
    pilot.sent[decision_id] = SentOffer(customer_id, decision_id, arm, cost)
    return f"sent {arm} to customer {customer_id} (cost {cost:.2f})"


def _brain(request: ModelRequest) -> Reply:
    """The offline model: decide with choose_offer, send what it chose, report."""
    task = json.loads(next(m.content for m in request.messages if isinstance(m, UserMessage)))
    results = [m for m in request.messages if isinstance(m, ToolMessage)]
    if not results:
        return call("choose_offer", customer_id=task["customer_id"],
                    churn_risk=task["churn_risk"], orders=task["orders"],
                    avg_order=task["avg_order"])  # fmt: skip
    chosen = json.loads(results[0].content)
    if len(results) == 1:
        return call("send_offer", customer_id=task["customer_id"],
                    decision_id=chosen["decision_id"], arm=chosen["arm"])  # fmt: skip
    return f"retention task {task['task_id']}: {results[-1].content}"


def offline_model() -> FunctionModel:
    """The offline model used when `OPS_AUTOPILOT_MODEL` is not set."""
    return FunctionModel(_brain, model_name="offline")


def configured_model() -> ModelClient:
    """A litellm model when `OPS_AUTOPILOT_MODEL` is set, else the offline model."""
    if os.environ.get("OPS_AUTOPILOT_MODEL"):
        from contractspec.agent.litellm import LiteLLMModel

        return LiteLLMModel()
    return offline_model()


# -- the simulated customers --------------------------------------------------------------------


class World:
    """Seeded customer behaviour after an offer (the stand-in for the real shop).

    A customer buys again with probability `0.6 · (1 - risk) + uplift(offer) · risk`; the order
    is about their average order; 6 % of orders are refunded; customers at high risk who get no
    offer complain 5 % of the time. Each decision draws from its own generator (seed, decision
    id), so outcomes do not depend on the order decisions were made in.
    """

    UPLIFT: ClassVar[dict[str, float]] = {
        "none": 0.05,
        "pct10": 0.20,
        "free_shipping": 0.15,
        "pct25": 0.30,
    }

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def outcomes(
        self, customer: CustomerFacts, offer: SentOffer, at: dt.datetime
    ) -> list[EventEnvelope]:
        """The business events that follow one offer, in the 30 days after `at`."""
        digest = hashlib.blake2b(offer.decision_id.encode(), digest_size=8).digest()
        rng = np.random.default_rng([self.seed, int.from_bytes(digest, "little")])
        risk = customer.churn_risk
        p_buy = 0.6 * (1 - risk) + self.UPLIFT[offer.arm] * risk
        events: list[EventEnvelope] = []
        day = at + dt.timedelta(days=int(rng.integers(1, 20)))
        did, cid = offer.decision_id, customer.customer_id
        if rng.random() < p_buy:
            amount = max(5.0, customer.avg_order * float(rng.lognormal(0.0, 0.3)))
            o = OFFERS[offer.arm]
            margin = amount * (0.40 - o.discount) - o.shipping_credit
            money = Decimal(f"{amount:.2f}")
            events.append(_event("shop.order.paid", did, day, OrderPaid(
                decision_id=did, customer_id=cid, amount=money,
                margin=Decimal(f"{margin:.2f}"))))  # fmt: skip
            if rng.random() < 0.06:
                events.append(_event("shop.refund.issued", did, day + dt.timedelta(days=3),
                                     RefundIssued(decision_id=did, customer_id=cid,
                                                  amount=Decimal(f"{max(margin, 0):.2f}"))))  # fmt: skip
        if offer.arm == "none" and risk > 0.66 and rng.random() < 0.05:
            events.append(_event("support.complaint.filed", did, day, ComplaintFiled(
                decision_id=did, customer_id=cid, reason="nobody cares that I left")))  # fmt: skip
        return events


def _event(name: str, decision_id: str, at: dt.datetime, payload: BaseModel) -> EventEnvelope:
    return EventEnvelope(id=f"{name}:{decision_id}", name=name, version=1, occurred_at=at,
                         payload=payload, org_id=ORG)  # fmt: skip


# -- the autopilot ------------------------------------------------------------------------------


class Autopilot:
    """The retention workflow, wired from public APIs (see the module docstring).

    Args:
        customers: The customers the autopilot looks after (`data.load_customers`).
        log: Where bandit decisions go (growth `MemoryDecisionLog` or `SqlDecisionLog`).
        outcomes: Where outcomes and labels go (`MemoryOutcomeStore` or `SqlOutcomeStore`).
        clock: Time source (a core `FakeClock` in tests and the demo).
        budget: Campaign budget in US dollars.
        spent: What the campaign already spent (US dollars): the budget is kept in memory, so a
            restarted process must be told (from the system that sends the offers).
        risk_threshold: Churn risk at or above which a customer gets a retention task.
        seed: Seed of the bandit and of the simulated customers.
        model: The agent's model client (offline by default; litellm with
            `OPS_AUTOPILOT_MODEL`).
        ids: Run ids (decision ids derive from them); core's `SequentialIds()` makes a run
            repeatable, UUIDs by default.
        backend: The agent's backend (unit of work, events, audit); memory by default, a
            `SqlBackend` with `open_on_sqlite`.
        runs: The agent's run store (`MemoryRunStore` by default, `SqlRunStore` for SQL).
        approval_store: Where approval requests live (`MemoryApprovalStore` by default).
    """

    def __init__(
        self,
        customers: Sequence[CustomerFacts],
        *,
        log: DecisionLog,
        outcomes: OutcomeStore,
        clock: Clock,
        budget: float = 300.0,
        spent: float = 0.0,
        risk_threshold: float = 0.5,
        seed: int = 7,
        model: ModelClient | None = None,
        ids: IdGenerator | None = None,
        backend: Backend | None = None,
        runs: RunStore | None = None,
        approval_store: ApprovalStore | None = None,
    ) -> None:
        self.customers = {c.customer_id: c for c in customers}
        self.clock = clock
        self.risk_threshold = risk_threshold
        policy = LinearIGW("retention.offer", list(ARMS), n_features=4, seed=seed, gamma=2.0)
        self.service = BanditService(policy, log=log, clock=clock)
        self.loop = DecisionLoop(self.service, REWARD, outcomes=outcomes, clock=clock)
        self.point = DecisionPoint(
            "choose_offer",
            port=self.loop,
            input=CustomerBrief,
            features=features,
            arms=ARMS,
            labels=self.loop,
            description="Ask the retention policy which offer to make to this customer.",
        )
        self.agent = define_agent(
            "ops.retention",
            model=os.environ.get("OPS_AUTOPILOT_MODEL", "offline"),
            instructions=(
                "You retain customers at risk of churning. Call choose_offer with the customer's "
                "facts, then send_offer with the decision_id and arm it returned; never change "
                "the arm. Report what you did in one sentence."
            ),
            tools=[self.point.tool(), send_offer],
            limits=UsageLimits(max_steps=4),
        )
        approvals = ApprovalWorkflow(approval_store or MemoryApprovalStore(), backend=backend,
                                     policy=POLICY, clock=clock, ids=ids)  # fmt: skip
        self.runner = AgentRunner([self.agent], model=model or configured_model(), policy=POLICY, clock=clock,
                                  ids=ids, backend=backend, runs=runs,
                                  approvals=approvals)  # fmt: skip
        self.bus = EventBus(clock=clock, sleep=_no_sleep)
        self.bus.subscribe("retention.task.created", self._on_task, name="retention-agent")
        for name in REWARD.events:
            self.bus.subscribe(name, self.loop.handle, name=f"decision-loop:{name}")
        self.budget = Budget(budget, spent)
        self.sent: dict[str, SentOffer] = {}
        self.tasks: dict[str, TaskResult] = {}
        self.world = World(seed)

    async def scan(self, limit: int | None = None) -> list[TaskResult]:
        """Publish a retention task for every customer at or above the risk threshold who still
        bought in the last 180 days (the lapsing, not the long gone), riskiest first; each task
        runs the agent (a bus subscriber). Customers with a task already are skipped; at most
        `limit` tasks start."""
        started: list[TaskResult] = []
        for c in sorted(self.customers.values(), key=lambda c: -c.churn_risk):
            if limit is not None and len(started) >= limit:
                break
            if c.churn_risk < self.risk_threshold or c.orders == 0:
                continue
            task_id = f"retain-{c.customer_id}"
            if task_id in self.tasks:
                continue
            task = RetentionTask(task_id=task_id, customer_id=c.customer_id,
                                 churn_risk=c.churn_risk, orders=c.orders,
                                 avg_order=c.avg_order)  # fmt: skip
            envelope = EventEnvelope(id=task_id, name="retention.task.created", version=1,
                                     occurred_at=self.clock.now(), payload=task, org_id=ORG,
                                     key=c.customer_id)  # fmt: skip
            report = await self.bus.deliver(envelope)
            if not report.ok:
                self.tasks[task_id] = TaskResult(task_id, c.customer_id, "", "failed",
                                                 outcome="failed")  # fmt: skip
            started.append(self.tasks[task_id])
        return started

    async def _on_task(self, event: EventEnvelope) -> None:
        task = event.payload
        assert isinstance(task, RetentionTask)
        result = await self.runner.run(self.agent, task.model_dump_json(), AGENT_CTX, deps=self)
        self.tasks[task.task_id] = await self._result(task.task_id, task.customer_id, result.run_id)

    async def _result(self, task_id: str, customer_id: str, run_id: str) -> TaskResult:
        run = await self.runner.get(run_id)
        packets = await self.runner.packets(run_id)
        chosen = next((p for p in packets if p["tool"] == "choose_offer"), None)
        sends = [p for p in packets if p["tool"] == "send_offer"]
        decision_id = arm = None
        if chosen is not None:
            decision_id = self._decision_id(chosen)
        if decision_id is not None:
            arm = (await self.service.log.get(decision_id)).arm
        result = TaskResult(task_id, customer_id, run_id, run.status.value, decision_id, arm)
        approvals = [p["approval_id"] for p in sends if p.get("approval_id")]
        if approvals:
            result.approval_id = str(approvals[-1])
        if run.status is RunStatus.WAITING_APPROVAL:
            result.outcome = "waiting_approval"
            result.approval_id = str(run.pending[0]["approval_id"])
        elif decision_id is not None and decision_id in self.sent:
            result.outcome = "sent"
        elif sends and sends[-1]["decision"] == "blocked":
            result.outcome = "blocked"
            if decision_id is not None and not await self.loop.outcomes.labels([decision_id]):
                # the gateway overrode the policy: nothing was sent, so the arm never acted
                await self.point.record_override(decision_id, "none", actor="gateway",
                                                 reason=str(sends[-1]["reason"]),
                                                 org_id=ORG)  # fmt: skip
        elif sends and sends[-1]["decision"] == "rejected":
            result.outcome = "rejected"
        else:
            result.outcome = "failed" if run.status is not RunStatus.COMPLETED else "not_sent"
        return result

    @staticmethod
    def _decision_id(packet: dict[str, Any]) -> str:
        return str(packet["action_id"])  # the decision point's decision id is its action id

    async def review(self, decide: Callable[[ApprovalRequest], bool], approver: Actor) -> int:
        """Decide every pending approval (`decide(request)` → approve?) and resume its run.

        A rejection is recorded as a label: the person overrode the policy's arm with `none`.

        Returns:
            The number of approvals decided.
        """
        decided = 0
        for task in list(self.tasks.values()):
            if task.outcome != "waiting_approval" or task.approval_id is None:
                continue
            request = await self.runner.approvals.get(task.approval_id)
            if decide(request):
                await self.runner.approvals.approve(request.id, approver, comment="worth it")
            else:
                await self.runner.approvals.reject(request.id, approver, comment="too generous")
                assert task.decision_id is not None
                await self.point.record_override(task.decision_id, "none", actor=approver.id,
                                                 reason="25 % is too generous here",
                                                 org_id=ORG)  # fmt: skip
            decided += 1
            await self.runner.resume(task.run_id, deps=self)
            self.tasks[task.task_id] = await self._result(task.task_id, task.customer_id,
                                                          task.run_id)  # fmt: skip
        return decided

    async def observe(self) -> int:
        """Publish the simulated business events of every sent offer on the bus.

        Returns:
            The number of events delivered.
        """
        count = 0
        for offer in self.sent.values():
            decision = await self.service.log.get(offer.decision_id)
            customer = self.customers[offer.customer_id]
            for envelope in self.world.outcomes(customer, offer, decision.decided_at):
                await self.bus.deliver(envelope)
                count += 1
        return count

    async def settle(self, now: dt.datetime | None = None) -> list[BanditDecision]:
        """Settle the rewards of every decision whose 30-day horizon has passed."""
        return await self.loop.settle_due(now)

    async def shadow_candidate(self, *, gamma: float = 20.0) -> LinearIGW:
        """Train a greedier candidate policy on the rewarded decisions so far and run it in
        shadow mode: from now on it chooses next to the live policy for every task, logged as
        `shadow:<decision id>`, never acting. Compare with `await self.loop.shadow_report()`."""
        live = self.service.policy
        assert isinstance(live, LinearIGW)
        candidate = LinearIGW("retention.offer.candidate", list(ARMS), n_features=4,
                              seed=live.seed + 1, gamma=gamma)  # fmt: skip
        for d in await self.service.decisions(rewarded=True):
            assert d.reward is not None
            candidate.update(d.arm, d.reward, d.context)
        self.loop.start_shadow(candidate)
        return candidate

    async def evaluate(self, arm: str) -> PolicyEvaluation:
        """Off-policy value of always offering `arm`, from the rewarded decisions."""
        rewarded = await self.service.decisions(rewarded=True)
        return evaluate_policy(rewarded, lambda d: {a: float(a == arm) for a in d.probabilities})


async def _no_sleep(_: float) -> None:
    return None


async def open_on_sqlite(
    customers: Sequence[CustomerFacts], engine: AsyncEngine, **kwargs: Any
) -> Autopilot:
    """An autopilot whose decisions, outcomes, labels, agent runs, tool ledger, approvals, outbox
    and audit trail all live in the SQLite (or PostgreSQL) database of `engine` (tables created
    if missing). `kwargs` as `Autopilot` (clock, budget, seed, ids, model...)."""
    from contractspec.agent.sql import SqlApprovalStore, SqlRunStore
    from contractspec.agent.sql import create_all as create_agent_tables
    from contractspec.core.sql import SqlBackend
    from contractspec.growth import SqlDecisionLog
    from contractspec.growth.decisions_sql import SqlOutcomeStore

    backend = SqlBackend(engine, SpecRegistry())
    await backend.create_all()
    await create_agent_tables(engine)
    log = SqlDecisionLog(engine)
    outcomes = SqlOutcomeStore(engine, metadata=log.metadata)
    await log.create_all()
    await outcomes.create_all()
    return Autopilot(customers, log=log, outcomes=outcomes, backend=backend, runs=SqlRunStore(),
                     approval_store=SqlApprovalStore(), **kwargs)  # fmt: skip


def approve_when_cheap(pilot: Autopilot, limit: float = 15.0) -> Callable[[ApprovalRequest], bool]:
    """A reviewer's rule of thumb: approve 25 % off only when the offer costs under `limit`
    US dollars for this customer; reject it otherwise."""

    def decide(request: ApprovalRequest) -> bool:
        args = request.arguments
        customer = pilot.customers[str(args["customer_id"])]
        return OFFERS[str(args["arm"])].cost(customer.avg_order) < limit

    return decide
