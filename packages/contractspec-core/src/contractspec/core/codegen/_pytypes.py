"""JSON Schema (as pydantic emits it) → Python annotations, defaults and class layouts.

Covers what `model_json_schema()` produces for pydantic v2 models: objects with `$ref`s, enums,
`Literal`s (`enum`/`const`), `anyOf` unions and Optional, arrays, tuples (`prefixItems`), dicts
(`additionalProperties`), string formats, numeric and length constraints, decimals (`x-decimal`)
and defaults. Anything else becomes `Any`, which still validates and type-checks.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from typing import Any, Final

from attrs import define, field

_FORMATS: Final = {
    "date-time": ("datetime", "datetime"),
    "date": ("date", "datetime"),
    "time": ("time", "datetime"),
    "duration": ("timedelta", "datetime"),
    "uuid": ("UUID", "uuid"),
}
_RESERVED_FIELDS: Final = frozenset(
    {"model_config", "model_fields", "model_computed_fields", "copy", "dict", "json", "schema",
     "construct", "validate", "fields", "Config"}
)  # fmt: skip


def class_name(name: str) -> str:
    """A PascalCase Python class name for a component name (`Deal-Output` → `DealOutput`)."""
    parts = re.split(r"[^0-9A-Za-z]+", name)
    out = "".join(p[:1].upper() + p[1:] for p in parts if p)
    if not out or out[0].isdigit():
        out = "M" + out
    return out


def identifier(name: str) -> str:
    """A snake_case identifier for a field or function name."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not out or out[0].isdigit():
        out = "f_" + out
    if keyword.iskeyword(out) or out in _RESERVED_FIELDS or out.startswith("model_"):
        out += "_"
    return out


def member_name(value: Any, taken: set[str]) -> str:
    """An UPPER_SNAKE enum member name for a value, unique within `taken`."""
    base = re.sub(r"[^0-9A-Za-z]+", "_", str(value)).strip("_").upper() or "VALUE"
    if base[0].isdigit():
        base = "V_" + base
    if keyword.iskeyword(base.lower()) and base.lower() == base:
        base += "_"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


@define
class Imports:
    """Names a generated module imports, by module."""

    names: dict[str, set[str]] = field(factory=dict)
    plain: set[str] = field(factory=set)

    def add(self, module: str, name: str) -> None:
        self.names.setdefault(module, set()).add(name)

    def lines(self, local: str | None = None) -> list[str]:
        """`from x import a, b` lines: stdlib first, then third party, then `local` (isort)."""
        stdlib = {"datetime", "decimal", "enum", "typing", "uuid", "collections.abc"}
        groups: list[list[str]] = [[], [], []]
        for module in sorted(self.plain):
            groups[0 if module in stdlib else 1].append(f"import {module}")
        for module in sorted(self.names):
            names = sort_names(self.names[module])
            section = 0 if module in stdlib else 2 if module.startswith(".") else 1
            line = f"from {module} import {', '.join(names)}"
            if len(line) > 88:  # isort's wrapped form; the trailing comma keeps it stable
                line = f"from {module} import (\n" + "".join(f"    {n},\n" for n in names) + ")"
            groups[section].append(line)
        out: list[str] = []
        for lines in groups:
            if lines:
                if out:
                    out.append("")
                out.extend(lines)
        return out


def sort_names(names: Any) -> list[str]:
    """isort/ruff order: CONSTANTS, then Classes, then everything else; case-sensitive."""

    def key(name: str) -> tuple[int, str]:
        if name.isupper() and len(name) > 1:
            return (0, name)
        return (1 if name[:1].isupper() else 2, name)

    return sorted(names, key=key)


def _py_literal(value: Any) -> str:
    if isinstance(value, str):
        return repr(value).replace("'", '"') if '"' not in value else repr(value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{_py_literal(k)}: {_py_literal(v)}" for k, v in value.items()) + "}"
        )
    return repr(value)


@define
class TypeMapper:
    """Converts schemas to annotations for one generated module.

    Attributes:
        classes: Component name → Python class name.
        enums: Component name → {JSON value: member name} for enum components.
        imports: What the annotations need.
    """

    classes: Mapping[str, str]
    enums: Mapping[str, Mapping[str, str]]
    imports: Imports = field(factory=Imports)

    def _ref(self, schema: Mapping[str, Any]) -> str | None:
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            return ref.removeprefix("#/components/schemas/")
        return None

    def annotation(self, schema: Any) -> str:
        """The Python annotation of a (property) schema, constraints included."""
        base, constraints = self._base(schema if isinstance(schema, Mapping) else {})
        if constraints:
            self.imports.add("typing", "Annotated")
            self.imports.add("pydantic", "Field")
            args = ", ".join(f"{k}={v}" for k, v in constraints)
            return f"Annotated[{base}, Field({args})]"
        return base

    def _base(self, schema: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        ref = self._ref(schema)
        if ref is not None:
            return self.classes.get(ref, "Any"), []
        if "x-decimal" in schema:
            return self._decimal(schema["x-decimal"])
        members = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(members, list) and members:
            parts: list[str] = []
            for member in members:
                text = self.annotation(member)
                if text not in parts:
                    parts.append(text)
            if "None" in parts:  # Optional last, as people write it
                parts = [p for p in parts if p != "None"] + ["None"]
            return " | ".join(parts), []
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else list(schema["enum"])
            self.imports.add("typing", "Literal")
            literal = "Literal[" + ", ".join(_py_literal(v) for v in values if v is not None) + "]"
            return (literal + " | None" if None in values else literal), []
        types = schema.get("type")
        if isinstance(types, list):
            parts = [self.annotation({**schema, "type": t}) for t in types]
            return " | ".join(parts), []
        constraints: list[tuple[str, str]] = []
        if types == "string":
            for key, arg in (("minLength", "min_length"), ("maxLength", "max_length")):
                if key in schema:
                    constraints.append((arg, repr(schema[key])))
            if "pattern" in schema:
                constraints.append(("pattern", "r" + _py_literal(schema["pattern"])))
            fmt = schema.get("format")
            if fmt in _FORMATS:
                name, module = _FORMATS[fmt]
                self.imports.add(module, name)
                return name, constraints
            if fmt == "binary":
                return "bytes", constraints
            return "str", constraints
        if types in ("integer", "number"):
            for key, arg in (
                ("minimum", "ge"),
                ("maximum", "le"),
                ("exclusiveMinimum", "gt"),
                ("exclusiveMaximum", "lt"),
                ("multipleOf", "multiple_of"),
            ):
                if key in schema:
                    constraints.append((arg, repr(schema[key])))
            return ("int" if types == "integer" else "float"), constraints
        if types == "boolean":
            return "bool", []
        if types == "null":
            return "None", []
        if types == "array":
            for key, arg in (("minItems", "min_length"), ("maxItems", "max_length")):
                if key in schema:
                    constraints.append((arg, repr(schema[key])))
            prefix = schema.get("prefixItems")
            if isinstance(prefix, list):
                inner = ", ".join(self.annotation(p) for p in prefix) or "()"
                return f"tuple[{inner}]", constraints
            return f"list[{self.annotation(schema.get('items', {}))}]", constraints
        if types == "object" or "additionalProperties" in schema:
            extra = schema.get("additionalProperties")
            value = self.annotation(extra) if isinstance(extra, Mapping) else "Any"
            if value == "Any":
                self.imports.add("typing", "Any")
            return f"dict[str, {value}]", []
        self.imports.add("typing", "Any")
        return "Any", []

    def _decimal(self, info: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        self.imports.add("decimal", "Decimal")
        constraints: list[tuple[str, str]] = []
        for key, arg in (
            ("max_digits", "max_digits"),
            ("decimal_places", "decimal_places"),
            ("minimum", "ge"),
            ("maximum", "le"),
            ("exclusiveMinimum", "gt"),
            ("exclusiveMaximum", "lt"),
            ("multipleOf", "multiple_of"),
        ):
            if info.get(key) is not None:
                constraints.append((arg, repr(info[key])))
        return "Decimal", constraints

    def default(self, schema: Mapping[str, Any], value: Any) -> tuple[str, bool]:
        """Python source of a default: `(text, is_factory)`."""
        ref = self._ref(schema)
        if ref is None:
            for member in schema.get("anyOf") or ():
                if (
                    isinstance(member, Mapping)
                    and self._ref(member) in self.enums
                    and value is not None
                ):
                    ref = self._ref(member)
        if ref is not None and ref in self.enums and value is not None:
            member = self.enums[ref].get(_py_literal(value))
            if member is not None:
                return f"{self.classes[ref]}.{member}", False
        if isinstance(value, list | dict):
            if not value:
                return ("list" if isinstance(value, list) else "dict"), True
            return f"lambda: {_py_literal(value)}", True
        if (value is not None and "x-decimal" in schema) or (
            _has_decimal(schema) and value is not None
        ):
            self.imports.add("decimal", "Decimal")
            return f"Decimal({_py_literal(str(value))})", False
        fmt = schema.get("format")
        if isinstance(value, str) and fmt in _FORMATS and fmt != "duration":
            name, module = _FORMATS[fmt]
            self.imports.add(module, name)
            if name == "UUID":
                return f"UUID({_py_literal(value)})", False
            return f"{name}.fromisoformat({_py_literal(value)})", False
        return _py_literal(value), False


def _has_decimal(schema: Mapping[str, Any]) -> bool:
    return any(isinstance(m, Mapping) and "x-decimal" in m for m in schema.get("anyOf") or ())


@define
class FieldDef:
    """One field of a generated model."""

    name: str
    alias: str | None
    annotation: str
    default: str | None
    factory: bool
    description: str | None


def model_fields(schema: Mapping[str, Any], types: TypeMapper) -> list[FieldDef]:
    """Fields of an object schema: required ones in declared order, then the rest sorted."""
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = [r for r in schema.get("required") or () if r in props]
    order = required + sorted(k for k in props if k not in required)
    out: list[FieldDef] = []
    for key in order:
        prop = props[key] if isinstance(props[key], Mapping) else {}
        name = identifier(key)
        annotation = types.annotation(prop)
        default: str | None = None
        factory = False
        if key not in required:
            if "default" in prop:
                default, factory = types.default(prop, prop["default"])
            else:
                default = "None"
                if "None" not in annotation.split(" | "):
                    annotation += " | None"
        description = prop.get("description")
        out.append(
            FieldDef(
                name=name,
                alias=key if name != key else None,
                annotation=annotation,
                default=default,
                factory=factory,
                description=description if isinstance(description, str) else None,
            )
        )
    return out


def field_source(f: FieldDef, types: TypeMapper) -> str:
    """`name: Annotation = default` with a `Field(...)` when alias, factory or description need one."""
    args: list[str] = []
    if f.factory and f.default is not None:
        args.append(f"default_factory={f.default}")
    if f.alias:
        args.append(f"alias={_py_literal(f.alias)}")
    if f.description:
        args.append(f"description={_py_literal(f.description)}")
    if args:
        types.imports.add("pydantic", "Field")
        if f.default is not None and not f.factory:
            args.insert(0, f"default={f.default}")
        return f"{f.name}: {f.annotation} = Field({', '.join(args)})"
    if f.default is not None:
        return f"{f.name}: {f.annotation} = {f.default}"
    return f"{f.name}: {f.annotation}"


def references(node: Any) -> set[str]:
    """Component names a schema refers to."""
    found: set[str] = set()
    if isinstance(node, Mapping):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.removeprefix("#/components/schemas/"))
        for value in node.values():
            found |= references(value)
    elif isinstance(node, list):
        for value in node:
            found |= references(value)
    return found
