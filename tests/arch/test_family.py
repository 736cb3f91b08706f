"""Base-family detection from tensor shapes (any dialect), metadata only as a hint, foreign architectures refused."""

from __future__ import annotations

import json
import struct

import pytest

from sdlora.arch.family import detect_family, metadata_hint
from sdlora.errors import FormatError


def header_shapes(path) -> tuple[dict, dict]:
    """{key: shape} and metadata from a safetensors header (read directly, independent of sdlora.header)."""
    with open(path, "rb") as stream:
        (length,) = struct.unpack("<Q", stream.read(8))
        header = json.loads(stream.read(length))
    metadata = header.pop("__metadata__", {}) or {}
    return {key: tuple(value["shape"]) for key, value in header.items()}, metadata


def test_every_wild_lora_is_detected_as_sd1(wild_loras):
    files = sorted(wild_loras.glob("*.safetensors"))
    assert len(files) == 7
    for path in files:
        shapes, metadata = header_shapes(path)
        assert detect_family(shapes, metadata) == "sd1", path.name
        assert detect_family(shapes) == "sd1", path.name  # metadata is not needed


def test_shapes_win_over_lying_metadata(wild_loras):
    shapes, _ = header_shapes(wild_loras / "diffusers_unet_sd15_r4_f32.safetensors")
    lie = {
        "ss_base_model_version": "sdxl_base_v1-0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
    }
    assert metadata_hint(lie) == "sdxl"
    assert detect_family(shapes, lie) == "sd1"


def kohya(name: str, down: tuple[int, ...], up: tuple[int, ...]) -> dict:
    return {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": ()}


@pytest.mark.parametrize(
    ("shapes", "family"),
    [
        # cross-attention width from attn2 to_k (diffusers-style Kohya)
        (
            kohya(
                "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", (4, 1024), (640, 4)
            ),
            "sd2",
        ),
        # SGM names, width 2048
        (kohya("lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v", (8, 2048), (640, 8)), "sdxl"),
        # PEFT-era diffusers
        (
            {
                "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": (4, 768),
                "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": (1280, 4),
            },
            "sd1",
        ),
        # text encoder only: hidden width, te1/te2 names
        (kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", (4, 1024), (1024, 4)), "sd2"),
        (kohya("lora_te_text_model_encoder_layers_0_self_attn_q_proj", (4, 768), (768, 4)), "sd1"),
        (kohya("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", (4, 768), (768, 4)), "sdxl"),
        ({"text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": (4, 1280)}, "sdxl"),
        # LoHa and LoKr: input width from the b factors (LoKr: the product, either factor order)
        (
            {
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_b": (4, 1024),
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.hada_w1_a": (1280, 4),
            },
            "sd2",
        ),
        (
            {
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w1": (8, 16),
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w2_b": (4, 128),
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lokr_w2_a": (160, 4),
            },
            "sdxl",
        ),
        # structure only (no cross-attention, no text encoder): conv-only LoRAs
        (kohya("lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q", (4, 1280), (1280, 4)), "sdxl"),
        ({**kohya("lora_unet_down_blocks_0_attentions_0_proj_in", (4, 320, 1, 1), (320, 4, 1, 1))}, "sd1"),
        ({**kohya("lora_unet_down_blocks_0_attentions_0_proj_in", (4, 320), (320, 4))}, "sd2"),
    ],
)
def test_detect_family_from_shapes(shapes, family):
    assert detect_family(shapes) == family


def test_tiny_sd_shaped_model_is_unknown_even_with_metadata():
    shapes = kohya("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k", (4, 32), (64, 4))
    assert detect_family(shapes, {"ss_base_model_version": "sd_v1"}) is None


def test_metadata_decides_only_without_width_evidence():
    shapes = {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": (4, 320, 3, 3)}
    assert detect_family(shapes) is None
    assert detect_family(shapes, {"ss_v2": "True"}) == "sd2"
    assert detect_family(shapes, {"modelspec.architecture": "stable-diffusion-v1/lora"}) == "sd1"


@pytest.mark.parametrize(
    ("keys", "name"),
    [
        (["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"], "SD3"),
        (["transformer.joint_transformer_blocks.0.attn.to_q.lora_A.weight"], "AuraFlow"),
        (["transformer.adaln_single.linear.lora_A.weight"], "PixArt"),
        (["lora_prior_unet_down_blocks_0_0_attention_attn_to_q.lora_down.weight"], "Stable Cascade"),
        (["transformer.blocks.0.attn1.to_q.lora_A.weight"], "Hunyuan-DiT"),
    ],
)
def test_foreign_architectures_are_refused_by_name(keys, name):
    shapes = {key: (4, 64) for key in keys}
    with pytest.raises(FormatError, match=f"this LoRA is for {name}.*SD1, SD2, SDXL and FLUX.1"):
        detect_family(shapes)


@pytest.mark.parametrize(
    "key",
    [
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
        "transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight",
        "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight",
        "diffusion_model.single_blocks.0.linear1.lora_A.weight",
    ],
)
def test_flux_is_detected_by_its_layer_names(key):
    assert detect_family({key: (4, 64)}) == "flux"


def test_flux_diffusers_keys_without_single_blocks_are_told_by_width():
    assert detect_family({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, 3072)}) == "flux"


@pytest.mark.parametrize(("width", "name"), [(1536, "SD3"), (1152, "PixArt")])
def test_diffusers_dit_is_named_by_its_width(width, name):
    shapes = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": (4, width)}
    with pytest.raises(FormatError, match=f"this LoRA is for {name} "):
        detect_family(shapes)
