"""A `deputy serve --dev` gateway and Debian's Chromium driven by Playwright, for the console's tests."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from gateway.dev import IDP, DemoIdentities
from gateway.process import serving
from tests.support import free_port

CHROMIUM = "/usr/bin/chromium"  # Debian's (apt-get install chromium): Playwright's own download cannot work here
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
ADMIN = f"{IDP}#admin"
T = TypeVar("T")


@dataclass
class Dev:
    url: str
    identities: DemoIdentities
    http: httpx2.Client


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    directory = tmp_path_factory.mktemp("console")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "XDG_STATE_HOME": str(directory / "state")}
    with serving(["--dev", "--listen", f"127.0.0.1:{port}"], url, log=directory / "serve.log", cwd=directory,
                 env=env), httpx2.Client(base_url=url, timeout=10) as http:
        yield Dev(url, DemoIdentities(directory / ".deputy-dev"), http)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def sign_in(browser: Browser, dev: Dev, user: str = "admin") -> Page:
    """A fresh browser context signed in through the demo IdP's login page as `user`."""
    page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
    page.goto(f"{dev.url}/console")
    page.get_by_role("button", name=f"Sign in as {user}").click()
    return page


@pytest.fixture(scope="module")
def console(browser: Browser, dev: Dev) -> Page:
    page = sign_in(browser, dev)
    page.wait_for_url(f"{dev.url}/console/")
    page.get_by_text(f"signed in as {ADMIN}").wait_for()
    return page


def screenshot(page: Page, view: str) -> None:
    """Saved for docs/admin.md: each view, as the test saw it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"console-{view}.png"), full_page=True)


class Loop:
    """An event loop in a thread: the async verifier runs there while Playwright's sync API runs here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()
