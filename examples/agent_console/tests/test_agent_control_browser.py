"""AgentControl in a real Chromium: ana starts a run that needs approval, sam (SRE) approves it in
his own browser, ana resumes it and sees it completed; axe and no console errors.

Sync tests with a module-scoped Playwright; the app runs under uvicorn in a thread on a SQLite
file. Skipped without `CONTRACTSPEC_CHROMIUM` unless `CONTRACTSPEC_REQUIRE_BROWSER=1`.
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from agent_console import ops
from agent_console.console import open_console
from agent_console.web import Users, create_control_app
from axe_playwright_python.sync_playwright import Axe  # type: ignore[import-untyped]
from playwright.sync_api import Browser, Page, expect, sync_playwright

from contractspec.agent.testing import block_model_requests

block_model_requests()

_AXE = Axe()
USERS = Users.parse("t-ana=ana:ops,t-sam=sam:sre")


@pytest.fixture(autouse=True)
def services() -> Iterator[None]:
    """Each test starts from the same service state."""
    saved = copy.deepcopy(ops.SERVICES)
    yield
    ops.SERVICES.clear()
    ops.SERVICES.update(saved)


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
def served(tmp_path: Path) -> Iterator[str]:
    """AgentControl on a SQLite file under uvicorn in a thread; yields the base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    holder: list[uvicorn.Server] = []
    failure: list[BaseException] = []
    ready = threading.Event()

    async def main() -> None:
        async with open_console(tmp_path / "control.db") as control:
            app = create_control_app(
                control, users=USERS, secret_key="browser-test-secret-0123456789abcdef"
            )
            config = uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
            )
            holder.append(uvicorn.Server(config))
            ready.set()
            await holder[0].serve()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, name="agentcontrol-uvicorn", daemon=True)
    thread.start()
    ready.wait(30)
    deadline = time.monotonic() + 30
    while holder and not holder[0].started and not failure and time.monotonic() < deadline:
        time.sleep(0.02)
    if failure or not holder or not holder[0].started:
        raise RuntimeError("AgentControl did not start") from (failure[0] if failure else None)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        holder[0].should_exit = True
        thread.join(30)


def _accessible(page: Page) -> None:
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in _AXE.run(page).response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], bad


def _signed_in(chromium: Browser, base: str, token: str) -> tuple[Page, list[str]]:
    """A page in its own browser context signed in with `token`, and the console errors it
    collects (console errors and uncaught page errors)."""
    page = chromium.new_context().new_page()
    seen: list[str] = []
    page.on("console", lambda msg: seen.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    page.goto(f"{base}/login?token={token}")
    return page, seen


def test_second_user_approves_and_the_run_resumes(chromium: Browser, served: str) -> None:
    """The run waits for approval; sam approves it; ana resumes it; the run page says completed."""
    ana, ana_errors = _signed_in(chromium, served, "t-ana")
    expect(ana.locator("main h1")).to_have_text("Agents and tools")
    _accessible(ana)
    ana.get_by_label("Ask ops.assistant").fill("scale api to 6")
    ana.locator("#run-ops\\.assistant").get_by_role("button", name="Run").click()
    expect(ana.locator("main")).to_contain_text("waiting_approval")
    run_url = ana.url
    sam, sam_errors = _signed_in(chromium, served, "t-sam")
    sam.goto(f"{served}/admin/approvals/")
    sam.locator("tbody tr td a").first.click()
    expect(sam.locator("main")).to_contain_text("scale_service")
    _accessible(sam)
    sam.get_by_label("Comment (approve)").fill("within budget")
    sam.get_by_role("button", name="Approve").click()
    expect(sam.locator("main")).to_contain_text("approved")
    ana.goto(f"{served}/admin/agents/")
    ana.get_by_role("button", name="Resume decided runs").click()
    expect(ana.locator("#h-resumed + ul li")).to_contain_text("completed")
    ana.goto(run_url)
    expect(ana.locator("main")).to_contain_text("run.completed")
    assert ops.SERVICES["api"]["replicas"] == 6
    assert ana_errors == []
    assert sam_errors == []
