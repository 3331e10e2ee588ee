"""`--golden-update`: rewrite the expected outcome of changed cases in golden modules, in place.

Only the `output=`, `error=` and `events=` arguments of the `GoldenCase(...)` calls whose outcome
changed are replaced (located with `ast`, byte-exact); every other byte of the file stays as it was, and no
case is ever deleted. Files are replaced atomically.
"""

from __future__ import annotations

import ast
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contractspec.testing._literal import render_literal
from contractspec.testing.errors import GoldenUpdateError

__all__ = ["apply_updates", "decode_updates", "encode_updates"]

_ELLIPSIS = {"__golden_ellipsis__": True}

#: `{file: {case id: {"output": value, "error": value}}}`
Updates = dict[str, dict[str, dict[str, Any]]]


def _encode(value: Any) -> Any:
    if value is Ellipsis:
        return _ELLIPSIS
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if value == _ELLIPSIS:
        return ...
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def encode_updates(updates: Updates) -> str:
    """JSON text of pending updates (sent from pytest-xdist workers to the controller)."""
    return json.dumps(_encode(updates))


def decode_updates(text: str) -> Updates:
    """Inverse of `encode_updates`."""
    decoded: Updates = _decode(json.loads(text))
    return decoded


def _line_offsets(data: bytes) -> list[int]:
    offsets = [0]
    for index, byte in enumerate(data):
        if byte == 0x0A:
            offsets.append(index + 1)
    return offsets


def apply_updates(
    path: str | os.PathLike[str], cases: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Rewrite `output=`/`error=`/`events=` of the named cases in one golden module.

    Args:
        path: The module.
        cases: `{case id: {"output": new value, "error": new value, "events": new value}}`.

    Returns:
        Ids of the cases whose source changed, in file order.

    Raises:
        GoldenUpdateError: The file cannot be parsed, a case id is missing or duplicated, or a
            case lacks an `output=`/`error=` argument to rewrite.
    """
    target = Path(path)
    data = target.read_bytes()
    try:
        tree = ast.parse(data)
    except SyntaxError as exc:
        raise GoldenUpdateError(f"{target}: cannot update, not valid Python ({exc.msg})") from None
    found: dict[str, ast.Call] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
        if name != "GoldenCase":
            continue
        for kw in node.keywords:
            if kw.arg == "id" and isinstance(kw.value, ast.Constant):
                case_id = str(kw.value.value)
                if case_id in found and case_id in cases:
                    raise GoldenUpdateError(
                        f"{target}: case id {case_id!r} appears twice; give each case a unique id"
                    )
                found[case_id] = node
    missing = sorted(set(cases) - set(found))
    if missing:
        raise GoldenUpdateError(
            f"{target}: no GoldenCase with id {', '.join(map(repr, missing))}; the update was "
            "not applied to it (was the case renamed while the tests ran?)"
        )
    offsets = _line_offsets(data)
    edits: list[tuple[int, int, bytes, str]] = []
    for case_id, values in cases.items():
        call = found[case_id]
        kws = {kw.arg: kw for kw in call.keywords if kw.arg}
        for name in ("output", "error", "events"):
            if name not in values:
                continue
            arg = kws.get(name)
            if arg is None:
                raise GoldenUpdateError(
                    f"{target}: case {case_id!r} has no {name}= argument; add {name}=None to let "
                    "--golden-update rewrite it"
                )
            node = arg.value
            try:
                current = ast.literal_eval(node)
            except ValueError:
                current = object()
            new = values[name]
            if current == new and type(current) is type(new):
                continue
            if node.end_lineno is None or node.end_col_offset is None:  # pragma: no cover
                continue
            start = offsets[node.lineno - 1] + node.col_offset
            end = offsets[node.end_lineno - 1] + node.end_col_offset
            line_start = offsets[arg.lineno - 1]
            indent = len(data[line_start:]) - len(data[line_start:].lstrip(b" "))
            text = render_literal(new, indent, len(name) + 1, 1)
            edits.append((start, end, text.encode("utf-8"), case_id))
    if not edits:
        return []
    edits.sort()
    out = bytearray()
    cursor = 0
    for start, end, chunk, _ in edits:
        out += data[cursor:start] + chunk
        cursor = end
    out += data[cursor:]
    tmp = target.with_name(f".{target.name}.golden-update.tmp")
    tmp.write_bytes(bytes(out))
    os.replace(tmp, target)
    return list(dict.fromkeys(case_id for *_, case_id in edits))
