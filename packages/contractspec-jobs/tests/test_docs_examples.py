"""The Python examples of the jobs docs pages run and print what the pages claim."""

from __future__ import annotations

from pathlib import Path

import pytest

from contractspec.core.testing.docs import printed_by_python_blocks

DOCS = Path(__file__).resolve().parents[3] / "docs" / "jobs"


def run_page(name: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Execute every python block of a page in one namespace; return the printed lines."""
    monkeypatch.chdir(DOCS.parents[1])
    return printed_by_python_blocks(DOCS / f"{name}.md").splitlines()


def test_index_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overview's example runs one job to success."""
    assert run_page("index", monkeypatch) == ["succeeded {'sent_to': 'ada@example.com'}"]


def test_declaring_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Declaring: specs register, backoff delays double up to the cap, crons and triggers build."""
    assert run_page("declaring", monkeypatch) == [
        "['job'] {'base': 10.0, 'factor': 2.0, 'cap': 3600.0, 'jitter': 0.5}",
        "[2.0, 4.0, 8.0, 16.0, 30.0, 30.0]",
        "2000-01-01 02:00:00+00:00",
        "billing.invoice.overdue -> billing.invoice.remind",
    ]


def test_running_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Running: a retried job succeeds on SQLite, a command enqueues in its transaction, a
    schedule fires once."""
    assert run_page("running", monkeypatch) == [
        "succeeded 2 {'bytes': 16384} [1, 2] 1",
        "queued",
        "[('2024-01-01T10:00:00+00:00', True)]",
        "['schedule:media.thumbnail:2024-01-01T10:00:00+00:00']",
    ]


def test_deploying_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deploying: a worker started in a FastAPI lifespan runs a job enqueued by an endpoint."""
    pytest.importorskip("fastapi", reason="the recipe needs FastAPI (contractspec-core[http])")
    pytest.importorskip("httpx", reason="TestClient needs httpx")
    assert run_page("deploying", monkeypatch) == ["{'status': 'succeeded'} ['o-1']"]


def test_operating_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Operating: counts, dead letters with their errors, retry, purge, the review operations."""
    assert run_page("operating", monkeypatch) == [
        "{'succeeded': 2, 'dead': 2}",
        "crm.sync_account 2 PermissionError: token revoked",
        "crm.legacy_export 1 no handler is registered for job type 'c",
        "True queued",
        "2",
        "[('crm.sync_account', 'PermissionError: token revoked')] None",
        "queued",
        "['cs_job_schedules', 'cs_jobs']",
    ]
