"""`IdentityStore`: persistence of users, orgs, memberships and bindings, and its memory adapter.

Every method takes the call's `Transaction` (`ctx.tx` in a handler), so identity writes commit or
roll back with the rest of the call. Tenant data (memberships, bindings) is always read and
written through an explicit `org_id` scope, which handlers take from the execution context
(`ctx.org_id`): a record of another org is invisible (reads return nothing, writes raise
`NotFoundError`, bulk paths touch nothing), exactly like core's repositories.

Uniqueness (user email, org slug, one membership per user and org) is enforced by the store
itself (by the database in the SQL adapter) and reported as `ConflictError`; the transaction stays
usable after a conflict.

The SQL adapter lives in `contractspec.identity.sql` (`pip install 'contractspec-identity[sql]'`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from contractspec.core import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    TenantScopeError,
    Transaction,
)
from contractspec.identity.model import (
    MembershipStatus,
    Org,
    OrgMembership,
    PolicyBinding,
    User,
)

__all__ = ["IdentityStore", "MemoryIdentityStore", "check_scope"]


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

    Users and orgs are global records (an org *is* a tenant). Memberships and bindings are tenant
    data: every method on them takes `org_id` and only ever sees that org's records.
    """

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
        """
        ...

    async def get_binding(
        self, tx: Transaction, org_id: str | None, binding_id: str
    ) -> PolicyBinding | None:
        """The binding in this scope, or `None`."""
        ...

    async def list_bindings(
        self, tx: Transaction, org_id: str | None, *, subject: str | None = None
    ) -> list[PolicyBinding]:
        """Bindings of the scope (optionally of one subject), ordered by `created_at` then `id`."""
        ...

    async def delete_binding(self, tx: Transaction, org_id: str | None, binding_id: str) -> bool:
        """Delete a binding of this scope; return whether it existed."""
        ...

    async def delete_bindings(self, tx: Transaction, org_id: str, *, subject: str) -> int:
        """Bulk-delete the subject's bindings in `org_id`; return the count."""
        ...

    # -- engine -----------------------------------------------------------------------------------

    async def snapshot(self, tx: Transaction) -> tuple[list[OrgMembership], list[PolicyBinding]]:
        """Every membership and binding of every org (for `PolicyEngine.reload`; privileged)."""
        ...


def _membership_order(m: OrgMembership) -> tuple[object, str]:
    return (m.created_at, m.user_id)


def _binding_order(b: PolicyBinding) -> tuple[object, str]:
    return (b.created_at, b.id)


class MemoryIdentityStore:
    """`IdentityStore` in dictionaries, with transactional undo: for tests and prototypes."""

    __slots__ = ("_bindings", "_emails", "_memberships", "_orgs", "_slugs", "_users")

    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._emails: dict[str, str] = {}
        self._orgs: dict[str, Org] = {}
        self._slugs: dict[str, str] = {}
        self._memberships: dict[tuple[str, str], OrgMembership] = {}
        self._bindings: dict[str, PolicyBinding] = {}

    # -- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _writable(tx: Transaction, what: str) -> None:
        if getattr(tx, "dialect", None) is not None:  # a SqlTransaction: the data would be lost
            raise ConfigurationError(
                "MemoryIdentityStore is writing inside a SQL transaction, so identity data would "
                "not be persisted; pass SqlIdentityStore(backend.tables) to register_identity"
            )
        tx.check_writable(what)

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
        key = (org_id, membership.user_id)
        before = self._memberships.get(key)
        if before is None:
            raise NotFoundError(
                f"user {membership.user_id!r} has no membership of this org",
                details={"user_id": membership.user_id},
            )
        self._put_membership(tx, key, membership.model_copy(update={"id": before.id}))
        return self._memberships[key]

    async def delete_membership(self, tx: Transaction, org_id: str, user_id: str) -> bool:
        """Delete; return whether it existed."""
        check_scope(org_id, "identity.membership")
        self._writable(tx, "deleting a membership")
        key = (org_id, user_id)
        if key not in self._memberships:
            return False
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
                self._put_membership(tx, key, None)
                count += 1
        return count

    # -- bindings ---------------------------------------------------------------------------------

    def _put_binding(self, tx: Transaction, binding_id: str, new: PolicyBinding | None) -> None:
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
        self, tx: Transaction, org_id: str | None, *, subject: str | None = None
    ) -> list[PolicyBinding]:
        """The scope's bindings, ordered by `created_at` then `id`."""
        found = [
            b
            for b in self._bindings.values()
            if b.org_id == org_id and (subject is None or b.subject == subject)
        ]
        return sorted(found, key=_binding_order)

    async def delete_binding(self, tx: Transaction, org_id: str | None, binding_id: str) -> bool:
        """Delete a binding of this scope; return whether it existed."""
        self._writable(tx, "deleting a policy binding")
        if await self.get_binding(tx, org_id, binding_id) is None:
            return False
        self._put_binding(tx, binding_id, None)
        return True

    async def delete_bindings(self, tx: Transaction, org_id: str, *, subject: str) -> int:
        """Bulk-delete the subject's bindings in this org; return the count."""
        check_scope(org_id, "identity.policy_binding")
        self._writable(tx, "deleting policy bindings")
        doomed = [b.id for b in await self.list_bindings(tx, org_id, subject=subject)]
        for binding_id in doomed:
            self._put_binding(tx, binding_id, None)
        return len(doomed)

    # -- engine -----------------------------------------------------------------------------------

    async def snapshot(self, tx: Transaction) -> tuple[list[OrgMembership], list[PolicyBinding]]:
        """Every membership and binding."""
        return (
            sorted(self._memberships.values(), key=lambda m: (m.org_id, m.user_id)),
            sorted(self._bindings.values(), key=lambda b: b.id),
        )

    def seed(
        self,
        *,
        users: Iterable[User] = (),
        orgs: Iterable[Org] = (),
        memberships: Iterable[OrgMembership] = (),
        bindings: Iterable[PolicyBinding] = (),
    ) -> None:
        """Insert records directly, outside any transaction (test set-up)."""
        for user in users:
            self._users[user.id] = user
            self._emails[user.email] = user.id
        for org in orgs:
            self._orgs[org.id] = org
            self._slugs[org.slug] = org.id
        for membership in memberships:
            self._memberships[(membership.org_id, membership.user_id)] = membership
        for binding in bindings:
            self._bindings[binding.id] = binding
