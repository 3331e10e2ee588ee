"""Hypothesis strategies from specs: valid inputs by construction, and invalid ones for negative tests.

```python
from hypothesis import given
from contractspec.testing.strategies import inputs_for, invalid_inputs_for

@given(inputs_for(create_deal))
def test_any_valid_input_is_accepted(payload): ...

@given(invalid_inputs_for(create_deal))
def test_any_invalid_input_is_rejected(payload):
    with pytest.raises(SpecValidationError):
        executor.execute_sync("crm.deal.create", payload, ctx)
```

Strategies are built from the pydantic model's fields: their types (scalars, `Decimal`, dates and
times, UUIDs, enums, `Literal`, optionals and unions, lists, sets, tuples, dicts, nested models,
`EmailStr`) and their constraints (`ge`/`gt`/`le`/`lt`, `min_length`/`max_length`, `pattern`,
`max_digits`/`decimal_places`, `multiple_of`). Every generated value is then validated by the
model, so custom validators are honoured too: what `inputs_for` yields always validates.

`invalid_inputs_for` starts from a valid input in JSON form and breaks it in one of four ways
(drop a required field, give a field a value of the wrong JSON type, violate a field's declared
constraint, or send something that is not an object at all), keeping only results the model
really rejects.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import pydantic
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from contractspec.core import ConfigurationError, OperationSpec

__all__ = ["inputs_for", "invalid_inputs_for", "json_inputs_for", "strategy_for_model"]

_MAX_ITEMS = 5
_JSON_SCALARS: st.SearchStrategy[Any] = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=10)
)


def _model_of(spec: OperationSpec | type[BaseModel]) -> type[BaseModel]:
    if isinstance(spec, OperationSpec):
        return spec.input
    if isinstance(spec, type) and issubclass(spec, BaseModel):
        return spec
    raise ConfigurationError(
        f"strategies need an OperationSpec or a pydantic model, got {spec!r}",
        details={"field": "spec"},
    )


def _constraints(metadata: Sequence[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(_constraints(item.metadata))
            continue
        for name in (
            "ge", "gt", "le", "lt", "min_length", "max_length", "pattern", "max_digits",
            "decimal_places", "multiple_of",
        ):  # fmt: skip
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    return found


def _unwrap(annotation: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        annotation, metadata = args[0], metadata + list(args[1:])
    return annotation, metadata


def _numbers(kind: type, c: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    lo = c.get("ge", c.get("gt"))
    hi = c.get("le", c.get("lt"))
    if kind is int:
        low = (
            None if lo is None else math.ceil(lo) + (1 if "gt" in c and lo == math.ceil(lo) else 0)
        )
        high = (
            None
            if hi is None
            else math.floor(hi) - (1 if "lt" in c and hi == math.floor(hi) else 0)
        )
        ints = st.integers(min_value=low, max_value=high)
        step = c.get("multiple_of")
        if isinstance(step, int) and step > 0:
            ints = ints.filter(lambda v: v % step == 0)
        return ints
    if kind is Decimal:
        places = c.get("decimal_places")
        digits = c.get("max_digits")
        bound = None
        if digits is not None:
            bound = Decimal(10) ** (digits - (places or 0)) - (
                Decimal(1).scaleb(-places) if places else Decimal(1)
            )
        low_d = Decimal(str(lo)) if lo is not None else (-bound if bound is not None else None)
        high_d = Decimal(str(hi)) if hi is not None else bound
        if bound is not None:
            low_d = max(low_d, -bound) if low_d is not None else -bound
            high_d = min(high_d, bound) if high_d is not None else bound
        return st.decimals(
            min_value=low_d, max_value=high_d, places=places, allow_nan=False, allow_infinity=False
        )
    return st.floats(
        min_value=None if lo is None else float(lo),
        max_value=None if hi is None else float(hi),
        exclude_min="gt" in c,
        exclude_max="lt" in c,
        allow_nan=False,
        allow_infinity=False,
    )


def _strings(c: Mapping[str, Any]) -> st.SearchStrategy[str]:
    pattern = c.get("pattern")
    min_size = int(c.get("min_length") or 0)
    max_size = c.get("max_length")
    if pattern is not None:
        text = st.from_regex(pattern, fullmatch=True)
        return text.filter(
            lambda s: len(s) >= min_size and (max_size is None or len(s) <= max_size)
        )
    return st.text(
        min_size=min_size, max_size=min(max_size, min_size + 40) if max_size else min_size + 40
    )


def _strategy(annotation: Any, metadata: Sequence[Any], depth: int) -> st.SearchStrategy[Any]:
    annotation, extra = _unwrap(annotation)
    c = _constraints([*metadata, *extra])
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        branches = [_strategy(a, metadata, depth) for a in options]
        if type(None) in args:
            branches.insert(0, st.none())
        return st.one_of(branches)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if annotation is Any:
        return _JSON_SCALARS
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            if depth > 4:
                return st.nothing()
            return _model_strategy(annotation, depth + 1)
        if issubclass(annotation, enum.Enum):
            return st.sampled_from(list(annotation))
        if annotation is bool:
            return st.booleans()
        if annotation is int or annotation is float or annotation is Decimal:
            return _numbers(annotation, c)
        if annotation is str:
            return _strings(c)
        if annotation is bytes:
            return st.binary(min_size=int(c.get("min_length") or 0), max_size=c.get("max_length"))
        if annotation is pydantic.AwareDatetime:
            return st.datetimes(timezones=st.just(dt.UTC))
        if annotation is pydantic.NaiveDatetime:
            return st.datetimes()
        if annotation is dt.datetime:
            return st.datetimes(timezones=st.none() | st.just(dt.UTC))
        if annotation is dt.date:
            return st.dates()
        if annotation is dt.time:
            return st.times()
        if annotation is dt.timedelta:
            return st.timedeltas(
                min_value=dt.timedelta(days=-9999), max_value=dt.timedelta(days=9999)
            )
        if annotation is uuid.UUID:
            return st.uuids()
        if annotation.__name__ == "EmailStr":
            return st.emails()
    if origin in (list, Sequence, typing.Sequence) or annotation is list:
        item = _strategy(args[0], (), depth) if args else _JSON_SCALARS
        return st.lists(
            item,
            min_size=int(c.get("min_length") or 0),
            max_size=min(
                c.get("max_length") or _MAX_ITEMS, _MAX_ITEMS + int(c.get("min_length") or 0)
            ),
        )
    if origin in (set, frozenset):
        item = _strategy(args[0], (), depth) if args else st.integers()
        sets = st.frozensets(item, min_size=int(c.get("min_length") or 0), max_size=_MAX_ITEMS)
        return sets if origin is frozenset else sets.map(set)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(_strategy(args[0], (), depth), max_size=_MAX_ITEMS).map(tuple)
        return st.tuples(*(_strategy(a, (), depth) for a in args))
    if origin in (dict, Mapping, typing.Mapping) or annotation is dict:
        key = _strategy(args[0], (), depth) if args else st.text(max_size=8)
        value = _strategy(args[1], (), depth) if len(args) > 1 else _JSON_SCALARS
        return st.dictionaries(key, value, max_size=min(c.get("max_length") or 4, 4))
    return st.from_type(annotation)


def _validated(model: type[BaseModel]) -> Any:
    def build(data: dict[str, Any]) -> BaseModel | None:
        try:
            return model.model_validate(data)
        except ValidationError:
            return None

    return build


def _model_strategy(model: type[BaseModel], depth: int) -> st.SearchStrategy[BaseModel]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        key = alias or name
        strategy = _strategy(info.annotation, info.metadata, depth)
        (required if info.is_required() else optional)[key] = strategy
    data = st.fixed_dictionaries(required, optional=optional)
    return data.map(_validated(model)).filter(lambda m: m is not None)


def strategy_for_model(model: type[BaseModel]) -> st.SearchStrategy[BaseModel]:
    """Valid instances of any pydantic model (the engine behind `inputs_for`)."""
    return _model_strategy(model, 0)


def inputs_for(spec: OperationSpec | type[BaseModel]) -> st.SearchStrategy[BaseModel]:
    """Valid inputs of an operation: instances of its input model, valid by construction.

    Args:
        spec: An `OperationSpec` (its `input` model is used) or a pydantic model.

    Returns:
        A strategy of model instances; pass them to `executor.execute` as they are.

    Raises:
        ConfigurationError: `spec` is neither an operation spec nor a pydantic model.
    """
    return strategy_for_model(_model_of(spec))


def json_inputs_for(spec: OperationSpec | type[BaseModel]) -> st.SearchStrategy[dict[str, Any]]:
    """`inputs_for` in JSON form (`model_dump(mode="json", by_alias=True)`), as a client sends it."""
    return inputs_for(spec).map(lambda m: m.model_dump(mode="json", by_alias=True))


_WRONG_TYPES: list[Any] = [None, True, 1.5, -7, "not valid", [], {}, [1, "x"], {"k": 1}]


def _violations(info: FieldInfo) -> list[Any]:
    annotation, extra = _unwrap(info.annotation)
    c = _constraints([*info.metadata, *extra])
    out: list[Any] = []
    if c.get("max_length") is not None:
        out += ["x" * (int(c["max_length"]) + 1), list(range(int(c["max_length"]) + 1))]
    if c.get("min_length"):
        out += ["", []]
    for key, delta in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
        if c.get(key) is not None:
            out.append(c[key] + delta)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        out.append("__not_a_member__")
    if typing.get_origin(annotation) is typing.Literal:
        out.append("__not_a_literal__")
    return out


def invalid_inputs_for(spec: OperationSpec | type[BaseModel]) -> st.SearchStrategy[Any]:
    """Inputs the operation must reject with `SpecValidationError`, for negative tests.

    Each example is a valid input (JSON form) broken in one way: a required field dropped, a field
    given a value of the wrong type, a declared constraint violated (length, bound, enum member),
    or a payload that is not an object. Only values the model really rejects are yielded.

    Returns:
        A strategy of JSON-compatible values (mostly dicts).

    Raises:
        ConfigurationError: `spec` is neither an operation spec nor a pydantic model.
    """
    model = _model_of(spec)
    fields = {
        (info.validation_alias if isinstance(info.validation_alias, str) else info.alias)
        or name: info
        for name, info in model.model_fields.items()
    }
    required = [key for key, info in fields.items() if info.is_required()]

    def invalid(value: Any) -> bool:
        try:
            model.model_validate(value)
        except ValidationError:
            return True
        return False

    @st.composite
    def broken(draw: st.DrawFn) -> Any:
        base: dict[str, Any] = draw(json_inputs_for(model))
        ways = ["wrong_type", "not_an_object"]
        if required:
            ways.append("drop_required")
        constrained = {k: v for k, info in fields.items() if (v := _violations(info))}
        if constrained:
            ways.append("violate")
        way = draw(st.sampled_from(ways))
        if way == "drop_required":
            key = draw(st.sampled_from(required))
            return {k: v for k, v in base.items() if k != key}
        if way == "violate":
            key = draw(st.sampled_from(sorted(constrained)))
            return {**base, key: draw(st.sampled_from(constrained[key]))}
        if way == "not_an_object":
            return draw(st.sampled_from([[], "text", 42, None, [base]]))
        if not fields:
            return draw(st.sampled_from([[], "text", 42]))
        key = draw(st.sampled_from(sorted(fields)))
        return {**base, key: draw(st.sampled_from(_WRONG_TYPES))}

    return broken().filter(invalid)
