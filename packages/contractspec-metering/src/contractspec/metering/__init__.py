"""Usage metering and entitlements for ContractSpec.

Meters, plans and metered operations are spec objects (`define_meter`, `define_plan`,
`meter_operation`) registered in the `SpecRegistry` and described in its IR. `Metering` records
idempotent usage events in the operation's transaction, ingests delivered events, aggregates per
subject, meter and window, exports CloudEvents and invoice lines, and enforces entitlements as
executor middleware (`QuotaExceededError`, `QuotaRateLimitedError`, `FeatureNotEntitledError`).
Stores: `MemoryMeteringStore` here, `SqlMeteringStore` in `contractspec.metering.sql`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from contractspec.metering.errors import (
    FeatureNotEntitledError,
    QuotaExceededError,
    QuotaRateLimitedError,
)
from contractspec.metering.pricing import InvoiceLine, TierCharge, price_quantity
from contractspec.metering.service import Invoice, Metering, QuotaMiddleware, to_cloudevent
from contractspec.metering.specs import (
    Aggregation,
    Feature,
    Limit,
    LimitKind,
    Meter,
    MeteredOperation,
    Overage,
    Plan,
    Price,
    Tier,
    TiersMode,
    Window,
    define_meter,
    define_plan,
    meter_operation,
    window_bounds,
)
from contractspec.metering.stores import (
    Counter,
    MemoryMeteringStore,
    MeteringStore,
    PlanAssignment,
    Recorded,
    UsageAggregate,
    UsageEvent,
)

try:
    __version__ = version("contractspec-metering")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0"

__all__ = (
    "Aggregation",
    "Counter",
    "Feature",
    "FeatureNotEntitledError",
    "Invoice",
    "InvoiceLine",
    "Limit",
    "LimitKind",
    "MemoryMeteringStore",
    "Meter",
    "MeteredOperation",
    "Metering",
    "MeteringStore",
    "Overage",
    "Plan",
    "PlanAssignment",
    "Price",
    "QuotaExceededError",
    "QuotaMiddleware",
    "QuotaRateLimitedError",
    "Recorded",
    "Tier",
    "TierCharge",
    "TiersMode",
    "UsageAggregate",
    "UsageEvent",
    "Window",
    "__version__",
    "define_meter",
    "define_plan",
    "meter_operation",
    "price_quantity",
    "to_cloudevent",
    "window_bounds",
)
