"""Issue 22 items 6 and 10: a run samples at a few points with prompts from the captions (the embedded recipe
turns it on), and the tag every caption starts with becomes the trigger when data.trigger is unset; the
dry-run says both."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from tests_train_helpers import make_tiny_components, tiny_config, write_images

from sdlora.cli import main
from sdlora.settings.config import load_config
from sdlora.train import train
from sdlora.train.auto_settings import common_leading_tag, fill_from_captions, samples_due

REPO = Path(__file__).resolve().parents[2]


def test_the_common_leading_tag():
    assert common_leading_tag(["zqx style, a cat", "zqx style, a dog", "zqx style"]) == "zqx style"
    assert common_leading_tag(["zqx style, a cat", "a dog, zqx style"]) == ""
    assert common_leading_tag(["zqx style, a cat", ""]) == ""
    assert common_leading_tag(["zqx style, a cat"]) == ""  # one caption: nothing is common


def test_unset_trigger_and_prompts_are_filled_with_notes():
    cfg = load_config(None, ["output.sample_points=4"])
    filled, notes = fill_from_captions(cfg, ["zqx, a red square", "zqx, a blue circle", "zqx, a green star"])
    assert filled.data.trigger == "zqx" and cfg.data.trigger == ""  # a copy; the caller's config unchanged
    assert filled.output.sample_prompts == ["zqx, a blue circle", "zqx, a green star"]
    assert notes[0].startswith("data.trigger: 'zqx', the tag every caption starts with")
    assert notes[1].startswith("output.sample_prompts: 2 of the data set's captions")


def test_set_values_are_kept_and_no_sampling_asks_no_prompts():
    cfg = load_config(None, ["data.trigger=mine", "output.sample_every=5", "output.sample_prompts=[a cat]"])
    filled, notes = fill_from_captions(cfg, ["zqx, a", "zqx, b"])
    assert (filled.data.trigger, filled.output.sample_prompts, notes) == ("mine", ["a cat"], [])
    off, _ = fill_from_captions(load_config(None, []), ["zqx, a", "zqx, b"])
    assert off.output.sample_prompts == []


def test_sample_points_spread_over_the_run_and_end_at_its_end():
    out = load_config(None, ["output.sample_points=4"]).output
    assert [s for s in range(1, 11) if samples_due(out, s, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 601) if samples_due(out, s, 600)] == [150, 300, 450, 600]
    assert not any(samples_due(load_config(None, []).output, s, 10) for s in range(1, 11))


def test_the_embedded_recipe_samples_by_default():
    from sdlora.settings.presets import preset_path

    assert load_config(preset_path("embedded")).output.sample_points == 4


def test_a_run_with_sample_points_draws_caption_samples_and_stores_the_trigger(tmp_path):
    data = write_images(tmp_path / "data", count=2)  # captions "shape N, red, small"
    for i, path in enumerate(sorted(data.glob("*.txt"))):
        path.write_text(f"zqx style, shape {i}", encoding="utf-8")
    seen = []
    cfg = tiny_config(data, tmp_path / "out", "optim.steps=4", "output.sample_points=2", "output.sample_steps=2",
                      "output.sample_size=16")
    result = train(cfg, make_tiny_components(tmp_path), on_step=seen.append)
    assert [bool(info.samples) for info in seen] == [False, True, False, True]
    assert result.config.output.sample_prompts == ["zqx style, shape 0", "zqx style, shape 1"]
    with safe_open(str(result.files[0]), "pt") as handle:
        assert handle.metadata()["modelspec.trigger_phrase"] == "zqx style"


def test_the_dry_run_says_the_trigger_and_prompts_on_sample_data(capsys):
    assert main(["train", "--data", str(REPO / "sample_data"), "--base", "embedded", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "data.trigger: 'zqx style', the tag every caption starts with" in out
    assert "output.sample_prompts: 2 of the data set's captions (zqx style, " in out
    assert "trigger: zqx style" in out  # in the resolved config too
