"""One conformance suite for every `IdentityStore`: memory, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from identity_support import IdentityApp, identity_app

from contractspec.core import (
    ConflictError,
    HandlerContractError,
    NotFoundError,
    TenantScopeError,
    Transaction,
)
from contractspec.identity import (
    AccessModel,
    Condition,
    Effect,
    MembershipStatus,
    Org,
    OrgMembership,
    Permission,
    PolicyBinding,
    User,
    identity_version,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)

#: Stores check bindings against the access model: the suite's bindings name `deal.*`.
MODEL = AccessModel(permissions=[Permission(name="deal.read"), Permission(name="deal.write")])


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[IdentityApp]:
    """An identity app on `backend_kind` whose model declares the suite's permissions."""
    async with identity_app(backend_kind, tmp_path, model=MODEL) as built:
        yield built


def user(n: int, email: str | None = None) -> User:
    return User(id=f"u{n}", email=email or f"user{n}@example.com", name=f"User {n}", created_at=T0)


def org(n: int, name: str | None = None) -> Org:
    return Org(id=f"o{n}", name=name or f"Org {n}", slug=f"org-{n}", created_by="u1", created_at=T0)


def membership(
    org_id: str,
    user_id: str,
    role: str = "member",
    status: MembershipStatus = MembershipStatus.ACTIVE,
    minute: int = 0,
) -> OrgMembership:
    at = T0 + timedelta(minutes=minute)
    return OrgMembership(
        id=f"m-{org_id}-{user_id}",
        org_id=org_id,
        user_id=user_id,
        role=role,
        status=status,
        created_at=at,
        updated_at=at,
    )


def binding(
    id: str, org_id: str | None, subject: str, minute: int = 0, **kw: object
) -> PolicyBinding:
    data: dict[str, object] = {"permission": "deal.read"} if "role" not in kw else {}
    data.update(kw)
    return PolicyBinding(
        id=id,
        org_id=org_id,
        subject=subject,
        created_at=T0 + timedelta(minutes=minute),
        **data,  # type: ignore[arg-type]
    )


async def seed(app: IdentityApp) -> None:
    """Users u1..u4, orgs o1 and o2, memberships in both, and bindings in both plus platform."""

    async def fill(tx: Transaction) -> None:
        s = app.store
        for n in range(1, 5):
            await s.add_user(tx, user(n))
        await s.add_org(tx, org(1, "Zeta"))
        await s.add_org(tx, org(2, "Alpha"))
        await s.add_membership(tx, "o1", membership("o1", "u1", "owner", minute=0))
        await s.add_membership(tx, "o1", membership("o1", "u2", "admin", minute=1))
        await s.add_membership(
            tx, "o1", membership("o1", "u3", "member", MembershipStatus.INVITED, minute=2)
        )
        await s.add_membership(tx, "o2", membership("o2", "u4", "owner", minute=0))
        await s.add_membership(tx, "o2", membership("o2", "u2", "member", minute=3))
        await s.add_binding(tx, "o1", binding("b1", "o1", "u2", minute=1))
        await s.add_binding(tx, "o1", binding("b2", "o1", "u3", minute=2, role="admin"))
        await s.add_binding(tx, "o2", binding("b3", "o2", "u2", minute=0, effect=Effect.DENY))
        await s.add_binding(tx, None, binding("b4", None, "u1", permission="*"))

    await app.write(fill)


async def test_users_round_trip_and_email_lookup_ignores_case(app: IdentityApp) -> None:
    """A stored user reads back equal, by id and by email in any case."""
    await seed(app)
    got = await app.read(lambda tx: app.store.get_user(tx, "u2"))
    by_email = await app.read(lambda tx: app.store.get_user_by_email(tx, " USER2@Example.com "))
    missing = await app.read(lambda tx: app.store.get_user(tx, "nobody"))
    assert got == user(2)
    assert by_email == user(2)
    assert missing is None


async def test_duplicate_email_conflicts_and_the_transaction_stays_usable(app: IdentityApp) -> None:
    """A taken email raises ConflictError from the database, and the same transaction commits later writes."""
    await seed(app)

    async def both(tx: Transaction) -> str:
        with pytest.raises(ConflictError) as caught:
            await app.store.add_user(tx, user(9, email="USER1@example.com"))
        await app.store.add_user(tx, user(10))
        return str(caught.value.details.get("field"))

    field = await app.write(both)
    assert field == "email"
    assert await app.read(lambda tx: app.store.get_user(tx, "u10")) == user(10)
    assert await app.read(lambda tx: app.store.get_user(tx, "u9")) is None


async def test_duplicate_user_id_conflicts(app: IdentityApp) -> None:
    """A taken user id raises ConflictError naming the id field."""
    await seed(app)
    with pytest.raises(ConflictError) as caught:
        await app.write(lambda tx: app.store.add_user(tx, user(1, email="other@example.com")))
    assert caught.value.details == {"field": "id"}


async def test_orgs_add_update_and_slug_uniqueness(app: IdentityApp) -> None:
    """Org slugs are unique on insert and update; updates of unknown orgs raise NotFoundError."""
    await seed(app)
    with pytest.raises(ConflictError) as on_add:
        await app.write(
            lambda tx: app.store.add_org(tx, org(3).model_copy(update={"slug": "org-1"}))
        )
    with pytest.raises(ConflictError) as on_update:
        await app.write(
            lambda tx: app.store.update_org(tx, org(2).model_copy(update={"slug": "org-1"}))
        )
    with pytest.raises(NotFoundError):
        await app.write(lambda tx: app.store.update_org(tx, org(7)))
    renamed = org(2).model_copy(update={"name": "Beta", "slug": "beta"})
    await app.write(lambda tx: app.store.update_org(tx, renamed))
    assert on_add.value.details == {"field": "slug"}
    assert on_update.value.details == {"field": "slug"}
    assert await app.read(lambda tx: app.store.get_org(tx, "o2")) == renamed
    assert await app.read(lambda tx: app.store.lock_org(tx, "o1")) == org(1, "Zeta")


async def test_lock_org_of_unknown_org_raises_not_found(app: IdentityApp) -> None:
    """Locking an org that does not exist raises NotFoundError."""
    with pytest.raises(NotFoundError):
        await app.write(lambda tx: app.store.lock_org(tx, "nope"))


async def test_memberships_list_filter_and_order(app: IdentityApp) -> None:
    """Memberships list per org, filtered by role and status, ordered by creation then user id."""
    await seed(app)
    s = app.store
    all_o1 = await app.read(lambda tx: s.list_memberships(tx, "o1"))
    admins = await app.read(lambda tx: s.list_memberships(tx, "o1", role="admin"))
    invited = await app.read(
        lambda tx: s.list_memberships(tx, "o1", status=MembershipStatus.INVITED)
    )
    assert [m.user_id for m in all_o1] == ["u1", "u2", "u3"]
    assert admins == [membership("o1", "u2", "admin", minute=1)]
    assert [m.user_id for m in invited] == ["u3"]
    assert await app.read(lambda tx: s.get_membership(tx, "o2", "u2")) == membership(
        "o2", "u2", "member", minute=3
    )


async def test_one_membership_per_user_and_org(app: IdentityApp) -> None:
    """A second membership of the same user in the same org raises ConflictError."""
    await seed(app)
    dup = membership("o1", "u2", "member").model_copy(update={"id": "m-other"})
    with pytest.raises(ConflictError) as caught:
        await app.write(lambda tx: app.store.add_membership(tx, "o1", dup))
    assert caught.value.details == {"field": "user_id"}


async def test_membership_of_unknown_org_or_user_raises_not_found(app: IdentityApp) -> None:
    """Memberships need an existing org and user."""
    await seed(app)
    with pytest.raises(NotFoundError):
        await app.write(lambda tx: app.store.add_membership(tx, "o9", membership("o9", "u1")))
    with pytest.raises(NotFoundError):
        await app.write(lambda tx: app.store.add_membership(tx, "o1", membership("o1", "u9")))


async def test_update_and_delete_membership(app: IdentityApp) -> None:
    """Updates replace role and status; deletes report whether the membership existed."""
    await seed(app)
    s = app.store
    promoted = membership("o1", "u2", "owner", minute=1)
    await app.write(lambda tx: s.update_membership(tx, "o1", promoted))
    existed = await app.write(lambda tx: s.delete_membership(tx, "o1", "u3"))
    again = await app.write(lambda tx: s.delete_membership(tx, "o1", "u3"))
    assert await app.read(lambda tx: s.get_membership(tx, "o1", "u2")) == promoted
    assert (existed, again) == (True, False)
    with pytest.raises(NotFoundError):
        await app.write(lambda tx: s.update_membership(tx, "o1", membership("o1", "u4")))


async def test_bulk_status_and_delete_touch_only_the_scoped_org(app: IdentityApp) -> None:
    """Bulk updates and deletes count and change only rows of the given org."""
    await seed(app)
    s = app.store
    suspended = await app.write(
        lambda tx: s.set_membership_status(tx, "o1", ["u2", "u4", "u2"], MembershipStatus.SUSPENDED)
    )
    deleted = await app.write(lambda tx: s.delete_memberships(tx, "o2", ["u2", "u1"]))
    none = await app.write(lambda tx: s.delete_memberships(tx, "o2", []))
    assert (suspended, deleted, none) == (1, 1, 0)
    o1 = await app.read(lambda tx: s.list_memberships(tx, "o1"))
    o2 = await app.read(lambda tx: s.list_memberships(tx, "o2"))
    assert [(m.user_id, m.status.value) for m in o1] == [
        ("u1", "active"),
        ("u2", "suspended"),
        ("u3", "invited"),
    ]
    assert [m.user_id for m in o2] == ["u4"]


async def test_bindings_by_scope_subject_and_platform(app: IdentityApp) -> None:
    """Bindings are listed per org (or platform), ordered, and deleted one by one or per subject."""
    await seed(app)
    s = app.store
    o1 = await app.read(lambda tx: s.list_bindings(tx, "o1"))
    u3 = await app.read(lambda tx: s.list_bindings(tx, "o1", subject="u3"))
    platform = await app.read(lambda tx: s.list_bindings(tx, None))
    assert [b.id for b in o1] == ["b1", "b2"]
    assert u3 == [binding("b2", "o1", "u3", minute=2, role="admin")]
    assert [b.id for b in platform] == ["b4"]
    assert await app.read(lambda tx: s.get_binding(tx, None, "b4")) == platform[0]
    assert await app.write(lambda tx: s.delete_binding(tx, "o1", "b1")) is True
    assert await app.write(lambda tx: s.delete_binding(tx, "o1", "b1")) is False
    assert await app.write(lambda tx: s.delete_bindings(tx, "o1", subject="u3")) == 1
    assert await app.read(lambda tx: s.list_bindings(tx, "o1")) == []
    with pytest.raises(ConflictError):
        await app.write(lambda tx: s.add_binding(tx, "o2", binding("b3", "o2", "u1")))


async def test_binding_conditions_and_expiry_round_trip(app: IdentityApp) -> None:
    """Conditions (JSON) and expiry (UTC timestamp) read back equal."""
    await seed(app)
    rich = binding(
        "b9",
        "o1",
        "u2",
        permission="deal.*",
        resource_type="deal",
        resource_id="d1",
        conditions=(
            Condition(attribute="resource.amount", op="lt", value=100),
            Condition(attribute="subject.region", op="in", value=("eu", "us")),
            Condition(attribute="resource.owner_id", value_from="subject.id"),
        ),
        expires_at=datetime(2030, 1, 1, 12, tzinfo=UTC),
    )
    await app.write(lambda tx: app.store.add_binding(tx, "o1", rich))
    assert await app.read(lambda tx: app.store.get_binding(tx, "o1", "b9")) == rich


async def test_orgs_of_user_across_orgs_ordered_by_name(app: IdentityApp) -> None:
    """A user's orgs come with the membership, ordered by org name; no one else's rows."""
    await seed(app)
    pairs = await app.read(lambda tx: app.store.orgs_of_user(tx, "u2"))
    assert [(o.id, o.name, m.role) for o, m in pairs] == [
        ("o2", "Alpha", "member"),
        ("o1", "Zeta", "admin"),
    ]
    assert await app.read(lambda tx: app.store.orgs_of_user(tx, "u9")) == []


async def test_snapshot_returns_every_membership_and_binding(app: IdentityApp) -> None:
    """The engine snapshot holds all orgs' memberships and bindings, and the version they reflect."""
    await seed(app)
    snapshot = await app.read(app.store.snapshot)
    memberships, bindings = snapshot.memberships, snapshot.bindings
    assert snapshot.version == await app.read(app.store.version) == 1
    assert [(m.org_id, m.user_id) for m in memberships] == [
        ("o1", "u1"),
        ("o1", "u2"),
        ("o1", "u3"),
        ("o2", "u2"),
        ("o2", "u4"),
    ]
    assert [b.id for b in bindings] == ["b1", "b2", "b3", "b4"]


async def test_identity_version_bumps_once_per_committed_write_transaction(
    app: IdentityApp,
) -> None:
    """Every transaction writing memberships or bindings bumps the identity version once, in the
    same transaction: a rolled-back write bumps nothing, a user or org alone bumps nothing."""
    s = app.store
    assert await app.read(s.version) == 0
    await seed(app)  # one transaction, many writes
    assert await app.read(s.version) == 1
    seen: list[int | None] = []

    async def revoke(tx: Transaction) -> None:
        await s.delete_binding(tx, "o1", "b1")
        await s.delete_binding(tx, "o1", "b2")
        tx.on_commit(lambda: seen.append(identity_version(tx)))

    await app.write(revoke)
    assert seen == [2]
    assert await app.read(s.version) == 2

    async def fails(tx: Transaction) -> None:
        await s.delete_binding(tx, "o2", "b3")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await app.write(fails)
    assert await app.read(s.version) == 2
    assert "b3" in [b.id for b in (await app.read(s.snapshot)).bindings]
    await app.write(lambda tx: s.add_user(tx, user(9)))
    assert await app.read(s.version) == 2


async def test_rollback_undoes_every_write(app: IdentityApp) -> None:
    """Writes of a rolled-back transaction leave nothing behind."""
    await seed(app)
    s = app.store
    tx = await app.executor.unit_of_work.begin()
    await s.add_user(tx, user(7))
    await s.add_org(tx, org(7))
    await s.delete_membership(tx, "o1", "u2")
    await s.set_membership_status(tx, "o2", ["u4"], MembershipStatus.SUSPENDED)
    await s.delete_bindings(tx, "o1", subject="u2")
    await tx.rollback()
    assert await app.read(lambda tx: s.get_user(tx, "u7")) is None
    assert await app.read(lambda tx: s.get_org(tx, "o7")) is None
    assert await app.read(lambda tx: s.get_membership(tx, "o1", "u2")) == membership(
        "o1", "u2", "admin", minute=1
    )
    o2 = await app.read(lambda tx: s.get_membership(tx, "o2", "u4"))
    assert o2 is not None
    assert o2.status is MembershipStatus.ACTIVE
    assert [b.id for b in await app.read(lambda tx: s.list_bindings(tx, "o1"))] == ["b1", "b2"]


async def test_read_only_transactions_refuse_writes(app: IdentityApp) -> None:
    """Writing in a query's read-only transaction raises HandlerContractError."""
    with pytest.raises(HandlerContractError):
        await app.read(lambda tx: app.store.add_user(tx, user(1)))


async def test_tenant_data_needs_an_org_scope(app: IdentityApp) -> None:
    """Membership methods without an org_id raise TenantScopeError."""
    await seed(app)
    with pytest.raises(TenantScopeError):
        await app.read(lambda tx: app.store.list_memberships(tx, None))  # type: ignore[arg-type]
    with pytest.raises(TenantScopeError):
        await app.write(lambda tx: app.store.delete_memberships(tx, "", ["u1"]))
