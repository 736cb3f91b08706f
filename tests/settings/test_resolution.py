"""The sizes a base implies, worked out in one place (`resolve_base_settings`), and a base's own preset."""

import pytest

from sdlora.settings import TrainConfig, apply_values, base_preset, preset_path, resolve_base_settings


def test_an_unset_resolution_takes_the_bases_native_size_and_says_so():
    cfg = apply_values(TrainConfig(), {"model.base": "embedded"})
    resolved, notes, native = resolve_base_settings(cfg)
    assert native == 32 and (resolved.data.resolution, resolved.data.min_bucket, resolved.data.max_bucket) == (32, 16, 64)
    assert notes == ["data.resolution: 32 px, the base's native size"]
    assert cfg.data.resolution is None  # the caller's config stays unset, for another base


@pytest.mark.parametrize(("resolution", "warned"), [(32, False), (64, False), (512, True)])
def test_an_explicit_resolution_stays_and_a_far_off_one_is_warned(resolution, warned):
    cfg = apply_values(TrainConfig(), {"model.base": "embedded", "data.resolution": resolution})
    resolved, notes, _ = resolve_base_settings(cfg)
    assert resolved.data.resolution == resolution
    assert any(n.startswith("warning: ") and "native 32 px" in n for n in notes) is warned


def test_a_hub_id_has_no_size_before_it_loads():
    cfg = apply_values(TrainConfig(), {"model.base": "someone/some-model"})
    resolved, notes, native = resolve_base_settings(cfg)
    assert native is None and resolved.data.resolution == 512 and "unknown until it loads" in notes[0]


def test_a_base_with_a_recipe_names_its_preset():
    assert base_preset("embedded") == "embedded" and preset_path("embedded").is_file()
    assert base_preset("some/model.safetensors") is None and base_preset(None) is None
