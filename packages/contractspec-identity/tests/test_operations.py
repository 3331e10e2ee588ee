"""Identity operations through the executor on memory, SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identity_support import SYSTEM, IdentityApp, as_user

from contractspec.core import (
    Actor,
    CallContext,
    ConflictError,
    NotFoundError,
    PolicyDeniedError,
    SpecValidationError,
    TenantScopeError,
)
from contractspec.identity import MembershipStatus, Org, OrgMembership, PolicyEngine, User


def events(app: IdentityApp) -> list[tuple[str, dict[str, Any]]]:
    """Committed events as (name, payload) pairs, from the memory outbox or the SQL outbox."""
    outbox = app.backend.events
    if hasattr(outbox, "events"):
        return [(e.name, e.payload_json()) for e in outbox.events]
    raise AssertionError("use sql_events() on SQL backends")


async def event_names(app: IdentityApp) -> list[str]:
    """Names of committed events in order, on any backend."""
    if app.kind == "memory":
        return [name for name, _ in events(app)]
    from sqlalchemy import select

    from contractspec.core.sql import outbox_table

    tx = await app.executor.unit_of_work.begin(readonly=True)
    try:
        result = await tx.execute(select(outbox_table.c.name).order_by(outbox_table.c.position))  # type: ignore[attr-defined]
        return [row[0] for row in result]
    finally:
        await tx.rollback()


async def founded(app: IdentityApp) -> tuple[User, Org]:
    ada = await app.user("ada@example.com", "Ada")
    return ada, await app.org(ada, "Acme, Inc.")


async def test_creating_an_org_makes_the_creator_its_owner(app: IdentityApp) -> None:
    """The creator becomes the active owner; org.created and member.added are emitted in order."""
    ada, acme = await founded(app)
    mine = await app.run("identity.org.list_mine", {}, as_user(ada))
    assert acme.slug == "acme-inc"
    assert [(o.org.id, o.role, o.status) for o in mine.orgs] == [
        (acme.id, "owner", MembershipStatus.ACTIVE)
    ]
    assert await event_names(app) == ["user.created", "org.created", "member.added"]
    assert app.identity.engine.role_of(acme.id, ada.id) == "owner"


async def test_system_actors_name_the_owner_and_users_cannot_create_users(app: IdentityApp) -> None:
    """System actors create orgs for a named owner; a user actor may not create users."""
    ada = await app.user("ada@example.com")
    org = await app.run("identity.org.create", {"name": "Ops", "owner_id": ada.id}, SYSTEM)
    assert org.created_by == ada.id
    with pytest.raises(SpecValidationError) as missing:
        await app.run("identity.org.create", {"name": "Ops 2"}, SYSTEM)
    assert missing.value.details["field"] == "owner_id"
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.user.create", {"email": "x@example.com"}, as_user(ada))
    with pytest.raises(PolicyDeniedError):
        await app.run(
            "identity.org.create", {"name": "Theirs", "owner_id": "someone"}, as_user(ada)
        )


async def test_duplicate_email_and_slug_conflict(app: IdentityApp) -> None:
    """Emails (case-insensitively) and slugs are unique."""
    ada, _ = await founded(app)
    with pytest.raises(ConflictError):
        await app.user("ADA@example.com")
    with pytest.raises(ConflictError):
        await app.org(ada, "Acme Inc")


async def test_invite_then_accept(app: IdentityApp) -> None:
    """An invitation creates an invited membership (and the user); accepting activates it."""
    ada, acme = await founded(app)
    invited = await app.run(
        "identity.member.invite", {"email": "Bob@Example.com", "role": "admin"}, as_user(ada, acme)
    )
    assert (invited.role, invited.status, invited.invited_by) == (
        "admin",
        MembershipStatus.INVITED,
        ada.id,
    )
    bob = as_user(invited.user_id, acme)
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.member.list", {}, bob)
    accepted = await app.run("identity.invitation.accept", {}, bob)
    assert accepted.status is MembershipStatus.ACTIVE
    listed = await app.run("identity.member.list", {}, bob)
    assert [(m.user_id, m.role) for m in listed.members] == [
        (ada.id, "owner"),
        (invited.user_id, "admin"),
    ]
    assert await event_names(app) == [
        "user.created", "org.created", "member.added", "user.created", "member.invited", "member.added",
    ]  # fmt: skip
    with pytest.raises(NotFoundError):
        await app.run("identity.invitation.accept", {}, bob)


async def test_invite_existing_user_and_duplicate_invitation(app: IdentityApp) -> None:
    """Inviting a known email reuses the user; inviting a member again conflicts."""
    ada, acme = await founded(app)
    bob = await app.user("bob@example.com")
    invited = await app.run(
        "identity.member.invite", {"email": "bob@example.com"}, as_user(ada, acme)
    )
    assert (invited.user_id, invited.role) == (bob.id, "member")
    with pytest.raises(ConflictError):
        await app.run("identity.member.invite", {"email": "bob@example.com"}, as_user(ada, acme))


async def test_nobody_grants_a_role_above_their_own(app: IdentityApp) -> None:
    """Admins cannot invite owners, promote to owner, or change an owner's role."""
    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com", "admin")
    carol = await app.member(acme, ada, "carol@example.com", "member")
    as_bob = as_user(bob, acme)
    with pytest.raises(PolicyDeniedError) as invite:
        await app.run(
            "identity.member.invite", {"email": "eve@example.com", "role": "owner"}, as_bob
        )
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.member.change_role", {"user_id": carol.id, "role": "owner"}, as_bob)
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.member.change_role", {"user_id": ada.id, "role": "member"}, as_bob)
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.member.remove", {"user_id": ada.id}, as_bob)
    promoted = await app.run(
        "identity.member.change_role", {"user_id": carol.id, "role": "admin"}, as_bob
    )
    assert promoted.role == "admin"
    assert invite.value.reason == (
        "invite: role 'owner' ranks above your role 'admin'; nobody grants or changes a role above "
        "their own"
    )


async def test_members_without_permission_are_denied(app: IdentityApp) -> None:
    """Plain members cannot invite, manage members or grant access."""
    ada, acme = await founded(app)
    carol = await app.member(acme, ada, "carol@example.com")
    as_carol = as_user(carol, acme)
    for name, data in [
        ("identity.member.invite", {"email": "x@example.com"}),
        ("identity.member.change_role", {"user_id": ada.id, "role": "member"}),
        ("identity.member.remove", {"user_id": ada.id}),
        ("identity.access.grant", {"subject": carol.id, "permission": "project.view"}),
        ("identity.org.update", {"name": "Mine"}),
    ]:
        with pytest.raises(PolicyDeniedError) as caught:
            await app.run(name, data, as_carol)
        assert "role 'member' does not grant" in caught.value.reason


async def test_an_org_always_keeps_an_owner(app: IdentityApp) -> None:
    """The last active owner cannot be demoted, suspended, removed or leave."""
    ada, acme = await founded(app)
    me = as_user(ada, acme)
    for name, data in [
        ("identity.member.change_role", {"user_id": ada.id, "role": "admin"}),
        ("identity.member.suspend", {"user_id": ada.id}),
        ("identity.member.remove", {"user_id": ada.id}),
        ("identity.org.leave", {}),
    ]:
        with pytest.raises(ConflictError) as caught:
            await app.run(name, data, me)
        assert caught.value.details["invariant"] == "org_keeps_an_owner"
    assert app.identity.engine.role_of(acme.id, ada.id) == "owner"
    bob = await app.member(acme, ada, "bob@example.com", "owner")
    left = await app.run("identity.org.leave", {}, me)
    assert (left.user_id, left.role) == (ada.id, "owner")
    assert app.identity.engine.role_of(acme.id, ada.id) is None
    assert app.identity.engine.role_of(acme.id, bob.id) == "owner"


async def test_transfer_ownership(app: IdentityApp) -> None:
    """The owner hands the org to an active member and steps down to admin."""
    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com")
    out = await app.run("identity.org.transfer_ownership", {"user_id": bob.id}, as_user(ada, acme))
    assert (out.new_owner.user_id, out.new_owner.role) == (bob.id, "owner")
    assert (out.previous_owner.user_id, out.previous_owner.role) == (ada.id, "admin")
    assert app.identity.engine.role_of(acme.id, ada.id) == "admin"
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.org.transfer_ownership", {"user_id": ada.id}, as_user(ada, acme))
    names = await event_names(app)
    assert names[-2:] == ["role.assigned", "role.assigned"]


async def test_remove_member_removes_their_bindings(app: IdentityApp) -> None:
    """Removing a member deletes their bindings in the org and emits member.removed."""
    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com")
    me = as_user(ada, acme)
    await app.run("identity.access.grant", {"subject": bob.id, "permission": "billing.view"}, me)
    assert app.identity.engine.check(bob.id, "billing.view", org_id=acme.id).allowed is True
    out = await app.run("identity.member.remove", {"user_id": bob.id}, me)
    assert (out.user_id, out.bindings_removed) == (bob.id, 1)
    assert app.identity.engine.check(bob.id, "billing.view", org_id=acme.id).allowed is False
    assert app.identity.engine.size == (1, 0)
    listed = await app.run("identity.access.list", {}, me)
    assert listed.bindings == []
    assert (await event_names(app))[-1] == "member.removed"


async def test_suspend_and_reactivate(app: IdentityApp) -> None:
    """Suspended members keep their membership but may not act in the org until reactivated."""
    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com", "admin")
    me = as_user(ada, acme)
    await app.run("identity.member.suspend", {"user_id": bob.id}, me)
    assert app.identity.engine.is_member(Actor.user(bob.id), acme.id) is False
    with pytest.raises(PolicyDeniedError) as caught:
        await app.run("identity.member.list", {}, as_user(bob, acme))
    assert caught.value.reason == f"not a member of org {acme.id!r}"
    assert app.identity.engine.check(bob.id, "member.view", org_id=acme.id).reason == (
        f"the membership of {bob.id!r} in org {acme.id!r} is suspended, so it grants nothing "
        "(deny by default)"
    )
    await app.run("identity.member.reactivate", {"user_id": bob.id}, me)
    assert len((await app.run("identity.member.list", {}, as_user(bob, acme))).members) == 2


async def test_grants_never_exceed_what_the_granter_holds(app: IdentityApp) -> None:
    """Admins grant only permissions and roles they hold; grants and revokes reach the engine on commit."""
    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com", "admin")
    carol = await app.member(acme, ada, "carol@example.com")
    as_bob = as_user(bob, acme)
    with pytest.raises(PolicyDeniedError):
        await app.run(
            "identity.access.grant", {"subject": carol.id, "permission": "billing.manage"}, as_bob
        )
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.access.grant", {"subject": carol.id, "role": "owner"}, as_bob)
    granted = await app.run(
        "identity.access.grant",
        {
            "subject": carol.id,
            "permission": "project.manage",
            "resource_type": "project",
            "resource_id": "p1",
        },
        as_bob,
    )
    engine = app.identity.engine
    assert engine.check(
        carol.id, "project.manage", org_id=acme.id, resource_type="project", resource_id="p1"
    ).allowed
    assert not engine.check(
        carol.id, "project.manage", org_id=acme.id, resource_type="project", resource_id="p2"
    ).allowed
    check = await app.run(
        "identity.permission.check",
        {"permission": "project.manage", "resource_type": "project", "resource_id": "p1"},
        as_user(carol, acme),
    )
    assert (check.allowed, check.matched_rule) == (True, f"binding:{granted.id}")
    revoked = await app.run("identity.access.revoke", {"binding_id": granted.id}, as_bob)
    assert revoked.revoked is True
    assert not engine.check(
        carol.id, "project.manage", org_id=acme.id, resource_type="project", resource_id="p1"
    ).allowed
    names = await event_names(app)
    assert names[-2:] == ["access.granted", "access.revoked"]


async def test_checking_another_users_permission_needs_member_view(app: IdentityApp) -> None:
    """Members may check themselves and others (member.view); outsiders may not even ask."""
    ada, acme = await founded(app)
    outsider = await app.user("eve@example.com")
    other = await app.run(
        "identity.permission.check",
        {"permission": "org.manage", "user_id": ada.id},
        as_user(ada, acme),
    )
    assert (other.allowed, other.matched_rule) == (True, "role:owner:*")
    with pytest.raises(PolicyDeniedError):
        await app.run(
            "identity.permission.check",
            {"permission": "org.manage", "user_id": ada.id},
            as_user(outsider, acme),
        )
    with pytest.raises(PolicyDeniedError) as caught:
        await app.run(
            "identity.permission.check", {"permission": "org.manage"}, as_user(outsider, acme)
        )
    assert caught.value.reason == f"not a member of org {acme.id!r}"


async def test_failed_calls_leave_the_engine_unchanged(app: IdentityApp) -> None:
    """A call that fails after staging changes never reaches the engine (it syncs on commit)."""
    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com")
    with pytest.raises(SpecValidationError):
        await app.run(
            "identity.member.change_role", {"user_id": bob.id, "role": "wizard"}, as_user(ada, acme)
        )
    assert app.identity.engine.role_of(acme.id, bob.id) == "member"


async def test_reloading_the_engine_from_the_store_gives_the_same_decisions(
    app: IdentityApp,
) -> None:
    """A fresh engine filled from the store decides like the one the operations kept in sync."""
    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com", "admin")
    await app.run(
        "identity.access.grant",
        {"subject": bob.id, "permission": "billing.view"},
        as_user(ada, acme),
    )
    fresh = PolicyEngine(app.identity.model)
    await fresh.reload(app.store, app.executor.unit_of_work)
    live = app.identity.engine
    for user in (ada.id, bob.id, "nobody"):
        for perm in ("billing.view", "billing.manage", "member.invite", "org.transfer"):
            assert fresh.check(user, perm, org_id=acme.id) == live.check(user, perm, org_id=acme.id)
    assert fresh.size == live.size == (2, 1)


async def test_update_org_and_idempotent_creation(app: IdentityApp) -> None:
    """Owners rename their org; org creation with an idempotency key replays."""
    ada, acme = await founded(app)
    renamed = await app.run(
        "identity.org.update", {"name": "Acme Corp", "slug": "acme"}, as_user(ada, acme)
    )
    assert (renamed.name, renamed.slug) == ("Acme Corp", "acme")
    ctx = CallContext(actor=Actor.user(ada.id), idempotency_key="k1")
    first = await app.run("identity.org.create", {"name": "Beta"}, ctx)
    second = await app.run("identity.org.create", {"name": "Beta"}, ctx)
    assert first == second
    mine = await app.run("identity.org.list_mine", {}, as_user(ada))
    assert [o.org.name for o in mine.orgs] == ["Acme Corp", "Beta"]


async def test_tenant_operations_need_an_org(app: IdentityApp) -> None:
    """Tenant operations without an org_id in the context are refused."""
    ada, _ = await founded(app)
    with pytest.raises(PolicyDeniedError):
        await app.run("identity.member.list", {}, as_user(ada))
    with pytest.raises(TenantScopeError):
        await app.run("identity.invitation.accept", {}, as_user(ada))


junk = st.one_of(
    st.none(), st.integers(), st.text(max_size=30), st.lists(st.integers(), max_size=2)
)


@pytest.mark.parametrize("backend_kind", ["memory"], indirect=True)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(email=junk, role=junk)
async def test_bad_invitations_are_validation_errors(
    app: IdentityApp, email: Any, role: Any
) -> None:
    """Malformed invitation input raises SpecValidationError naming the field, never reaching the handler."""
    if isinstance(email, str) and "@" in email:
        email = "no-at-sign"
    ada = await app.read(lambda tx: app.store.get_user_by_email(tx, "ada@example.com"))
    if ada is None:
        ada, _ = await founded(app)
    acme_id = (await app.run("identity.org.list_mine", {}, as_user(ada))).orgs[0].org.id
    with pytest.raises(SpecValidationError) as caught:
        await app.run(
            "identity.member.invite", {"email": email, "role": role}, as_user(ada, acme_id)
        )
    assert "email" in {e["field"] for e in caught.value.errors}


def test_membership_roles_must_be_role_names() -> None:
    """A membership role must be a lowercase role name."""
    with pytest.raises(ValueError):
        OrgMembership.model_validate(
            {
                "id": "m",
                "org_id": "o",
                "user_id": "u",
                "role": "Bad Role",
                "status": "active",
                "created_at": "2024-01-01T00:00:00Z",
                "updated_at": "2024-01-01T00:00:00Z",
            }
        )


async def test_concurrent_departures_of_the_last_two_owners_leave_one(app: IdentityApp) -> None:
    """Two owners leaving at once: the org lock serialises them, exactly one leaves, one owner stays."""
    import asyncio

    ada, acme = await founded(app)
    bob = await app.member(acme, ada, "bob@example.com", "owner")
    results = await asyncio.gather(
        app.run("identity.org.leave", {}, as_user(ada, acme)),
        app.run("identity.org.leave", {}, as_user(bob, acme)),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "RemovedMember"]
    owners = await app.read(
        lambda tx: app.store.list_memberships(
            tx, acme.id, role="owner", status=MembershipStatus.ACTIVE
        )
    )
    assert len(owners) == 1
    assert app.identity.engine.role_of(acme.id, owners[0].user_id) == "owner"
