"""In a real browser: the Tools tab's Resize of a LyCORIS LoKr file shows module progress and finishes,
and Merge works with two of its four slots left empty (issue 22 item 2).

Same setup as test_webui_e2e.py (Debian's headless Chromium over loopback); the LoRAs are the wild
fixtures, copied into the library folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from e2e_browser import browser_page, serve

WILD = Path(__file__).resolve().parents[1] / "fixtures" / "wild_loras"
LOKR, CLONE = "lycoris_lokr_sd1_d4_f16", "cloneofsimo_sd15_r4_f16"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def page(app):
    Path(app.config.lora_dir).mkdir(parents=True, exist_ok=True)
    for stem in (LOKR, CLONE):
        shutil.copy(WILD / f"{stem}.safetensors", Path(app.config.lora_dir) / f"{stem}.safetensors")
    with serve(app) as url, browser_page(url, timeout_ms=240_000) as page:
        page.get_by_role("tab", name="Tools").click()
        yield page


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
