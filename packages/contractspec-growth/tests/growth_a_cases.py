"""GrowthBook's cross-SDK conformance cases (`../shared/data/growthbook/cases.json`), loaded once."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

CASES_PATH = (
    Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "growthbook" / "cases.json"
)


@cache
def _load() -> dict[str, Any]:
    with CASES_PATH.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def cases(section: str) -> list[Any]:
    """The cases of one section, or a skip when the shared data folder is absent."""
    if not CASES_PATH.exists():
        pytest.skip(f"GrowthBook cases not found at {CASES_PATH} (shared data folder absent)")
    return list(_load()[section])


def params(section: str, name_index: int | None = 0) -> list[Any]:
    """`pytest.param`s for a section, with ids from the case names (or positions)."""
    if not CASES_PATH.exists():
        return [pytest.param(None, marks=pytest.mark.skip(reason="shared/data is absent"))]
    out = []
    for i, case in enumerate(_load()[section]):
        case_id = f"{i}-{case[name_index]}" if name_index is not None else str(i)
        out.append(pytest.param(case, id=case_id))
    return out
