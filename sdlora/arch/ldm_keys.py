"""diffusers -> original ("LDM" / "single-file") state-dict keys, for writing A1111/ComfyUI checkpoints.

Pure functions over state dicts ({key: tensor}); nothing is loaded or saved here. The mapping is the inverse
of the one diffusers applies when it reads a single-file checkpoint (`from_single_file`), written from the
layouts of the two model families:

* UNet (`model.diffusion_model.*`), names from `naming.ldm_unet_names` (shared with Kohya names): the
  original UNet numbers its blocks as flat lists. `input_blocks.0` is
  `conv_in`; then each down block contributes `layers_per_block` slots (`.0` resnet, `.1` transformer) plus
  one slot for its downsampler (`.0.op`), except the last block. `middle_block` is resnet, transformer,
  resnet. Each up block contributes `layers_per_block + 1` slots (`.0` resnet, `.1` transformer) and its
  upsampler sits in the block's last slot after the layers present (`.1.conv` or `.2.conv`). Inside a
  transformer every key is the same in both layouts. SDXL's `add_embedding` is `label_emb.0`.
* VAE (`first_stage_model.*`): `down.{i}.block.{j}`, `mid.block_{1,2}`, `mid.attn_1`; the decoder's up
  blocks are numbered in reverse (`up.0` is the last one diffusers runs). The mid attention's q/k/v/proj_out
  are 1x1 convolutions in the original, linears in diffusers: weights get two trailing 1-sized dimensions.
* CLIP-L (`cond_stage_model.transformer.text_model.*`, SDXL `conditioner.embedders.0.transformer.text_model.*`):
  Hugging Face names, so only the prefix changes. transformers >= 5.6 `CLIPTextModel` has no `text_model.`
  level in its state dict; `CLIPTextModelWithProjection` still has it: both are accepted.
* OpenCLIP (SD2 `cond_stage_model.model.*`, SDXL `conditioner.embedders.1.model.*`): open_clip names, q/k/v
  fused into one `in_proj_weight`/`in_proj_bias` (rows q, then k, then v), `text_projection` stored as the
  transpose of the Linear weight. SD2: diffusers keeps only 23 of the 24 OpenCLIP layers (SD2 conditions on
  the penultimate layer), so the written file has 23 and no `text_projection`. diffusers ignores both; a
  loader that builds all 24 layers (A1111, ComfyUI) leaves the last one at its initial values, which SD2's
  penultimate-layer conditioning does not use (not tested here: no A1111/ComfyUI in this project).

Any key with no known original name raises `FormatError` naming it (for example the SD upscaler's
`class_embedding`, ControlNets, or an SD3/Flux model): nothing is silently dropped.
"""

from __future__ import annotations

import re

import torch

from sdlora.arch.family import FAMILIES
from sdlora.arch.naming import ldm_unet_names
from sdlora.errors import FormatError

# where each diffusers component goes in a full checkpoint, and which text-encoder layout it uses
CHECKPOINT_LAYOUT = {
    "sd1": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
            "text_encoder": ("cond_stage_model.transformer.", "clip")},
    "sd2": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
            "text_encoder": ("cond_stage_model.model.", "open_clip")},
    "sdxl": {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
             "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
             "text_encoder_2": ("conditioner.embedders.1.model.", "open_clip")},
}

# ----- UNet ------------------------------------------------------------------------------------------

def _split_param(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return module, param


_DOWN_RESNET = re.compile(r"down_blocks\.(\d+)\.resnets\.(\d+)\.")


def _check_layers_per_block(keys) -> None:
    """The original layout (and diffusers' reader of it) has one resnet count for every down block."""
    counts: dict[int, set[int]] = {}
    for key in keys:
        if match := _DOWN_RESNET.match(key):
            counts.setdefault(int(match[1]), set()).add(int(match[2]))
    sizes = {len(v) for v in counts.values()}
    if len(sizes) != 1:
        raise FormatError(f"UNet down blocks have different resnet counts {sorted(sizes)} (or none); the original "
                          "single-file layout needs the same layers_per_block in every block")


def unet_to_ldm(state: dict) -> dict:
    """A diffusers `UNet2DConditionModel` state dict with original keys (without `model.diffusion_model.`).

    The block numbering is `naming.ldm_unet_names`, the one diffusers -> LDM UNet map sdlora has (Kohya
    names use it too); only the parameter name is appended here.
    """
    _check_layers_per_block(state)
    names = ldm_unet_names({_split_param(key)[0] for key in state})

    def rename(key: str) -> str:
        module, param = _split_param(key)
        if module not in names:
            raise FormatError(f"UNet key '{key}' has no original (LDM) name; this UNet is not an SD1/SD2/SDXL "
                              "UNet (class embeddings, ControlNet and other additions are not supported)")
        return f"{names[module]}.{param}"

    return _renamed(state, rename, "UNet")


def _renamed(state: dict, rename, what: str) -> dict:
    out = {}
    for key, tensor in state.items():
        new = rename(key)
        if new in out:
            raise FormatError(f"{what} keys map twice to '{new}' (second: '{key}'); the model layout is not supported")
        out[new] = tensor
    return out


# ----- VAE -------------------------------------------------------------------------------------------

_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_BLOCK = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)")
_VAE_SAMPLER = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(?:down|up)samplers\.0\.conv\.(\w+)")
_VAE_MID_RES = re.compile(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(\w+)\.(weight|bias)")
_VAE_MID_ATTN = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)"
                           r"\.(weight|bias)")


def _vae_resnet(part: str, key: str) -> str:
    if part not in _VAE_RESNET:
        raise FormatError(f"VAE key '{key}': unknown resnet part '{part}' (no original name)")
    return _VAE_RESNET[part]


def _vae_block_key(key: str, up_blocks: int) -> str | None:
    """Keys inside the encoder's down / decoder's up blocks (the decoder's are numbered in reverse)."""
    if match := _VAE_BLOCK.fullmatch(key):
        side, index, rest = match[1], int(match[2]), f"block.{match[3]}.{_vae_resnet(match[4], key)}.{match[5]}"
    elif match := _VAE_SAMPLER.fullmatch(key):
        side, index = match[1], int(match[2])
        rest = f"{'downsample' if side.startswith('encoder') else 'upsample'}.conv.{match[3]}"
    else:
        return None
    if side.startswith("encoder"):
        return f"encoder.down.{index}.{rest}"
    return f"decoder.up.{up_blocks - 1 - index}.{rest}"


def _vae_key(key: str, up_blocks: int) -> str:
    if (block := _vae_block_key(key, up_blocks)) is not None:
        return block
    if match := _VAE_MID_RES.fullmatch(key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{_vae_resnet(match[3], key)}.{match[4]}"
    if match := _VAE_MID_ATTN.fullmatch(key):
        return f"{match[1]}.mid.attn_1.{_VAE_ATTN[match[2]]}.{match[3]}"
    module, param = _split_param(key)
    side, _, name = module.partition(".")
    if side in ("encoder", "decoder") and name in _VAE_TOP:
        return f"{side}.{_VAE_TOP[name]}.{param}"
    if module not in ("quant_conv", "post_quant_conv"):
        raise FormatError(f"VAE key '{key}' has no original (LDM) name; only the SD/SDXL AutoencoderKL is supported")
    return key


def vae_to_ldm(state: dict) -> dict:
    """A diffusers `AutoencoderKL` state dict with original keys (without `first_stage_model.`).

    The mid-block attention's linear weights become 1x1 conv weights ([out, in] -> [out, in, 1, 1], a view).
    """
    up_blocks = len({m[2] for m in map(_VAE_BLOCK.fullmatch, state) if m and m[1].startswith("decoder")})
    out = _renamed(state, lambda key: _vae_key(key, up_blocks), "VAE")
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith("weight") and not key.endswith("norm.weight") and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]
    return out


# ----- text encoders ---------------------------------------------------------------------------------

def _hf_text_keys(state: dict) -> dict:
    """CLIP state dict keys without the optional `text_model.` level (transformers 5 drops it in CLIPTextModel)."""
    return {key.removeprefix("text_model."): tensor for key, tensor in state.items()}


def clip_to_ldm(state: dict) -> dict:
    """A Hugging Face CLIP text model (SD1, SDXL's first encoder) as `text_model.*` keys (the original's,
    under `cond_stage_model.transformer.` / `conditioner.embedders.0.transformer.`)."""
    out = {}
    for key, tensor in _hf_text_keys(state).items():
        if not key.startswith(("embeddings.", "encoder.layers.", "final_layer_norm.")):
            raise FormatError(f"CLIP text encoder key '{key}' has no place in an SD1/SDXL checkpoint's CLIP-L "
                              "(a text projection or another model's weights?)")
        if key == "embeddings.position_ids":
            continue  # a buffer, not a weight; loaders rebuild it
        out[f"text_model.{key}"] = tensor
    return out


_OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                  "embeddings.position_embedding.weight": "positional_embedding",
                  "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_QKV = re.compile(r"self_attn\.([qkv])_proj")


def open_clip_to_ldm(state: dict) -> dict:
    """A Hugging Face CLIP text model converted to OpenCLIP names (SD2's encoder, SDXL's second), without the
    `cond_stage_model.model.` / `conditioner.embedders.1.model.` prefix; q/k/v fused into `in_proj_*`."""
    out, qkv = {}, {}
    for key, tensor in _hf_text_keys(state).items():
        if key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()  # open_clip multiplies x @ text_projection
        elif key == "embeddings.position_ids":
            continue
        elif (match := _HF_LAYER.fullmatch(key)) and (part := _QKV.fullmatch(match[2])):
            qkv.setdefault((int(match[1]), match[3]), {})[part[1]] = tensor
        elif match and match[2] in _OPEN_CLIP_LAYER:
            out[f"transformer.resblocks.{match[1]}.{_OPEN_CLIP_LAYER[match[2]]}.{match[3]}"] = tensor
        else:
            raise FormatError(f"text encoder key '{key}' has no OpenCLIP name (not an SD2/SDXL OpenCLIP encoder?)")
    for (layer, param), parts in sorted(qkv.items()):
        if sorted(parts) != ["k", "q", "v"]:
            raise FormatError(f"text encoder layer {layer}: {param} of q/k/v incomplete (found {sorted(parts)})")
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


# ----- whole checkpoints -----------------------------------------------------------------------------

def checkpoint_to_ldm(states: dict[str, dict], family: str) -> dict:
    """Diffusers component state dicts -> one original single-file checkpoint state dict.

    Args:
        states: {"unet": ..., "vae": ..., "text_encoder": ..., ["text_encoder_2": ...]} state dicts; every
            component the family has must be present.
        family: "sd1", "sd2" or "sdxl" (decides the text encoders' layout and prefixes).

    Tensors are shared with the inputs where no conversion is needed (no copy of a multi-GB model).
    """
    if family not in CHECKPOINT_LAYOUT:
        raise FormatError(f"no single-file layout for model family {family!r}; supported: {', '.join(FAMILIES)}")
    layout = CHECKPOINT_LAYOUT[family]
    missing = sorted(set(layout) - set(states))
    extra = sorted(set(states) - set(layout))
    if missing or extra:
        raise FormatError(f"a {family} checkpoint holds {sorted(layout)}; missing {missing}, unexpected {extra}")
    out = {}
    for name, place in layout.items():
        prefix, converted = _component(name, place, states[name])
        out.update({prefix + key: tensor for key, tensor in converted.items()})
    return out


def _component(name: str, place, state: dict) -> tuple[str, dict]:
    if name == "unet":
        return place, unet_to_ldm(state)
    if name == "vae":
        return place, vae_to_ldm(state)
    prefix, kind = place
    return prefix, clip_to_ldm(state) if kind == "clip" else open_clip_to_ldm(state)


def models_to_ldm(unet, vae, text_encoder, text_encoder_2=None, family: str | None = None) -> dict:
    """`checkpoint_to_ldm` over live modules. family defaults to "sdxl" with a second text encoder, else
    "sd1" (SD2 must be named: its text encoder is a CLIPTextModel like SD1's, only the layout differs)."""
    family = family or ("sdxl" if text_encoder_2 is not None else "sd1")
    states = {"unet": unet.state_dict(), "vae": vae.state_dict(), "text_encoder": text_encoder.state_dict()}
    if text_encoder_2 is not None:
        states["text_encoder_2"] = text_encoder_2.state_dict()
    return checkpoint_to_ldm(states, family)
