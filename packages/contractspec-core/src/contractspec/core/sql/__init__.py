"""SQLAlchemy 2.x persistence: SQLite (stdlib sqlite3 inline, or aiosqlite) and PostgreSQL (psycopg).

Install with `pip install 'contractspec-core[sql]'` (SQLite) or `'contractspec-core[postgres]'`.

```python
from contractspec.core import Executor
from contractspec.core.sql import SqlBackend, sqlite_engine

engine = sqlite_engine("app.db")
backend = SqlBackend(engine, registry)
await backend.create_all()
executor = Executor(registry, backend=backend)
```

Library tables (`cs_outbox`, `cs_audit_log`, `cs_audit_head`, `cs_idempotency`) live on
`contractspec.core.sql.metadata`; entity tables on `backend.tables.metadata`. Both use
`NAMING_CONVENTION`, so Alembic autogenerate works: add both to your `target_metadata` and pass
`alembic_render_item` as `render_item` (the column types of `contractspec.core.sql.types` are then
written into migrations with their import; see "Migrations with Alembic" in the docs).
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.core.sql needs SQLAlchemy: pip install 'contractspec-core[sql]' "
        "(SQLite) or 'contractspec-core[postgres]' (PostgreSQL)"
    ) from exc

from contractspec.core.sql._audit import (
    AUDIT_INDEXED_COLUMNS,
    SqlAuditLog,
    audit_snapshot,
    verify_audit_chain,
)
from contractspec.core.sql._direct import autocommit_statement
from contractspec.core.sql._schema import (
    NAMING_CONVENTION,
    VERSION_COLUMN,
    EntityTable,
    EntityTables,
    audit_head_table,
    audit_table,
    idempotency_table,
    metadata,
    new_metadata,
    outbox_table,
)
from contractspec.core.sql._stores import (
    SqlBackend,
    SqlEntityStore,
    SqlIdempotencyStore,
    SqlOutbox,
    SqlRepository,
    outbox_row,
)
from contractspec.core.sql._uow import (
    FlushHook,
    SqlTransaction,
    SqlUnitOfWork,
    WriteBuffer,
    append_only,
    conflict_from,
    sql_transaction,
    translate,
    update_statement,
)
from contractspec.core.sql.engines import (
    async_engine_from,
    configure_sqlite_engine,
    create_all,
    drop_all,
    fast_json_dumps,
    sqlite_engine,
)
from contractspec.core.sql.types import (
    DecimalType,
    EnumValue,
    JsonType,
    UtcDateTime,
    alembic_render_item,
    as_utc,
)

__all__ = [
    "AUDIT_INDEXED_COLUMNS",
    "NAMING_CONVENTION",
    "VERSION_COLUMN",
    "DecimalType",
    "EntityTable",
    "EntityTables",
    "EnumValue",
    "FlushHook",
    "JsonType",
    "SqlAuditLog",
    "SqlBackend",
    "SqlEntityStore",
    "SqlIdempotencyStore",
    "SqlOutbox",
    "SqlRepository",
    "SqlTransaction",
    "SqlUnitOfWork",
    "UtcDateTime",
    "WriteBuffer",
    "alembic_render_item",
    "append_only",
    "as_utc",
    "async_engine_from",
    "audit_head_table",
    "audit_snapshot",
    "audit_table",
    "autocommit_statement",
    "configure_sqlite_engine",
    "conflict_from",
    "create_all",
    "drop_all",
    "fast_json_dumps",
    "idempotency_table",
    "metadata",
    "new_metadata",
    "outbox_row",
    "outbox_table",
    "sql_transaction",
    "sqlite_engine",
    "translate",
    "update_statement",
    "verify_audit_chain",
]
