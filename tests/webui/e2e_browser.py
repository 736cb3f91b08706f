"""What every browser test shares: Debian's headless Chromium driven by Playwright, and the app served on
loopback. Playwright must not download a browser: it launches /usr/bin/chromium (`apt-get install chromium`)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "webui"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium (see .ci/run)")


@contextmanager
def serve(state) -> Iterator[str]:
    """The app over `state`, launched on a free loopback port; yields its URL and closes the app after."""
    from sdlora_webui.app import build_app, launch

    require_chromium()
    demo = build_app(state)
    _, url, _ = launch(demo, state, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    try:
        yield url
    finally:
        demo.close()


@contextmanager
def browser_page(url: str, *, height: int = 1000, timeout_ms: int = 60_000) -> Iterator:
    """A Chromium page on `url` (1400 px wide), closed with its browser after."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            yield page
        finally:
            browser.close()
