"""Identity operations (commands and queries), their events, and the `Identity` facade.

```python
registry = SpecRegistry()
identity = register_identity(registry)            # specs + handlers, memory store by default
executor = Executor(registry, policy=identity.engine)
org = await executor.execute("identity.org.create", {"name": "Acme"}, CallContext(actor=Actor.user("u1")))
```

Every operation declares what it requires (`requires("member.invite")`, ...); the executor asks the
[`PolicyEngine`][contractspec.identity.PolicyEngine] before the handler runs. Handlers then enforce
the invariants that need data: an org always keeps at least one active owner (`ConflictError`
otherwise), and nobody grants, changes or removes a role ranked above their own
(`PolicyDeniedError`). Tenant data is read and written only in `ctx.org_id`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from contractspec.core import (
    PII,
    Actor,
    ActorKind,
    ConfigurationError,
    ConflictError,
    HandlerCtx,
    NotFoundError,
    PolicyDeniedError,
    Resource,
    SpecRegistry,
    SpecValidationError,
    UnitOfWork,
    authenticated,
    define_command,
    define_event,
    define_query,
    requires,
)
from contractspec.core.specs import EntitySpec, EventSpec, OperationSpec
from contractspec.identity.engine import PolicyEngine
from contractspec.identity.model import (
    AccessModel,
    Condition,
    Effect,
    Group,
    GroupMember,
    MembershipStatus,
    Org,
    OrgMembership,
    PolicyBinding,
    User,
    UtcTime,
    binding_entity,
    check_permission,
    check_role_name,
    group_entity,
    group_member_entity,
    membership_entity,
    normalize_email,
    org_entity,
    permission_entity,
    role_entity,
    user_entity,
)
from contractspec.identity.stores import (
    IdentityStore,
    MemoryIdentityStore,
    check_scope,
    identity_version,
)

if TYPE_CHECKING:
    from contractspec.identity.sync import PolicySync

__all__ = [
    "ENTITIES",
    "EVENTS",
    "OPERATIONS",
    "Identity",
    "identity_specs",
    "register_identity",
]

_STRICT = ConfigDict(extra="forbid")
Id = Annotated[str, Field(min_length=1, max_length=64)]
#: A role name (slug). The pattern is checked by `check_role_name`, whose error suggests the slug
#: for a display name ("Billing Admin" -> 'billing-admin'); the schema still shows it.
RoleName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="A role name (slug), e.g. 'billing-admin'.",
        json_schema_extra={"pattern": r"^[a-z][a-z0-9_-]*$"},
    ),
    AfterValidator(check_role_name),
]
Email = Annotated[str, Field(min_length=3, max_length=320), PII]


# -- event payloads ------------------------------------------------------------------------------


class UserCreated(BaseModel):
    """A user account was created."""

    user_id: str
    email: Annotated[str, PII]


class OrgCreated(BaseModel):
    """An org was created; `created_by` is its first owner."""

    org_id: str
    name: str
    slug: str
    created_by: str


class MemberInvited(BaseModel):
    """Someone was invited to an org (the membership is `invited` until accepted)."""

    org_id: str
    user_id: str
    email: Annotated[str, PII]
    role: str
    invited_by: str


class MemberAdded(BaseModel):
    """A membership became active (org creator, or an accepted invitation)."""

    org_id: str
    user_id: str
    role: str


class RoleAssigned(BaseModel):
    """A member's role changed."""

    org_id: str
    user_id: str
    role: str
    previous_role: str
    assigned_by: str


class MemberRemoved(BaseModel):
    """A membership ended: removed by someone else, or the member left."""

    org_id: str
    user_id: str
    role: str
    removed_by: str
    reason: Literal["removed", "left"]


class AccessGranted(BaseModel):
    """A policy binding was created."""

    org_id: str
    binding_id: str
    subject: str
    role: str | None
    permission: str | None
    effect: str
    resource_type: str | None
    resource_id: str | None


class AccessRevoked(BaseModel):
    """A policy binding was deleted."""

    org_id: str
    binding_id: str
    subject: str


user_created = define_event("user.created", payload=UserCreated, key="user_id")
org_created = define_event("org.created", payload=OrgCreated, key="org_id")
member_invited = define_event("member.invited", payload=MemberInvited, key="org_id")
member_added = define_event("member.added", payload=MemberAdded, key="org_id")
role_assigned = define_event("role.assigned", payload=RoleAssigned, key="org_id")
member_removed = define_event("member.removed", payload=MemberRemoved, key="org_id")
access_granted = define_event("access.granted", payload=AccessGranted, key="org_id")
access_revoked = define_event("access.revoked", payload=AccessRevoked, key="org_id")

# -- inputs and outputs ----------------------------------------------------------------------------


class CreateUser(BaseModel):
    """Input of `identity.user.create`."""

    model_config = _STRICT

    email: Email
    name: Annotated[str | None, Field(max_length=200), PII] = None
    id: Id | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)


class CreateOrg(BaseModel):
    """Input of `identity.org.create`; the slug defaults to one made from the name."""

    model_config = _STRICT

    name: Annotated[str, Field(min_length=1, max_length=200)]
    slug: Annotated[
        str | None, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
    ] = None
    owner_id: Id | None = None


class UpdateOrg(BaseModel):
    """Input of `identity.org.update`: the fields to change."""

    model_config = _STRICT

    name: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    slug: Annotated[
        str | None, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
    ] = None


class ListMyOrgs(BaseModel):
    """Input of `identity.org.list_mine`."""

    model_config = _STRICT

    include_inactive: bool = False


class MyOrg(BaseModel):
    """One org of the caller, with the caller's role and membership status."""

    org: Org
    role: str
    status: MembershipStatus


class MyOrgs(BaseModel):
    """Output of `identity.org.list_mine`."""

    orgs: list[MyOrg]


class ListMembers(BaseModel):
    """Input of `identity.member.list`."""

    model_config = _STRICT

    role: RoleName | None = None
    status: MembershipStatus | None = None


class Members(BaseModel):
    """Output of `identity.member.list`."""

    members: list[OrgMembership]


class InviteMember(BaseModel):
    """Input of `identity.member.invite`; `role` defaults to the model's `default_role`."""

    model_config = _STRICT

    email: Email
    role: RoleName | None = None
    name: Annotated[str | None, Field(max_length=200), PII] = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)


class AcceptInvitation(BaseModel):
    """Input of `identity.invitation.accept` (the org is the call's `org_id`)."""

    model_config = _STRICT


class ChangeRole(BaseModel):
    """Input of `identity.member.change_role`."""

    model_config = _STRICT

    user_id: Id
    role: RoleName


class MemberRef(BaseModel):
    """A member of the call's org, by user id."""

    model_config = _STRICT

    user_id: Id


class LeaveOrg(BaseModel):
    """Input of `identity.org.leave` (the org is the call's `org_id`)."""

    model_config = _STRICT


class RemovedMember(BaseModel):
    """Output of `identity.member.remove` and `identity.org.leave`."""

    org_id: str
    user_id: str
    role: str
    bindings_removed: int


class TransferOwnership(BaseModel):
    """Input of `identity.org.transfer_ownership`."""

    model_config = _STRICT

    user_id: Id
    previous_owner_role: RoleName = "admin"


class OwnershipTransferred(BaseModel):
    """Output of `identity.org.transfer_ownership`."""

    new_owner: OrgMembership
    previous_owner: OrgMembership


Attr = str | int | float | bool


class CheckPermission(BaseModel):
    """Input of `identity.permission.check`: may `user_id` (default: the caller) do this here?"""

    model_config = _STRICT

    permission: Annotated[str, Field(min_length=1, max_length=200)]
    user_id: Id | None = None
    resource_type: Annotated[str, Field(min_length=1, max_length=200)] = "org"
    resource_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    attributes: dict[str, Attr] = {}

    @field_validator("permission")
    @classmethod
    def _permission(cls, value: str) -> str:
        return check_permission(value, pattern=False)


class PermissionCheck(BaseModel):
    """Output of `identity.permission.check`: the engine's decision."""

    allowed: bool
    reason: str
    matched_rule: str | None


class GrantAccess(BaseModel):
    """Input of `identity.access.grant`: a binding in the call's org, to a user or a group."""

    model_config = _STRICT

    subject: Id
    subject_kind: Literal["user", "group"] = "user"
    role: RoleName | None = None
    permission: Annotated[str | None, Field(max_length=200)] = None
    effect: Effect = Effect.ALLOW
    resource_type: Annotated[str | None, Field(max_length=200, pattern=r"^[A-Za-z0-9_.-]+$")] = None
    resource_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    conditions: tuple[Condition, ...] = ()
    expires_at: UtcTime | None = None


class RevokeAccess(BaseModel):
    """Input of `identity.access.revoke`."""

    model_config = _STRICT

    binding_id: Id


class AccessRevokedOut(BaseModel):
    """Output of `identity.access.revoke`."""

    binding_id: str
    revoked: bool


class ListAccess(BaseModel):
    """Input of `identity.access.list`."""

    model_config = _STRICT

    subject: Id | None = None


class Bindings(BaseModel):
    """Output of `identity.access.list`."""

    bindings: list[PolicyBinding]


class CreateGroup(BaseModel):
    """Input of `identity.group.create`."""

    model_config = _STRICT

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str, Field(max_length=1000)] = ""


class GroupRef(BaseModel):
    """A group of the call's org."""

    model_config = _STRICT

    group_id: Id


class GroupMemberRef(BaseModel):
    """A user in a group of the call's org."""

    model_config = _STRICT

    group_id: Id
    user_id: Id


class GroupRemoved(BaseModel):
    """Output of `identity.group.delete` and `identity.group.remove_member`."""

    group_id: str
    removed: bool


class GroupWithMembers(BaseModel):
    """A group and the ids of its members."""

    group: Group
    user_ids: list[str]


class Groups(BaseModel):
    """Output of `identity.group.list`."""

    groups: list[GroupWithMembers]


class ListGroups(BaseModel):
    """Input of `identity.group.list`."""

    model_config = _STRICT


class ListPermissions(BaseModel):
    """Input of `identity.permission.list`: what may `user_id` (default: the caller) do here?"""

    model_config = _STRICT

    user_id: Id | None = None
    resource_type: Annotated[str, Field(min_length=1, max_length=200)] = "org"
    resource_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    attributes: dict[str, Attr] = {}


class PermissionList(BaseModel):
    """Output of `identity.permission.list`: declared permissions the engine allows."""

    permissions: list[str]


class ListSubjects(BaseModel):
    """Input of `identity.permission.who`: who may do `permission` on this resource?"""

    model_config = _STRICT

    permission: Annotated[str, Field(min_length=1, max_length=200)]
    resource_type: Annotated[str, Field(min_length=1, max_length=200)] = "org"
    resource_id: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    attributes: dict[str, Attr] = {}

    @field_validator("permission")
    @classmethod
    def _permission(cls, value: str) -> str:
        return check_permission(value, pattern=False)


class Subject(BaseModel):
    """An actor: its kind (`user`, `agent`, `system`, `service`) and id."""

    kind: str
    id: str


class SubjectList(BaseModel):
    """Output of `identity.permission.who`."""

    subjects: list[Subject]


# -- operation specs --------------------------------------------------------------------------------

_TAGS = ("identity",)

create_user = define_command(
    "identity.user.create",
    input=CreateUser,
    output=User,
    auth=requires("user.create", resource="identity.user"),
    emits=[user_created],
    idempotent=True,
    errors=[ConflictError],
    tags=_TAGS,
    description="Create a user account (sign-up or provisioning). Emails are unique.",
)
create_org = define_command(
    "identity.org.create",
    input=CreateOrg,
    output=Org,
    auth=requires("org.create", resource="identity.org"),
    emits=[org_created, member_added],
    idempotent=True,
    errors=[ConflictError, NotFoundError],
    tags=_TAGS,
    description="Create an org; its creator (or `owner_id`, for system actors) becomes its owner.",
)
update_org = define_command(
    "identity.org.update",
    input=UpdateOrg,
    output=Org,
    auth=requires("org.manage", resource="identity.org"),
    errors=[ConflictError],
    tags=_TAGS,
    description="Rename the call's org or change its slug.",
)
list_my_orgs = define_query(
    "identity.org.list_mine",
    input=ListMyOrgs,
    output=MyOrgs,
    auth=authenticated(),
    tags=_TAGS,
    description="The caller's orgs with role and status (active ones unless include_inactive).",
)
list_members = define_query(
    "identity.member.list",
    input=ListMembers,
    output=Members,
    auth=requires("member.view", resource="identity.membership"),
    tags=_TAGS,
    description="The memberships of the call's org.",
)
invite_member = define_command(
    "identity.member.invite",
    input=InviteMember,
    output=OrgMembership,
    auth=requires("member.invite", resource="identity.membership"),
    emits=[member_invited, user_created],
    idempotent=True,
    errors=[ConflictError, PolicyDeniedError],
    tags=_TAGS,
    description="Invite an email to the call's org with a role no higher than the inviter's; "
    "creates the user if the email is unknown.",
)
accept_invitation = define_command(
    "identity.invitation.accept",
    input=AcceptInvitation,
    output=OrgMembership,
    auth=authenticated(),
    emits=[member_added],
    errors=[NotFoundError, ConflictError],
    tags=_TAGS,
    description="Accept the caller's pending invitation to the call's org.",
)
change_role = define_command(
    "identity.member.change_role",
    input=ChangeRole,
    output=OrgMembership,
    auth=requires("member.manage", resource="identity.membership"),
    emits=[role_assigned],
    errors=[NotFoundError, ConflictError, PolicyDeniedError],
    tags=_TAGS,
    description="Change a member's role (never above the caller's own; the last owner stays).",
)
remove_member = define_command(
    "identity.member.remove",
    input=MemberRef,
    output=RemovedMember,
    auth=requires("member.manage", resource="identity.membership"),
    emits=[member_removed],
    errors=[NotFoundError, ConflictError, PolicyDeniedError],
    tags=_TAGS,
    description="Remove a member and their bindings from the call's org.",
)
leave_org = define_command(
    "identity.org.leave",
    input=LeaveOrg,
    output=RemovedMember,
    auth=authenticated(),
    emits=[member_removed],
    errors=[NotFoundError, ConflictError],
    tags=_TAGS,
    description="The caller leaves the call's org (the last owner must transfer ownership first).",
)
suspend_member = define_command(
    "identity.member.suspend",
    input=MemberRef,
    output=OrgMembership,
    auth=requires("member.manage", resource="identity.membership"),
    errors=[NotFoundError, ConflictError, PolicyDeniedError],
    tags=_TAGS,
    description="Suspend a member: the membership stays but grants nothing.",
)
reactivate_member = define_command(
    "identity.member.reactivate",
    input=MemberRef,
    output=OrgMembership,
    auth=requires("member.manage", resource="identity.membership"),
    errors=[NotFoundError, ConflictError, PolicyDeniedError],
    tags=_TAGS,
    description="Reactivate a suspended member.",
)
transfer_ownership = define_command(
    "identity.org.transfer_ownership",
    input=TransferOwnership,
    output=OwnershipTransferred,
    auth=requires("org.transfer", resource="identity.org"),
    emits=[role_assigned],
    errors=[NotFoundError, ConflictError],
    tags=_TAGS,
    description="Make an active member the owner; the caller steps down to previous_owner_role.",
)
check_permission_op = define_query(
    "identity.permission.check",
    input=CheckPermission,
    output=PermissionCheck,
    auth=authenticated(),
    tags=_TAGS,
    description="Ask the policy engine whether the caller (or, with member.view, another user) "
    "may do something in the call's org.",
)
grant_access = define_command(
    "identity.access.grant",
    input=GrantAccess,
    output=PolicyBinding,
    auth=requires("access.manage", resource="identity.policy_binding"),
    emits=[access_granted],
    errors=[NotFoundError, PolicyDeniedError],
    tags=_TAGS,
    description="Grant (or deny) a role or permission to a user on a resource scope of the "
    "call's org, never beyond what the caller holds.",
)
revoke_access = define_command(
    "identity.access.revoke",
    input=RevokeAccess,
    output=AccessRevokedOut,
    auth=requires("access.manage", resource="identity.policy_binding"),
    emits=[access_revoked],
    errors=[PolicyDeniedError],
    tags=_TAGS,
    description="Delete a binding of the call's org.",
)
list_access = define_query(
    "identity.access.list",
    input=ListAccess,
    output=Bindings,
    auth=requires("access.manage", resource="identity.policy_binding"),
    tags=_TAGS,
    description="The bindings of the call's org (optionally of one subject).",
)

create_group = define_command(
    "identity.group.create",
    input=CreateGroup,
    output=Group,
    auth=requires("member.manage", resource="identity.group"),
    errors=[ConflictError],
    tags=_TAGS,
    description="Create a group (team) in the call's org; bindings to it apply to its members.",
)
delete_group = define_command(
    "identity.group.delete",
    input=GroupRef,
    output=GroupRemoved,
    auth=requires("member.manage", resource="identity.group"),
    tags=_TAGS,
    description="Delete a group with its memberships and the bindings naming it.",
)
add_group_member = define_command(
    "identity.group.add_member",
    input=GroupMemberRef,
    output=GroupMember,
    auth=requires("member.manage", resource="identity.group"),
    errors=[NotFoundError, ConflictError, PolicyDeniedError],
    tags=_TAGS,
    description="Add a member of the call's org to one of its groups.",
)
remove_group_member = define_command(
    "identity.group.remove_member",
    input=GroupMemberRef,
    output=GroupRemoved,
    auth=requires("member.manage", resource="identity.group"),
    errors=[PolicyDeniedError],
    tags=_TAGS,
    description="Take a user out of a group of the call's org.",
)
list_groups = define_query(
    "identity.group.list",
    input=ListGroups,
    output=Groups,
    auth=requires("member.view", resource="identity.group"),
    tags=_TAGS,
    description="The groups of the call's org with their members.",
)
list_permissions_op = define_query(
    "identity.permission.list",
    input=ListPermissions,
    output=PermissionList,
    auth=authenticated(),
    tags=_TAGS,
    description="The declared permissions the caller (or, with member.view, another user) holds "
    "in the call's org, on the org or on one resource.",
)
list_subjects_op = define_query(
    "identity.permission.who",
    input=ListSubjects,
    output=SubjectList,
    auth=requires("access.manage", resource="identity.policy_binding"),
    tags=_TAGS,
    description="Who may do a permission on the org or on one resource of the call's org.",
)

#: Identity entity specs.
ENTITIES: tuple[EntitySpec[Any], ...] = (
    user_entity,
    org_entity,
    membership_entity,
    binding_entity,
    group_entity,
    group_member_entity,
    role_entity,
    permission_entity,
)
#: Identity events.
EVENTS: tuple[EventSpec, ...] = (
    user_created,
    org_created,
    member_invited,
    member_added,
    role_assigned,
    member_removed,
    access_granted,
    access_revoked,
)
#: Identity operations.
OPERATIONS: tuple[OperationSpec, ...] = (
    create_user,
    create_org,
    update_org,
    list_my_orgs,
    list_members,
    invite_member,
    accept_invitation,
    change_role,
    remove_member,
    leave_org,
    suspend_member,
    reactivate_member,
    transfer_ownership,
    check_permission_op,
    grant_access,
    revoke_access,
    list_access,
    create_group,
    delete_group,
    add_group_member,
    remove_group_member,
    list_groups,
    list_permissions_op,
    list_subjects_op,
)


def identity_specs(model: AccessModel | None = None) -> list[Any]:
    """Every identity spec: entities, events, operations, and the model's permissions, roles,
    rules and resource types."""
    return [*ENTITIES, *EVENTS, *OPERATIONS, *(model or AccessModel()).specs()]


_SLUG_JUNK = re.compile(r"[^a-z0-9]+")


def slugify(name: str) -> str:
    """`"Acme, Inc."` -> `"acme-inc"` (lowercase ASCII letters and digits joined by hyphens)."""
    slug = _SLUG_JUNK.sub("-", name.lower()).strip("-")[:64].strip("-")
    return slug or "org"


def _denied(message: str, action: str) -> PolicyDeniedError:
    return PolicyDeniedError(message, reason=message, action=action)


class Identity:
    """The identity package wired together: access model, store, policy engine and handlers.

    Args:
        store: Where identity records live (`MemoryIdentityStore()` by default;
            `contractspec.identity.sql.SqlIdentityStore()` with a `SqlBackend`).
        model: Permissions, roles and rules (`AccessModel()` by default).
        engine: The policy engine (one is built from `model` by default). Pass it to
            `Executor(policy=identity.engine)`.

    Attributes:
        store, model, engine: As given or built. The store checks records against `model`
            (attached to a store built without one).

    Raises:
        ConfigurationError: The store was built with another `AccessModel`.
    """

    def __init__(
        self,
        store: IdentityStore | None = None,
        *,
        model: AccessModel | None = None,
        engine: PolicyEngine | None = None,
    ) -> None:
        self.model = model if model is not None else (engine.model if engine else AccessModel())
        self.engine = engine if engine is not None else PolicyEngine(self.model)
        self.store = store if store is not None else MemoryIdentityStore(model=self.model)

    @property
    def store(self) -> IdentityStore:
        """The identity store; assigning one attaches the identity's model to it (see above)."""
        return self._store

    @store.setter
    def store(self, store: IdentityStore) -> None:
        self._attach(store)
        self._store = store

    def _attach(self, store: IdentityStore) -> None:
        if getattr(store, "model", None) is None:
            store.model = self.model
        elif store.model is not self.model:
            raise ConfigurationError(
                "the identity store checks records against another AccessModel than the "
                "identity's; build the store without model= (Identity attaches its own) or with "
                "the same model"
            )

    def specs(self) -> list[Any]:
        """Entities, events, operations and the access model's specs."""
        return identity_specs(self.model)

    def register(self, registry: SpecRegistry) -> None:
        """Register every identity spec in `registry` and bind the handlers.

        Raises:
            SpecDefinitionError: A spec of the same name and version is already registered with a
                different definition (e.g. the identity registered twice with other models).
        """
        registry.register(*self.specs())
        handlers: dict[OperationSpec, Callable[..., Any]] = {
            create_user: self.create_user,
            create_org: self.create_org,
            update_org: self.update_org,
            list_my_orgs: self.list_my_orgs,
            list_members: self.list_members,
            invite_member: self.invite_member,
            accept_invitation: self.accept_invitation,
            change_role: self.change_role,
            remove_member: self.remove_member,
            leave_org: self.leave_org,
            suspend_member: self.suspend_member,
            reactivate_member: self.reactivate_member,
            transfer_ownership: self.transfer_ownership,
            check_permission_op: self.check_permission,
            grant_access: self.grant_access,
            revoke_access: self.revoke_access,
            list_access: self.list_access,
            create_group: self.create_group,
            delete_group: self.delete_group,
            add_group_member: self.add_group_member,
            remove_group_member: self.remove_group_member,
            list_groups: self.list_groups,
            list_permissions_op: self.list_permissions,
            list_subjects_op: self.list_subjects,
        }
        for spec, handler in handlers.items():
            registry.bind(spec, handler)

    async def load(self, unit_of_work: UnitOfWork) -> None:
        """Fill the engine from the store (call once at start-up, e.g. `executor.unit_of_work`)."""
        await self.engine.reload(self.store, unit_of_work)

    def sync(
        self,
        unit_of_work: UnitOfWork,
        *,
        poll_interval_s: float = 1.0,
        max_staleness_s: float | None = 10.0,
        listen: bool = True,
    ) -> PolicySync:
        """A `PolicySync` keeping `engine` fresh when other processes write the same database.

        Use it as `async with identity.sync(executor.unit_of_work): ...` (it loads the engine
        first) or `await sync.start()` / `await sync.stop()`. See
        `contractspec.identity.sync.PolicySync` for the staleness bound.
        """
        from contractspec.identity.sync import PolicySync

        return PolicySync(
            self.engine,
            self.store,
            unit_of_work,
            poll_interval_s=poll_interval_s,
            max_staleness_s=max_staleness_s,
            listen=listen,
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _rank(self, role: str) -> int:
        return self.model.rank(role)

    def _check_role(self, role: str) -> None:
        if role not in self.model.roles:
            raise SpecValidationError(
                f"role {role!r} is not declared; use one of {', '.join(sorted(self.model.roles))}",
                details={"field": "role"},
            )

    async def _active_membership(self, ctx: HandlerCtx, org_id: str) -> OrgMembership:
        """The caller's active membership, which carries their authority (rank)."""
        mine = await self.store.get_membership(ctx.tx, org_id, ctx.actor.id)
        if mine is None or mine.status is not MembershipStatus.ACTIVE:
            raise _denied(
                f"{ctx.actor.id!r} has no active membership of org {org_id!r}",
                ctx.operation.name,
            )
        return mine

    async def _target(self, ctx: HandlerCtx, org_id: str, user_id: str) -> OrgMembership:
        found = await self.store.get_membership(ctx.tx, org_id, user_id)
        if found is None:
            raise NotFoundError(
                f"user {user_id!r} is not a member of this org", details={"user_id": user_id}
            )
        return found

    def _outranks(self, ctx: HandlerCtx, mine: OrgMembership, role: str, what: str) -> None:
        if self._rank(role) > self._rank(mine.role):
            raise _denied(
                f"{what}: role {role!r} ranks above your role {mine.role!r}; nobody grants or "
                "changes a role above their own",
                ctx.operation.name,
            )

    async def _keep_an_owner(self, ctx: HandlerCtx, org_id: str, leaving: OrgMembership) -> None:
        """Raise `ConflictError` if `leaving` is the org's last active owner."""
        owner = self.model.owner_role
        if leaving.role != owner or leaving.status is not MembershipStatus.ACTIVE:
            return
        owners = await self.store.list_memberships(
            ctx.tx, org_id, role=owner, status=MembershipStatus.ACTIVE
        )
        if all(m.user_id == leaving.user_id for m in owners):
            raise ConflictError(
                f"{leaving.user_id!r} is the last {owner} of this org and an org always keeps an "
                "owner; transfer ownership (identity.org.transfer_ownership) first",
                details={"user_id": leaving.user_id, "invariant": "org_keeps_an_owner"},
            )

    @staticmethod
    def _on_commit(ctx: HandlerCtx, apply: Callable[[int | None], None]) -> None:
        """Run `apply(version)` once the call's transaction commits, with the identity version
        its writes committed as (so the engine ignores it if it already holds newer data)."""
        tx = ctx.tx
        tx.on_commit(lambda: apply(identity_version(tx)))

    def _sync_membership(self, ctx: HandlerCtx, membership: OrgMembership) -> None:
        engine = self.engine
        self._on_commit(ctx, lambda v: engine.put_membership(membership, version=v))

    def _sync_removal(
        self,
        ctx: HandlerCtx,
        org_id: str,
        user_id: str,
        bindings: list[str],
        groups: list[str],
    ) -> None:
        engine = self.engine

        def apply(version: int | None) -> None:
            engine.remove_membership(org_id, user_id, version=version)
            for binding_id in bindings:
                engine.remove_binding(binding_id, version=version)
            for group_id in groups:
                engine.remove_group_member(org_id, group_id, user_id, version=version)

        self._on_commit(ctx, apply)

    # -- users and orgs ----------------------------------------------------------------------------

    async def create_user(self, inp: CreateUser, ctx: HandlerCtx) -> User:
        """Handler of `identity.user.create`."""
        user = User(id=inp.id or ctx.new_id(), email=inp.email, name=inp.name, created_at=ctx.now())
        await self.store.add_user(ctx.tx, user)
        ctx.emit(user_created, UserCreated(user_id=user.id, email=user.email))
        ctx.set_audit_target("identity.user", user.id)
        return user

    async def create_org(self, inp: CreateOrg, ctx: HandlerCtx) -> Org:
        """Handler of `identity.org.create`."""
        owner_id = inp.owner_id
        if ctx.actor.kind is ActorKind.USER:
            if owner_id is not None and owner_id != ctx.actor.id:
                raise _denied(
                    "users create orgs they own: drop owner_id (system actors may set it)",
                    "org.create",
                )
            owner_id = ctx.actor.id
        elif owner_id is None:
            raise SpecValidationError(
                f"a {ctx.actor.kind.value} actor creating an org must name its owner: "
                "pass owner_id",
                details={"field": "owner_id"},
            )
        if await self.store.get_user(ctx.tx, owner_id) is None:
            raise NotFoundError(
                f"user {owner_id!r} not found; create the user first (identity.user.create)",
                details={"field": "owner_id"},
            )
        now = ctx.now()
        org = Org(
            id=ctx.new_id(),
            name=inp.name,
            slug=inp.slug or slugify(inp.name),
            created_by=owner_id,
            created_at=now,
        )
        await self.store.add_org(ctx.tx, org)
        owner = OrgMembership(
            id=ctx.new_id(),
            org_id=org.id,
            user_id=owner_id,
            role=self.model.owner_role,
            status=MembershipStatus.ACTIVE,
            created_at=now,
            updated_at=now,
        )
        await self.store.add_membership(ctx.tx, org.id, owner)
        self._sync_membership(ctx, owner)
        ctx.emit(
            org_created,
            OrgCreated(org_id=org.id, name=org.name, slug=org.slug, created_by=owner_id),
        )
        ctx.emit(member_added, MemberAdded(org_id=org.id, user_id=owner_id, role=owner.role))
        ctx.set_audit_target("identity.org", org.id)
        return org

    async def update_org(self, inp: UpdateOrg, ctx: HandlerCtx) -> Org:
        """Handler of `identity.org.update`."""
        org_id = check_scope(ctx.org_id, "identity.org")
        org = await self.store.lock_org(ctx.tx, org_id)
        changes = inp.model_dump(exclude_none=True)
        if not changes:
            return org
        updated = await self.store.update_org(ctx.tx, org.model_copy(update=changes))
        ctx.set_audit_target("identity.org", org_id)
        return updated

    async def list_my_orgs(self, inp: ListMyOrgs, ctx: HandlerCtx) -> MyOrgs:
        """Handler of `identity.org.list_mine`: only the caller's own memberships are read."""
        pairs = await self.store.orgs_of_user(ctx.tx, ctx.actor.id)
        return MyOrgs(
            orgs=[
                MyOrg(org=org, role=m.role, status=m.status)
                for org, m in pairs
                if inp.include_inactive or m.status is MembershipStatus.ACTIVE
            ]
        )

    # -- memberships ------------------------------------------------------------------------------

    async def list_members(self, inp: ListMembers, ctx: HandlerCtx) -> Members:
        """Handler of `identity.member.list`."""
        org_id = check_scope(ctx.org_id, "identity.membership")
        found = await self.store.list_memberships(ctx.tx, org_id, role=inp.role, status=inp.status)
        return Members(members=found)

    async def invite_member(self, inp: InviteMember, ctx: HandlerCtx) -> OrgMembership:
        """Handler of `identity.member.invite`."""
        org_id = check_scope(ctx.org_id, "identity.membership")
        role = inp.role or self.model.default_role
        self._check_role(role)
        await self.store.lock_org(ctx.tx, org_id)
        mine = await self._active_membership(ctx, org_id)
        self._outranks(ctx, mine, role, "invite")
        user = await self.store.get_user_by_email(ctx.tx, inp.email)
        if user is None:
            user = User(id=ctx.new_id(), email=inp.email, name=inp.name, created_at=ctx.now())
            await self.store.add_user(ctx.tx, user)
            ctx.emit(user_created, UserCreated(user_id=user.id, email=user.email))
        now = ctx.now()
        membership = OrgMembership(
            id=ctx.new_id(),
            org_id=org_id,
            user_id=user.id,
            role=role,
            status=MembershipStatus.INVITED,
            invited_by=ctx.actor.id,
            created_at=now,
            updated_at=now,
        )
        await self.store.add_membership(ctx.tx, org_id, membership)
        self._sync_membership(ctx, membership)
        ctx.emit(
            member_invited,
            MemberInvited(
                org_id=org_id, user_id=user.id, email=user.email, role=role, invited_by=ctx.actor.id
            ),
        )
        ctx.set_audit_target("identity.membership", membership.id)
        return membership

    async def accept_invitation(self, inp: AcceptInvitation, ctx: HandlerCtx) -> OrgMembership:
        """Handler of `identity.invitation.accept`: only the invitee's own invitation."""
        org_id = check_scope(ctx.org_id, "identity.membership")
        found = await self.store.get_membership(ctx.tx, org_id, ctx.actor.id)
        if found is None or found.status is not MembershipStatus.INVITED:
            raise NotFoundError(
                f"{ctx.actor.id!r} has no pending invitation to this org",
                details={"org_id": org_id},
            )
        accepted = found.model_copy(
            update={"status": MembershipStatus.ACTIVE, "updated_at": ctx.now()}
        )
        accepted = await self.store.update_membership(ctx.tx, org_id, accepted)
        self._sync_membership(ctx, accepted)
        ctx.emit(member_added, MemberAdded(org_id=org_id, user_id=ctx.actor.id, role=found.role))
        return accepted

    async def change_role(self, inp: ChangeRole, ctx: HandlerCtx) -> OrgMembership:
        """Handler of `identity.member.change_role`."""
        org_id = check_scope(ctx.org_id, "identity.membership")
        self._check_role(inp.role)
        await self.store.lock_org(ctx.tx, org_id)
        mine = await self._active_membership(ctx, org_id)
        target = await self._target(ctx, org_id, inp.user_id)
        self._outranks(ctx, mine, target.role, "change the role of a member")
        self._outranks(ctx, mine, inp.role, "assign a role")
        if target.role == inp.role:
            return target
        if inp.role != self.model.owner_role:
            await self._keep_an_owner(ctx, org_id, target)
        changed = target.model_copy(update={"role": inp.role, "updated_at": ctx.now()})
        changed = await self.store.update_membership(ctx.tx, org_id, changed)
        self._sync_membership(ctx, changed)
        ctx.emit(
            role_assigned,
            RoleAssigned(
                org_id=org_id,
                user_id=inp.user_id,
                role=inp.role,
                previous_role=target.role,
                assigned_by=ctx.actor.id,
            ),
        )
        ctx.set_audit_target("identity.membership", changed.id)
        return changed

    async def _remove(
        self,
        ctx: HandlerCtx,
        org_id: str,
        target: OrgMembership,
        reason: Literal["removed", "left"],
    ) -> RemovedMember:
        await self._keep_an_owner(ctx, org_id, target)
        bindings = [
            b.id
            for b in await self.store.list_bindings(
                ctx.tx, org_id, subject=target.user_id, subject_kind="user"
            )
        ]
        groups = [
            m.group_id
            for m in await self.store.list_group_members(ctx.tx, org_id, user_id=target.user_id)
        ]
        await self.store.delete_bindings(ctx.tx, org_id, subject=target.user_id)
        await self.store.delete_group_members(ctx.tx, org_id, user_id=target.user_id)
        await self.store.delete_membership(ctx.tx, org_id, target.user_id)
        self._sync_removal(ctx, org_id, target.user_id, bindings, groups)
        ctx.emit(
            member_removed,
            MemberRemoved(
                org_id=org_id,
                user_id=target.user_id,
                role=target.role,
                removed_by=ctx.actor.id,
                reason=reason,
            ),
        )
        ctx.set_audit_target("identity.membership", target.id)
        return RemovedMember(
            org_id=org_id, user_id=target.user_id, role=target.role, bindings_removed=len(bindings)
        )

    async def remove_member(self, inp: MemberRef, ctx: HandlerCtx) -> RemovedMember:
        """Handler of `identity.member.remove` (also removes the member's bindings)."""
        org_id = check_scope(ctx.org_id, "identity.membership")
        await self.store.lock_org(ctx.tx, org_id)
        mine = await self._active_membership(ctx, org_id)
        target = await self._target(ctx, org_id, inp.user_id)
        self._outranks(ctx, mine, target.role, "remove a member")
        return await self._remove(ctx, org_id, target, "removed")

    async def leave_org(self, inp: LeaveOrg, ctx: HandlerCtx) -> RemovedMember:
        """Handler of `identity.org.leave`."""
        org_id = check_scope(ctx.org_id, "identity.membership")
        await self.store.lock_org(ctx.tx, org_id)
        target = await self._target(ctx, org_id, ctx.actor.id)
        return await self._remove(ctx, org_id, target, "left")

    async def _set_status(
        self, inp: MemberRef, ctx: HandlerCtx, status: MembershipStatus
    ) -> OrgMembership:
        org_id = check_scope(ctx.org_id, "identity.membership")
        await self.store.lock_org(ctx.tx, org_id)
        mine = await self._active_membership(ctx, org_id)
        target = await self._target(ctx, org_id, inp.user_id)
        self._outranks(ctx, mine, target.role, f"set a member {status.value}")
        if target.status is MembershipStatus.INVITED:
            raise ConflictError(
                f"{inp.user_id!r} has not accepted the invitation yet; remove the member instead",
                details={"user_id": inp.user_id},
            )
        if target.status is status:
            return target
        if status is MembershipStatus.SUSPENDED:
            await self._keep_an_owner(ctx, org_id, target)
        changed = target.model_copy(update={"status": status, "updated_at": ctx.now()})
        changed = await self.store.update_membership(ctx.tx, org_id, changed)
        self._sync_membership(ctx, changed)
        ctx.set_audit_target("identity.membership", changed.id)
        return changed

    async def suspend_member(self, inp: MemberRef, ctx: HandlerCtx) -> OrgMembership:
        """Handler of `identity.member.suspend`."""
        return await self._set_status(inp, ctx, MembershipStatus.SUSPENDED)

    async def reactivate_member(self, inp: MemberRef, ctx: HandlerCtx) -> OrgMembership:
        """Handler of `identity.member.reactivate`."""
        return await self._set_status(inp, ctx, MembershipStatus.ACTIVE)

    async def transfer_ownership(
        self, inp: TransferOwnership, ctx: HandlerCtx
    ) -> OwnershipTransferred:
        """Handler of `identity.org.transfer_ownership`."""
        org_id = check_scope(ctx.org_id, "identity.org")
        self._check_role(inp.previous_owner_role)
        owner = self.model.owner_role
        await self.store.lock_org(ctx.tx, org_id)
        mine = await self._active_membership(ctx, org_id)
        if mine.role != owner:
            raise _denied(f"only an {owner} can transfer ownership", "org.transfer")
        target = await self._target(ctx, org_id, inp.user_id)
        if target.status is not MembershipStatus.ACTIVE:
            raise ConflictError(
                f"{inp.user_id!r} is {target.status.value}; ownership goes to an active member",
                details={"user_id": inp.user_id},
            )
        if target.user_id == mine.user_id:
            raise ConflictError("you already own this org; name another member")
        now = ctx.now()
        new_owner = target.model_copy(update={"role": owner, "updated_at": now})
        previous = mine.model_copy(update={"role": inp.previous_owner_role, "updated_at": now})
        new_owner = await self.store.update_membership(ctx.tx, org_id, new_owner)
        previous = await self.store.update_membership(ctx.tx, org_id, previous)
        self._sync_membership(ctx, new_owner)
        self._sync_membership(ctx, previous)
        for changed, before in ((new_owner, target.role), (previous, owner)):
            if changed.role != before:
                ctx.emit(
                    role_assigned,
                    RoleAssigned(
                        org_id=org_id,
                        user_id=changed.user_id,
                        role=changed.role,
                        previous_role=before,
                        assigned_by=ctx.actor.id,
                    ),
                )
        ctx.set_audit_target("identity.org", org_id)
        return OwnershipTransferred(new_owner=new_owner, previous_owner=previous)

    # -- permissions and bindings -----------------------------------------------------------------------

    async def check_permission(self, inp: CheckPermission, ctx: HandlerCtx) -> PermissionCheck:
        """Handler of `identity.permission.check` (another user's needs `member.view`)."""
        user_id = inp.user_id or ctx.actor.id
        resource = Resource(inp.resource_type, inp.resource_id, ctx.org_id, inp.attributes)
        if user_id != ctx.actor.id:
            await ctx.authorize("member.view", Resource("identity.membership", None, ctx.org_id))
            subject = Actor.user(user_id)
        else:
            subject = ctx.actor
        decision = self.engine.decide(subject, inp.permission, resource, ctx.call)
        return PermissionCheck(
            allowed=decision.allowed, reason=decision.reason, matched_rule=decision.matched_rule
        )

    async def grant_access(self, inp: GrantAccess, ctx: HandlerCtx) -> PolicyBinding:
        """Handler of `identity.access.grant`."""
        org_id = check_scope(ctx.org_id, "identity.policy_binding")
        await self.store.lock_org(ctx.tx, org_id)
        mine = await self._active_membership(ctx, org_id)
        if inp.subject_kind == "group":
            if await self.store.get_group(ctx.tx, org_id, inp.subject) is None:
                raise NotFoundError(
                    f"group {inp.subject!r} not found in this org", details={"field": "subject"}
                )
        elif await self.store.get_user(ctx.tx, inp.subject) is None:
            raise NotFoundError(f"user {inp.subject!r} not found", details={"field": "subject"})
        try:
            binding = PolicyBinding(
                id=ctx.new_id(),
                org_id=org_id,
                created_by=ctx.actor.id,
                created_at=ctx.now(),
                **inp.model_dump(exclude_none=True),
            )
        except ValueError as exc:
            raise SpecValidationError(
                f"invalid binding: {exc}", details={"operation": ctx.operation.ref}
            ) from None
        self.model.check_binding(binding)
        if binding.subject_kind == "user":
            target = await self.store.get_membership(ctx.tx, org_id, inp.subject)
            if target is not None:
                self._outranks(ctx, mine, target.role, "change the access of a member")
        if binding.effect is Effect.ALLOW:
            if binding.role is not None:
                self._check_role(binding.role)
                self._outranks(ctx, mine, binding.role, "grant a role")
            elif self.model.role_grants(mine.role, binding.permission or "") is None:
                raise _denied(
                    f"your role {mine.role!r} does not hold {binding.permission!r}; nobody grants "
                    "a permission they do not hold",
                    "access.manage",
                )
        elif binding.role is not None:
            self._check_role(binding.role)
        await self.store.add_binding(ctx.tx, org_id, binding)
        engine = self.engine
        self._on_commit(ctx, lambda v: engine.put_binding(binding, version=v))
        ctx.emit(
            access_granted,
            AccessGranted(
                org_id=org_id,
                binding_id=binding.id,
                subject=binding.subject,
                role=binding.role,
                permission=binding.permission,
                effect=binding.effect.value,
                resource_type=binding.resource_type,
                resource_id=binding.resource_id,
            ),
        )
        ctx.set_audit_target("identity.policy_binding", binding.id)
        return binding

    async def revoke_access(self, inp: RevokeAccess, ctx: HandlerCtx) -> AccessRevokedOut:
        """Handler of `identity.access.revoke`: only bindings of the call's org."""
        org_id = check_scope(ctx.org_id, "identity.policy_binding")
        mine = await self._active_membership(ctx, org_id)
        binding = await self.store.get_binding(ctx.tx, org_id, inp.binding_id)
        if binding is None:
            return AccessRevokedOut(binding_id=inp.binding_id, revoked=False)
        if binding.subject_kind == "user":
            target = await self.store.get_membership(ctx.tx, org_id, binding.subject)
            if target is not None:
                self._outranks(ctx, mine, target.role, "change the access of a member")
        await self.store.delete_binding(ctx.tx, org_id, binding.id)
        engine = self.engine
        self._on_commit(ctx, lambda v: engine.remove_binding(binding.id, version=v))
        ctx.emit(
            access_revoked,
            AccessRevoked(org_id=org_id, binding_id=binding.id, subject=binding.subject),
        )
        ctx.set_audit_target("identity.policy_binding", binding.id)
        return AccessRevokedOut(binding_id=binding.id, revoked=True)

    async def list_permissions(self, inp: ListPermissions, ctx: HandlerCtx) -> PermissionList:
        """Handler of `identity.permission.list` (another user's needs `member.view`)."""
        user_id = inp.user_id or ctx.actor.id
        resource = Resource(inp.resource_type, inp.resource_id, ctx.org_id, inp.attributes)
        if user_id != ctx.actor.id:
            await ctx.authorize("member.view", Resource("identity.membership", None, ctx.org_id))
            subject = Actor.user(user_id)
        else:
            subject = ctx.actor
        return PermissionList(
            permissions=self.engine.list_permissions(subject, resource=resource, ctx=ctx.call)
        )

    async def list_subjects(self, inp: ListSubjects, ctx: HandlerCtx) -> SubjectList:
        """Handler of `identity.permission.who`."""
        org_id = check_scope(ctx.org_id, "identity.policy_binding")
        resource = Resource(inp.resource_type, inp.resource_id, org_id, inp.attributes)
        found = self.engine.list_subjects(inp.permission, resource)
        return SubjectList(subjects=[Subject(kind=a.kind.value, id=a.id) for a in found])

    # -- groups ---------------------------------------------------------------------------------

    async def create_group(self, inp: CreateGroup, ctx: HandlerCtx) -> Group:
        """Handler of `identity.group.create`."""
        org_id = check_scope(ctx.org_id, "identity.group")
        await self.store.lock_org(ctx.tx, org_id)
        group = Group(
            id=ctx.new_id(),
            org_id=org_id,
            name=inp.name,
            description=inp.description,
            created_by=ctx.actor.id,
            created_at=ctx.now(),
        )
        await self.store.add_group(ctx.tx, org_id, group)
        ctx.set_audit_target("identity.group", group.id)
        return group

    async def _group_bindings_rank(self, ctx: HandlerCtx, org_id: str, group_id: str) -> None:
        """Nobody changes a group holding a role above their own (that would hand it out)."""
        mine = await self._active_membership(ctx, org_id)
        for binding in await self.store.list_bindings(
            ctx.tx, org_id, subject=group_id, subject_kind="group"
        ):
            if binding.effect is Effect.ALLOW and binding.role is not None:
                self._outranks(ctx, mine, binding.role, "change a group that holds a role")

    async def delete_group(self, inp: GroupRef, ctx: HandlerCtx) -> GroupRemoved:
        """Handler of `identity.group.delete` (its memberships and bindings go with it)."""
        org_id = check_scope(ctx.org_id, "identity.group")
        await self.store.lock_org(ctx.tx, org_id)
        if await self.store.get_group(ctx.tx, org_id, inp.group_id) is None:
            return GroupRemoved(group_id=inp.group_id, removed=False)
        await self._group_bindings_rank(ctx, org_id, inp.group_id)
        members = await self.store.list_group_members(ctx.tx, org_id, group_id=inp.group_id)
        bindings = await self.store.list_bindings(
            ctx.tx, org_id, subject=inp.group_id, subject_kind="group"
        )
        await self.store.delete_group(ctx.tx, org_id, inp.group_id)
        engine = self.engine

        def apply(version: int | None) -> None:
            for member in members:
                engine.remove_group_member(org_id, inp.group_id, member.user_id, version=version)
            for binding in bindings:
                engine.remove_binding(binding.id, version=version)

        self._on_commit(ctx, apply)
        ctx.set_audit_target("identity.group", inp.group_id)
        return GroupRemoved(group_id=inp.group_id, removed=True)

    async def add_group_member(self, inp: GroupMemberRef, ctx: HandlerCtx) -> GroupMember:
        """Handler of `identity.group.add_member` (never into a group holding a role above
        yours, nor a member ranking above you)."""
        org_id = check_scope(ctx.org_id, "identity.group_member")
        await self.store.lock_org(ctx.tx, org_id)
        await self._group_bindings_rank(ctx, org_id, inp.group_id)
        mine = await self._active_membership(ctx, org_id)
        target = await self._target(ctx, org_id, inp.user_id)
        self._outranks(ctx, mine, target.role, "change the groups of a member")
        member = GroupMember(
            id=ctx.new_id(),
            org_id=org_id,
            group_id=inp.group_id,
            user_id=inp.user_id,
            created_at=ctx.now(),
        )
        await self.store.add_group_member(ctx.tx, org_id, member)
        engine = self.engine
        self._on_commit(ctx, lambda v: engine.put_group_member(member, version=v))
        ctx.set_audit_target("identity.group", inp.group_id)
        return member

    async def remove_group_member(self, inp: GroupMemberRef, ctx: HandlerCtx) -> GroupRemoved:
        """Handler of `identity.group.remove_member`."""
        org_id = check_scope(ctx.org_id, "identity.group_member")
        await self.store.lock_org(ctx.tx, org_id)
        mine = await self._active_membership(ctx, org_id)
        target = await self.store.get_membership(ctx.tx, org_id, inp.user_id)
        if target is not None:
            self._outranks(ctx, mine, target.role, "change the groups of a member")
        removed = await self.store.remove_group_member(ctx.tx, org_id, inp.group_id, inp.user_id)
        if removed:
            engine = self.engine
            self._on_commit(
                ctx,
                lambda v: engine.remove_group_member(org_id, inp.group_id, inp.user_id, version=v),
            )
        ctx.set_audit_target("identity.group", inp.group_id)
        return GroupRemoved(group_id=inp.group_id, removed=removed)

    async def list_groups(self, inp: ListGroups, ctx: HandlerCtx) -> Groups:
        """Handler of `identity.group.list`."""
        org_id = check_scope(ctx.org_id, "identity.group")
        groups = await self.store.list_groups(ctx.tx, org_id)
        members = await self.store.list_group_members(ctx.tx, org_id)
        by_group: dict[str, list[str]] = {}
        for member in members:
            by_group.setdefault(member.group_id, []).append(member.user_id)
        return Groups(
            groups=[GroupWithMembers(group=g, user_ids=by_group.get(g.id, [])) for g in groups]
        )

    async def list_access(self, inp: ListAccess, ctx: HandlerCtx) -> Bindings:
        """Handler of `identity.access.list`."""
        org_id = check_scope(ctx.org_id, "identity.policy_binding")
        return Bindings(
            bindings=await self.store.list_bindings(ctx.tx, org_id, subject=inp.subject)
        )


def register_identity(
    registry: SpecRegistry,
    store: IdentityStore | None = None,
    *,
    model: AccessModel | None = None,
    engine: PolicyEngine | None = None,
) -> Identity:
    """Build an `Identity`, register its specs and handlers in `registry`, and return it.

    Args:
        registry: The app's registry.
        store: Identity store (memory by default).
        model: Access model (`AccessModel.from_registry(registry)` when the registry already holds
            roles, permissions or rules; `AccessModel()` otherwise).
        engine: Policy engine (built from the model by default).

    Returns:
        The `Identity`; pass `identity.engine` as the executor's `policy`.
    """
    if (
        model is None
        and engine is None
        and any(registry.specs(kind) for kind in ("role", "permission", "access_rule"))
    ):
        model = AccessModel.from_registry(registry)
    identity = Identity(store, model=model, engine=engine)
    identity.register(registry)
    return identity
