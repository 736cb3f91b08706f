"""Header-only compatibility (sdlora.base.fit) and the base list (sdlora.base.listing), on SD1/SD2/SDXL/embedded headers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sdlora.base.fit import CUSTOM, check_fit, read_lora_shape
from sdlora.base.listing import EMBEDDED, describe_base, list_bases
from sdlora.errors import ConfigError

# (block key, context width, output width): one attn2.to_k LoRA module per family
_KOHYA = {
    "sd1": ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 768, 320),
    "sd2": ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 1024, 320),
    "sdxl": ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k", 2048, 640),
    "embedded": ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q", 64, 64),
}
_CKPT = {"sd1": 768, "sd2": 1024, "sdxl": 2048}


def lora_header(tmp_path, kind: str, rank: int = 2):
    key, width, out = _KOHYA[kind]
    path = tmp_path / f"{kind}-lora.safetensors"
    save_file({f"{key}.lora_down.weight": torch.zeros(rank, width, dtype=torch.float16),
               f"{key}.lora_up.weight": torch.zeros(out, rank, dtype=torch.float16),
               f"{key}.alpha": torch.tensor(float(rank))}, path)
    return path


def checkpoint_header(folder, family: str):
    """A "checkpoint" holding one cross-attention key projection: enough for its header to tell the family."""
    path = folder / f"{family}-base.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    save_file({key: torch.zeros(320, _CKPT[family], dtype=torch.float16)}, path)
    return path


def diffusers_folder(folder, cross: int, xl: bool = False):
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    config = {"cross_attention_dim": cross, **({"addition_embed_type": "text_time"} if xl else {})}
    (folder / "unet" / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("kind, family", [("sd1", "sd1"), ("sd2", "sd2"), ("sdxl", "sdxl"), ("embedded", None)])
def test_lora_family_from_the_header(tmp_path, kind, family):
    assert read_lora_shape(lora_header(tmp_path, kind)).family == family


@pytest.mark.parametrize("lora", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("base", ["sd1", "sd2", "sdxl"])
def test_sd_families_fit_only_their_own(tmp_path, lora, base):
    fit = check_fit(lora_header(tmp_path, lora), checkpoint_header(tmp_path / "models", base))
    assert fit.fits == (lora == base)
    assert fit.needs == lora
    if not fit.fits:
        assert fit.short.startswith("needs ") and f"{base}-base.safetensors" in fit.reason, fit.reason


@pytest.mark.parametrize("lora", ["sd1", "sd2", "sdxl"])
def test_sd_loras_do_not_fit_the_embedded_model(tmp_path, lora):
    fit = check_fit(lora_header(tmp_path, lora), EMBEDDED)
    assert not fit.fits and fit.needs == lora and "custom-size" in fit.reason


def test_embedded_lora_fits_embedded_not_sd(tmp_path):
    path = lora_header(tmp_path, "embedded")
    assert check_fit(path, EMBEDDED).fits
    fit = check_fit(path, checkpoint_header(tmp_path / "models", "sd1"))
    assert not fit.fits and fit.needs == CUSTOM and "layer widths" in fit.reason


def test_unreadable_lora_is_a_reason_not_an_exception(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    fit = check_fit(bad, EMBEDDED)
    assert not fit.fits and fit.needs is None and fit.short == "unreadable"


def test_check_reads_no_tensor_data(tmp_path, monkeypatch):
    """Header only: the tensor loader is never called."""
    import sdlora.tensorfile

    monkeypatch.setattr(sdlora.tensorfile, "read_tensors", lambda *a, **k: pytest.fail("tensors were read"))
    assert not check_fit(lora_header(tmp_path, "sdxl"), checkpoint_header(tmp_path / "m", "sd1")).fits


def test_list_bases_finds_folders_and_checkpoints_and_skips_loras(tmp_path):
    models = tmp_path / "models"
    checkpoint_header(models / "sd", "sd1")
    checkpoint_header(models / "xl", "sdxl")
    diffusers_folder(models / "sd2-folder", 1024)
    diffusers_folder(models / "xl-folder", 2048, xl=True)
    lora_header(models, "sd1")  # a LoRA in the model folder is not a base
    (models / "broken.safetensors").write_bytes(b"garbage")
    bases = list_bases([models])
    assert bases[0].value == EMBEDDED
    found = {(b.value.split("/")[-1], b.family, b.kind) for b in bases[1:]}
    assert found == {("sd1-base.safetensors", "sd1", "checkpoint"), ("sdxl-base.safetensors", "sdxl", "checkpoint"),
                     ("sd2-folder", "sd2", "diffusers"), ("xl-folder", "sdxl", "diffusers")}


def test_default_base_comes_first(tmp_path):
    default = checkpoint_header(tmp_path / "m", "sd2")
    bases = list_bases([tmp_path / "m"], default=str(default))
    assert bases[0].family == "sd2" and bases[1].value == EMBEDDED and len(bases) == 2


def test_describe_refuses_a_lora(tmp_path):
    with pytest.raises(ConfigError, match="a LoRA"):
        describe_base(lora_header(tmp_path, "sd1"))
