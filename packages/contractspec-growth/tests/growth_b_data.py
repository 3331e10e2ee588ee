"""Locate the shared real data sets used by the growth analytics tests (part B)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.growth.analytics import Transactions, load_cdnow

#: `shared/` sits beside the project root (see shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
CDNOW_PATH = SHARED_DATA / "cdnow" / "CDNOW_master.txt"


def cdnow_path() -> Path:
    """Return the CDNOW file, skipping the test with a reason when shared data is absent."""
    if not CDNOW_PATH.is_file():
        pytest.skip(f"shared data not present at {CDNOW_PATH} (see shared/data/README.md)")
    return CDNOW_PATH


_CACHE: dict[str, Transactions] = {}


def cdnow() -> Transactions:
    """Load CDNOW once per test session (the loader is covered by its own tests)."""
    if "tx" not in _CACHE:
        _CACHE["tx"] = load_cdnow(cdnow_path())
    return _CACHE["tx"]
