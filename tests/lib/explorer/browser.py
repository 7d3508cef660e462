"""Headless Chromium for the explorer's browser tests (Debian's chromium, driven by Playwright).

Screenshots go to ``artifacts/explorer/``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

REPO = Path(__file__).resolve().parents[3]
SHOTS = REPO / "artifacts" / "explorer"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@contextmanager
def chromium_page(failure_shot: str) -> Iterator[tuple[Page, list[str]]]:
    """A 1400x1000 page with a 20 s default timeout, and the list its script errors, console
    errors and CSP violations are appended to. On an exception the page is saved as
    ``failure_shot`` under :data:`SHOTS`."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(20_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        try:
            yield page, errors
        except Exception:
            page.screenshot(path=str(SHOTS / failure_shot))
            raise
        finally:
            browser.close()
