"""The browser tests' Chromium (Debian's, driven by Playwright) and a fresh page per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from browser_harness import CHROMIUM


@pytest.fixture(scope="module")
def viewport() -> dict[str, int]:
    return {"width": 1280, "height": 1000}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, viewport: dict[str, int]) -> Iterator[object]:
    context = browser.new_context(viewport=viewport)  # type: ignore[attr-defined]
    page = context.new_page()
    yield page
    context.close()
