"""The independent check: a Kohya file written by sdlora, loaded by diffusers' own `load_lora_weights`,
changes the UNet (and text encoder) output exactly as sdlora's delta math predicts.

The expected model is built by hand: W + ΔW (sdlora's `LoraState.delta`) merged into a fresh copy of the
same tiny model. Tolerance: float32 outputs agree to 1e-4 relative to the LoRA's own effect, and the
effect itself is large, so a wrong scale, a transposed factor or a dropped module fails the test.
"""

from __future__ import annotations

import pytest
import torch

from sdlora.arch import naming
from sdlora.arch.tables import table_for_model
from sdlora.formats import load_lora, save_lora
from sdlora.weights import LoraModule, LoraState
from tests.conftest import make_tiny_text_encoder, make_tiny_unet, make_tiny_vae

UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn2.to_k", "attn2.to_v", "attn1.to_out.0", "ff.net.2", "proj_in",
                "time_emb_proj")  # fmt: skip
# LoCon: 3x3 convs of resnets, samplers, conv_in/out, and the time embedding (Linear)
CONV_TARGETS = ("conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "conv_in", "conv_out",
                "time_embedding.linear_1", "proj_out")  # fmt: skip
TE_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.fc1")


def _random_lora(table, targets, generator, uniform: bool) -> dict[str, LoraModule]:
    """Random LoRA on the modules whose names end with `targets`; mixed ranks/alphas unless `uniform`."""
    modules = {}
    for index, (name, info) in enumerate(sorted(table.items())):
        if not name.endswith(targets):
            continue
        rank, alpha = (4, 2.0) if uniform else (2 + index % 3, (2 + index % 3) / 2 + index % 2)
        tail = tuple(info.shape[2:])
        down = torch.randn((rank, info.shape[1], *tail), generator=generator) * 0.3
        up = torch.randn((info.shape[0], rank, *((1,) * len(tail))), generator=generator) * 0.3
        modules[name] = LoraModule("lora", {"down": down, "up": up}, alpha=alpha)
    return modules


def _merge_by_hand(model, lora: LoraState, component: str) -> None:
    with torch.no_grad():
        for name in lora.modules:
            if not name.startswith(component + "."):
                continue
            layer = naming.find_module(model, name)
            layer.weight += lora.delta(name, layer.weight)


def _pipeline(unet, text_encoder):
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=make_tiny_vae(), text_encoder=text_encoder, tokenizer=None, unet=unet, scheduler=DDPMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def _outputs(unet, text_encoder, generator):
    sample = torch.randn((2, 4, 8, 8), generator=generator)
    context = torch.randn((2, 7, 32), generator=generator)
    ids = torch.randint(3, 1000, (2, 7), generator=generator)
    with torch.no_grad():
        return unet(sample, 10, context).sample, text_encoder(ids).last_hidden_state


def _check(fmt: str, modules: dict, tmp_path) -> None:
    """Write with sdlora, load with diffusers, compare with W + ΔW merged by hand."""
    path = tmp_path / f"tiny_{fmt}.safetensors"
    intended = LoraState(modules=modules)  # the expectation comes from the LoRA as built, not as re-read
    save_lora(intended, path, format=fmt)
    lora = load_lora(path, table=table_for_model(_pipeline(make_tiny_unet(), make_tiny_text_encoder())))
    assert sorted(lora.modules) == sorted(modules) and not lora.issues
    for name in modules:
        torch.testing.assert_close(lora.delta(name), intended.delta(name), rtol=0, atol=0)

    pipe = _pipeline(make_tiny_unet(), make_tiny_text_encoder())
    pipe.load_lora_weights(str(path))
    expected_unet, expected_te = make_tiny_unet(), make_tiny_text_encoder()
    _merge_by_hand(expected_unet, intended, "unet")
    _merge_by_hand(expected_te, intended, "text_encoder")

    base = _outputs(make_tiny_unet(), make_tiny_text_encoder(), torch.Generator().manual_seed(2))
    got = _outputs(pipe.unet, pipe.text_encoder, torch.Generator().manual_seed(2))
    want = _outputs(expected_unet, expected_te, torch.Generator().manual_seed(2))
    components = {name.split(".", 1)[0] for name in modules}
    for index, component in enumerate(("unet", "text_encoder")):
        if component not in components:
            continue
        effect = (want[index] - base[index]).abs().max()
        assert effect > 1e-2, (
            f"the LoRA must visibly change the {component} output for the check to mean anything"
        )
        error = (got[index] - want[index]).abs().max()
        assert error <= 1e-4 * effect, (
            f"{component}: diffusers output differs from W + ΔW by {error} (effect {effect})"
        )


@pytest.mark.slow
def test_kohya_file_loaded_by_diffusers_matches_sdlora_delta(tmp_path):
    """UNet attention, feed-forward, 1x1-conv proj_in/proj_out, time_emb_proj, and LoCon 3x3 convs (resnets,
    samplers, conv_in/conv_out), rank 4, alpha 2 (scale 0.5).

    Uniform alpha because diffusers 0.42's Kohya converter loses per-module alphas of attention modules
    (it renames the alpha keys to attention-processor names that then match nothing), and it does not
    load Kohya text-encoder keys into transformers 5 CLIP models; both are diffusers limitations, not
    properties of the file (A1111/ComfyUI read per-module alphas).
    """
    modules = _random_lora(
        table_for_model(make_tiny_unet()), UNET_TARGETS, torch.Generator().manual_seed(1), True
    )
    assert len(modules) > 20
    _check("kohya", modules, tmp_path)


@pytest.mark.slow
def test_diffusers_file_loaded_by_diffusers_matches_sdlora_delta(tmp_path):
    """UNet (incl. 3x3 convs) and text encoder, mixed ranks and alphas (lora_adapter_metadata rank/alpha patterns)."""
    generator = torch.Generator().manual_seed(1)
    modules = _random_lora(table_for_model(make_tiny_unet()), UNET_TARGETS + CONV_TARGETS, generator, False)
    modules |= _random_lora(table_for_model(make_tiny_text_encoder()), TE_TARGETS, generator, False)
    assert len({m.rank for m in modules.values()}) > 1 and len({m.alpha for m in modules.values()}) > 1
    _check("diffusers", modules, tmp_path)
