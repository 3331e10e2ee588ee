"""Classify pydantic fields into storage kinds shared by the memory and SQL stores."""

from __future__ import annotations

import datetime as dt
import enum
import types
import uuid
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from attrs import define
from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["FieldKind", "classify", "entity_columns"]

_SCALARS: tuple[tuple[type, str], ...] = (
    (bool, "bool"),  # before int: bool is an int subclass
    (int, "int"),
    (float, "float"),
    (Decimal, "decimal"),
    (str, "str"),
    (dt.datetime, "datetime"),  # before date: datetime is a date subclass
    (dt.date, "date"),
    (dt.time, "time"),
    (uuid.UUID, "uuid"),
    (bytes, "bytes"),
)

#: Kinds that can be filtered, ordered and compared.
SCALAR_KINDS = frozenset(
    {"bool", "int", "float", "decimal", "str", "datetime", "date", "time", "uuid", "enum"}
)
NUMERIC_KINDS = frozenset({"int", "float", "decimal"})


@define(frozen=True)
class FieldKind:
    """Storage facts about one field.

    Attributes:
        name: Field name.
        kind: `bool`, `int`, `float`, `decimal`, `str`, `datetime`, `date`, `time`, `uuid`, `bytes`,
            `enum` (stored as its value) or `json` (anything structured).
        nullable: The field accepts `None`.
        max_length: `max_length` constraint of strings, if any.
        max_digits, decimal_places: Constraints of decimals, if any.
        enum_type: The `Enum` subclass for `enum` fields backed by an Enum (not a Literal).
        enum_values: Allowed values for `enum` fields.
    """

    name: str
    kind: str
    nullable: bool
    max_length: int | None = None
    max_digits: int | None = None
    decimal_places: int | None = None
    enum_type: type[enum.Enum] | None = None
    enum_values: tuple[Any, ...] = ()


def _strip(annotation: Any) -> tuple[Any, bool, list[Any]]:
    """Remove Optional/Annotated wrappers; return (core type, nullable, metadata)."""
    nullable = False
    metadata: list[Any] = []
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            args = get_args(annotation)
            annotation = args[0]
            metadata.extend(args[1:])
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) < len(get_args(annotation)):
                nullable = True
            if len(members) == 1:
                annotation = members[0]
                continue
            return annotation, nullable, metadata
        return annotation, nullable, metadata


def classify(name: str, info: FieldInfo) -> FieldKind:
    """Classify one pydantic field (see `FieldKind`)."""
    core, nullable, metadata = _strip(info.annotation)
    metadata = [*info.metadata, *metadata]
    if info.default is None:
        nullable = True
    max_length = next(
        (m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None
    )
    max_digits = next(
        (
            getattr(m, "max_digits", None)
            for m in metadata
            if getattr(m, "max_digits", None) is not None
        ),
        None,
    )
    places = next(
        (
            getattr(m, "decimal_places", None)
            for m in metadata
            if getattr(m, "decimal_places", None) is not None
        ),
        None,
    )
    if get_origin(core) is Literal:
        values = get_args(core)
        if all(isinstance(v, str) for v in values) or all(
            isinstance(v, int) and not isinstance(v, bool) for v in values
        ):
            return FieldKind(name, "enum", nullable, enum_values=tuple(values))
        return FieldKind(name, "json", nullable)
    if isinstance(core, type):
        if issubclass(core, enum.Enum):
            values = tuple(m.value for m in core)
            if all(isinstance(v, str) for v in values) or all(isinstance(v, int) for v in values):
                return FieldKind(name, "enum", nullable, enum_type=core, enum_values=values)
            return FieldKind(name, "json", nullable)
        if issubclass(core, BaseModel):
            return FieldKind(name, "json", nullable)
        for base, kind in _SCALARS:
            if issubclass(core, base):
                return FieldKind(name, kind, nullable, max_length, max_digits, places)
    return FieldKind(name, "json", nullable)


def entity_columns(model: type[BaseModel]) -> dict[str, FieldKind]:
    """`FieldKind` of every field of an entity model, in declaration order."""
    return {name: classify(name, info) for name, info in model.model_fields.items()}
