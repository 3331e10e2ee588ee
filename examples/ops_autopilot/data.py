"""The CDNOW customers and their churn risk, from contractspec-growth's churn model.

The churn model is fitted on the history as of 1997-07-01 (a customer "churned" when they bought
nothing in the following 90 days) and scores every customer as of 1997-10-01: recency,
frequency and spend over the previous 180 days.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
from attrs import frozen

from contractspec.growth import ChurnPredictor, Transactions, load_cdnow

__all__ = ["AS_OF", "CustomerFacts", "customers_at_risk", "data_file", "load_customers"]

FIT_AT = dt.datetime(1997, 7, 1)
AS_OF = dt.datetime(1997, 10, 1)
LOOKBACK = dt.timedelta(days=180)
CHURN_WINDOW = np.timedelta64(90, "D")


@frozen
class CustomerFacts:
    """What the retention agent knows about one customer at `AS_OF`.

    Attributes:
        customer_id: CDNOW customer id (leading zeros kept).
        churn_risk: Churn risk in (0, 1) from the fitted `ChurnPredictor`.
        band: `low`, `medium` or `high`.
        recency_days: Days since the last purchase.
        orders: Purchases in the last 180 days.
        spend: US dollars spent in the last 180 days.
        avg_order: Mean order value over the whole history (US dollars).
    """

    customer_id: str
    churn_risk: float
    band: str
    recency_days: float
    orders: int
    spend: float
    avg_order: float

    def features(self) -> list[float]:
        """The bandit's context: intercept, churn risk, log order count, average order / 100."""
        return [1.0, self.churn_risk, float(np.log1p(self.orders)), self.avg_order / 100.0]


def data_file() -> Path:
    """`CDNOW_master.txt`: `$CONTRACTSPEC_DATA_DIR/cdnow/`, else `../shared/data/cdnow/` next to
    the project (or the current directory)."""
    candidates = []
    if env := os.environ.get("CONTRACTSPEC_DATA_DIR"):
        candidates.append(Path(env) / "cdnow" / "CDNOW_master.txt")
    project_root = Path(__file__).resolve().parents[2]
    candidates.append(project_root.parent / "shared" / "data" / "cdnow" / "CDNOW_master.txt")
    candidates.append(Path.cwd().parent / "shared" / "data" / "cdnow" / "CDNOW_master.txt")
    for path in candidates:
        if path.is_file():
            return path
    return candidates[-1]


def _slice(tx: Transactions, customers: int | None) -> Transactions:
    if customers is None:
        return tx
    keep = np.unique(tx.customer_ids)[:customers]
    mask = np.isin(tx.customer_ids, keep)
    return Transactions(tx.customer_ids[mask], tx.times[mask], tx.quantities[mask],
                        tx.amounts[mask])  # fmt: skip


def load_customers(
    path: Path | None = None, *, customers: int | None = None
) -> list[CustomerFacts]:
    """Every customer (or the first `customers` ids) with their churn risk, riskiest first.

    Raises:
        ConfigurationError: No CDNOW file at `path` (from `load_cdnow`).
    """
    tx = _slice(load_cdnow(path or data_file()), customers)
    fit_profiles = ChurnPredictor.profiles(
        tx.customer_ids, tx.times, as_of=FIT_AT, lookback=LOOKBACK, amounts=tx.amounts
    )
    fit_at = np.datetime64(FIT_AT, "s")
    window = (tx.times >= fit_at) & (tx.times < fit_at + CHURN_WINDOW)
    active = set(tx.customer_ids[window].tolist())
    churned = [p.subject not in active for p in fit_profiles]
    model = ChurnPredictor().fit(fit_profiles, churned)
    profiles = ChurnPredictor.profiles(
        tx.customer_ids, tx.times, as_of=AS_OF, lookback=LOOKBACK, amounts=tx.amounts
    )
    names, inverse = np.unique(tx.customer_ids, return_inverse=True)
    totals = np.bincount(inverse, weights=tx.amounts)
    counts = np.bincount(inverse)
    avg = {str(n): float(t / c) for n, t, c in zip(names, totals, counts, strict=True)}
    return [
        CustomerFacts(
            customer_id=s.subject,
            churn_risk=round(s.risk, 6),
            band=s.band,
            recency_days=s.profile.recency_days,
            orders=s.profile.frequency,
            spend=round(s.profile.monetary, 2),
            avg_order=round(avg[s.subject], 2),
        )
        for s in model.score_many(profiles)
    ]


def customers_at_risk(
    customers: list[CustomerFacts], threshold: float = 0.5
) -> list[CustomerFacts]:
    """Customers whose churn risk is at least `threshold`, riskiest first."""
    return [c for c in customers if c.churn_risk >= threshold]
