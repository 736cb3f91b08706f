"""Base-family detection (sd1 / sd2 / sdxl) from tensor shapes in any dialect's raw keys. Standard library only.

Shapes decide; metadata (`ss_base_model_version`, `modelspec.architecture`, `ss_v2`) is only a tie-break hint,
because files carry copied or wrong metadata. LoRAs for other architectures (FLUX, SD3, AuraFlow, PixArt,
Stable Cascade, Hunyuan-DiT) are refused by name with a FormatError.

Evidence used, strongest first (numbers from the public SD1.5 / SD2.1 / SDXL configs in sdlora/configs/models/):
- the cross-attention context width: the input width of attn2 to_k / to_v (768 / 1024 / 2048). No SD UNet
  channel count equals 768, 1024 or 2048, so any UNet LoRA input of that width is the context width;
- the text-encoder hidden width (768 CLIP-L, 1024 OpenCLIP-H, 1280 OpenCLIP-bigG) and the `te1`/`te2` or
  `text_encoder_2` component names (SDXL only);
- UNet structure: SDXL alone has several transformer blocks per attention and no attention in the first
  down block; SD1 alone has 1x1-conv proj_in.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping

from sdlora.errors import ConfigError, FormatError

FAMILIES = ("sd1", "sd2", "sdxl")
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}

CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
TEXT_WIDTHS = {768: "sd1", 1024: "sd2", 1280: "sdxl"}
# sdlora's shipped small model (docs/embedded-model.md): its text width, which is also its UNet's context width
# (sdlora.embedded.configs.TEXT_WIDTH; this layer may not import it, a test keeps the two equal)
EMBEDDED = "embedded"
EMBEDDED_TEXT_WIDTH = 128

# (pattern on a raw key, architecture). First match wins, so the more specific patterns come first.
# Searched once over all keys joined by newlines (MULTILINE, so ^ is a key start; no pattern spans a newline).
_M = re.MULTILINE
_FOREIGN = (
    (re.compile(r"lora_prior_(unet|te)_|(^|[._])prior[._]", _M), "Stable Cascade"),
    (re.compile(r"joint_transformer_blocks|double_layers|single_layers|register_tokens", _M), "AuraFlow"),
    (re.compile(r"joint_blocks|context_block|x_block[._]", _M), "SD3 / SD3.5"),
    (re.compile(r"double_blocks|single_blocks|single_transformer_blocks|img_attn|txt_attn", _M), "FLUX"),
    (re.compile(r"adaln_single|caption_projection|caption_embedder", _M), "PixArt"),
    (
        re.compile(
            r"(^|transformer\.|lora_unet_|lora_transformer_)blocks[._]\d+[._]|mlp_t5|text_embedding_padding",
            _M,
        ),
        "Hunyuan-DiT",
    ),
    (re.compile(r"^(base_model\.model\.)?transformer\.|^lora_transformer_", _M), "a DiT transformer model"),
)
# hidden width of a diffusers DiT (input of its first attention's to_q) -> architecture
_DIT_WIDTHS = {1152: "PixArt", 1536: "SD3", 2432: "SD3.5", 3072: "FLUX"}

# raw-key endings of tensors whose dimension 1 is the module's input width (the "down" side of the pair)
_DOWN_SUFFIX = re.compile(
    r"(lora_down\.weight|lora\.down\.weight|_lora\.down\.weight|lora_A(\.default)?\.weight|"
    r"lora_linear_layer\.down\.weight|hada_w[12]_b|\.diff|:down)$"
)
_TEXT_KEY = re.compile(r"lora_te\d?_|text_encoder|text_model|^te\d?[._]|cond_stage_model|conditioner")
_TE2_KEY = re.compile(r"lora_te2_|text_encoder_2|conditioner\.embedders\.1")
_TE1_KEY = re.compile(r"lora_te1_")
_ATTN2_KV = re.compile(r"attn2[._](processor[._])?to_[kv]")
_SDXL_STRUCTURE = re.compile(r"transformer_blocks[._][1-9]")
_SD12_STRUCTURE = re.compile(
    r"down_blocks[._]0[._]attentions|down_blocks[._]3[._]|input_blocks[._](1|2|10|11)[._]1[._]|"
    r"input_blocks[._](9|10|11)[._]|output_blocks[._](9|10|11)[._]|up_blocks[._]3[._]attentions"
)
_PROJ_IN_DOWN = re.compile(r"proj_in[._](lora_down|lora\.down|lora_A)")


def check_family(family: str) -> str:
    """Return `family` if it is one of FAMILIES, else raise ConfigError listing them."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; use one of {', '.join(FAMILIES)}")
    return family


def _foreign_match(keys: Iterable[str]) -> tuple[str, str] | None:
    """(architecture, an example key) for the first foreign pattern found in `keys`, else None."""
    text = "\n".join(keys)
    for pattern, name in _FOREIGN:
        match = pattern.search(text)
        if match:
            start = text.rfind("\n", 0, match.start()) + 1
            end = text.find("\n", match.end())
            return name, text[start : end if end >= 0 else len(text)]
    return None


def _input_widths(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """{raw key: input width} for down-side tensors and LoKr pairs, linear layers (2-D tensors) only."""
    widths = {}
    for key, shape in shapes.items():
        if len(shape) == 2 and _DOWN_SUFFIX.search(key):
            widths[key] = int(shape[1])
    # LoKr: the input width is the product of the two factors' input widths (either factor order)
    factor_in: dict[str, dict[str, int]] = {}
    for key, shape in shapes.items():
        match = re.search(r"lokr_(w[12])(_b)?$", key)
        if match and len(shape) == 2:
            factor_in.setdefault(key[: match.start()], {})[match.group(1)] = int(shape[1])
    for module, factors in factor_in.items():
        if len(factors) == 2:
            widths[module + "lokr"] = factors["w1"] * factors["w2"]
    return widths


def _vote(widths: Iterable[int], table: Mapping[int, str]) -> str | None:
    """The family named by the most common width found in `table`, else None."""
    counts = Counter(table[w] for w in widths if w in table)
    return counts.most_common(1)[0][0] if counts else None


def _context_vote(widths: Mapping[str, int]) -> str | None:
    """Family from the cross-attention width: attn2 to_k/to_v inputs first, then any UNet input."""
    unet = {k: w for k, w in widths.items() if not _TEXT_KEY.search(k)}
    attn2 = [w for k, w in unet.items() if _ATTN2_KV.search(k)]
    return _vote(attn2, CONTEXT_WIDTHS) or _vote(unet.values(), CONTEXT_WIDTHS)


def _text_vote(keys: list[str], widths: Mapping[str, int]) -> str | None:
    """Family from text-encoder keys: te1/te2 names mean SDXL, else the hidden width 768 / 1024 / 1280."""
    if any(_TE2_KEY.search(k) or _TE1_KEY.search(k) for k in keys):
        return "sdxl"
    text = [w for k, w in widths.items() if _TEXT_KEY.search(k)]
    return _vote(text, TEXT_WIDTHS)


def _structure_vote(keys: list[str], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Family from UNet structure alone (LoRAs without cross-attention or text-encoder keys)."""
    unet_keys = [k for k in keys if not _TEXT_KEY.search(k)]
    if any(_SDXL_STRUCTURE.search(k) for k in unet_keys):
        return "sdxl"
    proj_in = [shapes[k] for k in unet_keys if _PROJ_IN_DOWN.search(k)]
    if proj_in and any(_SD12_STRUCTURE.search(k) for k in unet_keys):
        return "sd1" if all(len(s) == 4 for s in proj_in) else "sd2"
    return None


def metadata_hint(metadata: Mapping[str, str] | None) -> str | None:
    """The family that file metadata claims (sd-scripts `ss_*`, `modelspec.*`), else None. Only a hint."""
    if not metadata:
        return None
    text = " ".join(
        str(metadata.get(key, "")).lower()
        for key in ("modelspec.architecture", "ss_base_model_version", "ss_sd_model_name")
    )
    if "xl" in text:
        return "sdxl"
    if (
        re.search(r"v2|sd_?2|stable-diffusion-v2|2\.[01]", text)
        or str(metadata.get("ss_v2", "")).lower() == "true"
    ):
        return "sd2"
    if re.search(r"v1|sd_?1|stable-diffusion-v1|1\.[45]", text):
        return "sd1"
    return None


def detect_family(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None
) -> str | None:
    """Detect the base family of a LoRA from its raw file keys and tensor shapes.

    Args:
        shapes: {raw file key: tensor shape}, in any dialect (Kohya, LDM/SGM, diffusers, PEFT, LyCORIS, ...).
        metadata: file metadata; used only when the shapes say nothing.

    Returns:
        "sd1", "sd2", "sdxl", or None for an SD-shaped LoRA of another size (e.g. a tiny test model).

    Raises:
        FormatError: the keys belong to another architecture (FLUX, SD3, ...), which sdlora does not support.
    """
    keys = list(shapes)
    _refuse_foreign(shapes)
    widths = _input_widths(shapes)
    found = _context_vote(widths) or _text_vote(keys, widths) or _structure_vote(keys, shapes)
    if found is not None:
        return found
    if widths:  # measurable, but no SD family's widths: a custom (e.g. tiny) model; metadata cannot override
        return None
    return metadata_hint(metadata)


def describe_family(
    shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str] | None = None
) -> str | None:
    """`detect_family`, or "embedded" for a LoRA of sdlora's embedded model's widths (what the Library and
    `inspect` show), else None. Raises FormatError as `detect_family` does."""
    return detect_family(shapes, metadata) or (EMBEDDED if embedded_shaped(shapes) else None)


def embedded_shaped(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether a LoRA of no SD family has the embedded model's widths: its cross-attention context width, or
    with no cross-attention layers, text-encoder layers of its hidden width and MLP width (4x) only."""
    widths = _input_widths(shapes)
    attn2 = {w for k, w in widths.items() if not _TEXT_KEY.search(k) and _ATTN2_KV.search(k)}
    if attn2:
        return attn2 == {EMBEDDED_TEXT_WIDTH}
    text = {w for k, w in widths.items() if _TEXT_KEY.search(k)}
    return bool(text) and text <= {EMBEDDED_TEXT_WIDTH, 4 * EMBEDDED_TEXT_WIDTH}


def _refuse_foreign(shapes: Mapping[str, tuple[int, ...]]) -> None:
    found = _foreign_match(shapes)
    if found is None:
        return
    foreign, example = found
    if foreign == "a DiT transformer model":
        width = _vote_dit(shapes)
        foreign = width or foreign
    raise FormatError(
        f"this LoRA is for {foreign} (keys such as {example!r}), not Stable Diffusion 1.x/2.x/XL; "
        "sdlora supports SD1, SD2 and SDXL LoRAs only"
    )


def _vote_dit(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Name a diffusers-style DiT by its hidden width (input width of an attention to_q)."""
    widths = [w for k, w in _input_widths(shapes).items() if re.search(r"attn1?[._]to_q", k)]
    return _vote(widths, _DIT_WIDTHS)


def context_family(width) -> str | None:
    """The family whose cross-attention context width is `width` (768 / 1024 / 2048), else None: the one
    family rule every base-model reader uses (checkpoint headers, UNet configs, live models)."""
    return CONTEXT_WIDTHS.get(width)


def unet_config_family(config) -> str | None:
    """sd1/sd2/sdxl from a UNet config (a dict, diffusers' FrozenDict or a config object): SDXL's added
    text-time embedding, else `context_family` of its cross-attention width; None for other sizes."""
    if _config_value(config, "addition_embed_type") == "text_time":
        return "sdxl"
    return context_family(_config_value(config, "cross_attention_dim"))


def _config_value(config, key: str):
    """A config field as an attribute (diffusers' configs and FrozenDict), else as a mapping key (a dict)."""
    value = getattr(config, key, None)
    return config.get(key) if value is None and isinstance(config, Mapping) else value


def detect_checkpoint_family(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The family of a full model checkpoint (LDM/SGM single file or diffusers UNet weights) from the input
    width of its cross-attention key projections (`...attn2.to_k.weight`: 768 / 1024 / 2048), else None."""
    widths = [
        shape[1] for key, shape in shapes.items() if key.endswith("attn2.to_k.weight") and len(shape) == 2
    ]
    return _vote(widths, CONTEXT_WIDTHS)
