"""The pytest plugin end to end (in subprocesses): golden modules, --golden-update, xdist, fixtures."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from testing_app import build_registry, ctx, make_executor

from contractspec.testing import GoldenTestGenerator, MemoryTrafficStore, TrafficRecorder
from contractspec.testing.plugin import registry_from_ini

TESTS = Path(__file__).parent
REF = "testing_app:build_registry"
QUOTE = {
    "customer_email": "ann@acme.io",
    "lines": [{"sku": "A", "quantity": 2, "unit_price": "5.00"}],
    "plan": "pro",
}


def make_project(tmp_path: Path, *modules: str) -> Path:
    """A pytest project with golden modules for billing.invoice.quote named `modules`."""

    async def record() -> MemoryTrafficStore:
        store = MemoryTrafficStore()
        executor = make_executor(build_registry(), traffic=TrafficRecorder(store, sample_rate=1.0))
        await executor.execute("billing.invoice.quote", QUOTE, ctx("a"))
        await executor.execute("billing.invoice.quote", {**QUOTE, "plan": "free"}, ctx("b"))
        return store

    store = asyncio.run(record())
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    for name in modules:
        generator.write_sync(tmp_path / name, store.snapshots, "billing.invoice.quote")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
        "asyncio_default_test_loop_scope = function\n"
        "contractspec_registry = testing_app:build_registry\n"
    )
    return tmp_path


def run_pytest(
    project: Path, *args: str, discount: str | None = None, welcome: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run pytest on `project` in a subprocess (PRO discount or welcome text optionally changed)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(project)])}
    env.pop("TESTING_APP_PRO_DISCOUNT", None)
    env.pop("TESTING_APP_WELCOME_TEXT", None)
    if discount is not None:
        env["TESTING_APP_PRO_DISCOUNT"] = discount
    if welcome is not None:
        env["TESTING_APP_WELCOME_TEXT"] = welcome
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_golden_module_fails_with_a_diff_and_golden_update_rewrites_only_that(
    tmp_path: Path,
) -> None:
    """A generated module passes; a changed handler fails it with the changed paths;
    --golden-update rewrites exactly those values in place, after which it passes."""
    project = make_project(tmp_path, "test_quote.py")
    module = project / "test_quote.py"
    before = module.read_text()
    ok = run_pytest(project)
    assert ok.returncode == 0, ok.stdout
    assert "2 passed" in ok.stdout
    bad = run_pytest(project, discount="0.25")
    assert bad.returncode == 1
    assert "1 failed, 1 passed" in bad.stdout
    assert (
        "golden case 'ok-redacted-1-example-com' of billing.invoice.quote@1 changed:\n"
        '  output.total: expected "9.00", got "7.50"\n'
        '  output.discount: expected "1.00", got "2.50"\n'
        "  (intended? rerun with --golden-update to rewrite the expected outcome)"
    ) in bad.stdout
    updated = run_pytest(project, "--golden-update", discount="0.25")
    assert updated.returncode == 0, updated.stdout
    assert f"updated 1 case(s) in {module}: ok-redacted-1-example-com" in updated.stdout
    assert module.read_text() == before.replace('"total": "9.00"', '"total": "7.50"').replace(
        '"discount": "1.00"', '"discount": "2.50"'
    )
    again = run_pytest(project, discount="0.25")
    assert again.returncode == 0, again.stdout
    assert "2 passed" in again.stdout


def test_changed_event_payload_fails_the_module_and_golden_update_rewrites_events(
    tmp_path: Path,
) -> None:
    """Only the event payload changes: the golden test fails naming the event path, and
    --golden-update rewrites that `events=` value (the masked timestamp stays `...`)."""

    async def record() -> MemoryTrafficStore:
        store = MemoryTrafficStore()
        executor = make_executor(build_registry(), traffic=TrafficRecorder(store, sample_rate=1.0))
        await executor.execute(
            "billing.customer.welcome", {"customer_id": "c-1", "name": "Ada Lovelace"}, ctx("w")
        )
        return store

    project = make_project(tmp_path)
    module = project / "test_welcome.py"
    generator = GoldenTestGenerator(build_registry(), registry_ref=REF)
    generator.write_sync(module, asyncio.run(record()).snapshots, "billing.customer.welcome")
    before = module.read_text()
    assert '"sent_at": ...' in before
    assert run_pytest(project).returncode == 0
    bad = run_pytest(project, welcome="Hello {name}")
    assert bad.returncode == 1
    assert (
        '  events[0].payload.text: expected "Dear [redacted-1], welcome aboard", '
        'got "Hello [redacted-1]"'
    ) in bad.stdout
    updated = run_pytest(project, "--golden-update", welcome="Hello {name}")
    assert updated.returncode == 0, updated.stdout
    assert module.read_text() == before.replace(
        '"Dear [redacted-1], welcome aboard"', '"Hello [redacted-1]"'
    )


def test_golden_update_is_safe_under_xdist(tmp_path: Path) -> None:
    """With two xdist workers, every changed module is rewritten once, by the controller."""
    project = make_project(tmp_path, "test_quote_a.py", "test_quote_b.py")
    before = (project / "test_quote_a.py").read_text()
    run = run_pytest(project, "-p", "xdist", "-n", "2", "--golden-update", discount="0.30")
    assert run.returncode == 0, run.stdout
    assert "4 passed" in run.stdout
    expected = before.replace('"total": "9.00"', '"total": "7.00"').replace(
        '"discount": "1.00"', '"discount": "3.00"'
    )
    assert (project / "test_quote_a.py").read_text() == expected
    assert (project / "test_quote_b.py").read_text() == expected
    assert list(project.glob(".*.tmp")) == []


def test_executor_fixtures_record_traffic(tmp_path: Path) -> None:
    """contractspec_executor runs the registry from the ini option and records into contractspec_traffic."""
    project = make_project(tmp_path)
    (project / "test_fixtures.py").write_text(
        '''
from contractspec.core import Actor, CallContext


def test_quote(contractspec_executor, contractspec_traffic, contractspec_clock):
    """The executor fixture runs calls on memory ports and records each."""
    out = contractspec_executor.execute_sync(
        "billing.customer.create",
        {"name": "Ann", "email": "ann@acme.io"},
        CallContext(actor=Actor.user("u1"), org_id="o1"),
    )
    assert out.id == "id-000001"
    assert out.created_at == contractspec_clock.now()
    assert [s.input["email"] for s in contractspec_traffic.snapshots] == ["ann@acme.io"]
'''
    )
    run = run_pytest(project)
    assert run.returncode == 0, run.stdout
    assert "1 passed" in run.stdout


def test_registry_fixture_explains_itself_without_configuration() -> None:
    """Without the ini option, contractspec_registry fails with how to configure it."""
    with pytest.raises(
        pytest.fail.Exception, match=r"set contractspec_registry = 'myapp\.spec:registry'"
    ):
        registry_from_ini("")
    assert registry_from_ini(REF).get("billing.invoice.quote").ref == "billing.invoice.quote@1"
