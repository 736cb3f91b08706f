"""Independent check: every Kohya name sdlora writes is converted by diffusers' own Kohya/SGM converter to the
same module. diffusers converts by string surgery, sdlora by forward tables, so agreement on every module of
SD1.5, SD2.1 and SDXL (incl. SGM names, resnets, samplers, embeddings, both text encoders) is real evidence.

The two functions are diffusers internals (the ones `load_lora_weights` calls on a Kohya file); if a diffusers
upgrade removes them, this test fails with an ImportError and should be ported to the new names.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from sdlora.arch.family import FAMILIES
from sdlora.arch.naming import kohya_name
from sdlora.arch.tables import config_dir, family_table


def diffusers_module(key: str) -> str:
    """The module part of a key diffusers' converter produced (attention-processor and PEFT spellings)."""
    match = re.match(r"(.*)\.processor\.(to_[qkv]|to_out)_lora\.(down|up)\.weight$", key)
    if match:
        return match.group(1) + "." + ("to_out.0" if match.group(2) == "to_out" else match.group(2))
    match = re.match(r"(.*\.self_attn)\.to_(q|k|v|out)_lora\.(down|up)\.weight$", key)
    if match:
        return f"{match.group(1)}.{match.group(2)}_proj"
    return re.sub(
        r"\.(lora_linear_layer\.(down|up)|lora_A|lora_B|lora\.down|lora\.up)\.weight$|\.alpha$", "", key
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_diffusers_converter_maps_our_kohya_names_to_the_same_modules(family, caplog):
    from diffusers.configuration_utils import FrozenDict
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    caplog.set_level(logging.ERROR)
    unet_config = FrozenDict(json.loads((config_dir(family) / "unet" / "config.json").read_text()))
    disagreements = []
    for canonical in family_table(family):
        name = kohya_name(canonical, family)
        tensors = {
            f"{name}.lora_down.weight": torch.zeros(1, 1),
            f"{name}.lora_up.weight": torch.zeros(1, 1),
            f"{name}.alpha": torch.tensor(1.0),
        }
        tensors = _maybe_map_sgm_blocks_to_diffusers(tensors, unet_config)
        converted, _ = _convert_non_diffusers_lora_to_diffusers(tensors)
        modules = {diffusers_module(key) for key in converted}
        if modules != {canonical}:
            disagreements.append((name, canonical, sorted(modules)))
    assert not disagreements, disagreements[:5]
