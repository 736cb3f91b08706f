"""A1111 "LoRA Block Weight" block names for UNet modules. Depends on nothing.

Block names follow the LoRA Block Weight extension and sd-scripts' svd_merge_lora.py (docs/formats.md §2.12):
`BASE` is the text encoder(s); `IN00..`, `MID`, `OUT00..` are the LDM `input_blocks`, `middle_block`
and `output_blocks` of the UNet. In diffusers names, `down_blocks.{i}.{resnets|attentions}.{j}` is
`input_blocks.{3i+j+1}`, `down_blocks.{i}.downsamplers` is `input_blocks.{3i+3}`, `conv_in` is
`input_blocks.0`, `up_blocks.{i}.{resnets|attentions}.{j}` is `output_blocks.{3i+j}` and
`up_blocks.{i}.upsamplers` is `output_blocks.{3i+2}` (docs/formats.md §2.2; the same for SD1/SD2 and SDXL).
Modules outside those blocks (time embedding, final norm and conv) have no block: block strengths
do not touch them.
"""

from __future__ import annotations

import functools
import math
import re

from sdlora.errors import ConfigError

_DOWN = re.compile(r"^unet\.down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.")
_UP = re.compile(r"^unet\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.")

# the short vectors A1111 users paste (docs/formats.md §2.12; sd-scripts svd_merge_lora.py LAYER17 / LAYER12)
_SD1_17 = ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(3, 12)]
_SDXL_12 = ["BASE", "IN04", "IN05", "IN07", "IN08", "MID"] + [f"OUT{i:02d}" for i in range(6)]


@functools.lru_cache(maxsize=16384)  # asked for every layer on every strength change; names repeat
def block_of(canonical: str) -> str | None:
    """The block name of a canonical module name ("BASE" for text encoders, None when in no block)."""
    if not canonical.startswith("unet."):
        return "BASE"
    if canonical.startswith("unet.conv_in."):
        return "IN00"
    if canonical.startswith("unet.mid_block."):
        return "MID"
    match = _DOWN.match(canonical + ".")
    if match:
        i, kind, j = int(match[1]), match[2], int(match[3])
        return f"IN{3 * i + 3:02d}" if kind == "downsamplers" else f"IN{3 * i + j + 1:02d}"
    match = _UP.match(canonical + ".")
    if match:
        i, kind, j = int(match[1]), match[2], int(match[3])
        return f"OUT{3 * i + 2:02d}" if kind == "upsamplers" else f"OUT{3 * i + j:02d}"
    return None


def block_names(n_down: int, n_up: int) -> list[str]:
    """Every block name of a UNet with `n_down` down blocks and `n_up` up blocks, in A1111 order.

    SD1/SD2 (4 and 4): BASE, IN00..IN11, MID, OUT00..OUT11 (26); SDXL (3 and 3): 20 names.
    """
    ins = [f"IN{i:02d}" for i in range(3 * n_down)]
    outs = [f"OUT{i:02d}" for i in range(3 * n_up)]
    return ["BASE", *ins, "MID", *outs]


def parse_block_strengths(value, names: list[str]) -> dict[str, float]:
    """Normalise user block strengths to {block name: factor}; blocks not given stay at 1.0.

    `value` is a dict {"IN04": 0.5, ...}, a list/tuple of numbers in A1111 order (the full list of
    `names`, or the short 17-value SD1 / 12-value SDXL LoRA vectors), or a comma-separated string of
    such numbers. Raises ConfigError naming the bad block or length.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, dict):
        pairs = [(str(k).upper(), v) for k, v in value.items()]
    else:
        pairs = list(zip(_vector_names(len(value), names), value, strict=True))
    unknown = sorted(k for k, _ in pairs if k not in names)
    if unknown:
        raise ConfigError(f"unknown block name(s) {unknown}; this model's blocks are {', '.join(names)}")
    return {k: check_strength(v, f"block {k}") for k, v in pairs}


def _vector_names(length: int, names: list[str]) -> list[str]:
    for candidate in (names, _SD1_17, _SDXL_12):
        if len(candidate) == length and set(candidate) <= set(names):
            return candidate
    raise ConfigError(
        f"a block-strength list has {length} values; this model takes {len(names)} ({', '.join(names)})"
        + (" or the 17-value LoRA vector" if set(_SD1_17) <= set(names) else "")
        + (" or the 12-value LoRA vector" if len(names) == 20 else "")
    )


def check_strength(value, what: str = "strength") -> float:
    """A finite float, or ConfigError naming `what` and the bad value."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what} must be a finite number, got {value!r}")
    return number
