"""Errors of the metering package (all `ContractSpecError`s with stable codes).

HTTP mapping (core's `HTTP_STATUS`): `quota_exceeded` → 402 Payment Required (a plan allowance
is used up: upgrade the plan or wait for the next period), `quota_rate_limited` → 429 Too Many
Requests with `Retry-After` (seconds until the window ends), `feature_not_entitled` → 403.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from contractspec.core import ContractSpecError, PolicyDeniedError

__all__ = ["FeatureNotEntitledError", "QuotaExceededError", "QuotaRateLimitedError"]


class QuotaExceededError(ContractSpecError):
    """The call would take a meter past the caller's plan limit; nothing it did was kept.

    Attributes:
        plan, meter, window: The plan, meter key and limit window (`hour`, `day`, `month`).
        limit: The limit per window; `used`: units used in the window before this call;
            `requested`: units this call needed.
        window_end: When the window ends (UTC); `details["retry_after_s"]` holds the seconds
            until then for rate-style limits.
    """

    code = "quota_exceeded"

    def __init__(
        self,
        message: str,
        *,
        plan: str,
        meter: str,
        window: str,
        limit: Decimal,
        used: Decimal,
        requested: Decimal,
        window_end: datetime,
        retry_after_s: float | None = None,
    ) -> None:
        self.plan = plan
        self.meter = meter
        self.window = window
        self.limit = limit
        self.used = used
        self.requested = requested
        self.window_end = window_end
        details: dict[str, Any] = {
            "plan": plan,
            "meter": meter,
            "window": window,
            "limit": str(limit),
            "used": str(used),
            "requested": str(requested),
            "window_end": window_end.isoformat(),
        }
        if retry_after_s is not None:
            details["retry_after_s"] = retry_after_s
        super().__init__(message, details=details)


class QuotaRateLimitedError(QuotaExceededError):
    """A rate-style limit (`Limit(kind="rate")`) is reached; retry after `retry_after_s`."""

    code = "quota_rate_limited"


class FeatureNotEntitledError(PolicyDeniedError):
    """The caller's plan does not include a feature the operation needs (or the org has no plan).

    Attributes:
        plan: The org's plan key (`None`: no plan assigned).
        feature: The feature key the operation needs (`None` when the org has no plan).
    """

    code = "feature_not_entitled"

    def __init__(self, message: str, *, plan: str | None, feature: str | None) -> None:
        self.plan = plan
        self.feature = feature
        super().__init__(
            message,
            reason="feature_not_entitled",
            action=feature or "",
            details={"plan": plan, "feature": feature},
        )
