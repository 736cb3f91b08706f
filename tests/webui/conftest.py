"""Fixtures for the web UI tests: an AppState over tmp folders and a tiny image data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora_webui.state import AppConfig, AppState
from sdlora_webui.uploads import UploadLimits


def make_dataset(folder: Path, n: int = 3, captions: bool = True) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (40 * i, 100, 200)).save(folder / f"img{i}.png")
        if captions and i > 0:
            (folder / f"img{i}.txt").write_text(f"a square, number {i}\n", encoding="utf-8")
    return folder


@pytest.fixture
def app(tmp_path):
    data = make_dataset(tmp_path / "data" / "shapes")
    state = AppState(AppConfig(lora_dir=tmp_path / "loras", output_dir=tmp_path / "out",
                               data_dirs=(data.parent,), limits=UploadLimits(image_bytes=200_000)))
    yield state
    state.close()


@pytest.fixture
def gen_app(tmp_path):
    """An AppState whose generation pipeline is the embedded architecture with random weights (in memory),
    with two random LoRAs "a" and "b" in the library."""
    from tests_webui_models import embedded_pipeline, random_lora

    pipe = embedded_pipeline(tmp_path / "base")
    state = AppState(AppConfig(lora_dir=tmp_path / "loras", output_dir=tmp_path / "out"),
                     pipeline_factory=lambda base: pipe)
    random_lora(tmp_path / "loras" / "a.safetensors", pipe.unet, seed=1)
    random_lora(tmp_path / "loras" / "b.safetensors", pipe.unet, seed=2)
    yield state
    state.close()
