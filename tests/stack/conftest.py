"""Fixtures for the stack tests (helpers live in stack_helpers.py)."""

from __future__ import annotations

import pytest
from stack_helpers import pick, random_lora, tiny_pipeline

from sdlora import save_lora


@pytest.fixture
def components(tiny_unet, tiny_text_encoder):
    """{"unet", "text_encoder"}: the tiny real models from tests/conftest.py, in eval mode."""
    return {"unet": tiny_unet.eval(), "text_encoder": tiny_text_encoder.eval()}


@pytest.fixture
def pipe(components, tiny_vae, tmp_path):
    """A tiny StableDiffusionPipeline around `components` (see stack_helpers.tiny_pipeline)."""
    return tiny_pipeline(components, tiny_vae, tmp_path)


@pytest.fixture
def lora_file(components, tmp_path):
    """A Kohya file with a visible LoRA on every UNet attention linear and four text-encoder linears."""
    names = [n for n in pick(components, "unet", 0) if ".attentions." in n] + pick(components, "text_encoder", 4)
    path = tmp_path / "style.safetensors"
    save_lora(random_lora(components, names, scale=0.3), path, format="kohya")
    return path
