"""`spec diff` of two IRs with 500 operations each (goal: under one second).

Builds a registry of 500 operations (commands and queries with nested models, enums, decimals,
constraints) plus 100 events, exports its IR, then a second IR in which 50 operations changed in
ways that exercise the rules (field removed, enum value removed, max length decreased, type
generalized, auth loosened), 10 were removed and 10 added. Times `diff_ir` on the two documents
loaded from JSON text (the CLI's path) and, for scale, the same comparison done by a naive
`json.dumps` equality of each spec (the cheapest possible "did anything change" check, which
classifies nothing). Prints medians of 7 runs.

Run: `uv run --all-packages --all-extras python benchmarks/spec_diff.py`
"""

from __future__ import annotations

import json
import statistics
import time
from decimal import Decimal
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, Field

from contractspec.core import (
    SpecRegistry,
    authenticated,
    define_command,
    define_event,
    define_query,
    requires,
)
from contractspec.core.diff import diff_ir
from contractspec.core.ir import dumps_ir

OPERATIONS = 500
RUNS = 7


class Line(BaseModel):
    sku: Annotated[str, Field(max_length=32)]
    quantity: Annotated[int, Field(ge=1, le=1000)]
    price: Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2)]


def build(changed: bool) -> SpecRegistry:
    registry = SpecRegistry()
    for i in range(OPERATIONS):
        touched = changed and i % 10 == 0
        if changed and i % 50 == 1:
            continue  # 10 removed
        fields: dict[str, Any] = {
            "id": (Annotated[str, Field(max_length=20 if touched else 64)], ...),
            "status": (
                Literal["open", "won"] if touched else Literal["open", "won", "lost"],
                "open",
            ),
            "lines": (list[Line], []),
            "note": (str | None, None),
        }
        if not touched:
            fields["legacy"] = (int, 0)
        inp = pydantic.create_model(f"In{i}", **fields)
        out = pydantic.create_model(
            f"Out{i}",
            id=(str, ...),
            total=((float if touched else int), ...),
            lines=(list[Line], ...),
        )
        auth = authenticated() if touched else requires(f"perm.{i % 7}")
        name = f"dom{i % 5}.thing{i}.{'get' if i % 3 == 0 else 'save'}"
        define = define_query if i % 3 == 0 else define_command
        registry.register(define(name, input=inp, output=out, auth=auth))
    for i in range(10 if changed else 0):
        inp = pydantic.create_model(f"New{i}", id=(str, ...))
        registry.register(define_command(f"dom9.added{i}.save", input=inp, output=inp))
    for i in range(100):
        payload = pydantic.create_model(f"Ev{i}", id=(str, ...), amount=(Decimal, ...))
        registry.register(define_event(f"dom{i % 5}.ev{i}.happened", payload=payload))
    return registry


def median_seconds(fn: Any) -> float:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    old_text = dumps_ir(build(changed=False).to_ir())
    new_text = dumps_ir(build(changed=True).to_ir())
    result = diff_ir(old_text, new_text)

    def ours() -> None:
        diff_ir(old_text, new_text)

    def naive() -> None:
        old, new = json.loads(old_text), json.loads(new_text)
        index = {
            (s["name"], s["version"]): json.dumps(s, sort_keys=True)
            for s in old["specs"]["operation"]
        }
        sum(
            index.get((s["name"], s["version"])) != json.dumps(s, sort_keys=True)
            for s in new["specs"]["operation"]
        )

    ours_s = median_seconds(ours)
    naive_s = median_seconds(naive)
    print(
        f"IRs: {len(old_text) / 1e6:.1f} MB and {len(new_text) / 1e6:.1f} MB, {OPERATIONS} operations each"
    )
    print(f"changes found: {len(result)} ({result.summary()})")
    print(
        f"  diff_ir (load + classify) : {ours_s * 1000:8.1f} ms (median of {RUNS}; goal < 1000 ms)"
    )
    print(f"  naive JSON equality       : {naive_s * 1000:8.1f} ms (classifies nothing)")
    print(f"  ratio diff_ir / naive     : {ours_s / naive_s:8.2f}x")


if __name__ == "__main__":
    main()
