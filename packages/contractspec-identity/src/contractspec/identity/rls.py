"""PostgreSQL row-level security from the spec: a second wall behind the stores' `org_id` filters.

`rls_policy_pack()` turns the tenant-scoped entities of a spec (and the identity tables) into SQL
that enables **and forces** row-level security on each table and adds one policy per table:

```sql
ALTER TABLE crm_deal ENABLE ROW LEVEL SECURITY;
ALTER TABLE crm_deal FORCE ROW LEVEL SECURITY;   -- the table owner is filtered too
CREATE POLICY cs_tenant_isolation ON crm_deal
    USING (org_id = current_setting('contractspec.org_id', true))
    WITH CHECK (org_id = current_setting('contractspec.org_id', true));
```

The tenant is set **per transaction** with `set_config(name, value, true)` (`SET LOCAL`), never
per session: on a pooled connection a session setting would leak into the next request that
checks the connection out. Without a tenant set, `current_setting(..., true)` is `NULL` and every
policy hides every row (fail closed).

* `TenantSettings` is an executor middleware that sets the tenant (and, optionally, a non-owner
  role with `SET LOCAL ROLE`) in the call's transaction before the handler runs.
* Memberships get one more read-only policy: a user sees their own memberships in every org
  (`contractspec.user_id`), which `identity.org.list_mine` needs.
* Platform-wide bindings (`org_id IS NULL`) are invisible to tenants; load the policy engine
  (`Identity.load`) over a connection whose role has `BYPASSRLS` (or owns the tables without
  `FORCE`), as you would for migrations.

Sources: PostgreSQL manual, "Row Security Policies" (ddl-rowsecurity) and `set_config`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from pydantic import BaseModel

from contractspec.core import ConfigurationError, EntitySpec, Invocation, SpecRegistry
from contractspec.core.sql import EntityTables, SqlTransaction

try:
    from sqlalchemy import Table, text
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "contractspec.identity.rls needs SQLAlchemy: pip install 'contractspec-identity[postgres]'"
    ) from exc

from contractspec.identity.model import binding_entity, membership_entity

__all__ = [
    "ORG_SETTING",
    "POLICY_NAME",
    "USER_SETTING",
    "TenantSettings",
    "rls_policy_pack",
    "set_tenant",
]

#: Transaction-local setting holding the tenant (`current_setting('contractspec.org_id', true)`).
ORG_SETTING: Final = "contractspec.org_id"
#: Transaction-local setting holding the acting user (for "my memberships" reads).
USER_SETTING: Final = "contractspec.user_id"
#: Name of the generated policies.
POLICY_NAME: Final = "cs_tenant_isolation"

_IDENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*\Z")


def _ident(name: str, what: str) -> str:
    """Quote a SQL identifier after checking it (no injection through table or role names)."""
    if not _IDENT.fullmatch(name):
        raise ConfigurationError(
            f"{what} {name!r} is not a plain SQL identifier (letters, digits, '_', '$')"
        )
    return f'"{name}"'


def rls_policy_pack(
    specs: SpecRegistry | Iterable[EntitySpec[Any]],
    tables: EntityTables,
    *,
    role: str | None = None,
    org_setting: str = ORG_SETTING,
    user_setting: str = USER_SETTING,
) -> list[str]:
    """SQL statements that enforce tenant isolation on every tenant table of the spec.

    Tenant tables are those of tenant-scoped entities, plus the identity policy-binding table
    (its `org_id` is nullable). Statements are idempotent (`DROP POLICY IF EXISTS` first), so the
    pack can run in every deploy or Alembic migration.

    Args:
        specs: A registry (its entities) or entity specs.
        tables: The `EntityTables` the app's SQL backend uses (`backend.tables`).
        role: Apply the policies to this database role only (default: every role).
        org_setting: Setting holding the tenant id.
        user_setting: Setting holding the acting user id (memberships' own-rows policy).

    Returns:
        SQL statements, in order.

    Raises:
        ConfigurationError: A table or role name is not a plain identifier, or an entity has no
            table in `tables`.
    """
    entities = specs.entities() if isinstance(specs, SpecRegistry) else list(specs)
    to_role = f" TO {_ident(role, 'role')}" if role else ""
    org = f"current_setting('{org_setting}', true)"
    user = f"current_setting('{user_setting}', true)"
    statements: list[str] = []
    seen: set[str] = set()
    for entity in entities:
        if not (entity.tenant_scoped or entity.name == binding_entity.name):
            continue
        table: Table = tables[entity].table
        if table.name in seen or "org_id" not in table.c:
            continue
        seen.add(table.name)
        name = _ident(table.name, "table")
        statements += [
            f"ALTER TABLE {name} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {name} FORCE ROW LEVEL SECURITY",
            f"DROP POLICY IF EXISTS {POLICY_NAME} ON {name}",
            f"CREATE POLICY {POLICY_NAME} ON {name}{to_role} "
            f"USING (org_id = {org}) WITH CHECK (org_id = {org})",
        ]
        if entity.name == membership_entity.name:
            own = f"{POLICY_NAME}_own_memberships"
            statements += [
                f"DROP POLICY IF EXISTS {own} ON {name}",
                f"CREATE POLICY {own} ON {name} FOR SELECT{to_role} USING (user_id = {user})",
            ]
    return statements


async def set_tenant(
    tx: SqlTransaction,
    org_id: str | None,
    user_id: str | None = None,
    *,
    role: str | None = None,
) -> None:
    """Set the tenant (and user, and optionally the role) for the rest of this transaction only.

    Uses `set_config(..., true)` and `SET LOCAL ROLE`, which end with the transaction, so a pooled
    connection never carries one request's tenant into the next.

    Raises:
        ConfigurationError: Not a PostgreSQL transaction, or an invalid role name.
    """
    if tx.dialect != "postgresql":
        raise ConfigurationError("row-level security needs PostgreSQL; this is " + tx.dialect)
    if role is not None:
        await tx.execute(text(f"SET LOCAL ROLE {_ident(role, 'role')}"))
    await tx.execute(
        text("SELECT set_config(:org_key, :org, true), set_config(:user_key, :user, true)"),
        {
            "org_key": ORG_SETTING,
            "org": org_id or "",
            "user_key": USER_SETTING,
            "user": user_id or "",
        },
    )


class TenantSettings:
    """Executor middleware: `set_tenant(ctx.tx, ctx.org_id, ctx.actor.id)` before every handler.

    Args:
        role: Also `SET LOCAL ROLE` to this non-owner role for the handler stage (useful when the
            engine connects as a privileged role, e.g. in tests). Leave `None` when the engine
            already connects as the application role.

    Example:
        ```python
        executor = Executor(registry, backend=backend, policy=identity.engine,
                            middleware=[TenantSettings()])
        ```
    """

    __slots__ = ("role",)

    def __init__(self, role: str | None = None) -> None:
        if role is not None:
            _ident(role, "role")
        self.role = role

    async def __call__(self, invocation: Invocation, call_next: Any) -> BaseModel:
        """Set the tenant in the call's transaction, then run the handler."""
        ctx = invocation.ctx
        tx = ctx.tx
        if not isinstance(tx, SqlTransaction):
            raise ConfigurationError(
                "TenantSettings needs the SQL backend's transactions (PostgreSQL)"
            )
        await set_tenant(tx, ctx.org_id, ctx.actor.id, role=self.role)
        result: BaseModel = await call_next(invocation)
        return result
