"""Issue 14 in a real browser (headless Chromium + Playwright, as test_webui_e2e.py): the Generate tab's
Base menu, the add-time refusal, a 3x2 strength grid whose cells equal single images, and Interrupt.

Screenshots go to test-artifacts/webui/ (git-ignored).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from e2e_browser import browser_page, serve
from test_webui_e2e import fill, shot
from tests_webui_models import random_lora, write_wide_base

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on the embedded base with a second tiny base in a model folder; yields (url, state, wide)."""
    from sdlora.base.load import load_components
    from sdlora_webui.state import AppConfig, AppState

    tmp = tmp_path_factory.mktemp("webui-e2e-generate")
    wide = write_wide_base(tmp / "models" / "wide")
    (tmp / "loras").mkdir()
    random_lora(tmp / "loras" / "random-shapes.safetensors", load_components("embedded").unet)
    state = AppState(AppConfig(lora_dir=tmp / "loras", output_dir=tmp / "out", model_dirs=(tmp / "models",)))
    with serve(state) as url:
        yield url, state, wide
    state.close()


@pytest.fixture(scope="module")
def page(served):
    with browser_page(served[0], height=1200, timeout_ms=120_000) as page:
        page.get_by_role("tab", name="Generate").click()
        page.wait_for_selector("#gen-generate")
        yield page


def test_grid_interrupt_base_switch(page):
    add_lora(page, "random-shapes")
    wait_status(page, "added random-shapes")
    fill(page, "gen-prompt", "a red circle")
    fill(page, "gen-steps", 3)
    fill(page, "gen-width", 32)
    fill(page, "gen-height", 32)
    grid_cells_equal_single_images(page)
    interrupt_a_long_generation(page)
    switch_base_and_see_the_refusal(page)


def add_lora(page, name: str) -> None:
    pick = page.locator("#gen-pick input").first
    pick.click()
    pick.fill(name)
    page.get_by_role("option", name=name).click()
    page.click("#gen-add")


def status(page) -> str:
    return page.locator("#gen-status").inner_text()


def wait_status(page, text: str, timeout: int = 300_000) -> str:
    page.wait_for_function("t => document.querySelector('#gen-status')?.innerText.includes(t)", arg=text,
                           timeout=timeout)
    return status(page)


def image_src(page) -> str | None:
    img = page.locator("#gen-image img")
    return img.first.get_attribute("src") if img.count() else None


def fetch_image(page, src: str):
    from PIL import Image

    return Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB")


def wait_new_image(page, old: str | None):
    page.wait_for_function(
        "old => { const img = document.querySelector('#gen-image img'); return img && img.src && img.src !== old; }",
        arg=old, timeout=300_000)
    return image_src(page)


def grid_cells_equal_single_images(page) -> None:
    """3 strengths x 2 seeds in one labelled image; each cell equals Generate at that strength and seed."""
    from sdlora.grid import Axis, assemble

    page.get_by_text("Strength grid (X/Y plot)").click()
    fill(page, "gen-grid-x-values", "0, 0.5, 1")
    fill(page, "gen-grid-y-values", "3, 4")
    old = image_src(page)
    page.click("#gen-grid-draw")
    wait_status(page, "grid 3x2")
    sheet = fetch_image(page, wait_new_image(page, old))
    shot(page, "5-grid")
    columns, rows = Axis("random-shapes", (0.0, 0.5, 1.0)), Axis("seed", (3, 4))
    blank = [[_blank() for _ in columns.values] for _ in rows.values]
    _, boxes = assemble(blank, [columns.label(v) for v in columns.values], [rows.label(v) for v in rows.values])
    for i, seed in enumerate(rows.values):
        for j, strength in enumerate(columns.values):
            fill(page, "gen-seed", seed)
            fill(page, "gen-slot-0-strength", strength)
            old = image_src(page)
            page.click("#gen-generate")
            single = fetch_image(page, wait_new_image(page, old))
            x, y = boxes[i][j]
            cell = sheet.crop((x, y, x + single.width, y + single.height))
            assert np.array_equal(np.asarray(cell), np.asarray(single)), (seed, strength)


def _blank():
    from PIL import Image

    return Image.new("RGB", (32, 32))


def interrupt_a_long_generation(page) -> None:
    """A 100-step 256 px image stops at the step the Interrupt click reaches; the previous image stays."""
    fill(page, "gen-steps", 100)
    fill(page, "gen-width", 256)
    fill(page, "gen-height", 256)
    before = image_src(page)
    page.click("#gen-generate")
    wait_status(page, "drawing: step")
    page.click("#gen-interrupt")
    text = wait_status(page, "Interrupted")
    stopped = int(text.split("after step ")[1].split()[0])
    assert stopped < 100, text
    assert image_src(page) == before, "the previous image must stay when a generation is interrupted"
    shot(page, "6-interrupted")
    fill(page, "gen-steps", 3)
    fill(page, "gen-width", 32)
    fill(page, "gen-height", 32)


def see_it_marked_in_the_library(page) -> None:
    """The Library's table says, against the base now chosen, that the LoRA does not fit (headers only)."""
    page.get_by_role("tab", name="Library").click()
    page.click("#lib-refresh")
    page.get_by_role("tab", name="Table").click()
    page.wait_for_function("document.querySelector('#lib-table')?.innerText.includes('needs its own base')")
    shot(page, "7b-library-fits")
    page.get_by_role("tab", name="Generate").click()


def switch_base_and_see_the_refusal(page) -> None:
    """Embedded -> the wide tiny base: the stacked LoRA leaves the stack, and adding it again is refused."""
    menu = page.locator("#gen-base input").first
    menu.click()
    page.get_by_role("option", name="wide (custom size, diffusers)").click()
    text = wait_status(page, "base: wide")
    assert "taken off the stack" in text and "random-shapes" in text, text
    page.wait_for_function("!document.querySelector('#gen-slot-0-name')?.checkVisibility()")
    add_lora(page, "random-shapes")
    toast = page.locator(".toast-body", has_text="does not fit the base wide").first  # errors: as in every tab
    toast.wait_for()
    assert "Switch the Base menu to embedded" in toast.inner_text()
    page.locator(".toast-close").first.click()
    assert page.locator("#gen-generate").is_visible() and page.locator("#gen-base").is_visible()
    shot(page, "7-refused")
    see_it_marked_in_the_library(page)
    old = image_src(page)
    page.click("#gen-generate")  # the new base draws (an empty stack)
    wait_new_image(page, old)
