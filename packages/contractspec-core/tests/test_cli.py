"""The `contractspec` CLI: spec export / check / diff and generate [--check]."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from core_regen_app import build_notes_registry
from typer.testing import CliRunner

from contractspec.core.cli import app
from contractspec.core.ir import dumps_ir

TARGET = "core_regen_app:build_notes_registry"
CHANGED = "core_regen_specs:crm_like"


@pytest.fixture
def runner() -> CliRunner:
    """A Typer test runner."""
    return CliRunner()


def test_export_writes_the_canonical_lock(runner: CliRunner, tmp_path: Path) -> None:
    """`spec export -o FILE` writes exactly `dumps_ir(registry.to_ir())`."""
    lock = tmp_path / "contractspec.lock.json"
    result = runner.invoke(app, ["spec", "export", TARGET, "-o", str(lock)])
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {lock} (8 specs)\n"
    assert lock.read_text(encoding="utf-8") == dumps_ir(build_notes_registry().to_ir())
    stdout = runner.invoke(app, ["spec", "export", TARGET, "-o", "-"])
    assert stdout.output == lock.read_text(encoding="utf-8")


def test_check_passes_then_fails_when_the_code_changes(runner: CliRunner, tmp_path: Path) -> None:
    """`spec check` exits 0 on an up-to-date lock and 1 with the diff when the spec changed."""
    lock = tmp_path / "lock.json"
    runner.invoke(app, ["spec", "export", TARGET, "-o", str(lock)])
    ok = runner.invoke(app, ["spec", "check", TARGET, "--lock", str(lock)])
    assert (ok.exit_code, ok.output) == (0, f"{lock} is up to date\n")
    stale = runner.invoke(app, ["spec", "check", CHANGED, "--lock", str(lock)])
    assert stale.exit_code == 1
    assert stale.output.startswith(f"{lock} is stale; the code changed the spec:\n")
    assert "operation-removed-without-deprecation" in stale.output
    assert stale.output.endswith(f"update it with: contractspec spec export {CHANGED} -o {lock}\n")
    missing = runner.invoke(app, ["spec", "check", TARGET, "--lock", str(tmp_path / "no.json")])
    assert missing.exit_code == 1
    assert "does not exist; create it with: contractspec spec export" in missing.output


def test_diff_formats_and_fail_on(runner: CliRunner, tmp_path: Path) -> None:
    """`spec diff` prints text, json or markdown and exits 1 only at the --fail-on threshold."""
    old = tmp_path / "old.json"
    runner.invoke(app, ["spec", "export", "core_regen_specs:crm_like", "-o", str(old)])
    new = tmp_path / "new.json"
    from core_regen_specs import crm_like

    new.write_text(dumps_ir(crm_like(errors=["conflict", "not_found"]).to_ir()), encoding="utf-8")
    text = runner.invoke(app, ["spec", "diff", str(old), str(new)])
    assert text.exit_code == 0
    assert text.output == (
        "WARNING   error-code-added  operation crm.deal.create@1 errors: may now return error "
        "'not_found'\n0 breaking, 1 warning, 0 info\n"
    )
    strict = runner.invoke(app, ["spec", "diff", str(old), str(new), "--fail-on", "warning"])
    assert strict.exit_code == 1
    as_json = runner.invoke(app, ["spec", "diff", str(old), str(new), "--format", "json"])
    assert json.loads(as_json.output)["summary"] == {"breaking": 0, "info": 0, "warning": 1}
    markdown = runner.invoke(app, ["spec", "diff", str(old), str(new), "-f", "markdown"])
    assert markdown.output.splitlines()[0] == "| Severity | Rule | Where | Change |"
    breaking = runner.invoke(app, ["spec", "diff", str(old), TARGET])
    assert breaking.exit_code == 1
    assert breaking.output.splitlines()[-1] == "4 breaking, 0 warning, 8 info"


def test_diff_reports_bad_input_with_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    """An unreadable IR or an unknown module is an error message and exit code 2."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}', encoding="utf-8")
    result = runner.invoke(app, ["spec", "diff", str(bad), TARGET])
    assert result.exit_code == 2
    assert "error: " in result.output
    assert "format: expected 'contractspec.ir', got 'other'" in result.output
    missing = runner.invoke(app, ["spec", "export", "no_such_module_xyz:registry"])
    assert missing.exit_code == 2
    assert "cannot import 'no_such_module_xyz'" in missing.output


def test_generate_and_check(runner: CliRunner, tmp_path: Path) -> None:
    """`generate` writes the package; `generate --check` exits 0, then 1 after an edit."""
    out = tmp_path / "gen"
    result = runner.invoke(app, ["generate", TARGET, "--out", str(out), "--title", "Notes API"])
    assert (result.exit_code, result.output) == (0, f"{out}: 14 written, 0 unchanged, 0 removed\n")
    check = runner.invoke(
        app, ["generate", TARGET, "--out", str(out), "--title", "Notes API", "--check"]
    )
    assert (check.exit_code, check.output) == (0, f"{out} is up to date\n")
    (out / "models.py").write_text("# hand edit\n", encoding="utf-8")
    stale = runner.invoke(
        app, ["generate", TARGET, "--out", str(out), "--title", "Notes API", "--check"]
    )
    assert stale.exit_code == 1
    assert stale.output.splitlines()[0] == f"changed  {out / 'models.py'}"


def test_generate_from_a_lock_file(runner: CliRunner, tmp_path: Path) -> None:
    """`generate` also accepts a lock file, with the same output as from the registry."""
    lock = tmp_path / "lock.json"
    runner.invoke(app, ["spec", "export", TARGET, "-o", str(lock)])
    runner.invoke(app, ["generate", TARGET, "--out", str(tmp_path / "a")])
    runner.invoke(app, ["generate", str(lock), "--out", str(tmp_path / "b")])
    a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert a == b
    assert all((tmp_path / "a" / p).read_bytes() == (tmp_path / "b" / p).read_bytes() for p in a)
