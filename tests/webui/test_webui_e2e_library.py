"""Issue 24 in a real browser (headless Chromium + Playwright, as test_webui_e2e.py): a stack of 6 LoRAs (no
slot limit, no repeated ids, prompt and image above the fold, preferred weight, trigger words), a stack
rebuilt from the generated PNG drawing the same image, and two duplicates grouped with one kept.

Screenshots go to test-artifacts/webui/ (git-ignored).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from e2e_browser import browser_page, serve
from test_webui_e2e import fill, shot
from test_webui_e2e_generate import fetch_image, image_src, wait_new_image, wait_status
from tests_webui_models import random_lora

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
NAMES = [f"l{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on the embedded base with six LoRAs (l1 with notes) and a copy of l1 in copies/."""
    from sdlora.base.load import load_components
    from sdlora_webui.state import AppConfig, AppState

    tmp = tmp_path_factory.mktemp("webui-e2e-library")
    loras = tmp / "loras"
    (loras / "copies").mkdir(parents=True)
    unet = load_components("embedded").unet
    for seed, name in enumerate(NAMES, 1):
        random_lora(loras / f"{name}.safetensors", unet, seed=seed, scale=0.5)
    (loras / "l1.json").write_text(json.dumps({"activation text": "zqx, ink wash", "preferred weight": 0.6}))
    shutil.copy(loras / "l1.safetensors", loras / "copies" / "l1-copy.safetensors")
    state = AppState(AppConfig(lora_dir=loras, output_dir=tmp / "out"))
    with serve(state) as url:
        yield url, state
    state.close()


@pytest.fixture(scope="module")
def page(served):
    with browser_page(served[0], height=1000, timeout_ms=120_000) as page:
        page.get_by_role("tab", name="Generate").click()
        page.wait_for_selector("#gen-generate")
        yield page


def add_lora(page, name: str) -> None:
    pick = page.locator("#gen-pick input").first
    pick.click()
    pick.fill(name)
    page.get_by_role("option", name=name, exact=True).click()  # "l1", not "l1-copy"
    page.click("#gen-add")


def slot_name(page, i: int) -> str | None:
    return page.evaluate(f"document.querySelector('#gen-slot-{i}-name textarea, #gen-slot-{i}-name input')?.value")


def test_stack_six_then_rebuild_from_the_png(page, served, tmp_path):
    for i, name in enumerate(NAMES):
        add_lora(page, name)
        page.wait_for_function(f"document.querySelector('#gen-slot-{i}-name textarea, #gen-slot-{i}-name input')"
                               f"?.value === '{name}'")
    assert [slot_name(page, i) for i in range(6)] == NAMES
    ids = page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id).filter(i => i.startsWith('gen-'))")
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    strength = page.locator("#gen-slot-0-strength input[type=number]").first.input_value()
    assert float(strength) == 0.6  # l1's preferred weight
    page.click("#gen-slot-0-word-0")  # a trigger word of l1 goes into the prompt
    page.wait_for_function("document.querySelector('#gen-prompt textarea').value === 'zqx'")
    fill(page, "gen-prompt", "zqx, a red circle")
    fill(page, "gen-negative", "blue")
    fill(page, "gen-seed", 9)
    fill(page, "gen-steps", 3)
    fill(page, "gen-width", 32)
    fill(page, "gen-height", 32)
    fill(page, "gen-slot-2-strength", -0.8)
    page.evaluate("window.scrollTo(0, 0)")
    for element in ("#gen-prompt", "#gen-image", "#gen-generate"):  # above the fold with six LoRAs stacked
        box = page.locator(element).bounding_box()
        assert box["y"] + 40 < 1000, (element, box)
    old = image_src(page)
    page.click("#gen-generate")
    text = wait_status(page, "6 loaded from disk")
    first = fetch_image(page, wait_new_image(page, old))
    shot(page, "24-stack-six")
    assert "1 image(s), seed 9" in text
    parameters = page.locator("#gen-parameters textarea").input_value()
    assert "<lora:l1:0.6> <lora:l2:1> <lora:l3:-0.8>" in parameters, parameters  # the moved slider counted
    png = max(Path(served[1].config.output_dir).rglob("*.png"), key=lambda p: p.stat().st_mtime)

    # another stack and prompt, then "Rebuild from image" with the PNG: everything comes back
    page.click("#gen-slot-5-remove")
    page.wait_for_function("!document.querySelector('#gen-slot-5-name')")
    fill(page, "gen-prompt", "something else")
    fill(page, "gen-seed", 1)
    page.get_by_text("Recipes: rebuild from an image, save, load").click()
    page.locator("#gen-recipe-image input[type=file]").set_input_files(str(png))
    page.wait_for_timeout(1000)
    page.click("#gen-recipe-rebuild")
    wait_status(page, "rebuilt from the image: 6 LoRA(s)")
    page.wait_for_function("document.querySelector('#gen-slot-5-name textarea, #gen-slot-5-name input')"
                           "?.value === 'l6'")
    assert page.locator("#gen-prompt textarea").input_value() == "zqx, a red circle"
    old = image_src(page)
    page.click("#gen-generate")
    wait_status(page, "seed 9")
    again = fetch_image(page, wait_new_image(page, old))
    shot(page, "24-rebuilt")
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_group_two_duplicates_and_keep_one(page, served):
    loras = Path(served[1].config.lora_dir)
    page.get_by_role("tab", name="Library").click()
    page.get_by_role("tab", name="Duplicates").click()
    page.click("#lib-dupes-find")
    page.wait_for_function("document.querySelector('#lib-dupes')?.innerText.includes('l1-copy.safetensors')")
    keep = page.locator("#lib-dupes-keep input").first
    keep.click()
    page.get_by_role("option", name="loras/l1.safetensors").click()
    page.click("#lib-dupes-keep-button")
    page.wait_for_function("document.querySelector('#lib-message')?.innerText.includes('moved 1 LoRA(s)')")
    shot(page, "24-dupes")
    assert (loras / ".trash" / "copies" / "l1-copy.safetensors").is_file() and (loras / "l1.safetensors").is_file()
    page.wait_for_function("!document.querySelector('#lib-dupes')?.innerText.includes('l1-copy')")
