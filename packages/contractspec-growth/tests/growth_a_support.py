"""Helpers shared by part A's growth tests: a reference FNV-1a and GrowthBook's Python SDK."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def reference_fnv1a32(code_units: Sequence[int]) -> int:
    """FNV-1a 32-bit over explicit 16-bit code units (the textbook loop, no shortcuts)."""
    h = 2166136261
    for unit in code_units:
        h ^= unit
        h = (h * 16777619) % 2**32
    return h


def utf16_units(text: str) -> list[int]:
    """The UTF-16 code units of `text`, computed by hand from code points."""
    units: list[int] = []
    for ch in text:
        cp = ord(ch)
        if cp > 0xFFFF:
            cp -= 0x10000
            units += [0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)]
        else:
            units.append(cp)
    return units


def growthbook_run(
    attributes: dict[str, Any], experiment: dict[str, Any]
) -> tuple[int, bool, float | None]:
    """(variationId, inExperiment, bucket) from GrowthBook's own Python SDK."""
    from growthbook import Experiment, GrowthBook

    gb = GrowthBook(attributes=attributes)
    try:
        result = gb.run(Experiment(**experiment))
    finally:
        gb.destroy()
    return result.variationId, result.inExperiment, result.bucket
