"""Invoice lines: quantity * price with flat, graduated and volume tiers, decimal-exact.

The tier definitions are Stripe's (<https://docs.stripe.com/products-prices/pricing-models>,
"Graduated pricing" and "Volume-based pricing"; `tiers[].up_to` is inclusive):

* **flat** (`billing_scheme=per_unit`): `quantity * unit_amount`.
* **graduated**: the quantity is split over the tiers in order; the units in each tier cost that
  tier's `unit_amount`, and every tier the quantity reaches adds its `flat_amount` once. 15 units
  with tiers `(5 @ 0), (10 @ 2), (∞ @ 1)` cost `5*0 + 5*2 + 5*1 = 15`.
* **volume**: the whole quantity is priced by the one tier it falls in, plus that tier's
  `flat_amount`. 15 units with the same tiers cost `15 * 1 = 15`; 10 units cost `10 * 2 = 20`.

Every amount is a `Decimal`; the only rounding is of the line total, to the price's currency minor
units (`Price.decimals`) with an explicit rounding mode (`ROUND_HALF_EVEN` by default, banker's
rounding; pass `ROUND_HALF_UP` for commercial rounding). Negative quantities (net credits) are
billed as zero.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from attrs import define

from contractspec.core import SpecValidationError
from contractspec.metering.specs import Price, Tier, TiersMode
from contractspec.metering.stores import clean_decimal

__all__ = ["InvoiceLine", "TierCharge", "price_quantity"]


@define(frozen=True)
class TierCharge:
    """What one tier contributed to a line: `quantity` units at `unit_amount`, plus
    `flat_amount`; `amount` is their exact sum."""

    tier: int
    quantity: Decimal
    unit_amount: Decimal
    flat_amount: Decimal
    amount: Decimal

    def to_dict(self) -> dict[str, Any]:
        """JSON form (decimals as strings)."""
        return {
            "tier": self.tier,
            "quantity": str(self.quantity),
            "unit_amount": str(self.unit_amount),
            "flat_amount": str(self.flat_amount),
            "amount": str(self.amount),
        }


@define(frozen=True)
class InvoiceLine:
    """One line of an invoice: a meter's quantity in a period, priced.

    Attributes:
        meter: Meter key; `unit`: its unit.
        quantity: The meter's aggregation over the period.
        mode: `flat`, `graduated` or `volume`.
        charges: Per-tier breakdown (one entry for `flat` and `volume`).
        subtotal: Exact sum of the charges (no rounding).
        amount: `subtotal` rounded to `currency` minor units.
        currency: ISO 4217 code.
    """

    meter: str
    unit: str
    quantity: Decimal
    mode: TiersMode
    charges: tuple[TierCharge, ...]
    subtotal: Decimal
    amount: Decimal
    currency: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (decimals as strings)."""
        return {
            "meter": self.meter,
            "unit": self.unit,
            "quantity": str(self.quantity),
            "mode": self.mode.value,
            "charges": [c.to_dict() for c in self.charges],
            "subtotal": str(self.subtotal),
            "amount": str(self.amount),
            "currency": self.currency,
        }


def _charge(n: int, quantity: Decimal, tier: Tier, *, flat: bool = True) -> TierCharge:
    flat_amount = tier.flat_amount if flat else Decimal(0)
    return TierCharge(
        n,
        clean_decimal(quantity),
        tier.unit_amount,
        flat_amount,
        clean_decimal(quantity * tier.unit_amount + flat_amount),
    )


def price_quantity(
    price: Price, quantity: Decimal, *, unit: str = "", rounding: str = ROUND_HALF_EVEN
) -> InvoiceLine:
    """Price `quantity` units with `price`.

    Args:
        price: The plan's `Price` of the meter.
        quantity: Units in the period (a negative net quantity is billed as 0).
        unit: The meter's unit, copied to the line.
        rounding: A `decimal` rounding mode for the line total (default `ROUND_HALF_EVEN`).

    Returns:
        An `InvoiceLine` whose `subtotal` is exact and `amount` rounded to `price.decimals`.

    Raises:
        SpecValidationError: `quantity` is not a finite `Decimal`.
    """
    if not isinstance(quantity, Decimal) or not quantity.is_finite():
        raise SpecValidationError(
            f"quantity must be a finite Decimal, got {quantity!r}", details={"field": "quantity"}
        )
    billable = max(quantity, Decimal(0))
    charges: list[TierCharge] = []
    if price.mode is TiersMode.FLAT:
        charges.append(_charge(0, billable, Tier(None, price.unit_amount)))
    elif price.mode is TiersMode.VOLUME:
        for n, tier in enumerate(price.tiers):
            if tier.up_to is None or billable <= tier.up_to:
                charges.append(_charge(n, billable, tier, flat=billable > 0))
                break
    else:
        lower = Decimal(0)
        for n, tier in enumerate(price.tiers):
            if billable <= lower:
                break
            upper = billable if tier.up_to is None else min(billable, tier.up_to)
            charges.append(_charge(n, upper - lower, tier))
            if tier.up_to is None:
                break
            lower = tier.up_to
    subtotal = clean_decimal(sum((c.amount for c in charges), Decimal(0)))
    amount = subtotal.quantize(Decimal(1).scaleb(-price.decimals), rounding=rounding)
    return InvoiceLine(
        price.meter,
        unit,
        clean_decimal(quantity),
        price.mode,
        tuple(charges),
        subtotal,
        amount,
        price.currency,
    )
