"""cloneofsimo "safeloras": positional keys `unet:N:down` / `unet:N:up`, `text_encoder:N:*`.

The file does not name its modules. cloneofsimo's injector walks `model.modules()` and, inside every
module whose class is one of the targets listed in the metadata (`unet=["CrossAttention",
"Attention", "GEGLU"]`), takes each Linear in registration order. For the SD1.x UNet of that time
(diffusers 0.11) that is: down_blocks 0-2 (2 attentions each), up_blocks 1-3 (3 each), then the
mid block; in each transformer block attn1 (to_q, to_k, to_v, to_out.0), the GEGLU `ff.net.0.proj`,
attn2 (to_q, to_k, to_v, to_out.0): 16 x 9 = 144 entries. For CLIP the Linears of `CLIPAttention`
are registered k_proj, v_proj, q_proj, out_proj: 12 x 4 = 48 entries. Every index is checked against
the SD1 shape it must have; anything else is refused with the reason. Token embeddings (`<s1>`)
become extras["embeddings"].
"""

from __future__ import annotations

import json
import re

from sdlora.errors import FormatError
from sdlora.weights import LoraModule, LoraState

_KEY = re.compile(r"^([A-Za-z_0-9]+):(\d+):(up|down)$")
# SD1 transformer blocks in cloneofsimo's traversal order: (module path, channels)
_SD1_BLOCKS = (
    [(f"down_blocks.{i}.attentions.{j}", (320, 640, 1280)[i]) for i in range(3) for j in range(2)]
    + [(f"up_blocks.{i}.attentions.{j}", (0, 1280, 640, 320)[i]) for i in range(1, 4) for j in range(3)]
    + [("mid_block.attentions.0", 1280)]
)
_CONTEXT = 768  # SD1 cross-attention width
_TEXT_WIDTH, _TEXT_LAYERS = 768, 12


def _attention(prefix: str, channels: int, context: int) -> list[tuple[str, tuple[int, int]]]:
    """(path, (out, in)) of one attention's Linears in registration order."""
    return [(f"{prefix}.to_q", (channels, channels)), (f"{prefix}.to_k", (channels, context)),
            (f"{prefix}.to_v", (channels, context)), (f"{prefix}.to_out.0", (channels, channels))]  # fmt: skip


def unet_order(targets: list[str]) -> list[tuple[str, tuple[int, int]]]:
    """Canonical UNet names with their (out, in) shapes, in cloneofsimo's index order for SD1."""
    order = []
    attention = bool({"CrossAttention", "Attention"} & set(targets))
    for block, channels in _SD1_BLOCKS:
        prefix = f"unet.{block}.transformer_blocks.0"
        if attention:
            order += _attention(f"{prefix}.attn1", channels, channels)
        if "GEGLU" in targets:
            order.append((f"{prefix}.ff.net.0.proj", (channels * 8, channels)))
        if attention:
            order += _attention(f"{prefix}.attn2", channels, _CONTEXT)
    return order


def text_order() -> list[tuple[str, tuple[int, int]]]:
    """Canonical CLIP-L names in cloneofsimo's order (CLIPAttention registers k, v, q, out)."""
    shape = (_TEXT_WIDTH, _TEXT_WIDTH)
    return [
        (f"text_encoder.text_model.encoder.layers.{layer}.self_attn.{proj}", shape)
        for layer in range(_TEXT_LAYERS)
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj")
    ]


def read(tensors: dict, metadata: dict[str, str], *, name: str = "") -> LoraState:
    """Map positional entries to canonical SD1 modules, or refuse with a precise reason."""
    state = LoraState(metadata=dict(metadata), format="cloneofsimo", family="sd1")
    entries: dict[str, dict[int, dict[str, object]]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match:
            component, index, side = match.group(1), int(match.group(2)), match.group(3)
            entries.setdefault(component, {}).setdefault(index, {})[side] = tensor
        elif metadata.get(key) == "<embed>" or key.startswith("<"):
            state.extras.setdefault("embeddings", {})[key] = tensor
        else:
            raise FormatError(f"{name}: unexpected key {key!r} in a cloneofsimo positional LoRA")
    for component, indexed in entries.items():
        order = _order(component, metadata, name)
        _map_component(state, component, indexed, order, name)
    return state


def _order(component: str, metadata: dict[str, str], name: str):
    if component == "unet":
        targets = _targets(metadata.get("unet"), ["CrossAttention", "Attention", "GEGLU"])
        return unet_order(targets)
    if component == "text_encoder":
        return text_order()
    raise FormatError(
        f"{name}: cloneofsimo component {component!r} is not supported (only unet and text_encoder of SD1)"
    )


def _targets(raw: str | None, default: list[str]) -> list[str]:
    try:
        value = json.loads(raw) if raw else default
    except json.JSONDecodeError:
        return default
    return [str(v) for v in value] if isinstance(value, list) else default


def _map_component(state: LoraState, component: str, indexed: dict, order: list, name: str) -> None:
    if sorted(indexed) != list(range(len(order))):
        raise FormatError(
            f"{name}: cloneofsimo positional LoRA has {len(indexed)} {component} entries (indices "
            f"{min(indexed)}-{max(indexed)}), but sdlora can map only SD1's {len(order)} in cloneofsimo's order; "
            "the module names are not in the file, so it cannot be converted safely"
        )
    for index, (canonical, (out_dim, in_dim)) in enumerate(order):
        pair = indexed[index]
        if "down" not in pair or "up" not in pair:
            raise FormatError(
                f"{name}: {component}:{index} lacks its {'down' if 'down' not in pair else 'up'} tensor"
            )
        down, up = pair["down"], pair["up"]
        if down.shape[1] != in_dim or up.shape[0] != out_dim:
            raise FormatError(
                f"{name}: {component}:{index} has shapes down {tuple(down.shape)} / up {tuple(up.shape)}, but "
                f"SD1's {canonical} needs in={in_dim}, out={out_dim}; this is not an SD1 cloneofsimo LoRA "
                "and cannot be mapped by position"
            )
        state.modules[canonical] = LoraModule("lora", {"down": down, "up": up}, alpha=None)
        state.source_keys[canonical] = [f"{component}:{index}:down", f"{component}:{index}:up"]
