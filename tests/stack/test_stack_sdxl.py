"""SDXL layout through the stack: two text encoders and the 3-level UNet's A1111 block names."""

from __future__ import annotations

import pytest
import torch
from stack_helpers import assert_bit_identical, live_modules, random_lora, snapshot

from sdlora.stack import LoraStack
from sdlora.strength import Strength


@pytest.fixture
def sdxl_components():
    """A tiny SDXL-shaped model: 3 down/up levels (the first without attention, the last with two
    transformer layers), text_time conditioning, CLIP-L and CLIP-G-style (projection) text encoders."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32, 32), layers_per_block=2, sample_size=8, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1, 2),
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
        norm_num_groups=8,
    )  # fmt: skip
    config = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 1000, "projection_dim": 32}  # fmt: skip
    return {
        "unet": unet.eval(),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**config)).eval(),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**config)).eval(),
    }


def _attention_linears(live, prefix):
    return [n for n, m in live.items() if n.startswith(prefix) and isinstance(m, torch.nn.Linear)]


def test_sdxl_block_names_and_12_value_vector(sdxl_components):
    """sd-scripts' 12-value SDXL vector is BASE, IN04, IN05, IN07, IN08, MID, OUT00..OUT05; in diffusers
    names IN07/IN08 are down_blocks.2.attentions.0/1 and OUT02 is up_blocks.0.attentions.2."""
    live = live_modules(sdxl_components)
    groups = {
        "BASE": _attention_linears(live, "text_encoder_2.") + _attention_linears(live, "text_encoder."),
        "IN07": _attention_linears(live, "unet.down_blocks.2.attentions.0."),
        "IN08": _attention_linears(live, "unet.down_blocks.2.attentions.1."),
        "OUT02": _attention_linears(live, "unet.up_blocks.0.attentions.2."),
        "OUT03": _attention_linears(live, "unet.up_blocks.1.attentions.0."),
    }
    assert all(groups.values()), {k: len(v) for k, v in groups.items()}
    names = [n for group in groups.values() for n in group]
    before = {n: live[n].weight.detach().double().clone() for n in names}
    full = {}
    stack = LoraStack(sdxl_components)
    assert len(stack.block_names()) == 20 and stack.block_names()[-1] == "OUT08"
    lora = random_lora(sdxl_components, names, seed=5)
    #         BASE IN04 IN05 IN07 IN08 MID  OUT00 OUT01 OUT02 OUT03 OUT04 OUT05
    vector = [0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0, 1.0, 0.25, 2.0, 1.0, 1.0]
    stack.add(lora, Strength(1.0, blocks=",".join(map(str, vector))), name="lbw")
    for n in names:
        m = lora.modules[n]
        full[n] = m.scale * (m.tensors["up"].double() @ m.tensors["down"].double())
    expected_factor = {"BASE": 0.0, "IN07": 0.5, "IN08": 0.0, "OUT02": 0.25, "OUT03": 2.0}
    for block, members in groups.items():
        for n in members:
            got = live[n].weight.detach().double()
            want = before[n] + expected_factor[block] * full[n]
            assert (got - want).abs().max() <= 1e-6, f"{n} ({block})"


def test_sdxl_second_text_encoder_is_patched_and_restored(sdxl_components):
    live = live_modules(sdxl_components)
    names = _attention_linears(live, "text_encoder_2.")[:4] + _attention_linears(live, "unet.down_blocks.1.")[:2]
    before = snapshot(sdxl_components)
    stack = LoraStack(sdxl_components)
    stack.add(random_lora(sdxl_components, names, seed=2), Strength(0.7, te=0.3))
    changed = [n for n in names if not torch.equal(live[n].weight.detach(), before[_state_key(n)])]
    assert changed == names
    stack.clear()
    assert_bit_identical(sdxl_components, before)


def _state_key(canonical: str) -> str:
    """snapshot() key of a canonical module's weight."""
    component, _, path = canonical.partition(".")
    return f"{component}.{path}.weight"
