"""The identity model: users, orgs, memberships, roles, permissions, bindings and access rules.

Records (`User`, `Org`, `OrgMembership`, `PolicyBinding`) are frozen pydantic models and each has
an entity spec (`user_entity`, ...) so they export, diff and generate like any other entity.
`Role`, `Permission` and `AccessRule` are *spec data*: an app declares them in code, they are
registered in its `SpecRegistry` (kinds `role`, `permission`, `access_rule`) and compiled by the
[`PolicyEngine`][contractspec.identity.PolicyEngine]; their entity specs describe their shape.

Permission strings use letters, digits and `_ . : -`. Patterns add one trailing `*`: `"deal.*"`
grants every permission starting with `deal.`, and `"*"` grants everything (prefix semantics, the
same as casbin's `keyMatch`).

Role names (and access-rule names) are slugs: lower-case letters, digits, `_` and `-`, starting
with a letter (`owner`, `billing-admin`); the name people read goes in `Role.title`
(`"Billing Admin"`). Roles may include other roles (`Role(includes=...)`), groups of users can be
granted roles and permissions (`Group`, `GroupMember`, bindings with `subject_kind="group"`), and
resource types may declare a parent (`ResourceType`) so a grant on a project covers its deals.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from contractspec.core import PII, Index, SpecDefinitionError, SpecValidationError, define_entity
from contractspec.core.registry import SpecRegistry

__all__ = [
    "BUILTIN_PERMISSIONS",
    "BUILTIN_ROLES",
    "DEFAULT_RULES",
    "MAX_RESOURCE_DEPTH",
    "SUBJECT_KINDS",
    "AccessModel",
    "AccessRule",
    "Condition",
    "Effect",
    "Group",
    "GroupMember",
    "MembershipStatus",
    "Org",
    "OrgMembership",
    "Permission",
    "PolicyBinding",
    "ResourceType",
    "Role",
    "SubjectKind",
    "User",
    "binding_entity",
    "group_entity",
    "group_member_entity",
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


_SLUG_JUNK: Final = re.compile(r"[^a-z0-9_-]+")


def check_role_name(value: str, what: str = "role name") -> str:
    """Validate a role (or rule) name: a slug of lower-case letters, digits, `_` and `-`.

    Raises:
        ValueError: Not a slug; the message suggests one (`"Billing Admin"` -> `billing-admin`)
            and says where the display name goes.
    """
    if isinstance(value, str) and 0 < len(value) <= 64 and _NAME.fullmatch(value):
        return value
    suggestion = _SLUG_JUNK.sub("-", str(value).strip().lower()).strip("-_")[:64] or "role"
    if not suggestion[0].isalpha():
        suggestion = f"r-{suggestion}"[:64]
    raise ValueError(
        f"{what} {value!r} is not a slug: use 1-64 lower-case letters, digits, '_' and '-', "
        f"starting with a letter (e.g. {suggestion!r}); put the name people read in "
        f"title= (e.g. Role(name={suggestion!r}, title={str(value).strip()!r}))"
    )


def _role_name(value: str) -> str:
    return check_role_name(value)


def _optional_role_name(value: str | None) -> str | None:
    return None if value is None else check_role_name(value)


#: A role name (slug); a field error with the fix otherwise.
RoleName = Annotated[str, Field(min_length=1, max_length=64), AfterValidator(_role_name)]

#: Kinds of subjects a binding can name: the actor kinds that act, and groups of users.
SubjectKind = Literal["user", "group", "agent", "system", "service"]
SUBJECT_KINDS: Final[tuple[str, ...]] = ("user", "group", "agent", "system", "service")

#: How many parents a resource's chain may have (`ResourceType.parent`), itself excluded.
MAX_RESOURCE_DEPTH: Final = 8


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
    role: RoleName
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
        subject: The id of the user, group, agent, system or service it applies to.
        subject_kind: What `subject` names: `user` (default), `group` (every active member of the
            org who belongs to the group), `agent`, `system` or `service` (actors of that kind).
            A binding applies only to actors of its kind: a binding of user `x` never applies to
            `Actor.agent("x")`.
        role: A declared role granted on the scope (exactly one of `role`/`permission`).
        permission: A declared permission, or a pattern (`deal.*`) covering at least one declared
            permission, granted on the scope.
        effect: `allow` (default) or `deny`; a matching deny beats every allow.
        resource_type: Only resources of this type, or whose parent chain holds one of this
            type (`None`: any type).
        resource_id: Only this resource instance, or the resources under it (needs
            `resource_type`).
        conditions: Extra attribute conditions, all of which must hold.
        expires_at: After this UTC time the binding grants (and denies) nothing.
        created_by: Who granted it.
        created_at: UTC creation time.
    """

    model_config = _FROZEN

    id: Id
    org_id: Id | None
    subject: Id
    subject_kind: SubjectKind = "user"
    role: Annotated[str | None, Field(max_length=64), AfterValidator(_optional_role_name)] = None
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
        if self.subject_kind == "group" and self.org_id is None:
            raise ValueError("groups belong to one org: a group binding needs org_id")
        return self


class Group(BaseModel):
    """A named set of an org's users (a team): bindings to the group apply to its members.

    Attributes:
        id: Stable id, 1-64 characters.
        org_id: The org (tenant) the group belongs to.
        name: Display name ("Sales EMEA"), unique in the org.
        description: For admin screens.
        created_by: Who created it.
        created_at: UTC creation time.
    """

    model_config = _FROZEN

    id: Id
    org_id: Id
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=1000)] = ""
    created_by: Id | None = None
    created_at: UtcTime


class GroupMember(BaseModel):
    """A user's membership of a group. It grants through the group's bindings only while the
    user's membership of the org is active.

    Attributes:
        id: Stable id.
        org_id: The org of the group.
        group_id: The group.
        user_id: The member (a user with a membership of the org).
        created_at: UTC creation time.
    """

    model_config = _FROZEN

    id: Id
    org_id: Id
    group_id: Id
    user_id: Id
    created_at: UtcTime


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
        name: The role's id, a slug: lower-case letters, digits, `_` and `-`, starting with a
            letter (`owner`, `billing-admin`). Memberships and bindings store it.
        title: The name people read (`"Billing Admin"`); defaults to `name` (see `label`).
        permissions: Permissions or patterns (`deal.*`, `*`) the role grants in its org.
        includes: Roles whose permissions this role also grants (role hierarchy, transitive):
            `Role(name="admin", includes=("member",))`. Cycles are refused, and an included role
            must not rank above the including one.
        rank: Authority; nobody may grant a role ranked above their own (owner 100, admin 50,
            member 10).
        description: For docs and admin screens.

    Raises:
        pydantic.ValidationError: A name that is not a slug (the message suggests one, e.g.
            `Role(name="billing-admin", title="Billing Admin")`), or a malformed permission.
    """

    model_config = _FROZEN
    kind: ClassVar[str] = "role"

    name: RoleName
    title: Annotated[str, Field(max_length=200)] = ""
    permissions: tuple[str, ...] = ()
    includes: tuple[RoleName, ...] = ()
    rank: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    description: str = ""

    @field_validator("permissions")
    @classmethod
    def _permissions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_permission(p, pattern=True) for p in value)

    @model_validator(mode="after")
    def _not_itself(self) -> Role:
        if self.name in self.includes:
            raise ValueError(f"role {self.name!r} includes itself; drop it from includes=")
        return self

    @property
    def label(self) -> str:
        """The display name: `title`, or `name` when no title is set."""
        return self.title or self.name

    @property
    def version(self) -> int:
        """Spec version (roles are versionless: always 1)."""
        return 1

    def to_ir(self) -> dict[str, Any]:
        """The spec IR entry (core's `to_ir` adds kind, name and version).

        `title` and `includes` appear only when set, so roles without them keep their IR.
        """
        return self.model_dump(
            mode="json", exclude={k for k in ("title", "includes") if not getattr(self, k)}
        )


class ResourceType(BaseModel):
    """A resource type and its parent type: grants on a parent cover its children.

    With `ResourceType(name="deal", parent="project")`, a check on
    `Resource("deal", "d7", org, {"project_id": "p1"})` is also covered by bindings on
    `project` `p1` (and on every project). The parent's id is read from the checked resource's
    attributes (`parent_attribute`, `<parent>_id` by default); a longer chain reads each level's
    id from the same attributes (a deal carrying `project_id` and `workspace_id`). Chains are
    acyclic and at most `MAX_RESOURCE_DEPTH` (8) parents long; a missing attribute ends the chain
    there. Registered in the spec as kind `resource_type`.

    Attributes:
        name: The resource type (`deal`), as in `Resource.type` and `PolicyBinding.resource_type`.
        parent: The parent resource type (`project`), or `None`.
        parent_attribute: The resource attribute holding the parent's id (default
            `<parent>_id`).
        description: For docs.
    """

    model_config = _FROZEN
    kind: ClassVar[str] = "resource_type"

    name: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")]
    parent: Annotated[
        str | None, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")
    ] = None
    parent_attribute: Annotated[str | None, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = None
    description: str = ""

    @model_validator(mode="after")
    def _parent(self) -> ResourceType:
        if self.parent == self.name:
            raise ValueError(f"resource type {self.name!r} cannot be its own parent")
        if self.parent_attribute is not None and self.parent is None:
            raise ValueError("parent_attribute needs parent=")
        return self

    @property
    def attribute(self) -> str | None:
        """The attribute holding the parent's id, or `None` without a parent."""
        if self.parent is None:
            return None
        return self.parent_attribute or f"{self.parent.replace('.', '_').replace('-', '_')}_id"

    @property
    def version(self) -> int:
        """Spec version (resource types are versionless: always 1)."""
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
    """The declared permissions, roles, access rules and resource types of an app: what the
    engine compiles.

    Args:
        permissions: Declared permissions; the built-ins are always included.
        roles: Declared roles. With `builtin_roles=True` (default) `owner`, `admin` and `member`
            are included unless a role of the same name replaces them.
        rules: Access rules; `DEFAULT_RULES` unless given (pass `()` for none).
        resource_types: Resource types with their parents (hierarchical resources).
        builtin_roles: Include `BUILTIN_ROLES`.
        owner_role: The role that must always have at least one active member per org.
        default_role: Role given to invitees when the invitation names none.

    Raises:
        SpecDefinitionError: Duplicate names, a role granting an undeclared exact permission, a
            role including an unknown role, a higher-ranked role, or itself through a cycle, a
            rule naming an unknown role, a resource type declared twice or in a parent cycle (or
            a chain deeper than `MAX_RESOURCE_DEPTH`), or an owner/default role that does not
            exist.

    Example:
        ```python
        model = AccessModel(
            permissions=[Permission(name="deal.read"), Permission(name="deal.write")],
            roles=[
                Role(name="sales", permissions=("deal.read",), rank=20),
                Role(name="sales-lead", permissions=("deal.write",), includes=("sales",), rank=30),
            ],
            resource_types=[ResourceType(name="deal", parent="project")],
        )
        ```
    """

    __slots__ = (
        "_closure",
        "_effective",
        "_parents",
        "default_role",
        "owner_role",
        "permissions",
        "resource_types",
        "roles",
        "rules",
    )

    def __init__(
        self,
        *,
        permissions: Iterable[Permission] = (),
        roles: Iterable[Role] = (),
        rules: Iterable[AccessRule] | None = None,
        resource_types: Iterable[ResourceType] = (),
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
            for included in role.includes:
                self._require_role(included, f"role {role.name!r} (includes=)")
                if self.roles[included].rank > role.rank:
                    raise SpecDefinitionError(
                        f"role {role.name!r} (rank {role.rank}) includes {included!r}, which ranks "
                        f"higher ({self.roles[included].rank}): whoever may grant {role.name!r} "
                        f"could then hand out {included!r}'s permissions; raise {role.name!r}'s "
                        "rank or drop the include",
                        details={"field": "includes", "role": role.name, "included": included},
                    )
        self._closure: dict[str, tuple[str, ...]] = {
            name: self._include_closure(name, ()) for name in self.roles
        }
        # role -> ((pattern, role that declares it), ...): own permissions first
        self._effective: dict[str, tuple[tuple[str, str], ...]] = {
            name: tuple(
                dict.fromkeys(
                    (pattern, holder)
                    for holder in closure
                    for pattern in self.roles[holder].permissions
                )
            )
            for name, closure in self._closure.items()
        }
        self.rules: tuple[AccessRule, ...] = tuple(DEFAULT_RULES if rules is None else rules)
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecDefinitionError(f"access rule names must be unique: {', '.join(dupes)}")
        for rule in self.rules:
            for role_name in rule.roles:
                self._require_role(role_name, f"access rule {rule.name!r}")
        self.resource_types: dict[str, ResourceType] = {}
        for rtype in resource_types:
            if rtype.name in self.resource_types:
                raise SpecDefinitionError(
                    f"resource type {rtype.name!r} is declared twice; give it one parent",
                    details={"field": "resource_types", "resource_type": rtype.name},
                )
            self.resource_types[rtype.name] = rtype
        self._parents: dict[str, tuple[str, str]] = {
            r.name: (r.parent, r.attribute or "")
            for r in self.resource_types.values()
            if r.parent is not None
        }
        for name in self._parents:
            seen = [name]
            current = name
            while current in self._parents:
                current = self._parents[current][0]
                if current in seen:
                    raise SpecDefinitionError(
                        "resource types form a parent cycle: "
                        + " -> ".join([*seen[seen.index(current) :], current]),
                        details={"field": "resource_types", "resource_type": name},
                    )
                seen.append(current)
                if len(seen) > MAX_RESOURCE_DEPTH + 1:
                    raise SpecDefinitionError(
                        f"resource type {name!r} has more than {MAX_RESOURCE_DEPTH} parents: "
                        + " -> ".join(seen),
                        details={"field": "resource_types", "resource_type": name},
                    )
        self._require_role(owner_role, "owner_role")
        self._require_role(default_role, "default_role")
        self.owner_role = owner_role
        self.default_role = default_role

    def _include_closure(self, name: str, path: tuple[str, ...]) -> tuple[str, ...]:
        """`name` and every role it includes, transitively, nearest first."""
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise SpecDefinitionError(
                f"roles include each other in a cycle: {cycle}; a role hierarchy must be acyclic",
                details={"field": "includes", "role": name},
            )
        out = [name]
        for included in self.roles[name].includes:
            out.extend(self._include_closure(included, (*path, name)))
        return tuple(dict.fromkeys(out))

    def _require_role(self, name: str, where: str) -> None:
        if name not in self.roles:
            raise SpecDefinitionError(
                f"{where} names role {name!r}, which is not declared; declared roles: "
                f"{', '.join(sorted(self.roles))}",
                details={"role": name},
            )

    @classmethod
    def from_registry(cls, registry: SpecRegistry, **options: Any) -> AccessModel:
        """Build the model from the `permission`, `role`, `access_rule` and `resource_type`
        specs of a registry.

        Built-in roles are included unless `builtin_roles=False` is passed; the default rules
        only if the registry holds no access rule at all (pass `rules=` to override).
        """
        rules = registry.specs("access_rule")
        options.setdefault("rules", rules or None)
        options.setdefault("resource_types", registry.specs("resource_type"))
        return cls(
            permissions=registry.specs("permission"), roles=registry.specs("role"), **options
        )

    def specs(self) -> list[Permission | Role | AccessRule | ResourceType]:
        """Every permission, role, rule and resource type, for `registry.register(*model.specs())`."""
        return [
            *self.permissions.values(),
            *self.roles.values(),
            *self.rules,
            *self.resource_types.values(),
        ]

    def rank(self, role: str) -> int:
        """The rank of a declared role.

        Raises:
            KeyError: The role is not declared.
        """
        return self.roles[role].rank

    def includes(self, role: str) -> tuple[str, ...]:
        """`role` and every role it includes, transitively (empty for an undeclared role)."""
        return self._closure.get(role, ())

    def effective_permissions(self, role: str) -> tuple[str, ...]:
        """Every permission pattern `role` grants, its included roles' too (own ones first)."""
        return tuple(dict.fromkeys(pattern for pattern, _ in self._effective.get(role, ())))

    def role_grant(self, role: str, permission: str) -> tuple[str, str] | None:
        """`(pattern, declaring role)` through which `role` grants `permission`, or `None`."""
        for pattern, holder in self._effective.get(role, ()):
            if grants(pattern, permission):
                return pattern, holder
        return None

    def role_grants(self, role: str, permission: str) -> str | None:
        """The pattern of `role` (or of a role it includes) that grants `permission`, or `None`."""
        found = self.role_grant(role, permission)
        return None if found is None else found[0]

    def parent_of(self, resource_type: str) -> tuple[str, str] | None:
        """`(parent type, attribute holding the parent's id)` of a resource type, or `None`."""
        return self._parents.get(resource_type)

    @property
    def hierarchical(self) -> bool:
        """Whether any resource type declares a parent."""
        return bool(self._parents)

    # -- validation of records against the model ------------------------------------------------

    def check_role(self, role: str, where: str) -> str:
        """Return `role`, or raise `SpecValidationError` when it is not declared.

        Args:
            role: A role name.
            where: What names it (`"membership 'm1'"`), for the message.
        """
        if role not in self.roles:
            raise SpecValidationError(
                f"{where} names role {role!r}, which is not declared in the access model; "
                f"declared roles: {', '.join(sorted(self.roles))} (declare it with Role(...) or "
                "fix the name)",
                details={"field": "role", "role": role},
            )
        return role

    def check_grant(self, permission: str, where: str) -> str:
        """Return `permission` if it is declared, or a pattern covering a declared permission.

        A binding that names no declared permission would grant or deny nothing (a deny with a
        typo would silently deny nothing), so it is refused.

        Raises:
            SpecValidationError: Undeclared permission, or a pattern that covers none.
        """
        if _is_pattern(permission):
            if not any(grants(permission, declared) for declared in self.permissions):
                raise SpecValidationError(
                    f"{where} names the pattern {permission!r}, which covers no declared "
                    "permission, so it would grant or deny nothing; fix the pattern or declare "
                    "the permissions it should cover",
                    details={"field": "permission", "permission": permission},
                )
            return permission
        if permission not in self.permissions:
            close = sorted(
                p for p in self.permissions if p.split(".")[0] == permission.split(".")[0]
            )
            hint = f" (declared: {', '.join(close)})" if close else ""
            raise SpecValidationError(
                f"{where} names permission {permission!r}, which is not declared, so it would "
                f"grant or deny nothing{hint}; fix the name or declare it with "
                f"Permission(name={permission!r})",
                details={"field": "permission", "permission": permission},
            )
        return permission

    def check_binding(self, binding: PolicyBinding) -> PolicyBinding:
        """Return `binding` if its role or permission is declared.

        Raises:
            SpecValidationError: See `check_role` and `check_grant`.
        """
        where = f"policy binding {binding.id!r}"
        if binding.role is not None:
            self.check_role(binding.role, where)
        if binding.permission is not None:
            self.check_grant(binding.permission, where)
        return binding

    def check_membership(self, membership: OrgMembership) -> OrgMembership:
        """Return `membership` if its role is declared.

        Raises:
            SpecValidationError: See `check_role`.
        """
        self.check_role(membership.role, f"membership {membership.id!r}")
        return membership

    def describe(self) -> Mapping[str, Any]:
        """A JSON-friendly summary (roles with ranks, includes and permissions, rule names)."""
        return {
            "roles": {
                r.name: {
                    "title": r.label,
                    "rank": r.rank,
                    "permissions": list(r.permissions),
                    "includes": list(r.includes),
                }
                for r in sorted(self.roles.values(), key=lambda r: -r.rank)
            },
            "permissions": sorted(self.permissions),
            "rules": [r.name for r in self.rules],
            "resource_types": {
                r.name: r.parent for r in sorted(self.resource_types.values(), key=lambda r: r.name)
            },
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
group_entity = define_entity(
    "identity.group",
    Group,
    indexes=[Index(("name",), unique=True)],
    tenant_scoped=True,
    description="Groups (teams) of an org's users; bindings to a group apply to its members.",
)
group_member_entity = define_entity(
    "identity.group_member",
    GroupMember,
    indexes=[Index(("group_id", "user_id"), unique=True), ("user_id",)],
    tenant_scoped=True,
    description="Which users belong to which group.",
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
