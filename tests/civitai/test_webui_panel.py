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
