"""The CRM console in a real Chromium: sign in, move a deal on the board, a viewer offered no
move; accessibility (axe) and no console errors.

Sync tests with a module-scoped Playwright (like the console package's review browser tests);
the CRM web app runs under uvicorn in a thread on a SQLite file. Skipped without
`CONTRACTSPEC_CHROMIUM` (the path `.ci/install-chromium DIR | tail -1` prints) unless
`CONTRACTSPEC_REQUIRE_BROWSER=1`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]
from crm_pipeline.spec import policy
from crm_pipeline.web import Tokens, console_registry, create_web_app
from playwright.sync_api import Browser, Page, expect, sync_playwright

from contractspec.core import Actor, CallContext, Executor
from contractspec.core.sql import SqlBackend, sqlite_engine

_AXE = Axe()
TOKENS = Tokens.parse("t-sales=ana:sales@acme,t-view=vic:viewer@acme")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Headless Chromium from `CONTRACTSPEC_CHROMIUM`, stopped after the module's tests."""
    path = os.environ.get("CONTRACTSPEC_CHROMIUM", "")
    if not path:
        if os.environ.get("CONTRACTSPEC_REQUIRE_BROWSER") == "1":
            pytest.fail("CONTRACTSPEC_REQUIRE_BROWSER=1 but CONTRACTSPEC_CHROMIUM is unset")
        pytest.skip("browser tests need CONTRACTSPEC_CHROMIUM (see .ci/install-chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    """A page in a fresh browser context (its own cookies)."""
    context = chromium.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def errors(page: Page) -> list[str]:
    """Browser console errors and uncaught page errors seen during the test."""
    seen: list[str] = []
    page.on("console", lambda msg: seen.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    return seen


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """The CRM web app on a SQLite file under uvicorn in a thread, with one contact and one
    deal in org acme; yields the base URL."""
    registry = console_registry()
    engine = sqlite_engine(tmp_path / "crm.db")
    backend = SqlBackend(engine, registry)
    executor = Executor(registry, backend=backend, policy=policy())
    app = create_web_app(executor, tokens=TOKENS, secret_key="browser-test-secret-0123456789abcdef")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    failure: list[BaseException] = []

    async def main() -> None:
        await backend.create_all()
        call = CallContext(actor=Actor.user("ana", roles="sales"), org_id="acme")
        await executor.execute(
            "crm.contact.create", {"id": "c1", "name": "Ann", "email": "a@x.io"}, call
        )
        await executor.execute("crm.deal.create", {"id": "d1", "contact_id": "c1", "title": "Big",
                                                   "amount": "100.00"}, call)  # fmt: skip
        try:
            await server.serve()
        finally:
            await engine.dispose()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="crm-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and not failure and time.monotonic() < deadline:
        time.sleep(0.02)
    if failure or not server.started:
        raise RuntimeError("the CRM server did not start") from (failure[0] if failure else None)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def _accessible(page: Page) -> None:
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in _AXE.run(page).response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], bad


def test_a_deal_moves_on_the_board(page: Page, served: str, errors: list[str]) -> None:
    """ana signs in, moves deal d1 from lead to qualified from its card, lands on the deal,
    and finds it in the qualified column; the board passes axe; no console errors."""
    page.goto(f"{served}/login?token=t-sales")
    expect(page.locator("header .who")).to_contain_text("ana")
    page.get_by_role("navigation", name="Console").get_by_role(
        "link", name="Deals by stage"
    ).click()
    expect(page.locator("section[data-stage=lead] li.card")).to_have_count(1)
    _accessible(page)
    page.get_by_label("Move Big to").select_option("qualified")
    page.get_by_role("button", name="Move").click()
    expect(page).to_have_url(f"{served}/admin/entities/crm.deal/d1?done=crm.deal.move")
    page.goto(f"{served}/admin/deals-board/")
    expect(page.locator("section[data-stage=qualified] li.card[data-deal=d1]")).to_have_count(1)
    expect(page.locator("section[data-stage=lead] li.card")).to_have_count(0)
    assert errors == []


def test_a_viewer_is_offered_no_move(page: Page, served: str, errors: list[str]) -> None:
    """vic (viewer) sees the card without a move form, and no audit log in the navigation."""
    page.goto(f"{served}/login?token=t-view")
    page.goto(f"{served}/admin/deals-board/")
    expect(page.locator("li.card[data-deal=d1]")).to_have_count(1)
    expect(page.locator("form.move")).to_have_count(0)
    expect(page.get_by_role("link", name="Audit log")).to_have_count(0)
    assert errors == []
