"""Test support for contractspec-evolution: sample builders on a fixed clock."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from contractspec.core import TelemetrySample

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def sample(
    operation: str = "crm.deal.create",
    *,
    at: datetime | float = 0.0,
    duration_ms: float = 10.0,
    success: bool = True,
    error_code: str | None = None,
    org_id: str | None = "org-1",
    trace_id: str | None = None,
) -> TelemetrySample:
    """One sample; `at` is a datetime or seconds after `T0`."""
    when = at if isinstance(at, datetime) else T0 + timedelta(seconds=at)
    return TelemetrySample(
        operation=operation,
        version=1,
        variant=None,
        org_id=org_id,
        actor_id="u-1",
        channel="test",
        duration_ms=duration_ms,
        success=success,
        error_code=error_code if error_code is not None or success else "internal_error",
        payload_size=None,
        trace_id=trace_id,
        timestamp=when,
    )


def minute_samples(
    operation: str,
    minute: int,
    durations: Iterable[float],
    *,
    errors: int = 0,
    org_id: str | None = "org-1",
    error_code: str = "internal_error",
) -> list[TelemetrySample]:
    """Samples inside minute `minute` after `T0`: one per duration, then `errors` failures."""
    out = [sample(operation, at=minute * 60 + 1, duration_ms=d, org_id=org_id) for d in durations]
    out += [
        sample(operation, at=minute * 60 + 2, duration_ms=1.0, success=False,
               error_code=error_code, org_id=org_id)
        for _ in range(errors)
    ]  # fmt: skip
    return out
