"""In a real browser: the Tools tab's Resize of a LyCORIS LoKr file shows module progress and finishes,
and Merge works with two of its four slots left empty (issue 22 item 2).

Same setup as test_webui_e2e.py (Debian's headless Chromium over loopback); the LoRAs are the wild
fixtures, copied into the library folder.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
WILD = Path(__file__).resolve().parents[1] / "fixtures" / "wild_loras"
LOKR, CLONE = "lycoris_lokr_sd1_d4_f16", "cloneofsimo_sd15_r4_f16"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def page(app):
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: apt-get install -y chromium (see .ci/run)")
    from playwright.sync_api import sync_playwright

    from sdlora_webui.app import build_app, launch

    Path(app.config.lora_dir).mkdir(parents=True, exist_ok=True)
    for stem in (LOKR, CLONE):
        shutil.copy(WILD / f"{stem}.safetensors", Path(app.config.lora_dir) / f"{stem}.safetensors")
    demo = build_app(app)
    _, url, _ = launch(demo, app, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(240_000)
        page.goto(url)
        page.get_by_role("tab", name="Tools").click()
        yield page
        browser.close()
    demo.close()


def pick(page, elem_id: str, name: str) -> None:
    menu = page.locator(f"#{elem_id} input").first
    menu.click()
    menu.fill(name)
    page.locator(f"#{elem_id}").get_by_role("option", name=name, exact=True).click()


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number], #{elem_id} textarea, #{elem_id} input[type=text]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def text_of(elem_id: str) -> str:
    return f"document.querySelector('#{elem_id}')?.innerText || ''"


def test_resize_of_a_lokr_file_shows_module_progress_and_finishes(page, app):
    page.get_by_role("tab", name="Resize").click()
    pick(page, "tools-resize-src", LOKR)
    fill(page, "tools-resize-rank", 4)
    page.click("#tools-resize")
    page.wait_for_function(f"({text_of('tools-message')}).includes('added')")
    progress = page.locator("#tools-progress").inner_text()
    assert "resize: module 350/350" in progress and "done in" in progress, progress
    written = sorted(p.stem for p in Path(app.config.lora_dir).glob("*.safetensors"))
    assert f"{LOKR}-resized" in written


def test_merge_with_two_empty_slots(page, app):
    page.get_by_role("tab", name="Merge").click()
    pick(page, "tools-merge-0", LOKR)
    pick(page, "tools-merge-1", CLONE)
    fill(page, "tools-merge-rank", 4)
    page.click("#tools-merge")
    page.wait_for_function(f"({text_of('tools-message')}).includes('merged 2 LoRAs')")
    assert "merge: module" in page.locator("#tools-progress").inner_text()
    assert (Path(app.config.lora_dir) / "merged.safetensors").is_file()
