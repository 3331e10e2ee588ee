"""The CRM golden suites come from its recorded traffic, and catch a changed handler."""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import crm_pipeline.handlers
import crm_pipeline.models
import pytest
from crm_golden.generate import GOLDEN_DIR, REGISTRY_REF, generate, record
from crm_golden.worlds import WORLDS, world_for
from crm_pipeline.main import data_file

from contractspec.testing import MemoryTrafficStore, run_golden_tests

pytestmark = pytest.mark.skipif(
    not data_file().is_file(), reason=f"CDNOW data not found at {data_file()}"
)


def load(path: Path) -> ModuleType:
    """Import a golden module from its file."""
    spec = importlib.util.spec_from_file_location(f"golden_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def content(module: ModuleType) -> tuple[Any, list[tuple[Any, ...]]]:
    """A module's suite and cases, events included, without provenance (new ids per recording)."""
    return module.SUITE, [
        (c.id, c.input, c.output, c.error, c.org_id, c.events) for c in module.CASES
    ]


async def test_committed_suites_are_what_recorded_traffic_generates(tmp_path: Path) -> None:
    """Recording the import and session again regenerates every committed suite, case for case."""
    store = MemoryTrafficStore()
    stats = await record(store)
    assert stats.seen == stats.stored == 1003
    results = await generate(store, tmp_path)
    assert [r.suite.operation for r in results] == list(WORLDS)
    for operation in WORLDS:
        name = f"test_{operation.replace('.', '_')}.py"
        assert content(load(tmp_path / name)) == content(load(GOLDEN_DIR / name))
    stored = " ".join(str(s.to_dict()) for s in store.snapshots)
    assert "ann.lee@example.org" not in stored
    assert "redacted-1@example.com" in stored


async def test_a_changed_handler_fails_the_suite_with_a_readable_diff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rendering empty stage values as "0" instead of "0.00" fails the summary case with the paths."""
    module = load(GOLDEN_DIR / "test_crm_report_summary.py")
    suite = module.SUITE
    factory = world_for(suite.operation)
    report = await run_golden_tests(
        module.CASES, REGISTRY_REF, suite=suite, executor_factory=factory
    )
    assert report.ok
    monkeypatch.setattr(crm_pipeline.handlers, "ZERO", Decimal("0"))
    report = await run_golden_tests(
        module.CASES, REGISTRY_REF, suite=suite, executor_factory=factory
    )
    assert not report.ok
    assert report.summary() == (
        "0 passed, 1 failed\n"
        "golden case crm.report.summary@1 'ok-top-5': 3 differences\n"
        '  output.stages[2].value: expected "0.00", got "0"\n'
        '  output.stages[3].value: expected "0.00", got "0"\n'
        '  output.stages[5].value: expected "0.00", got "0"'
    )


async def test_a_changed_event_payload_fails_the_deal_suite(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`deal.created` emitted with another stage (same output) fails the deal.create suite."""
    module = load(GOLDEN_DIR / "test_crm_deal_create.py")
    suite = module.SUITE
    factory = world_for(suite.operation)
    report = await run_golden_tests(
        module.CASES, REGISTRY_REF, suite=suite, executor_factory=factory
    )
    assert report.ok, report.summary()
    real = crm_pipeline.models.DealCreated

    def changed(**fields: Any) -> Any:
        return real(**{**fields, "stage": "won"})

    monkeypatch.setattr(crm_pipeline.handlers, "DealCreated", changed)
    report = await run_golden_tests(
        module.CASES, REGISTRY_REF, suite=suite, executor_factory=factory
    )
    assert report.summary() == (
        "1 passed, 1 failed\n"
        "golden case crm.deal.create@1 'ok-cdnow-00001': 1 difference\n"
        '  events[0].payload.stage: expected "lead", got "won"'
    )
