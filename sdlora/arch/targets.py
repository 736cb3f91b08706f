"""Target presets (which modules get LoRA) and matching on a live model. Depends on torch only, and only
for the matching: the presets (`rules_for`) are read by the settings check of `train --dry-run` without it.

Matching semantics, documented once: a target rule is a regular expression searched (``re.search``) in
the module's *live* path inside one component (the diffusers UNet path, or the transformers text-encoder
path), plus a layer kind the module must have:

* ``linear``   an ``nn.Linear``
* ``conv1x1``  an ``nn.Conv2d`` with a 1x1 kernel (SD1.x ``proj_in``/``proj_out``); trained at ``rank``
* ``conv``     an ``nn.Conv2d`` with a larger kernel (resnet 3x3 convs); trained at ``conv_rank``/``conv_alpha``

Paths are matched structurally (``attentions.N.`` is a ``Transformer2DModel`` in every diffusers UNet,
``resnets.N.`` a ``ResnetBlock2D``), never by class-name strings.

Presets (see docs/formats.md §2.2 for the sd-scripts sets):

* ``qv``         UNet attention ``to_q``/``to_v`` + text-encoder ``q_proj``/``v_proj`` (the default)
* ``attn``       all attention projections: ``to_q/k/v``, ``to_out.0``; TE ``q/k/v/out_proj``
* ``sd-scripts`` sd-scripts' "LoRA-LierLa": every Linear and 1x1 conv inside a transformer block
                 (``proj_in/out``, attention, feed-forward); TE attention + MLP
* ``locon``      ``sd-scripts`` + resnet/down/up-sampler convs (3x3 at ``conv_rank``), and, as
                 sd-scripts' "LoRA-C3Lier" does, the resnets' ``time_emb_proj`` linears and 1x1 shortcuts
* ``locon-io``   ``locon`` + the UNet's ``conv_in`` and ``conv_out`` (3x3, at ``conv_rank``): the layers that
                 read and write the latents, where a palette change is cheapest (Kohya keys
                 ``lora_unet_conv_in``/``_conv_out``, which A1111 and ComfyUI map; docs/formats.md §2.2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdlora.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class TargetRule:
    pattern: str          # regex searched in the live module path
    kinds: tuple[str, ...]  # layer kinds accepted: "linear", "conv1x1", "conv"


_UNET_ATTN_QV = TargetRule(r"(^|\.)attn[12]\.to_[qv]$", ("linear",))
_UNET_ATTN = TargetRule(r"(^|\.)attn[12]\.(to_[qkv]|to_out\.0)$", ("linear",))
_UNET_TRANSFORMER = TargetRule(r"(^|\.)attentions\.\d+\.", ("linear", "conv1x1"))
_UNET_RESNET = TargetRule(
    r"(^|\.)(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|downsamplers\.0\.conv|upsamplers\.0\.conv)$",
    ("linear", "conv1x1", "conv"),
)
_UNET_IO = TargetRule(r"^conv_(in|out)$", ("conv", "conv1x1"))
_TE_QV = TargetRule(r"(^|\.)self_attn\.[qv]_proj$", ("linear",))
_TE_ATTN = TargetRule(r"(^|\.)self_attn\.(q|k|v|out)_proj$", ("linear",))
_TE_ATTN_MLP = TargetRule(r"(^|\.)(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$", ("linear",))

# preset -> {"unet": rules, "text_encoder": rules}; SDXL's text_encoder_2 uses the text_encoder rules
PRESETS: dict[str, dict[str, tuple[TargetRule, ...]]] = {
    "qv": {"unet": (_UNET_ATTN_QV,), "text_encoder": (_TE_QV,)},
    "attn": {"unet": (_UNET_ATTN,), "text_encoder": (_TE_ATTN,)},
    "sd-scripts": {"unet": (_UNET_TRANSFORMER,), "text_encoder": (_TE_ATTN_MLP,)},
    "locon": {"unet": (_UNET_TRANSFORMER, _UNET_RESNET), "text_encoder": (_TE_ATTN_MLP,)},
    "locon-io": {"unet": (_UNET_TRANSFORMER, _UNET_RESNET, _UNET_IO), "text_encoder": (_TE_ATTN_MLP,)},
}


def layer_kind(module: nn.Module) -> str | None:
    """'linear', 'conv1x1', 'conv' or None for layers LoRA cannot attach to."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return "conv1x1" if tuple(module.kernel_size) == (1, 1) else "conv"
    return None


def rules_for(preset: str, component: str) -> tuple[TargetRule, ...]:
    if preset not in PRESETS:
        raise ConfigError(f"lora.targets: unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    key = "unet" if component == "unet" else "text_encoder"
    return PRESETS[preset][key]


def match_targets(model: nn.Module, component: str, preset: str) -> list[tuple[str, nn.Module, str]]:
    """Modules of `model` that `preset` targets, as (live_path, module, kind), in model order.

    Args:
        model: a UNet or a text encoder.
        component: "unet", "text_encoder" or "text_encoder_2".
        preset: a key of PRESETS.
    """
    rules = rules_for(preset, component)
    found = []
    for path, module in model.named_modules():
        kind = layer_kind(module)
        if kind is None:
            continue
        if any(kind in rule.kinds and re.search(rule.pattern, path) for rule in rules):
            found.append((path, module, kind))
    return found
