"""`contractspec generate ui`: deterministic files, clean under ruff and mypy strict, and a
generated console that serves list pages and runs forms through the executor (memory, SQLite,
PostgreSQL)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import httpx
import pytest
from bs4 import BeautifulSoup
from console_support import ORG, SECRET, assert_safe_html, authenticate, build_registry
from console_support import POLICY as SHOP_POLICY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.routing import Mount
from typer.testing import CliRunner

from contractspec.console.codegen import (
    GENERATED_UI_MARK,
    UiDrift,
    check_ui,
    generate_ui,
    render_ui,
)
from contractspec.core import (
    Actor,
    Backend,
    CallContext,
    ConfigurationError,
    Executor,
    MemoryAuditLog,
    SpecRegistry,
    define_command,
    define_entity,
)
from contractspec.core.cli import app as cli

RUFF_RULES = "E,F,W,I,B,UP,SIM,RUF,ASYNC,C4,PIE,RET,TID,PERF"
BASE = "http://ui.test"


@pytest.fixture
def ir() -> dict[str, Any]:
    """The shop app's IR."""
    return build_registry().to_ir()


@pytest.fixture
def package(ir: dict[str, Any], tmp_path: Path) -> Iterator[tuple[ModuleType, Path]]:
    """The generated console as an importable package with a unique name: (router, directory)."""
    name = f"shop_ui_{uuid.uuid4().hex[:8]}"
    generate_ui(ir, tmp_path / name, title="Shop")
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(f"{name}.router"), tmp_path / name
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


def test_render_is_deterministic_and_a_rerun_writes_nothing(
    ir: dict[str, Any], tmp_path: Path
) -> None:
    """Two registries of one spec render identical files; a second run changes no byte."""
    assert render_ui(ir) == render_ui(build_registry().to_ir())
    first = generate_ui(ir, tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    second = generate_ui(ir, tmp_path)
    assert second.written == ()
    assert second.unchanged == first.written
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert check_ui(ir, tmp_path) == []


def test_layout_and_form_details(ir: dict[str, Any]) -> None:
    """A list and detail template per entity, a form per operation, with the spec's field
    details written out (decimal step, enum choices, required, length limit)."""
    files = render_ui(ir)
    assert sorted(files) == [
        "__init__.py",
        "router.py",
        "static/console.css",
        "templates/_macros.html",
        "templates/base.html",
        "templates/entities/shop.product/detail.html",
        "templates/entities/shop.product/list.html",
        "templates/error.html",
        "templates/index.html",
        "templates/ops/shop.product.count.html",
        "templates/ops/shop.product.create.html",
        "templates/ops/shop.product.delete.html",
        "templates/ops/shop.product.update.html",
    ]
    assert all(GENERATED_UI_MARK in text.splitlines()[0] for text in files.values())
    form = files["templates/ops/shop.product.create.html"]
    assert 'name="price"' in form
    assert 'step="0.01"' in form
    assert 'min="0"' in form
    assert '<option value="retired"' in form
    assert "name=\"name\" value=\"{{ values.get('name', '') }}\" required" in form
    assert 'maxlength="200"' in form
    assert 'type="checkbox" id="f-in_stock"' in form
    assert 'type="date" id="f-released"' in form
    assert '<p class="help" id="id-help">Unique product code.</p>' in form


def test_owned_files_are_kept_and_stale_ones_removed(ir: dict[str, Any], tmp_path: Path) -> None:
    """A file whose generated line was deleted is the app's: never overwritten nor drift; a
    generated file the spec no longer produces is reported stale, then removed."""
    generate_ui(ir, tmp_path)
    owned = tmp_path / "templates/index.html"
    owned.write_text("<p>our own home page</p>\n", encoding="utf-8")
    stale = tmp_path / "templates/ops/shop.product.gone.html"
    stale.write_text(f"{{# {GENERATED_UI_MARK} #}}\n", encoding="utf-8")
    assert check_ui(ir, tmp_path) == [UiDrift("templates/ops/shop.product.gone.html", "stale")]
    result = generate_ui(ir, tmp_path)
    assert result.kept == ("templates/index.html",)
    assert result.removed == ("templates/ops/shop.product.gone.html",)
    assert owned.read_text(encoding="utf-8") == "<p>our own home page</p>\n"
    assert not stale.exists()


@pytest.mark.slow
def test_generated_code_passes_ruff_and_mypy_strict(package: tuple[ModuleType, Path]) -> None:
    """The generated package is clean under ruff (project rules) and mypy --strict."""
    _, directory = package
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
            directory.name,
        ],
        capture_output=True,
        text=True,
        cwd=directory.parent,
        check=False,
    )
    assert types.returncode == 0, types.stdout + types.stderr


def test_cli_generate_ui_and_check(tmp_path: Path) -> None:
    """`contractspec generate ui SPEC --out DIR` writes the console; `--check` accepts it, then
    names a changed file; `ui` without a spec and `--plain` are refused naming the fix."""
    runner = CliRunner()
    target = "console_support:build_registry"
    made = runner.invoke(cli, ["generate", "ui", target, "--out", str(tmp_path)])
    assert made.exit_code == 0, made.output
    assert "13 written" in made.output
    ok = runner.invoke(cli, ["generate", "ui", target, "--out", str(tmp_path), "--check"])
    assert (ok.exit_code, ok.output) == (0, f"{tmp_path} is up to date\n")
    router = tmp_path / "router.py"
    router.write_text(router.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    stale = runner.invoke(cli, ["generate", "ui", target, "--out", str(tmp_path), "--check"])
    assert stale.exit_code == 1
    assert stale.output.splitlines()[0] == f"changed  {router}"
    missing = runner.invoke(cli, ["generate", "ui", "--out", str(tmp_path)])
    assert missing.exit_code == 2
    assert "needs the spec" in missing.output
    plain = runner.invoke(cli, ["generate", "ui", target, "--out", str(tmp_path), "--plain"])
    assert plain.exit_code == 2
    assert "--plain" in plain.output


class Odd(BaseModel):
    id: str
    value: Annotated[str, Field(alias="the value")]


def test_a_field_name_that_cannot_be_a_form_field_is_refused() -> None:
    """An input field named by an alias that is not an identifier: ConfigurationError naming it."""
    op = define_command("odd.thing.set", input=Odd, output=Odd)
    with pytest.raises(ConfigurationError, match=r"'the value' of odd\.thing\.set") as info:
        render_ui(SpecRegistry(op).to_ir())
    assert info.value.details["field"] == "odd.thing.set.the value"


_HOSTILE = st.text(
    alphabet=st.sampled_from(list("{}%#<>\"'&/ ab=;")) | st.characters(codec="utf-8"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(description=_HOSTILE, help_text=_HOSTILE)
def test_spec_text_never_becomes_template_code(description: str, help_text: str) -> None:
    """Descriptions and field help with Jinja and HTML syntax render as the same text, inert."""
    from jinja2 import DictLoader, Environment

    class Item(BaseModel):
        id: str
        note: Annotated[str, Field(description=help_text)]

    entity = define_entity("box.item", Item, description=description)
    op = define_command("box.item.create", input=Item, output=Item, description=description)
    files = render_ui(SpecRegistry(entity, op).to_ir())
    env = Environment(
        loader=DictLoader({k.removeprefix("templates/"): v for k, v in files.items()}),
        autoescape=True,
    )
    page = env.get_template("ops/box.item.create.html").render(
        root="", values={}, errors={}, form_errors=[], csrf_token="t", key="k", title="T"
    )
    soup = BeautifulSoup(page, "html.parser")
    assert soup.select_one("p.description").get_text() == " ".join(description.split())
    assert soup.select_one("#note-help").get_text() == " ".join(help_text.split())
    listing = env.get_template("entities/box.item/list.html").render(
        root="", records=[], total=0, title="T"
    )
    desc = BeautifulSoup(listing, "html.parser").select_one("p.description")
    assert desc.get_text() == " ".join(description.split())


# -- the generated app ----------------------------------------------------------------------------


@pytest.fixture
async def ui(
    package: tuple[ModuleType, Path], backend: Backend, registry: SpecRegistry
) -> AsyncIterator[tuple[httpx.AsyncClient, Executor]]:
    """A host app mounting the generated console under /admin, over the parametrised backend."""
    router, _ = package
    executor = Executor(registry, backend=backend, policy=SHOP_POLICY)
    console = router.create_console(executor, authenticate=authenticate, secret_key=SECRET)
    app = Starlette(routes=[Mount("/admin", app=console)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        yield c, executor


def _as(user: str) -> dict[str, str]:
    return {"X-Test-User": user}


async def _hidden(client: httpx.AsyncClient, user: str = "alice") -> dict[str, str]:
    page = await client.get("/admin/ops/shop.product.create", headers=_as(user))
    assert page.status_code == 200, page.text
    soup = assert_safe_html(page.text)
    return {i["name"]: i["value"] for i in soup.select("#op-form input[type=hidden]")}


async def test_generated_list_page_pages_through_the_repository(
    ui: tuple[httpx.AsyncClient, Executor],
) -> None:
    """55 products: page 1 shows 50 rows and a next link, page 2 the other 5; security headers."""
    client, executor = ui
    call = CallContext(actor=Actor.user("alice", roles="admin"), org_id=ORG)
    for i in range(55):
        await executor.execute("shop.product.create", {"id": f"p{i:02}", "name": f"P {i}",
                                                       "price": "1.50"}, call)  # fmt: skip
    first = await client.get("/admin/entities/shop.product/", headers=_as("eve"))
    assert first.status_code == 200, first.text
    assert first.headers["content-security-policy"].startswith("default-src 'self'")
    soup = assert_safe_html(first.text)
    assert len(soup.select("tbody tr")) == 50
    assert soup.select_one("tbody tr td a")["href"] == "/admin/entities/shop.product/p00"
    nxt = soup.select_one("a[rel=next]")["href"]
    second = BeautifulSoup((await client.get(nxt, headers=_as("eve"))).text, "html.parser")
    assert [r.select_one("td").get_text() for r in second.select("tbody tr")] == [
        f"p{i}" for i in range(50, 55)
    ]
    detail = await client.get("/admin/entities/shop.product/p07", headers=_as("eve"))
    assert detail.status_code == 200
    assert "P 7" in detail.text
    assert "1.50" in detail.text
    assert (await client.get("/admin/entities/shop.product/")).status_code == 401


async def test_generated_form_submits_through_the_executor(
    ui: tuple[httpx.AsyncClient, Executor],
) -> None:
    """A valid submit runs the operation as the caller (audited, in the caller's tenant); an
    invalid one shows the field's error inline (422); no CSRF token: 403; a repeat of the same
    idempotency key runs the handler once."""
    client, executor = ui
    hidden = await _hidden(client)
    data = {**hidden, "id": "lamp", "name": "Lamp", "price": "12.50", "status": "active"}
    done = await client.post("/admin/ops/shop.product.create", data=data, headers=_as("alice"))
    assert done.status_code == 200, done.text
    result = BeautifulSoup(done.text, "html.parser").select_one("section.result")
    assert "12.50" in result.get_text()
    again = await client.post("/admin/ops/shop.product.create", data=data, headers=_as("alice"))
    assert again.status_code == 200
    audit: Any = executor.audit
    records = (
        list(audit.records)
        if isinstance(audit, MemoryAuditLog)
        else [e.record for e in await audit.entries(ORG)]
    )
    creates = [r for r in records if r.action == "shop.product.create" and r.outcome == "success"]
    assert [(r.actor_id, r.org_id) for r in creates] == [("alice", ORG)]
    bad = {**hidden, "id": "x", "name": "X", "price": "1.234", "_idempotency_key": "k" * 20}
    refused = await client.post("/admin/ops/shop.product.create", data=bad, headers=_as("alice"))
    assert refused.status_code == 422
    soup = BeautifulSoup(refused.text, "html.parser")
    assert soup.select_one(".field.has-error #f-price") is not None
    assert soup.select_one("#price-error").get_text()
    assert soup.select_one("#f-name")["value"] == "X"
    no_token = {k: v for k, v in data.items() if k != "_csrf"}
    forged = await client.post("/admin/ops/shop.product.create", data=no_token, headers=_as("bob"))
    assert forged.status_code == 403


async def test_generated_console_offers_only_what_the_policy_allows(
    ui: tuple[httpx.AsyncClient, Executor],
) -> None:
    """eve (viewer) sees no create form in the navigation and is refused it (403)."""
    client, _ = ui
    home = BeautifulSoup((await client.get("/admin/", headers=_as("eve"))).text, "html.parser")
    links = [a["href"] for a in home.select("nav.side a")]
    assert "/admin/entities/shop.product/" in links
    assert "/admin/ops/shop.product.count" in links
    assert "/admin/ops/shop.product.create" not in links
    denied = await client.get("/admin/ops/shop.product.create", headers=_as("eve"))
    assert denied.status_code == 403


def test_cli_names_the_package_when_the_console_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without contractspec-console importable, `generate ui` exits 2 naming the pip command
    and writes nothing."""
    monkeypatch.setitem(sys.modules, "contractspec.console.codegen", None)
    runner = CliRunner()
    out = tmp_path / "ui"
    result = runner.invoke(
        cli, ["generate", "ui", "console_support:build_registry", "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "pip install contractspec-console" in result.output
    assert not out.exists()
