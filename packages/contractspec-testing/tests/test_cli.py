"""The contractspec-test command line: generate from a store, list operations, explain errors."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from testing_app import build_registry, ctx, make_executor
from typer.testing import CliRunner

from contractspec.testing import JsonlTrafficStore, TrafficRecorder
from contractspec.testing.cli import app

QUOTE = {
    "customer_email": "ann@acme.io",
    "lines": [{"sku": "A", "quantity": 2, "unit_price": "5.00"}],
    "plan": "pro",
}


def record(path: Path) -> None:
    """Record three quotes (two equivalent) and one failed lookup into a JSONL store."""

    async def run() -> None:
        recorder = TrafficRecorder(JsonlTrafficStore(path), sample_rate=1.0)
        executor = make_executor(build_registry(), traffic=recorder)
        await executor.execute("billing.invoice.quote", QUOTE, ctx("a"))
        await executor.execute("billing.invoice.quote", QUOTE, ctx("b"))
        await executor.execute("billing.invoice.quote", {**QUOTE, "plan": "free"}, ctx("c"))
        with contextlib.suppress(LookupError):
            await executor.execute("billing.customer.get", {"id": "x"}, ctx("d"))
        await recorder.aclose()

    asyncio.run(run())


def test_generate_writes_a_module_into_a_directory(tmp_path: Path) -> None:
    """generate reads the store, writes test_<operation>.py and reports what it did."""
    traffic = tmp_path / "traffic.jsonl"
    record(traffic)
    out = tmp_path / "golden"
    out.mkdir()
    args = [
        "generate", "--registry", "testing_app:build_registry", "--operation",
        "billing.invoice.quote", "--output", str(out), "--store", f"jsonl:{traffic}",
        "--days", "100000", "--sample-rate", "1.0",
    ]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    module = out / "test_billing_invoice_quote.py"
    assert result.output == (
        f"{module}: 2 case(s) added, 0 kept, 0 left out, from 3 snapshot(s) of "
        "billing.invoice.quote@1\n"
    )
    assert 'id="ok-redacted-1-example-com",' in module.read_text()
    again = CliRunner().invoke(app, args)
    assert again.output.startswith(f"{module}: 0 case(s) added, 2 kept")


def test_recent_window_and_sample_rate_filter_snapshots(tmp_path: Path) -> None:
    """--days counts back from now (the fake clock recorded 2024), --sample-rate 0 keeps errors only."""
    traffic = tmp_path / "traffic.jsonl"
    record(traffic)
    base = ["generate", "--registry", "testing_app:build_registry", "--store", str(traffic)]
    recent = CliRunner().invoke(
        app, [*base, "--operation", "billing.invoice.quote", "--output", str(tmp_path / "a.py")]
    )
    assert recent.exit_code == 2
    assert "no snapshot of billing.invoice.quote@1" in recent.output
    assert "from the last 7 day(s)" in recent.output
    assert not (tmp_path / "a.py").exists()
    errors_only = CliRunner().invoke(
        app,
        [*base, "--operation", "billing.customer.get", "--output", str(tmp_path / "b.py"),
         "--days", "100000", "--sample-rate", "0"],
    )  # fmt: skip
    assert "1 case(s) added" in errors_only.output
    assert "from 1 snapshot(s)" in errors_only.output


def test_operations_lists_counts(tmp_path: Path) -> None:
    """operations prints name@version and the number of snapshots."""
    traffic = tmp_path / "traffic.jsonl"
    record(traffic)
    result = CliRunner().invoke(app, ["operations", "--store", f"jsonl:{traffic}"])
    assert result.exit_code == 0
    assert result.output == "billing.customer.get@1  1\nbilling.invoice.quote@1  3\n"


def test_errors_are_explained_with_exit_code_2(tmp_path: Path) -> None:
    """A bad store URL or registry reference exits 2 with the fix in the message."""
    result = CliRunner().invoke(app, ["operations", "--store", "ftp://x"])
    assert result.exit_code == 2
    assert "unknown traffic store URL 'ftp://x'" in result.output
    bad = CliRunner().invoke(
        app,
        ["generate", "--registry", "nope", "--operation", "a.b", "--output", str(tmp_path),
         "--store", "memory:"],
    )  # fmt: skip
    assert bad.exit_code == 2
    assert "registry must be MODULE:OBJECT" in bad.output
    missing = CliRunner().invoke(app, ["operations", "--store", f"sqlite:///{tmp_path / 'x.db'}"])
    assert missing.exit_code == 2
    assert f"does not exist (no file at {tmp_path / 'x.db'})" in missing.output
    assert not (tmp_path / "x.db").exists()  # reading never creates a database file
    (tmp_path / "empty.db").touch()
    empty = CliRunner().invoke(app, ["operations", "--store", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert empty.exit_code == 2
    assert "cannot read the cs_traffic table (OperationalError: no such table: cs_traffic)" in (
        empty.output
    )
