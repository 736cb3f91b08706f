"""Library tab handlers: listing, details, load report, notes, uploads (size/type/traversal refused)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sdlora.errors import ConfigError, SdloraError
from sdlora_webui.tabs import library_tab
from sdlora_webui.uploads import UploadError, UploadLimits


def test_refresh_lists_loras_and_reports_damaged_files(gen_app):
    (Path(gen_app.config.lora_dir) / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
    rows, cards, names, message = library_tab.refresh(gen_app)
    assert names == ["a", "b"]
    row = dict(zip(library_tab.COLUMNS, rows[0], strict=True))
    assert row["name"] == "a" and row["rank"] == 4 and "zqx" in row["top tags"]  # a caption tag: top tags
    assert row["trigger words"] == ""  # no modelspec.trigger_phrase: no trigger words
    from sdlora.header import tensor_data_sha256

    assert row["hash"] == tensor_data_sha256(Path(gen_app.config.lora_dir) / "a.safetensors")[:12]
    assert row["size"].endswith("KB") and row["date"][:2] == "20"
    placeholder = str(library_tab.no_preview_image(gen_app))
    assert [card[0] for card in cards] == [placeholder, placeholder]  # cards without a thumbnail
    assert cards[0][1].startswith("a · ")
    assert "2 LoRA(s)" in message and "broken.safetensors" in message


def test_preview_beside_the_file_is_on_its_card(gen_app):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(Path(gen_app.config.lora_dir) / "a.png")
    _, cards, _, _ = library_tab.refresh(gen_app)
    assert cards[0][0] == str(Path(gen_app.config.lora_dir) / "a.png")


def test_search_and_sort_the_list(gen_app):
    import os

    lora_dir = Path(gen_app.config.lora_dir)
    os.utime(lora_dir / "a.safetensors", (1_000_000, 1_000_000))
    library_tab.save_notes(gen_app, "b", "", 1.0, "an inkwash style")
    assert library_tab.refresh(gen_app, "", "date")[2] == ["b", "a"]  # newest first
    _, cards, names, message = library_tab.refresh(gen_app, "INKWASH", "name")
    assert names == ["b"] and len(cards) == 1 and "1 match" in message
    assert library_tab.refresh(gen_app, "zqx", "size")[2] == ["a", "b"]  # both trained on zqx, same size


def test_details_belong_to_the_selected_lora_after_a_report(gen_app):
    """Selecting A, asking for its load report, then selecting B shows B only: the report is cleared
    (it once stayed on screen under the next LoRA), and every field is B's."""
    library_tab.save_notes(gen_app, "a", "a words", 0.5, "notes of a")
    shown, _, summary, activation, weight, notes, *_ = library_tab.details(gen_app, "a")
    assert shown == "a" and summary.startswith("**a**") and (activation, weight, notes) == ("a words", 0.5, "notes of a")
    report_summary, report_rows = library_tab.load_report(gen_app, shown)
    assert report_summary.startswith("**a**: OK") and report_rows
    shown, _, summary, activation, weight, notes, preview, report_summary, report_rows, *_ = library_tab.details(
        gen_app, "b")
    assert shown == "b" and summary.startswith("**b**") and "hash `" in summary
    assert (activation, weight, notes, preview) == ("", 1.0, "", None)
    assert (report_summary, report_rows) == ("", [])


def test_pick_change_replaces_the_whole_panel_and_cancels_a_running_report(gen_app):
    from sdlora_webui.app import build_app

    demo = build_app(gen_app)
    fns = {fn.api_name: fn for fn in demo.fns.values() if fn.api_name}
    details, report = fns["library_details"], fns["library_report"]
    outputs = {block._id for block in details.outputs}
    assert {block._id for block in report.outputs} <= outputs  # the report is cleared with the rest
    # gradio adds a cancel function on the same trigger
    assert any(fn.is_cancel_function and report._id in fn.cancels and fn.targets == details.targets
               for fn in demo.fns.values())
    # notes, previews and reports go to the LoRA the panel shows, not to a pick still loading
    shown = details.outputs[0]
    for name in ("library_report", "library_save_notes", "library_set_preview", "library_use_generated",
                 "library_preview_from_sample"):
        assert fns[name].inputs[0] is shown, name


def test_set_preview_from_an_image_a_path_or_the_generate_tab(gen_app):
    from PIL import Image

    lora_dir, out = Path(gen_app.config.lora_dir), Path(gen_app.config.output_dir)
    path, message = library_tab.set_preview_from_image(gen_app, "a", Image.new("RGB", (900, 300), (0, 0, 255)))
    assert Path(path) == lora_dir / "a.preview.png" and "a.preview.png" in message
    with Image.open(path) as written:
        assert written.size == (512, 171)
    _, cards, _, _ = library_tab.refresh(gen_app)
    assert cards[0][0] == path and library_tab.details(gen_app, "a")[6] == path
    sample = out / "run" / "samples" / "step-8.png"
    sample.parent.mkdir(parents=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(sample)
    path, _ = library_tab.set_preview_from_upload_or_path(gen_app, "b", None, "run/samples/step-8.png")
    with Image.open(path) as written:
        assert written.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(SdloraError, match="outside the folders"):
        library_tab.set_preview_from_path(gen_app, "b", "/etc/hostname")
    # training samples are offered in the details, those of a run named after the LoRA first; one click sets
    b_run = out / "runs" / "b-20260101-000000" / "samples" / "step-4.png"
    b_run.parent.mkdir(parents=True)
    Image.new("RGB", (16, 16), (0, 255, 0)).save(b_run)
    newer = out / "runs" / "other-20260102-000000" / "samples" / "step-4.png"
    newer.parent.mkdir(parents=True)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(newer)
    *_, gallery, paths = library_tab.details(gen_app, "b")
    assert paths == [str(b_run), str(newer)] and gallery[0] == (str(b_run), "b-20260101-000000")

    class Click:  # what gradio passes for a click on the second sample
        index = 1

    path, _ = library_tab.preview_from_sample(gen_app, "b", paths, Click())
    with Image.open(path) as written:
        assert written.getpixel((0, 0)) == (9, 9, 9)
    with pytest.raises(SdloraError, match="no image"):
        library_tab.set_preview_from_image(gen_app, "b", None)
    with pytest.raises(SdloraError, match="pick a LoRA"):
        library_tab.set_preview_from_image(gen_app, "", Image.new("RGB", (4, 4)))


def test_details_and_notes_round_trip(gen_app):
    _, metadata, summary, activation, weight, notes, *_ = library_tab.details(gen_app, "a")
    assert metadata["modelspec.title"] == "random test LoRA" and "rank 4" in summary
    assert (activation, weight, notes) == ("", 1.0, "")
    assert "saved" in library_tab.save_notes(gen_app, "a", "zqx style", 0.0, "my notes")
    _, _, _, activation, weight, notes, *_ = library_tab.details(gen_app, "a")
    assert (activation, weight, notes) == ("zqx style", 0.0, "my notes")
    saved = json.loads((Path(gen_app.config.lora_dir) / "a.json").read_text())
    assert saved["activation text"] == "zqx style"
    with pytest.raises(ConfigError):
        library_tab.save_notes(gen_app, "a", "", float("nan"), "")
    with pytest.raises(SdloraError, match="no LoRA named"):
        library_tab.details(gen_app, "../a")


def test_load_report_against_the_current_base(gen_app):
    summary, rows = library_tab.load_report(gen_app, "a")
    assert summary.startswith("**a**: OK: ") and rows and all(r[1] == "applied" for r in rows)


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


def test_each_row_says_whether_the_lora_fits_the_current_base(gen_app):
    import shutil

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "wild_loras" / "lycoris_lokr_sd1_d4_f16.safetensors"
    shutil.copy(fixture, Path(gen_app.config.lora_dir) / "sd15style.safetensors")
    rows, cards, names, _ = library_tab.refresh(gen_app)
    fits = {row[0]: row[library_tab.COLUMNS.index("fits base")] for row in rows}
    assert fits["a"] == "fits" and fits["b"] == "fits"
    assert fits["sd15style"] == gen_app.fit("sd15style").short and fits["sd15style"].startswith("needs")
    caption = cards[names.index("sd15style")][1]
    assert caption.endswith(fits["sd15style"])  # a card that does not fit says so
