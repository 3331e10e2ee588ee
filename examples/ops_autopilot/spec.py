"""The retention offers, the reward model and the events of the autopilot."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from attrs import frozen
from pydantic import BaseModel, Field

from contractspec.growth.decisions import RewardTerm, define_reward_model

__all__ = [
    "ARMS",
    "BASE_MARGIN",
    "MARGIN_FLOOR",
    "OFFERS",
    "REWARD",
    "ComplaintFiled",
    "Offer",
    "OrderPaid",
    "RefundIssued",
    "RetentionTask",
]

#: Gross margin of a CDNOW order before any discount (fraction of the order value).
BASE_MARGIN = 0.40
#: The lowest projected margin an offer may leave (fraction): the gateway's margin invariant.
MARGIN_FLOOR = 0.10


@frozen
class Offer:
    """A retention offer: a discount on the next order and/or a shipping credit (US dollars)."""

    arm: str
    description: str
    discount: float
    shipping_credit: float = 0.0

    def cost(self, avg_order: float) -> float:
        """Expected cost of the offer for a customer with this average order (US dollars)."""
        return round(self.discount * avg_order + self.shipping_credit, 2)

    def projected_margin(self, avg_order: float) -> float:
        """Margin left on an average order after the offer (fraction)."""
        return BASE_MARGIN - self.discount - self.shipping_credit / max(avg_order, 1.0)


OFFERS: dict[str, Offer] = {
    o.arm: o
    for o in (
        Offer("none", "no offer: a friendly check-in", 0.0),
        Offer("pct10", "10 % off the next order", 0.10),
        Offer("free_shipping", "free shipping on the next order ($6 credit)", 0.0, 6.0),
        Offer("pct25", "25 % off the next order (needs a person's approval)", 0.25),
    )
}
#: The bandit's arms and what each means for the agent.
ARMS = {arm: offer.description for arm, offer in OFFERS.items()}

REWARD = define_reward_model(
    "retention.offer.reward",
    terms=[
        RewardTerm("shop.order.paid", amount="margin"),
        RewardTerm("shop.refund.issued", amount="amount", weight=-1.0),
        RewardTerm("support.complaint.filed", weight=-15.0, guardrail=True),
    ],
    horizon=dt.timedelta(days=30),
    description="Margin of orders after the offer, minus refunds, minus $15 per complaint.",
)


class RetentionTask(BaseModel):
    """`retention.task.created`: a customer at risk of churning needs a retention offer."""

    task_id: str
    customer_id: str
    churn_risk: float = Field(ge=0, le=1)
    orders: int = Field(ge=0)
    avg_order: float = Field(ge=0)


class OrderPaid(BaseModel):
    """`shop.order.paid`."""

    decision_id: str
    customer_id: str
    amount: Decimal
    margin: Decimal


class RefundIssued(BaseModel):
    """`shop.refund.issued`."""

    decision_id: str
    customer_id: str
    amount: Decimal


class ComplaintFiled(BaseModel):
    """`support.complaint.filed`."""

    decision_id: str
    customer_id: str
    reason: str
