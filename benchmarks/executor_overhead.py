"""Executor overhead: the same small command through the full pipeline vs bare pydantic + handler.

(a) `Executor.execute` with memory ports: input validation, policy decision (RolePermissions),
    transaction, handler, output check, one declared event (memory outbox), an audit record (memory
    hash-chained log) and a telemetry sample;
(b) the bare baseline: `Model.model_validate(raw)` then `await handler(model, ctx)`.

Two lighter pipeline configurations are printed as well, to show what each stage costs: without
the event, and a minimal one (public operation, no event, no audit, no telemetry).

All run in one process, alternating rounds; we print the median executions/s and the ratios.
Goal (issue 2): >= 50,000 executions/s through the pipeline on one core, ratio under 3x.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

from pydantic import BaseModel

from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    MemoryTelemetrySink,
    RolePermissions,
    SpecRegistry,
    define_command,
    define_event,
    public,
    requires,
)

ROUNDS = 7
N = 20_000


class AddItem(BaseModel):
    sku: str
    qty: int


class ItemAdded(BaseModel):
    sku: str
    qty: int


class Added(BaseModel):
    sku: str
    total: int


item_added = define_event("shop.item.added", payload=ItemAdded)
add_item = define_command(
    "shop.cart.add", input=AddItem, output=Added, emits=[item_added], auth=requires("cart.write")
)


async def handler(inp: AddItem, ctx: Any) -> Added:
    if ctx is not None:
        ctx.emit(item_added, ItemAdded(sku=inp.sku, qty=inp.qty))
    return Added(sku=inp.sku, total=inp.qty * 2)


async def quiet_handler(inp: AddItem, ctx: Any) -> Added:
    return Added(sku=inp.sku, total=inp.qty * 2)


add_item_quiet = define_command(
    "shop.cart.add", input=AddItem, output=Added, auth=requires("cart.write")
)
add_item_public = define_command("shop.cart.add", input=AddItem, output=Added, auth=public())


async def bare(raw: dict[str, Any], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        model = AddItem.model_validate(raw)
        await handler(model, None)
    return n / (time.perf_counter() - started)


async def pipeline(executor: Executor, raw: dict[str, Any], ctx: CallContext, n: int) -> float:
    execute = executor.execute
    started = time.perf_counter()
    for _ in range(n):
        await execute("shop.cart.add", raw, ctx)
    return n / (time.perf_counter() - started)


def registry_of(spec: Any, fn: Any) -> SpecRegistry:
    registry = SpecRegistry(spec)
    registry.bind(spec, fn)
    return registry


async def main() -> None:
    policy = RolePermissions({"shopper": ["cart.*"]})
    configs = {
        "full pipeline (memory ports)": lambda: Executor(
            registry_of(add_item, handler),
            policy=policy,
            telemetry=MemoryTelemetrySink(max_samples=N),
        ),
        "  the same without the event": lambda: Executor(
            registry_of(add_item_quiet, quiet_handler),
            policy=policy,
            telemetry=MemoryTelemetrySink(max_samples=N),
        ),
        "  minimal: public, no audit/telemetry": lambda: Executor(
            registry_of(add_item_public, quiet_handler), audit_enabled=False
        ),
    }
    raw = {"sku": "A-1", "qty": 3}
    ctx = CallContext(actor=Actor.user("u1", roles="shopper"), org_id="o1")
    for make in configs.values():
        await pipeline(make(), raw, ctx, 2_000)  # warm up
    await bare(raw, 2_000)
    rates: dict[str, list[float]] = {name: [] for name in configs}
    base: list[float] = []
    for _ in range(ROUNDS):
        base.append(await bare(raw, N))
        for name, make in configs.items():
            rates[name].append(await pipeline(make(), raw, ctx, N))
    b = statistics.median(base)
    print(
        f"executor_overhead  python {sys.version.split()[0]}  {ROUNDS} rounds x {N:,} calls (median)"
    )
    print(
        f"  {'bare model_validate + handler':<38}: {b:>10,.0f} executions/s  ({1e6 / b:6.2f} us/call)"
    )
    for name, values in rates.items():
        r = statistics.median(values)
        print(
            f"  {name:<38}: {r:>10,.0f} executions/s  ({1e6 / r:6.2f} us/call)  ratio {b / r:5.2f}x"
        )
    print("  goals: the full pipeline >= 50,000 executions/s, ratio < 3x")


if __name__ == "__main__":
    asyncio.run(main())
