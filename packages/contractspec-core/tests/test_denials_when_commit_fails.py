"""A denial caught inside a handler is audited once even when the call then fails at commit."""

from __future__ import annotations

import contextlib

import pytest
from pydantic import BaseModel

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConflictError,
    Executor,
    HandlerCtx,
    PolicyDeniedError,
    RolePermissions,
    SpecRegistry,
    define_command,
    define_entity,
    requires,
)


class Item(BaseModel):
    id: str


items = define_entity("t.item", Item)
add_item = define_command("t.item.add", input=Item, output=Item, auth=requires("item.write"))
CTX = CallContext(actor=Actor.user("u1", roles="writer"), org_id="o1", request_id="r")


@pytest.fixture
def registry() -> SpecRegistry:
    """Items whose handler checks (and tolerates) a permission it is denied, then inserts."""
    reg = SpecRegistry(items, add_item)

    @reg.handler(add_item)
    async def _add(inp: Item, ctx: HandlerCtx) -> Item:
        with contextlib.suppress(PolicyDeniedError):  # not an approver: add it unapproved
            await ctx.authorize("item.approve")
        return await ctx.repo(items).add(inp)

    return reg


async def _outcomes(backend: Backend) -> list[str]:
    audit = backend.audit
    if hasattr(audit, "records"):
        return [r.outcome for r in audit.records]  # type: ignore[attr-defined]
    return [e.record.outcome for e in await audit.entries("o1")]  # type: ignore[attr-defined]


@pytest.mark.parametrize("in_batch", [False, True], ids=["alone", "in_batch"])
async def test_a_caught_denial_survives_a_failed_commit(
    registry: SpecRegistry, backend: Backend, in_batch: bool
) -> None:
    """The second add of one id fails (on SQL: when its insert is written); each call still
    leaves exactly one `denied` entry, and only the first a `success` entry."""
    ex = Executor(registry, backend=backend, policy=RolePermissions({"writer": ["item.write"]}))
    if in_batch:
        async with ex.batch(commit_every=10):
            await ex.execute("t.item.add", {"id": "i1"}, CTX)
            with pytest.raises(ConflictError):
                await ex.execute("t.item.add", {"id": "i1"}, CTX)
    else:
        await ex.execute("t.item.add", {"id": "i1"}, CTX)
        with pytest.raises(ConflictError):
            await ex.execute("t.item.add", {"id": "i1"}, CTX)
    assert sorted(await _outcomes(backend)) == ["denied", "denied", "success"]
