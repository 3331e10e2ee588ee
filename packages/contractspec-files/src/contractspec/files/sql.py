"""SQLAlchemy `FileStore` (SQLite, PostgreSQL): tables `cs_files` and `cs_attachments`.

```python
from contractspec.files.sql import SqlFileStore, metadata

store = SqlFileStore(engine)
await store.create_tables()          # tests and examples; in production add `metadata` to Alembic
```

`metadata` uses core's `NAMING_CONVENTION`: add it to your Alembic `target_metadata` next to
core's. Every query is filtered by `org_id`; writes run in the call's `SqlTransaction` (`ctx.tx`
on a `SqlBackend` of the same engine), so records commit with the operation.
"""

from __future__ import annotations

try:
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by the isolation session
    raise ImportError(
        "contractspec.files.sql needs SQLAlchemy: pip install 'contractspec-files[sql]' "
        "or 'contractspec-files[postgres]'"
    ) from exc

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Index,
    String,
    Table,
    UniqueConstraint,
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core import Transaction
from contractspec.core.sql import UtcDateTime, new_metadata, sql_transaction
from contractspec.files.records import Attachment, File, FileState, check_same_tenant, not_found

__all__ = ["SqlFileStore", "attachment_table", "file_table", "metadata"]

#: The files package's tables; add it to your Alembic `target_metadata`.
metadata = new_metadata()

file_table = Table(
    "cs_files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("org_id", String(200), nullable=False),
    Column("owner_id", String(200), nullable=False),
    Column("slot", String(300), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("media_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("backend", String(64), nullable=False),
    Column("key", String(1024), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("legal_hold", Boolean, nullable=False),
    UniqueConstraint("backend", "key"),
    UniqueConstraint("org_id", "id"),
    Index(None, "slot", "state", "created_at"),
    comment="Stored files (blobs live in a FileStorage; this is their record).",
)

attachment_table = Table(
    "cs_attachments",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("org_id", String(200), nullable=False),
    Column("file_id", String(64), nullable=False),
    Column("slot", String(300), nullable=False),
    Column("entity", String(200), nullable=False),
    Column("entity_id", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("created_by", String(200), nullable=False),
    # the composite key makes a cross-tenant link impossible in the database too
    ForeignKeyConstraint(
        ["org_id", "file_id"], ["cs_files.org_id", "cs_files.id"], ondelete="CASCADE"
    ),
    Index(None, "org_id", "entity", "entity_id", "slot"),
    Index(None, "file_id"),
    comment="Links of files to entity records, per slot.",
)

_FILE_COLUMNS = tuple(c.name for c in file_table.columns)
_ATT_COLUMNS = tuple(c.name for c in attachment_table.columns)


def _file(row: Mapping[Any, Any]) -> File:
    return File.model_validate({name: row[name] for name in _FILE_COLUMNS})


def _attachment(row: Mapping[Any, Any]) -> Attachment:
    return Attachment.model_validate({name: row[name] for name in _ATT_COLUMNS})


class SqlFileStore:
    """`FileStore` on SQLAlchemy (see the module docstring).

    Args:
        engine: Your `AsyncEngine`; never disposed by the store.
    """

    __slots__ = ("engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create_tables(self) -> None:
        """Create `cs_files` and `cs_attachments` if missing (tests, examples; Alembic in prod)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    async def _rows(self, stmt: Any, tx: Transaction | None) -> list[Mapping[Any, Any]]:
        if tx is not None:
            sql_tx = sql_transaction(tx, "SqlFileStore")
            return list((await sql_tx.execute(stmt)).mappings().all())
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).mappings().all())

    async def add(self, tx: Transaction, file: File, attachment: Attachment) -> None:
        """Insert a file and its attachment in `tx` (see `FileStore.add`)."""
        check_same_tenant(file, attachment)
        sql_tx = sql_transaction(tx, "SqlFileStore")
        sql_tx.check_writable("adding a file")
        await sql_tx.execute(file_table.insert().values(file.model_dump()), write=True)
        await sql_tx.execute(attachment_table.insert().values(attachment.model_dump()), write=True)

    async def get_file(
        self, org_id: str, file_id: str, *, tx: Transaction | None = None
    ) -> File | None:
        """See `FileStore.get_file`."""
        t = file_table
        rows = await self._rows(select(t).where(t.c.org_id == org_id, t.c.id == file_id), tx)
        return _file(rows[0]) if rows else None

    async def get_attachment(
        self, org_id: str, attachment_id: str, *, tx: Transaction | None = None
    ) -> Attachment | None:
        """See `FileStore.get_attachment`."""
        t = attachment_table
        stmt = select(t).where(t.c.org_id == org_id, t.c.id == attachment_id)
        rows = await self._rows(stmt, tx)
        return _attachment(rows[0]) if rows else None

    async def list_attachments(
        self,
        org_id: str,
        entity: str,
        entity_id: str,
        *,
        slot: str | None = None,
        tx: Transaction | None = None,
    ) -> list[Attachment]:
        """See `FileStore.list_attachments`."""
        t = attachment_table
        stmt = select(t).where(
            t.c.org_id == org_id, t.c.entity == entity, t.c.entity_id == entity_id
        )
        if slot is not None:
            stmt = stmt.where(t.c.slot == slot)
        rows = await self._rows(stmt.order_by(t.c.created_at, t.c.id), tx)
        return [_attachment(r) for r in rows]

    async def remove(self, tx: Transaction, org_id: str, attachment_id: str) -> File:
        """See `FileStore.remove`."""
        sql_tx = sql_transaction(tx, "SqlFileStore")
        sql_tx.check_writable("removing a file")
        att = await self.get_attachment(org_id, attachment_id, tx=tx)
        if att is None:
            raise not_found("attachment", attachment_id)
        return await self.remove_file(tx, org_id, att.file_id)

    async def remove_file(self, tx: Transaction, org_id: str, file_id: str) -> File:
        """See `FileStore.remove_file`."""
        sql_tx = sql_transaction(tx, "SqlFileStore")
        sql_tx.check_writable("removing a file")
        file = await self.get_file(org_id, file_id, tx=tx)
        if file is None:
            raise not_found("file", file_id)
        a, f = attachment_table, file_table
        await sql_tx.execute(
            delete(a).where(a.c.org_id == org_id, a.c.file_id == file_id), write=True
        )
        await sql_tx.execute(delete(f).where(f.c.org_id == org_id, f.c.id == file_id), write=True)
        return file

    async def update_file(
        self,
        tx: Transaction,
        org_id: str,
        file_id: str,
        *,
        state: FileState | None = None,
        legal_hold: bool | None = None,
    ) -> File:
        """See `FileStore.update_file`."""
        sql_tx = sql_transaction(tx, "SqlFileStore")
        sql_tx.check_writable("updating a file")
        values: dict[str, Any] = {}
        if state is not None:
            values["state"] = FileState(state).value
        if legal_hold is not None:
            values["legal_hold"] = legal_hold
        t = file_table
        if values:
            await sql_tx.execute(
                update(t).where(t.c.org_id == org_id, t.c.id == file_id).values(**values),
                write=True,
            )
        file = await self.get_file(org_id, file_id, tx=tx)
        if file is None:
            raise not_found("file", file_id)
        return file

    async def known_keys(self, backend: str, keys: Sequence[str]) -> set[str]:
        """See `FileStore.known_keys` (queried in chunks of 500 keys)."""
        t = file_table
        found: set[str] = set()
        keys = list(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            stmt = select(t.c.key).where(t.c.backend == backend, t.c.key.in_(chunk))
            found.update(str(r["key"]) for r in await self._rows(stmt, None))
        return found

    async def expiring(
        self, slot: str, created_before: datetime, *, state: FileState, limit: int
    ) -> list[File]:
        """See `FileStore.expiring`."""
        t = file_table
        stmt = (
            select(t)
            .where(
                t.c.slot == slot,
                t.c.state == FileState(state).value,
                t.c.legal_hold.is_(False),
                t.c.created_at < created_before,
            )
            .order_by(t.c.created_at, t.c.id)
            .limit(limit)
        )
        return [_file(r) for r in await self._rows(stmt, None)]
