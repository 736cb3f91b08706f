"""Captioning: the tagger's thresholds and order, the sentence captioner's wiring, skip/overwrite/backup rules,
cancel and resume, bad model folders, and the `sdlora caption` command."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from sdlora.caption import (
    CaptionOptions,
    TaggerOptions,
    apply_proposals,
    caption_folder,
    load_captioner,
    propose_captions,
)
from sdlora.caption.tagger import WD14Tagger
from sdlora.cli import main
from sdlora.errors import ConfigError


def _captions(folder):
    return {p.stem: p.read_text().strip() for p in sorted(folder.glob("*.txt"))}


def test_tagger_thresholds_order_and_spelling(tagger_dir):
    red = Image.new("RGB", (10, 10), (255, 0, 0))
    tagger = WD14Tagger(tagger_dir)
    # character first, then general tags by falling score; ratings off; short emoticon keeps its underscore
    assert tagger.caption([red]) == ["zqx girl, red hair, o_o, long hair"]
    blue = Image.new("RGB", (8, 8), (0, 0, 255))
    assert tagger.caption([blue]) == ["blue sky, o_o, long hair"]  # the character is below 0.85
    strict = WD14Tagger(tagger_dir, TaggerOptions(general_threshold=0.6, character_threshold=1.0,
                                                  exclude=("long hair", "o_o"), underscores_to_spaces=False,
                                                  rating_tags=True))
    assert strict.caption([red]) == ["zqx_girl, red_hair, general"]


def test_tagger_pads_to_white_square(tagger_dir):
    # a 40x10 black strip padded with white: the mean is mostly white, so red_hair (the red mean) is high
    strip = Image.new("RGB", (40, 10), (0, 0, 0))
    tags = WD14Tagger(tagger_dir, TaggerOptions(general_threshold=0.7)).caption([strip])[0].split(", ")
    assert "red hair" in tags and "blue sky" in tags


def test_tagger_folder_writes_once_then_skips(tagger_dir, bare_data):
    options = CaptionOptions(trigger="zqx style", batch_size=3)
    first = caption_folder(bare_data, load_captioner(tagger_dir), options)
    captions = _captions(bare_data)
    assert len(first.written) == len(list(bare_data.glob("*.png"))) == len(captions) == 8
    assert all(text.startswith("zqx style, ") for text in captions.values())
    mtimes = {p: p.stat().st_mtime_ns for p in bare_data.glob("*.txt")}
    second = caption_folder(bare_data, load_captioner(tagger_dir), options)
    assert second.written == [] and second.skipped == 8
    assert {p: p.stat().st_mtime_ns for p in bare_data.glob("*.txt")} == mtimes


def test_overwrite_keeps_the_old_caption_as_bak(tagger_dir, bare_data):
    (bare_data / "000.txt").write_text("my own words\n")
    result = caption_folder(bare_data, load_captioner(tagger_dir), CaptionOptions(prefix="photo", overwrite=True))
    assert (bare_data / "000.txt.bak").read_text() == "my own words\n"
    assert _captions(bare_data)["000"].startswith("photo, ")
    assert result.backups == [bare_data / "000.txt.bak"]
    # a second overwrite keeps the oldest caption in the .bak
    caption_folder(bare_data, load_captioner(tagger_dir), CaptionOptions(suffix="x", overwrite=True))
    assert (bare_data / "000.txt.bak").read_text() == "my own words\n"


def test_propose_writes_nothing_then_apply_writes(tagger_dir, bare_data):
    result = propose_captions(bare_data, load_captioner(tagger_dir), CaptionOptions(trigger="t"))
    assert len(result.proposals) == 8 and not list(bare_data.glob("*.txt"))
    assert all(p.old is None and p.new.startswith("t, ") for p in result.proposals)
    apply_proposals(result.proposals[:2])
    assert sorted(_captions(bare_data)) == ["000", "001"]


def test_cancel_keeps_finished_batches_and_a_rerun_goes_on(tagger_dir, bare_data):
    cancel = threading.Event()
    seen = []

    def on_progress(progress):
        seen.append(progress.done)
        if progress.done >= 2:
            cancel.set()

    result = caption_folder(bare_data, load_captioner(tagger_dir), CaptionOptions(batch_size=2),
                            on_progress=on_progress, cancel=cancel)
    assert result.cancelled and len(result.written) == 2 and seen == [0, 2]
    rest = caption_folder(bare_data, load_captioner(tagger_dir), CaptionOptions(batch_size=2))
    assert rest.skipped == 2 and len(rest.written) == 6 and len(_captions(bare_data)) == 8


def test_unreadable_image_is_named_and_the_rest_captioned(tagger_dir, bare_data):
    (bare_data / "broken.png").write_bytes(b"not a png")
    result = caption_folder(bare_data, load_captioner(tagger_dir))
    assert [p.name for p, _ in result.failed] == ["broken.png"]
    assert len(result.written) == 8 and not (bare_data / "broken.txt").exists()


def test_sentence_captioner(blip_dir, bare_data):
    captioner = load_captioner(blip_dir)
    assert captioner.kind == "sentence"
    result = caption_folder(bare_data, captioner, CaptionOptions(trigger="zqx style", batch_size=4))
    captions = _captions(bare_data)
    assert len(result.written) == 8 and len(captions) == 8
    assert all(text.startswith("zqx style") and "\n" not in text for text in captions.values())
    # the model's text is what the model says for that image (deterministic, no sampling)
    image = Image.open(bare_data / "003.png").convert("RGB")
    expected = captioner.caption([image])[0]
    assert captions["003"] == ", ".join(part for part in ("zqx style", expected) if part)


@pytest.mark.parametrize("damage", ["garbage_model", "no_tags", "wrong_count", "onnx_alone"])
def test_damaged_tagger_folder_is_a_clear_error(tagger_dir, tmp_path, damage):
    folder = tmp_path / "tagger"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((tagger_dir / "model.onnx").read_bytes())
    tags = (tagger_dir / "selected_tags.csv").read_text()
    if damage == "garbage_model":
        (folder / "model.onnx").write_bytes(b"\x00garbage")
    if damage == "wrong_count":
        tags = "\n".join(tags.splitlines()[:-1]) + "\n"
    if damage not in ("no_tags", "onnx_alone"):
        (folder / "selected_tags.csv").write_text(tags)
    source = folder / "model.onnx" if damage == "onnx_alone" else folder
    with pytest.raises(ConfigError) as err:
        load_captioner(source) if damage != "no_tags" else WD14Tagger(folder)
    assert str(folder) in str(err.value)


def test_missing_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="no such folder"):
        load_captioner(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no captioner"):
        load_captioner("")


def test_cli_caption(tagger_dir, bare_data, capsys):
    assert main(["caption", str(bare_data), "--model", str(tagger_dir), "--trigger", "zqx"]) == 0
    assert "8 captioned" in capsys.readouterr().out
    assert main(["caption", str(bare_data), "--model", str(tagger_dir)]) == 0
    assert "0 captioned, 8 already captioned" in capsys.readouterr().out
    assert main(["caption", str(bare_data), "--model", str(tagger_dir), "--overwrite"]) == 0
    assert len(list(bare_data.glob("*.txt.bak"))) == 8
    assert main(["caption", str(bare_data), "--model", str(tagger_dir), "--general-threshold", "2"]) == 2
    assert "not a probability" in capsys.readouterr().err


def test_sigmoid_applied_to_logits(tagger_dir):
    tagger = WD14Tagger(tagger_dir)
    scores = np.array([0.0, 0.0, 0.9, 0.2, 0.95, 0.0, 0.0])
    assert tagger.select(scores) == ["zqx girl", "red hair"]
