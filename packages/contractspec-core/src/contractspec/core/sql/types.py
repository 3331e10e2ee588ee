"""Column types that make SQLite and PostgreSQL behave the same for our value kinds.

This module is public and its path is stable: Alembic migrations refer to these classes by it
(`contractspec.core.sql.types.UtcDateTime()`). Pass `alembic_render_item` as `render_item` in your
Alembic `env.py` and autogenerate writes those references with the `import` they need; see
"Migrations with Alembic" in the SQL docs.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import JSON, BigInteger, DateTime, Numeric, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["DecimalType", "EnumValue", "JsonType", "UtcDateTime", "alembic_render_item"]


class JsonType(TypeDecorator[Any]):
    """JSON on every backend: `JSON` on SQLite, `JSONB` on PostgreSQL.

    Python `None` is stored as JSON `null` (SQLAlchemy's `JSON` default), so a nullable column
    holds SQL `NULL` only when the value is omitted. Index access (`column["key"]`) works as on
    `JSON`.
    """

    impl = JSON
    cache_ok = True
    hashable = False
    should_evaluate_none = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())

    def __repr__(self) -> str:
        return "JsonType()"


def as_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime, as `UtcDateTime` stores it: aware values converted to
    UTC, naive ones taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    Aware values are converted to UTC before storage; naive values are taken as UTC. Values read
    back are always aware and in UTC (SQLite stores naive UTC text; PostgreSQL `timestamptz`).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def __repr__(self) -> str:
        return "UtcDateTime()"


class DecimalType(TypeDecorator[Decimal]):
    """Exact decimals on every backend.

    PostgreSQL: `NUMERIC(max_digits, decimal_places)`. SQLite has no decimal type, so a field with
    a declared `decimal_places` is stored as a scaled integer (`12.34` with 2 places → `1234`), which
    keeps comparisons and `SUM` exact; without declared places the value is stored as text.

    Args:
        max_digits: Total digits, or `None`.
        decimal_places: Digits after the point, or `None`.
    """

    impl = String
    cache_ok = True

    def __init__(self, max_digits: int | None = None, decimal_places: int | None = None) -> None:
        super().__init__()
        self.max_digits = max_digits
        self.decimal_places = decimal_places

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(
                BigInteger() if self.decimal_places is not None else Text()
            )
        if self.max_digits is not None:
            return dialect.type_descriptor(
                Numeric(self.max_digits, self.decimal_places or 0, asdecimal=True)
            )
        return dialect.type_descriptor(Numeric(asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value if isinstance(value, Decimal) else Decimal(str(value))
        if dialect.name == "sqlite":
            if self.decimal_places is not None:
                return int(value.scaleb(self.decimal_places).to_integral_value())
            return str(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if self.decimal_places is not None:
                return Decimal(int(value)).scaleb(-self.decimal_places)
            return Decimal(str(value))
        return value if isinstance(value, Decimal) else Decimal(str(value))

    def __repr__(self) -> str:
        return (
            f"DecimalType(max_digits={self.max_digits!r}, decimal_places={self.decimal_places!r})"
        )


class EnumValue(TypeDecorator[Any]):
    """Stores an `Enum` member (or a `Literal` value) as its plain value (text or integer).

    Args:
        integer: Store integers (`BIGINT`) instead of text.
        length: Maximum length of the text (`VARCHAR(length)`); `None` for unbounded.
    """

    impl = String
    cache_ok = True

    def __init__(self, integer: bool = False, length: int | None = None) -> None:
        super().__init__()
        self.integer = integer
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(BigInteger() if self.integer else String(self.length))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return value.value if isinstance(value, enum.Enum) else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return value

    def __repr__(self) -> str:
        return f"EnumValue(integer={self.integer!r}, length={self.length!r})"


#: The module migrations import to reach the types above.
_MODULE = __name__


def alembic_render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    """Alembic `render_item` hook: writes ContractSpec's column types into migrations.

    Renders the types of this module as `contractspec.core.sql.types.UtcDateTime()` (with every
    constructor argument) and adds `import contractspec.core.sql.types` to the migration's
    imports, so autogenerated migrations import and run without editing. Everything else is left
    to Alembic's own rendering.

    ```python
    # env.py
    context.configure(..., render_item=alembic_render_item)
    ```

    Args:
        type_: What Alembic renders (`"type"`, `"column"`, `"server_default"`, ...).
        obj: The object being rendered.
        autogen_context: Alembic's `AutogenContext` (its `imports` set receives the import).

    Returns:
        The Python source of the type, or `False` to let Alembic render `obj` itself.
    """
    if type_ != "type" or type(obj).__module__ != _MODULE:
        return False
    autogen_context.imports.add(f"import {_MODULE}")
    return f"{_MODULE}.{obj!r}"
