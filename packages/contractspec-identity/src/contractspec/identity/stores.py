"""`IdentityStore`: persistence of users, orgs, memberships and bindings, and its memory adapter.

Every method takes the call's `Transaction` (`ctx.tx` in a handler), so identity writes commit or
roll back with the rest of the call. Tenant data (memberships, bindings) is always read and
written through an explicit `org_id` scope, which handlers take from the execution context
(`ctx.org_id`): a record of another org is invisible (reads return nothing, writes raise
`NotFoundError`, bulk paths touch nothing), exactly like core's repositories.

Uniqueness (user email, org slug, one membership per user and org, one group name per org) is
enforced by the store itself (by the database in the SQL adapter) and reported as `ConflictError`;
the transaction stays usable after a conflict. Records are checked against the store's
`AccessModel` before they are written: a membership or binding naming an undeclared role or
permission (or a pattern covering none) raises `SpecValidationError`, a binding of an unknown org,
user or group `NotFoundError`.

**Versions.** Every write of a membership, binding or group membership bumps one identity
version in the same transaction (a row of `cs_identity_version` in SQL, bumped once per
transaction; on PostgreSQL a `NOTIFY` goes with it). `identity_version(tx)` is the version the
transaction's identity writes commit as, `version(tx)` the latest committed one, and
`snapshot(tx)` reads every membership, binding and group membership with the version they
reflect, in one consistent read. The `PolicyEngine` uses them so that a reload never replaces newer
data and other processes notice changes (`contractspec.identity.sync.PolicySync`).

The SQL adapter lives in `contractspec.identity.sql` (`pip install 'contractspec-identity[sql]'`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Final, Protocol, runtime_checkable

from attrs import define

from contractspec.core import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    TenantScopeError,
    Transaction,
)
from contractspec.identity.model import (
    AccessModel,
    Group,
    GroupMember,
    MembershipStatus,
    Org,
    OrgMembership,
    PolicyBinding,
    SubjectKind,
    User,
)

__all__ = [
    "IdentitySnapshot",
    "IdentityStore",
    "MemoryIdentityStore",
    "check_scope",
    "identity_version",
]

#: `tx.info` key holding the identity version a transaction's identity writes commit as.
VERSION_KEY: Final = "contractspec.identity.version"
_PENDING: Final = -1


@functools.cache
def builtin_model() -> AccessModel:
    """The model stores check records against when none is attached (built-ins only)."""
    return AccessModel()


def identity_version(tx: Transaction) -> int | None:
    """The identity version `tx`'s identity writes commit as, or `None` if it wrote none.

    SQL stores know it from the first identity write on; the memory store assigns it when the
    transaction commits (read it from an on-commit callback).
    """
    value = tx.info.get(VERSION_KEY)
    return value if isinstance(value, int) and value >= 0 else None


@define(frozen=True)
class IdentitySnapshot:
    """Everything the policy engine needs, as of one identity version (one consistent read).

    Attributes:
        version: The identity version the data reflects (0 for a store never written).
        memberships: Every membership of every org.
        bindings: Every binding, platform-wide ones included.
        group_members: Every group membership.
    """

    version: int
    memberships: list[OrgMembership]
    bindings: list[PolicyBinding]
    group_members: list[GroupMember]


def check_scope(org_id: object, what: str) -> str:
    """Return `org_id`, or raise `TenantScopeError` when it is missing.

    Raises:
        TenantScopeError: `org_id` is `None` or empty.
    """
    if not isinstance(org_id, str) or not org_id:
        raise TenantScopeError(
            f"{what} is tenant data: pass the org_id of the execution context (ctx.org_id)",
            action=what,
            reason="no org_id in the execution context",
        )
    return org_id


def wrong_org(what: str, org_id: str, record_org: str | None) -> TenantScopeError:
    """The error for writing a record of another org through an org scope."""
    return TenantScopeError(
        f"{what} belongs to org {record_org!r} but the call is scoped to org {org_id!r}; "
        "records are written only in the caller's org",
        action=what,
        reason="cross-tenant write",
    )


@runtime_checkable
class IdentityStore(Protocol):
    """Users, orgs, memberships and policy bindings, inside the caller's transaction.

    Users and orgs are global records (an org *is* a tenant). Memberships, groups and bindings
    are tenant data: every method on them takes `org_id` and only ever sees that org's records.

    Attributes:
        model: The `AccessModel` records are checked against (`None`: the built-in roles and
            permissions only). `Identity` attaches its model to a store that has none.
    """

    model: AccessModel | None

    # -- users ------------------------------------------------------------------------------------

    async def add_user(self, tx: Transaction, user: User) -> User:
        """Insert a user.

        Raises:
            ConflictError: The id or the email is taken.
        """
        ...

    async def get_user(self, tx: Transaction, user_id: str) -> User | None:
        """The user with this id, or `None`."""
        ...

    async def get_user_by_email(self, tx: Transaction, email: str) -> User | None:
        """The user with this email (compared trimmed and lowercased), or `None`."""
        ...

    # -- orgs -------------------------------------------------------------------------------------

    async def add_org(self, tx: Transaction, org: Org) -> Org:
        """Insert an org.

        Raises:
            ConflictError: The id or the slug is taken.
        """
        ...

    async def get_org(self, tx: Transaction, org_id: str) -> Org | None:
        """The org, or `None`."""
        ...

    async def update_org(self, tx: Transaction, org: Org) -> Org:
        """Replace the org with `org.id`.

        Raises:
            NotFoundError: No such org. ConflictError: The new slug is taken.
        """
        ...

    async def lock_org(self, tx: Transaction, org_id: str) -> Org:
        """The org, locked until `tx` ends (`SELECT ... FOR UPDATE` on PostgreSQL).

        Membership changes lock their org first, so concurrent calls cannot, for instance, both
        remove one of the last two owners.

        Raises:
            NotFoundError: No such org.
        """
        ...

    async def orgs_of_user(self, tx: Transaction, user_id: str) -> list[tuple[Org, OrgMembership]]:
        """The orgs `user_id` has a membership of (any status), with it, ordered by org name."""
        ...

    # -- memberships (tenant data) ------------------------------------------------------------------

    async def add_membership(
        self, tx: Transaction, org_id: str, membership: OrgMembership
    ) -> OrgMembership:
        """Insert a membership of `org_id`.

        Raises:
            TenantScopeError: No `org_id`, or `membership.org_id` is another org.
            ConflictError: The user already has a membership of this org, or the id is taken.
            NotFoundError: The org or the user does not exist.
            SpecValidationError: The role is not declared in the model.
        """
        ...

    async def get_membership(
        self, tx: Transaction, org_id: str, user_id: str
    ) -> OrgMembership | None:
        """The membership of `user_id` in `org_id`, or `None`."""
        ...

    async def list_memberships(
        self,
        tx: Transaction,
        org_id: str,
        *,
        role: str | None = None,
        status: MembershipStatus | None = None,
    ) -> list[OrgMembership]:
        """The org's memberships, optionally filtered, ordered by `created_at` then `user_id`."""
        ...

    async def update_membership(
        self, tx: Transaction, org_id: str, membership: OrgMembership
    ) -> OrgMembership:
        """Replace the membership of `membership.user_id` in `org_id` (role, status, times).

        Raises:
            TenantScopeError: `membership.org_id` is another org.
            NotFoundError: The user has no membership of this org.
            SpecValidationError: The role is not declared in the model.
        """
        ...

    async def delete_membership(self, tx: Transaction, org_id: str, user_id: str) -> bool:
        """Delete the membership of `user_id` in `org_id`; return whether it existed."""
        ...

    async def set_membership_status(
        self, tx: Transaction, org_id: str, user_ids: Sequence[str], status: MembershipStatus
    ) -> int:
        """Bulk-update the status of these users' memberships in `org_id`; return the count."""
        ...

    async def delete_memberships(
        self, tx: Transaction, org_id: str, user_ids: Sequence[str]
    ) -> int:
        """Bulk-delete these users' memberships in `org_id`; return the count."""
        ...

    # -- bindings (tenant data; org_id=None is the platform scope) --------------------------------

    async def add_binding(
        self, tx: Transaction, org_id: str | None, binding: PolicyBinding
    ) -> PolicyBinding:
        """Insert a binding in `org_id` (`None`: a platform-wide binding).

        Raises:
            TenantScopeError: `binding.org_id` differs from `org_id`.
            ConflictError: The id is taken.
            NotFoundError: The org, or the subject (a user; a group of this org) does not exist.
                Agents, system and service actors are not stored, so they are not checked.
            SpecValidationError: The role or permission is not declared (or the pattern covers
                no declared permission).
        """
        ...

    async def get_binding(
        self, tx: Transaction, org_id: str | None, binding_id: str
    ) -> PolicyBinding | None:
        """The binding in this scope, or `None`."""
        ...

    async def list_bindings(
        self,
        tx: Transaction,
        org_id: str | None,
        *,
        subject: str | None = None,
        subject_kind: SubjectKind | None = None,
    ) -> list[PolicyBinding]:
        """Bindings of the scope (optionally of one subject, of one kind), ordered by `created_at`
        then `id`."""
        ...

    async def delete_binding(self, tx: Transaction, org_id: str | None, binding_id: str) -> bool:
        """Delete a binding of this scope; return whether it existed."""
        ...

    async def delete_bindings(
        self, tx: Transaction, org_id: str, *, subject: str, subject_kind: SubjectKind = "user"
    ) -> int:
        """Bulk-delete the bindings of the subject (a user by default) in `org_id`; return the
        count."""
        ...

    # -- groups (tenant data) -------------------------------------------------------------------

    async def add_group(self, tx: Transaction, org_id: str, group: Group) -> Group:
        """Insert a group of `org_id`.

        Raises:
            TenantScopeError: `group.org_id` is another org.
            ConflictError: The name (or the id) is taken in this org.
            NotFoundError: The org does not exist.
        """
        ...

    async def get_group(self, tx: Transaction, org_id: str, group_id: str) -> Group | None:
        """The group of this org, or `None`."""
        ...

    async def list_groups(self, tx: Transaction, org_id: str) -> list[Group]:
        """The org's groups, ordered by name then id."""
        ...

    async def delete_group(self, tx: Transaction, org_id: str, group_id: str) -> bool:
        """Delete a group with its memberships and the bindings naming it; return whether it
        existed."""
        ...

    async def add_group_member(
        self, tx: Transaction, org_id: str, member: GroupMember
    ) -> GroupMember:
        """Add a user to a group of `org_id`.

        Raises:
            TenantScopeError: `member.org_id` is another org.
            NotFoundError: No such group in the org, or the user has no membership of the org.
            ConflictError: The user is already in the group (or the id is taken).
        """
        ...

    async def remove_group_member(
        self, tx: Transaction, org_id: str, group_id: str, user_id: str
    ) -> bool:
        """Take a user out of a group; return whether they were in it."""
        ...

    async def list_group_members(
        self,
        tx: Transaction,
        org_id: str,
        *,
        group_id: str | None = None,
        user_id: str | None = None,
    ) -> list[GroupMember]:
        """The org's group memberships (of one group, one user), ordered by group then user."""
        ...

    async def delete_group_members(self, tx: Transaction, org_id: str, *, user_id: str) -> int:
        """Take a user out of every group of `org_id` (one statement); return the count."""
        ...

    # -- engine -----------------------------------------------------------------------------------

    async def version(self, tx: Transaction) -> int:
        """The latest committed identity version `tx` sees (0 for a store never written)."""
        ...

    async def snapshot(self, tx: Transaction) -> IdentitySnapshot:
        """Every membership, binding and group membership of every org, and the version they
        reflect, in one consistent read (for `PolicyEngine.reload`; privileged).

        Call it as the first read of a fresh read-only transaction: the SQL store makes it a
        `REPEATABLE READ` transaction on PostgreSQL.
        """
        ...


def _membership_order(m: OrgMembership) -> tuple[object, str]:
    return (m.created_at, m.user_id)


def _binding_order(b: PolicyBinding) -> tuple[object, str]:
    return (b.created_at, b.id)


class MemoryIdentityStore:
    """`IdentityStore` in dictionaries, with transactional undo: for tests and prototypes.

    Args:
        model: The `AccessModel` records are checked against (see `IdentityStore.model`).

    The identity version is assigned when a transaction that wrote identity data commits.
    """

    __slots__ = (
        "_bindings",
        "_emails",
        "_group_members",
        "_group_names",
        "_groups",
        "_memberships",
        "_orgs",
        "_slugs",
        "_users",
        "_version",
        "model",
    )

    def __init__(self, *, model: AccessModel | None = None) -> None:
        self.model = model
        self._users: dict[str, User] = {}
        self._emails: dict[str, str] = {}
        self._orgs: dict[str, Org] = {}
        self._slugs: dict[str, str] = {}
        self._memberships: dict[tuple[str, str], OrgMembership] = {}
        self._bindings: dict[str, PolicyBinding] = {}
        self._groups: dict[tuple[str, str], Group] = {}
        self._group_names: dict[tuple[str, str], str] = {}
        self._group_members: dict[tuple[str, str, str], GroupMember] = {}
        self._version = 0

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _writable(tx: Transaction, what: str) -> None:
        if getattr(tx, "dialect", None) is not None:  # a SqlTransaction: the data would be lost
            raise ConfigurationError(
                "MemoryIdentityStore is writing inside a SQL transaction, so identity data would "
                "not be persisted; pass SqlIdentityStore(backend.tables) to register_identity"
            )
        tx.check_writable(what)

    def _checks(self) -> AccessModel:
        return self.model if self.model is not None else builtin_model()

    def _touch(self, tx: Transaction) -> None:
        """Bump the identity version when `tx` commits (once per transaction)."""
        if VERSION_KEY in tx.info:
            return
        tx.info[VERSION_KEY] = _PENDING
        tx.add_undo(lambda: tx.info.pop(VERSION_KEY, None))

        def bump() -> None:
            self._version += 1
            tx.info[VERSION_KEY] = self._version

        tx.on_commit(bump)

    # -- users ------------------------------------------------------------------------------------

    async def add_user(self, tx: Transaction, user: User) -> User:
        """Insert a user; `ConflictError` on a taken id or email."""
        self._writable(tx, "adding a user")
        if user.id in self._users:
            raise ConflictError(f"user {user.id!r} already exists", details={"field": "id"})
        if user.email in self._emails:
            raise ConflictError("a user with this email already exists", details={"field": "email"})
        self._users[user.id] = user
        self._emails[user.email] = user.id

        def undo() -> None:
            self._users.pop(user.id, None)
            self._emails.pop(user.email, None)

        tx.add_undo(undo)
        return user

    async def get_user(self, tx: Transaction, user_id: str) -> User | None:
        """The user, or `None`."""
        return self._users.get(user_id)

    async def get_user_by_email(self, tx: Transaction, email: str) -> User | None:
        """The user with this email, or `None`."""
        user_id = self._emails.get(email.strip().lower())
        return None if user_id is None else self._users.get(user_id)

    # -- orgs -------------------------------------------------------------------------------------

    async def add_org(self, tx: Transaction, org: Org) -> Org:
        """Insert an org; `ConflictError` on a taken id or slug."""
        self._writable(tx, "adding an org")
        if org.id in self._orgs:
            raise ConflictError(f"org {org.id!r} already exists", details={"field": "id"})
        if org.slug in self._slugs:
            raise ConflictError(
                f"the slug {org.slug!r} is taken; choose another", details={"field": "slug"}
            )
        self._orgs[org.id] = org
        self._slugs[org.slug] = org.id

        def undo() -> None:
            self._orgs.pop(org.id, None)
            self._slugs.pop(org.slug, None)

        tx.add_undo(undo)
        return org

    async def get_org(self, tx: Transaction, org_id: str) -> Org | None:
        """The org, or `None`."""
        return self._orgs.get(org_id)

    async def update_org(self, tx: Transaction, org: Org) -> Org:
        """Replace the org; `NotFoundError` if absent, `ConflictError` on a taken slug."""
        self._writable(tx, "updating an org")
        before = self._orgs.get(org.id)
        if before is None:
            raise NotFoundError(f"org {org.id!r} not found", details={"org_id": org.id})
        owner = self._slugs.get(org.slug)
        if owner is not None and owner != org.id:
            raise ConflictError(
                f"the slug {org.slug!r} is taken; choose another", details={"field": "slug"}
            )
        del self._slugs[before.slug]
        self._slugs[org.slug] = org.id
        self._orgs[org.id] = org

        def undo() -> None:
            self._slugs.pop(org.slug, None)
            self._slugs[before.slug] = org.id
            self._orgs[org.id] = before

        tx.add_undo(undo)
        return org

    async def lock_org(self, tx: Transaction, org_id: str) -> Org:
        """The org (memory transactions need no lock: asyncio runs one handler step at a time)."""
        org = self._orgs.get(org_id)
        if org is None:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        return org

    async def orgs_of_user(self, tx: Transaction, user_id: str) -> list[tuple[Org, OrgMembership]]:
        """The user's orgs with the memberships, ordered by org name then id."""
        found = [
            (self._orgs[org_id], m)
            for (org_id, uid), m in self._memberships.items()
            if uid == user_id and org_id in self._orgs
        ]
        return sorted(found, key=lambda pair: (pair[0].name, pair[0].id))

    # -- memberships ------------------------------------------------------------------------------

    def _put_membership(
        self, tx: Transaction, key: tuple[str, str], new: OrgMembership | None
    ) -> None:
        before = self._memberships.get(key)
        if new is None:
            self._memberships.pop(key, None)
        else:
            self._memberships[key] = new

        def undo() -> None:
            if before is None:
                self._memberships.pop(key, None)
            else:
                self._memberships[key] = before

        tx.add_undo(undo)

    async def add_membership(
        self, tx: Transaction, org_id: str, membership: OrgMembership
    ) -> OrgMembership:
        """Insert; `ConflictError` if the user already has a membership of the org."""
        check_scope(org_id, "identity.membership")
        self._writable(tx, "adding a membership")
        if membership.org_id != org_id:
            raise wrong_org("the membership", org_id, membership.org_id)
        self._checks().check_membership(membership)
        if org_id not in self._orgs:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        if membership.user_id not in self._users:
            raise NotFoundError(
                f"user {membership.user_id!r} not found", details={"user_id": membership.user_id}
            )
        key = (org_id, membership.user_id)
        if key in self._memberships:
            raise ConflictError(
                f"user {membership.user_id!r} already has a membership of this org",
                details={"field": "user_id"},
            )
        if any(m.id == membership.id for m in self._memberships.values()):
            raise ConflictError(f"membership {membership.id!r} already exists")
        self._touch(tx)
        self._put_membership(tx, key, membership)
        return membership

    async def get_membership(
        self, tx: Transaction, org_id: str, user_id: str
    ) -> OrgMembership | None:
        """The membership in this org, or `None`."""
        check_scope(org_id, "identity.membership")
        return self._memberships.get((org_id, user_id))

    async def list_memberships(
        self,
        tx: Transaction,
        org_id: str,
        *,
        role: str | None = None,
        status: MembershipStatus | None = None,
    ) -> list[OrgMembership]:
        """The org's memberships, filtered, ordered by `created_at` then `user_id`."""
        check_scope(org_id, "identity.membership")
        found = [
            m
            for (oid, _), m in self._memberships.items()
            if oid == org_id
            and (role is None or m.role == role)
            and (status is None or m.status == status)
        ]
        return sorted(found, key=_membership_order)

    async def update_membership(
        self, tx: Transaction, org_id: str, membership: OrgMembership
    ) -> OrgMembership:
        """Replace the membership; `NotFoundError` if the user has none in this org."""
        check_scope(org_id, "identity.membership")
        self._writable(tx, "updating a membership")
        if membership.org_id != org_id:
            raise wrong_org("the membership", org_id, membership.org_id)
        self._checks().check_membership(membership)
        key = (org_id, membership.user_id)
        before = self._memberships.get(key)
        if before is None:
            raise NotFoundError(
                f"user {membership.user_id!r} has no membership of this org",
                details={"user_id": membership.user_id},
            )
        self._touch(tx)
        self._put_membership(tx, key, membership.model_copy(update={"id": before.id}))
        return self._memberships[key]

    async def delete_membership(self, tx: Transaction, org_id: str, user_id: str) -> bool:
        """Delete; return whether it existed."""
        check_scope(org_id, "identity.membership")
        self._writable(tx, "deleting a membership")
        key = (org_id, user_id)
        if key not in self._memberships:
            return False
        self._touch(tx)
        self._put_membership(tx, key, None)
        return True

    async def set_membership_status(
        self, tx: Transaction, org_id: str, user_ids: Sequence[str], status: MembershipStatus
    ) -> int:
        """Bulk-update statuses in this org; return how many memberships changed."""
        check_scope(org_id, "identity.membership")
        self._writable(tx, "updating memberships")
        count = 0
        for user_id in dict.fromkeys(user_ids):
            key = (org_id, user_id)
            current = self._memberships.get(key)
            if current is not None:
                self._touch(tx)
                self._put_membership(tx, key, current.model_copy(update={"status": status}))
                count += 1
        return count

    async def delete_memberships(
        self, tx: Transaction, org_id: str, user_ids: Sequence[str]
    ) -> int:
        """Bulk-delete in this org; return how many were deleted."""
        check_scope(org_id, "identity.membership")
        self._writable(tx, "deleting memberships")
        count = 0
        for user_id in dict.fromkeys(user_ids):
            key = (org_id, user_id)
            if key in self._memberships:
                self._touch(tx)
                self._put_membership(tx, key, None)
                count += 1
        return count

    # -- bindings ---------------------------------------------------------------------------------

    def _put_binding(self, tx: Transaction, binding_id: str, new: PolicyBinding | None) -> None:
        self._touch(tx)
        before = self._bindings.get(binding_id)
        if new is None:
            self._bindings.pop(binding_id, None)
        else:
            self._bindings[binding_id] = new

        def undo() -> None:
            if before is None:
                self._bindings.pop(binding_id, None)
            else:
                self._bindings[binding_id] = before

        tx.add_undo(undo)

    async def add_binding(
        self, tx: Transaction, org_id: str | None, binding: PolicyBinding
    ) -> PolicyBinding:
        """Insert; `ConflictError` on a taken id."""
        self._writable(tx, "adding a policy binding")
        if binding.org_id != org_id:
            raise wrong_org("the policy binding", str(org_id), binding.org_id)
        self._checks().check_binding(binding)
        if org_id is not None and org_id not in self._orgs:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        if binding.subject_kind == "user" and binding.subject not in self._users:
            raise NotFoundError(
                f"user {binding.subject!r} not found; bindings name existing users "
                "(subject_kind='user'), groups, or agent/system/service actors",
                details={"field": "subject", "subject": binding.subject},
            )
        if binding.subject_kind == "group" and (str(org_id), binding.subject) not in self._groups:
            raise NotFoundError(
                f"group {binding.subject!r} not found in org {org_id!r}",
                details={"field": "subject", "subject": binding.subject},
            )
        if binding.id in self._bindings:
            raise ConflictError(f"policy binding {binding.id!r} already exists")
        self._put_binding(tx, binding.id, binding)
        return binding

    async def get_binding(
        self, tx: Transaction, org_id: str | None, binding_id: str
    ) -> PolicyBinding | None:
        """The binding of this scope, or `None`."""
        found = self._bindings.get(binding_id)
        return found if found is not None and found.org_id == org_id else None

    async def list_bindings(
        self,
        tx: Transaction,
        org_id: str | None,
        *,
        subject: str | None = None,
        subject_kind: SubjectKind | None = None,
    ) -> list[PolicyBinding]:
        """The scope's bindings, ordered by `created_at` then `id`."""
        found = [
            b
            for b in self._bindings.values()
            if b.org_id == org_id
            and (subject is None or b.subject == subject)
            and (subject_kind is None or b.subject_kind == subject_kind)
        ]
        return sorted(found, key=_binding_order)

    async def delete_binding(self, tx: Transaction, org_id: str | None, binding_id: str) -> bool:
        """Delete a binding of this scope; return whether it existed."""
        self._writable(tx, "deleting a policy binding")
        if await self.get_binding(tx, org_id, binding_id) is None:
            return False
        self._put_binding(tx, binding_id, None)
        return True

    async def delete_bindings(
        self, tx: Transaction, org_id: str, *, subject: str, subject_kind: SubjectKind = "user"
    ) -> int:
        """Bulk-delete the subject's bindings in this org; return the count."""
        check_scope(org_id, "identity.policy_binding")
        self._writable(tx, "deleting policy bindings")
        doomed = [
            b.id
            for b in await self.list_bindings(
                tx, org_id, subject=subject, subject_kind=subject_kind
            )
        ]
        for binding_id in doomed:
            self._put_binding(tx, binding_id, None)
        return len(doomed)

    # -- groups -----------------------------------------------------------------------------------

    async def add_group(self, tx: Transaction, org_id: str, group: Group) -> Group:
        """Insert a group; `ConflictError` if the name or id is taken in the org."""
        check_scope(org_id, "identity.group")
        self._writable(tx, "adding a group")
        if group.org_id != org_id:
            raise wrong_org("the group", org_id, group.org_id)
        if org_id not in self._orgs:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        if (org_id, group.name) in self._group_names:
            raise ConflictError(
                f"a group named {group.name!r} already exists in this org; choose another name",
                details={"field": "name"},
            )
        if (org_id, group.id) in self._groups:
            raise ConflictError(f"group {group.id!r} already exists", details={"field": "id"})
        tx.undo_item(self._groups, (org_id, group.id))
        self._groups[(org_id, group.id)] = group
        tx.undo_item(self._group_names, (org_id, group.name))
        self._group_names[(org_id, group.name)] = group.id
        return group

    async def get_group(self, tx: Transaction, org_id: str, group_id: str) -> Group | None:
        """The group of this org, or `None`."""
        check_scope(org_id, "identity.group")
        return self._groups.get((org_id, group_id))

    async def list_groups(self, tx: Transaction, org_id: str) -> list[Group]:
        """The org's groups, ordered by name then id."""
        check_scope(org_id, "identity.group")
        found = [g for (oid, _), g in self._groups.items() if oid == org_id]
        return sorted(found, key=lambda g: (g.name, g.id))

    async def delete_group(self, tx: Transaction, org_id: str, group_id: str) -> bool:
        """Delete a group, its memberships and the bindings naming it."""
        check_scope(org_id, "identity.group")
        self._writable(tx, "deleting a group")
        group = self._groups.get((org_id, group_id))
        if group is None:
            return False
        self._touch(tx)
        for key in [k for k in self._group_members if k[0] == org_id and k[1] == group_id]:
            tx.undo_item(self._group_members, key)
            del self._group_members[key]
        for binding in list(self._bindings.values()):
            if (
                binding.org_id == org_id
                and binding.subject_kind == "group"
                and binding.subject == group_id
            ):
                self._put_binding(tx, binding.id, None)
        tx.undo_item(self._groups, (org_id, group_id))
        del self._groups[(org_id, group_id)]
        tx.undo_item(self._group_names, (org_id, group.name))
        del self._group_names[(org_id, group.name)]
        return True

    async def add_group_member(
        self, tx: Transaction, org_id: str, member: GroupMember
    ) -> GroupMember:
        """Add a user to a group of the org."""
        check_scope(org_id, "identity.group_member")
        self._writable(tx, "adding a group member")
        if member.org_id != org_id:
            raise wrong_org("the group member", org_id, member.org_id)
        if (org_id, member.group_id) not in self._groups:
            raise NotFoundError(
                f"group {member.group_id!r} not found in this org",
                details={"group_id": member.group_id},
            )
        if (org_id, member.user_id) not in self._memberships:
            raise NotFoundError(
                f"user {member.user_id!r} has no membership of this org; groups hold the org's "
                "members (invite the user first)",
                details={"user_id": member.user_id},
            )
        key = (org_id, member.group_id, member.user_id)
        if key in self._group_members:
            raise ConflictError(
                f"user {member.user_id!r} is already in group {member.group_id!r}",
                details={"field": "user_id"},
            )
        if any(m.id == member.id for m in self._group_members.values()):
            raise ConflictError(f"group member {member.id!r} already exists")
        self._touch(tx)
        tx.undo_item(self._group_members, key)
        self._group_members[key] = member
        return member

    async def remove_group_member(
        self, tx: Transaction, org_id: str, group_id: str, user_id: str
    ) -> bool:
        """Take a user out of a group; return whether they were in it."""
        check_scope(org_id, "identity.group_member")
        self._writable(tx, "removing a group member")
        key = (org_id, group_id, user_id)
        if key not in self._group_members:
            return False
        self._touch(tx)
        tx.undo_item(self._group_members, key)
        del self._group_members[key]
        return True

    async def list_group_members(
        self,
        tx: Transaction,
        org_id: str,
        *,
        group_id: str | None = None,
        user_id: str | None = None,
    ) -> list[GroupMember]:
        """The org's group memberships, ordered by group then user."""
        check_scope(org_id, "identity.group_member")
        found = [
            m
            for (oid, gid, uid), m in self._group_members.items()
            if oid == org_id
            and (group_id is None or gid == group_id)
            and (user_id is None or uid == user_id)
        ]
        return sorted(found, key=lambda m: (m.group_id, m.user_id))

    async def delete_group_members(self, tx: Transaction, org_id: str, *, user_id: str) -> int:
        """Take a user out of every group of the org; return the count."""
        check_scope(org_id, "identity.group_member")
        self._writable(tx, "removing group members")
        doomed = [k for k in self._group_members if k[0] == org_id and k[2] == user_id]
        for key in doomed:
            self._touch(tx)
            tx.undo_item(self._group_members, key)
            del self._group_members[key]
        return len(doomed)

    # -- engine -----------------------------------------------------------------------------------

    async def version(self, tx: Transaction) -> int:
        """The latest committed identity version."""
        return self._version

    async def snapshot(self, tx: Transaction) -> IdentitySnapshot:
        """Every membership, binding and group membership, with the current version."""
        return IdentitySnapshot(
            version=self._version,
            memberships=sorted(self._memberships.values(), key=lambda m: (m.org_id, m.user_id)),
            bindings=sorted(self._bindings.values(), key=lambda b: b.id),
            group_members=sorted(
                self._group_members.values(), key=lambda m: (m.org_id, m.group_id, m.user_id)
            ),
        )

    def seed(
        self,
        *,
        users: Iterable[User] = (),
        orgs: Iterable[Org] = (),
        memberships: Iterable[OrgMembership] = (),
        bindings: Iterable[PolicyBinding] = (),
        groups: Iterable[Group] = (),
        group_members: Iterable[GroupMember] = (),
    ) -> None:
        """Insert records directly, outside any transaction (test set-up).

        The records are checked like the store's own writes, but not against each other's
        existence (seed users and orgs first, or in the same call).

        Raises:
            ConflictError: A duplicate membership (same org and user) or binding id, or a
                membership, binding, group or group member that is already stored.
            SpecValidationError: A record naming an undeclared role or permission.
        """
        checks = self._checks()
        memberships, bindings = list(memberships), list(bindings)
        for membership in memberships:
            checks.check_membership(membership)
        for binding in bindings:
            checks.check_binding(binding)
        for user in users:
            self._users[user.id] = user
            self._emails[user.email] = user.id
        for org in orgs:
            self._orgs[org.id] = org
            self._slugs[org.slug] = org.id
        for membership in memberships:
            key = (membership.org_id, membership.user_id)
            if key in self._memberships:
                raise ConflictError(
                    f"user {membership.user_id!r} already has a membership of org "
                    f"{membership.org_id!r}",
                    details={"field": "user_id"},
                )
            self._memberships[key] = membership
        for binding in bindings:
            if binding.id in self._bindings:
                raise ConflictError(f"policy binding {binding.id!r} already exists")
            self._bindings[binding.id] = binding
        for group in groups:
            self._groups[(group.org_id, group.id)] = group
            self._group_names[(group.org_id, group.name)] = group.id
        for member in group_members:
            key3 = (member.org_id, member.group_id, member.user_id)
            if key3 in self._group_members:
                raise ConflictError(f"user {member.user_id!r} is already in {member.group_id!r}")
            self._group_members[key3] = member
        if memberships or bindings or group_members:
            self._version += 1
