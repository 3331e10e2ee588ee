"""Role hierarchy, groups, "what can X do" / "who can do X" queries, hierarchical resources and
role display names, through the identity operations on every backend (issue 14)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from identity_support import IdentityApp, as_user, identity_app
from pydantic import ValidationError

from contractspec.core import ContractSpecError, SpecDefinitionError
from contractspec.identity import AccessModel, Permission, ResourceType, Role

MODEL = AccessModel(
    permissions=[
        Permission(name="deal.read"),
        Permission(name="deal.write"),
        Permission(name="deal.delete"),
    ],
    roles=[
        Role(name="viewer", title="Viewer", permissions=("deal.read",), rank=5),
        Role(
            name="sales",
            title="Sales Rep",
            permissions=("deal.write",),
            includes=("viewer",),
            rank=20,
        ),
    ],
    resource_types=[ResourceType(name="deal", parent="project")],
)


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[IdentityApp]:
    async with identity_app(backend_kind, tmp_path, model=MODEL) as built:
        yield built


def _deals(permissions: list[str]) -> list[str]:
    """The `deal.*` permissions (the default rules also let any user create orgs)."""
    return [p for p in permissions if p.startswith("deal.")]


def deal(id: str, org: str, project: str | None) -> dict[str, object]:
    attrs = {"project_id": project} if project else {}
    return {"resource_type": "deal", "resource_id": id, "attributes": attrs}


async def test_roles_groups_parents_and_queries(app: IdentityApp) -> None:
    """A `sales` member reads deals through `viewer` (included); a group granted `deal.delete` on
    project p1 lets its members delete p1's deals only, until they leave the group; the
    queries answer exactly what `decide` allows."""
    ada = await app.user("ada@example.com")
    acme = await app.org(ada, "Acme")
    bob = await app.member(acme, ada, "bob@example.com", "sales")
    carol = await app.member(acme, ada, "carol@example.com", "viewer")
    engine = app.identity.engine
    assert engine.check(bob.id, "deal.read", org_id=acme.id).allowed is True  # via includes
    assert engine.check(carol.id, "deal.write", org_id=acme.id).allowed is False
    me = as_user(ada, acme)
    group = await app.run("identity.group.create", {"name": "Sales EMEA"}, me)
    await app.run("identity.group.add_member", {"group_id": group.id, "user_id": carol.id}, me)
    await app.run(
        "identity.access.grant",
        {
            "subject": group.id,
            "subject_kind": "group",
            "permission": "deal.delete",
            "resource_type": "project",
            "resource_id": "p1",
        },
        me,
    )
    as_carol = as_user(carol, acme)
    mine = await app.run("identity.permission.list", deal("d1", acme.id, "p1"), as_carol)
    assert _deals(mine.permissions) == ["deal.delete", "deal.read"]
    other = await app.run("identity.permission.list", deal("d2", acme.id, "p2"), as_carol)
    assert _deals(other.permissions) == ["deal.read"]
    who = await app.run(
        "identity.permission.who", {"permission": "deal.delete", **deal("d1", acme.id, "p1")}, me
    )
    assert sorted(s.id for s in who.subjects) == sorted([ada.id, carol.id])
    await app.run("identity.group.remove_member", {"group_id": group.id, "user_id": carol.id}, me)
    again = await app.run("identity.permission.list", deal("d1", acme.id, "p1"), as_carol)
    assert _deals(again.permissions) == ["deal.read"]
    # the engine reloaded from the store agrees with the one kept in sync by the operations
    await engine.reload(app.store, app.executor.unit_of_work)
    assert _deals(engine.list_permissions(carol.id, acme.id)) == ["deal.read"]
    assert _deals(engine.list_permissions(bob.id, acme.id)) == ["deal.read", "deal.write"]


def test_role_display_names_go_in_title_and_names_stay_slugs() -> None:
    """`Role(name="Billing Admin")` is refused with the slug to use and where the display name
    goes; `title` carries it and `label` reads it."""
    with pytest.raises(ValidationError, match=r"'billing-admin'.*title='Billing Admin'"):
        Role(name="Billing Admin")
    with pytest.raises(ValidationError, match="'owner'"):
        Role(name="Owner")
    role = Role(name="billing-admin", title="Billing Admin", permissions=("billing.*",), rank=40)
    assert (role.name, role.label, Role(name="ops").label) == (
        "billing-admin",
        "Billing Admin",
        "ops",
    )
    described = AccessModel(roles=[role]).describe()["roles"]["billing-admin"]
    assert described["title"] == "Billing Admin"


async def test_an_operation_naming_a_display_name_gets_a_clear_error(app: IdentityApp) -> None:
    """Inviting with role "Sales Rep" (a title) is a validation error naming the slug."""
    ada = await app.user("ada@example.com")
    acme = await app.org(ada, "Acme")
    with pytest.raises(ContractSpecError, match="sales-rep"):
        await app.run(
            "identity.member.invite",
            {"email": "bob@example.com", "role": "Sales Rep"},
            as_user(ada, acme),
        )


def test_role_includes_are_checked_at_definition() -> None:
    """Cycles, unknown roles and including a higher-ranked role are refused."""
    with pytest.raises(SpecDefinitionError, match="cycle"):
        AccessModel(
            roles=[
                Role(name="a", includes=("b",), rank=5),
                Role(name="b", includes=("a",), rank=5),
            ]
        )
    with pytest.raises(SpecDefinitionError, match="ghost"):
        AccessModel(roles=[Role(name="a", includes=("ghost",))])
    with pytest.raises(SpecDefinitionError, match="ranks higher"):
        AccessModel(roles=[Role(name="a", includes=("owner",), rank=5)])
    with pytest.raises(SpecDefinitionError, match="parent cycle"):
        AccessModel(
            resource_types=[
                ResourceType(name="deal", parent="project"),
                ResourceType(name="project", parent="deal"),
            ]
        )
