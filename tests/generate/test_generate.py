"""generate (tiny pipeline), PNG parameters text, bake, and the diffusers cross-check."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image
from stack_helpers import assert_bit_identical, snapshot

from sdlora.errors import ConfigError
from sdlora.generate import GenerateSettings, generate, save_png
from sdlora.stack import LoraStack
from sdlora.strength import Strength


def _tensor_sha(path) -> str:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + n:]).hexdigest()


def _settings(prompt, **kw):
    return GenerateSettings(prompt=prompt, seed=3, steps=2, cfg=5.0, width=16, height=16, **kw)


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_generate_with_prompt_tag_and_parameters(pipe, components, lora_file):
    before = snapshot(components)
    base = generate(pipe, _settings("a cat"))
    settings = _settings("a cat <lora:style:0.8>", negative_prompt="blurry", model_name="tiny")
    result = generate(pipe, settings, library={"style": str(lora_file)})
    again = generate(pipe, settings, library={"style": str(lora_file)})
    assert np.abs(_pixels(result.image) - _pixels(base.image)).max() > 0, "the LoRA must change the image"
    assert np.array_equal(_pixels(result.image), _pixels(again.image)), "same seed, same image"
    short = _tensor_sha(lora_file)[:12]
    lines = result.parameters.split("\n")
    assert lines[0] == "a cat <lora:style:0.8>"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 2, Sampler: DDIM, CFG scale: 5, Seed: 3, Size: 16x16, Model: tiny, ")
    assert f'Lora hashes: "style: {short}"' in lines[2]
    assert_bit_identical(components, before)  # tag LoRAs are for one image only


def test_strength_zero_tag_gives_the_base_image(pipe, lora_file):
    base = generate(pipe, _settings("a dog"))
    zero = generate(pipe, _settings("a dog <lora:style:0>"), library={"style": str(lora_file)})
    assert np.array_equal(_pixels(base.image), _pixels(zero.image))


def test_stacked_lora_is_listed_as_a_tag(pipe, lora_file):
    stack = LoraStack(pipe)
    stack.add(lora_file, Strength(0.5, unet=0.25))
    result = generate(pipe, _settings("a dog"), stack=stack)
    assert result.parameters.split("\n")[0] == "a dog <lora:style:0.5:0.25>"
    assert stack.entries[0].strength == Strength(0.5, unet=0.25)  # still stacked afterwards


def test_png_carries_parameters(pipe, tmp_path):
    result = generate(pipe, _settings("a cat"))
    out = save_png(result.image, tmp_path / "out" / "img.png", result.parameters)
    with Image.open(out) as image:
        assert image.text["parameters"] == result.parameters
    with pytest.raises(ConfigError, match=r"\.png"):
        save_png(result.image, tmp_path / "img.jpg", result.parameters)


@pytest.mark.parametrize("bad, words", [({"width": 20}, "multiple of 8"), ({"steps": 0}, "steps"), ({"seed": -1}, "seed")])
def test_bad_settings_are_clear_errors(pipe, bad, words):
    settings = _settings("a cat")
    for key, value in bad.items():
        setattr(settings, key, value)
    with pytest.raises(ConfigError, match=words):
        generate(pipe, settings)


def test_unknown_tag_lists_close_names(pipe, components, lora_file):
    before = snapshot(components)
    with pytest.raises(ConfigError, match="did you mean style"):
        generate(pipe, _settings("<lora:styel:1>"), library={"style": str(lora_file), "other": str(lora_file)})
    assert_bit_identical(components, before)


def test_bake_writes_merged_weights_and_restores(pipe, components, lora_file, tmp_path):
    from diffusers import UNet2DConditionModel

    from sdlora.extract import bake

    stack = LoraStack(pipe, exact=True)  # bake recomputes from W0, as the exact mode does
    stack.add(lora_file, 0.7)
    expected = {k: v.clone() for k, v in components["unet"].state_dict().items()}
    stack.clear()
    before = snapshot(components)
    out = bake(pipe, [(str(lora_file), 0.7)], tmp_path / "baked")
    assert_bit_identical(components, before)
    baked = UNet2DConditionModel.from_pretrained(out / "unet").state_dict()
    assert all(torch.equal(baked[k], expected[k]) for k in expected)
    assert (out / "sdlora_bake.json").is_file()
    with pytest.raises(ConfigError, match="already exists"):
        bake(pipe, [(str(lora_file), 0.7)], out)


def test_same_unet_output_as_diffusers_fuse_lora(pipe, components, lora_file):
    """Kohya UNet LoRA: sdlora's stack vs diffusers load_lora_weights + fuse_lora. Tolerance: atol 1e-5."""
    from stack_helpers import unet_output

    unet_only = lora_file.with_name("unet_only.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(lora_file), "pt") as f:
        wanted = [k for k in f.keys() if k.startswith("lora_unet_")]  # noqa: SIM118 (safe_open is no dict)
        save_file({k: f.get_tensor(k) for k in wanted}, str(unet_only))
    base_out = unet_output(components)
    stack = LoraStack(pipe)
    stack.add(unet_only, 0.8)
    ours = unet_output(components)
    stack.clear()
    pipe.load_lora_weights(str(unet_only), adapter_name="style")
    pipe.fuse_lora(components=["unet"], lora_scale=0.8, adapter_names=["style"])
    theirs = unet_output(components)
    assert (ours - base_out).abs().max() > 1e-3
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_tag_strength_applies_to_a_stacked_lora_named_in_another_case(pipe, lora_file):
    """Bug (issue 14): <lora:style:0> on a stacked "Style" kept the stacked strength."""
    base = generate(pipe, _settings("a dog"))
    stack = LoraStack(pipe)
    stack.add(lora_file, 1.0, name="Style")
    zero = generate(pipe, _settings("a dog <lora:style:0>"), stack=stack)
    assert np.array_equal(_pixels(base.image), _pixels(zero.image)), "the tag's strength 0 was ignored"
    assert stack.entries[0].strength == Strength(1.0)  # restored after the image


def test_tag_text_encoder_strength_replaces_a_separate_slot_strength(pipe, lora_file):
    """Bug (issue 14): a slot with its own te strength kept it when a tag set the strength."""
    base = generate(pipe, _settings("a dog"))
    stack = LoraStack(pipe)
    stack.add(lora_file, Strength(1.0, te=1.0, unet=1.0), name="style")
    zero = generate(pipe, _settings("a dog <lora:style:0>"), stack=stack)
    assert np.array_equal(_pixels(base.image), _pixels(zero.image)), "the tag's te strength was dropped"
    assert stack.entries[0].strength == Strength(1.0, te=1.0, unet=1.0)  # exact restore


def test_generate_draws_no_bar_of_its_own(pipe, capsys):
    """Progress goes through on_progress only: diffusers' own tqdm bar (a second bar in the CLI) is off."""
    seen = []
    generate(pipe, _settings("a cat"), on_progress=seen.append)
    assert seen and seen[-1].done == seen[-1].total
    assert "it/s" not in capsys.readouterr().err
