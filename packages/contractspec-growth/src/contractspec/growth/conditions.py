"""Targeting conditions in GrowthBook's condition language (a MongoDB-style query over attributes).

```python
condition = {"plan": {"$in": ["pro", "enterprise"]}, "country": "FR", "app.version": {"$vgte": "2.1.0"}}
eval_condition({"plan": "pro", "country": "FR", "app": {"version": "2.3.0"}}, condition)  # True
```

Keys are attribute paths (dotted for nested objects); values are literals (compared with JSON
equality) or operator objects. Logical operators: `$and`, `$or`, `$nor`, `$not`. Value operators:
`$eq $ne $lt $lte $gt $gte` (numbers with numbers, strings with strings), `$in $nin $ini $nini`,
`$all $alli $elemMatch $size`, `$exists $type`, `$regex $regexi $notRegex $notRegexi`,
`$veq $vne $vlt $vlte $vgt $vgte` (semantic versions), `$inGroup $notInGroup` (saved groups,
i.e. named lists of ids: our *segments*), `$not`.

Evaluation follows GrowthBook's SDKs (JSON types are never coerced into each other, strings
compare by UTF-16 code units like JavaScript) and passes their conformance cases.
`check_condition` rejects malformed conditions at definition time, which the SDKs only discover
as silently failing targeting.

Source: GrowthBook `packages/sdk-js/src/mongrule.ts`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from contractspec.core.errors import SpecDefinitionError

__all__ = [
    "LOGICAL_OPERATORS",
    "VALUE_OPERATORS",
    "check_condition",
    "eval_condition",
    "json_type",
    "padded_version",
]

Condition = Mapping[str, Any]
SavedGroups = Mapping[str, Sequence[Any]]

#: Operators that combine conditions.
LOGICAL_OPERATORS = frozenset({"$and", "$or", "$nor", "$not"})
#: Operators that test one attribute value.
VALUE_OPERATORS = frozenset(
    {
        "$eq",
        "$ne",
        "$lt",
        "$lte",
        "$gt",
        "$gte",
        "$veq",
        "$vne",
        "$vlt",
        "$vlte",
        "$vgt",
        "$vgte",
        "$in",
        "$nin",
        "$ini",
        "$nini",
        "$all",
        "$alli",
        "$elemMatch",
        "$size",
        "$exists",
        "$type",
        "$regex",
        "$regexi",
        "$notRegex",
        "$notRegexi",
        "$inGroup",
        "$notInGroup",
        "$not",
    }
)
_LIST_OPERATORS = frozenset({"$in", "$nin", "$ini", "$nini", "$all", "$alli"})
_REGEX_OPERATORS = frozenset({"$regex", "$regexi", "$notRegex", "$notRegexi"})
_JSON_TYPES = frozenset({"null", "boolean", "number", "string", "array", "object"})


# -- JSON semantics -----------------------------------------------------------------------------


def json_type(value: Any) -> str:
    """The JSON type name of a value: `null`, `boolean`, `number`, `string`, `array`, `object`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "unknown"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON documents (`JSON.stringify(a) === JSON.stringify(b)`): no type coercion."""
    ta = json_type(a)
    if ta != json_type(b):
        return False
    if ta == "array":
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta == "object":
        return list(a) == list(b) and all(_json_equal(a[k], b[k]) for k in a)
    if ta == "number" and not (math.isfinite(a) and math.isfinite(b)):
        return not math.isfinite(a) and not math.isfinite(b)  # both serialise as null
    return bool(a == b)


def _strict_equal(a: Any, b: Any) -> bool:
    """JavaScript `===` between two separately parsed JSON values (containers are never equal)."""
    ta = json_type(a)
    if ta != json_type(b) or ta in ("array", "object"):
        return False
    return bool(a == b)


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


_JS_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_JS_RADIX = re.compile(r"0([xXoObB])([0-9a-fA-F]+)")
_JS_SPACE = " \t\n\v\f\r\u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(
    chr(c) for c in range(0x2000, 0x200B)
)


def _to_primitive(value: Any) -> Any:
    """JavaScript `ToPrimitive` of a JSON value (arrays join, objects become a tag string)."""
    if isinstance(value, list | tuple):
        return ",".join("" if v is None else _to_string(_to_primitive(v)) for v in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return value


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _js_number_text(value)


def _to_number(value: Any) -> float:
    """JavaScript `ToNumber` of a primitive (`null` is 0, unparsable text is NaN)."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip(_JS_SPACE)
    if not text:
        return 0.0
    if _JS_DECIMAL.fullmatch(text):
        return float(text)
    if text in ("Infinity", "+Infinity"):
        return math.inf
    if text == "-Infinity":
        return -math.inf
    radix = _JS_RADIX.fullmatch(text)
    if radix:
        base = {"x": 16, "o": 8, "b": 2}[radix.group(1).lower()]
        try:
            return float(int(radix.group(2), base))
        except ValueError:
            return math.nan
    return math.nan


def _compare(a: Any, b: Any) -> int | None:
    """JavaScript's relational comparison (`a < b`) as `-1/0/1`, or `None` when unordered (NaN).

    Two strings compare by UTF-16 code units; anything else is converted to numbers, so a
    missing attribute (`null`) counts as 0 and `"8"` as 8, exactly like the reference SDK.
    """
    pa, pb = _to_primitive(a), _to_primitive(b)
    if isinstance(pa, str) and isinstance(pb, str):
        if not (pa.isascii() and pb.isascii()):
            ua, ub = _utf16(pa), _utf16(pb)
            return (ua > ub) - (ua < ub)
        return (pa > pb) - (pa < pb)
    na, nb = _to_number(pa), _to_number(pb)
    if math.isnan(na) or math.isnan(nb):
        return None
    return (na > nb) - (na < nb)


def _js_number_text(value: float) -> str:
    from contractspec.growth.hashing import _js_number

    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return _js_number(value)


_VERSION_STRIP = re.compile(r"(^v|\+.*$)")
_VERSION_SPLIT = re.compile(r"[-.]")


@lru_cache(maxsize=1024)
def _padded(text: str) -> str:
    parts = _VERSION_SPLIT.split(_VERSION_STRIP.sub("", text))
    if len(parts) == 3:
        parts.append("~")  # a release sorts after its pre-releases ("~" is the largest ASCII)
    return "-".join(p.rjust(5, " ") if p.isdigit() else p for p in parts)


def padded_version(value: Any) -> str:
    """A version string made comparable as text: `"v1.2.3-rc.1+b7"` -> `"    1-    2-    3-rc-    1"`.

    Numeric parts are left-padded to five characters, a leading `v` and build metadata are
    dropped, and a plain `x.y.z` gets a `~` so it sorts after its pre-releases (SemVer order).
    """
    if _is_number(value):
        value = _js_number_text(value)
    if not value or not isinstance(value, str):
        value = "0"
    return _padded(value)


def _path(attributes: Any, path: str) -> Any:
    current = attributes
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list | tuple) and part == "length":
            current = len(current)
        elif (
            isinstance(current, list | tuple)
            and part.isascii()
            and part.isdigit()
            and (part == "0" or not part.startswith("0"))
            and int(part) < len(current)
        ):
            current = current[int(part)]
        else:
            return None
    return current


# -- evaluation ---------------------------------------------------------------------------------


def eval_condition(
    attributes: Mapping[str, Any],
    condition: Condition,
    saved_groups: SavedGroups | None = None,
) -> bool:
    """Whether `attributes` satisfy `condition`. GrowthBook `evalCondition`.

    Args:
        attributes: The subject's attributes (JSON-like: str, numbers, bools, None, lists, dicts).
        condition: A condition document; `{}` matches everyone.
        saved_groups: Named id lists for `$inGroup` / `$notInGroup` (segments).

    Returns:
        `True` when every clause holds. A malformed clause (unknown operator, bad regex) never
        matches; use `check_condition` to reject those up front.
    """
    try:
        return _eval(attributes, condition, saved_groups or {})
    except (TypeError, ValueError, AttributeError, IndexError, RecursionError):
        return False


def _eval(attributes: Any, condition: Condition, groups: SavedGroups) -> bool:
    for key, value in condition.items():
        if key == "$or":
            if not _any(attributes, value, groups):
                return False
        elif key == "$nor":
            if _any(attributes, value, groups):
                return False
        elif key == "$and":
            if not all(_eval(attributes, c, groups) for c in value):
                return False
        elif key == "$not":
            if _eval(attributes, value, groups):
                return False
        elif not _eval_value(value, _path(attributes, key), groups):
            return False
    return True


def _any(attributes: Any, conditions: Sequence[Condition], groups: SavedGroups) -> bool:
    if not conditions:
        return True
    return any(_eval(attributes, c, groups) for c in conditions)


def _is_operator_object(value: Any) -> bool:
    return isinstance(value, Mapping) and all(str(k).startswith("$") for k in value)


def _eval_value(condition: Any, value: Any, groups: SavedGroups, insensitive: bool = False) -> bool:
    if _is_operator_object(condition):
        return all(_eval_operator(op, value, arg, groups) for op, arg in condition.items())
    if insensitive and isinstance(condition, str) and isinstance(value, str):
        return condition.lower() == value.lower()
    return _json_equal(condition, value)


def _is_in(value: Any, candidates: Sequence[Any], insensitive: bool = False) -> bool:
    def fold(v: Any) -> Any:
        return v.lower() if insensitive and isinstance(v, str) else v

    if isinstance(value, list | tuple):
        return any(_strict_equal(fold(v), fold(c)) for v in value for c in candidates)
    return any(_strict_equal(fold(value), fold(c)) for c in candidates)


def _regex(pattern: Any, value: Any, flags: int) -> bool | None:
    if not isinstance(pattern, str) or not isinstance(value, str):
        return None
    try:
        return re.search(pattern, value, flags) is not None
    except re.error:
        return None


def _eval_operator(op: str, value: Any, arg: Any, groups: SavedGroups) -> bool:
    if op == "$eq":
        return _strict_equal(value, arg)
    if op == "$ne":
        return not _strict_equal(value, arg)
    if op in ("$lt", "$lte", "$gt", "$gte"):
        order = _compare(value, arg)
        if order is None:
            return False
        return {"$lt": order < 0, "$lte": order <= 0, "$gt": order > 0, "$gte": order >= 0}[op]
    if op in ("$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte"):
        a, b = padded_version(value), padded_version(arg)
        return {
            "$veq": a == b,
            "$vne": a != b,
            "$vlt": a < b,
            "$vlte": a <= b,
            "$vgt": a > b,
            "$vgte": a >= b,
        }[op]
    if op in ("$in", "$nin", "$ini", "$nini"):
        if not isinstance(arg, list | tuple):
            return False
        found = _is_in(value, arg, insensitive=op in ("$ini", "$nini"))
        return found if op in ("$in", "$ini") else not found
    if op in ("$inGroup", "$notInGroup"):
        members = groups.get(arg) if isinstance(arg, str) else None
        found = isinstance(members, list | tuple) and _is_in(value, members)
        return found if op == "$inGroup" else not found
    if op in ("$regex", "$regexi", "$notRegex", "$notRegexi"):
        matched = _regex(arg, value, re.IGNORECASE if op.endswith("i") else 0)
        if op.startswith("$not"):
            return True if matched is None else not matched
        return bool(matched)
    if op == "$elemMatch":
        if not isinstance(value, list | tuple) or not isinstance(arg, Mapping):
            return False
        on_items = _is_operator_object(arg) and not (arg.keys() & {"$or", "$nor", "$and"})
        for item in value:
            if item is None:
                continue
            if on_items and _eval_value(arg, item, groups):
                return True
            if not on_items and _eval(item, arg, groups):
                return True
        return False
    if op == "$size":
        if not isinstance(value, list | tuple):
            return False
        return _eval_value(arg, len(value), groups)
    if op in ("$all", "$alli"):
        if not isinstance(value, list | tuple) or not isinstance(arg, list | tuple):
            return False
        insensitive = op == "$alli"
        return all(any(_eval_value(c, v, groups, insensitive) for v in value) for c in arg)
    if op == "$exists":
        return (value is not None) if arg else (value is None)
    if op == "$type":
        return bool(json_type(value) == arg)
    if op == "$not":
        return not _eval_value(arg, value, groups)
    return False  # unknown operator: never matches (check_condition rejects it)


# -- definition-time checks ---------------------------------------------------------------------


def check_condition(condition: Any, *, field: str = "condition") -> dict[str, Any]:
    """Validate a condition document and return it as a plain dict.

    Raises:
        SpecDefinitionError: It is not a mapping, uses an unknown operator, gives `$in`-style
            operators a non-list, `$and`/`$or`/`$nor` a non-list of conditions, `$type` an unknown
            type, or a regex operator an invalid pattern. The message names the path (`field`).
    """
    if not isinstance(condition, Mapping):
        raise SpecDefinitionError(
            f"{field} must be a condition mapping such as {{'plan': 'pro'}}, got "
            f"{type(condition).__name__}",
            details={"field": field},
        )
    for key, value in condition.items():
        where = f"{field}.{key}"
        if not isinstance(key, str):
            raise SpecDefinitionError(
                f"{field} has a non-string key {key!r}; keys are attribute paths or $operators",
                details={"field": field},
            )
        if key in ("$and", "$or", "$nor"):
            if not isinstance(value, list | tuple):
                raise SpecDefinitionError(
                    f"{where} must be a list of conditions, got {type(value).__name__}",
                    details={"field": where},
                )
            for i, item in enumerate(value):
                check_condition(item, field=f"{where}[{i}]")
        elif key == "$not":
            check_condition(value, field=where)
        elif key.startswith("$"):
            raise SpecDefinitionError(
                f"{where}: {key!r} is not a logical operator; use $and, $or, $nor or $not, or "
                "put value operators under an attribute ({'age': {'$gt': 18}})",
                details={"field": where},
            )
        else:
            _check_value(value, where)
    return dict(condition)


def _check_value(value: Any, where: str) -> None:
    if not _is_operator_object(value) or not value:
        return
    for op, arg in value.items():
        at = f"{where}.{op}"
        if op not in VALUE_OPERATORS:
            known = ", ".join(sorted(VALUE_OPERATORS))
            raise SpecDefinitionError(
                f"{at}: unknown operator {op!r}; known operators: {known}",
                details={"field": at},
            )
        if op in _LIST_OPERATORS and not isinstance(arg, list | tuple):
            raise SpecDefinitionError(
                f"{at} needs a list of values, got {type(arg).__name__} ({op}: [...])",
                details={"field": at},
            )
        if op == "$type" and arg not in _JSON_TYPES:
            raise SpecDefinitionError(
                f"{at} must name a JSON type ({', '.join(sorted(_JSON_TYPES))}), got {arg!r}",
                details={"field": at},
            )
        if op in _REGEX_OPERATORS:
            if not isinstance(arg, str):
                raise SpecDefinitionError(
                    f"{at} needs a pattern string, got {type(arg).__name__}",
                    details={"field": at},
                )
            try:
                re.compile(arg)
            except re.error as exc:
                raise SpecDefinitionError(
                    f"{at} is not a valid regular expression ({exc})", details={"field": at}
                ) from None
        if op in ("$inGroup", "$notInGroup") and not isinstance(arg, str):
            raise SpecDefinitionError(
                f"{at} needs a saved group (segment) name, got {type(arg).__name__}",
                details={"field": at},
            )
        if op == "$elemMatch":
            if not isinstance(arg, Mapping):
                raise SpecDefinitionError(
                    f"{at} needs a condition mapping, got {type(arg).__name__}",
                    details={"field": at},
                )
            if _is_operator_object(arg) and not (arg.keys() & {"$or", "$nor", "$and"}):
                _check_value(arg, at)
            else:
                check_condition(arg, field=at)
        if op in ("$not", "$size"):
            _check_value(arg, at)
        if op == "$all" or op == "$alli":
            for i, item in enumerate(arg):
                _check_value(item, f"{at}[{i}]")
