"""Library tables (`cs_*`) and tables built from entity specs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    Time,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.types import TypeEngine

from contractspec.core._fields import FieldKind, entity_columns
from contractspec.core.errors import ConfigurationError, SpecDefinitionError
from contractspec.core.registry import SpecRegistry
from contractspec.core.specs import EntitySpec
from contractspec.core.sql.types import DecimalType, EnumValue, JsonType, UtcDateTime

__all__ = [
    "NAMING_CONVENTION",
    "VERSION_COLUMN",
    "EntityTable",
    "EntityTables",
    "metadata",
    "new_metadata",
]

#: The column holding each entity row's version (1 on insert, +1 per update), maintained by the
#: repository for optimistic concurrency. Not part of the entity's model.
VERSION_COLUMN = "cs_version"

#: Constraint names that Alembic can diff and PostgreSQL accepts (max 63 chars handled by SA).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Auto-incrementing 64-bit keys (INTEGER on SQLite, where only that type auto-increments).
AutoBigInt = BigInteger().with_variant(Integer(), "sqlite")


def new_metadata() -> MetaData:
    """A `MetaData` with ContractSpec's naming convention."""
    return MetaData(naming_convention=NAMING_CONVENTION)


#: The library's own tables. Add it to your Alembic `target_metadata` (a list is accepted).
metadata = new_metadata()

#: The predicate of the outbox's partial indexes. A query uses them when its WHERE states
#: `status = 'pending'` with the literal (a bound parameter cannot prove the predicate).
_PENDING_ROWS = text("status = 'pending'")

outbox_table = Table(
    "cs_outbox",
    metadata,
    Column("position", AutoBigInt, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("org_id", String(200), nullable=True),
    Column("aggregate_key", String(200), nullable=True),
    Column("payload", JsonType, nullable=False),
    Column("headers", JsonType, nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("available_at", UtcDateTime, nullable=False),
    Column("delivered_at", UtcDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("lease_token", String(32), nullable=True),
    # Partial indexes over pending rows only: a relay's claim and its per-key order probe read
    # the rows still to deliver, never the delivered history (which grows until purged), and
    # marking a row delivered adds no entry to them.
    Index(
        "ix_cs_outbox_pending",
        "position",
        postgresql_where=_PENDING_ROWS,
        sqlite_where=_PENDING_ROWS,
    ),
    Index(
        "ix_cs_outbox_pending_key",
        "aggregate_key",
        "position",
        postgresql_where=_PENDING_ROWS,
        sqlite_where=_PENDING_ROWS,
    ),
    comment=(
        "Transactional outbox: events committed with the writes that caused them; per "
        "(org_id, aggregate_key), positions follow commit order."
    ),
)

audit_table = Table(
    "cs_audit_log",
    metadata,
    Column("position", AutoBigInt, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_key", String(200), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("action", String(200), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("actor_id", String(200), nullable=True),
    Column("actor_kind", String(32), nullable=True),
    Column("target_type", String(200), nullable=True),
    Column("target_id", String(200), nullable=True),
    Column("request_id", String(200), nullable=True),
    Column("trace_id", String(200), nullable=True),
    Column("body", JsonType, nullable=False),
    Column("prev_hash", String(64), nullable=True),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("org_key", "seq"),
    Index(None, "org_key", "occurred_at"),
    Index(None, "org_key", "actor_id"),
    Index(None, "org_key", "target_type", "target_id"),
    comment="Append-only audit trail, hash-chained per org (org_key '' = no org).",
)

audit_head_table = Table(
    "cs_audit_head",
    metadata,
    Column("org_key", String(200), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=True),
    comment="Last position and hash of each org's audit chain (detects truncation).",
)

idempotency_table = Table(
    "cs_idempotency",
    metadata,
    Column("org_key", String(200), nullable=False),
    Column("operation", String(200), nullable=False),
    Column("key", String(200), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("output", JsonType, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("org_key", "operation", "key"),
    comment="Outcomes of idempotent commands, keyed by the caller's idempotency key.",
)


def _column_type(kind: FieldKind) -> TypeEngine[Any]:
    match kind.kind:
        case "bool":
            return Boolean()
        case "int":
            return BigInteger()
        case "float":
            return Double()
        case "decimal":
            return DecimalType(kind.max_digits, kind.decimal_places)
        case "str":
            return String(kind.max_length) if kind.max_length else Text()
        case "datetime":
            return UtcDateTime()
        case "date":
            return Date()
        case "time":
            return Time()
        case "uuid":
            return Uuid()
        case "bytes":
            return LargeBinary()
        case "enum":
            integer = all(isinstance(v, int) for v in kind.enum_values)
            length = max((len(str(v)) for v in kind.enum_values), default=32)
            return EnumValue(integer=integer, length=None if integer else max(length, 16))
        case _:
            return JsonType()


class EntityTable:
    """One entity's table plus what the SQL repository needs to convert rows.

    Attributes:
        entity: The spec.
        table: The SQLAlchemy `Table`.
        kinds: `FieldKind` per model field.
        json_fields: Fields stored as JSON (dumped in JSON mode).
        pk_columns: Primary-key columns (`org_id` first for tenant-scoped entities).
        model_has_org: Whether the model itself declares `org_id`.
        hidden: Columns that are not model fields (`org_id` when the model has none, and
            `VERSION_COLUMN`), removed when a row becomes a model.
    """

    __slots__ = (
        "entity",
        "hidden",
        "json_fields",
        "kinds",
        "model_has_org",
        "pk_columns",
        "table",
    )

    def __init__(self, entity: EntitySpec[Any], md: MetaData, prefix: str) -> None:
        self.entity = entity
        self.kinds = entity_columns(entity.model)
        self.json_fields = frozenset(n for n, k in self.kinds.items() if k.kind == "json")
        self.model_has_org = "org_id" in self.kinds
        if VERSION_COLUMN in self.kinds:
            raise SpecDefinitionError(
                f"entity {entity.name!r}: the field name {VERSION_COLUMN!r} is reserved for the "
                "row version the repository maintains; rename the field"
            )
        hidden = {VERSION_COLUMN}
        if entity.tenant_scoped and not self.model_has_org:
            hidden.add("org_id")
        self.hidden = frozenset(hidden)
        columns: list[Any] = []
        if entity.tenant_scoped:
            columns.append(Column("org_id", String(200), nullable=False))
        for name, kind in self.kinds.items():
            if name == "org_id" and entity.tenant_scoped:
                continue
            is_pk = name == entity.primary_key
            columns.append(Column(name, _column_type(kind), nullable=kind.nullable and not is_pk))
        columns.append(Column(VERSION_COLUMN, BigInteger, nullable=False, server_default="1"))
        pk = ("org_id", entity.primary_key) if entity.tenant_scoped else (entity.primary_key,)
        columns.append(PrimaryKeyConstraint(*pk))
        for index in entity.indexes:
            cols = (
                ("org_id",) if entity.tenant_scoped and "org_id" not in index.fields else ()
            ) + index.fields
            if index.unique:
                columns.append(UniqueConstraint(*cols, name=index.name))
            else:
                columns.append(Index(index.name, *cols))
        if entity.tenant_scoped:
            columns.append(Index(None, "org_id"))
        name = f"{prefix}{entity.table_name}"
        if name in md.tables:
            raise SpecDefinitionError(
                f"entity {entity.name!r}: table {name!r} already exists in this MetaData; give the "
                "entity another name or use another table prefix"
            )
        self.table = Table(name, md, *columns, comment=entity.description or None)
        self.pk_columns = tuple(self.table.c[c] for c in pk)


class EntityTables:
    """SQLAlchemy tables for entity specs, on their own `MetaData`.

    Args:
        specs: A `SpecRegistry` (all its entities) or entity specs.
        prefix: Table-name prefix (e.g. `"crm_"`); default none.
        metadata: Add the tables to this `MetaData` instead of a new one (e.g. your app's, for
            Alembic autogenerate).

    Attributes:
        metadata: The `MetaData` holding the tables.

    Raises:
        SpecDefinitionError: Two entities map to the same table name.
    """

    def __init__(
        self,
        specs: SpecRegistry | Iterable[EntitySpec[Any]],
        *,
        prefix: str = "",
        metadata: MetaData | None = None,
    ) -> None:
        self.metadata = metadata if metadata is not None else new_metadata()
        entities = specs.entities() if isinstance(specs, SpecRegistry) else list(specs)
        self._tables: dict[str, EntityTable] = {}
        for entity in entities:
            if entity.name in self._tables:
                continue
            self._tables[entity.name] = EntityTable(entity, self.metadata, prefix)

    def __getitem__(self, entity: EntitySpec[Any] | str) -> EntityTable:
        name = entity if isinstance(entity, str) else entity.name
        table = self._tables.get(name)
        if table is None:
            raise ConfigurationError(
                f"entity {name!r} has no table in this SQL store; register it in the registry the "
                "store was built from (or pass it to EntityTables)",
                details={"entity": name},
            )
        return table

    def __iter__(self) -> Any:
        return iter(self._tables.values())

    def __len__(self) -> int:
        return len(self._tables)
