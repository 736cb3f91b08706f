"""Model components and canonical module names. Standard library only.

Canonical module names are component-qualified paths (docs/ARCHITECTURE.md):
`unet.<diffusers path>`, `transformer.<diffusers path>` (FLUX.1), `text_encoder.<HF path with text_model.>`,
`text_encoder_2.<HF path with text_model.>`.
transformers 5's `CLIPTextModel` has no `text_model.` level, while `CLIPTextModelWithProjection` and every
file keep it; `canonical_name` maps live paths of both layouts onto the canonical form.
"""

from __future__ import annotations

import sys

from sdlora.errors import CompatibilityError, ConfigError

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")
TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")

# children of transformers' CLIPTextTransformer: a live path starting with one of them lacks `text_model.`
_CLIP_TRANSFORMER_CHILDREN = frozenset({"embeddings", "encoder", "final_layer_norm"})


def split_name(canonical: str) -> tuple[str, str]:
    """("unet", "down_blocks.0...") from "unet.down_blocks.0..."; raises ValueError without a component."""
    component, _, path = canonical.partition(".")
    if component not in COMPONENTS:
        raise ValueError(
            f"{canonical!r} is not a canonical module name (it must start with one of {COMPONENTS})"
        )
    return component, path


def canonical_name(component: str, live_path: str) -> str:
    """The canonical name of module `live_path` of a live `component` (transformers 4 and 5 layouts).

    >>> canonical_name("text_encoder", "encoder.layers.0.self_attn.q_proj")   # transformers 5 CLIPTextModel
    'text_encoder.text_model.encoder.layers.0.self_attn.q_proj'
    """
    if component in TEXT_COMPONENTS and live_path.split(".", 1)[0] in _CLIP_TRANSFORMER_CHILDREN:
        live_path = "text_model." + live_path
    return f"{component}.{live_path}" if live_path else component


def guess_component(module) -> str:
    """ "unet" for a diffusers UNet, "transformer" for a FLUX transformer, "text_encoder_2" for a
    CLIPTextModelWithProjection, else "text_encoder".

    A library that is not imported yet cannot have made `module`, so it is not imported here (that would
    cost seconds).
    """
    diffusers = sys.modules.get("diffusers")
    if diffusers is not None and isinstance(module, diffusers.UNet2DConditionModel):
        return "unet"
    if diffusers is not None and isinstance(module, diffusers.FluxTransformer2DModel):
        return "transformer"
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(module, transformers.CLIPTextModelWithProjection):
        return "text_encoder_2"
    return "text_encoder"


def _is_module(obj) -> bool:
    # duck-typed torch.nn.Module test, so that this module needs no torch
    return hasattr(obj, "named_modules")


def model_components(obj, component: str | None = None) -> list[tuple[str, object]]:
    """[(component, torch module)] for a pipeline (or any object with component attributes) or one module.

    Args:
        obj: a pipeline, an object with `unet`/`text_encoder`/`text_encoder_2` attributes, or one module.
        component: for a single module, its component name (guessed from the class when None);
            for a pipeline, keeps that component only.

    Raises:
        CompatibilityError: `obj` has no such component.
    """
    if _is_module(obj):
        return [(component or guess_component(obj), obj)]
    parts = [(name, getattr(obj, name, None)) for name in COMPONENTS]
    parts = [(name, module) for name, module in parts if _is_module(module)]
    if component is not None:
        parts = [(name, module) for name, module in parts if name == component]
    if not parts:
        raise CompatibilityError(
            f"{type(obj).__name__} has no unet / text_encoder / text_encoder_2 module"
            + (f" named {component!r}" if component else "")
        )
    return parts


def components_of(model) -> dict[str, object]:
    """{component name: module} from a pipeline, an object with component attributes, or a dict.

    Raises:
        ConfigError: none of unet / text_encoder / text_encoder_2 is there.
    """
    if isinstance(model, dict):
        found = {k: v for k, v in model.items() if k in COMPONENTS and v is not None}
    else:
        found = {k: getattr(model, k) for k in COMPONENTS if getattr(model, k, None) is not None}
    if not found:
        raise ConfigError(
            f"no UNet or text encoder found: expected a pipeline or a dict with keys {COMPONENTS}"
        )
    return found
