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
        ColumnElement,
        ForeignKeyConstraint,
        Index,
        MetaData,
        Table,
        delete,
        select,
        update,
    )
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "contractspec.identity.sql needs SQLAlchemy: pip install 'contractspec-identity[sql]'"
    ) from exc

from pydantic import BaseModel

from contractspec.core import (
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
    MembershipStatus,
    Org,
    OrgMembership,
    PolicyBinding,
    User,
    binding_entity,
    membership_entity,
    org_entity,
    user_entity,
)
from contractspec.identity.stores import check_scope, wrong_org

__all__ = [
    "SqlIdentityStore",
    "bindings_table",
    "memberships_table",
    "metadata",
    "orgs_table",
    "users_table",
]

M = TypeVar("M", bound=BaseModel)

_ENTITIES = (user_entity, org_entity, membership_entity, binding_entity)


def _identity_constraints(tables: EntityTables) -> None:
    """Add foreign keys and the `user_id` index to the identity tables (once)."""
    users = tables[user_entity].table
    orgs = tables[org_entity].table
    members = tables[membership_entity].table
    bindings = tables[binding_entity].table
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


#: The default identity tables (`cs_identity_*`). Add it to your Alembic `target_metadata`.
metadata = new_metadata()
_default_tables = EntityTables(_ENTITIES, prefix="cs_", metadata=metadata)
_identity_constraints(_default_tables)
users_table: Table = _default_tables[user_entity].table
orgs_table: Table = _default_tables[org_entity].table
memberships_table: Table = _default_tables[membership_entity].table
bindings_table: Table = _default_tables[binding_entity].table


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

    Create the tables with `await create_all(engine, store.metadata)` (or `backend.create_all()`)
    in tests and prototypes, or with Alembic in production.

    Example:
        ```python
        from contractspec.core.sql import SqlBackend, create_all
        from contractspec.identity.sql import SqlIdentityStore, metadata

        backend = SqlBackend(engine, registry)
        await create_all(engine, *backend.metadatas, metadata)
        store = SqlIdentityStore()
        ```
    """

    __slots__ = ("bindings", "memberships", "metadata", "orgs", "users")

    def __init__(self, tables: EntityTables | None = None) -> None:
        if tables is None:
            tables = _default_tables
        else:
            _identity_constraints(tables)
        self.metadata: MetaData = tables.metadata
        self.users: Table = tables[user_entity].table
        self.orgs: Table = tables[org_entity].table
        self.memberships: Table = tables[membership_entity].table
        self.bindings: Table = tables[binding_entity].table

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
        if await self._one(tx, select(self.orgs.c.id).where(self.orgs.c.id == org_id)) is None:
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
        if await self.get_user(tx, membership.user_id) is None:
            raise NotFoundError(
                f"user {membership.user_id!r} not found", details={"user_id": membership.user_id}
            )
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
        current = await self.get_membership(tx, org_id, membership.user_id)
        if current is None:
            raise NotFoundError(
                f"user {membership.user_id!r} has no membership of this org",
                details={"user_id": membership.user_id},
            )
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
        if (
            org_id is not None
            and await self._one(tx, select(self.orgs.c.id).where(self.orgs.c.id == org_id)) is None
        ):
            raise NotFoundError(f"org {org_id!r} not found", details={"org_id": org_id})
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
        self, tx: Transaction, org_id: str | None, *, subject: str | None = None
    ) -> list[PolicyBinding]:
        """The scope's bindings, ordered by `created_at` then `id`."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        b = self.bindings
        where = [self._binding_scope(org_id)]
        if subject is not None:
            where.append(b.c.subject == subject)
        stmt = select(b).where(*where).order_by(b.c.created_at, self._text_col(sql, b.c.id))
        result = await sql.execute(stmt)
        return [_load(PolicyBinding, row) for row in result.mappings()]

    async def delete_binding(self, tx: Transaction, org_id: str | None, binding_id: str) -> bool:
        """Delete a binding of this scope; return whether it existed."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("deleting a policy binding")
        b = self.bindings
        stmt = delete(b).where(self._binding_scope(org_id), b.c.id == binding_id)
        return bool(await sql.write(stmt))

    async def delete_bindings(self, tx: Transaction, org_id: str, *, subject: str) -> int:
        """Bulk-delete the subject's bindings in this org (one `DELETE`)."""
        check_scope(org_id, "identity.policy_binding")
        sql = sql_transaction(tx, "SqlIdentityStore")
        sql.check_writable("deleting policy bindings")
        b = self.bindings
        stmt = delete(b).where(b.c.org_id == org_id, b.c.subject == subject)
        return await sql.write(stmt)

    # -- engine -----------------------------------------------------------------------------------

    async def snapshot(self, tx: Transaction) -> tuple[list[OrgMembership], list[PolicyBinding]]:
        """Every membership and binding (two queries)."""
        sql = sql_transaction(tx, "SqlIdentityStore")
        m, b = self.memberships, self.bindings
        members = await sql.execute(
            select(m).order_by(self._text_col(sql, m.c.org_id), self._text_col(sql, m.c.user_id))
        )
        memberships = [_load(OrgMembership, row) for row in members.mappings()]
        rows = await sql.execute(select(b).order_by(self._text_col(sql, b.c.id)))
        return memberships, [_load(PolicyBinding, row) for row in rows.mappings()]
