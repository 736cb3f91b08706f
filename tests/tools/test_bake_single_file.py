"""`sdlora bake` to one original-layout (single-file) checkpoint, read back by diffusers and by sdlora."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from safetensors import safe_open
from stack_helpers import assert_bit_identical, pick, random_lora, snapshot

from sdlora.errors import ConfigError
from sdlora.extract import bake
from sdlora.stack import LoraStack

PARTS = ("unet", "vae", "text_encoder")


pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()} for name in PARTS}


def _stacked(pipe, lora_file, strength):
    """What the stack makes of the model (exact mode: bake recomputes from W0 the same way)."""
    stack = LoraStack(pipe, exact=True)
    stack.add(lora_file, strength)
    weights = _weights(pipe)
    stack.clear()
    return weights


def _assert_same(loaded, expected):
    for name in PARTS:
        got = getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(expected[name]), name
        differ = [k for k in expected[name] if not torch.equal(got[k], expected[name][k])]
        assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def test_single_file_bake_reads_back_in_diffusers_and_sdlora(pipe, components, lora_file, tmp_path, caplog):
    from diffusers import StableDiffusionPipeline

    from sdlora.base.load import load_components

    caplog.set_level(logging.ERROR)
    base = _weights(pipe)
    expected = _stacked(pipe, lora_file, 0.7)
    changed = [k for k in expected["unet"] if not torch.equal(expected["unet"][k], base["unet"][k])]
    assert changed and any(not torch.equal(expected["text_encoder"][k], base["text_encoder"][k])
                           for k in base["text_encoder"]), "the LoRA must change UNet and text encoder"
    before = snapshot(components)

    out = bake(pipe, [(str(lora_file), 0.7)], tmp_path / "baked.safetensors")

    assert out == tmp_path / "baked.safetensors" and out.is_file()
    assert_bit_identical(components, before)  # the live model is restored
    with safe_open(str(out), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."))
               for k in keys)
    record = json.loads(meta["sdlora_bake"])
    assert record["family"] == "sd1" and [(e["name"], e["strength"]) for e in record["loras"]] == [("style", 0.7)]
    # the tiny model has no standard SD size, so its configs are written beside the file
    config = tmp_path / "baked.config"
    assert (config / "model_index.json").is_file() and not list(config.rglob("*.safetensors"))

    loaded = StableDiffusionPipeline.from_single_file(str(out), config=str(config), local_files_only=True,
                                                      safety_checker=None, requires_safety_checker=False)
    _assert_same(loaded, expected)
    _assert_same(load_components(str(out)), expected)  # sdlora finds baked.config by itself
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary files left behind"
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask and config.stat().st_mode & 0o777 == 0o777 & ~mask


def test_failed_write_leaves_nothing_and_restores(pipe, components, lora_file, tmp_path, monkeypatch):
    import safetensors.torch

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    before, files = snapshot(components), sorted(tmp_path.iterdir())
    with pytest.raises(OSError, match="disk full"):
        bake(pipe, [(str(lora_file), 0.7)], tmp_path / "baked.safetensors")
    assert_bit_identical(components, before)
    assert sorted(tmp_path.iterdir()) == files  # no file, no config folder, no temporary file


def test_bad_outputs_are_clear(pipe, lora_file, tmp_path):
    existing = tmp_path / "taken.safetensors"
    existing.write_bytes(b"x")
    with pytest.raises(ConfigError, match="taken.safetensors: already exists; give a new file name"):
        bake(pipe, [(str(lora_file), 1.0)], existing)
    with pytest.raises(ConfigError, match="family 'sd3'"):
        bake(pipe, [(str(lora_file), 1.0)], tmp_path / "x.safetensors", family="sd3")
    with pytest.raises(ConfigError, match="dtype 'fp16'.*for a .safetensors output"):
        bake(pipe, [(str(lora_file), 1.0)], tmp_path / "folder", dtype="fp16")
    with pytest.raises(ConfigError, match="dtype 'int8'"):
        bake(pipe, [(str(lora_file), 1.0)], tmp_path / "x.safetensors", dtype="int8")
    (tmp_path / "y.config").mkdir()
    with pytest.raises(ConfigError, match="y.config: already exists"):
        bake(pipe, [(str(lora_file), 1.0)], tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists()


def test_bake_command_writes_a_half_precision_single_file(pipe, lora_file, tmp_path, capsys):
    from sdlora.arch.ldm_keys import models_to_ldm
    from sdlora.cli import main

    base = tmp_path / "base"
    pipe.save_pretrained(base)
    expected = _stacked(pipe, lora_file, 0.5)
    out = tmp_path / "models" / "baked.safetensors"
    assert main(["bake", str(out), "--base", str(base), "--lora", f"{lora_file}:0.5", "--dtype", "fp16"]) == 0
    assert out.is_file() and (out.parent / "baked.config" / "unet" / "config.json").is_file()
    assert f"wrote {out}" in capsys.readouterr().out
    for name in PARTS:  # the file holds the float32 merge cast once to fp16
        getattr(pipe, name).load_state_dict(expected[name])
    want = models_to_ldm(pipe.unet, pipe.vae, pipe.text_encoder)
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == sorted(want)
        assert all(torch.equal(f.get_tensor(k), want[k].half()) for k in want)
        assert json.loads(f.metadata()["sdlora_bake"])["dtype"] == "fp16"


def _meta_components(folder):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlora.configs import models_root

    root = models_root() / folder
    with init_empty_weights():
        return {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")),
                "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")),
                "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))}


def test_only_models_of_the_shipped_sizes_go_without_a_config_folder(components, tiny_vae):
    from sdlora.extract import _bake_family

    sd15 = _meta_components("sd15")
    assert _bake_family(sd15, None) == ("sd1", True)
    assert _bake_family({**sd15, "vae": tiny_vae}, None) == ("sd1", False)
    assert _bake_family({**components, "vae": tiny_vae}, None) == ("sd1", False)  # tiny: no family
    assert _bake_family(_meta_components("sd21"), None) == ("sd2", True)
    with pytest.raises(ConfigError, match="family 'sdxl' given, but the base model is sd1"):
        _bake_family(sd15, "sdxl")


def test_tiny_sdxl_bakes_to_one_file_and_reads_back(tmp_path, caplog):
    """SDXL layout (two text encoders, label_emb, OpenCLIP second encoder) through bake and load_components."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from stack_helpers import tiny_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdlora.base.load import load_components

    caplog.set_level(logging.ERROR)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=96,
        cross_attention_dim=80)
    text = {"intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1000,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
    vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=8)
    pipe = StableDiffusionXLPipeline(
        vae=vae, unet=unet, scheduler=DDIMScheduler(), tokenizer=tiny_tokenizer(tmp_path),
        tokenizer_2=tiny_tokenizer(tmp_path), text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=32, **text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=48, projection_dim=48, **text)))
    parts = {"unet": unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    names = [n for n in pick(parts, "unet", 0) if ".attentions." in n][:4] + pick(parts, "text_encoder_2", 3)
    assert len([n for n in names if n.startswith("text_encoder_2.")]) == 3
    lora = random_lora(parts, names, scale=0.3)
    stack = LoraStack(pipe, exact=True)
    stack.add(lora, 0.6)
    expected = {name: {k: v.clone() for k, v in getattr(pipe, name).state_dict().items()}
                for name in ("unet", "vae", "text_encoder", "text_encoder_2")}
    stack.clear()

    out = bake(pipe, [(lora, 0.6)], tmp_path / "xl.safetensors")
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["sdlora_bake"])["family"] == "sdxl"
        keys = set(f.keys())
    assert "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight" in keys
    loaded = load_components(str(out))  # tiny: configs from xl.config/ beside the file
    assert loaded.is_sdxl
    for name, want in expected.items():
        got = getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want), name
