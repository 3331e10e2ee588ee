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


_CORE_SCALARS = {
    "bool": "bool",
    "int": "int",
    "float": "float",
    "decimal": "decimal",
    "str": "str",
    "datetime": "datetime",
    "date": "date",
    "time": "time",
    "uuid": "uuid",
    "bytes": "bytes",
}
_WRAPPERS = ("function-after", "function-before", "function-wrap")


def _from_core_schema(name: str, schema: dict[str, Any], defs: dict[str, Any]) -> FieldKind | None:
    """Classify from pydantic-core's schema (knows AwareDatetime, constr, EmailStr, ...)."""
    nullable = False
    while True:
        kind = schema.get("type")
        if kind == "default":
            if schema.get("default", ...) is None:
                nullable = True
            schema = schema["schema"]
        elif kind == "nullable":
            nullable = True
            schema = schema["schema"]
        elif kind in _WRAPPERS and "schema" in schema:
            schema = schema["schema"]
        elif kind == "definition-ref" and schema.get("schema_ref") in defs:
            schema = defs[schema["schema_ref"]]
        elif kind == "lax-or-strict":
            schema = schema["strict_schema"]
        elif kind == "json-or-python":
            schema = schema["python_schema"]
        else:
            break
    kind = schema.get("type")
    if kind in _CORE_SCALARS:
        return FieldKind(
            name,
            _CORE_SCALARS[kind],
            nullable,
            max_length=schema.get("max_length"),
            max_digits=schema.get("max_digits"),
            decimal_places=schema.get("decimal_places"),
        )
    if kind == "literal":
        values = tuple(schema.get("expected", ()))
        if values and (
            all(isinstance(v, str) for v in values)
            or all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        ):
            return FieldKind(name, "enum", nullable, enum_values=values)
        return FieldKind(name, "json", nullable)
    if kind == "enum":
        cls = schema.get("cls")
        values = tuple(m.value for m in schema.get("members", ()))
        if values and (
            all(isinstance(v, str) for v in values) or all(isinstance(v, int) for v in values)
        ):
            return FieldKind(name, "enum", nullable, enum_type=cls, enum_values=values)
        return FieldKind(name, "json", nullable)
    if kind is None:
        return None
    return FieldKind(name, "json", nullable)


def classify(name: str, info: FieldInfo) -> FieldKind:
    """Classify one pydantic field from its annotation (see `FieldKind`)."""
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
    """`FieldKind` of every field of an entity model, in declaration order.

    Uses the model's pydantic-core schema (so `AwareDatetime`, `constr`, `EmailStr`, URL types and
    validators are seen through); falls back to the annotation when the schema is not available.
    """
    schema: Any = getattr(model, "__pydantic_core_schema__", None)
    defs: dict[str, Any] = {}
    if isinstance(schema, dict) and schema.get("type") == "definitions":
        defs = {d["ref"]: d for d in schema.get("definitions", ()) if "ref" in d}
        schema = schema.get("schema")
    while isinstance(schema, dict) and schema.get("type") in (*_WRAPPERS, "definition-ref"):
        schema = (
            defs.get(schema.get("schema_ref", ""))
            if schema["type"] == "definition-ref"
            else schema.get("schema")
        )
    fields: dict[str, Any] = {}
    if isinstance(schema, dict) and schema.get("type") == "model":
        inner = schema.get("schema", {})
        if inner.get("type") == "model-fields":
            fields = inner.get("fields", {})
    out: dict[str, FieldKind] = {}
    for name, info in model.model_fields.items():
        field_schema = fields.get(name, {}).get("schema") if name in fields else None
        kind = (
            _from_core_schema(name, field_schema, defs) if isinstance(field_schema, dict) else None
        )
        if kind is not None and info.default is None and not kind.nullable:
            kind = FieldKind(
                kind.name,
                kind.kind,
                True,
                kind.max_length,
                kind.max_digits,
                kind.decimal_places,
                kind.enum_type,
                kind.enum_values,
            )
        out[name] = kind if kind is not None else classify(name, info)
    return out
