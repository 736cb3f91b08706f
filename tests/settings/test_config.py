"""Config: presets load, unknown keys fail with a suggestion, overrides are type-checked."""


import pytest

from sdlora.errors import ConfigError
from sdlora.settings import TrainConfig, dump_config, field_spec, load_config, preset_names, preset_path
from sdlora.settings.presets import presets_dir

PRESETS = sorted(presets_dir().glob("*.yaml"))


def test_presets_exist():
    assert len(PRESETS) >= 3


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_differs_from_defaults(preset):
    cfg = load_config(preset)
    assert isinstance(cfg, TrainConfig)
    assert cfg != TrainConfig(), f"{preset.name} holds no difference from the defaults"


def test_a_preset_is_named_by_its_stem_and_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found inside the package, whatever the working folder
    assert load_config("style") == load_config(preset_path("style"))
    with pytest.raises(ConfigError, match="shipped presets: " + ", ".join(preset_names())):
        load_config("no-such-preset")


def test_unknown_key_in_file_suggests_nearest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rat: 1e-4\n")
    with pytest.raises(ConfigError, match="optim.learning_rat"):
        load_config(path)
    path.write_text("lora:\n  rnak: 4\n")
    with pytest.raises(ConfigError, match="did you mean 'lora.rank'"):
        load_config(path)


def test_unknown_section_suggests_nearest():
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(None, ["optimizer.lr=1"])


def test_override_types_checked():
    cfg = load_config(None, ["optim.lr=1e-4", "data.flip=true", "output.sample_prompts=[a cat, a dog]",
                             "optim.unet_lr=null", "lora.alpha=4"])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.flip is True
    assert cfg.output.sample_prompts == ["a cat", "a dog"]
    assert cfg.lora.alpha == 4.0 and isinstance(cfg.lora.alpha, float)
    # YAML 1.1 would read these as a bool / a number; string fields keep the text
    cfg = load_config(None, ["optim.mixed_precision=no", "data.trigger=1girl", "output.name=2024"])
    assert (cfg.optim.mixed_precision, cfg.data.trigger, cfg.output.name) == ("no", "1girl", "2024")
    with pytest.raises(ConfigError, match="optim.steps: expected int"):
        load_config(None, ["optim.steps=many"])
    with pytest.raises(ConfigError, match="data.flip: expected bool"):
        load_config(None, ["data.flip=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["lr"])


def test_choices_and_ranges_validated():
    with pytest.raises(ConfigError, match="lora.targets.*not one of"):
        load_config(None, ["lora.targets=everything"])
    with pytest.raises(ConfigError, match="caption_dropout"):
        load_config(None, ["data.caption_dropout=1.5"])
    with pytest.raises(ConfigError, match="lora.rank: must be > 0"):
        load_config(None, ["lora.rank=0"])


def test_yaml_no_is_the_string_no_for_choices(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  mixed_precision: no\n")
    assert load_config(path).optim.mixed_precision == "no"


def test_dump_then_load_round_trip(tmp_path):
    cfg = load_config(None, ["lora.rank=16", "data.trigger=zkw", "output.sample_prompts=[x]"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_field_has_help():
    for key in ("optim.lr", "data.keep_tokens", "lora.dora", "model.base", "output.save_every"):
        assert len(field_spec(key).help) > 10


@pytest.mark.parametrize("key", ["lora.rank_dropout", "lora.module_dropout"])
def test_lora_dropouts_must_be_probabilities_below_one(key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + r": must be in \[0, 1\)"):
        load_config(None, [f"{key}=1"])
    assert getattr(load_config(None, [f"{key}=0.25"]).lora, key.split(".")[1]) == 0.25
