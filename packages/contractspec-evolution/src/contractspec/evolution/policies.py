"""Enforce `operation_policy` specs in the executor: timeouts and per-tenant rate limits.

Once an approved timeout or rate-limit suggestion is applied (the developer registers the
`define_operation_policy(...)` it proposes), `OperationPolicyMiddleware` makes it real:

```python
registry.register(define_operation_policy("crm.deal.move", timeout_ms=300, rate_limit_per_minute=600))
executor = Executor(registry, middleware=[OperationPolicyMiddleware(registry)])
```

* **Timeout**: the handler runs under `asyncio.timeout(timeout_ms)`; when it expires the handler is
  cancelled, the call's transaction rolls back (nothing it wrote survives) and the caller gets
  `OperationTimeoutError` (code `operation_timeout`).
* **Rate limit**: a sliding-window counter (Cloudflare's approximation: the previous minute's count
  weighted by how much of it still overlaps the last 60 s, plus the current minute's count) per
  operation and tenant (`rate_limit_scope="org"`) or per operation (`"global"`); a call over the
  limit gets `RateLimitedError` (code `rate_limited`) with `retry_after_s`, before the handler runs.
  Counters live in this process: with several processes, give each its share of the limit or
  enforce limits at your gateway.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from contractspec.core import (
    Clock,
    Invocation,
    OperationTimeoutError,
    RateLimitedError,
    SpecDefinitionError,
    SpecRegistry,
    SystemClock,
)
from contractspec.evolution.suggestions import POLICY_KIND, OperationPolicy

__all__ = ["OperationPolicyMiddleware", "OperationTimeoutError", "RateLimitedError"]


class OperationPolicyMiddleware:
    """Executor middleware applying the registry's `operation_policy` specs.

    Args:
        registry: Where the policies are registered (latest version of each applies).
        clock: Time source of the rate-limit windows.
    """

    def __init__(self, registry: SpecRegistry, *, clock: Clock | None = None) -> None:
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        # (operation, scope key) -> (minute, count this minute, count previous minute)
        self._counters: dict[tuple[str, str | None], tuple[int, int, int]] = {}

    def policy_for(self, operation: str) -> OperationPolicy | None:
        """The policy of `operation`, or `None`."""
        try:
            found = self.registry.get_spec(POLICY_KIND, operation)
        except SpecDefinitionError:
            return None
        return found if isinstance(found, OperationPolicy) else None

    async def __call__(
        self, invocation: Invocation, call_next: Callable[[Invocation], Awaitable[BaseModel]]
    ) -> BaseModel:
        policy = self.policy_for(invocation.spec.name)
        if policy is None:
            return await call_next(invocation)
        if policy.rate_limit_per_minute is not None:
            self._admit(invocation, policy)
        if policy.timeout_ms is None:
            return await call_next(invocation)
        try:
            async with asyncio.timeout(policy.timeout_ms / 1000.0):
                return await call_next(invocation)
        except TimeoutError:
            raise OperationTimeoutError(
                f"{invocation.spec.ref} took longer than its {policy.timeout_ms} ms timeout "
                "(operation_policy); nothing it wrote was kept",
                details={"operation": invocation.spec.ref, "timeout_ms": policy.timeout_ms},
            ) from None

    def _admit(self, invocation: Invocation, policy: OperationPolicy) -> None:
        assert policy.rate_limit_per_minute is not None
        limit = policy.rate_limit_per_minute
        scope = invocation.ctx.org_id if policy.rate_limit_scope == "org" else None
        key = (invocation.spec.name, scope)
        now = self.clock.now().timestamp()
        minute = math.floor(now / 60.0)
        last_minute, current, previous = self._counters.get(key, (minute, 0, 0))
        if minute != last_minute:
            previous = current if minute == last_minute + 1 else 0
            current = 0
        elapsed = now / 60.0 - minute  # fraction of the current minute gone
        estimate = previous * (1.0 - elapsed) + current
        if estimate + 1 > limit:
            raise RateLimitedError(
                f"{invocation.spec.name} allows {limit} calls per minute"
                + (f" per tenant ({scope})" if scope is not None else "")
                + "; retry later",
                details={
                    "operation": invocation.spec.ref,
                    "limit_per_minute": limit,
                    "retry_after_s": round(_retry_after(limit, current, previous, elapsed), 3),
                },
            )
        self._counters[key] = (minute, current + 1, previous)


def _retry_after(limit: int, current: int, previous: int, elapsed: float) -> float:
    """Seconds until `previous * (1 - e) + current + 1 <= limit` holds (sliding window)."""
    if current + 1 <= limit and previous > 0:
        # later in this minute, once enough of the previous minute has slid out
        needed = 1.0 - (limit - current - 1) / previous
        return max(0.0, needed - elapsed) * 60.0
    # next minute, once enough of this minute's calls have slid out
    needed = max(0.0, 1.0 - (limit - 1) / current) if current else 0.0
    return ((1.0 - elapsed) + needed) * 60.0
