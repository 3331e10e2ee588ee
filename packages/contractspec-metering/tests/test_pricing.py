"""Invoice lines: flat, graduated and volume tiers (Stripe's definitions), decimal-exact."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contractspec.core import SpecValidationError
from contractspec.metering import Price, Tier, price_quantity

# Stripe's worked examples (docs.stripe.com/products-prices/pricing-models): graduated and volume
TIERS = [Tier(5, 0), Tier(10, 2), Tier(None, 1)]


def test_flat_is_quantity_times_unit_amount_exactly() -> None:
    """0.1 * 3 is 0.3 exactly; the total is rounded to cents with the chosen mode."""
    line = price_quantity(Price("a.b", unit_amount="0.1"), Decimal(3))
    assert (line.subtotal, line.amount) == (Decimal("0.3"), Decimal("0.30"))
    half = price_quantity(Price("a.b", unit_amount="0.005"), Decimal(1))
    assert half.amount == Decimal("0.00")  # banker's rounding by default
    assert price_quantity(
        Price("a.b", unit_amount="0.005"), Decimal(1), rounding=ROUND_HALF_UP
    ).amount == Decimal("0.01")
    yen = price_quantity(Price("a.b", unit_amount="1.5", currency="jpy", decimals=0), Decimal(3))
    assert yen.amount == Decimal(4)  # 4.5 -> 4 (half even)


def test_graduated_prices_each_unit_in_its_tier() -> None:
    """15 units over (5 @ 0), (10 @ 2), (inf @ 1) = 0 + 10 + 5 = 15, as in Stripe's example."""
    line = price_quantity(Price("a.b", mode="graduated", tiers=TIERS), Decimal(15))
    assert [(c.tier, c.quantity, c.amount) for c in line.charges] == [
        (0, Decimal(5), Decimal(0)),
        (1, Decimal(5), Decimal(10)),
        (2, Decimal(5), Decimal(5)),
    ]
    assert line.subtotal == 15
    assert price_quantity(Price("a.b", mode="graduated", tiers=TIERS), Decimal(7)).subtotal == 4
    assert price_quantity(Price("a.b", mode="graduated", tiers=TIERS), Decimal(0)).charges == ()


def test_volume_prices_every_unit_in_the_one_tier_reached() -> None:
    """10 units fall in tier 2 (all at 2 = 20); 15 units in tier 3 (all at 1 = 15)."""
    price = Price("a.b", mode="volume", tiers=TIERS)
    assert price_quantity(price, Decimal(10)).subtotal == 20
    assert price_quantity(price, Decimal("10.5")).subtotal == Decimal("10.5")
    line = price_quantity(price, Decimal(15))
    assert [(c.tier, c.quantity) for c in line.charges] == [(2, Decimal(15))]


def test_flat_amounts_are_added_once_per_tier_reached() -> None:
    """Graduated adds each reached tier's flat fee; volume adds only its tier's."""
    tiers = [Tier(10, 1, flat_amount=5), Tier(None, "0.5", flat_amount=20)]
    assert price_quantity(Price("a.b", mode="graduated", tiers=tiers), Decimal(4)).subtotal == 9
    assert price_quantity(Price("a.b", mode="graduated", tiers=tiers), Decimal(12)).subtotal == 36
    assert price_quantity(Price("a.b", mode="volume", tiers=tiers), Decimal(12)).subtotal == 26
    assert price_quantity(Price("a.b", mode="volume", tiers=tiers), Decimal(0)).subtotal == 0


def test_negative_quantities_bill_nothing_and_bad_quantities_are_refused() -> None:
    """A net credit bills 0; NaN or a float quantity is a clear error."""
    assert price_quantity(Price("a.b", unit_amount=2), Decimal(-3)).amount == 0
    with pytest.raises(SpecValidationError, match="finite Decimal"):
        price_quantity(Price("a.b", unit_amount=2), Decimal("NaN"))
    with pytest.raises(SpecValidationError, match="finite Decimal"):
        price_quantity(Price("a.b", unit_amount=2), 1.5)  # type: ignore[arg-type]


amounts = st.integers(0, 10**8).map(lambda n: Decimal(n).scaleb(-6))
quantities = st.integers(0, 10**12).map(lambda n: Decimal(n).scaleb(-6))


@st.composite
def tiered(draw: st.DrawFn) -> list[Tier]:
    bounds = sorted(set(draw(st.lists(st.integers(1, 10**6), min_size=0, max_size=5))))
    ups: list[Decimal | None] = [Decimal(b) for b in bounds]
    ups.append(None)
    return [Tier(u, draw(amounts), draw(amounts)) for u in ups]


@given(tiers=tiered(), quantity=quantities)
def test_graduated_total_is_the_sum_over_tiers(tiers: list[Tier], quantity: Decimal) -> None:
    """Graduated == sum over tiers of (units inside the tier * its price + its flat fee if reached)."""
    line = price_quantity(Price("a.b", mode="graduated", tiers=tiers), quantity)
    expected = Decimal(0)
    lower = Decimal(0)
    for tier in tiers:
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        if upper > lower:
            expected += (upper - lower) * tier.unit_amount + tier.flat_amount
        if tier.up_to is not None:
            lower = max(lower, tier.up_to)
    assert line.subtotal == expected
    assert sum(c.quantity for c in line.charges) == quantity
    assert line.amount == line.subtotal.quantize(Decimal("0.01"))


@given(tiers=tiered(), quantity=quantities)
def test_volume_uses_exactly_one_tier(tiers: list[Tier], quantity: Decimal) -> None:
    """Volume prices the whole quantity at the first tier whose bound holds it."""
    line = price_quantity(Price("a.b", mode="volume", tiers=tiers), quantity)
    if quantity == 0:
        assert line.subtotal == 0
        return
    (charge,) = line.charges
    tier = next(t for t in tiers if t.up_to is None or quantity <= t.up_to)
    assert charge.quantity == quantity
    assert line.subtotal == quantity * tier.unit_amount + tier.flat_amount
