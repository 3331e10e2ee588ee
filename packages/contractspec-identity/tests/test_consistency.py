"""Engine consistency: atomic reloads, and a reload never undoing a newer change (issue 14)."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from identity_support import IdentityApp, as_user, identity_app

from contractspec.core import Actor, CallContext, Resource, Transaction
from contractspec.identity import (
    AccessModel,
    Effect,
    MembershipStatus,
    OrgMembership,
    Permission,
    PolicyBinding,
    PolicyEngine,
    Role,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
MODEL = AccessModel(
    permissions=[Permission(name="deal.read"), Permission(name="deal.write")],
    roles=[Role(name="sales", permissions=("deal.read", "deal.write"), rank=20)],
)


def _member(org: str, user: str, role: str = "sales") -> OrgMembership:
    return OrgMembership(
        id=f"m-{org}-{user}",
        org_id=org,
        user_id=user,
        role=role,
        status=MembershipStatus.ACTIVE,
        created_at=T0,
        updated_at=T0,
    )


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every 10 µs so a non-atomic reload is caught mid-way."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def test_load_swaps_indexes_atomically_while_other_threads_decide(fast_switching: None) -> None:
    """A thread deciding during `load()` sees the old data or the new, never roles without their
    deny bindings: the blocked user is never allowed (the old engine cleared and re-added)."""
    # the blocked user's membership first: the old engine re-added 3,000 more before the deny
    memberships = [_member("o1", "blocked"), *(_member("o1", f"u{n}") for n in range(3000))]
    deny = PolicyBinding(
        id="b-deny",
        org_id="o1",
        subject="blocked",
        permission="deal.*",
        effect=Effect.DENY,
        created_at=T0,
    )
    engine = PolicyEngine(MODEL)
    engine.load(memberships, [deny])
    blocked = Actor.user("blocked")
    resource = Resource("deal", "d1", "o1", {})
    ctx = CallContext(actor=blocked, org_id="o1")
    assert engine.decide(blocked, "deal.read", resource, ctx).allowed is False
    assert engine.decide(Actor.user("u1"), "deal.read", resource, ctx).allowed is True
    stop = threading.Event()
    allowed = 0
    decided = 0

    def decider() -> None:
        nonlocal allowed, decided
        while not stop.is_set():
            decided += 1
            if engine.decide(blocked, "deal.read", resource, ctx).allowed:
                allowed += 1

    thread = threading.Thread(target=decider)
    thread.start()
    try:
        for _ in range(40):
            engine.load(memberships, [deny])
    finally:
        stop.set()
        thread.join()
    assert decided > 0
    assert allowed == 0, f"the deny binding was missing in {allowed} of {decided} decisions"


class PausingStore:
    """Delegates to a store; `snapshot()` runs `during()` after reading, before returning."""

    def __init__(self, inner: Any, during: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.during = during

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def snapshot(self, tx: Transaction) -> Any:
        found = await self.inner.snapshot(tx)
        await self.during()
        return found


async def _granted(app: IdentityApp) -> tuple[str, str, str]:
    """Ada's org, member bob, and a `billing.view` binding of bob's (its id)."""
    ada = await app.user("ada@example.com")
    acme = await app.org(ada, "Acme")
    bob = await app.member(acme, ada, "bob@example.com")
    binding = await app.run(
        "identity.access.grant",
        {"subject": bob.id, "permission": "billing.view"},
        as_user(ada, acme),
    )
    assert app.identity.engine.check(bob.id, "billing.view", org_id=acme.id).allowed is True
    return ada.id, acme.id, binding.id


async def test_reload_never_undoes_a_revoke_committed_while_it_reads(app: IdentityApp) -> None:
    """A revoke committed while `reload()` awaits its snapshot stays revoked after the reload
    installs that (older) snapshot."""
    ada, acme, binding_id = await _granted(app)
    bob = next(
        m.user_id
        for m in (await app.read(lambda tx: app.store.list_memberships(tx, acme)))
        if m.user_id != ada
    )

    async def revoke() -> None:
        out = await app.run(
            "identity.access.revoke", {"binding_id": binding_id}, as_user(ada, acme)
        )
        assert out.revoked is True

    engine = app.identity.engine
    await engine.reload(PausingStore(app.store, revoke), app.executor.unit_of_work)
    assert engine.check(bob, "billing.view", org_id=acme).allowed is False
    # and a later reload agrees
    await engine.reload(app.store, app.executor.unit_of_work)
    assert engine.check(bob, "billing.view", org_id=acme).allowed is False


async def test_an_older_snapshot_never_replaces_newer_state(app: IdentityApp) -> None:
    """Two reloads race: the one that read first finishes last and must not install its older
    snapshot over the newer one (which already holds a revoke)."""
    ada, acme, binding_id = await _granted(app)
    bob = next(
        m.user_id
        for m in (await app.read(lambda tx: app.store.list_memberships(tx, acme)))
        if m.user_id != ada
    )
    engine = app.identity.engine
    uow = app.executor.unit_of_work
    read_old = asyncio.Event()
    newer_installed = asyncio.Event()

    async def wait_for_newer() -> None:
        read_old.set()
        await newer_installed.wait()

    slow = asyncio.create_task(engine.reload(PausingStore(app.store, wait_for_newer), uow))
    await read_old.wait()
    await app.run("identity.access.revoke", {"binding_id": binding_id}, as_user(ada, acme))
    # forget the revoke applied at commit, so only the newer reload can carry it
    engine.put_binding(
        PolicyBinding(
            id=binding_id, org_id=acme, subject=bob, permission="billing.view", created_at=T0
        )
    )
    await engine.reload(app.store, uow)
    assert engine.check(bob, "billing.view", org_id=acme).allowed is False
    newer_installed.set()
    await slow
    assert engine.check(bob, "billing.view", org_id=acme).allowed is False


async def test_sql_snapshot_is_one_consistent_read(sql_kind: str, tmp_path: Path) -> None:
    """A revoke committed between the snapshot's queries is not half-seen: the snapshot holds
    the version it read and exactly the data of that version (one REPEATABLE READ / SQLite read
    transaction, not separate queries)."""
    from contractspec.identity.sql import SqlIdentityStore

    class Interleaved(SqlIdentityStore):
        hook: Callable[[], Awaitable[None]] | None = None

        async def version(self, tx: Transaction) -> int:
            found = await super().version(tx)
            hook, Interleaved.hook = Interleaved.hook, None
            if hook is not None:
                await hook()
            return found

    async with identity_app(sql_kind, tmp_path) as app:
        ada, acme, binding_id = await _granted(app)
        before = await app.read(app.store.version)
        store = Interleaved(app.backend.tables, model=app.identity.model)  # type: ignore[attr-defined]

        async def revoke() -> None:
            await app.run("identity.access.revoke", {"binding_id": binding_id}, as_user(ada, acme))

        Interleaved.hook = revoke
        snapshot = await app.read(store.snapshot)
        assert await app.read(app.store.version) == before + 1
        assert snapshot.version == before
        assert binding_id in [b.id for b in snapshot.bindings]
