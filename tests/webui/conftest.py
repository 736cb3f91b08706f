"""Fixtures for the web UI tests: an AppState over tmp folders and a tiny image data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from webui.state import AppConfig, AppState
from webui.uploads import UploadLimits


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
