"""Code generation: deterministic, lint- and type-clean, faithful to the spec, runnable alone."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from core_regen_app import CreateNote, build_notes_registry
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from contractspec.core.codegen import (
    GENERATED_MARK,
    Drift,
    check_generated,
    generate,
    openapi_document,
    render,
)
from contractspec.core.ir import ir_digest
from contractspec.core.testing.migrations import (
    downgrade_and_check,
    metadata_from_config,
    migrate_and_check,
    titled_block,
)

ROOT = Path(__file__).resolve().parents[3]
RUFF_RULES = "E,F,W,I,B,UP,SIM,RUF,ASYNC,C4,PIE,RET,TID,PERF"


@pytest.fixture
def ir() -> dict[str, Any]:
    """The IR of the notes app."""
    return build_notes_registry().to_ir()


@pytest.fixture(params=[False, True], ids=["executor", "plain"])
def plain(request: pytest.FixtureRequest) -> bool:
    """Both router variants: run on the executor (default) and executor-free (`--plain`)."""
    return bool(request.param)


@pytest.fixture
def package(ir: dict[str, Any], tmp_path: Path, plain: bool) -> Iterator[tuple[str, Path]]:
    """The generated code as an importable package with a unique name: (name, directory)."""
    name = f"notes_api_{uuid.uuid4().hex[:8]}"
    generate(ir, tmp_path / name, title="Notes API", plain=plain)
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, tmp_path / name
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def _import(package: tuple[str, Path], module: str) -> ModuleType:
    return importlib.import_module(f"{package[0]}.{module}")


def test_render_is_deterministic(ir: dict[str, Any], plain: bool) -> None:
    """Rendering the same spec twice (from two registries) gives identical files."""
    assert render(ir, plain=plain) == render(build_notes_registry().to_ir(), plain=plain)


def test_variants_differ_only_in_routers_and_app(ir: dict[str, Any]) -> None:
    """`plain=True` changes the routers and the app only: models, tables, OpenAPI and docs agree."""
    executor, plain = render(ir), render(ir, plain=True)
    assert executor.keys() == plain.keys()
    assert sorted(k for k in executor if executor[k] != plain[k]) == ["app.py", "router_notes.py"]
    assert (
        "from contractspec.core.fastapi import contractspec_router" in executor["router_notes.py"]
    )
    assert '"notes.note.create@1",  # POST /notes/note/create/v1' in executor["router_notes.py"]
    assert "contractspec" not in plain["router_notes.py"].split('"""', 2)[2]
    assert "class NotesHandlers(Protocol):" in plain["router_notes.py"]


def test_check_compares_with_the_chosen_variant(ir: dict[str, Any], tmp_path: Path) -> None:
    """A plain package is up to date for `plain=True` and stale (2 files) for the default."""
    generate(ir, tmp_path, plain=True)
    assert check_generated(ir, tmp_path, plain=True) == []
    assert check_generated(ir, tmp_path) == [
        Drift("app.py", "changed"),
        Drift("router_notes.py", "changed"),
    ]


def test_cli_generate_plain(tmp_path: Path) -> None:
    """`contractspec generate --plain` writes the plain variant and `--check --plain` accepts it."""
    from typer.testing import CliRunner

    from contractspec.core.cli import app

    target = "core_regen_app:build_notes_registry"
    runner = CliRunner()
    made = runner.invoke(app, ["generate", target, "--out", str(tmp_path), "--plain"])
    assert made.exit_code == 0, made.output
    assert check_generated(build_notes_registry().to_ir(), tmp_path, plain=True) == []
    ok = runner.invoke(app, ["generate", target, "--out", str(tmp_path), "--plain", "--check"])
    assert (ok.exit_code, ok.output) == (0, f"{tmp_path} is up to date\n")
    stale = runner.invoke(app, ["generate", target, "--out", str(tmp_path), "--check"])
    assert stale.exit_code == 1
    assert stale.output.splitlines()[:2] == [
        f"changed  {tmp_path / 'app.py'}",
        f"changed  {tmp_path / 'router_notes.py'}",
    ]


def test_generated_layout(ir: dict[str, Any]) -> None:
    """One router per domain, models, tables, app, OpenAPI and a Markdown page per spec."""
    assert list(render(ir)) == [
        "__init__.py",
        "app.py",
        "docs/events/notes.note.created.v1.md",
        "docs/index.md",
        "docs/notes/notes.debug.explode.v1.md",
        "docs/notes/notes.debug.whoami.v1.md",
        "docs/notes/notes.note.archive.v1.md",
        "docs/notes/notes.note.create.v1.md",
        "docs/notes/notes.note.get.v1.md",
        "docs/notes/notes.note.search.v1.md",
        "models.py",
        "openapi.json",
        "router_notes.py",
        "tables.py",
    ]


def test_headers_name_the_spec_version(ir: dict[str, Any]) -> None:
    """Every generated Python and Markdown file starts with the generated header and digest."""
    digest = ir_digest(ir)
    for path, text in render(ir).items():
        if path.endswith(".py"):
            first = text.splitlines()[0]
            assert first.startswith(f"# {GENERATED_MARK} from spec {digest} (IR version 1)")
        elif path.endswith(".md"):
            assert text.startswith(f"<!-- {GENERATED_MARK} from spec {digest}")
    assert json.loads(render(ir)["openapi.json"])["info"]["version"] == digest


def test_openapi_file_is_the_served_document(ir: dict[str, Any]) -> None:
    """`openapi.json` is exactly what the runtime adapter serves for the same title."""
    assert json.loads(render(ir, title="Notes API")["openapi.json"]) == openapi_document(
        ir, title="Notes API"
    )


def test_generated_models_validate_like_the_spec(package: tuple[str, Path]) -> None:
    """Generated input models accept and reject the same values as the spec's models."""
    models = _import(package, "models")
    good = {"id": "n-1", "title": "T", "budget": "12.50", "tags": ["a"], "priority": "high"}
    ours = models.CreateNote.model_validate(good)
    assert ours.model_dump(mode="json") == CreateNote.model_validate(good).model_dump(mode="json")
    assert ours.priority is models.Priority.HIGH
    for bad in (
        {**good, "title": ""},
        {**good, "budget": "1.234"},
        {**good, "budget": "-1"},
        {**good, "id": "UPPER"},
        {**good, "tags": ["x"] * 6},
        {**good, "priority": "urgent"},
    ):
        with pytest.raises(ValidationError):
            CreateNote.model_validate(bad)
        with pytest.raises(ValidationError):
            models.CreateNote.model_validate(bad)
    assert models.CreateNote.model_validate({"id": "x", "title": "t"}).budget == Decimal("0")


def test_generated_tables_match_the_runtime_schema(package: tuple[str, Path]) -> None:
    """The generated SQLAlchemy models emit the same DDL as the runtime's entity tables."""
    from sqlalchemy.dialects import postgresql, sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    from contractspec.core.sql import EntityTables

    tables = _import(package, "tables")
    generated = tables.Base.metadata.tables["notes_note"]
    runtime = EntityTables(build_notes_registry()).metadata.tables["notes_note"]
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        assert str(CreateTable(generated).compile(dialect=dialect)) == str(
            CreateTable(runtime).compile(dialect=dialect)
        )
        assert sorted(str(CreateIndex(i).compile(dialect=dialect)) for i in generated.indexes) == (
            sorted(str(CreateIndex(i).compile(dialect=dialect)) for i in runtime.indexes)
        )


@pytest.mark.parametrize("plain", [False], ids=["executor"])  # the variants share tables.py
async def test_generated_tables_autogenerate_upgrade_check_serve_and_downgrade(
    package: tuple[str, Path], sql_engine: AsyncEngine, tmp_path: Path
) -> None:
    """With the generated `alembic_render_item`, autogenerate writes the generated types with all
    their arguments and their import; the migration applies, has no diff, stores and reads a row."""
    from sqlalchemy.ext.asyncio import AsyncSession

    name, _ = package
    tables = _import(package, "tables")
    docs_env_py = titled_block(ROOT / "docs" / "core" / "sql.md", "migrations/env.py")
    core_hook = "from contractspec.core.sql import alembic_render_item  # ContractSpec\n"
    assert docs_env_py.count(core_hook) == 1
    env_py = metadata_from_config(
        docs_env_py.replace(core_hook, f"from {name}.tables import alembic_render_item\n"),
        "from myapp.db import target_metadata",
    )
    directory = tmp_path / "migrations"
    env = await migrate_and_check(sql_engine, directory, [tables.Base.metadata], env_py=env_py)
    (migration,) = (path.read_text() for path in directory.glob("versions/*.py"))
    assert f"import {name}.tables\n" in migration
    assert f"{name}.tables.DecimalType(max_digits=8, decimal_places=2)" in migration
    assert f"{name}.tables.EnumValue(integer=False, length=16)" in migration
    assert f"{name}.tables.JsonType()" in migration
    assert not re.search(r"(?<![\w.])(Text|JSONB)\(", migration)  # no unqualified type

    async with AsyncSession(sql_engine) as session:  # no create_all: the migration made it
        note = tables.NotesNote(
            org_id="o1", id="n-1", title="T", priority="high", budget=Decimal("12.50"),
            tags=["a", "b"], author_email=None,
        )  # fmt: skip
        session.add(note)
        await session.commit()
    async with AsyncSession(sql_engine) as session:
        found = await session.get(tables.NotesNote, ("o1", "n-1"))
        assert found is not None
        assert (found.budget, found.tags, found.priority) == (Decimal("12.50"), ["a", "b"], "high")

    await downgrade_and_check(env, sql_engine)


def test_check_reports_drift_and_generate_repairs_it(ir: dict[str, Any], tmp_path: Path) -> None:
    """`check_generated` lists missing, changed and stale files; `generate` fixes exactly those."""
    out = tmp_path / "gen"
    first = generate(ir, out)
    assert (len(first.written), first.unchanged, first.removed) == (14, (), ())
    assert check_generated(ir, out) == []
    (out / "models.py").write_text("# edited\n", encoding="utf-8")
    (out / "docs/index.md").unlink()
    (out / "router_old.py").write_text(f"# {GENERATED_MARK} from spec x\n", encoding="utf-8")
    (out / "handlers.py").write_text("# mine\n", encoding="utf-8")
    assert check_generated(ir, out) == [
        Drift("docs/index.md", "missing"),
        Drift("models.py", "changed"),
        Drift("router_old.py", "stale"),
    ]
    again = generate(ir, out)
    assert (again.written, again.removed) == (("docs/index.md", "models.py"), ("router_old.py",))
    assert len(again.unchanged) == 12
    assert check_generated(ir, out) == []
    assert (out / "handlers.py").read_text(encoding="utf-8") == "# mine\n"


def test_generate_refuses_a_file_as_output(ir: dict[str, Any], tmp_path: Path) -> None:
    """`--out` pointing at a file raises ConfigurationError naming it."""
    from contractspec.core import ConfigurationError

    target = tmp_path / "file.txt"
    target.write_text("x", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="is a file; give a directory"):
        generate(ir, target)


@pytest.mark.slow
def test_generated_code_passes_ruff_and_mypy_strict(package: tuple[str, Path]) -> None:
    """The generated package is clean under ruff (project rules) and mypy --strict (no plugin)."""
    name, directory = package
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    lint = subprocess.run(
        [ruff, "check", "--isolated", "--select", RUFF_RULES, "--ignore", "E501", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    config = directory.parent / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nwarn_unreachable = True\n", encoding="utf-8")
    types = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(config),
            "--no-incremental",
            "-p",
            name,
        ],
        capture_output=True,
        text=True,
        cwd=directory.parent,
        check=False,
    )
    assert types.returncode == 0, types.stdout + types.stderr


_APP_SCRIPT = """
import importlib.util
from decimal import Decimal

assert importlib.util.find_spec("contractspec") is None, "ContractSpec must not be installed"

from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from notes_api.app import create_app
from notes_api.models import CreateNote, Echo, Empty, Note, NoteList, NoteRef, SearchNotes
from notes_api.tables import Base, NotesNote

engine = create_engine(
    "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
)
Base.metadata.create_all(engine)


class Handlers:
    async def notes_note_create_v1(self, body: CreateNote, request: Request) -> Note:
        with Session(engine) as session:
            session.add(NotesNote(org_id="o1", id=body.id, title=body.title,
                                  priority=body.priority.value, budget=body.budget,
                                  tags=body.tags, author_email=None))
            session.commit()
        return Note(id=body.id, title=body.title, priority=body.priority, budget=body.budget,
                    tags=body.tags)

    async def notes_note_search_v1(self, query: SearchNotes, request: Request) -> NoteList:
        with Session(engine) as session:
            rows = session.scalars(select(NotesNote).order_by(NotesNote.id)).all()
        notes = [Note(id=r.id, title=r.title, priority=r.priority, budget=r.budget, tags=r.tags)
                 for r in rows if query.priority is None or r.priority == query.priority.value]
        return NoteList(notes=notes[: query.limit], total=len(notes))

    async def notes_note_get_v1(self, query: NoteRef, request: Request) -> Note:
        raise NotImplementedError

    async def notes_note_archive_v1(self, body: NoteRef, request: Request) -> Note:
        raise NotImplementedError

    async def notes_debug_whoami_v1(self, query: Empty, request: Request) -> Echo:
        return Echo(actor_id="a", org_id=None, request_id=None, trace_id=None,
                    idempotency_key=None, channel="generated")

    async def notes_debug_explode_v1(self, body: Empty, request: Request) -> Empty:
        return Empty()


client = TestClient(create_app(Handlers()))
created = client.post("/notes/note/create/v1", json={"id": "n-1", "title": "Call", "budget": "9.90",
                                                     "priority": "high"})
assert created.status_code == 200, created.text
assert created.json()["budget"] == "9.90", created.json()
invalid = client.post("/notes/note/create/v1", json={"id": "n-2", "title": ""})
assert invalid.status_code == 422, invalid.text
found = client.get("/notes/note/search/v1", params={"priority": "high", "limit": 5})
assert found.status_code == 200, found.text
assert [n["id"] for n in found.json()["notes"]] == ["n-1"], found.json()
assert client.get("/notes/note/search/v1", params={"limit": 0}).status_code == 422
with Session(engine) as session:
    assert session.get(NotesNote, ("o1", "n-1")).budget == Decimal("9.90")
paths = sorted(client.get("/openapi.json").json()["paths"])
assert paths[0] == "/notes/debug/explode/v1", paths
print("generated app ok", len(paths))
"""


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.mark.slow
def test_generated_app_runs_without_contractspec(ir: dict[str, Any], tmp_path: Path) -> None:
    """The `plain` app, in a fresh venv with only fastapi, sqlalchemy, pydantic and httpx, serves
    calls."""
    uv = shutil.which("uv")
    if uv is None:  # pragma: no cover - uv runs this test suite
        pytest.fail("uv is needed to build the isolated venv")
    generate(ir, tmp_path / "notes_api", title="Notes API", plain=True)
    venv = tmp_path / "venv"
    subprocess.run(
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True, cwd=tmp_path
    )
    install = [uv, "pip", "install", "--quiet", "--python", str(_venv_python(venv))]
    packages = ["fastapi", "sqlalchemy", "pydantic", "httpx"]
    offline = subprocess.run([*install, "--offline", *packages], capture_output=True, check=False)
    if offline.returncode != 0:
        subprocess.run([*install, *packages], check=True, capture_output=True)
    script = tmp_path / "run_app.py"
    script.write_text(textwrap.dedent(_APP_SCRIPT), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(
        [str(_venv_python(venv)), str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "generated app ok 6"
