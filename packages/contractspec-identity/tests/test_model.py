"""Definition-time and input validation of the identity model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from identity_support import SYSTEM, IdentityApp, as_user, identity_app
from pydantic import ValidationError

from contractspec.core import (
    CallContext,
    ConfigurationError,
    Executor,
    SpecDefinitionError,
    SpecRegistry,
    SpecValidationError,
)
from contractspec.core.sql import SqlBackend, sqlite_engine
from contractspec.identity import (
    AccessModel,
    AccessRule,
    Condition,
    Permission,
    PolicyBinding,
    Role,
    normalize_email,
    register_identity,
)
from contractspec.identity.operations import slugify


def test_emails_are_trimmed_and_lowercased() -> None:
    """Emails compare case-insensitively; malformed ones are rejected."""
    assert normalize_email("  Ada.Lovelace@Example.COM ") == "ada.lovelace@example.com"
    for bad in ("ada", "ada@", "@example.com", "a b@example.com", "ada@example"):
        with pytest.raises(ValueError, match="email address"):
            normalize_email(bad)


def test_slugs_are_made_from_names() -> None:
    """Org names become lowercase hyphenated slugs."""
    assert slugify("Acme, Inc.") == "acme-inc"
    assert slugify("  Ünïcode  Ltd ") == "n-code-ltd"
    assert slugify("!!!") == "org"


def test_access_model_rejects_inconsistent_declarations() -> None:
    """Undeclared permissions, duplicate roles and unknown role references fail at definition time."""
    with pytest.raises(
        SpecDefinitionError, match=r"'deal\.write', which is not a declared permission"
    ):
        AccessModel(roles=[Role(name="sales", permissions=("deal.write",))])
    with pytest.raises(SpecDefinitionError, match="declared twice"):
        AccessModel(roles=[Role(name="sales"), Role(name="sales", rank=3)])
    with pytest.raises(SpecDefinitionError, match="names role 'ghost'"):
        AccessModel(rules=[AccessRule(name="r", permissions=("x",), roles=("ghost",))])
    with pytest.raises(SpecDefinitionError, match="owner_role names role 'boss'"):
        AccessModel(owner_role="boss")
    with pytest.raises(SpecDefinitionError, match="declared twice with different descriptions"):
        AccessModel(permissions=[Permission(name="a.b"), Permission(name="a.b", description="x")])
    with pytest.raises(SpecDefinitionError, match="must be unique"):
        AccessModel(rules=[AccessRule(name="r", permissions=("x",))] * 2)


def test_patterns_have_one_trailing_star() -> None:
    """Permission patterns are exact names, `prefix*` or `*`; anything else is a field error."""
    assert Role(name="r", permissions=("deal.*", "*", "a.b")).permissions == ("deal.*", "*", "a.b")
    with pytest.raises(ValidationError) as caught:
        Role(name="r", permissions=("de*al",))
    assert caught.value.errors()[0]["loc"] == ("permissions",)
    with pytest.raises(ValidationError):
        Permission(name="deal.read\n")  # no trailing newline sneaks past the check


def test_conditions_and_bindings_check_their_operands() -> None:
    """Conditions need the right operands; bindings grant exactly one of role or permission."""
    with pytest.raises(ValidationError, match="exactly one of value= or value_from="):
        Condition(attribute="resource.a", op="eq")
    with pytest.raises(ValidationError, match="needs value= a list"):
        Condition(attribute="resource.a", op="in", value="x")
    with pytest.raises(ValidationError, match="takes no value"):
        Condition(attribute="resource.a", op="exists", value=1)
    with pytest.raises(ValidationError, match="attribute"):
        Condition(attribute="__import__('os')", value=1)
    with pytest.raises(ValidationError, match="exactly one of role= or permission="):
        PolicyBinding(id="b", org_id="o", subject="u", created_at="2024-01-01T00:00:00Z")
    with pytest.raises(ValidationError, match="resource_id needs resource_type"):
        PolicyBinding(
            id="b", org_id="o", subject="u", permission="x", resource_id="1",
            created_at="2024-01-01T00:00:00Z",
        )  # fmt: skip
    with pytest.raises(ValidationError, match="timezone-aware"):
        PolicyBinding(
            id="b", org_id="o", subject="u", permission="x", created_at="2024-01-01T00:00:00"
        )


async def test_memory_store_refuses_sql_transactions(tmp_path: Path) -> None:
    """Wiring the memory store into a SQL backend fails loudly instead of losing data."""
    engine = sqlite_engine(tmp_path / "x.db")
    try:
        registry = SpecRegistry()
        identity = register_identity(registry)
        backend = SqlBackend(engine, registry)
        await backend.create_all()
        executor = Executor(registry, backend=backend, policy=identity.engine)
        with pytest.raises(ConfigurationError, match="SqlIdentityStore"):
            await executor.execute("identity.user.create", {"email": "a@example.com"}, SYSTEM)
    finally:
        await engine.dispose()


async def test_invalid_bindings_are_validation_errors(tmp_path: Path) -> None:
    """A grant naming both a role and a permission raises SpecValidationError."""
    async with identity_app("memory", tmp_path) as app:
        ada = await app.user("ada@example.com")
        org = await app.org(ada, "Acme")
        with pytest.raises(SpecValidationError, match="exactly one of role= or permission="):
            await app.run(
                "identity.access.grant",
                {"subject": ada.id, "role": "admin", "permission": "x.y"},
                as_user(ada, org),
            )


@pytest.fixture
async def memory_app(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A memory identity app with one org."""
    async with identity_app("memory", tmp_path) as app:
        ada = await app.user("ada@example.com")
        org = await app.org(ada, "Acme")
        yield app, as_user(ada, org)


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(permission=st.text(max_size=40))
async def test_permission_check_input_is_validated(
    memory_app: tuple[IdentityApp, CallContext], permission: str
) -> None:
    """Any permission string either gets a decision or a SpecValidationError on `permission`."""
    app, ctx = memory_app
    if re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", permission):
        out = await app.run("identity.permission.check", {"permission": permission}, ctx)
        assert (out.allowed, out.matched_rule) == (True, "role:owner:*")  # the owner holds '*'
        return
    with pytest.raises(SpecValidationError) as caught:
        await app.run("identity.permission.check", {"permission": permission}, ctx)
    assert [e["field"] for e in caught.value.errors] == ["permission"]
