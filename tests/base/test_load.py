"""Base-model loading: diffusers folder, refusal paths, single-file detection, shipped tokenizers."""

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tests_train_helpers import save_tiny_pipeline

from sdlora.base.load import checkpoint_layout, load_components
from sdlora.configs import models_root, tokenizers_root
from sdlora.errors import CompatibilityError, ConfigError, FormatError


def test_diffusers_folder_loads_with_family_and_name(tmp_path):
    folder = save_tiny_pipeline(tmp_path / "tiny-sd", tmp_path)
    components = load_components(str(folder))
    # cross-attention width 32 is no SD family (SD1: 768, SD2: 1024, SDXL: text_time conditioning)
    assert components.family is None and components.name == "tiny-sd" and not components.is_sdxl
    assert components.unet.config.cross_attention_dim == 32
    assert components.tokenizer("a b").input_ids[0] == 0  # the tiny tokenizer's <|startoftext|>


def test_broken_folder_is_a_clear_error(tmp_path):
    folder = save_tiny_pipeline(tmp_path / "tiny-sd", tmp_path)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(FormatError, match="tiny-sd: cannot load this diffusers model folder"):
        load_components(str(folder))


def test_pickle_refused_without_flag(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    with pytest.raises(ConfigError, match="--allow-pickle"):
        load_components(str(ckpt))


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.marker),))


def test_allowed_pickle_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    ckpt = tmp_path / "evil.ckpt"
    with ckpt.open("wb") as f:
        pickle.dump({"state_dict": {"x": _Exploit()}}, f)
    with pytest.raises((CompatibilityError, ConfigError)):
        load_components(str(ckpt), allow_pickle=True, family="sd1")
    assert not marker.exists(), "unpickling ran code from the checkpoint"


def test_checkpoint_layout_detection():
    assert checkpoint_layout(["model.diffusion_model.out.2.weight",
                                     "cond_stage_model.transformer.text_model.final_layer_norm.weight"]) == "sd1"
    assert checkpoint_layout(["cond_stage_model.model.ln_final.weight"]) == "sd2"
    assert checkpoint_layout(["conditioner.embedders.1.model.ln_final.weight"]) == "sdxl"
    with pytest.raises(FormatError, match="not a Stable Diffusion checkpoint"):
        checkpoint_layout(["lora_unet_x.lora_down.weight"])


def test_lora_file_as_base_is_refused(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(FormatError, match="not a Stable Diffusion checkpoint"):
        load_components(str(path))


def test_incomplete_single_file_checkpoint_is_refused(tmp_path):
    # detected as SD1 by its keys, loaded through diffusers' from_single_file with sdlora/configs/models/sd15,
    # then refused because the weights are missing (diffusers would otherwise keep random weights)
    path = tmp_path / "partial.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(768)}, str(path))
    with pytest.raises(CompatibilityError, match="partial.safetensors"):
        load_components(str(path))


def test_missing_files_and_unknown_bases_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_components(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="is not 'embedded'"):
        load_components("just-a-word")
    with pytest.raises(ConfigError, match="could not be fetched"):
        load_components("no-such-org/no-such-model")  # HF_HUB_OFFLINE=1: fails without network


def test_shipped_clip_tokenizers_match_clip_ids():
    from transformers import CLIPTokenizer

    root = tokenizers_root()
    clip = CLIPTokenizer.from_pretrained(root / "clip-vit-large-patch14", local_files_only=True)
    openclip = CLIPTokenizer.from_pretrained(root / "open-clip", local_files_only=True)
    # ids of OpenAI CLIP's tokenizer for this prompt (bos 49406, eos 49407)
    assert clip("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(clip) == 49408 and clip.pad_token == "<|endoftext|>"
    assert openclip.pad_token == "!" and openclip.pad_token_id == 0


def test_model_configs_exist_for_each_family():
    for folder in ("sd15", "sd21", "sdxl"):
        assert (models_root() / folder / "model_index.json").is_file()
