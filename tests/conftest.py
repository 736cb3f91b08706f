"""Shared fixtures: offline, seeded, tiny real diffusers/transformers models built in memory.

Configs follow diffusers' own LoRA test models (tests/lora/test_lora_layers_sd.py) and a tiny CLIP
text encoder built offline. Nothing here touches the network; real LoRA files come from tests/fixtures/.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
WILD_LORAS = REPO_ROOT / "tests" / "fixtures" / "wild_loras"


@pytest.fixture(autouse=True)
def _seeded():
    """Seed torch (when a test uses it) so tests are reproducible."""
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    yield
    torch = sys.modules.get("torch")
    if torch is not None and not torch.is_grad_enabled():
        # a test (or library code it called) switched autograd off globally; later training tests would
        # fail far from the cause, so restore it and fail here
        torch.set_grad_enabled(True)
        pytest.fail("autograd was left disabled (torch.set_grad_enabled(False) without restoring it)")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model tests: on a busy 2-core machine two OpenMP threads
    spin-wait for each other (a tiny UNet forward measured 2.8 s with default threads vs 0.06 s with one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def wild_loras() -> Path:
    """Real LoRA files written by other tools (origins and licences: tests/fixtures/README.md)."""
    return WILD_LORAS


def make_tiny_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        attention_head_dim=8,
    )


def make_tiny_vae():
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
    )


def make_tiny_text_encoder():
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=1000,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=32,
    )
    return CLIPTextModel(config).eval()


@pytest.fixture
def tiny_unet():
    return make_tiny_unet()


@pytest.fixture
def tiny_text_encoder():
    return make_tiny_text_encoder()


@pytest.fixture
def tiny_vae():
    return make_tiny_vae()


# The tiny stack / generate / tools fixtures (helpers in tests/stack_helpers.py, which imports torch: it is
# imported inside each fixture so that collecting a test session stays free of torch).


@pytest.fixture
def components(tiny_unet, tiny_text_encoder):
    """{"unet", "text_encoder"}: the tiny real models above, in eval mode."""
    return {"unet": tiny_unet.eval(), "text_encoder": tiny_text_encoder.eval()}


@pytest.fixture
def pipe(components, tiny_vae, tmp_path):
    """A tiny StableDiffusionPipeline around `components` (see stack_helpers.tiny_pipeline)."""
    from stack_helpers import tiny_pipeline

    return tiny_pipeline(components, tiny_vae, tmp_path)


@pytest.fixture
def lora_file(components, tmp_path):
    """A Kohya file with a visible LoRA on every UNet attention linear and four text-encoder linears."""
    from stack_helpers import pick, random_lora

    from sdlora import save_lora

    names = [n for n in pick(components, "unet", 0) if ".attentions." in n] + pick(components, "text_encoder", 4)
    path = tmp_path / "style.safetensors"
    save_lora(random_lora(components, names, scale=0.3), path, format="kohya")
    return path
