"""The identity model: users, orgs, memberships, roles, permissions, bindings and access rules.

Records (`User`, `Org`, `OrgMembership`, `PolicyBinding`) are frozen pydantic models and each has
an entity spec (`user_entity`, ...) so they export, diff and generate like any other entity.
`Role`, `Permission` and `AccessRule` are *spec data*: an app declares them in code, they are
registered in its `SpecRegistry` (kinds `role`, `permission`, `access_rule`) and compiled by the
[`PolicyEngine`][contractspec.identity.PolicyEngine]; their entity specs describe their shape.

Permission strings use letters, digits and `_ . : -`. Patterns add one trailing `*`: `"deal.*"`
grants every permission starting with `deal.`, and `"*"` grants everything (prefix semantics, the
same as casbin's `keyMatch`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from contractspec.core import PII, Index, SpecDefinitionError, define_entity
from contractspec.core.registry import SpecRegistry

__all__ = [
    "BUILTIN_PERMISSIONS",
    "BUILTIN_ROLES",
    "DEFAULT_RULES",
    "AccessModel",
    "AccessRule",
    "Condition",
    "Effect",
    "MembershipStatus",
    "Org",
    "OrgMembership",
    "Permission",
    "PolicyBinding",
    "Role",
    "User",
    "binding_entity",
    "membership_entity",
    "normalize_email",
    "org_entity",
    "permission_entity",
    "role_entity",
    "user_entity",
]

_PERMISSION: Final = re.compile(r"^[A-Za-z0-9_.:-]+$")
_PATTERN: Final = re.compile(r"^(\*|[A-Za-z0-9_.:-]+\*?)$")
_NAME: Final = re.compile(r"^[a-z][a-z0-9_-]*$")
_ATTRIBUTE: Final = re.compile(r"^(subject|resource|ctx)\.[A-Za-z_][A-Za-z0-9_]*$")
_SLUG: Final = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

Id = Annotated[str, Field(min_length=1, max_length=64)]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be timezone-aware (e.g. datetime.now(UTC))")
    return value.astimezone(UTC)


#: A timezone-aware datetime (stored as a UTC timestamp column, not JSON).
UtcTime = Annotated[datetime, AfterValidator(_aware)]
Scalar = str | int | float | bool


def normalize_email(value: str) -> str:
    """Trim and lowercase an email address; emails are unique case-insensitively.

    Raises:
        ValueError: Not of the form `local@domain.tld` (pydantic reports it as a field error).
    """
    email = value.strip().lower()
    if len(email) > 320 or not _EMAIL.fullmatch(email):
        raise ValueError("must be an email address like 'ada@example.com'")
    return email


def check_permission(value: str, *, pattern: bool) -> str:
    """Validate a permission (or, with `pattern=True`, a permission pattern with a trailing `*`)."""
    if not isinstance(value, str) or not (_PATTERN if pattern else _PERMISSION).fullmatch(value):
        allowed = "letters, digits and '_.:-'" + (", with one trailing '*'" if pattern else "")
        raise ValueError(f"permission {value!r} is not valid: use {allowed} (e.g. 'deal.write')")
    return value


class MembershipStatus(enum.StrEnum):
    """Lifecycle of a membership: only `active` memberships grant anything."""

    INVITED = "invited"
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Effect(enum.StrEnum):
    """What a binding or rule does when it matches; `deny` beats any `allow`."""

    ALLOW = "allow"
    DENY = "deny"


_FROZEN = ConfigDict(frozen=True, extra="forbid")


class User(BaseModel):
    """A person (or service account) known to the app. Global: users belong to no single org.

    Attributes:
        id: Stable id (your auth provider's subject, or a generated one), 1-64 characters.
        email: Unique, stored trimmed and lowercased (personal data).
        name: Display name (personal data).
        created_at: UTC creation time.
    """

    model_config = _FROZEN

    id: Id
    email: Annotated[str, Field(max_length=320), PII]
    name: Annotated[str | None, Field(max_length=200), PII] = None
    created_at: UtcTime

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)


class Org(BaseModel):
    """An organization: the tenant. Everything tenant-scoped carries its `id` as `org_id`.

    Attributes:
        id: Stable id, 1-64 characters.
        name: Display name.
        slug: Unique URL-safe handle: lowercase letters, digits and inner hyphens, 1-64 chars.
        created_by: Id of the user who created it (its first owner).
        created_at: UTC creation time.
    """

    model_config = _FROZEN

    id: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    slug: Annotated[str, Field(min_length=1, max_length=64, pattern=_SLUG.pattern)]
    created_by: Id
    created_at: UtcTime


class OrgMembership(BaseModel):
    """A user's membership of an org, with one role and a status.

    Attributes:
        id: Stable id of the membership.
        org_id: The org (tenant).
        user_id: The member.
        role: Name of a declared `Role` (`owner`, `admin`, `member`, or the app's own).
        status: `invited` (grants nothing until accepted), `active`, `suspended` (grants nothing).
        invited_by: Who invited the member (`None` for the org's creator).
        created_at, updated_at: UTC times.
    """

    model_config = _FROZEN

    id: Id
    org_id: Id
    user_id: Id
    role: Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME.pattern)]
    status: MembershipStatus
    invited_by: Id | None = None
    created_at: UtcTime
    updated_at: UtcTime


Op = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "exists", "not_exists"]


class Condition(BaseModel):
    """A declarative attribute test: `attribute <op> value` (or `<op>` another attribute).

    Attributes are dotted paths into the decision's inputs, never code (nothing is `eval`ed):
    `subject.id`, `subject.kind`, `subject.role` (the role in the resource's org) and
    `subject.<name>` (`Actor.attributes`); `resource.type`, `resource.id`, `resource.org_id` and
    `resource.<name>` (`Resource.attributes`); `ctx.channel`, `ctx.org_id` and `ctx.<name>`
    (`CallContext.attributes`).

    A missing attribute or incomparable values make the condition *indeterminate*: an allow
    does not apply, a deny does (fail closed, as XACML's deny-overrides combining algorithm).

    Example:
        `Condition(attribute="resource.owner_id", op="eq", value_from="subject.id")` — only the
        resource's owner; `Condition(attribute="resource.amount", op="lt", value=10000)`.

    Attributes:
        attribute: Path of the tested value.
        op: `eq ne lt le gt ge in not_in exists not_exists`.
        value: Literal to compare with (a list for `in`/`not_in`).
        value_from: Path of another attribute to compare with, instead of `value`.
    """

    model_config = _FROZEN

    attribute: Annotated[str, Field(pattern=_ATTRIBUTE.pattern)]
    op: Op = "eq"
    value: Scalar | tuple[Scalar, ...] | None = None
    value_from: Annotated[str | None, Field(pattern=_ATTRIBUTE.pattern)] = None

    @model_validator(mode="after")
    def _operands(self) -> Condition:
        if self.op in ("exists", "not_exists"):
            if self.value is not None or self.value_from is not None:
                raise ValueError(f"op {self.op!r} takes no value: drop value= and value_from=")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, tuple) or self.value_from is not None:
                raise ValueError(f"op {self.op!r} needs value= a list of literals")
        elif (self.value is None) == (self.value_from is None):
            raise ValueError(f"op {self.op!r} needs exactly one of value= or value_from=")
        elif isinstance(self.value, tuple):
            raise ValueError(f"op {self.op!r} compares with one literal; use 'in' for a list")
        return self


class PolicyBinding(BaseModel):
    """A role or permission granted to (or denied from) a subject on a resource scope.

    Attributes:
        id: Stable id.
        org_id: The org it applies in; `None` makes it platform-wide (every org and org-less
            checks), for staff and service accounts.
        subject: The user (or service) id it applies to.
        role: A declared role granted on the scope (exactly one of `role`/`permission`).
        permission: A permission or pattern (`deal.*`) granted on the scope.
        effect: `allow` (default) or `deny`; a matching deny beats every allow.
        resource_type: Only resources of this type (`None`: any type).
        resource_id: Only this resource instance (needs `resource_type`).
        conditions: Extra attribute conditions, all of which must hold.
        expires_at: After this UTC time the binding grants (and denies) nothing.
        created_by: Who granted it.
        created_at: UTC creation time.
    """

    model_config = _FROZEN

    id: Id
    org_id: Id | None
    subject: Id
    role: Annotated[str | None, Field(max_length=64, pattern=_NAME.pattern)] = None
    permission: Annotated[str | None, Field(max_length=200)] = None
    effect: Effect = Effect.ALLOW
    resource_type: Annotated[str | None, Field(max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")] = None
    resource_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    conditions: tuple[Condition, ...] = ()
    expires_at: UtcTime | None = None
    created_by: Id | None = None
    created_at: UtcTime

    @field_validator("permission")
    @classmethod
    def _permission(cls, value: str | None) -> str | None:
        return None if value is None else check_permission(value, pattern=True)

    @model_validator(mode="after")
    def _grant(self) -> PolicyBinding:
        if (self.role is None) == (self.permission is None):
            raise ValueError("give exactly one of role= or permission=")
        if self.resource_id is not None and self.resource_type is None:
            raise ValueError("resource_id needs resource_type (e.g. resource_type='deal')")
        return self


class Permission(BaseModel):
    """A permission an app declares (`deal.write`), registered in the spec as kind `permission`.

    Attributes:
        name: Letters, digits and `_ . : -` (no wildcard).
        description: What it allows, for docs and admin screens.
    """

    model_config = _FROZEN
    kind: ClassVar[str] = "permission"

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_permission(value, pattern=False)

    @property
    def version(self) -> int:
        """Spec version (permissions are versionless: always 1)."""
        return 1

    def to_ir(self) -> dict[str, Any]:
        """The spec IR entry (core's `to_ir` adds kind, name and version)."""
        return self.model_dump(mode="json")


class Role(BaseModel):
    """A named set of permissions with a rank, registered in the spec as kind `role`.

    Attributes:
        name: Lowercase letters, digits, `_` and `-` (`owner`, `billing-admin`).
        permissions: Permissions or patterns (`deal.*`, `*`) the role grants in its org.
        rank: Authority; nobody may grant a role ranked above their own (owner 100, admin 50,
            member 10).
        description: For docs and admin screens.
    """

    model_config = _FROZEN
    kind: ClassVar[str] = "role"

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME.pattern)]
    permissions: tuple[str, ...] = ()
    rank: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    description: str = ""

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_permission(p, pattern=True) for p in value)

    @property
    def version(self) -> int:
        """Spec version (roles are versionless: always 1)."""
        return 1

    def to_ir(self) -> dict[str, Any]:
        """The spec IR entry (core's `to_ir` adds kind, name and version)."""
        return self.model_dump(mode="json")


class AccessRule(BaseModel):
    """A spec-level rule: who may (or may not) do what, on which resources, under which conditions.

    Rules apply in every org. They express "who can create orgs" (`subjects="authenticated"` for
    an org-less permission), "members may edit the deals they own" (`roles=["member"]` with a
    `resource.owner_id` condition) or "nobody deletes a closed deal" (`effect="deny"`).

    Attributes:
        name: Rule id, shown in decisions as `rule:<name>`.
        effect: `allow` or `deny` (deny beats allow).
        permissions: Permissions or patterns it applies to.
        subjects: `members` (active members of the resource's org, optionally only `roles`) or
            `authenticated` (any identified actor, member or not: use it for org-less
            permissions such as `org.create`, never for tenant data).
        roles: With `members`: only members holding one of these roles (empty: any role).
        actor_kinds: Only these actor kinds (`user`, `agent`, `system`, `service`); empty: any.
        resource_type: Only this resource type (`None`: any).
        when: Conditions that must all hold.
        description: For docs.
    """

    model_config = _FROZEN
    kind: ClassVar[str] = "access_rule"

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=_NAME.pattern)]
    effect: Effect = Effect.ALLOW
    permissions: Annotated[tuple[str, ...], Field(min_length=1)]
    subjects: Literal["members", "authenticated"] = "members"
    roles: tuple[str, ...] = ()
    actor_kinds: tuple[Literal["user", "agent", "system", "service"], ...] = ()
    resource_type: str | None = None
    when: tuple[Condition, ...] = ()
    description: str = ""

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_permission(p, pattern=True) for p in value)

    @model_validator(mode="after")
    def _subjects(self) -> AccessRule:
        if self.roles and self.subjects != "members":
            raise ValueError("roles= only applies to subjects='members'")
        return self

    @property
    def version(self) -> int:
        """Spec version (rules are versionless: always 1)."""
        return 1

    def to_ir(self) -> dict[str, Any]:
        """The spec IR entry (core's `to_ir` adds kind, name and version)."""
        return self.model_dump(mode="json")


# -- built-ins ---------------------------------------------------------------------------------

#: Permissions the identity operations use.
BUILTIN_PERMISSIONS: Final[tuple[Permission, ...]] = (
    Permission(name="user.create", description="Create user accounts (sign-up, provisioning)."),
    Permission(name="org.create", description="Create organizations (checked outside any org)."),
    Permission(name="org.manage", description="Rename the org and change its settings."),
    Permission(name="org.transfer", description="Transfer ownership of the org."),
    Permission(name="member.view", description="List the org's members."),
    Permission(name="member.invite", description="Invite people to the org."),
    Permission(name="member.manage", description="Change members' roles, suspend and remove."),
    Permission(name="access.manage", description="Grant and revoke policy bindings."),
    Permission(name="billing.view", description="See invoices and the plan."),
    Permission(name="billing.manage", description="Change the plan and payment methods."),
    Permission(name="project.view", description="See the org's projects."),
    Permission(name="project.manage", description="Create, change and delete projects."),
)

#: `owner` (everything), `admin` (people, access, projects) and `member` (read).
BUILTIN_ROLES: Final[tuple[Role, ...]] = (
    Role(name="owner", permissions=("*",), rank=100, description="Full control of the org."),
    Role(
        name="admin",
        permissions=(
            "member.view",
            "member.invite",
            "member.manage",
            "access.manage",
            "billing.view",
            "project.view",
            "project.manage",
        ),
        rank=50,
        description="Manages people, access and projects.",
    ),
    Role(
        name="member",
        permissions=("member.view", "project.view"),
        rank=10,
        description="Works in the org.",
    ),
)

#: Any user may create orgs; system and service actors may create users and orgs.
DEFAULT_RULES: Final[tuple[AccessRule, ...]] = (
    AccessRule(
        name="users-create-orgs",
        permissions=("org.create",),
        subjects="authenticated",
        actor_kinds=("user",),
        description="Any signed-in user may create an organization.",
    ),
    AccessRule(
        name="system-provisions",
        permissions=("user.create", "org.create"),
        subjects="authenticated",
        actor_kinds=("system", "service"),
        description="Sign-up and provisioning (users, orgs) run as system or service actors.",
    ),
)


def _is_pattern(permission: str) -> bool:
    return permission.endswith("*")


def grants(pattern: str, permission: str) -> bool:
    """Whether a permission pattern covers `permission` (exact, `prefix*` or `*`)."""
    if pattern.endswith("*"):
        return permission.startswith(pattern[:-1])
    return pattern == permission


class AccessModel:
    """The declared permissions, roles and access rules of an app: what the engine compiles.

    Args:
        permissions: Declared permissions; the built-ins are always included.
        roles: Declared roles. With `builtin_roles=True` (default) `owner`, `admin` and `member`
            are included unless a role of the same name replaces them.
        rules: Access rules; `DEFAULT_RULES` unless given (pass `()` for none).
        builtin_roles: Include `BUILTIN_ROLES`.
        owner_role: The role that must always have at least one active member per org.
        default_role: Role given to invitees when the invitation names none.

    Raises:
        SpecDefinitionError: Duplicate names, a role granting an undeclared exact permission, a
            rule naming an unknown role, or an owner/default role that does not exist.

    Example:
        ```python
        model = AccessModel(
            permissions=[Permission(name="deal.read"), Permission(name="deal.write")],
            roles=[Role(name="sales", permissions=("deal.*",), rank=20)],
        )
        ```
    """

    __slots__ = ("default_role", "owner_role", "permissions", "roles", "rules")

    def __init__(
        self,
        *,
        permissions: Iterable[Permission] = (),
        roles: Iterable[Role] = (),
        rules: Iterable[AccessRule] | None = None,
        builtin_roles: bool = True,
        owner_role: str = "owner",
        default_role: str = "member",
    ) -> None:
        self.permissions: dict[str, Permission] = {p.name: p for p in BUILTIN_PERMISSIONS}
        own: dict[str, Permission] = {}
        for perm in permissions:
            if own.get(perm.name, perm) != perm:
                raise SpecDefinitionError(
                    f"permission {perm.name!r} is declared twice with different descriptions; "
                    "keep one declaration",
                    details={"field": "permissions", "permission": perm.name},
                )
            own[perm.name] = perm
        self.permissions.update(own)
        declared: dict[str, Role] = {}
        for role in roles:
            if role.name in declared:
                raise SpecDefinitionError(
                    f"role {role.name!r} is declared twice; give each role one definition",
                    details={"field": "roles", "role": role.name},
                )
            declared[role.name] = role
        self.roles: dict[str, Role] = {}
        if builtin_roles:
            for role in BUILTIN_ROLES:
                self.roles[role.name] = declared.pop(role.name, role)
        self.roles.update(declared)
        for role in self.roles.values():
            for granted in role.permissions:
                if not _is_pattern(granted) and granted not in self.permissions:
                    raise SpecDefinitionError(
                        f"role {role.name!r} grants {granted!r}, which is not a declared "
                        f"permission; declare it with Permission(name={granted!r}) or fix the name",
                        details={"field": "permissions", "role": role.name, "permission": granted},
                    )
        self.rules: tuple[AccessRule, ...] = tuple(DEFAULT_RULES if rules is None else rules)
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecDefinitionError(f"access rule names must be unique: {', '.join(dupes)}")
        for rule in self.rules:
            for role_name in rule.roles:
                self._require_role(role_name, f"access rule {rule.name!r}")
        self._require_role(owner_role, "owner_role")
        self._require_role(default_role, "default_role")
        self.owner_role = owner_role
        self.default_role = default_role

    def _require_role(self, name: str, where: str) -> None:
        if name not in self.roles:
            raise SpecDefinitionError(
                f"{where} names role {name!r}, which is not declared; declared roles: "
                f"{', '.join(sorted(self.roles))}",
                details={"role": name},
            )

    @classmethod
    def from_registry(cls, registry: SpecRegistry, **options: Any) -> AccessModel:
        """Build the model from the `permission`, `role` and `access_rule` specs of a registry.

        Built-in roles are included unless `builtin_roles=False` is passed; the default rules
        only if the registry holds no access rule at all (pass `rules=` to override).
        """
        rules = registry.specs("access_rule")
        options.setdefault("rules", rules or None)
        return cls(
            permissions=registry.specs("permission"), roles=registry.specs("role"), **options
        )

    def specs(self) -> list[Permission | Role | AccessRule]:
        """Every permission, role and rule, for `registry.register(*model.specs())`."""
        return [*self.permissions.values(), *self.roles.values(), *self.rules]

    def rank(self, role: str) -> int:
        """The rank of a declared role.

        Raises:
            KeyError: The role is not declared.
        """
        return self.roles[role].rank

    def role_grants(self, role: str, permission: str) -> str | None:
        """The pattern of `role` that grants `permission`, or `None`."""
        found = self.roles.get(role)
        if found is None:
            return None
        for pattern in found.permissions:
            if grants(pattern, permission):
                return pattern
        return None

    def describe(self) -> Mapping[str, Any]:
        """A JSON-friendly summary (roles with ranks and permissions, rule names)."""
        return {
            "roles": {
                r.name: {"rank": r.rank, "permissions": list(r.permissions)}
                for r in sorted(self.roles.values(), key=lambda r: -r.rank)
            },
            "permissions": sorted(self.permissions),
            "rules": [r.name for r in self.rules],
        }


# -- entity specs --------------------------------------------------------------------------------

user_entity = define_entity(
    "identity.user",
    User,
    indexes=[Index(("email",), unique=True)],
    tenant_scoped=False,
    description="People and service accounts; global, unique by email.",
)
org_entity = define_entity(
    "identity.org",
    Org,
    indexes=[Index(("slug",), unique=True)],
    tenant_scoped=False,
    description="Organizations (tenants).",
)
membership_entity = define_entity(
    "identity.membership",
    OrgMembership,
    indexes=[Index(("user_id",), unique=True), ("role", "status")],
    tenant_scoped=True,
    description="Who belongs to which org, with which role and status.",
)
binding_entity = define_entity(
    "identity.policy_binding",
    PolicyBinding,
    indexes=[("org_id", "subject")],
    tenant_scoped=False,
    description="Roles and permissions granted or denied to subjects on resource scopes.",
)
role_entity = define_entity(
    "identity.role",
    Role,
    primary_key="name",
    tenant_scoped=False,
    description="Declared roles (spec data, kept in code).",
)
permission_entity = define_entity(
    "identity.permission",
    Permission,
    primary_key="name",
    tenant_scoped=False,
    description="Declared permissions (spec data, kept in code).",
)
