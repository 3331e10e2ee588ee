"""Module-level tools for the process-isolation tests (a child process imports them by name)."""

from __future__ import annotations

import time
from pathlib import Path

from contractspec.agent import RiskLevel, tool


@tool(risk=RiskLevel.L1, timeout=2.0, isolation="process")
def slow_ship(marker: str, delay_s: float) -> str:
    """Ship after `delay_s` seconds: writes `marker` (a file path) once shipped."""
    time.sleep(delay_s)
    Path(marker).write_text("shipped")
    return "shipped"
