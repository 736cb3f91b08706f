"""Issue 22 (faults a newcomer met), the handler side: a refused upload no longer poisons "Load data set", a
symlink out of the library is in no list, a damaged file is not offered on Generate, a baked model is in the
Base menu. The browser side is tests/webui/test_webui_e2e_newcomer.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sdlora_webui.tabs import generate_tab, library_tab, train_tab
from sdlora_webui.uploads import UploadError


def test_a_refused_upload_leaves_the_box_and_a_typed_folder_loads(app, tmp_path, monkeypatch):
    uploads = tmp_path / "gradio-uploads"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    bad = uploads / "1234" / "photo.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image at all")
    with pytest.raises(UploadError, match="not a readable image"):
        train_tab.load_dataset(app, "", [str(bad)])
    assert not bad.exists()  # deleted at once (webui.uploads)
    box = train_tab.drop_vanished([str(bad)])  # what the page's failure handler puts back into the box
    assert box is None
    folder, _, rows, _ = train_tab.load_dataset(app, "shapes", box)
    assert Path(folder).name == "shapes" and len(rows) == 3


def test_only_the_vanished_uploads_leave_the_box(tmp_path):
    kept = tmp_path / "kept.png"
    kept.write_bytes(b"x")
    assert train_tab.drop_vanished([str(tmp_path / "gone.png"), str(kept)]) == [str(kept)]


def test_a_symlink_out_of_the_library_is_in_no_list(gen_app, tmp_path):
    outside = tmp_path / "elsewhere" / "outside.safetensors"
    outside.parent.mkdir()
    shutil.copyfile(Path(gen_app.config.lora_dir) / "a.safetensors", outside)
    os.symlink(outside, Path(gen_app.config.lora_dir) / "linked.safetensors")
    rows, cards, names, message = library_tab.refresh(gen_app)
    assert names == ["a", "b"] and len(rows) == len(cards) == 2 and "2 LoRA(s)" in message
    assert "linked" not in generate_tab.library_choices(gen_app)
    with pytest.raises(Exception, match="no LoRA named 'linked'"):
        library_tab.find_entry(gen_app, "linked")


def test_a_damaged_library_file_is_not_offered_on_generate(gen_app):
    (Path(gen_app.config.lora_dir) / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    assert generate_tab.library_choices(gen_app) == ["a", "b"]
    assert "broken.safetensors" in library_tab.refresh(gen_app)[3]  # the Library tab names it


def test_a_baked_model_is_in_the_base_menu(gen_app, tmp_path):
    from tests_webui_models import write_untrained_embedded

    write_untrained_embedded(gen_app.config.bake_dir / "baked")
    labels = [base.value for base in gen_app.bases()]
    assert str(gen_app.config.bake_dir / "baked") in labels


def test_a_user_saves_the_form_as_a_preset_and_uses_it(app):
    """Issue 22 item 15: the form's settings saved as a preset come back from the Preset menu, and Start uses
    them; where things are (base, data set, output folder) is not kept; shipped names are refused."""
    import yaml

    from sdlora.errors import ConfigError

    form = {**train_tab.preset_values(train_tab.DEFAULT_PRESET, base="embedded"), "model.base": "embedded",
            "data.path": "shapes", "preset": train_tab.DEFAULT_PRESET, "lora.rank": 12, "optim.lr": 0.002}
    message, menu = train_tab.save_preset(app, "mine", form)
    path = Path(app.config.output_dir) / "presets" / "mine.yaml"
    assert f"saved the settings as preset 'mine' ({path})" == message and path.is_file()
    assert "mine" in menu.choices[-1] or ("mine", "mine") in menu.choices
    saved = yaml.safe_load(path.read_text())
    assert saved["lora"]["rank"] == 12 and "base" not in saved["model"] and "path" not in saved["data"]
    assert "dir" not in saved["output"]
    user = train_tab.user_presets_dir(app)
    assert "mine" in train_tab.list_presets(user=user)
    values = train_tab.preset_values("mine", base="embedded", user=user)
    assert values["lora.rank"] == 12 and values["optim.lr"] == 0.002
    cfg = train_tab.config_from_form(app, {**values, "model.base": "embedded", "data.path": "shapes",
                                           "preset": "mine"})
    assert cfg.lora.rank == 12 and cfg.optim.scheduler == "cosine"  # the embedded recipe it was saved over
    with pytest.raises(ConfigError, match="'quick' is a shipped preset"):
        train_tab.save_preset(app, "quick", form)
    with pytest.raises(ConfigError, match="type a name"):
        train_tab.save_preset(app, "  ", form)
