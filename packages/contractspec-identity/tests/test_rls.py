"""PostgreSQL row-level security pack: forced policies, a non-owner role, tenant set per transaction."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from identity_support import IdentityApp, as_user, identity_app
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from contractspec.core import Actor, CallContext, ConfigurationError, Executor
from contractspec.core.sql import EntityTables, SqlBackend, SqlTransaction
from contractspec.core.testing import FakeClock, SequentialIds, postgres_dsn
from contractspec.identity import MembershipStatus
from contractspec.identity.rls import POLICY_NAME, TenantSettings, rls_policy_pack, set_tenant
from contractspec.identity.sql import SqlIdentityStore


@pytest.fixture
async def pg(tmp_path: Path) -> AsyncIterator[tuple[IdentityApp, str]]:
    """An identity app on a fresh PostgreSQL schema, the RLS pack applied, and a non-owner role."""
    if not postgres_dsn():
        import os

        if os.environ.get("CONTRACTSPEC_REQUIRE_POSTGRES") == "1":
            pytest.fail(
                "CONTRACTSPEC_REQUIRE_POSTGRES=1 but CONTRACTSPEC_TEST_POSTGRES_DSN is unset"
            )
        pytest.skip("PostgreSQL tests need CONTRACTSPEC_TEST_POSTGRES_DSN")
    role = f"cs_app_{uuid.uuid4().hex[:10]}"
    async with identity_app("postgres", tmp_path) as app:
        assert isinstance(app.backend, SqlBackend)
        engine = app.backend.engine
        async with engine.begin() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
            for statement in rls_policy_pack(app.registry, app.backend.tables):
                await conn.execute(text(statement))
            await conn.execute(text(f'CREATE ROLE "{role}" NOLOGIN'))
            await conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
            await conn.execute(
                text(
                    f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'
                )
            )
            await conn.execute(
                text(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"')
            )
        try:
            yield app, role
        finally:
            async with engine.begin() as conn:
                await conn.execute(text(f'DROP OWNED BY "{role}"'))
                await conn.execute(text(f'DROP ROLE "{role}"'))


async def two_orgs(app: IdentityApp) -> tuple[str, str, str, str]:
    """Org A (ada owner, bob member) and org B (zed owner, xi member); returns (a, b, ada, zed)."""
    ada = await app.user("ada@a.example")
    a = await app.org(ada, "A", "org-a")
    await app.member(a, ada, "bob@a.example")
    zed = await app.user("zed@b.example")
    b = await app.org(zed, "B", "org-b")
    await app.member(b, zed, "xi@b.example")
    await app.run(
        "identity.access.grant", {"subject": zed.id, "permission": "billing.view"}, as_user(zed, b)
    )
    return a.id, b.id, ada.id, zed.id


async def as_role(
    app: IdentityApp, role: str, org: str | None, user: str | None = None
) -> SqlTransaction:
    tx = await app.executor.unit_of_work.begin()
    assert isinstance(tx, SqlTransaction)
    await set_tenant(tx, org, user, role=role)
    return tx


def test_pack_forces_rls_on_tenant_tables_only() -> None:
    """The pack enables and forces RLS on memberships and bindings, with the own-memberships read policy."""
    from contractspec.core import SpecRegistry
    from contractspec.identity import register_identity

    registry = SpecRegistry()
    register_identity(registry)
    statements = rls_policy_pack(registry, EntityTables(registry))
    groups = [
        f'ALTER TABLE "{table}" {what} ROW LEVEL SECURITY'
        for table in ("identity_group", "identity_group_member")
        for what in ("ENABLE", "FORCE")
    ]
    assert [s for s in statements if "identity_group" in s and s.startswith("ALTER")] == groups
    statements = [s for s in statements if "identity_group" not in s]
    assert statements == [
        'ALTER TABLE "identity_membership" ENABLE ROW LEVEL SECURITY',
        'ALTER TABLE "identity_membership" FORCE ROW LEVEL SECURITY',
        f'DROP POLICY IF EXISTS {POLICY_NAME} ON "identity_membership"',
        f'CREATE POLICY {POLICY_NAME} ON "identity_membership" USING (org_id = '
        "current_setting('contractspec.org_id', true)) WITH CHECK (org_id = "
        "current_setting('contractspec.org_id', true))",
        f'DROP POLICY IF EXISTS {POLICY_NAME}_own_memberships ON "identity_membership"',
        f'CREATE POLICY {POLICY_NAME}_own_memberships ON "identity_membership" FOR SELECT USING '
        "(user_id = current_setting('contractspec.user_id', true))",
        'ALTER TABLE "identity_policy_binding" ENABLE ROW LEVEL SECURITY',
        'ALTER TABLE "identity_policy_binding" FORCE ROW LEVEL SECURITY',
        f'DROP POLICY IF EXISTS {POLICY_NAME} ON "identity_policy_binding"',
        f'CREATE POLICY {POLICY_NAME} ON "identity_policy_binding" USING (org_id = '
        "current_setting('contractspec.org_id', true)) WITH CHECK (org_id = "
        "current_setting('contractspec.org_id', true))",
    ]
    with pytest.raises(ConfigurationError):
        rls_policy_pack(registry, EntityTables(registry), role="app; DROP TABLE x")


async def test_rows_of_other_tenants_are_invisible_and_untouchable(
    pg: tuple[IdentityApp, str],
) -> None:
    """As the app role in org A: reads, bulk updates and deletes see only A; writing B's rows fails."""
    app, role = pg
    a, b, ada, _zed = await two_orgs(app)
    store = app.store
    tx = await as_role(app, role, a)
    try:
        assert [m.org_id for m in await store.list_memberships(tx, b)] == []
        assert await store.get_membership(tx, b, _zed) is None
        # a bulk UPDATE with no org filter at all still only reaches A's rows
        t = app.backend.tables[app.registry.get_entity("identity.membership")].table  # type: ignore[attr-defined]
        updated = await tx.execute(t.update().values(role="owner"), write=True)
        assert updated.rowcount == 2  # type: ignore[attr-defined]
        deleted = await tx.execute(text('DELETE FROM "identity_policy_binding"'), write=True)
        assert deleted.rowcount == 0  # type: ignore[attr-defined]
    finally:
        await tx.rollback()
    tx = await as_role(app, role, a)
    try:
        with pytest.raises(ProgrammingError, match="row-level security"):
            await tx.execute(
                text(
                    "INSERT INTO identity_membership (org_id, id, user_id, role, status, created_at, updated_at)"
                    " VALUES (:b, 'evil', :ada, 'owner', 'active', now(), now())"
                ),
                {"b": b, "ada": ada},
            )
    finally:
        await tx.rollback()
    snapshot = await app.read(store.snapshot)
    memberships, bindings = snapshot.memberships, snapshot.bindings
    assert sorted((m.org_id == b, m.role) for m in memberships if m.org_id == b) == [
        (True, "member"),
        (True, "owner"),
    ]
    assert [x.org_id for x in bindings] == [b]


async def test_without_a_tenant_nothing_is_visible(pg: tuple[IdentityApp, str]) -> None:
    """No tenant set means no rows (fail closed); a user still sees their own memberships."""
    app, role = pg
    _a, _b, ada, _zed = await two_orgs(app)
    tx = await as_role(app, role, None)
    try:
        count = await tx.execute(text("SELECT count(*) FROM identity_membership"))
        assert count.scalar_one() == 0
    finally:
        await tx.rollback()
    tx = await as_role(app, role, None, ada)
    try:
        mine = await app.store.orgs_of_user(tx, ada)
        assert [(o.name, m.role) for o, m in mine] == [("A", "owner")]
    finally:
        await tx.rollback()


async def test_the_tenant_never_outlives_its_transaction_on_a_pooled_connection(
    pg: tuple[IdentityApp, str],
) -> None:
    """After commit, the same pooled connection carries no tenant and no role into the next transaction."""
    app, _role = pg
    a, *_ = await two_orgs(app)
    engine = app.backend.engine  # type: ignore[attr-defined]
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        first = id(raw.driver_connection)
        async with conn.begin():
            await conn.execute(text("SELECT set_config('contractspec.org_id', :a, true)"), {"a": a})
            inside = (
                await conn.execute(text("SELECT current_setting('contractspec.org_id', true)"))
            ).scalar_one()
        async with conn.begin():
            after = (
                await conn.execute(text("SELECT current_setting('contractspec.org_id', true)"))
            ).scalar_one()
        assert id((await conn.get_raw_connection()).driver_connection) == first
    assert inside == a
    assert after in (None, "")


async def test_operations_run_under_rls_with_the_tenant_middleware(
    pg: tuple[IdentityApp, str],
) -> None:
    """Through the executor with TenantSettings, A's owner manages A, and sees nothing of B."""
    app, role = pg
    a, b, ada, zed = await two_orgs(app)
    executor = Executor(
        app.registry,
        backend=app.backend,
        policy=app.identity.engine,
        clock=FakeClock(),
        ids=SequentialIds("rls"),
        middleware=[TenantSettings(role=role)],
    )
    me = CallContext(actor=Actor.user(ada), org_id=a)
    listed = await executor.execute("identity.member.list", {}, me)
    assert {m.org_id for m in listed.members} == {a}  # type: ignore[attr-defined]
    invited = await executor.execute("identity.member.invite", {"email": "new@a.example"}, me)
    assert invited.status is MembershipStatus.INVITED  # type: ignore[attr-defined]
    mine = await executor.execute("identity.org.list_mine", {}, CallContext(actor=Actor.user(zed)))
    assert [o.org.id for o in mine.orgs] == [b]  # type: ignore[attr-defined]
    revoked = await executor.execute(
        "identity.access.list", {}, CallContext(actor=Actor.user(zed), org_id=b)
    )
    assert len(revoked.bindings) == 1  # type: ignore[attr-defined]
    assert isinstance(app.store, SqlIdentityStore)
