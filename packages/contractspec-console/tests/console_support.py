"""A small shop app for the console tests (specs, handlers, policy, authenticator) and helpers.

Also used by other console test modules (review sections): `build_registry()`, `make_console()`,
`USERS`, `authenticate`, `SECRET`, `assert_safe_html(html)`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from bs4 import BeautifulSoup
from pydantic import BaseModel, Field
from starlette.requests import Request

from contractspec.console import Console, ConsoleSection
from contractspec.core import (
    Actor,
    Backend,
    Executor,
    HandlerCtx,
    MemoryBackend,
    RolePermissions,
    SpecRegistry,
    SpecValidationError,
    define_command,
    define_entity,
    define_query,
    requires,
)
from contractspec.core.http import Principal

SECRET = "test-secret-key-0123456789abcdef-0123456789"
ORG = "acme"


class Status(enum.StrEnum):
    """Product status."""

    DRAFT = "draft"
    ACTIVE = "active"
    RETIRED = "retired"


class Product(BaseModel):
    id: str
    name: Annotated[str, Field(min_length=1, max_length=200)]
    price: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2)]
    status: Status = Status.DRAFT
    in_stock: bool = True
    released: date | None = None
    tags: list[str] = []
    notes: str | None = None


product_entity = define_entity(
    "shop.product", Product, indexes=["status"], description="A product."
)


class CreateProduct(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=64, description="Unique product code.")]
    name: Annotated[str, Field(min_length=1, max_length=200, description="Shown to customers.")]
    price: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2)]
    status: Status = Status.DRAFT
    in_stock: bool = True
    released: date | None = None
    tags: list[str] = []
    notes: str | None = None


class UpdateProduct(BaseModel):
    id: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    price: Annotated[Decimal, Field(ge=0, max_digits=10, decimal_places=2)]
    status: Status
    in_stock: bool = False
    notes: str | None = None


class DeleteProduct(BaseModel):
    id: str


class Deleted(BaseModel):
    id: str
    deleted: bool


create_product = define_command(
    "shop.product.create",
    input=CreateProduct,
    output=Product,
    auth=requires("product.write"),
    idempotent=True,
    description="Add a product to the catalogue.",
)
update_product = define_command(
    "shop.product.update",
    input=UpdateProduct,
    output=Product,
    auth=requires("product.write"),
    idempotent=True,
)
delete_product = define_command(
    "shop.product.delete", input=DeleteProduct, output=Deleted, auth=requires("product.delete")
)


class CountInput(BaseModel):
    status: Status | None = None


class CountOutput(BaseModel):
    total: int


count_products = define_query(
    "shop.product.count", input=CountInput, output=CountOutput, auth=requires("product.read")
)


def build_registry() -> SpecRegistry:
    """The shop's registry with handlers."""
    registry = SpecRegistry(
        product_entity, create_product, update_product, delete_product, count_products
    )

    @registry.handler(create_product)
    async def create(inp: CreateProduct, ctx: HandlerCtx) -> Product:
        if inp.name.strip().lower() == "forbidden":
            raise SpecValidationError(
                "invalid input: name: this name is reserved",
                errors=[
                    {
                        "loc": ["name"],
                        "field": "name",
                        "msg": "this name is reserved",
                        "type": "reserved",
                    }
                ],
            )
        return await ctx.repo(product_entity).add(Product(**inp.model_dump()))

    @registry.handler(update_product)
    async def update(inp: UpdateProduct, ctx: HandlerCtx) -> Product:
        return await ctx.repo(product_entity).patch(inp.id, **inp.model_dump(exclude={"id"}))

    @registry.handler(delete_product)
    async def delete(inp: DeleteProduct, ctx: HandlerCtx) -> Deleted:
        return Deleted(id=inp.id, deleted=await ctx.repo(product_entity).delete(inp.id))

    @registry.handler(count_products)
    async def count(inp: CountInput, ctx: HandlerCtx) -> CountOutput:
        where = {"status": inp.status} if inp.status else None
        return CountOutput(total=await ctx.repo(product_entity).count(where))

    return registry


#: Users known to the test authenticator (`X-Test-User` header or `user` cookie).
USERS: dict[str, Actor] = {
    "alice": Actor.user("alice", roles="admin"),
    "bob": Actor.user("bob", roles="clerk"),
    "eve": Actor.user("eve", roles="viewer"),
}

POLICY = RolePermissions(
    {
        "admin": ["*"],
        "clerk": ["product.write", "product.read", "shop.product.read"],
        "viewer": ["product.read", "shop.product.read"],
    }
)


def authenticate(request: Request) -> Principal | None:
    """The test app's authenticator: the `X-Test-User` header, else the `user` cookie."""
    name = request.headers.get("x-test-user") or request.cookies.get("user")
    actor = USERS.get(name or "")
    return Principal(actor, org_id=ORG) if actor is not None else None


def make_console(
    backend: Backend | None = None,
    *,
    registry: SpecRegistry | None = None,
    sections: Sequence[ConsoleSection] = (),
    **options: Any,
) -> Console:
    """A console over the shop app (memory backend by default)."""
    executor = Executor(
        registry or build_registry(), backend=backend or MemoryBackend(), policy=POLICY
    )
    return Console(
        executor, authenticate=authenticate, secret_key=SECRET, sections=sections, **options
    )


def assert_safe_html(html: str) -> BeautifulSoup:
    """Parse `html` and assert it has no inline script body, no `on*=` and no `style=` attribute."""
    soup = BeautifulSoup(html, "html.parser")
    for script in soup.find_all("script"):
        assert not script.get_text(strip=True), f"inline script body: {script}"
        assert script.get("src"), f"script without src: {script}"
    for tag in soup.find_all(True):
        for attr in tag.attrs:
            assert not attr.lower().startswith("on"), (
                f"event handler attribute on {tag.name}: {attr}"
            )
            assert attr.lower() != "style", f"style attribute on {tag.name}"
        for attr in ("href", "src", "action", "formaction"):
            value = tag.get(attr)
            if isinstance(value, str):
                assert not value.strip().lower().startswith("javascript:"), (
                    f"javascript: URL in {tag}"
                )
    assert not soup.find_all("style"), "inline <style> element"
    return soup


@contextmanager
def serve_console(
    db_path: Path,
    *,
    sections: Sequence[ConsoleSection] = (),
    registry: SpecRegistry | None = None,
    setup: Callable[[Executor], Awaitable[None]] | None = None,
) -> Iterator[str]:
    """Serve the shop console over a SQLite file with uvicorn in a background thread.

    The console is mounted under `/admin` of a Starlette app whose `/login/<user>` sets the
    `user` cookie the test authenticator reads. Yields the console's base URL
    (`http://127.0.0.1:<port>/admin`). `setup(executor)` runs first on the server's loop.
    """
    import asyncio
    import socket
    import threading
    import time

    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount, Route

    from contractspec.core.sql import SqlBackend, sqlite_engine

    reg = registry or build_registry()
    engine = sqlite_engine(db_path)
    backend = SqlBackend(engine, reg)
    console = make_console(backend, registry=reg, sections=sections)

    async def login(request: Request) -> RedirectResponse:
        response = RedirectResponse("/admin/", status_code=303)
        response.set_cookie("user", request.path_params["user"], httponly=True, samesite="strict")
        return response

    app = Starlette(routes=[Route("/login/{user}", login), Mount("/admin", app=console)])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        async def main() -> None:
            await backend.create_all()
            if setup is not None:
                await setup(console.executor)
            ready.set()
            try:
                await server.serve()
            finally:
                await engine.dispose()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="console-uvicorn", daemon=True)
    thread.start()
    ready.wait(30)
    deadline = time.monotonic() + 30
    while not server.started and not failure and time.monotonic() < deadline:
        time.sleep(0.02)
    if failure:
        raise RuntimeError("the console server did not start") from failure[0]
    try:
        yield f"http://127.0.0.1:{port}/admin"
    finally:
        server.should_exit = True
        thread.join(30)
