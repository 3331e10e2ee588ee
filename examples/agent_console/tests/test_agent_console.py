"""The agent console on a SQLite file: tools, runs, history, logs, approvals, metrics, events."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_console import ops
from agent_console.__main__ import main
from agent_console.console import open_console

from contractspec.agent import RunResult, RunStatus
from contractspec.agent.testing import block_model_requests

block_model_requests()


@pytest.fixture(autouse=True)
def services() -> Iterator[None]:
    """Each test starts from the same service state."""
    saved = copy.deepcopy(ops.SERVICES)
    yield
    ops.SERVICES.clear()
    ops.SERVICES.update(saved)


async def test_console_runs_agents_and_reports_on_them(tmp_path: Path) -> None:
    """Completed, blocked, waiting and failed runs show up in history, metrics and events."""
    db = tmp_path / "console.db"
    async with open_console(db) as console:
        assert [(t["agent"], t["tool"], t["risk"]) for t in console.tools()] == [
            ("ops.assistant@1", "service_status", "L0"),
            ("ops.assistant@1", "restart_service", "L1"),
            ("ops.assistant@1", "scale_service", "L1"),
            ("ops.reporter@1", "service_status", "L0"),
        ]
        restart = await console.run("ops.assistant", "restart worker")
        assert isinstance(restart, RunResult)
        assert restart.output == 'Done: "worker restarted"'
        blocked = await console.run("ops.assistant", "restart database")
        assert isinstance(blocked, RunResult)
        assert blocked.output.startswith("I did not do it: invariant failed: not_the_database")
        scale = await console.run("ops.assistant", "scale api to 6")
        assert isinstance(scale, RunResult)
        assert scale.status is RunStatus.WAITING_APPROVAL
        failed = await console.run("ops.assistant", "loop forever")
        assert isinstance(failed, str)
        assert failed.startswith("UsageLimitExceeded")
        metrics = await console.metrics()
        assert (metrics.runs, metrics.by_status, metrics.pending_approvals) == (
            4, {"completed": 2, "failed": 1, "waiting_approval": 1}, 1,
        )  # fmt: skip
        assert metrics.tool_calls == 6  # restart 1, blocked 1, four status calls; pending ones wait
        logs = await console.logs(restart.run_id)
        assert [line.event for line in logs] == ["run.started", "tool.ok", "run.completed"]
        names = [e["name"] for e in await console.events(limit=100)]
        assert names[:3] == ["agent.run.started", "agent.tool.called", "agent.run.completed"]
        assert names.count("agent.run.failed") == 1
        assert names.count("approval.requested") == 1
        (pending,) = await console.pending()
        assert (pending.action, dict(pending.arguments)) == (
            "scale_service",
            {"service": "api", "replicas": 6},
        )
        approved = await console.approve(pending.id, "u-sre")
        assert approved.status.value == "approved"
    async with open_console(db) as reopened:  # a later process picks the run up
        (resumed,) = await reopened.resume_ready()
        assert (resumed.status, resumed.output) == (
            RunStatus.COMPLETED,
            'Done: "api now has 6 replicas"',
        )
        assert ops.SERVICES["api"]["replicas"] == 6
        assert next(r.status for r in await reopened.history()) is RunStatus.FAILED


def test_cli_demo_and_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI runs the demo and prints the metrics table."""
    db = str(tmp_path / "cli.db")
    main(["--db", db, "demo"])
    main(["--db", db, "metrics"])
    printed = capsys.readouterr().out
    assert "waiting for approval(s):" in printed
    assert "failed UsageLimitExceeded" in printed
    assert "metrics" in printed
