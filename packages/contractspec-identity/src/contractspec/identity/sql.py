"""`SqlIdentityStore`: the `IdentityStore` on SQLite or PostgreSQL through SQLAlchemy.

The tables are built from the identity entity specs by core's `EntityTables` (prefix `cs_`, core's
naming convention) on their own `MetaData`, plus foreign keys from memberships and bindings to
their org and user:

| table | key | unique |
|---|---|---|
| `cs_identity_user` | `id` | `email` |
| `cs_identity_org` | `id` | `slug` |
| `cs_identity_membership` | `(org_id, id)` | `(org_id, user_id)` |
| `cs_identity_policy_binding` | `id` | |
| `cs_identity_group` | `(org_id, id)` | `(org_id, name)` |
| `cs_identity_group_member` | `(org_id, id)` | `(org_id, group_id, user_id)` |
| `cs_identity_version` | `id` (one row) | |

**Versions and notifications.** The first membership, binding or group-membership write of a
transaction bumps the one row of `cs_identity_version` (`INSERT ... ON CONFLICT DO UPDATE ...
RETURNING`), so the row stays locked until the transaction ends and versions follow commit order;
on PostgreSQL the same statement sends `NOTIFY contractspec_identity, '<version>'`, delivered when
(and only if) the transaction commits. Identity writers therefore take turns on that row from their
first identity write to their commit (identity writes are admin actions; a batch writing several
orgs' identity data can meet a concurrent writer in a deadlock, which PostgreSQL breaks by failing
one call with `ConcurrentUpdateError`). `snapshot()` reads the version and every membership,
binding and group membership in one `REPEATABLE READ` transaction on PostgreSQL (one SQLite read
transaction sees one snapshot of the file), so it never mixes two versions.

Add `metadata` to your Alembic `target_metadata`. The store runs in the executor's transaction
(a `SqlTransaction` of the same engine as your `SqlBackend`), never opens one itself and never
disposes the engine. Inserts use `INSERT ... ON CONFLICT DO NOTHING`, so a taken email, slug or
membership is detected by the database's unique constraint (no check-then-insert race) and is
reported as `ConflictError` without aborting the transaction. Every statement on memberships and
bindings, bulk updates and deletes included, filters on the `org_id` scope it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

try:
    from sqlalchemy import (
        BigInteger,
        Column,
        ColumnElement,
        ForeignKeyConstraint,
        Index,
        Integer,
        MetaData,
        String,
        Table,
        cast,
        delete,
        func,
        select,
        text,
        update,
    )
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    from sqlalchemy.exc import DBAPIError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "contractspec.identity.sql needs SQLAlchemy: pip install 'contractspec-identity[sql]'"
    ) from exc

from pydantic import BaseModel

from contractspec.core import (
    ConfigurationError,
    ConflictError,
    NotFoundError,
    Transaction,
)
from contractspec.core.sql import (
    VERSION_COLUMN,
    EntityTables,
    SqlTransaction,
    new_metadata,
    sql_transaction,
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
    binding_entity,
    group_entity,
    group_member_entity,
    membership_entity,
    org_entity,
    user_entity,
)
from contractspec.identity.stores import (
    VERSION_KEY,
    IdentitySnapshot,
    builtin_model,
    check_scope,
    wrong_org,
)

__all__ = [
    "NOTIFY_CHANNEL",
    "SqlIdentityStore",
    "bindings_table",
    "group_members_table",
    "groups_table",
    "memberships_table",
    "metadata",
    "orgs_table",
    "users_table",
    "version_table",
]

#: The PostgreSQL channel identity writes `NOTIFY` (payload: the new identity version).
NOTIFY_CHANNEL = "contractspec_identity"

M = TypeVar("M", bound=BaseModel)

_ENTITIES = (
    user_entity,
    org_entity,
    membership_entity,
    binding_entity,
    group_entity,
    group_member_entity,
)


def _prefix(tables: EntityTables) -> str:
    name: str = tables[membership_entity].table.name
    return name[: -len(membership_entity.table_name)]


def _identity_constraints(tables: EntityTables) -> Table:
    """Add foreign keys, the `user_id` index and the version table to the identity tables
    (once); return the version table."""
    users = tables[user_entity].table
    orgs = tables[org_entity].table
    members = tables[membership_entity].table
    bindings = tables[binding_entity].table
    groups = tables[group_entity].table
    group_members = tables[group_member_entity].table
    if not members.foreign_keys:
        members.append_constraint(ForeignKeyConstraint(["org_id"], [orgs.c.id], ondelete="CASCADE"))
        members.append_constraint(
            ForeignKeyConstraint(["user_id"], [users.c.id], ondelete="CASCADE")
        )
        Index(f"ix_{members.name}_user_id", members.c.user_id)
    if not bindings.foreign_keys:
        bindings.append_constraint(
            ForeignKeyConstraint(["org_id"], [orgs.c.id], ondelete="CASCADE")
        )
    if not groups.foreign_keys:
        groups.append_constraint(ForeignKeyConstraint(["org_id"], [orgs.c.id], ondelete="CASCADE"))
    if not group_members.foreign_keys:
        group_members.append_constraint(
            ForeignKeyConstraint(
                ["org_id", "group_id"], [groups.c.org_id, groups.c.id], ondelete="CASCADE"
            )
        )
        group_members.append_constraint(
            ForeignKeyConstraint(["user_id"], [users.c.id], ondelete="CASCADE")
        )
    name = f"{_prefix(tables)}identity_version"
    existing = tables.metadata.tables.get(name)
    if existing is not None:
        return existing
    return Table(
        name,
        tables.metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("version", BigInteger, nullable=False),
        comment="The identity version: bumped by every membership, binding or group write.",
    )


#: The default identity tables (`cs_identity_*`). Add it to your Alembic `target_metadata`.
metadata = new_metadata()
_default_tables = EntityTables(_ENTITIES, prefix="cs_", metadata=metadata)
version_table: Table = _identity_constraints(_default_tables)
users_table: Table = _default_tables[user_entity].table
orgs_table: Table = _default_tables[org_entity].table
memberships_table: Table = _default_tables[membership_entity].table
bindings_table: Table = _default_tables[binding_entity].table
groups_table: Table = _default_tables[group_entity].table
group_members_table: Table = _default_tables[group_member_entity].table


def _row(model: BaseModel) -> dict[str, Any]:
    row = model.model_dump()
    if isinstance(model, PolicyBinding):  # the one structured field: conditions (JSON)
        row["conditions"] = model.model_dump(mode="json", include={"conditions"})["conditions"]
    return row


def _load(model: type[M], row: Mapping[Any, Any]) -> M:
    return model.model_validate({k: v for k, v in row.items() if k != VERSION_COLUMN})


class SqlIdentityStore:
    """`IdentityStore` on the identity tables (see the module docs).

    Args:
        tables: Where the identity tables are. By default the `cs_identity_*` tables of this
            module's `metadata`. When the identity entities are registered in your registry (as
            `register_identity` does), pass your `SqlBackend`'s `tables` so the store uses the
            tables the backend creates (named after the entities with the backend's prefix); the
            foreign keys and the `user_id` index are added to them.

        model: The `AccessModel` records are checked against (`Identity` attaches its own when
            none is given).
        channel: The PostgreSQL `NOTIFY` channel of identity writes (`PolicySync` listens on it).

    Create the tables with `await create_all(engine, store.metadata)` (or `backend.create_all()`)
    in tests and prototypes, or with Alembic in production. The version table
    (`<prefix>identity_version`) lives on the same `MetaData`.

    Example:
        ```python
        from contractspec.core.sql import SqlBackend, create_all
        from contractspec.identity.sql import SqlIdentityStore, metadata

        backend = SqlBackend(engine, registry)
        await create_all(engine, *backend.metadatas, metadata)
        store = SqlIdentityStore()
        ```
    """

    __slots__ = (
        "bindings",
        "channel",
        "group_members",
        "groups",
        "memberships",
        "metadata",
        "model",
        "orgs",
        "users",
        "versions",
    )

    def __init__(
        self,
        tables: EntityTables | None = None,
        *,
        model: AccessModel | None = None,
        channel: str = NOTIFY_CHANNEL,
    ) -> None:
        if tables is None:
            tables = _default_tables
        self.versions: Table = _identity_constraints(tables)
        self.metadata: MetaData = tables.metadata
        self.model = model
        self.channel = channel
        self.users: Table = tables[user_entity].table
        self.orgs: Table = tables[org_entity].table
        self.memberships: Table = tables[membership_entity].table
        self.bindings: Table = tables[binding_entity].table
        self.groups: Table = tables[group_entity].table
        self.group_members: Table = tables[group_member_entity].table

    # -- helpers ----------------------------------------------------------------------------------

    @staticmethod
    def _text_col(tx: SqlTransaction, col: Any) -> Any:
        return col.collate("C") if tx.dialect == "postgresql" else col

    @staticmethod
    async def _insert(tx: SqlTransaction, table: Table, row: dict[str, Any]) -> bool:
        """Insert unless a unique constraint is hit; return whether the row was inserted."""
        tx.check_writable(f"inserting into {table.name}")
        insert = pg_insert if tx.dialect == "postgresql" else sqlite_insert
        pk = list(table.primary_key.columns)[-1]
        stmt = insert(table).values(row).on_conflict_do_nothing().returning(pk)
        result = await tx.execute(stmt, write=True)
        return result.first() is not None

    def _checks(self) -> AccessModel:
        return self.model if self.model is not None else builtin_model()

    async def _touch(self, sql: SqlTransaction) -> None:
        """Bump the identity version (once per transaction; on PostgreSQL with a `NOTIFY`)."""
        if VERSION_KEY in sql.info:
            return
        v = self.versions
        insert = pg_insert if sql.dialect == "postgresql" else sqlite_insert
        bump = (
            insert(v)
            .values(id=1, version=1)
            .on_conflict_do_update(index_elements=[v.c.id], set_={"version": v.c.version + 1})
            .returning(v.c.version)
        )
        stmt: Any = bump
        if sql.dialect == "postgresql":
            bumped = bump.cte("bumped")
            stmt = select(
                bumped.c.version, func.pg_notify(self.channel, cast(bumped.c.version, String))
            )
        result = await sql.execute(stmt, write=True)
        version = int(result.scalar_one())
        sql.info[VERSION_KEY] = version
        sql.add_undo(lambda: sql.info.pop(VERSION_KEY, None))

    async def _one(self, tx: Transaction, stmt: Any) -> Mapping[Any, Any] | None:
        result = await sql_transaction(tx, "SqlIdentityStore").execute(stmt)
        return result.mappings().first()

    # -- users ------------------------------------------------------------------------------------

    async def add_user(self, tx: Transaction, user: User) -> User:
        """Insert a user; `ConflictError` on a taken id or email."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        if not await self._insert(sql, self.users, _row(user)):
            if await self.get_user_by_email(tx, user.email) is not None:
                raise ConflictError(
                    "a user with this email already exists", details={"field": "email"}
                )
            raise ConflictError(f"user {user.id!r} already exists", details={"field": "id"})
        return user

    async def get_user(self, tx: Transaction, user_id: str) -> User | None:
        """The user, or `None`."""
        row = await self._one(tx, select(self.users).where(self.users.c.id == user_id))
        return None if row is None else _load(User, row)

    async def get_user_by_email(self, tx: Transaction, email: str) -> User | None:
        """The user with this email, or `None`."""
        stmt = select(self.users).where(self.users.c.email == email.strip().lower())
        row = await self._one(tx, stmt)
        return None if row is None else _load(User, row)

    # -- orgs -------------------------------------------------------------------------------------

    async def add_org(self, tx: Transaction, org: Org) -> Org:
        """Insert an org; `ConflictError` on a taken id or slug."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        if not await self._insert(sql, self.orgs, _row(org)):
            if await self._one(tx, select(self.orgs.c.id).where(self.orgs.c.slug == org.slug)):
                raise ConflictError(
                    f"the slug {org.slug!r} is taken; choose another", details={"field": "slug"}
                )
            raise ConflictError(f"org {org.id!r} already exists", details={"field": "id"})
        return org

    async def get_org(self, tx: Transaction, org_id: str) -> Org | None:
        """The org, or `None`."""
        row = await self._one(tx, select(self.orgs).where(self.orgs.c.id == org_id))
        return None if row is None else _load(Org, row)

    async def update_org(self, tx: Transaction, org: Org) -> Org:
        """Replace the org; `NotFoundError` if absent, `ConflictError` on a taken slug."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("updating an org")
        t = self.orgs
        taken = await self._one(tx, select(t.c.id).where(t.c.slug == org.slug, t.c.id != org.id))
        if taken is not None:
            raise ConflictError(
                f"the slug {org.slug!r} is taken; choose another", details={"field": "slug"}
            )
        values = _row(org)
        values.pop("id")
        if await sql.write(update(t).where(t.c.id == org.id).values(values)) == 0:
            raise NotFoundError(f"org {org.id!r} not found", details={"org_id": org.id})
        return org

    async def lock_org(self, tx: Transaction, org_id: str) -> Org:
        """The org, locked with `SELECT ... FOR UPDATE` on PostgreSQL until `tx` ends."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        stmt = select(self.orgs).where(self.orgs.c.id == org_id)
        if sql.dialect == "postgresql" and not sql.readonly:
            stmt = stmt.with_for_update()
        row = await self._one(tx, stmt)
        if row is None:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        return _load(Org, row)

    async def orgs_of_user(self, tx: Transaction, user_id: str) -> list[tuple[Org, OrgMembership]]:
        """The user's orgs with the memberships, ordered by org name then id (one query)."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        o, m = self.orgs, self.memberships
        stmt = (
            select(o, *(c.label(f"m_{c.name}") for c in m.c))
            .join(m, m.c.org_id == o.c.id)
            .where(m.c.user_id == user_id)
            .order_by(self._text_col(sql, o.c.name), self._text_col(sql, o.c.id))
        )
        result = await sql.execute(stmt)
        out: list[tuple[Org, OrgMembership]] = []
        for row in result.mappings():
            org = _load(Org, {c.name: row[c.name] for c in o.c})
            membership = _load(OrgMembership, {c.name: row[f"m_{c.name}"] for c in m.c})
            out.append((org, membership))
        return out

    # -- memberships ------------------------------------------------------------------------------

    async def add_membership(
        self, tx: Transaction, org_id: str, membership: OrgMembership
    ) -> OrgMembership:
        """Insert; `ConflictError` if the user already has a membership of the org."""
        check_scope(org_id, "identity.membership")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("adding a membership")
        if membership.org_id != org_id:
            raise wrong_org("the membership", org_id, membership.org_id)
        self._checks().check_membership(membership)
        if await self._one(tx, select(self.orgs.c.id).where(self.orgs.c.id == org_id)) is None:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        if await self.get_user(tx, membership.user_id) is None:
            raise NotFoundError(
                f"user {membership.user_id!r} not found", details={"user_id": membership.user_id}
            )
        await self._touch(sql)
        if not await self._insert(sql, self.memberships, _row(membership)):
            if await self.get_membership(tx, org_id, membership.user_id) is not None:
                raise ConflictError(
                    f"user {membership.user_id!r} already has a membership of this org",
                    details={"field": "user_id"},
                )
            raise ConflictError(f"membership {membership.id!r} already exists")
        return membership

    def _scope(self, org_id: str) -> list[ColumnElement[bool]]:
        return [self.memberships.c.org_id == check_scope(org_id, "identity.membership")]

    async def get_membership(
        self, tx: Transaction, org_id: str, user_id: str
    ) -> OrgMembership | None:
        """The membership in this org, or `None`."""
        m = self.memberships
        row = await self._one(tx, select(m).where(*self._scope(org_id), m.c.user_id == user_id))
        return None if row is None else _load(OrgMembership, row)

    async def list_memberships(
        self,
        tx: Transaction,
        org_id: str,
        *,
        role: str | None = None,
        status: MembershipStatus | None = None,
    ) -> list[OrgMembership]:
        """The org's memberships, filtered, ordered by `created_at` then `user_id`."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        m = self.memberships
        where = self._scope(org_id)
        if role is not None:
            where.append(m.c.role == role)
        if status is not None:
            where.append(m.c.status == MembershipStatus(status))
        stmt = select(m).where(*where).order_by(m.c.created_at, self._text_col(sql, m.c.user_id))
        result = await sql.execute(stmt)
        return [_load(OrgMembership, row) for row in result.mappings()]

    async def update_membership(
        self, tx: Transaction, org_id: str, membership: OrgMembership
    ) -> OrgMembership:
        """Replace role, status, inviter and times; `NotFoundError` if absent from this org."""
        scope = self._scope(org_id)
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("updating a membership")
        if membership.org_id != org_id:
            raise wrong_org("the membership", org_id, membership.org_id)
        self._checks().check_membership(membership)
        current = await self.get_membership(tx, org_id, membership.user_id)
        if current is None:
            raise NotFoundError(
                f"user {membership.user_id!r} has no membership of this org",
                details={"user_id": membership.user_id},
            )
        await self._touch(sql)
        m = self.memberships
        values = _row(membership)
        for key in ("id", "org_id", "user_id"):
            values.pop(key)
        await sql.execute(
            update(m).where(*scope, m.c.user_id == membership.user_id).values(values), write=True
        )
        return membership.model_copy(update={"id": current.id})

    async def delete_membership(self, tx: Transaction, org_id: str, user_id: str) -> bool:
        """Delete; return whether it existed."""
        return await self.delete_memberships(tx, org_id, [user_id]) == 1

    async def set_membership_status(
        self, tx: Transaction, org_id: str, user_ids: Sequence[str], status: MembershipStatus
    ) -> int:
        """Bulk-update statuses in this org (one `UPDATE ... WHERE org_id = ...`)."""
        scope = self._scope(org_id)
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("updating memberships")
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return 0
        await self._touch(sql)
        m = self.memberships
        stmt = update(m).where(*scope, m.c.user_id.in_(ids)).values(status=MembershipStatus(status))
        return await sql.write(stmt)

    async def delete_memberships(
        self, tx: Transaction, org_id: str, user_ids: Sequence[str]
    ) -> int:
        """Bulk-delete in this org (one `DELETE ... WHERE org_id = ...`)."""
        scope = self._scope(org_id)
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("deleting memberships")
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return 0
        await self._touch(sql)
        m = self.memberships
        return await sql.write(delete(m).where(*scope, m.c.user_id.in_(ids)))

    # -- bindings ---------------------------------------------------------------------------------

    def _binding_scope(self, org_id: str | None) -> ColumnElement[bool]:
        b = self.bindings
        return b.c.org_id.is_(None) if org_id is None else b.c.org_id == org_id

    async def add_binding(
        self, tx: Transaction, org_id: str | None, binding: PolicyBinding
    ) -> PolicyBinding:
        """Insert; `ConflictError` on a taken id."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("adding a policy binding")
        if binding.org_id != org_id:
            raise wrong_org("the policy binding", str(org_id), binding.org_id)
        self._checks().check_binding(binding)
        if (
            org_id is not None
            and await self._one(tx, select(self.orgs.c.id).where(self.orgs.c.id == org_id)) is None
        ):
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        if binding.subject_kind == "user" and await self.get_user(tx, binding.subject) is None:
            raise NotFoundError(
                f"user {binding.subject!r} not found; bindings name existing users "
                "(subject_kind='user'), groups, or agent/system/service actors",
                details={"field": "subject", "subject": binding.subject},
            )
        if (
            binding.subject_kind == "group"
            and await self.get_group(tx, str(org_id), binding.subject) is None
        ):
            raise NotFoundError(
                f"group {binding.subject!r} not found in org {org_id!r}",
                details={"field": "subject", "subject": binding.subject},
            )
        await self._touch(sql)
        if not await self._insert(sql, self.bindings, _row(binding)):
            raise ConflictError(f"policy binding {binding.id!r} already exists")
        return binding

    async def get_binding(
        self, tx: Transaction, org_id: str | None, binding_id: str
    ) -> PolicyBinding | None:
        """The binding of this scope, or `None`."""
        b = self.bindings
        row = await self._one(
            tx, select(b).where(self._binding_scope(org_id), b.c.id == binding_id)
        )
        return None if row is None else _load(PolicyBinding, row)

    async def list_bindings(
        self,
        tx: Transaction,
        org_id: str | None,
        *,
        subject: str | None = None,
        subject_kind: SubjectKind | None = None,
    ) -> list[PolicyBinding]:
        """The scope's bindings, ordered by `created_at` then `id`."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        b = self.bindings
        where = [self._binding_scope(org_id)]
        if subject is not None:
            where.append(b.c.subject == subject)
        if subject_kind is not None:
            where.append(b.c.subject_kind == subject_kind)
        stmt = select(b).where(*where).order_by(b.c.created_at, self._text_col(sql, b.c.id))
        result = await sql.execute(stmt)
        return [_load(PolicyBinding, row) for row in result.mappings()]

    async def delete_binding(self, tx: Transaction, org_id: str | None, binding_id: str) -> bool:
        """Delete a binding of this scope; return whether it existed."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("deleting a policy binding")
        await self._touch(sql)
        b = self.bindings
        stmt = delete(b).where(self._binding_scope(org_id), b.c.id == binding_id)
        return bool(await sql.write(stmt))

    async def delete_bindings(
        self, tx: Transaction, org_id: str, *, subject: str, subject_kind: SubjectKind = "user"
    ) -> int:
        """Bulk-delete the subject's bindings in this org (one `DELETE`)."""
        check_scope(org_id, "identity.policy_binding")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("deleting policy bindings")
        await self._touch(sql)
        b = self.bindings
        stmt = delete(b).where(
            b.c.org_id == org_id, b.c.subject == subject, b.c.subject_kind == subject_kind
        )
        return await sql.write(stmt)

    # -- groups -----------------------------------------------------------------------------------

    async def add_group(self, tx: Transaction, org_id: str, group: Group) -> Group:
        """Insert a group; `ConflictError` if the name or id is taken in the org."""
        check_scope(org_id, "identity.group")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("adding a group")
        if group.org_id != org_id:
            raise wrong_org("the group", org_id, group.org_id)
        if await self._one(tx, select(self.orgs.c.id).where(self.orgs.c.id == org_id)) is None:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        if not await self._insert(sql, self.groups, _row(group)):
            g = self.groups
            taken = select(g.c.id).where(g.c.org_id == org_id, g.c.name == group.name)
            if await self._one(tx, taken) is not None:
                raise ConflictError(
                    f"a group named {group.name!r} already exists in this org; choose another name",
                    details={"field": "name"},
                )
            raise ConflictError(f"group {group.id!r} already exists", details={"field": "id"})
        return group

    async def get_group(self, tx: Transaction, org_id: str, group_id: str) -> Group | None:
        """The group of this org, or `None`."""
        g = self.groups
        stmt = select(g).where(
            g.c.org_id == check_scope(org_id, "identity.group"), g.c.id == group_id
        )
        row = await self._one(tx, stmt)
        return None if row is None else _load(Group, row)

    async def list_groups(self, tx: Transaction, org_id: str) -> list[Group]:
        """The org's groups, ordered by name then id."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        g = self.groups
        stmt = (
            select(g)
            .where(g.c.org_id == check_scope(org_id, "identity.group"))
            .order_by(self._text_col(sql, g.c.name), self._text_col(sql, g.c.id))
        )
        result = await sql.execute(stmt)
        return [_load(Group, row) for row in result.mappings()]

    async def delete_group(self, tx: Transaction, org_id: str, group_id: str) -> bool:
        """Delete a group, its memberships and the bindings naming it (three statements)."""
        check_scope(org_id, "identity.group")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("deleting a group")
        g, gm, b = self.groups, self.group_members, self.bindings
        await self._touch(sql)
        await sql.write(delete(gm).where(gm.c.org_id == org_id, gm.c.group_id == group_id))
        await sql.write(
            delete(b).where(
                b.c.org_id == org_id, b.c.subject_kind == "group", b.c.subject == group_id
            )
        )
        return bool(await sql.write(delete(g).where(g.c.org_id == org_id, g.c.id == group_id)))

    async def add_group_member(
        self, tx: Transaction, org_id: str, member: GroupMember
    ) -> GroupMember:
        """Add a user to a group of the org; `ConflictError` if already in it."""
        check_scope(org_id, "identity.group_member")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("adding a group member")
        if member.org_id != org_id:
            raise wrong_org("the group member", org_id, member.org_id)
        if await self.get_group(tx, org_id, member.group_id) is None:
            raise NotFoundError(
                f"group {member.group_id!r} not found in this org",
                details={"group_id": member.group_id},
            )
        if await self.get_membership(tx, org_id, member.user_id) is None:
            raise NotFoundError(
                f"user {member.user_id!r} has no membership of this org; groups hold the org's "
                "members (invite the user first)",
                details={"user_id": member.user_id},
            )
        await self._touch(sql)
        if not await self._insert(sql, self.group_members, _row(member)):
            gm = self.group_members
            there = select(gm.c.id).where(
                gm.c.org_id == org_id,
                gm.c.group_id == member.group_id,
                gm.c.user_id == member.user_id,
            )
            if await self._one(tx, there) is not None:
                raise ConflictError(
                    f"user {member.user_id!r} is already in group {member.group_id!r}",
                    details={"field": "user_id"},
                )
            raise ConflictError(f"group member {member.id!r} already exists")
        return member

    async def remove_group_member(
        self, tx: Transaction, org_id: str, group_id: str, user_id: str
    ) -> bool:
        """Take a user out of a group (one `DELETE`); return whether they were in it."""
        check_scope(org_id, "identity.group_member")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("removing a group member")
        await self._touch(sql)
        gm = self.group_members
        stmt = delete(gm).where(
            gm.c.org_id == org_id, gm.c.group_id == group_id, gm.c.user_id == user_id
        )
        return bool(await sql.write(stmt))

    async def list_group_members(
        self,
        tx: Transaction,
        org_id: str,
        *,
        group_id: str | None = None,
        user_id: str | None = None,
    ) -> list[GroupMember]:
        """The org's group memberships, ordered by group then user."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        gm = self.group_members
        where = [gm.c.org_id == check_scope(org_id, "identity.group_member")]
        if group_id is not None:
            where.append(gm.c.group_id == group_id)
        if user_id is not None:
            where.append(gm.c.user_id == user_id)
        stmt = (
            select(gm)
            .where(*where)
            .order_by(self._text_col(sql, gm.c.group_id), self._text_col(sql, gm.c.user_id))
        )
        result = await sql.execute(stmt)
        return [_load(GroupMember, row) for row in result.mappings()]

    async def delete_group_members(self, tx: Transaction, org_id: str, *, user_id: str) -> int:
        """Take a user out of every group of the org (one `DELETE`); return the count."""
        check_scope(org_id, "identity.group_member")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("removing group members")
        await self._touch(sql)
        gm = self.group_members
        return await sql.write(delete(gm).where(gm.c.org_id == org_id, gm.c.user_id == user_id))

    # -- engine -----------------------------------------------------------------------------------

    async def version(self, tx: Transaction) -> int:
        """The latest committed identity version this transaction sees (0 if never written)."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        v = self.versions
        result = await sql.execute(select(v.c.version).where(v.c.id == 1))
        found = result.scalar_one_or_none()
        return 0 if found is None else int(found)

    async def snapshot(self, tx: Transaction) -> IdentitySnapshot:
        """The version, every membership, binding and group membership: one consistent read.

        On PostgreSQL the transaction is made `REPEATABLE READ` first, so its four queries see
        one snapshot; on SQLite one read transaction always does.

        Raises:
            ConfigurationError: On PostgreSQL, the transaction already ran a query (pass a fresh
                read-only one, as `PolicyEngine.reload` does).
        """
        sql = sql_transaction(tx, "SqlIdentityStore")
        if sql.dialect == "postgresql":
            try:
                await sql.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            except DBAPIError as exc:
                raise ConfigurationError(
                    "SqlIdentityStore.snapshot() must be the first read of its transaction (it "
                    "makes it REPEATABLE READ to read one consistent snapshot); begin a fresh "
                    "read-only transaction for it"
                ) from exc
        version = await self.version(tx)
        m, b, gm = self.memberships, self.bindings, self.group_members
        members = await sql.execute(
            select(m).order_by(self._text_col(sql, m.c.org_id), self._text_col(sql, m.c.user_id))
        )
        memberships = [_load(OrgMembership, row) for row in members.mappings()]
        rows = await sql.execute(select(b).order_by(self._text_col(sql, b.c.id)))
        bindings = [_load(PolicyBinding, row) for row in rows.mappings()]
        grouped = await sql.execute(
            select(gm).order_by(
                self._text_col(sql, gm.c.org_id),
                self._text_col(sql, gm.c.group_id),
                self._text_col(sql, gm.c.user_id),
            )
        )
        group_members = [_load(GroupMember, row) for row in grouped.mappings()]
        return IdentitySnapshot(
            version=version,
            memberships=memberships,
            bindings=bindings,
            group_members=group_members,
        )
