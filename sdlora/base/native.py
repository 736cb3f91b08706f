"""What follows from a base without loading its weights: the image side it was trained at, a warning for a
training size far from it, and the shipped preset that is its recipe. Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdlora.base.ref import EMBEDDED, config_folder, parse_base

# a resolution this many times off the base's native pixel count (either way) is allowed but warned about:
# the model was never trained near it (16x the pixels = 4x the side: 32 px embedded trained at 128 px)
FAR_PIXEL_RATIO = 16
# the base whose own recipe is a shipped preset of the same name (sdlora/configs/presets/<name>.yaml)
PRESET_FOR_BASE = {EMBEDDED: "embedded"}


def size_from_configs(unet_config, vae_config) -> int:
    """UNet sample_size x the VAE's scale factor (2 ** (VAE blocks - 1)), from the two configs (dicts or
    diffusers' FrozenDict)."""
    size = unet_config["sample_size"]
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) * 2 ** (len(vae_config["block_out_channels"]) - 1)


def native_resolution_of_folder(folder: Path) -> int | None:
    """`size_from_configs` of a diffusers folder's config files; None when they are missing or unreadable."""
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        return size_from_configs(unet, vae)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def native_resolution(base: str | Path, family: str | None = None) -> int | None:
    """The image side the base was trained at (embedded 32, SD1 512, SD2-v 768, SDXL 1024), read from its
    configs without loading weights; None when that needs the weights (a hub id)."""
    folder = config_folder(parse_base(base), family)
    return native_resolution_of_folder(folder) if folder is not None else None


def native_resolution_of(model) -> int:
    """The same, from a loaded model (`Components` or a diffusers pipeline: its unet and vae configs)."""
    return size_from_configs(model.unet.config, model.vae.config)


def far_from_native(resolution: int, native: int | None) -> str | None:
    """A warning when `resolution` is FAR_PIXEL_RATIO times off the native pixel count, else None."""
    if not native or not resolution:
        return None
    ratio = (resolution / native) ** 2
    if 1 / FAR_PIXEL_RATIO < ratio < FAR_PIXEL_RATIO:
        return None
    how = f"{ratio:.0f}x the pixels" if ratio > 1 else f"1/{1 / ratio:.0f} of the pixels"
    return (f"data.resolution={resolution} is {how} of the base's native {native} px: allowed, but the base "
            f"was never trained near it (slow, and poor results); leave data.resolution unset to use {native}")


def default_preset(base: str | Path) -> str | None:
    """The shipped preset that is this base's working recipe (used when no preset or config is given)."""
    return PRESET_FOR_BASE.get(str(base).strip())
