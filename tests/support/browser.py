"""What the browser tests share: a page with what it logged (dialogs, page errors, console lines,
so CSP violations), screenshots under tests/artifacts/screenshots/, and logging in with a key."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.live_api import LiveApi

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"


@dataclass
class Watched:
    """A page and what it logged."""

    page: Any
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if re.search(r"Content Security Policy|Refused to", m)]

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def log_in(watched: Watched, live: LiveApi, key: str, fragment: str = "") -> None:
    page = watched.page
    page.goto(f"{live.base_url}/ui/{fragment}")
    page.fill("#api-key", key)
    page.click("button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
