"""Issue 22 item 8: a LoRA trained on the embedded model is named family `embedded` in the Library scan and
`inspect` (it was "?" / "unknown (not SD1/SD2/SDXL shaped)"); a LoRA of another custom size stays unknown."""

from __future__ import annotations

import torch

import sdlora
from sdlora.arch.components import canonical_name
from sdlora.arch.family import EMBEDDED_TEXT_WIDTH, describe_family
from sdlora.cli import main
from sdlora.library import read_file_info
from sdlora.weights import LoraModule, LoraState


def _lora_on(unet, path, text_encoder=None):
    modules = {}
    for parts, model in (("unet", unet), ("text_encoder", text_encoder)):
        for live, module in (model.named_modules() if model is not None else []):
            if live.endswith(("attn2.to_k", "attn2.to_v", "self_attn.q_proj", "mlp.fc2")):
                out_f, in_f = module.weight.shape
                modules[canonical_name(parts, live)] = LoraModule(
                    "lora", {"down": torch.randn(2, in_f), "up": torch.zeros(out_f, 2)}, alpha=2.0)
    sdlora.save_lora(LoraState(modules=modules), path)
    return path


def test_the_constant_is_the_embedded_models_width():
    from sdlora.embedded import configs

    assert EMBEDDED_TEXT_WIDTH == configs.TEXT_WIDTH


def test_a_lora_on_the_embedded_model_is_family_embedded(tmp_path, capsys):
    from sdlora.base.load import load_components

    base = load_components("embedded")
    path = _lora_on(base.unet, tmp_path / "style.safetensors", base.text_encoder)
    assert read_file_info(path)["family"] == "embedded"
    assert main(["inspect", str(path)]) == 0
    assert "family:      embedded" in capsys.readouterr().out
    text_only = _lora_on(None, tmp_path / "te.safetensors", base.text_encoder)
    assert read_file_info(text_only)["family"] == "embedded"


def test_a_lora_of_another_custom_size_stays_unknown(tiny_unet, tmp_path):
    path = _lora_on(tiny_unet, tmp_path / "tiny.safetensors")
    assert read_file_info(path)["family"] is None
    shapes = {"lora_unet_x_attn2_to_k.lora_down.weight": (2, 128), "lora_unet_x_attn2_to_v.lora_down.weight": (2, 32)}
    assert describe_family(shapes) is None  # mixed widths: not the embedded model
