"""Executor overhead: the same small command through the full pipeline vs bare pydantic + handler.

(a) `Executor.execute` with memory ports: input validation, policy decision (RolePermissions),
    transaction, handler, output check, one declared event (memory outbox), an audit record (memory
    hash-chained log) and a telemetry sample;
(b) the bare baseline: `Model.model_validate(raw)` then `await handler(model, ctx)`.

Both run in one process, alternating rounds; we print the median executions/s of each and the ratio.
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


async def main() -> None:
    registry = SpecRegistry(add_item)
    registry.bind(add_item, handler)

    def fresh() -> Executor:
        return Executor(
            registry,
            policy=RolePermissions({"shopper": ["cart.*"]}),
            telemetry=MemoryTelemetrySink(max_samples=N),
        )

    raw = {"sku": "A-1", "qty": 3}
    ctx = CallContext(actor=Actor.user("u1", roles="shopper"), org_id="o1")
    await pipeline(fresh(), raw, ctx, 2_000)  # warm up
    await bare(raw, 2_000)
    full: list[float] = []
    base: list[float] = []
    for _ in range(ROUNDS):
        full.append(await pipeline(fresh(), raw, ctx, N))
        base.append(await bare(raw, N))
    f, b = statistics.median(full), statistics.median(base)
    print(
        f"executor_overhead  python {sys.version.split()[0]}  {ROUNDS} rounds x {N:,} calls (median)"
    )
    print(f"  bare model_validate + handler : {b:>12,.0f} executions/s  ({1e6 / b:6.2f} us/call)")
    print(f"  full pipeline (memory ports)  : {f:>12,.0f} executions/s  ({1e6 / f:6.2f} us/call)")
    print(
        f"  ratio bare/pipeline           : {b / f:>12.2f}x   (goal < 3x; pipeline goal >= 50,000/s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
