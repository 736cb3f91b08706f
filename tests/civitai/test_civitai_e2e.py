"""In a real browser (Debian's headless Chromium, Playwright) against the fake Civitai: fetch the info of a
library LoRA (the card shows Civitai's name, base model, trigger words and the preview) and download a version
by id into the library. A screenshot goes to test-artifacts/webui/ (git-ignored)."""

from __future__ import annotations

import pytest

from tests.civitai.conftest import WILD
from tests.webui.e2e_browser import ARTIFACTS, browser_page, serve

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def text_of(elem_id: str, words: str) -> str:
    return f"document.querySelector('#{elem_id}')?.innerText.includes({words!r})"


def test_fetch_info_and_download_by_version_id(fake, tmp_path, monkeypatch, lora_bytes):
    from sdlora_webui.state import AppConfig, AppState

    fake.add_version(71, 7, lora_bytes, words=("fancystyle", "glossy"))
    other = (WILD / "lycoris_lokr_sd1_d16_f16.safetensors").read_bytes()
    fake.add_version(72, 8, other, name="ink.safetensors", model_name="Ink Lines", base="SDXL 1.0", words=("inky",))
    monkeypatch.setenv("SDLORA_CIVITAI_URL", fake.url)
    lora_dir = tmp_path / "loras"
    lora_dir.mkdir()
    (lora_dir / "style.safetensors").write_bytes(lora_bytes)
    state = AppState(AppConfig(lora_dir=lora_dir, output_dir=tmp_path / "out"))
    try:
        with serve(state) as url, browser_page(url, height=1400) as page:
            page.get_by_role("tab", name="Library").click()
            page.wait_for_function(text_of("civ-privacy", "SHA-256"))
            menu = page.locator("#lib-pick input").first
            menu.click()
            menu.fill("style")
            page.get_by_role("option", name="style", exact=True).click()
            page.wait_for_function(text_of("civ-card", "no Civitai info yet"))
            page.click("#civ-fetch-one")  # no consent yet: refused, nothing sent
            page.wait_for_function("document.body.innerText.includes('first (asked once)')")
            assert not [p for p in fake.paths() if "by-hash" in p]
            page.locator("#civ-consent input").check()
            page.wait_for_function(text_of("civ-message", "hash lookups allowed"))
            page.click("#civ-fetch-one")
            page.wait_for_function(text_of("civ-card", "Fancy Style"))
            card = page.inner_text("#civ-card")
            assert "SD 1.5" in card and "fancystyle" in card and "glossy" in card
            page.wait_for_function("document.querySelector('#civ-preview img')?.src.includes('style.preview')")
            assert (lora_dir / "style.civitai.info").is_file()
            page.wait_for_function("document.querySelector('#lib-activation textarea')?.value === 'fancystyle, glossy'")

            page.locator("#civ-target textarea").fill("72")
            page.click("#civ-download")
            page.wait_for_function(text_of("civ-queue", "saved SDXL 1.0/ink.safetensors"))
            assert (lora_dir / "SDXL 1.0" / "ink.safetensors").read_bytes() == other
            assert (lora_dir / "SDXL 1.0" / "ink.civitai.info").is_file()
            page.wait_for_function(text_of("lib-message", "2 LoRA(s)"))  # the list took the download in
            page.screenshot(path=str(ARTIFACTS / "civitai-panel.png"), full_page=True)
    finally:
        state.close()
