"""Issue 20: a killed orchestrator's task tree is resumed exactly once by another process
(real processes, `os._exit`, a SQLite file and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from contractspec.core.testing import postgres_dsn, temporary_sql_engine

APP = Path(__file__).with_name("orchestration_crash_app.py")


def run_app(kind: str, target: str, mode: str, effects: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, str(APP), kind, target, mode, str(effects)],
        capture_output=True, text=True, env=env, cwd=APP.parent, timeout=180, check=False,
    )  # fmt: skip


@pytest.fixture
async def target(sql_kind: str, tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    """Where both processes meet: a SQLite file, or a fresh PostgreSQL schema."""
    if sql_kind == "sqlite":
        yield "sqlite", str(tmp_path / "tree.db")
        return
    from sqlalchemy import text

    async with temporary_sql_engine("postgres", tmp_path) as engine:
        async with engine.connect() as conn:
            schema = (await conn.execute(text("SELECT current_schema()"))).scalar_one()
        yield "postgres", f"{postgres_dsn()}|{schema}"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["crash-in-tool", "crash-before-finish"])
async def test_a_killed_orchestrator_s_tree_is_resumed_once_by_another_process(
    target: tuple[str, str], where: str, tmp_path: Path
) -> None:
    """Orchestrator 1 runs a -> b -> c and dies (`os._exit`) inside b's tool right after its
    effect, or while writing b's completion after b's run finished; orchestrator 2 (a new
    process) takes b over once its lease expired and finishes the tree: each task's effect
    happened exactly once, each task completed once (one task.completed per task in the
    outbox) and was handed off once (one task.assigned per sub-task)."""
    kind, where_db = target
    effects = tmp_path / "effects.txt"
    died = await asyncio.to_thread(run_app, kind, where_db, where, effects)
    assert died.returncode == (3 if where == "crash-in-tool" else 4), died.stderr[-3000:]
    assert sorted(line.split()[0] for line in effects.read_text().splitlines()) == ["a", "b"]
    resumed = await asyncio.to_thread(run_app, kind, where_db, "resume", effects)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out: dict[str, Any] = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["root_done"] is True, out
    assert out["statuses"] == dict.fromkeys(["do a, then b, then c", "a", "b", "c"], "completed")
    assert out["effects"] == ["a", "b", "c"]
    assert out["completed_events"] == [1, 1, 1, 1]
    assert out["assigned_events"] == [1, 1, 1]
    assert out["attempts"] == {"a": 1, "b": 1, "c": 1}
    assert out["runs"] == {"a": "completed", "b": "completed", "c": "completed"}
