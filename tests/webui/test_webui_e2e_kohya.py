"""In a real browser: upload a kohya config in the Train tab, and the Advanced settings show its values.

Same setup as test_webui_e2e.py (Debian's headless Chromium over loopback); no training runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_browser import browser_page, serve

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "kohya" / "sd-scripts-train.toml"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture
def served(app):
    with serve(app) as url:
        yield url


def test_an_uploaded_kohya_config_fills_the_advanced_fields(served):
    with browser_page(served) as page:
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
    from sdlora.settings.kohya_import import read_kohya

    imported = read_kohya(FIXTURE)  # the importer's own counts: the test follows new mappings
    assert f"{len(imported.mapped)} keys mapped, {len(imported.ignored)} ignored" in status
    assert scheduler == "cosine_with_restarts" and float(cycles) == 3  # the embedded recipe: cosine, 1 cycle
