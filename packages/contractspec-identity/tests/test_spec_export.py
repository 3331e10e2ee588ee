"""Identity specs export, diff and generate like any other specs."""

from __future__ import annotations

from pathlib import Path

from contractspec.core import SpecRegistry
from contractspec.core.codegen import generate
from contractspec.core.diff import diff_ir
from contractspec.core.ir import dumps_ir, to_ir
from contractspec.identity import AccessModel, Permission, Role, register_identity


def registry(model: AccessModel | None = None) -> SpecRegistry:
    reg = SpecRegistry()
    register_identity(reg, model=model)
    return reg


def test_ir_lists_identity_specs_of_every_kind() -> None:
    """The IR holds the identity entities, events, operations, roles, permissions and rules."""
    ir = to_ir(registry())
    names = {kind: [s["name"] for s in specs] for kind, specs in ir["specs"].items()}
    assert names["role"] == ["admin", "member", "owner"]
    assert names["access_rule"] == ["system-provisions", "users-create-orgs"]
    assert "member.view" in names["permission"]
    assert names["event"] == [
        "access.granted", "access.revoked", "member.added", "member.invited", "member.removed",
        "org.created", "role.assigned", "user.created",
    ]  # fmt: skip
    assert names["entity"] == [
        "identity.group", "identity.group_member", "identity.membership", "identity.org",
        "identity.permission", "identity.policy_binding", "identity.role", "identity.user",
    ]  # fmt: skip
    owner = next(s for s in ir["specs"]["role"] if s["name"] == "owner")
    assert (owner["rank"], owner["permissions"]) == (100, ["*"])
    assert dumps_ir(ir) == dumps_ir(to_ir(registry()))


def test_diff_reports_role_and_permission_changes() -> None:
    """Adding a role and narrowing the admin role both show up in the spec diff."""
    narrowed = Role(name="admin", permissions=("member.view",), rank=50)
    new = AccessModel(
        permissions=[Permission(name="deal.read")],
        roles=[narrowed, Role(name="sales", permissions=("deal.read",), rank=20)],
    )
    changes = diff_ir(to_ir(registry()), to_ir(registry(new))).changes
    touched = sorted({(c.kind, c.spec) for c in changes})
    assert touched == [("permission", "deal.read@1"), ("role", "admin@1"), ("role", "sales@1")]


def test_generate_renders_identity_tables_and_routes(tmp_path: Path) -> None:
    """Code generation writes SQLAlchemy models of the identity entities and the identity router."""
    result = generate(to_ir(registry()), tmp_path)
    assert "router_identity.py" in result.written
    tables = (tmp_path / "tables.py").read_text()
    for cls in ("IdentityUser", "IdentityOrg", "IdentityMembership", "IdentityPolicyBinding"):
        assert f"class {cls}(Base)" in tables
