"""Library tab handlers: listing, details, load report, notes, uploads (size/type/traversal refused)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sdlora.errors import ConfigError, SdloraError
from webui.tabs import library_tab
from webui.uploads import UploadError, UploadLimits


def test_refresh_lists_loras_and_reports_damaged_files(gen_app):
    (Path(gen_app.config.lora_dir) / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    rows, previews, names, message = library_tab.refresh(gen_app)
    assert names == ["a", "b"]
    assert rows[0][0] == "a" and rows[0][2] == 4 and "zqx" in rows[0][4]  # a caption tag: top tags
    assert rows[0][3] == ""  # no modelspec.trigger_phrase: no trigger words
    assert previews == []
    assert "2 LoRA(s)" in message and "broken.safetensors" in message


def test_preview_beside_the_file_is_listed(gen_app):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(Path(gen_app.config.lora_dir) / "a.png")
    _, previews, _, _ = library_tab.refresh(gen_app)
    assert previews == [(str(Path(gen_app.config.lora_dir) / "a.png"), "a")]


def test_details_and_notes_round_trip(gen_app):
    metadata, summary, activation, weight, notes = library_tab.details(gen_app, "a")
    assert metadata["modelspec.title"] == "random test LoRA" and "rank 4" in summary
    assert (activation, weight, notes) == ("", 1.0, "")
    assert "saved" in library_tab.save_notes(gen_app, "a", "zqx style", 0.0, "my notes")
    _, _, activation, weight, notes = library_tab.details(gen_app, "a")
    assert (activation, weight, notes) == ("zqx style", 0.0, "my notes")
    saved = json.loads((Path(gen_app.config.lora_dir) / "a.json").read_text())
    assert saved["activation text"] == "zqx style"
    with pytest.raises(ConfigError):
        library_tab.save_notes(gen_app, "a", "", float("nan"), "")
    with pytest.raises(SdloraError, match="no LoRA named"):
        library_tab.details(gen_app, "../a")


def test_load_report_against_the_current_base(gen_app):
    summary, rows = library_tab.load_report(gen_app, "a")
    assert summary.startswith("OK: ") and rows and all(r[1] == "applied" for r in rows)


def test_upload_lora_goes_into_the_library_under_a_safe_name(gen_app):
    source = Path(gen_app.config.lora_dir) / "a.safetensors"
    staged = Path(gen_app.config.output_dir) / "staged.safetensors"
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(source.read_bytes())

    class Upload:  # what gradio hands a handler: a temp path plus the user's file name
        path, orig_name = str(staged), "../../../evil name.safetensors"

    message = library_tab.upload_lora(gen_app, Upload())
    assert "evil name.safetensors" in message
    assert (Path(gen_app.config.lora_dir) / "evil name.safetensors").is_file()
    assert not (Path(gen_app.config.lora_dir).parent / "evil name.safetensors").exists()


def test_oversized_or_bad_lora_uploads_are_refused(gen_app, tmp_path):
    import dataclasses

    source = Path(gen_app.config.lora_dir) / "a.safetensors"
    gen_app.config = dataclasses.replace(gen_app.config, limits=UploadLimits(lora_bytes=source.stat().st_size - 1))
    with pytest.raises(UploadError, match="limit"):
        library_tab.upload_lora(gen_app, str(source))
    gen_app.config = dataclasses.replace(gen_app.config, limits=UploadLimits())
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04\x95")
    with pytest.raises(UploadError, match="only .safetensors"):
        library_tab.upload_lora(gen_app, str(pickle))
    not_lora = tmp_path / "weights.safetensors"
    header = json.dumps({"model.diffusion_model.x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    not_lora.write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 4)
    with pytest.raises(SdloraError):
        library_tab.upload_lora(gen_app, str(not_lora))
    assert sorted(p.name for p in Path(gen_app.config.lora_dir).glob("*.safetensors")) == ["a.safetensors",
                                                                                          "b.safetensors"]
    with pytest.raises(SdloraError, match="choose"):
        library_tab.upload_lora(gen_app, None)
