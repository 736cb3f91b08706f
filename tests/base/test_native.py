"""The default image side of a base model (sdlora.base.native): UNet sample_size x VAE scale factor, from the
loaded model (`sdlora generate`) or from its config files alone (the web UI and the trainer, before loading)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import save_file

from sdlora.base.native import native_resolution, native_resolution_of, size_from_configs
from sdlora.configs import models_root
from sdlora.embedded import IMAGE_SIZE, weights_dir
from sdlora.errors import ConfigError

# the key the header-only family detection reads: SDXL's cross-attention takes 2048-wide context
SDXL_TO_K = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize(("folder", "size"), [("sd15", 512), ("sd21", 768), ("sdxl", 1024)])
def test_shipped_configs(folder, size):
    assert native_resolution(str(models_root() / folder)) == size


def test_embedded_is_32_by_name_and_by_default():
    assert native_resolution("embedded") == IMAGE_SIZE == 32


def test_a_loaded_pipeline_agrees_with_diffusers(pipe):
    assert native_resolution_of(pipe) == pipe.unet.config.sample_size * pipe.vae_scale_factor == 16


def test_size_from_configs_counts_vae_levels():
    assert size_from_configs({"sample_size": 64}, {"block_out_channels": [128, 256, 512, 512]}) == 512
    assert size_from_configs({"sample_size": [96, 64]}, {"block_out_channels": [1, 2]}) == 192


@pytest.fixture
def sdxl_checkpoint(tmp_path):
    """A single file whose header says SDXL (one cross-attention key; no full model needed)."""
    path = tmp_path / "xl.safetensors"
    save_file({SDXL_TO_K: np.zeros((640, 2048), dtype=np.float16)}, str(path))
    return path


def test_single_file_uses_the_shipped_config_of_its_family(sdxl_checkpoint):
    assert native_resolution(str(sdxl_checkpoint)) == 1024


def test_single_file_with_its_own_config_folder(sdxl_checkpoint):
    beside = sdxl_checkpoint.with_suffix(".config")
    for part in ("model_index.json", "unet/config.json", "vae/config.json"):
        (beside / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(weights_dir() / part, beside / part)
    assert native_resolution(str(sdxl_checkpoint)) == IMAGE_SIZE


def test_unknown_until_loaded(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"PK\x03\x04")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 16)  # damaged: loading it says what is wrong
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "unet").mkdir()
    (tmp_path / "half" / "unet" / "config.json").write_text(json.dumps({"sample_size": 64}))  # no vae/
    for base in ("org/model", str(tmp_path / "model.ckpt"), str(bad), str(tmp_path / "half")):
        assert native_resolution(base) is None, base


def test_a_missing_checkpoint_is_a_typed_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        native_resolution(str(tmp_path / "missing.safetensors"))


def test_cli_and_config_reading_agree(components, tiny_vae, tmp_path):
    """`sdlora generate` without --width/--height draws at the size the web UI shows for the same base."""
    from PIL import Image
    from stack_helpers import tiny_pipeline

    from sdlora.cli import main

    base = tmp_path / "base"
    tiny_pipeline(components, tiny_vae, tmp_path).save_pretrained(base)
    png = tmp_path / "img.png"
    assert main(["generate", "--base", str(base), "--prompt", "a cat", "--steps", "1", "--out", str(png)]) == 0
    with Image.open(png) as image:
        assert image.size == (native_resolution(str(base)),) * 2 == (16, 16)
