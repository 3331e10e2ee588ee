"""Forms from pydantic input models: one `FormField` per field, and the way back to raw input.

The field kinds come from the storage classification the stores use
(`contractspec.core._fields.entity_columns`), so a form and a column agree on what a field is.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, Final, Union, get_args, get_origin

import annotated_types
from attrs import define, field
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from starlette.datastructures import FormData, ImmutableMultiDict

from contractspec.core._fields import FieldKind, entity_columns

__all__ = ["FormField", "errors_by_field", "form_fields", "parse_form", "values_of"]

#: Fields of a console form that are not input fields.
CONTROL_FIELDS: Final = frozenset({"_csrf", "_idempotency_key", "_run"})
_LOCAL_DATETIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?")
_SCALAR_ITEMS: Final = {str: "str", int: "int", float: "float", Decimal: "decimal"}
_WIDGETS: Final = {
    "str": "text",
    "uuid": "text",
    "int": "number",
    "float": "number",
    "decimal": "number",
    "date": "date",
    "datetime": "datetime-local",
    "time": "time",
    "bool": "checkbox",
    "enum": "select",
    "list": "textarea",
    "json": "textarea",
    "bytes": "text",
}
_CACHE: dict[type[BaseModel], tuple[FormField, ...]] = {}


@define(frozen=True)
class FormField:
    """How one input field is shown and read back.

    Attributes:
        name: Field name (also the HTML `name` and the error path's first element).
        label: Its title (`title=` of the field, else the name made readable).
        kind: Storage kind (`str`, `int`, `decimal`, `date`, `datetime`, `bool`, `enum`, `list`,
            `json`, ...).
        widget: `text`, `number`, `date`, `datetime-local`, `time`, `checkbox`, `select`,
            `tristate` (an optional bool), `textarea`.
        required: The model has no default for it.
        nullable: It accepts `None` (an empty input sends nothing, so the default applies).
        help: The field's description (may be empty).
        step: The `step` of number inputs (`1` for ints, `0.01` for a decimal with 2 places,
            `any` otherwise).
        minimum, maximum: Bounds of numbers (`ge`/`le`; `gt`/`lt` are left to the server).
        max_length: Longest accepted string.
        choices: `(value, label)` pairs of a select.
        item_kind: Kind of the items of a `list` field.
    """

    name: str
    label: str
    kind: str
    widget: str
    required: bool
    nullable: bool
    help: str = ""
    step: str | None = None
    minimum: str | None = None
    maximum: str | None = None
    max_length: int | None = None
    choices: tuple[tuple[str, str], ...] = field(default=())
    item_kind: str | None = None

    @property
    def hint(self) -> str:
        """Extra guidance for list and JSON fields."""
        if self.kind == "list":
            return "One value per line."
        if self.kind == "json":
            return "JSON."
        if self.kind == "datetime":
            return "UTC."
        return ""


def _label(name: str, info: FieldInfo) -> str:
    if info.title:
        return info.title
    text = name.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def _strip(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _list_item_kind(info: FieldInfo) -> str | None:
    core = _strip(info.annotation)
    if get_origin(core) not in (list, tuple, set, frozenset, Sequence):
        return None
    args = [a for a in get_args(core) if a is not Ellipsis]
    if len(args) != 1:
        return None
    item = _strip(args[0])
    return _SCALAR_ITEMS.get(item) if isinstance(item, type) else None


def _bound(info: FieldInfo, cls: type[Any], attr: str) -> str | None:
    for meta in info.metadata:
        if isinstance(meta, cls):
            value = getattr(meta, attr, None)
            if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
                return str(value)
    return None


def _field(name: str, info: FieldInfo, col: FieldKind) -> FormField:
    kind = col.kind
    item_kind = _list_item_kind(info) if kind == "json" else None
    if item_kind is not None:
        kind = "list"
    widget = _WIDGETS.get(kind, "textarea")
    required = info.is_required()
    if kind == "bool" and col.nullable:
        widget = "tristate"
    step: str | None = None
    if kind == "int":
        step = "1"
    elif kind == "decimal":
        step = (
            "1"
            if col.decimal_places == 0
            else f"0.{'0' * (col.decimal_places - 1)}1"
            if col.decimal_places
            else "any"
        )
    elif kind == "float":
        step = "any"
    choices: tuple[tuple[str, str], ...] = ()
    if kind == "enum":
        names = {m.value: m.name for m in col.enum_type} if col.enum_type is not None else {}
        choices = tuple(
            (str(v), str(names.get(v, v)).replace("_", " ").capitalize()) for v in col.enum_values
        )
    return FormField(
        name=name,
        label=_label(name, info),
        kind=kind,
        widget=widget,
        required=required,
        nullable=col.nullable,
        help=info.description or "",
        step=step,
        minimum=_bound(info, annotated_types.Ge, "ge")
        if kind in ("int", "float", "decimal")
        else None,
        maximum=_bound(info, annotated_types.Le, "le")
        if kind in ("int", "float", "decimal")
        else None,
        max_length=col.max_length if kind in ("str", "uuid") else None,
        choices=choices,
        item_kind=item_kind,
    )


def form_fields(model: type[BaseModel]) -> tuple[FormField, ...]:
    """The form of `model`, one `FormField` per field in declaration order (cached per model)."""
    found = _CACHE.get(model)
    if found is None:
        columns = entity_columns(model)
        found = _CACHE[model] = tuple(
            _field(name, info, columns[name]) for name, info in model.model_fields.items()
        )
    return found


def parse_form(
    fields: Sequence[FormField], data: FormData | ImmutableMultiDict[str, Any]
) -> dict[str, Any]:
    """The raw input of a submitted form (validation is the executor's).

    Empty inputs are left out (the model's default applies; a required field is then reported
    missing by name); an unticked checkbox is `False`; list fields take one value per line;
    JSON fields are parsed (text that is not JSON is passed on for validation to report);
    a `datetime-local` value without an offset is read as UTC.
    """
    raw: dict[str, Any] = {}
    for f in fields:
        value = data.get(f.name)
        if f.widget == "checkbox":
            raw[f.name] = isinstance(value, str) and value in ("on", "true", "1")
            continue
        if not isinstance(value, str):
            continue
        if f.kind == "list":
            raw[f.name] = [line.strip() for line in value.splitlines() if line.strip()]
            continue
        text = value.strip()
        if not text:
            continue
        if f.widget == "tristate":
            raw[f.name] = text == "true"
        elif f.kind == "json":
            try:
                raw[f.name] = json.loads(text)
            except ValueError:
                raw[f.name] = text
        elif f.kind == "datetime" and _LOCAL_DATETIME.fullmatch(text):
            raw[f.name] = text + "Z"
        elif f.kind == "str":
            raw[f.name] = value  # strings keep their spaces: the model decides
        else:
            raw[f.name] = text
    return raw


def _text(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind == "datetime" and hasattr(value, "isoformat"):
        text: str = value.isoformat()
        return text[:19] if len(text) >= 19 else text
    if kind == "json":
        return json.dumps(value, default=str, ensure_ascii=False)
    if hasattr(value, "value") and not isinstance(value, str | int | float | Decimal):
        return str(value.value)
    return str(value)


def values_of(fields: Sequence[FormField], source: Mapping[str, Any]) -> dict[str, str]:
    """The text each input shows for `source` (a submitted form, query or stored record)."""
    out: dict[str, str] = {}
    for f in fields:
        if f.name not in source:
            continue
        value = source[f.name]
        if f.kind == "list":
            if isinstance(value, str):
                out[f.name] = value
            else:
                out[f.name] = "\n".join(_text(f.item_kind or "str", v) for v in value or ())
        elif isinstance(value, str):
            out[f.name] = value
        else:
            out[f.name] = _text(f.kind, value)
    return out


def errors_by_field(
    fields: Sequence[FormField], errors: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, list[str]], list[str]]:
    """Split a `SpecValidationError`'s errors into per-field messages and the rest.

    An error belongs to the field named by the first element of its `loc` (nested paths go to
    their top-level field, with the rest of the path in front of the message).
    """
    names = {f.name for f in fields}
    by_field: dict[str, list[str]] = {}
    rest: list[str] = []
    for error in errors:
        loc = list(error.get("loc") or ())
        msg = str(error.get("msg") or error.get("type") or "invalid value")
        if loc and loc[0] in ("body", "input") and len(loc) > 1 and loc[1] in names:
            loc = loc[1:]
        if loc and isinstance(loc[0], str) and loc[0] in names:
            tail = ".".join(str(p) for p in loc[1:])
            by_field.setdefault(loc[0], []).append(f"{tail}: {msg}" if tail else msg)
        else:
            where = ".".join(str(p) for p in loc)
            rest.append(f"{where}: {msg}" if where else msg)
    return by_field, rest
