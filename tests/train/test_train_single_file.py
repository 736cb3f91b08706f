"""Issue 4: a single-file (original LDM-keyed) checkpoint as the trainer's base, loaded offline.

The checkpoint is written from a tiny diffusers pipeline by sdlora.arch.ldm_keys (whose keys diffusers' own reader
checks in tests/arch/test_ldm_keys.py); `load_components` must give back the source pipeline's weights bit for
bit. A tiny model has no SD1.5 size, so it needs its own configs: `config=` or a `<stem>.config/` folder.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from safetensors.torch import save_file
from tests_train_helpers import save_tiny_pipeline, tiny_config, write_images

from sdlora.arch.ldm_keys import models_to_ldm
from sdlora.base.load import load_components
from sdlora.errors import ConfigError

PARTS = ("unet", "vae", "text_encoder")


@pytest.fixture
def source(tmp_path, caplog):
    """(diffusers pipeline folder, its pipeline, the same model as tiny.safetensors with original keys)."""
    from diffusers import StableDiffusionPipeline

    caplog.set_level(logging.ERROR)
    folder = save_tiny_pipeline(tmp_path / "tiny-sd", tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    path = tmp_path / "ckpt" / "tiny.safetensors"
    path.parent.mkdir()
    save_file(models_to_ldm(pipe.unet, pipe.vae, pipe.text_encoder), str(path))
    return folder, pipe, path


def _assert_same_weights(components, pipe):
    for name in PARTS:
        want, got = getattr(pipe, name).state_dict(), getattr(components, name).state_dict()
        assert sorted(got) == sorted(want), name
        differ = [k for k in want if not torch.equal(want[k], got[k])]
        assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def test_single_file_with_config_argument_gives_the_source_weights(source):
    folder, pipe, path = source
    components = load_components(str(path), config=str(folder))
    _assert_same_weights(components, pipe)
    assert components.name == "tiny.safetensors" and not components.is_sdxl
    assert components.family is None  # no SD1 size: named like the same model loaded from a folder
    assert components.tokenizer("a b").input_ids == pipe.tokenizer("a b").input_ids  # the config's tokenizer


def test_config_folder_beside_the_file_is_used(source):
    folder, pipe, path = source
    shutil.copytree(folder, path.with_suffix(".config"))
    _assert_same_weights(load_components(str(path)), pipe)


def test_without_configs_the_tiny_file_is_refused_clearly(source):
    from sdlora.errors import CompatibilityError

    _, _, path = source
    # the shipped SD1.5 configs do not fit a tiny model: diffusers fails on shapes, sdlora says which file
    with pytest.raises(CompatibilityError, match=r"tiny.safetensors: cannot load as a sd1 checkpoint"):
        load_components(str(path))


def test_bad_config_arguments(source, tmp_path):
    folder, _, path = source
    with pytest.raises(ConfigError, match="no model_index.json"):
        load_components(str(path), config=str(tmp_path))
    with pytest.raises(ConfigError, match="only used for single-file checkpoints"):
        load_components(str(folder), config=str(folder))


def test_training_runs_on_a_single_file_base(source, tmp_path):
    from sdlora.train import train

    folder, _, path = source
    shutil.copytree(folder, path.with_suffix(".config"))
    cfg = tiny_config(write_images(tmp_path / "data", count=2), tmp_path / "out", f"model.base={path}",
                      "optim.steps=1")
    result = train(cfg)
    assert result.steps == 1 and result.files and result.files[0].is_file()
