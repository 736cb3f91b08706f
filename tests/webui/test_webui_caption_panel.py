"""The Train tab's captioning panel: proposals go into the editor, nothing is written until Save captions,
which keeps replaced captions as .txt.bak; the captioner folder is confined like every typed path."""

from __future__ import annotations

import shutil

import pytest

from sdlora.errors import SdloraError
from sdlora_webui.state import AppConfig, AppState
from sdlora_webui.tabs.caption_panel import propose
from sdlora_webui.tabs.train_tab import load_dataset, save_captions
from tests.caption.tiny_captioners import build_tagger

OPTIONS = {"trigger": "zqx", "prefix": "", "suffix": "", "general": 0.35, "character": 0.85, "overwrite": False}


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return build_tagger(tmp_path_factory.mktemp("models") / "wd14")


@pytest.fixture
def caption_app(tmp_path, tagger):
    models = tmp_path / "models"
    shutil.copytree(tagger, models / "wd14")
    data = tmp_path / "data" / "shapes"
    data.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (16, 16), (40 * i, 100, 200)).save(data / f"img{i}.png")
    (data / "img1.txt").write_text("my own caption\n")
    state = AppState(AppConfig(lora_dir=tmp_path / "loras", output_dir=tmp_path / "out",
                               data_dirs=(data.parent,), model_dirs=(models,)))
    yield state, data, models / "wd14"
    state.close()


def test_proposals_fill_the_editor_and_save_keeps_backups(caption_app):
    app, data, tagger = caption_app
    dataset, _, rows, _ = load_dataset(app, str(data), None)
    new_rows, message = propose(app, dataset, str(tagger), OPTIONS, rows)
    captions = dict(map(tuple, new_rows))
    assert captions["img1.png"] == "my own caption"                       # kept: not overwriting
    assert captions["img0.png"].startswith("zqx, ") and captions["img2.png"].startswith("zqx, ")
    assert "2 captions" in message and "1 images already captioned were kept" in message
    assert not (data / "img0.txt").exists()                              # nothing written yet
    overwrite = propose(app, dataset, str(tagger), {**OPTIONS, "overwrite": True}, new_rows)[0]
    assert dict(map(tuple, overwrite))["img1.png"].startswith("zqx, ")
    saved, _ = save_captions(app, dataset, overwrite)  # the data folder is read-only: saved into a copy
    assert (data / "img1.txt").read_text() == "my own caption\n"
    copy = app.read_path(saved)
    assert (copy / "img1.txt.bak").read_text() == "my own caption\n"
    assert (copy / "img1.txt").read_text().startswith("zqx, ")


def test_captioner_outside_the_folders_is_refused(caption_app, tmp_path_factory, tagger):
    app, data, _ = caption_app
    dataset = load_dataset(app, str(data), None)[0]
    outside = tmp_path_factory.mktemp("elsewhere")
    with pytest.raises(SdloraError):
        propose(app, dataset, str(outside), OPTIONS, [])
    with pytest.raises(SdloraError, match="load a data set first"):
        propose(app, "", str(tagger), OPTIONS, [])
