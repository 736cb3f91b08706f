"""The field-by-field settings API that forms use: `field_spec` describes a setting, `apply_values` sets typed
values with the checks of the YAML / --set path."""

import pytest

from sdlora.errors import ConfigError
from sdlora.settings import TrainConfig, apply_values, field_keys, field_spec, load_config


@pytest.mark.parametrize(("key", "type_", "kind", "default", "optional"), [
    ("optim.mixed_precision", str, "choice", "no", False),
    ("lora.dora", bool, "bool", False, False),
    ("data.resolution", int, "int", None, True),
    ("optim.lr", float, "float", 1e-4, False),
    ("data.trigger", str, "text", "", False),
    ("output.sample_prompts", list, "list", [], False),
    ("lora.block_dims", list, "list", None, True),
])
def test_a_spec_says_the_type_kind_default_and_whether_unset_is_allowed(key, type_, kind, default, optional):
    spec = field_spec(key)
    assert (spec.key, spec.type, spec.kind, spec.default, spec.optional) == (key, type_, kind, default, optional)


def test_a_spec_carries_the_fields_choices_and_help():
    spec = field_spec("optim.mixed_precision")
    assert spec.choices == ("no", "fp16", "bf16") and "precision" in spec.help
    assert field_spec("optim.lr").choices == ()


def test_every_key_has_a_spec_with_help():
    keys = field_keys()
    assert "model.base" in keys and "output.log_with" in keys and len(keys) == len(set(keys))
    for key in keys:
        spec = field_spec(key)
        assert spec.help and spec.kind in ("choice", "bool", "int", "float", "text", "list"), key


@pytest.mark.parametrize(("key", "message"), [("optim.lrr", "did you mean 'optim.lr'"),
                                               ("optimm.lr", "unknown section 'optimm'")])
def test_an_unknown_key_names_the_nearest_one(key, message):
    with pytest.raises(ConfigError, match=message):
        field_spec(key)
    with pytest.raises(ConfigError, match=message):
        apply_values(TrainConfig(), {key: 1})


def test_apply_values_sets_typed_values_on_a_copy():
    cfg = TrainConfig()
    out = apply_values(cfg, {"lora.rank": 4, "optim.lr": 3, "output.sample_prompts": ["a cat"],
                             "data.resolution": "auto", "optim.optimizer_args": {"d_coef": 2}})
    assert (out.lora.rank, out.optim.lr, out.output.sample_prompts) == (4, 3.0, ["a cat"])
    assert out.data.resolution is None and out.optim.optimizer_args == ["d_coef=2"]
    assert cfg == TrainConfig()  # the caller's config is left as it was


def test_apply_values_agrees_with_the_yaml_path():
    values = {"lora.rank": 16, "data.trigger": "zkw", "optim.mixed_precision": "bf16", "data.flip": True}
    overrides = ["lora.rank=16", "data.trigger=zkw", "optim.mixed_precision=bf16", "data.flip=true"]
    assert apply_values(load_config("style"), values) == load_config("style", overrides)


@pytest.mark.parametrize(("values", "message"), [
    ({"lora.rank": "eight"}, r"^lora\.rank: expected int, got 'eight'$"),
    ({"lora.rank": 2.5}, r"^lora\.rank: expected int"),
    ({"optim.mixed_precision": "fp8"}, r"^optim\.mixed_precision: 'fp8' is not one of no, fp16, bf16$"),
    ({"lora.rank": 0}, r"^lora\.rank: must be > 0, got 0$"),
    ({"data.resolution": 100}, r"^data\.resolution: 100 is not a multiple of 8"),
    ({"output.sample_prompts": "a cat"}, r"^output\.sample_prompts: expected a list"),
])
def test_a_bad_value_raises_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        apply_values(TrainConfig(), values)
