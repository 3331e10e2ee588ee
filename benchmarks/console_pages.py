"""Server render time of console pages: ContractSpec's console vs SQLAdmin, same table, SQLite.

One table of products (id, name, decimal price, status enum, in-stock flag, release date, notes)
in one SQLite file, 200 rows in one tenant. Three apps render it, each mounted under `/admin`
of a Starlette app and driven in-process through `httpx.ASGITransport`:

* console: `contractspec.console.Console` over an `Executor` (`SqlBackend`, `RolePermissions`):
  per request it authenticates (a header), asks the policy for the navigation (every entity and
  operation) and the read permission, reads the page through the repository in a read-only,
  tenant-scoped transaction, renders with Jinja2 (autoescape) and adds the security headers;
  the form page also signs a CSRF token and issues an idempotency key;
* generated: the same spec rendered by `contractspec generate ui` (plain templates and the
  Starlette router), same executor;
* SQLAdmin: a `ModelView` over an ORM class mapped onto the very same table (async engine, same
  SQLite file), no authentication backend (it does less per request than ours).

Pages: the list page (first 50 rows, sorted by primary key) and the create form (GET). Rounds
alternate the apps so machine noise hits all of them. Prints per page and app the median and
p95 in milliseconds and the ratio SQLAdmin / ours of the medians (goal: >= 1x, p95 < 20 ms).

Run: `uv run --all-packages --all-extras --group bench python benchmarks/console_pages.py`
"""

from __future__ import annotations

import asyncio
import enum
import importlib
import statistics
import sys
import tempfile
import time
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import httpx
from pydantic import BaseModel, Field
from sqladmin import Admin, ModelView
from sqlalchemy.orm import DeclarativeBase
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from contractspec.console import Console
from contractspec.console.codegen import generate_ui
from contractspec.core import (
    Actor,
    CallContext,
    Executor,
    HandlerCtx,
    RolePermissions,
    SpecRegistry,
    define_command,
    define_entity,
    requires,
)
from contractspec.core.http import Principal
from contractspec.core.sql import SqlBackend, sqlite_engine

ROWS = 200
PAGE = 50
REQUESTS = 40  # per page, app and round
ROUNDS = 7
WARMUP = 20
ORG = "acme"
SECRET = "benchmark-secret-0123456789abcdef0123456789"


class Status(enum.StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    RETIRED = "retired"


class Product(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    price: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2)]
    status: Status = Status.DRAFT
    in_stock: bool = True
    released: date | None = None
    notes: Annotated[str, Field(max_length=500)] | None = None


product_entity = define_entity("shop.product", Product, description="A product.")
create_product = define_command(
    "shop.product.create",
    input=Product,
    output=Product,
    auth=requires("product.write"),
    idempotent=True,
    description="Add a product.",
)
POLICY = RolePermissions({"admin": ["*"]})
ADMIN = Actor.user("alice", roles="admin")


def build_registry() -> SpecRegistry:
    registry = SpecRegistry(product_entity, create_product)

    @registry.handler(create_product)
    async def create(inp: Product, ctx: HandlerCtx) -> Product:
        return await ctx.repo(product_entity).add(inp)

    return registry


def authenticate(request: Request) -> Principal | None:
    return Principal(ADMIN, org_id=ORG) if request.headers.get("x-user") == "alice" else None


async def timed(client: httpx.AsyncClient, url: str, n: int) -> list[float]:
    """Wall time of `n` sequential GETs of `url`, in ms (each answer checked)."""
    out = []
    for _ in range(n):
        start = time.perf_counter()
        response = await client.get(url, headers={"x-user": "alice"})
        out.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return out


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


async def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="console_pages_"))
    registry = build_registry()
    engine = sqlite_engine(workdir / "shop.db")
    backend = SqlBackend(engine, registry)
    await backend.create_all()
    executor = Executor(registry, backend=backend, policy=POLICY)
    call = CallContext(actor=ADMIN, org_id=ORG)
    for i in range(ROWS):
        await executor.execute(
            "shop.product.create",
            {
                "id": f"p{i:04}",
                "name": f"Product <{i}> & co",
                "price": f"{i}.{i % 100:02}",
                "status": list(Status)[i % 3],
                "in_stock": i % 2 == 0,
                "released": date(2026, 1, 1 + i % 28),
                "notes": "a note " * (i % 5),
            },
            call,
        )

    # ours: the runtime console
    console = Console(executor, authenticate=authenticate, secret_key=SECRET, page_size=PAGE)
    # ours: the generated console
    generate_ui(registry.to_ir(), workdir / "shop_ui", title="Shop")
    sys.path.insert(0, str(workdir))
    generated = importlib.import_module("shop_ui.router").create_console(
        executor, authenticate=authenticate, secret_key=SECRET, page_size=PAGE
    )

    # SQLAdmin over the same table
    table = backend.tables.metadata.tables[product_entity.table_name]

    class Base(DeclarativeBase):
        pass

    class ProductRow(Base):
        __table__ = table

    class ProductAdmin(ModelView, model=ProductRow):
        # SQLAdmin's configuration is class attributes (lists, as its docs write them)
        column_list = [c for c in table.c if c.name not in ("org_id", "cs_version")]  # noqa: RUF012
        form_excluded_columns = [table.c.org_id, table.c.cs_version]  # noqa: RUF012
        page_size = PAGE
        page_size_options = [PAGE]  # noqa: RUF012
        column_default_sort = "id"

    peer_app = Starlette()
    admin = Admin(peer_app, engine, base_url="/admin")
    admin.add_view(ProductAdmin)

    apps = {
        "console": (Starlette(routes=[Mount("/admin", app=console)]),
                    "/admin/entities/shop.product/", "/admin/ops/shop.product.create"),
        "generated": (Starlette(routes=[Mount("/admin", app=generated)]),
                      "/admin/entities/shop.product/", "/admin/ops/shop.product.create"),
        "sqladmin": (peer_app, "/admin/product-row/list", "/admin/product-row/create"),
    }  # fmt: skip
    clients = {
        name: httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
        for name, (app, _, _) in apps.items()
    }
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for name, (_, list_url, form_url) in apps.items():  # warm up and check the pages
            page = (await clients[name].get(list_url, headers={"x-user": "alice"})).text
            rows = page.count("<tr") - 1
            if rows != PAGE:
                raise RuntimeError(f"{name}: list page shows {rows} rows, not {PAGE}")
            await timed(clients[name], list_url, WARMUP)
            await timed(clients[name], form_url, WARMUP)
        for round_no in range(ROUNDS):
            order = list(apps) if round_no % 2 == 0 else list(reversed(apps))
            for name in order:
                _, list_url, form_url = apps[name]
                results.setdefault((name, "list"), []).extend(
                    await timed(clients[name], list_url, REQUESTS)
                )
                results.setdefault((name, "form"), []).extend(
                    await timed(clients[name], form_url, REQUESTS)
                )
    finally:
        for client in clients.values():
            await client.aclose()
        await engine.dispose()

    from importlib.metadata import version

    print("Console page render time, in-process (httpx ASGITransport), SQLite file")
    print(f"  data: {ROWS} products in one tenant; list page = first {PAGE} rows by id")
    print(f"  timing: {ROUNDS} alternating rounds x {REQUESTS} requests per page and app")
    print(
        f"  console   : contractspec-console (runtime), Executor + SqlBackend(aiosqlite), "
        f"RolePermissions, header authenticator, CSRF + security headers, page_size={PAGE}"
    )
    print("  generated : `contractspec generate ui` output, same executor and authenticator")
    print(
        f"  sqladmin  : SQLAdmin {version('sqladmin')} ModelView on the same table (async engine, "
        f"same file), no authentication backend, page_size={PAGE}"
    )
    print(f"  python {sys.version.split()[0]}, starlette {version('starlette')}, "
          f"jinja2 {version('jinja2')}, sqlalchemy {version('sqlalchemy')}")  # fmt: skip
    print()
    print(f"{'page':<6}{'app':<11}{'median ms':>10}{'p95 ms':>9}{'SQLAdmin/ours':>15}")
    for page_kind in ("list", "form"):
        peer = statistics.median(results[("sqladmin", page_kind)])
        for name in apps:
            values = results[(name, page_kind)]
            median = statistics.median(values)
            ratio = "" if name == "sqladmin" else f"{peer / median:.2f}x"
            print(f"{page_kind:<6}{name:<11}{median:>10.2f}{p95(values):>9.2f}{ratio:>15}")
    print()
    print("goal: ours >= 1x SQLAdmin (ratio >= 1.00x) and p95 < 20 ms on SQLite")


if __name__ == "__main__":
    asyncio.run(main())
