"""The console in a real Chromium: forms, inline errors, denials, keyboard, axe, console errors.

Plain sync tests (sync Playwright cannot run inside an event loop); the app runs under uvicorn in
a thread on a SQLite file (`served_console`).
"""

from __future__ import annotations

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

_AXE = Axe()


@pytest.fixture
def errors(page: Page) -> list[str]:
    """Browser console errors and uncaught page errors seen during the test (CSP reports too)."""
    seen: list[str] = []
    page.on("console", lambda msg: seen.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen.append(str(exc)))
    return seen


def _unexpected(errors: list[str], *statuses: int) -> list[str]:
    """`errors` without Chromium's network notes for the answers a test expects (a 422 with
    inline errors, a 404 page): those are the app's intended statuses, not script errors."""
    allowed = tuple(
        f"Failed to load resource: the server responded with a status of {status} "
        for status in statuses
    )
    return [e for e in errors if not e.startswith(allowed)]


def _login(page: Page, base: str, user: str) -> None:
    page.goto(base.removesuffix("/admin") + f"/login/{user}")
    expect(page.locator("header .who")).to_contain_text(user)


def _assert_accessible(page: Page) -> None:
    results = _AXE.run(page)
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], bad


def _create(page: Page, base: str, code: str, name: str, price: str, *, ok: bool = True) -> None:
    """Fill and submit the create form; with `ok`, wait until the record's page has loaded (the
    htmx submit navigates by HX-Redirect, which a next `goto` must not race)."""
    page.goto(f"{base}/ops/shop.product.create")
    page.get_by_label("Id").fill(code)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Price").fill(price)
    page.get_by_label("Status").select_option("active")
    page.get_by_label("Tags").fill("red\nsmall")
    page.get_by_role("button", name="Submit").click()
    if ok:
        expect(page.locator("main h1")).to_have_text(f"Product {code}")
        page.wait_for_load_state()


def test_create_and_edit_through_forms_with_an_inline_error(
    page: Page, served_console: str, errors: list[str]
) -> None:
    """Create shows the server's error next to its field (values kept), then saves; edit too."""
    base = served_console
    _login(page, base, "alice")
    _create(page, base, "p-1", "forbidden", "9.99", ok=False)
    name_error = page.locator("#f-name-error")
    expect(name_error).to_have_text("this name is reserved")
    expect(page.get_by_label("Name")).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Id")).to_have_value("p-1")
    expect(page.get_by_label("Price")).to_have_value("9.99")
    _assert_accessible(page)
    page.get_by_label("Name").fill("Lamp <b>deluxe</b>")
    page.get_by_role("button", name="Submit").click()
    expect(page).to_have_url(f"{base}/entities/shop.product/p-1?done=shop.product.create")
    expect(page.locator("main h1")).to_have_text("Product p-1")
    expect(page.locator("main dl.record")).to_contain_text("Lamp <b>deluxe</b>")
    _assert_accessible(page)
    page.locator("main").get_by_role("link", name="Product update").click()
    expect(page.get_by_label("Name")).to_have_value("Lamp <b>deluxe</b>")
    page.get_by_label("Price").fill("12.50")
    page.get_by_role("button", name="Submit").click()
    expect(page).to_have_url(f"{base}/entities/shop.product/p-1?done=shop.product.update")
    expect(page.locator("main dl.record")).to_contain_text("12.50")
    page.goto(f"{base}/entities/shop.product/")
    expect(page.locator("tbody tr")).to_have_count(1)
    _assert_accessible(page)
    assert _unexpected(errors, 422) == []


def test_denied_action_is_not_offered_and_refused_when_forced(
    page: Page, served_console: str, errors: list[str]
) -> None:
    """A viewer sees no create/update buttons or links; a forced POST with a valid token is 403."""
    base = served_console
    _login(page, base, "alice")
    _create(page, base, "p-2", "Chair", "30")
    expect(page.locator("main h1")).to_have_text("Product p-2")
    page.context.clear_cookies()
    _login(page, base, "eve")
    page.goto(f"{base}/entities/shop.product/p-2")
    expect(page.locator("main h1")).to_have_text("Product p-2")
    expect(page.get_by_role("link", name="Product update")).to_have_count(0)
    expect(page.locator("nav.side")).not_to_contain_text("Product create")
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    forced = page.request.post(
        f"{base}/ops/shop.product.update",
        form={"_csrf": token or "", "id": "p-2", "name": "Hacked", "price": "0", "status": "draft"},
    )
    assert forced.status == 403
    assert "policy_denied" in forced.text()
    assert page.request.get(f"{base}/ops/shop.product.update?id=p-2").status == 403
    page.goto(f"{base}/entities/shop.product/p-2")
    expect(page.locator("main dl.record")).to_contain_text("Chair")
    assert errors == []


def test_keyboard_tab_to_fields_and_enter_submits(
    page: Page, served_console: str, errors: list[str]
) -> None:
    """Every input has a label; Tab walks the fields in order; Enter in a field submits."""
    base = served_console
    _login(page, base, "alice")
    page.goto(f"{base}/ops/shop.product.create")
    inputs = page.locator("#op-form input:not([type=hidden]), #op-form select, #op-form textarea")
    ids = inputs.evaluate_all("els => els.map(e => e.id)")
    assert ids == [
        "f-id",
        "f-name",
        "f-price",
        "f-status",
        "f-in_stock",
        "f-released",
        "f-tags",
        "f-notes",
    ]
    for input_id in ids:
        expect(page.locator(f'label[for="{input_id}"]')).to_have_count(1)
    page.get_by_label("Id").focus()
    page.keyboard.type("k-1")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-name"
    page.keyboard.type("Keyboard")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "f-price"
    page.keyboard.type("5")
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{base}/entities/shop.product/k-1?done=shop.product.create")
    expect(page.locator("main h1")).to_have_text("Product k-1")
    page.wait_for_load_state()
    page.goto(f"{base}/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    assert errors == []


def test_pages_are_accessible_and_error_free(
    page: Page, served_console: str, errors: list[str]
) -> None:
    """Home, list (with filters and sort), query form and result, error page: axe finds no
    serious or critical violation and the browser logs no error (CSP included)."""
    base = served_console
    _login(page, base, "alice")
    for code in ("a-1", "a-2"):
        _create(page, base, code, f"Item {code}", "1.00")
    for url in (
        f"{base}/",
        f"{base}/entities/shop.product/?name=item&_sort=-price",
        f"{base}/ops/shop.product.count",
        f"{base}/ops/shop.product.count?_run=1&status=active",
        f"{base}/entities/shop.product/missing",
    ):
        page.goto(url)
        _assert_accessible(page)
    page.goto(f"{base}/entities/shop.product/")
    page.get_by_role("link", name="Price").click()  # htmx swap of the rows
    expect(page).to_have_url(f"{base}/entities/shop.product/?_sort=price")
    expect(page.locator("th[aria-sort=ascending]")).to_contain_text("Price")
    assert _unexpected(errors, 404) == []
