"""The golden-test `*_sync` conveniences run where an event loop already runs (Jupyter)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from testing_app import build_registry, ctx, make_executor

from contractspec.core import ConfigurationError
from contractspec.testing import (
    GoldenTestGenerator,
    MemoryTrafficStore,
    Snapshot,
    TrafficRecorder,
    run_golden_tests,
    run_golden_tests_sync,
)

REF = "testing_app:build_registry"
QUOTE = {
    "customer_email": "ann@acme.io",
    "lines": [{"sku": "A", "quantity": 2, "unit_price": "5.00"}],
    "plan": "pro",
}


async def recorded() -> list[Snapshot]:
    """Two quotes recorded through a real executor (sample rate 1.0)."""
    store = MemoryTrafficStore()
    executor = make_executor(build_registry(), traffic=TrafficRecorder(store, sample_rate=1.0))
    for n, payload in enumerate([QUOTE, {**QUOTE, "plan": "free", "note": "n"}]):
        with contextlib.suppress(Exception):
            await executor.execute("billing.invoice.quote", payload, ctx(f"t{n}"))
    return store.snapshots


async def test_write_sync_and_run_golden_tests_sync_work_inside_a_running_loop(
    tmp_path: Path,
) -> None:
    """Called from a coroutine (as a notebook cell is), both return what their async twins do."""
    asyncio.get_running_loop()  # a loop runs here, as in a Jupyter kernel
    snapshots = await recorded()
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    target = tmp_path / "test_quote.py"
    first = generator.write_sync(target, snapshots, "billing.invoice.quote")
    assert first.added == ["ok-redacted-1-example-com", "ok-redacted-1-example-com-2"]
    assert target.read_text() == first.source
    again = generator.write_sync(target, snapshots, "billing.invoice.quote")  # same loop thread
    assert (again.added, again.kept) == ([], first.added)
    report = run_golden_tests_sync(first.cases, REF, suite=first.suite)
    assert report.summary() == "2 passed, 0 failed"
    expected = await run_golden_tests(first.cases, REF, suite=first.suite)
    assert report.summary() == expected.summary()


def test_write_sync_still_works_from_plain_code(tmp_path: Path) -> None:
    """Without a running loop (a script) the sync conveniences behave the same."""
    snapshots = asyncio.run(recorded())
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    built = generator.write_sync(tmp_path / "test_quote.py", snapshots, "billing.invoice.quote")
    assert run_golden_tests_sync(built.cases, REF, suite=built.suite).ok


async def test_write_sync_refuses_to_wait_for_itself_on_its_own_loop(tmp_path: Path) -> None:
    """A coroutine on the generator's own sync loop gets a ConfigurationError, not a deadlock."""
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    generator.write_sync(tmp_path / "test_quote.py", [], "billing.invoice.quote")

    async def nested() -> None:
        generator.write_sync(tmp_path / "test_again.py", [], "billing.invoice.quote")

    assert generator._sync_runner is not None
    with pytest.raises(ConfigurationError, match="write_sync"):
        generator._sync_runner.run(nested())
