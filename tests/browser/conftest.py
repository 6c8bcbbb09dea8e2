"""Browser fixtures: the API served from a thread (tests.support.live_api), Debian's Chromium driven
by Playwright for Python (never a downloaded browser), and a page that records what a test must
not see: dialogs (an injected script ran), page errors and Content-Security-Policy violations.

Where /usr/bin/chromium or Playwright is missing the tests skip and say so; CI installs both."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Watched
from tests.support.live_api import LiveApi

CHROMIUM = os.environ.get("MAAS_TEST_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (CI does)")
    pytest.importorskip("playwright", reason="playwright is not installed: pip install -e '.[dev]'")
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@pytest.fixture(scope="module")
def live(settings) -> Iterator[LiveApi]:
    with LiveApi(settings) as live:
        yield live


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def watched(browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    watched = Watched(page)

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: watched.errors.append(str(exc)))
    page.on("console", lambda message: watched.console.append(f"{message.type}: {message.text}"))
    yield watched
    context.close()
    assert watched.dialogs == [], "a dialog opened: some text ran as script"
    assert watched.csp_violations() == [], watched.console
    assert watched.errors == [], watched.errors
