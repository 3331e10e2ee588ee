"""Render JSON-like values as Python source literals, formatted the way `ruff format` leaves them.

Collections that fit on the line stay flat; the others are exploded one item per line with a
trailing comma (the "magic trailing comma" keeps them exploded under ruff and black). Strings use
double quotes unless that needs more escapes than single quotes (ruff's quote preference), and
every character that is not printable is escaped, so any string content yields valid source.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["identifier", "render_literal", "render_string", "slug"]

#: Line length assumed for the generated code: ruff's default, safe under any larger setting.
WIDTH = 88


def render_string(value: str) -> str:
    """A Python string literal for `value` (double quotes unless single quotes need fewer escapes)."""
    if value.isprintable() and "\\" not in value and '"' not in value:
        return '"' + value + '"'  # the common case: nothing to escape
    quote = "'" if value.count('"') > value.count("'") else '"'
    out: list[str] = [quote]
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == quote:
            out.append("\\" + quote)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch.isprintable() and not ("\ud800" <= ch <= "\udfff"):
            out.append(ch)
        else:
            code = ord(ch)
            if code < 0x100:
                out.append(f"\\x{code:02x}")
            elif code < 0x10000:
                out.append(f"\\u{code:04x}")
            else:
                out.append(f"\\U{code:08x}")
    out.append(quote)
    return "".join(out)


def _render_float(value: float) -> str:
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return "1e999" if value > 0 else "-1e999"  # literals that evaluate to infinity
    text = repr(value)
    return text.replace("e+", "e")  # ruff keeps the sign out of positive exponents


def _flat(value: Any) -> str:
    if value is None or value is True or value is False:
        return repr(value)
    if value is Ellipsis:
        return "..."
    if isinstance(value, str):
        return render_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_flat(k)}: {_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple):
        if len(value) == 1:
            return "(" + _flat(value[0]) + ",)"
        return "(" + ", ".join(_flat(v) for v in value) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as a Python literal")


def render_literal(
    value: Any, indent: int = 0, prefix_width: int = 0, suffix_width: int = 1
) -> str:
    """Python source for a JSON-like value (plus tuples and `...`), ready to paste at `indent`.

    Args:
        value: `None`, booleans, numbers, strings, mappings, lists, tuples and `Ellipsis`.
        indent: Column of the line the literal starts on (continuation lines are indented from it).
        prefix_width: Characters before the literal on its first line (after the indent), e.g. the
            length of `output=`.
        suffix_width: Characters after it on its last line (a trailing comma: 1).

    Returns:
        Source text; its first line carries no indentation, the others carry their own.

    Raises:
        TypeError: A value that has no literal form here (a set, an object).
    """
    flat = _flat(value)
    if (
        indent + prefix_width + len(flat) + suffix_width <= WIDTH and "\n" not in flat
    ) or not isinstance(value, Mapping | list | tuple):
        return flat
    if not value:
        return flat
    pad = " " * (indent + 4)
    lines: list[str] = []
    if isinstance(value, Mapping):
        opening, closing = "{", "}"
        for key, item in value.items():
            head = f"{_flat(key)}: "
            lines.append(pad + head + render_literal(item, indent + 4, len(head), 1) + ",")
    else:
        opening, closing = ("(", ")") if isinstance(value, tuple) else ("[", "]")
        lines.extend(pad + render_literal(item, indent + 4, 0, 1) + "," for item in value)
    return opening + "\n" + "\n".join(lines) + "\n" + " " * indent + closing


_NON_IDENT = re.compile(r"[^0-9A-Za-z_]+")
_NON_SLUG = re.compile(r"[^0-9a-z]+")


def identifier(text: str, default: str = "case") -> str:
    """A lowercase ASCII Python identifier made from any text (`crm.deal.create` → `crm_deal_create`)."""
    name = _NON_IDENT.sub("_", text).strip("_").lower()
    if not name:
        name = default
    if name[0].isdigit():
        name = "_" + name
    return name


def slug(text: str, max_length: int = 32) -> str:
    """A short lowercase `a-z0-9-` slug of any text (`"ACME Corp."` → `acme-corp`), maybe empty."""
    return _NON_SLUG.sub("-", text.lower()).strip("-")[:max_length].strip("-")
