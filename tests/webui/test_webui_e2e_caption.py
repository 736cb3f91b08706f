"""In a real browser: a data set without captions is captioned in the Train tab with a tagger, the captions
show in the editor, are saved, and a 3-step run trains on them."""

from __future__ import annotations

import shutil
import time

import pytest
from e2e_browser import browser_page, serve
from test_webui_e2e import fill, shot
from tests_webui_models import REPO_ROOT, embedded_available, write_untrained_embedded

from tests.caption.tiny_captioners import build_tagger

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from sdlora_webui.state import AppConfig, AppState

    tmp = tmp_path_factory.mktemp("webui-caption")
    models = tmp / "models"
    tagger = build_tagger(models / "wd14")
    base = None if embedded_available() else write_untrained_embedded(models / "untrained")
    data = tmp / "out" / "datasets" / "bare"  # inside the output folder: writable, saved in place
    data.mkdir(parents=True)
    for image in sorted((REPO_ROOT / "sample_data").glob("*.png"))[:6]:
        shutil.copy(image, data / image.name)
    state = AppState(AppConfig(lora_dir=tmp / "loras", output_dir=tmp / "out", base=str(base or "embedded"),
                               model_dirs=(models,)))
    with serve(state) as url:
        yield url, data, tagger
    state.close()


def test_caption_in_the_train_tab_then_train(served):
    url, data, tagger = served
    with browser_page(url) as page:
        page.wait_for_selector("#train-start")
        fill(page, "train-data-path", str(data))
        page.click("#train-load-data")
        page.wait_for_function("document.querySelector('#train-data-summary')?.innerText.includes('6 without')")
        page.locator("#train-caption-panel").get_by_text("Caption images with a model").first.click()
        fill(page, "train-caption-model", str(tagger))
        fill(page, "train-caption-trigger", "zqx style")
        page.click("#train-caption-run")
        page.wait_for_function("document.querySelector('#train-caption-status')?.innerText.includes('6 captions')")
        editor = page.locator("#train-captions").inner_text()
        assert editor.count("zqx style") >= 6, editor
        assert not list(data.glob("*.txt")), "captions were written before Save"
        shot(page, "caption-proposed")
        page.click("#train-save-captions")
        page.wait_for_function("document.querySelector('#train-data-summary')?.innerText.includes('saved 6')")
        assert len(list(data.glob("*.txt"))) == 6
        assert all(p.read_text().startswith("zqx style, ") for p in data.glob("*.txt"))
        fill(page, "train-optim-steps", 3)
        page.click("#train-start")
        deadline, status = time.monotonic() + 300, ""
        while time.monotonic() < deadline and "done" not in status and "failed" not in status:
            status = page.locator("#train-status").inner_text()
            time.sleep(0.3)
        assert "done" in status, status
