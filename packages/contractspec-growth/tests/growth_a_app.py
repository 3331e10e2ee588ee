"""A tiny app with two versions of one operation, for the rollout tests driven through Executor."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from contractspec.core import HandlerCtx, InternalError, SpecRegistry, authenticated, define_command


class Quote(BaseModel):
    """Input: an amount to quote."""

    amount: int


class Priced(BaseModel):
    """Output: the price and which version computed it."""

    price: int
    version: int


quote_v1 = define_command("shop.quote", input=Quote, output=Priced, auth=authenticated())
quote_v2 = define_command("shop.quote", input=Quote, output=Priced, auth=authenticated(), version=2)


def build_registry(*, v2_fails_every: int = 0, v2_sleep_s: float = 0.0) -> SpecRegistry:
    """Version 1 is sound; version 2 fails every n-th call and/or sleeps."""
    registry = SpecRegistry(quote_v1, quote_v2)
    calls = {"v2": 0}

    @registry.handler(quote_v1)
    async def v1(inp: Quote, ctx: HandlerCtx) -> Priced:
        return Priced(price=inp.amount * 2, version=1)

    @registry.handler(quote_v2)
    async def v2(inp: Quote, ctx: HandlerCtx) -> Priced:
        calls["v2"] += 1
        if v2_sleep_s:
            await asyncio.sleep(v2_sleep_s)
        if v2_fails_every and calls["v2"] % v2_fails_every == 0:
            raise InternalError("version 2 lost its pricing table")
        return Priced(price=inp.amount * 2, version=2)

    return registry
