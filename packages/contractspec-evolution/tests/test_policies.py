"""OperationPolicyMiddleware: registered timeouts and rate limits are enforced by the executor."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from evolution_app import POLICY, build_registry, deal_entity
from evolution_support import T0

from contractspec.core import Actor, CallContext, Executor, MemoryBackend
from contractspec.core.testing import FakeClock
from contractspec.evolution import define_operation_policy
from contractspec.evolution.policies import (
    OperationPolicyMiddleware,
    OperationTimeoutError,
    RateLimitedError,
)

CTX = CallContext(actor=Actor.user("u1", roles="sales"), org_id="o1")
OTHER = CallContext(actor=Actor.user("u2", roles="sales"), org_id="o2")


async def test_timeout_cancels_the_handler_and_rolls_back() -> None:
    """A handler slower than timeout_ms raises OperationTimeoutError and leaves nothing behind."""
    registry = build_registry()
    backend = MemoryBackend()
    slow = {"s": 0.2}

    async def slow_down(inv, call_next):  # type: ignore[no-untyped-def]
        out = await call_next(inv)  # the deal is written...
        if inv.spec.name == "shop.deal.create":
            await asyncio.sleep(slow["s"])  # ...then the call overruns its timeout
        return out

    registry.register(define_operation_policy("shop.deal.create", timeout_ms=50))
    executor = Executor(registry, backend=backend, policy=POLICY,
                        middleware=[OperationPolicyMiddleware(registry), slow_down])  # fmt: skip
    with pytest.raises(OperationTimeoutError) as info:
        await executor.execute("shop.deal.create", {"title": "x", "amount": 5}, CTX)
    assert info.value.details == {"operation": "shop.deal.create@1", "timeout_ms": 50}
    assert info.value.code == "operation_timeout"
    slow["s"] = 0.0
    counted = await executor.execute("shop.deal.count", {}, CTX)
    assert counted.total == 0  # type: ignore[attr-defined]
    tx = await backend.unit_of_work.begin(readonly=True)
    rows = await backend.entities.repository(deal_entity, tx, "o1").find()
    await tx.rollback()
    assert rows == []


async def test_rate_limit_per_tenant_with_a_sliding_window() -> None:
    """Three calls a minute per tenant: the fourth is refused with retry_after; tenants are apart."""
    registry = build_registry()
    registry.register(define_operation_policy("shop.deal.count", rate_limit_per_minute=3))
    clock = FakeClock(T0)
    executor = Executor(registry, backend=MemoryBackend(), policy=POLICY,
                        middleware=[OperationPolicyMiddleware(registry, clock=clock)])  # fmt: skip
    for _ in range(3):
        await executor.execute("shop.deal.count", {}, CTX)
    with pytest.raises(RateLimitedError) as info:
        await executor.execute("shop.deal.count", {}, CTX)
    # next minute, once a third of it has passed: 3 * (1 - 1/3) + 1 <= 3
    assert info.value.details["retry_after_s"] == 80.0
    await executor.execute("shop.deal.count", {}, OTHER)  # another tenant has its own budget
    clock.advance(timedelta(seconds=90))  # half of the previous minute still counts: 3 * 0.5
    await executor.execute("shop.deal.count", {}, CTX)
    with pytest.raises(RateLimitedError) as again:
        await executor.execute("shop.deal.count", {}, CTX)
    # 1.5 + 1 + 1 > 3 now; at 40 s the previous minute weighs 3 * (1/3) = 1 and 1 + 1 + 1 <= 3
    assert again.value.details["retry_after_s"] == 10.0
    clock.advance(timedelta(seconds=10))
    await executor.execute("shop.deal.count", {}, CTX)


async def test_operations_without_a_policy_pass_through() -> None:
    """No policy, no change; the latest policy version applies."""
    registry = build_registry()
    mw = OperationPolicyMiddleware(registry)
    assert mw.policy_for("shop.deal.move") is None
    registry.register(define_operation_policy("shop.deal.move", timeout_ms=10))
    registry.register(define_operation_policy("shop.deal.move", timeout_ms=99, version=2))
    policy = mw.policy_for("shop.deal.move")
    assert policy is not None
    assert policy.timeout_ms == 99
