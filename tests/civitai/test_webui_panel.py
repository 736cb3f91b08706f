"""The Library tab's Civitai panel without a browser: consent first, fetch one and all, the card, the download
queue with progress and cancel."""

from __future__ import annotations

import time

import pytest

from sdlora.errors import SdloraError
from sdlora_webui.downloads import DownloadQueue
from sdlora_webui.tabs import civitai_panel
from sdlora_webui.tabs.civitai_panel import card, fetch_all, fetch_one, queue_rows, run_download, set_consent


@pytest.fixture
def app(tmp_path, fake, monkeypatch, lora_bytes):
    from sdlora_webui.state import AppConfig, AppState

    monkeypatch.setenv("SDLORA_CIVITAI_URL", fake.url)
    state = AppState(AppConfig(lora_dir=tmp_path / "loras", output_dir=tmp_path / "out"))
    (tmp_path / "loras" / "style.safetensors").write_bytes(lora_bytes)
    yield state
    state.close()


def wait_for(queue, status, seconds=30):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        jobs = queue.snapshot()
        if jobs and all(job.status in status for job in jobs):
            return jobs
        time.sleep(0.05)
    raise AssertionError(f"downloads did not end: {queue.snapshot()}")


def test_lookups_wait_for_consent_then_fill_the_card(app, fake, lora_bytes):
    fake.add_version(61, 6, lora_bytes, words=("fancystyle",))
    assert "SHA-256" in civitai_panel.privacy_text() and fake.url in civitai_panel.privacy_text()
    with pytest.raises(SdloraError, match="tick"):
        fetch_one(app, "style")
    assert fake.requests == []  # nothing was sent before the consent
    set_consent(True)
    text, preview, message = fetch_one(app, "style")
    assert "Fancy Style" in text and "SD 1.5" in text and "`fancystyle`" in text
    assert preview.endswith("style.preview.png") and message.startswith("style: found")
    assert card(app, "style")[0] == text
    assert "1 skipped" in fetch_all(app)


def test_the_queue_downloads_shows_progress_and_cancels(app, fake, lora_bytes):
    fake.add_version(62, 7, lora_bytes)
    queue = DownloadQueue(lambda job: run_download(app, job))
    queue.submit("62", "{base_model}/")
    assert queue.busy()
    done = wait_for(queue, {"done", "failed"})
    assert not queue.busy()
    assert done[0].status == "done" and done[0].message == "saved SD 1.5/style.safetensors"
    rows = queue_rows(queue)
    assert rows[0][2] == "done" and rows[0][3].endswith(f"/ {len(lora_bytes) / 1e6:.2f} MB")
    fake.script["/signed/62"] = [("stall", 2.0)]
    queue.submit("62", "")
    queue.submit("62", "")
    time.sleep(0.2)
    assert queue.cancel() == 2
    ended = wait_for(queue, {"done", "failed", "cancelled"})
    assert [job.status for job in ended[1:]] == ["cancelled", "cancelled"]
    assert ".part is kept" in ended[1].message and ended[2].message == "cancelled before it started"
    assert queue.finished == 3


def test_a_recipes_missing_loras_are_queued_by_their_hash(app, fake, lora_bytes, tmp_path):
    """Rebuild from an image names a LoRA the library lacks with its short tensor hash (AutoV3 on Civitai);
    "Download missing by hash" asks Civitai for its version and queues it (after the consent, like any lookup)."""
    from sdlora.header import tensor_data_sha256
    from sdlora.recipes import parse_parameters
    from sdlora_webui.tabs import recipe_panel

    short = tensor_data_sha256(tmp_path / "loras" / "style.safetensors")[:12]
    (tmp_path / "loras" / "style.safetensors").unlink()
    fake.add_version(63, 8, lora_bytes)
    fake.by_hash[short] = 63  # Civitai answers AutoV3 hashes too
    recipe = parse_parameters(f'a cat <lora:style:0.8>\nSteps: 2, Sampler: Euler, Seed: 1, Lora hashes: "style: {short}"')
    *_, hashes, status = recipe_panel.apply_recipe(app, recipe, "the image")
    assert hashes == [short] and f"style (hash {short})" in status
    queue = DownloadQueue(lambda job: run_download(app, job))
    with pytest.raises(SdloraError, match="tick"):
        civitai_panel.queue_by_hash(app, queue, hashes)
    set_consent(True)
    message = civitai_panel.queue_by_hash(app, queue, [*hashes, "0123456789ab"])
    done = wait_for(queue, {"done", "failed"})
    assert message.startswith(f"queued 1 download(s) by hash (#1 {short})") and "0123456789ab: " in message
    assert "not on Civitai" in message and done[0].message == "saved SD 1.5/style.safetensors"
    assert [s.name for s in recipe_panel.slots_for(app, recipe)[0]] == ["style"]  # found by hash now
