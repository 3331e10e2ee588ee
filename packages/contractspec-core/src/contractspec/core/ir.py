"""The spec IR: one canonical JSON document describing every spec of a registry.

`to_ir(registry)` (or `registry.to_ir()`) turns live specs into plain JSON data: every entity,
operation and event, and any spec kind another package registers (jobs, agents, flags), each with
the JSON Schema of its inputs, outputs, payloads or records. The same spec always produces
byte-identical text (`dumps_ir`): keys are sorted, specs are ordered by kind, name and version, and
nothing time- or machine-dependent is recorded. Commit it as `contractspec.lock.json`
(`write_lock`) and let CI compare it with the code (`check_lock`, `contractspec spec check`).

Document shape (`IR_VERSION` 1):

```json
{
  "format": "contractspec.ir",
  "ir_version": 1,
  "specs": {
    "entity": [{"kind": "entity", "name": "crm.deal", "version": 1, "schemas": {"model": {}}}],
    "event": [{"kind": "event", "name": "crm.deal.created", "version": 1, "schemas": {"payload": {}}}],
    "operation": [{"kind": "operation", "name": "crm.deal.create", "version": 1,
                   "schemas": {"input": {}, "output": {}}}]
  }
}
```

Every spec entry has `kind`, `name`, `version` and `schemas` (role → JSON Schema, each
self-contained with its own `$defs`). Schemas come from pydantic's `model_json_schema()` with
`IRJsonSchema`, which adds `x-decimal` (`max_digits`, `decimal_places`, bounds) to decimal fields so
that money semantics survive into the IR. Roles and their direction for the diff: `input`
(callers send it), `output` and `payload` (callers and consumers read it), `model` (stored records:
both). See `docs/core/ir.md` for every field.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
from pydantic import BaseModel
from pydantic.errors import PydanticInvalidForJsonSchema, PydanticUserError
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from contractspec.core._fields import entity_columns
from contractspec.core.errors import ContractSpecError, SpecDefinitionError
from contractspec.core.specs import EntitySpec, EventSpec, OperationSpec

if TYPE_CHECKING:
    from contractspec.core.registry import SpecRegistry

__all__ = [
    "IR_FORMAT",
    "IR_VERSION",
    "LOCK_FILENAME",
    "IRFormatError",
    "IRJsonSchema",
    "as_ir",
    "dumps_ir",
    "ir_digest",
    "load_ir",
    "model_schema",
    "read_lock",
    "to_ir",
    "validate_ir",
    "write_lock",
]

#: Value of the document's `format` field.
IR_FORMAT: Final = "contractspec.ir"
#: Version of the IR document shape; bumped only for incompatible changes of the shape itself.
IR_VERSION: Final = 1
#: Conventional file name of the committed IR.
LOCK_FILENAME: Final = "contractspec.lock.json"

#: Order in which the built-in kinds appear (other kinds follow, sorted by name).
_KIND_ORDER: Final = ("entity", "event", "operation")


class IRFormatError(ContractSpecError, ValueError):
    """An IR document (a lock file, a diff input) is not valid IR.

    The message names the offending field (`specs.operation[3].version`) and the fix.
    """

    code = "ir_format_error"


# --------------------------------------------------------------------------------------------
# JSON Schema generation
# --------------------------------------------------------------------------------------------


def _num(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


class IRJsonSchema(GenerateJsonSchema):
    """pydantic's JSON Schema generator, plus what the diff and code generator need.

    * Decimal fields carry `"x-decimal": {"max_digits": 12, "decimal_places": 2, "minimum": 0}`
      (only the constraints that are set), so scale changes of money fields are visible.
    * Decimal strings get pydantic's exact pattern (`build_decimal_pattern`), so generated clients
      and fuzzers produce valid decimals.
    """

    def get_decimal_pattern(self, schema: core_schema.DecimalSchema) -> str | None:
        """The pattern reflecting `max_digits`/`decimal_places` (pydantic's builder)."""
        return self.build_decimal_pattern(schema)

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        """pydantic's decimal schema with an `x-decimal` annotation."""
        json_schema = super().decimal_schema(schema)
        max_digits, places = schema.get("max_digits"), schema.get("decimal_places")
        number = json_schema.get("anyOf", [None])[0]
        if isinstance(number, dict) and max_digits is not None:
            # What max_digits implies for JSON numbers: |value| < 10 ** (integer digits).
            limit = _num(Decimal(10) ** (max_digits - (places or 0)))
            if "maximum" not in number and "exclusiveMaximum" not in number:
                number["exclusiveMaximum"] = limit
            if "minimum" not in number and "exclusiveMinimum" not in number:
                number["exclusiveMinimum"] = -limit
        info: dict[str, Any] = {}
        for key in ("max_digits", "decimal_places"):
            if schema.get(key) is not None:
                info[key] = schema.get(key)
        for key, name in (
            ("ge", "minimum"),
            ("gt", "exclusiveMinimum"),
            ("le", "maximum"),
            ("lt", "exclusiveMaximum"),
            ("multiple_of", "multipleOf"),
        ):
            value = schema.get(key)
            if value is not None:
                info[name] = _num(value)
        json_schema["x-decimal"] = info
        return json_schema


def model_schema(model: type[BaseModel], mode: JsonSchemaMode = "validation") -> dict[str, Any]:
    """The JSON Schema of `model` as recorded in the IR (self-contained, `$defs` inline).

    Args:
        model: A pydantic model class.
        mode: `validation` (what the model accepts) or `serialization` (what it produces).

    Returns:
        A JSON-compatible dict (not yet key-sorted: `dumps_ir` sorts).

    Raises:
        SpecDefinitionError: The model has a field with no JSON Schema (e.g. a callable).
    """
    try:
        return model.model_json_schema(mode=mode, schema_generator=IRJsonSchema)
    except (PydanticInvalidForJsonSchema, PydanticUserError) as exc:
        raise SpecDefinitionError(
            f"model {model.__qualname__} has no JSON Schema ({exc}); give every field a "
            "JSON-compatible type or a WithJsonSchema annotation",
            details={"model": model.__qualname__},
        ) from exc


class _Schemas:
    """Per-call cache: a model shared by many specs is converted once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[type[BaseModel], str], dict[str, Any]] = {}

    def get(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, Any]:
        key = (model, mode)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = model_schema(model, mode)
        return found


# --------------------------------------------------------------------------------------------
# Spec → IR
# --------------------------------------------------------------------------------------------


def _auth_ir(spec: OperationSpec) -> dict[str, Any]:
    return {
        "kind": spec.auth.kind,
        "permissions": list(spec.auth.permissions),
        "resource": spec.auth.resource,
    }


def _operation_ir(registry: SpecRegistry, spec: OperationSpec, schemas: _Schemas) -> dict[str, Any]:
    return {
        "kind": "operation",
        "name": spec.name,
        "version": spec.version,
        "operation_kind": spec.kind.value,
        "description": spec.description,
        "owners": list(spec.owners),
        "tags": list(spec.tags),
        "stability": spec.stability.value,
        "auth": _auth_ir(spec),
        "emits": sorted(registry.resolve_event(spec, ref).ref for ref in spec.emits),
        "idempotent": spec.idempotent,
        "audit": spec.audit,
        "errors": sorted(spec.errors),
        "pii": sorted(spec.pii),
        "schemas": {
            "input": schemas.get(spec.input, "validation"),
            "output": schemas.get(spec.output, "serialization"),
        },
    }


def _event_ir(spec: EventSpec, schemas: _Schemas) -> dict[str, Any]:
    retention = spec.retention.total_seconds() if spec.retention is not None else None
    return {
        "kind": "event",
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "severity": spec.severity.value,
        "key": spec.key,
        "retention_seconds": None if retention is None else _num(retention),
        "owners": list(spec.owners),
        "tags": list(spec.tags),
        "pii": sorted(spec.pii),
        "schemas": {"payload": schemas.get(spec.payload, "serialization")},
    }


def _entity_ir(spec: EntitySpec[Any], schemas: _Schemas) -> dict[str, Any]:
    columns = []
    for name, kind in entity_columns(spec.model).items():
        columns.append(
            {
                "name": name,
                "kind": kind.kind,
                "nullable": kind.nullable and name != spec.primary_key,
                "max_length": kind.max_length,
                "max_digits": kind.max_digits,
                "decimal_places": kind.decimal_places,
                "enum_values": [_jsonable(v) for v in kind.enum_values],
            }
        )
    return {
        "kind": "entity",
        "name": spec.name,
        "version": spec.version,
        "description": spec.description,
        "owners": list(spec.owners),
        "tags": list(spec.tags),
        "primary_key": spec.primary_key,
        "tenant_scoped": spec.tenant_scoped,
        "table_name": spec.table_name,
        "indexes": [
            {"fields": list(i.fields), "unique": i.unique, "name": i.name} for i in spec.indexes
        ],
        "columns": columns,
        "pii": sorted(spec.pii),
        "schemas": {"model": schemas.get(spec.model, "validation")},
    }


def _qualified(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or "?"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}"


def _jsonable(value: Any) -> Any:
    """Deterministic JSON form of the values specs hold (the generic fallback's converter)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        )
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    if isinstance(value, timedelta):
        return _num(value.total_seconds())
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, type) or callable(value):
        return _qualified(value)
    if attrs.has(type(value)):
        return {f.name: _jsonable(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if dataclasses.is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return _qualified(type(value))


def _spec_fields(spec: Any) -> dict[str, Any]:
    if attrs.has(type(spec)):
        return {f.name: getattr(spec, f.name) for f in attrs.fields(type(spec))}
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    if isinstance(spec, BaseModel):
        return {name: getattr(spec, name) for name in type(spec).model_fields}
    return {k: v for k, v in vars(spec).items() if not k.startswith("_")}


def _generic_ir(spec: Any, schemas: _Schemas) -> dict[str, Any]:
    """IR of a spec kind core does not know: its own `to_ir()`, else its fields.

    pydantic model classes among the fields become `schemas[<field name>]`; everything else is
    converted with `_jsonable`.
    """
    kind = getattr(spec, "kind", None)
    kind = kind.value if isinstance(kind, enum.Enum) else kind
    to_ir_method = getattr(spec, "to_ir", None)
    if callable(to_ir_method):
        data = to_ir_method()
        if not isinstance(data, Mapping):
            raise SpecDefinitionError(
                f"{kind} {spec.name}@{spec.version}: to_ir() returned {type(data).__name__}; it "
                "must return a JSON-compatible dict",
                details={"kind": kind, "name": spec.name},
            )
        out: dict[str, Any] = {}
        raw_schemas: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(value, type) and issubclass(value, BaseModel):
                raw_schemas[str(key)] = schemas.get(value, "validation")
            elif key == "schemas" and isinstance(value, Mapping):
                for role, schema in value.items():
                    raw_schemas[str(role)] = (
                        schemas.get(schema, "validation")
                        if isinstance(schema, type) and issubclass(schema, BaseModel)
                        else _jsonable(schema)
                    )
            else:
                out[str(key)] = _jsonable(value)
    else:
        out = {}
        raw_schemas = {}
        for key, value in _spec_fields(spec).items():
            if isinstance(value, type) and issubclass(value, BaseModel):
                raw_schemas[key] = schemas.get(value, "validation")
            else:
                out[key] = _jsonable(value)
    out.update(kind=kind, name=spec.name, version=spec.version, schemas=raw_schemas)
    return out


def _spec_ir(registry: SpecRegistry, spec: Any, schemas: _Schemas) -> dict[str, Any]:
    if isinstance(spec, OperationSpec):
        return _operation_ir(registry, spec, schemas)
    if isinstance(spec, EventSpec):
        return _event_ir(spec, schemas)
    if isinstance(spec, EntitySpec):
        return _entity_ir(spec, schemas)
    return _generic_ir(spec, schemas)


def _kind_key(kind: str) -> tuple[int, str]:
    return (_KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER), kind)


def to_ir(registry: SpecRegistry) -> dict[str, Any]:
    """The canonical IR of every spec in `registry` (see the module docstring for the shape).

    A spec of a kind core does not know is described by its own `to_ir()` method when it has one
    (returning a JSON-compatible dict; pydantic model classes in it become schemas), otherwise by
    its attrs/dataclass/pydantic fields.

    Args:
        registry: The registry to describe.

    Returns:
        The IR as plain JSON data; `dumps_ir()` gives its canonical text.

    Raises:
        SpecDefinitionError: An operation emits an unregistered event, a model has no JSON
            Schema, or a spec's `to_ir()` does not return a dict.
    """
    schemas = _Schemas()
    specs: dict[str, list[dict[str, Any]]] = {}
    for kind in sorted(registry.kinds(), key=_kind_key):
        specs[kind] = [_spec_ir(registry, spec, schemas) for spec in registry.specs(kind)]
    return {"format": IR_FORMAT, "ir_version": IR_VERSION, "specs": specs}


def dumps_ir(ir: Mapping[str, Any]) -> str:
    """Canonical text of an IR: sorted keys, two-space indent, UTF-8, trailing newline.

    Raises:
        IRFormatError: The IR holds a value JSON cannot represent.
    """
    try:
        return json.dumps(ir, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise IRFormatError(f"the IR is not JSON-serialisable: {exc}") from exc


def ir_digest(ir: Mapping[str, Any]) -> str:
    """`sha256:<first 16 hex digits>` of the canonical text: the spec's version stamp."""
    return "sha256:" + hashlib.sha256(dumps_ir(ir).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Reading and validating IR documents
# --------------------------------------------------------------------------------------------


def _fail(where: str, problem: str) -> IRFormatError:
    return IRFormatError(f"{where}: {problem}", details={"field": where})


def validate_ir(data: Any, *, source: str = "IR") -> dict[str, Any]:
    """Check that `data` has the IR shape the diff and the generators rely on.

    Returns:
        `data` itself, typed as a dict.

    Raises:
        IRFormatError: The first problem found, naming the field (`specs.operation[2].name`).
    """
    if not isinstance(data, dict):
        raise _fail(source, f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != IR_FORMAT:
        raise _fail(
            f"{source}.format",
            f"expected {IR_FORMAT!r}, got {data.get('format')!r}; write it with "
            "`contractspec spec export`",
        )
    version = data.get("ir_version")
    if version != IR_VERSION:
        raise _fail(
            f"{source}.ir_version",
            f"this contractspec-core reads IR version {IR_VERSION}, got {version!r}; re-export "
            "the lock with the installed version",
        )
    specs = data.get("specs")
    if not isinstance(specs, dict):
        raise _fail(f"{source}.specs", "expected an object mapping kinds to lists of specs")
    for kind, entries in specs.items():
        if not isinstance(entries, list):
            raise _fail(f"{source}.specs.{kind}", "expected a list of specs")
        seen: set[tuple[str, int]] = set()
        for i, entry in enumerate(entries):
            where = f"{source}.specs.{kind}[{i}]"
            if not isinstance(entry, dict):
                raise _fail(where, "expected an object")
            if entry.get("kind") != kind:
                raise _fail(f"{where}.kind", f"expected {kind!r}, got {entry.get('kind')!r}")
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise _fail(f"{where}.name", "expected a non-empty string")
            ver = entry.get("version")
            if isinstance(ver, bool) or not isinstance(ver, int) or ver < 1:
                raise _fail(f"{where}.version", f"expected a positive integer, got {ver!r}")
            if (name, ver) in seen:
                raise _fail(where, f"{name}@{ver} appears twice")
            seen.add((name, ver))
            roles = entry.get("schemas")
            if not isinstance(roles, dict) or not all(isinstance(s, dict) for s in roles.values()):
                raise _fail(f"{where}.schemas", "expected an object mapping roles to JSON Schemas")
    return data


def load_ir(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate an IR from a file path, JSON text or an already-parsed mapping.

    Raises:
        IRFormatError: Unreadable file, invalid JSON, or not IR.
    """
    if isinstance(source, Mapping):
        return validate_ir(dict(source))
    text = str(source)
    if isinstance(source, str) and text.lstrip().startswith(("{", "[")):
        label = "IR"
    else:
        path = Path(source)
        label = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise IRFormatError(
                f"cannot read IR file {label!r}: {exc.strerror or exc}; export one with "
                "`contractspec spec export MODULE:OBJECT -o FILE`",
                details={"path": label},
            ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IRFormatError(
            f"{label} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            details={"path": label},
        ) from None
    return validate_ir(data, source=label)


# --------------------------------------------------------------------------------------------
# Lock files
# --------------------------------------------------------------------------------------------


def as_ir(source: SpecRegistry | Mapping[str, Any]) -> dict[str, Any]:
    """`source` as validated IR: a registry's `to_ir`, or a mapping checked by `validate_ir`."""
    if isinstance(source, Mapping):
        return validate_ir(dict(source))
    return to_ir(source)


def write_lock(
    source: SpecRegistry | Mapping[str, Any], path: str | os.PathLike[str] = LOCK_FILENAME
) -> Path:
    """Write the canonical IR of a registry (or of an IR mapping) to `path`.

    Returns:
        The path written.

    Raises:
        IRFormatError: `source` is a mapping that is not IR.
        OSError: The file cannot be written.
    """
    target = Path(path)
    target.write_text(dumps_ir(as_ir(source)), encoding="utf-8")
    return target


def read_lock(path: str | os.PathLike[str] = LOCK_FILENAME) -> dict[str, Any]:
    """Read and validate a lock file (`load_ir` for a path)."""
    return load_ir(Path(path))
