"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Skipped when Playwright or Chromium is missing. Set ``LLMRELAY_UPDATE_SCREENSHOTS=1`` to write
the screenshots into docs/images/ (what docs/dashboard.md shows); otherwise they go to the
test's temporary directory, so a test run leaves the working tree as it was.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import GatewayFactory
from llmrelay.testing.harness import RunningGateway

CHROMIUM = Path(os.environ.get("LLMRELAY_CHROMIUM", "/usr/bin/chromium"))
DOCS_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
XSS_NAME = "<script>alert(1)</script>"
XSS_PROMPT = "<img src=x onerror=alert(2)> hello"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')"
)
pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LLMRELAY_CHROMIUM)",
    ),
    pytest.mark.slow,
]


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    if os.environ.get("LLMRELAY_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES
    return tmp_path / "screenshots"


@dataclass
class Browser:
    page: Any
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Page errors, console errors (a CSP violation shows up here) and failed responses."""

    def console(self, kind: str, text: str) -> None:
        # A failed load is reported by ``answered``, with its URL.
        if kind == "error" and not text.startswith("Failed to load resource"):
            self.errors.append(text)

    def answered(self, status: int, url: str) -> None:
        # The playground polls /v1/generation until the ledger row lands (404 until then).
        if status >= 400 and not (status == 404 and "/v1/generation?" in url):
            self.errors.append(f"{status} {url}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
            viewport={"width": 1280, "height": 860},
        )
        context.set_default_timeout(10_000)
        found = Browser(context.new_page())
        found.page.on(
            "dialog", lambda dialog: (found.dialogs.append(dialog.message), dialog.dismiss())
        )
        found.page.on("pageerror", lambda error: found.errors.append(str(error)))
        found.page.on("console", lambda message: found.console(message.type, message.text))
        found.page.on("response", lambda response: found.answered(response.status, response.url))
        yield found
        context.close()
        assert found.dialogs == [], f"a script ran from injected markup: {found.dialogs}"
        assert found.errors == [], found.errors


def shot(page: Any, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_dashboard_in_a_browser(
    gateway_factory: GatewayFactory, browser: Browser, screenshots: Path
) -> None:
    gateway: RunningGateway = gateway_factory(keepalive_seconds=5.0)
    page = browser.page
    base = gateway.base_url
    expect = sync_api.expect

    # Log in: a wrong key is refused, the admin key opens the overview.
    page.goto(base + "/ui/keys")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("#admin_key", "lr-wrong")
    page.click("button[type=submit]")
    expect(page.locator(".alert")).to_contain_text("not a valid admin key")
    shot(page, screenshots, "dashboard-login")
    assert browser.errors == [f"401 {base}/ui/login"]  # the refused login, as expected
    browser.errors.clear()
    page.fill("#admin_key", gateway.admin_key)
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/ui/keys")

    # Create a key: its secret is shown once, then only its prefix.
    page.click("summary")
    page.fill("input[name=name]", "my-app")
    page.fill("input[name=credits]", "10")
    page.fill("input[name=rpm]", "60")
    page.click("form.grid-form button[type=submit]")
    secret = page.locator("#new-key-secret").inner_text()
    assert secret.startswith("lr-")
    shot(page, screenshots, "dashboard-keys")
    page.click("summary")
    page.fill("input[name=name]", XSS_NAME)
    page.click("form.grid-form button[type=submit]")
    expect(page.locator("#new-key")).to_contain_text(XSS_NAME)  # shown as text, not run
    page.reload()
    expect(page.locator("#new-key")).to_have_count(0)
    assert secret not in page.content()
    expect(page.locator("table.keys")).to_contain_text(secret[:7] + "…")

    # The playground streams through /v1/chat/completions and shows what it cost.
    page.goto(base + "/ui/playground")
    page.select_option("#model", "mock/echo")
    page.fill("#message", XSS_PROMPT)
    page.click("#send")
    echo = page.locator("article.turn.assistant.done").last
    expect(echo.locator(".text")).to_contain_text(XSS_PROMPT)
    expect(echo.locator("dd.cost")).to_contain_text("$")
    page.select_option("#model", "auto")
    page.fill("#message", "Tell me something long.")
    page.click("#send")
    answer = page.locator("article.turn.assistant.done").last
    expect(answer.locator("dd.tokens")).to_contain_text(re.compile(r"\d+ in / \d+ out"))
    expect(answer.locator("dd.resolved-model")).to_have_text("mock/lorem")
    expect(answer.locator("dd.basket")).to_have_text("streaming_fallback")
    expect(answer.locator(".text")).to_contain_text("Lorem")
    request_id = answer.locator("dd.request-id").inner_text()
    assert request_id.startswith("chatcmpl-")
    shot(page, screenshots, "dashboard-playground")

    # The live log shows the requests, and the overview charts count them.
    page.goto(base + "/ui/log")
    expect(page.locator(f"#log-rows tr[data-id='{request_id}']")).to_contain_text("mock/lorem")
    expect(page.locator("#log-rows tr")).to_have_count(2)
    shot(page, screenshots, "dashboard-log")
    page.goto(base + "/ui/?range=1h")
    expect(page.locator("#tile-requests")).to_have_text("2")
    assert page.locator("svg.chart rect.bar").count() >= 1
    assert page.locator("svg.chart polyline.line, svg.chart circle.dot").count() >= 1
    shot(page, screenshots, "dashboard-overview")
    page.goto(base + "/ui/usage")
    expect(page.locator("#usage-requests")).to_have_text("2")
    shot(page, screenshots, "dashboard-usage")

    # Logging out ends the session.
    page.click("header .logout button")
    expect(page).to_have_url(base + "/ui/login")
    page.goto(base + "/ui/keys")
    expect(page).to_have_url(re.compile(r"/ui/login"))
    if screenshots != DOCS_IMAGES:
        shutil.rmtree(screenshots, ignore_errors=True)
