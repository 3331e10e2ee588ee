"""Test support: an identity app on any backend, and helpers to seed it through its operations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from attrs import define

from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    Executor,
    MemoryBackend,
    SpecRegistry,
)
from contractspec.core.testing import FakeClock, SequentialIds, temporary_sql_engine
from contractspec.identity import (
    AccessModel,
    Identity,
    IdentityStore,
    MemoryIdentityStore,
    Org,
    OrgMembership,
    User,
    register_identity,
)

SYSTEM = CallContext(actor=Actor.system())


@define
class IdentityApp:
    """Everything a test needs: the executor, the identity facade, its store and the backend."""

    registry: SpecRegistry
    identity: Identity
    executor: Executor
    backend: Backend
    clock: FakeClock
    kind: str

    @property
    def store(self) -> IdentityStore:
        return self.identity.store

    async def run(self, name: str, data: dict[str, Any], ctx: CallContext) -> Any:
        return await self.executor.execute(name, data, ctx)

    async def user(self, email: str, name: str | None = None) -> User:
        out = await self.run("identity.user.create", {"email": email, "name": name}, SYSTEM)
        assert isinstance(out, User)
        return out

    async def org(self, owner: User, name: str, slug: str | None = None) -> Org:
        data: dict[str, Any] = {"name": name}
        if slug:
            data["slug"] = slug
        out = await self.run("identity.org.create", data, CallContext(actor=Actor.user(owner.id)))
        assert isinstance(out, Org)
        return out

    async def member(self, org: Org, inviter: User, email: str, role: str = "member") -> User:
        """Invite `email` with `role` and accept: an active member."""
        m = await self.run(
            "identity.member.invite", {"email": email, "role": role}, as_user(inviter, org)
        )
        assert isinstance(m, OrgMembership)
        await self.run(
            "identity.invitation.accept",
            {},
            CallContext(actor=Actor.user(m.user_id), org_id=org.id),
        )
        user = await self.read(lambda tx: self.store.get_user(tx, m.user_id))
        assert isinstance(user, User)
        return user

    async def read(self, fn: Any) -> Any:
        """Run `await fn(tx)` in a read-only transaction."""
        tx = await self.executor.unit_of_work.begin(readonly=True)
        try:
            return await fn(tx)
        finally:
            await tx.rollback()

    async def write(self, fn: Any) -> Any:
        """Run `await fn(tx)` in a transaction and commit it."""
        tx = await self.executor.unit_of_work.begin()
        try:
            result = await fn(tx)
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
        return result


def as_user(user: User | str, org: Org | str | None = None) -> CallContext:
    """The call context of `user` acting in `org`."""
    uid = user if isinstance(user, str) else user.id
    oid = org.id if isinstance(org, Org) else org
    return CallContext(actor=Actor.user(uid), org_id=oid)


@asynccontextmanager
async def identity_app(
    kind: str, tmp_path: Path, *, model: AccessModel | None = None
) -> AsyncIterator[IdentityApp]:
    """An identity app on `memory`, `sqlite` or `postgres`, with a fake clock and sequential ids."""
    registry = SpecRegistry()
    clock = FakeClock()
    if kind == "memory":
        identity = register_identity(registry, MemoryIdentityStore(), model=model)
        backend: Backend = MemoryBackend()
        executor = Executor(
            registry, backend=backend, policy=identity.engine, clock=clock, ids=SequentialIds()
        )
        yield IdentityApp(registry, identity, executor, backend, clock, kind)
        return
    from contractspec.core.sql import SqlBackend
    from contractspec.identity.sql import SqlIdentityStore

    async with temporary_sql_engine(kind, tmp_path) as engine:
        identity = register_identity(registry, model=model)
        sql_backend = SqlBackend(engine, registry)
        identity.store = SqlIdentityStore(sql_backend.tables)
        await sql_backend.create_all()
        executor = Executor(
            registry, backend=sql_backend, policy=identity.engine, clock=clock, ids=SequentialIds()
        )
        yield IdentityApp(registry, identity, executor, sql_backend, clock, kind)
