"""The Python examples of the growth docs pages (part A) run, and print what the pages claim."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from contractspec.core.testing.docs import printed_by_python_blocks
from contractspec.growth import ExperimentRegistry, ExperimentRunner, define_experiment

DOCS = Path(__file__).resolve().parents[3] / "docs" / "growth"


def _run_page(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Execute every python block of a page in one namespace, from the project root; return stdout."""
    monkeypatch.chdir(DOCS.parents[1])
    return printed_by_python_blocks(DOCS / f"{name}.md")


def test_index_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overview's thirty-second example assigns a pro user."""
    lines = _run_page("index", monkeypatch).splitlines()
    assert len(lines) == 1
    assert lines[0].split()[1:] in (["True", "assigned"], ["False", "not_covered"])


def test_experiments_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The experiments page: coverage raise keeps everyone, tracking summarises 300 conversions."""
    output = _run_page("experiments", monkeypatch)
    assert "True {" in output  # raising coverage kept every subject's variation
    trial = define_experiment(
        "pricing.trial-length", ["7-days", "14-days"], namespace=("pricing", 0.5, 1.0)
    )
    runner = ExperimentRunner(ExperimentRegistry(trial))
    exposed = [runner.assign(trial, f"user-{i}").in_experiment for i in range(1000)]
    assert f"new exposures: {sum(exposed)}" in output
    signups = {
        parts[0]: parts[1:]
        for parts in (line.split() for line in output.splitlines())
        if parts[0] in ("7-days", "14-days")
    }
    assert sum(int(n) for n, _, _ in signups.values()) == sum(exposed)
    assert sum(float(s) for _, s, _ in signups.values()) == sum(exposed[:300])


def test_flags_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags page: acme is a design partner, the beta segment is on, OpenFeature agrees."""
    lines = _run_page("flags", monkeypatch).splitlines()
    assert lines[0] == "True force design-partners"
    assert lines[1].startswith("True ")
    assert lines[2] == "True TARGETING_MATCH design-partners"


def test_rollouts_page_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rollouts page: the buggy version 2 is rolled back by the default sequential guardrail
    at the first stage, and the page shows exactly what the example prints."""
    page = (DOCS / "rollouts.md").read_text()
    # The guardrails also compare latencies, measured with time.perf_counter: on a loaded machine
    # a few slow candidate calls can win the race to significance ("mean latency of version 2 is
    # higher"), and the printed reason then differs from the page's. Every call takes exactly
    # 1 ms here, so only the error rate can differ and the output is the page's, to the digit.
    ticks = itertools.count()

    def one_ms_per_call() -> float:
        return next(ticks) * 0.001  # read twice per call: at its start and in its report

    for module in ("contractspec.core.executor", "contractspec.core.pipeline.report"):
        monkeypatch.setattr(f"{module}.perf_counter", one_ms_per_call)
    lines = _run_page("rollouts", monkeypatch).splitlines()
    assert lines[0] == "rolled_back 0.0"
    assert lines[1].startswith("sequential test: error rate of version 2 is higher than version 1")
    assert lines[1].endswith("at stage 1 (1%)")
    assert lines[2] == "['started', 'rolled_back']"
    assert "```text\n" + "\n".join(lines[:3]) + "\n```" in page
