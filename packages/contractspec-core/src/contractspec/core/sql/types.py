"""Column types that make SQLite and PostgreSQL behave the same for our value kinds."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Numeric, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = ["DecimalType", "EnumValue", "JsonType", "UtcDateTime"]

#: JSON on every backend, JSONB on PostgreSQL.
JsonType: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")


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
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


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


class EnumValue(TypeDecorator[Any]):
    """Stores an `Enum` member (or a `Literal` value) as its plain value (text or integer)."""

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
