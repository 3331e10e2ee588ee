"""The audit log section: the org's chain paginated, its verification status, tampering shown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from console_support import build_registry
from reviews_support import ReviewClient, review_console
from sqlalchemy import update

from contractspec.console.reviews import AuditLog
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConfigurationError,
    Executor,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
)
from contractspec.core.audit import MemoryAuditLog
from contractspec.core.testing import temporary_sql_engine
from contractspec.core.testing.fixtures import backend_kind

__all__ = ["backend_kind"]

ORG = "acme"
POLICY = RolePermissions({"auditor": ["audit.read"], "clerk": ["product.write"]})
USERS = {"ann": Actor.user("u-ann", roles="auditor"), "bob": Actor.user("u-bob", roles="clerk")}
BOB = CallContext(actor=USERS["bob"], org_id=ORG)
HOSTILE = "<script>alert(1)</script>"


class Setup:
    def __init__(self, backend: Backend, registry: SpecRegistry) -> None:
        self.backend = backend
        section = AuditLog(registry, backend.audit, page_size=2)  # type: ignore[arg-type]
        self.executor = Executor(registry, backend=backend, policy=POLICY)
        self.client = ReviewClient(review_console(self.executor, USERS, ORG, [section]), USERS, ORG)

    async def create(self, n: int) -> None:
        for i in range(n):
            await self.executor.execute(
                "shop.product.create",
                {"id": f"p-{i}", "name": f"{HOSTILE}{i}", "price": "1.00"},
                BOB,
            )

    async def tamper(self) -> None:
        """Edit the second entry of the org's chain behind the log's back."""
        audit = self.backend.audit
        if isinstance(audit, MemoryAuditLog):
            assert len(audit.entries) >= 2  # the chain is fixed (hashed) when first read
            [r for r in audit.records if r.org_id == ORG][1].details = {"forged": True}
            return
        from contractspec.core.sql import SqlBackend, audit_table

        assert isinstance(self.backend, SqlBackend)
        t = audit_table
        async with self.backend.engine.begin() as conn:
            row = (await conn.execute(t.select().where(t.c.seq == 2))).mappings().one()
            body = dict(row["body"]) | {"details": {"forged": True}}
            await conn.execute(update(t).where(t.c.id == row["id"]).values(body=body))


@pytest.fixture
async def setup(backend_kind: str, tmp_path: Path) -> AsyncIterator[Setup]:
    registry = build_registry()
    if backend_kind == "memory":
        backend: Backend = MemoryBackend()
        s = Setup(backend, registry)
        yield s
        await s.client.aclose()
        return
    from contractspec.core.sql import SqlBackend

    async with temporary_sql_engine(backend_kind, tmp_path) as engine:
        sql = SqlBackend(engine, registry)
        await sql.create_all()
        s = Setup(sql, registry)
        yield s
        await s.client.aclose()


async def test_chain_listed_verified_and_paginated(setup: Setup) -> None:
    """Three writes: page 1 has entries 1-2 and a next link, page 2 entry 3; chain intact."""
    await setup.create(3)
    first = await setup.client.page("ann", "/admin/audit/")
    status = first.select_one("p.chain-status")
    assert status["data-ok"] == "true"
    assert [tr["data-seq"] for tr in first.select("table.audit tbody tr")] == ["1", "2"]
    actions = [tr.select("td")[2].get_text() for tr in first.select("table.audit tbody tr")]
    assert actions == ["shop.product.create", "shop.product.create"]
    next_link = first.select_one('a[rel="next"]')["href"]
    assert next_link == "/admin/audit/?after=2"
    second = await setup.client.page("ann", next_link)
    assert next(tr["data-seq"] for tr in second.select("table.audit tbody tr")) == "3"


async def test_tampering_is_shown(setup: Setup) -> None:
    """An entry edited behind the log's back: the page says the chain breaks at entry 2."""
    await setup.create(3)
    await setup.client.page("ann", "/admin/audit/")
    await setup.tamper()
    page = await setup.client.page("ann", "/admin/audit/")
    status = page.select_one("p.chain-status")
    assert status["data-ok"] == "false"
    assert "at entry 2" in status.get_text()
    assert "hash mismatch" in status.get_text()
    assert page.select_one('tr[data-seq="2"]')["class"] == ["bad"]


async def test_readers_only(setup: Setup) -> None:
    """A caller without `audit.read` does not see the section and gets 403 on its page."""
    await setup.create(1)
    home = await setup.client.page("bob", "/admin/")
    assert "/admin/audit/" not in {a["href"] for a in home.select("nav.side a")}
    assert (await setup.client.get("bob", "/admin/audit/")).status_code == 403
    ann = await setup.client.page("ann", "/admin/")
    assert "/admin/audit/" in {a["href"] for a in ann.select("nav.side a")}


def test_an_audit_sink_that_cannot_be_verified_is_refused() -> None:
    """Passing something that is not a verifiable, listable audit log is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="MemoryAuditLog or SqlAuditLog") as info:
        AuditLog(SpecRegistry(), object())  # type: ignore[arg-type]
    assert info.value.details["field"] == "audit"
