"""In a real browser: upload a kohya config in the Train tab, and the Advanced settings show its values.

Same setup as test_webui_e2e.py (Debian's headless Chromium over loopback); no training runs.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kohya" / "sd-scripts-train.toml"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(app):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium (see .ci/run)")
    from sdlora_webui.app import build_app, launch

    demo = build_app(app)
    _, url, _ = launch(demo, app, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    yield url
    demo.close()


def test_an_uploaded_kohya_config_fills_the_advanced_fields(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(served)
        page.wait_for_selector("#train-start")
        page.locator("#train-kohya").get_by_text("Load a kohya config").click()
        page.locator("#train-kohya-upload input[type=file]").set_input_files(str(FIXTURE))
        page.wait_for_function("document.querySelector('#train-kohya-upload')?.innerText.includes('toml')")
        page.click("#train-kohya-load")
        page.wait_for_function("document.querySelector('#train-kohya-status')?.innerText.includes('mapped')")
        status = page.locator("#train-kohya-status").inner_text()
        page.locator("#train-advanced").get_by_text("Advanced settings").first.click()
        scheduler = page.locator("#train-optim-scheduler input").first.input_value()
        cycles = page.locator("#train-optim-lr-cycles input[type=number]").first.input_value()
        browser.close()
    from sdlora.settings.kohya_import import read_kohya

    imported = read_kohya(FIXTURE)  # the importer's own counts: the test follows new mappings
    assert f"{len(imported.mapped)} keys mapped, {len(imported.ignored)} ignored" in status
    assert scheduler == "cosine_with_restarts" and float(cycles) == 3  # the embedded recipe: cosine, 1 cycle
