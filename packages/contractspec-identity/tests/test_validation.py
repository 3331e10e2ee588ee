"""Validation below the operations layer: stores, `engine.load`, `decide()` and the model
setter refuse what the operations would (issue 14)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from identity_support import IdentityApp, identity_app

from contractspec.core import (
    Actor,
    CallContext,
    ContractSpecError,
    NotFoundError,
    Resource,
    SpecValidationError,
    Transaction,
)
from contractspec.identity import (
    AccessModel,
    Effect,
    MembershipStatus,
    Org,
    OrgMembership,
    Permission,
    PolicyBinding,
    PolicyEngine,
    Role,
    User,
)
from contractspec.identity.model import check_permission

T0 = datetime(2024, 1, 1, tzinfo=UTC)
MODEL = AccessModel(
    permissions=[Permission(name="deal.read"), Permission(name="deal.write")],
    roles=[Role(name="sales", permissions=("deal.read", "deal.write"), rank=20)],
)


def member(org: str, user: str, role: str = "sales", id: str | None = None) -> OrgMembership:
    return OrgMembership(
        id=id or f"m-{org}-{user}",
        org_id=org,
        user_id=user,
        role=role,
        status=MembershipStatus.ACTIVE,
        created_at=T0,
        updated_at=T0,
    )


def bind(id: str, org: str | None, subject: str, **kw: object) -> PolicyBinding:
    return PolicyBinding(id=id, org_id=org, subject=subject, created_at=T0, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def app(backend_kind: str, tmp_path: Path) -> AsyncIterator[IdentityApp]:
    """An app on `backend_kind` with user u1 and org o1, whose model declares `deal.*`."""
    async with identity_app(backend_kind, tmp_path, model=MODEL) as built:

        async def fill(tx: Transaction) -> None:
            await built.store.add_user(
                tx, User(id="u1", email="u1@example.com", name="U1", created_at=T0)
            )
            await built.store.add_org(
                tx, Org(id="o1", name="O1", slug="o-1", created_by="u1", created_at=T0)
            )

        await built.write(fill)
        yield built


async def test_store_refuses_a_membership_of_an_undeclared_role(app: IdentityApp) -> None:
    """`add_membership` with role `salse` raises SpecValidationError naming the field."""
    with pytest.raises(SpecValidationError, match="'salse'") as caught:
        await app.write(lambda tx: app.store.add_membership(tx, "o1", member("o1", "u1", "salse")))
    assert caught.value.details["field"] == "role"
    assert await app.read(lambda tx: app.store.list_memberships(tx, "o1")) == []


async def test_store_refuses_a_deny_binding_with_a_typo(app: IdentityApp) -> None:
    """A deny of `deal.raed` would deny nothing: the store refuses it (and patterns covering no
    declared permission)."""
    typo = bind("b1", "o1", "u1", permission="deal.raed", effect=Effect.DENY)
    with pytest.raises(SpecValidationError, match=r"deal\.raed") as caught:
        await app.write(lambda tx: app.store.add_binding(tx, "o1", typo))
    assert caught.value.details["field"] == "permission"
    nothing = bind("b2", "o1", "u1", permission="dael.*", effect=Effect.DENY)
    with pytest.raises(SpecValidationError, match="covers no declared permission"):
        await app.write(lambda tx: app.store.add_binding(tx, "o1", nothing))
    with pytest.raises(SpecValidationError, match="'salse'"):
        await app.write(
            lambda tx: app.store.add_binding(tx, "o1", bind("b3", "o1", "u1", role="salse"))
        )
    assert await app.read(lambda tx: app.store.list_bindings(tx, "o1")) == []


async def test_store_refuses_records_of_unknown_orgs_or_subjects(app: IdentityApp) -> None:
    """Memberships and bindings of an unknown org or user raise NotFoundError."""
    with pytest.raises(NotFoundError):
        await app.write(lambda tx: app.store.add_membership(tx, "o9", member("o9", "u1")))
    with pytest.raises(NotFoundError):
        await app.write(lambda tx: app.store.add_membership(tx, "o1", member("o1", "ghost")))
    with pytest.raises(NotFoundError):
        await app.write(
            lambda tx: app.store.add_binding(
                tx, "o9", bind("b1", "o9", "u1", permission="deal.read")
            )
        )
    with pytest.raises(NotFoundError) as caught:
        await app.write(
            lambda tx: app.store.add_binding(
                tx, "o1", bind("b1", "o1", "ghost", permission="deal.read")
            )
        )
    assert caught.value.details["field"] == "subject"


def test_engine_load_refuses_duplicates_and_undeclared_names() -> None:
    """`load` refuses two memberships of one user in one org, duplicate binding ids, undeclared
    roles and permissions, and keeps its previous data."""
    engine = PolicyEngine(MODEL)
    engine.load([member("o1", "u1")])
    cases: list[tuple[list[OrgMembership], list[PolicyBinding], str]] = [
        ([member("o1", "u2"), member("o1", "u2", "member", id="m-2")], [], "memberships"),
        ([], [bind("b1", "o1", "u1", permission="deal.read")] * 2, "bindings"),
        ([member("o1", "u2", "salse")], [], "role"),
        ([], [bind("b1", "o1", "u1", permission="deal.raed", effect=Effect.DENY)], "permission"),
    ]
    for memberships, bindings, field in cases:
        with pytest.raises(SpecValidationError) as caught:
            engine.load(memberships, bindings)
        assert caught.value.details["field"] == field
    assert engine.role_of("o1", "u1") == "sales"
    with pytest.raises(SpecValidationError):
        engine.put_binding(bind("b9", "o1", "u1", permission="deal.raed", effect=Effect.DENY))


def _decide(engine: PolicyEngine, actor: Actor, action: str) -> bool:
    resource = Resource("deal", "d1", "o1", {})
    return engine.decide(actor, action, resource, CallContext(actor=actor, org_id="o1")).allowed


def test_decide_refuses_empty_and_wildcard_actions_even_to_a_star_holder() -> None:
    """An owner holds `*`; `""`, `"*"` and `"deal.*"` are not permissions and are denied."""
    engine = PolicyEngine(MODEL)
    engine.load([member("o1", "boss", "owner")])
    boss = Actor.user("boss")
    assert _decide(engine, boss, "deal.read") is True
    for action in ("", "*", "deal.*", " deal.read"):
        assert _decide(engine, boss, action) is False, action
    reason = engine.check("boss", "*", org_id="o1").reason
    assert "is not a permission" in reason


@given(st.text(max_size=12))
def test_only_permission_names_can_be_allowed(action: str) -> None:
    """For any string, a `*` holder is allowed only if it is a well-formed permission name."""
    engine = PolicyEngine(MODEL)
    engine.load([member("o1", "boss", "owner")])
    try:
        check_permission(action, pattern=False)
        valid = True
    except (ValueError, ContractSpecError):
        valid = False
    assert _decide(engine, Actor.user("boss"), action) is valid


def test_an_agent_does_not_get_the_roles_of_the_user_with_its_id() -> None:
    """`Actor.agent("x")` is not user x: neither x's membership nor x's user bindings apply."""
    engine = PolicyEngine(MODEL)
    engine.load([member("o1", "x", "owner")], [bind("b1", "o1", "x", permission="deal.read")])
    assert _decide(engine, Actor.user("x"), "deal.write") is True
    assert _decide(engine, Actor.agent("x"), "deal.write") is False
    assert _decide(engine, Actor.agent("x"), "deal.read") is False
    assert engine.is_member(Actor.agent("x"), "o1") is False
    engine.put_binding(bind("b2", "o1", "x", permission="deal.read", subject_kind="agent"))
    assert _decide(engine, Actor.agent("x"), "deal.read") is True


def test_swapping_the_model_replaces_cached_decisions() -> None:
    """After `engine.model = narrower`, a cached allow is gone; a model not declaring the data's
    roles is refused and the old one kept."""
    engine = PolicyEngine(MODEL)
    engine.load([member("o1", "u1")])
    for _ in range(3):  # warm every cache
        assert _decide(engine, Actor.user("u1"), "deal.write") is True
    narrower = AccessModel(
        permissions=MODEL.permissions.values(),
        roles=[Role(name="sales", permissions=("deal.read",), rank=20)],
    )
    engine.model = narrower
    assert _decide(engine, Actor.user("u1"), "deal.write") is False
    assert _decide(engine, Actor.user("u1"), "deal.read") is True
    with pytest.raises(SpecValidationError, match="'sales'"):
        engine.model = AccessModel()
    assert engine.model is narrower
