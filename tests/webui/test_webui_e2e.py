"""End to end in a real browser: Debian's headless Chromium driven by Playwright over loopback.

Flow (issue 6): train a few steps on the sample data and watch the progress bar and the loss plot
move; add the result and a second LoRA to the stack; generate; move a slider; generate again; the
image changed. Screenshots of every tab go to test-artifacts/webui/ (git-ignored).

Playwright must not download a browser: it launches /usr/bin/chromium (`apt-get install chromium`).
"""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import pytest
from e2e_browser import ARTIFACTS, browser_page, serve
from tests_webui_models import (
    embedded_available,
    random_lora,
    sample_dataset,
    write_untrained_embedded,
)

TRAIN_STEPS = 16

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app over tmp folders, launched on loopback; yields (url, state, base)."""
    from sdlora_webui.state import AppConfig, AppState

    tmp = tmp_path_factory.mktemp("webui-e2e")
    base = None if embedded_available() else write_untrained_embedded(tmp / "models" / "untrained")
    data = sample_dataset(tmp / "data" / "style")
    lora_dir = tmp / "loras"
    lora_dir.mkdir()
    from sdlora.base.load import load_components

    random_lora(lora_dir / "random-shapes.safetensors", load_components(str(base or "embedded")).unet)
    state = AppState(AppConfig(lora_dir=lora_dir, output_dir=tmp / "out", base=str(base) if base else "embedded",
                               data_dirs=(data.parent,), model_dirs=(base,) if base else ()))
    with serve(state) as url:
        yield url, state, data
    state.close()


@pytest.fixture(scope="module")
def page(served):
    with browser_page(served[0]) as page:
        page.wait_for_selector("#train-start")
        yield page


def fill(page, elem_id: str, value) -> None:
    """Type into a gradio Textbox/Number/Slider, or a Dropdown that takes typed values, by its elem_id and
    commit the value."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input[type=number], #{elem_id} input[type=text], "
                       f"#{elem_id} input[role=combobox]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def progress(page) -> tuple[int, int]:
    bar = page.locator("#train-progress")
    return int(bar.get_attribute("value")), int(bar.get_attribute("max"))


def shot(page, name: str) -> Path:
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_train_stack_slider_generate(page, served):
    url, _, data = served
    refuses_outside_paths(page, url)
    train_in_browser(page, data)
    stack_and_generate(page)
    visit_library_and_tools(page)
    upload_images(page, data)


def refuses_outside_paths(page, url: str) -> None:
    """A typed path outside the folders gives a one-line error (no traceback); gradio serves no other file."""
    fill(page, "train-data-path", "../../../../etc")
    page.click("#train-load-data")
    toast = page.locator(".toast-body").first
    toast.wait_for()
    text = toast.inner_text()
    assert "outside the folders" in text and "Traceback" not in text, text
    page.locator(".toast-close").first.click()
    for probe in ("gradio_api/file=/etc/passwd", "gradio_api/file=../../../../etc/passwd"):
        response = page.request.get(url + probe)
        assert response.status >= 400 and "root:" not in response.text(), probe


def train_in_browser(page, data: Path) -> None:
    """Load the data set, set a short run (steps only; every other setting is the web UI's default for the
    embedded base), start; each stage shows before the first step; the progress bar and the loss plot move."""
    fill(page, "train-data-path", str(data))
    page.click("#train-load-data")
    page.wait_for_function("document.querySelector('#train-data-summary')?.innerText.includes('images in')")
    assert page.locator("#train-data-resolution input").input_value() == "32"  # the embedded base's own size
    fill(page, "train-optim-steps", TRAIN_STEPS)
    fill(page, "train-output-name", "e2e-style")
    fill(page, "train-output-sample-every", TRAIN_STEPS // 2)
    page.locator("#train-output-sample-prompts textarea").fill("zqx style, a red circle")
    page.click("#train-start")
    seen, plots, status, before_first = set(), [], "", ""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        step, total = progress(page)
        seen.add(step)
        if step >= 1 and not before_first:
            before_first = page.locator("#train-progress-box").inner_text()
        if 0 < step < total and len(plots) < 2 and (not plots or plots[-1][0] != step):
            plots.append((step, page.locator("#train-loss-plot").screenshot()))
        status = page.locator("#train-status").inner_text()
        if "done" in status or "failed" in status:
            break
        time.sleep(0.3)
    assert "done" in status, status
    for stage in ("scanning images", "loading the base", "caching latents"):  # text: trained, not cached
        assert stage in before_first, f"stage {stage!r} not shown before the first step: {before_first}"
    final = page.locator("#train-loss-plot").screenshot()
    assert progress(page) == (TRAIN_STEPS, TRAIN_STEPS)
    assert any(0 < s < TRAIN_STEPS for s in seen), f"progress never seen between 0 and the end: {sorted(seen)}"
    assert plots and plots[0][1] != final, "the loss plot did not change while training ran"
    page.wait_for_selector("#train-result a")
    assert page.locator("#train-samples img").count() >= 1, "no sample image shown"
    shot(page, "1-train")


def stack_and_generate(page) -> None:
    """Add the result and a second LoRA to the stack, generate, move a slider, generate again."""
    page.click("#train-add-to-stack")
    page.wait_for_function("document.querySelector('#train-status')?.innerText.includes('to the stack')")
    page.get_by_role("tab", name="Generate").click()  # gradio renders a tab's widgets when it is shown
    page.wait_for_function("document.querySelector('#gen-slot-0-name textarea, #gen-slot-0-name input')"
                           "?.value.startsWith('e2e-style')")
    pick = page.locator("#gen-pick input").first
    pick.click()
    pick.fill("random-shapes")
    page.get_by_role("option", name="random-shapes").click()
    page.click("#gen-add")
    page.wait_for_function("document.querySelector('#gen-slot-1-name textarea, #gen-slot-1-name input')"
                           "?.value === 'random-shapes'")
    fill(page, "gen-prompt", "zqx style, a red circle on a blue background")
    fill(page, "gen-steps", 4)
    fill(page, "gen-width", 32)
    fill(page, "gen-height", 32)
    first = generate(page)
    assert "2 loaded from disk" in page.locator("#gen-status").inner_text()
    fill(page, "gen-slot-1-strength", -1.5)
    second = generate(page)
    assert first != second, "the image did not change when the slider moved"
    status = page.locator("#gen-status").inner_text()
    assert "0 loaded from disk" in status and "1 updated in place" in status, status
    assert "Lora hashes" in page.locator("#gen-parameters textarea").input_value()
    shot(page, "3-generate")


def visit_library_and_tools(page) -> None:
    page.get_by_role("tab", name="Library").click()
    page.click("#lib-refresh")
    page.get_by_role("tab", name="Table").click()
    page.wait_for_function("document.querySelector('#lib-table')?.innerText.includes('random-shapes')")
    page.locator("#lib-table").get_by_text("random-shapes", exact=True).locator("visible=true").first.click()
    page.wait_for_function("[...document.querySelectorAll('.prose')].some(e => e.innerText.includes('rank 4'))")
    shot(page, "2-library")
    page.get_by_role("tab", name="Tools").click()
    pick(page, "tools-inspect-src", "random-shapes")
    page.click("#tools-inspect")
    page.wait_for_function("document.querySelector('#tools-inspect-summary')?.innerText.includes('modules')")
    shot(page, "4-tools")


def pick(page, elem_id: str, name: str) -> None:
    """Choose `name` in a gradio Dropdown by its elem_id."""
    menu = page.locator(f"#{elem_id} input").first
    menu.click()
    menu.fill(name)
    page.get_by_role("option", name=name, exact=True).click()


def test_preview_from_a_generated_image_shows_in_the_library(page, served):
    """Generate an image, open a LoRA's card in the Library, use the Generate tab's image as its preview:
    the file is written beside the LoRA (A1111's <stem>.preview.png) and the card and the details show it.
    Search narrows the cards to the LoRA."""
    _, state, _ = served
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-prompt", "a red circle")
    fill(page, "gen-steps", 2)
    fill(page, "gen-width", 32)
    fill(page, "gen-height", 32)
    generated = generate(page)
    page.get_by_role("tab", name="Library").click()
    page.get_by_role("tab", name="Cards").click()
    fill(page, "lib-search", "random-shapes")
    page.wait_for_function("document.querySelector('#lib-message')?.innerText.includes('1 match')")
    page.locator("#lib-cards").get_by_text("random-shapes", exact=False).first.click()
    page.wait_for_function("document.querySelector('#lib-summary')?.innerText.includes('random-shapes')")
    page.click("#lib-use-generated")
    page.wait_for_function("document.querySelector('#lib-message')?.innerText.includes('set the preview')")
    preview = Path(state.config.lora_dir) / "random-shapes.preview.png"
    from PIL import Image

    assert hashlib.sha256(Image.open(preview).convert("RGB").tobytes()).hexdigest() == generated
    page.wait_for_function("document.querySelector('#lib-preview img')?.src.includes('random-shapes.preview')")
    page.wait_for_function(
        "[...document.querySelectorAll('#lib-cards img')].some(i => i.src.includes('random-shapes.preview'))")
    shot(page, "5-library-preview")


def upload_images(page, data: Path) -> None:
    """Uploaded images (and a caption) become a data set under the output folder."""
    page.get_by_role("tab", name="Train").click()
    files = sorted(data.glob("*.png"))[:2] + sorted(data.glob("*.txt"))[:1]
    page.locator("#train-upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_function("document.querySelector('#train-upload')?.innerText.includes('.txt')")
    page.click("#train-load-data")
    page.wait_for_function("document.querySelector('#train-data-summary')?.innerText.includes('2 images in upload-')")


def generate(page) -> str:
    """Click Generate, wait for a new image, return a hash of its pixels."""
    old = page.locator("#gen-image img").first.get_attribute("src") if page.locator("#gen-image img").count() else None
    page.click("#gen-generate")
    page.wait_for_function(
        "old => { const img = document.querySelector('#gen-image img'); return img && img.src && img.src !== old; }",
        arg=old, timeout=300_000)
    src = page.locator("#gen-image img").first.get_attribute("src")
    body = page.request.get(src).body()
    from PIL import Image

    pixels = Image.open(io.BytesIO(body)).convert("RGB").tobytes()
    return hashlib.sha256(pixels).hexdigest()
