"""Cross-tenant matrix: from org A, read, update, delete and list org B's data through every store
method and every operation; nothing of B leaks and nothing of B changes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from identity_support import IdentityApp, as_user

from contractspec.core import (
    ContractSpecError,
    NotFoundError,
    PolicyDeniedError,
    TenantScopeError,
    Transaction,
)
from contractspec.identity import (
    Effect,
    MembershipStatus,
    Org,
    OrgMembership,
    PolicyBinding,
    User,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)


class World:
    """Org A (ada owner, bob admin, carol member) and org B (zed owner, yan admin, xi member)."""

    a: Org
    b: Org
    ada: User
    bob: User
    carol: User
    zed: User
    yan: User
    xi: User
    b_binding: PolicyBinding


async def build(app: IdentityApp) -> World:
    w = World()
    w.ada = await app.user("ada@a.example")
    w.a = await app.org(w.ada, "A", "org-a")
    w.bob = await app.member(w.a, w.ada, "bob@a.example", "admin")
    w.carol = await app.member(w.a, w.ada, "carol@a.example", "member")
    await app.run(
        "identity.access.grant",
        {"subject": w.carol.id, "permission": "billing.view"},
        as_user(w.ada, w.a),
    )
    w.zed = await app.user("zed@b.example")
    w.b = await app.org(w.zed, "B", "org-b")
    w.yan = await app.member(w.b, w.zed, "yan@b.example", "admin")
    w.xi = await app.member(w.b, w.zed, "xi@b.example", "member")
    w.b_binding = await app.run(
        "identity.access.grant",
        {"subject": w.xi.id, "permission": "project.manage", "effect": "allow"},
        as_user(w.zed, w.b),
    )
    await app.run(
        "identity.access.grant",
        {"subject": w.yan.id, "permission": "billing.view", "effect": Effect.DENY.value},
        as_user(w.zed, w.b),
    )
    return w


async def state_of(app: IdentityApp, org: Org) -> dict[str, Any]:
    """Everything the store holds for one org, as JSON."""

    async def read(tx: Transaction) -> dict[str, Any]:
        s = app.store
        got = await s.get_org(tx, org.id)
        return {
            "org": got.model_dump(mode="json") if got else None,
            "memberships": [
                m.model_dump(mode="json") for m in await s.list_memberships(tx, org.id)
            ],
            "bindings": [b.model_dump(mode="json") for b in await s.list_bindings(tx, org.id)],
        }

    return await app.read(read)


def decisions_of(app: IdentityApp, w: World) -> list[bool]:
    engine = app.identity.engine
    return [
        engine.check(u.id, p, org_id=w.b.id).allowed
        for u in (w.zed, w.yan, w.xi, w.ada)
        for p in ("org.manage", "member.invite", "member.view", "billing.view", "project.manage")
    ]


# -- store methods, scoped to A, aimed at B's records -------------------------------------------------


def store_attacks(w: World) -> list[tuple[str, Callable[[Any, Transaction], Awaitable[Any]], Any]]:
    """(name, call(store, tx), expected result or exception type)."""
    a, b = w.a.id, w.b.id
    xi_in_b = OrgMembership(
        id="m-evil", org_id=b, user_id=w.xi.id, role="owner", status=MembershipStatus.ACTIVE,
        created_at=T0, updated_at=T0,
    )  # fmt: skip
    xi_in_a = xi_in_b.model_copy(update={"org_id": a})
    evil_binding = PolicyBinding(
        id="b-evil", org_id=b, subject=w.ada.id, role="owner", created_at=T0
    )
    return [
        ("get_membership", lambda s, tx: s.get_membership(tx, a, w.xi.id), None),
        ("list_memberships", lambda s, tx: s.list_memberships(tx, a, role="admin"), "only-a"),
        ("add_membership", lambda s, tx: s.add_membership(tx, a, xi_in_b), TenantScopeError),
        ("update_membership", lambda s, tx: s.update_membership(tx, a, xi_in_b), TenantScopeError),
        (
            "update_membership_absent",
            lambda s, tx: s.update_membership(tx, a, xi_in_a),
            NotFoundError,
        ),
        ("delete_membership", lambda s, tx: s.delete_membership(tx, a, w.xi.id), False),
        (
            "set_membership_status",
            lambda s, tx: s.set_membership_status(
                tx, a, [w.zed.id, w.yan.id, w.xi.id], MembershipStatus.SUSPENDED
            ),
            0,
        ),
        (
            "delete_memberships",
            lambda s, tx: s.delete_memberships(tx, a, [w.zed.id, w.yan.id, w.xi.id]),
            0,
        ),
        ("get_binding", lambda s, tx: s.get_binding(tx, a, w.b_binding.id), None),
        ("list_bindings", lambda s, tx: s.list_bindings(tx, a, subject=w.xi.id), []),
        ("add_binding", lambda s, tx: s.add_binding(tx, a, evil_binding), TenantScopeError),
        ("delete_binding", lambda s, tx: s.delete_binding(tx, a, w.b_binding.id), False),
        ("delete_bindings", lambda s, tx: s.delete_bindings(tx, a, subject=w.xi.id), 0),
        ("orgs_of_user", lambda s, tx: s.orgs_of_user(tx, w.ada.id), "only-a"),
    ]


async def test_store_methods_never_reach_another_org(app: IdentityApp) -> None:
    """Every tenant method of the store, scoped to A and aimed at B, returns nothing and changes nothing."""
    w = await build(app)
    before = await state_of(app, w.b)
    a_before = await state_of(app, w.a)
    for name, attack, expected in store_attacks(w):
        tx = await app.executor.unit_of_work.begin()
        try:
            if isinstance(expected, type):
                with pytest.raises(expected):
                    await attack(app.store, tx)
            else:
                result = await attack(app.store, tx)
                if expected == "only-a":
                    orgs = {getattr(r, "org_id", None) or r[0].id for r in result}
                    assert orgs <= {w.a.id}, name
                else:
                    assert result == expected, name
            await tx.commit()
        except BaseException:
            await tx.rollback()
            raise
    assert await state_of(app, w.b) == before
    assert await state_of(app, w.a) == a_before


# -- operations, from A's admins, aimed at B ------------------------------------------------------------


def operation_attacks(w: World) -> list[tuple[str, dict[str, Any], str, Any]]:
    """(operation, input, who: 'a' = A's owner acting in A, 'a-in-b' = A's owner acting in B, expected)."""
    xi, zed = w.xi.id, w.zed.id
    return [
        ("identity.member.change_role", {"user_id": xi, "role": "admin"}, "a", NotFoundError),
        ("identity.member.remove", {"user_id": xi}, "a", NotFoundError),
        ("identity.member.suspend", {"user_id": zed}, "a", NotFoundError),
        ("identity.member.reactivate", {"user_id": xi}, "a", NotFoundError),
        ("identity.org.transfer_ownership", {"user_id": xi}, "a", NotFoundError),
        ("identity.access.revoke", {"binding_id": w.b_binding.id}, "a", {"revoked": False}),
        ("identity.access.list", {"subject": xi}, "a", {"bindings": []}),
        ("identity.member.list", {}, "a", "only-a"),
        ("identity.org.update", {"name": "Pwned"}, "a", "a-renamed"),
        ("identity.org.list_mine", {}, "a", "only-a"),
        ("identity.member.list", {}, "a-in-b", PolicyDeniedError),
        (
            "identity.member.invite",
            {"email": "spy@a.example", "role": "owner"},
            "a-in-b",
            PolicyDeniedError,
        ),
        (
            "identity.member.change_role",
            {"user_id": xi, "role": "owner"},
            "a-in-b",
            PolicyDeniedError,
        ),
        ("identity.member.remove", {"user_id": zed}, "a-in-b", PolicyDeniedError),
        ("identity.member.suspend", {"user_id": zed}, "a-in-b", PolicyDeniedError),
        ("identity.member.reactivate", {"user_id": xi}, "a-in-b", PolicyDeniedError),
        ("identity.org.transfer_ownership", {"user_id": w.ada.id}, "a-in-b", PolicyDeniedError),
        ("identity.org.update", {"name": "Pwned"}, "a-in-b", PolicyDeniedError),
        (
            "identity.access.grant",
            {"subject": w.ada.id, "role": "owner"},
            "a-in-b",
            PolicyDeniedError,
        ),
        ("identity.access.revoke", {"binding_id": w.b_binding.id}, "a-in-b", PolicyDeniedError),
        ("identity.access.list", {}, "a-in-b", PolicyDeniedError),
        (
            "identity.permission.check",
            {"permission": "org.manage", "user_id": zed},
            "a-in-b",
            PolicyDeniedError,
        ),
        # not a member of B: even authenticated() operations are denied (PolicyEngine.is_member)
        ("identity.permission.check", {"permission": "org.manage"}, "a-in-b", PolicyDeniedError),
        ("identity.invitation.accept", {}, "a-in-b", PolicyDeniedError),
        ("identity.org.leave", {}, "a-in-b", PolicyDeniedError),
        ("identity.org.create", {"name": "B", "slug": "org-b"}, "a", "conflict"),
    ]


@pytest.mark.parametrize("index", range(26))
async def test_operations_never_reach_another_org(app: IdentityApp, index: int) -> None:
    """Each operation, called by A's owner against B's data, leaks nothing of B and changes nothing of B."""
    w = await build(app)
    attacks = operation_attacks(w)
    assert len(attacks) == 26
    name, data, who, expected = attacks[index]
    before = await state_of(app, w.b)
    decisions = decisions_of(app, w)
    ctx = as_user(w.ada, w.a if who == "a" else w.b)
    if isinstance(expected, type):
        with pytest.raises(expected):
            await app.run(name, data, ctx)
    elif expected == "conflict":
        with pytest.raises(ContractSpecError) as caught:
            await app.run(name, data, ctx)
        assert caught.value.code == "conflict"
    else:
        out = (await app.run(name, data, ctx)).model_dump(mode="json")
        if expected == "only-a":
            seen = {m["org_id"] for m in out.get("members", [])} | {
                o["org"]["id"] for o in out.get("orgs", [])
            }
            assert seen == {w.a.id}
        elif expected == "a-renamed":
            assert out["id"] == w.a.id
        else:
            assert {k: out[k] for k in expected} == expected
    assert await state_of(app, w.b) == before
    assert decisions_of(app, w) == decisions
