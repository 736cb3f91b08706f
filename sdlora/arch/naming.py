"""The one place that knows file names of modules: canonical <-> Kohya (diffusers-style and LDM/SGM), and
lookups of canonical names in live models.

Standard library only at import time (live-model helpers take the model as an argument). Canonical names
themselves (`canonical_name`, `split_name`) are defined in `sdlora.arch.components`.

Kohya names are never parsed back by splitting underscores (module names contain underscores). Instead
`kohya_lookup` builds a forward dict {every accepted Kohya spelling: canonical name} from a module table,
including the original LDM/SGM UNet names (`input_blocks_4_1_...`), derived from the table's block structure
(docs/formats.md §2.2).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from functools import cache, lru_cache

from sdlora.arch.components import COMPONENTS, canonical_name, model_components, split_name
from sdlora.arch.family import ALL_FAMILIES, FAMILIES
from sdlora.arch.flux import original_parts
from sdlora.arch.tables import ModuleInfo, family_table
from sdlora.errors import CompatibilityError, ConfigError

# LDM/SGM names of the layers inside a diffusers ResnetBlock2D / Downsample2D (docs/formats.md §2.2)
_RESNET_LDM = {
    "conv1": "in_layers.2",
    "norm1": "in_layers.0",
    "conv2": "out_layers.3",
    "norm2": "out_layers.0",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_DOWNSAMPLE_LDM = {"conv": "op"}
_FIXED_LDM = {  # diffusers block -> (LDM block, renames inside it)
    "conv_in": ("input_blocks.0.0", {}),
    "conv_norm_out": ("out.0", {}),
    "conv_out": ("out.2", {}),
    "time_embedding": ("time_embed", {"linear_1": "0", "linear_2": "2"}),
    "add_embedding": ("label_emb.0", {"linear_1": "0", "linear_2": "2"}),
}


# ----------------------------------------------------------------------------------------------------------
# live models: canonical names -> modules


def diffusers_key_name(canonical: str) -> str:
    """The module part of a PEFT-era diffusers LoRA key (`<name>.lora_A.weight`): the canonical name itself."""
    split_name(canonical)
    return canonical


def module_map(model, component: str | None = None) -> dict[str, object]:
    """{canonical name: live module} for every module of a pipeline or a single model.

    Use it for bulk lookups (building it once costs one `named_modules()` walk).
    """
    mapping = {}
    for name, module in model_components(model, component):
        for live_path, child in module.named_modules():
            mapping[canonical_name(name, live_path)] = child
    return mapping


def find_module(model, name: str):
    """The live module of `model` (a pipeline, UNet or CLIP text encoder) called `name`.

    `name` is a canonical name (`text_encoder.text_model.encoder...`) or a path inside `model`, in either the
    transformers 4 (`text_model.encoder...`) or 5 (`encoder...`) layout.

    Raises:
        CompatibilityError: no such module (the message names the nearest one).
    """
    component, _, rest = name.partition(".")
    if component in COMPONENTS:
        mapping = module_map(model, component)
        wanted = canonical_name(component, rest)
    else:
        mapping = module_map(model)
        comp = next(iter(mapping)).split(".", 1)[0] if mapping else "unet"
        wanted = canonical_name(comp, name)
    if wanted in mapping:
        return mapping[wanted]
    hint = nearest_name(wanted, mapping)
    raise CompatibilityError(
        f"no module {name!r} in {type(model).__name__}" + (f"; nearest: {hint!r}" if hint else "")
    )


def nearest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name` (difflib), for "unknown module, did you mean ...". None if none is close.

    Candidates ending like `name` (same last segment, e.g. `to_q`) are preferred, which also keeps this fast
    on tables with thousands of names.
    """
    candidates = list(candidates)
    tail = re.split(r"[._]", name)[-1]
    pool = [c for c in candidates if re.split(r"[._]", c)[-1] == tail] or candidates
    matches = difflib.get_close_matches(name, pool, n=1, cutoff=0.5)
    return matches[0] if matches else None


# ----------------------------------------------------------------------------------------------------------
# LDM / SGM UNet names, derived from the table's block structure


def _count(paths: Iterable[str], pattern: str) -> dict[tuple[int, ...], set[int]]:
    """{(block index,): {inner indices}} for paths matching `pattern` (groups: block, inner)."""
    found: dict[tuple[int, ...], set[int]] = {}
    regex = re.compile(pattern)
    for path in paths:
        match = regex.match(path)
        if match:
            found.setdefault((int(match.group(1)),), set()).add(int(match.group(2)))
    return found


def _unet_structure(paths: list[str]) -> dict[str, dict]:
    """Per down/up block: resnet count, which resnets have an attention, whether it resamples."""
    structure = {}
    for side, resample in (("down", "downsamplers"), ("up", "upsamplers")):
        resnets = _count(paths, rf"{side}_blocks\.(\d+)\.resnets\.(\d+)\.")
        attentions = _count(paths, rf"{side}_blocks\.(\d+)\.attentions\.(\d+)\.")
        samplers = _count(paths, rf"{side}_blocks\.(\d+)\.{resample}\.(\d+)\.")
        blocks = sorted({b for d in (resnets, attentions, samplers) for (b,) in d})
        structure[side] = {
            b: {
                "layers": max(resnets.get((b,), {-1}) | attentions.get((b,), {-1})) + 1,
                "attentions": attentions.get((b,), set()),
                "resample": (b,) in samplers,
            }
            for b in blocks
        }
    return structure


def _block_map(paths: list[str]) -> dict[str, tuple[str, dict[str, str]]]:
    """{diffusers block prefix: (LDM block prefix, renames of the layers inside)} (docs/formats.md §2.2)."""
    structure = _unet_structure(paths)
    blocks = dict(_FIXED_LDM)
    index = 1  # input_blocks.0 is conv_in
    for b, info in structure["down"].items():
        for j in range(info["layers"]):
            blocks[f"down_blocks.{b}.resnets.{j}"] = (f"input_blocks.{index}.0", _RESNET_LDM)
            blocks[f"down_blocks.{b}.attentions.{j}"] = (f"input_blocks.{index}.1", {})
            index += 1
        if info["resample"]:
            blocks[f"down_blocks.{b}.downsamplers.0"] = (f"input_blocks.{index}.0", _DOWNSAMPLE_LDM)
            index += 1
    for j in range(2):  # UNetMidBlock2DCrossAttn: resnet, attention, resnet
        blocks[f"mid_block.resnets.{j}"] = (f"middle_block.{2 * j}", _RESNET_LDM)
    blocks["mid_block.attentions.0"] = ("middle_block.1", {})
    index = 0
    for b, info in structure["up"].items():
        for j in range(info["layers"]):
            blocks[f"up_blocks.{b}.resnets.{j}"] = (f"output_blocks.{index}.0", _RESNET_LDM)
            blocks[f"up_blocks.{b}.attentions.{j}"] = (f"output_blocks.{index}.1", {})
            if info["resample"] and j == info["layers"] - 1:
                slot = 2 if j in info["attentions"] else 1
                blocks[f"up_blocks.{b}.upsamplers.0"] = (f"output_blocks.{index}.{slot}", {})
            index += 1
    return blocks


def ldm_unet_names(paths: Iterable[str]) -> dict[str, str]:
    """{diffusers UNet module path: original LDM/SGM path} for the paths that have one.

    >>> ldm_unet_names(["down_blocks.1.attentions.0.proj_in", "down_blocks.1.resnets.0.conv1"])["down_blocks.1.resnets.0.conv1"]
    'input_blocks.1.0.in_layers.2'
    """
    paths = list(paths)
    blocks = _block_map(paths)
    result = {}
    for path in paths:
        parts = path.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in blocks:
                ldm_block, renames = blocks[prefix]
                inner = ".".join(parts[cut:])
                inner = renames.get(inner, inner)
                result[path] = f"{ldm_block}.{inner}" if inner else ldm_block
                break
    return result


@cache
def _family_ldm(family: str) -> dict[str, str]:
    unet_paths = [split_name(n)[1] for n in family_table(family) if n.startswith("unet.")]
    return ldm_unet_names(unet_paths)


# ----------------------------------------------------------------------------------------------------------
# Kohya names


def _te_prefix(component: str, two_encoders: bool) -> str:
    if component == "text_encoder_2":
        return "lora_te2"
    return "lora_te1" if two_encoders else "lora_te"


def kohya_name(canonical: str, family: str | None) -> str:
    """The Kohya LoRA name (no tensor suffix) sdlora writes for module `canonical` of a `family` model.

    SD1/SD2 (and None): `lora_unet_` + diffusers path with `.` -> `_`, `lora_te_text_model_...`.
    SDXL: `lora_unet_` + SGM path as sd-scripts writes (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`),
    `lora_te1_...` / `lora_te2_...` (FLUX: `lora_te1_` for CLIP-L). A UNet module without an SGM name keeps its diffusers-style name.
    FLUX: `lora_unet_` + the original layer's path as sd-scripts writes (`lora_unet_double_blocks_0_img_attn_qkv`);
    the parts of a fused layer (q, k, v) share its name, so a writer joins them first (`flux_fused_name`).
    """
    component, path = split_name(canonical)
    if family is not None and family not in ALL_FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; use one of {', '.join(ALL_FAMILIES)}")
    if component == "transformer":
        return "lora_unet_" + _flux_original(family).get(path, path).replace(".", "_")
    if component == "unet":
        if family == "sdxl":
            path = _family_ldm("sdxl").get(path, path)
        return "lora_unet_" + path.replace(".", "_")
    return _te_prefix(component, family in ("sdxl", "flux")) + "_" + path.replace(".", "_")


@cache
def _flux_original(family: str | None) -> dict[str, str]:
    """{diffusers transformer path: the original layer it is (part of)} of the shipped FLUX table."""
    if family != "flux":
        return {}
    paths = [split_name(n)[1] for n in family_table("flux") if n.startswith("transformer.")]
    return {part: name for name, (parts, _) in original_parts(paths).items() for part in parts}


def flux_fused_name(original: str) -> str:
    """The Kohya name of a FLUX original-layout layer path (`double_blocks.0.img_attn.qkv`)."""
    return "lora_unet_" + original.replace(".", "_")


def kohya_fused_lookup(table: Mapping[str, ModuleInfo]) -> dict[str, tuple[tuple[str, ...], str]]:
    """{Kohya name of a fused FLUX layer: (canonical names of its parts, split rule)} for `table`'s transformer
    (docs/formats.md §2.14): the layers whose rows must be split (q/k/v, linear1, the swapped adaLN)."""
    paths = [split_name(n)[1] for n in table if n.startswith("transformer.")]
    return {
        flux_fused_name(name): (tuple(f"transformer.{p}" for p in parts), rule)
        for name, (parts, rule) in original_parts(paths).items()
        if rule != "same"
    }


def original_lookup(table: Mapping[str, ModuleInfo]) -> dict[str, tuple[tuple[str, ...], str]]:
    """{original FLUX layer path (`double_blocks.0.img_attn.qkv`): (canonical parts, split rule)} for every
    original layer of `table`'s transformer, fused or not (the `diffusion_model.` dialect, §2.14)."""
    paths = [split_name(n)[1] for n in table if n.startswith("transformer.")]
    return {
        name: (tuple(f"transformer.{p}" for p in parts), rule) for name, (parts, rule) in original_parts(paths).items()
    }


def _transformer_spellings(path: str, original: Mapping[str, str]) -> list[str]:
    """Kohya spellings of a FLUX transformer module: diffusers-style (`lora_transformer_`, `lycoris_`) and,
    for a layer that is not fused, sd-scripts' original-layout name."""
    flat = path.replace(".", "_")
    names = ["lora_transformer_" + flat, "lycoris_" + flat]
    if path in original:
        names.append("lora_unet_" + original[path].replace(".", "_"))
    return names


def _spellings(canonical: str, ldm: Mapping[str, str], two_encoders: bool) -> list[str]:
    """Every Kohya spelling accepted for one module."""
    component, path = split_name(canonical)
    flat = path.replace(".", "_")
    if component == "transformer":
        return _transformer_spellings(path, ldm)
    if component != "unet":
        return [_te_prefix(component, two_encoders) + "_" + flat]
    names = ["lora_unet_" + flat, "lycoris_" + flat]
    if path in ldm:
        names.append("lora_unet_" + ldm[path].replace(".", "_"))
    return names


def lookup_for_table(table: Mapping[str, ModuleInfo]) -> dict[str, str]:
    """{every accepted Kohya spelling: canonical name} for the modules of `table`.

    Raises:
        CompatibilityError: two modules of the table share a Kohya name (the model's names are ambiguous).
    """
    unet_paths = [split_name(n)[1] for n in table if n.startswith("unet.")]
    ldm = ldm_unet_names(unet_paths)
    transformer_paths = [split_name(n)[1] for n in table if n.startswith("transformer.")]
    # FLUX: the original name of each layer that is not fused (one diffusers module, rows unchanged)
    ldm.update(
        {parts[0]: name for name, (parts, rule) in original_parts(transformer_paths).items() if rule == "same"}
    )
    two_encoders = (
        any(n.startswith(("text_encoder_2.", "transformer.")) for n in table)
        or getattr(table, "family", None) in ("sdxl", "flux")
    )
    lookup: dict[str, str] = {}
    for canonical in table:
        for spelling in _spellings(canonical, ldm, two_encoders):
            other = lookup.setdefault(spelling, canonical)
            if other != canonical:
                raise CompatibilityError(
                    f"Kohya name {spelling!r} would mean both {other!r} and {canonical!r}"
                )
    return lookup


@cache
def _family_lookup(family: str) -> dict[str, str]:
    return lookup_for_table(family_table(family))


# Generic layout enumerated for custom models (family None): diffusers UNet2DConditionModel blocks 0-3 with
# up to 4 resnets/attentions, 10 transformer blocks per attention; CLIP text encoders with up to 32 layers.
_ATTENTION_LEAVES = ("proj_in", "proj_out") + tuple(
    f"transformer_blocks.{t}.{leaf}"
    for t in range(10)
    for leaf in (
        *(f"attn{a}.{p}" for a in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")),
        "ff.net.0.proj",
        "ff.net.2",
    )
)
_RESNET_LEAVES = ("conv1", "conv2", "time_emb_proj", "conv_shortcut")
_TEXT_LEAVES = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
    "mlp.fc2",
)


def _generic_unet_paths() -> list[str]:
    paths = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
    paths += ["add_embedding.linear_1", "add_embedding.linear_2"]
    for side, sampler in (("down", "downsamplers"), ("up", "upsamplers")):
        for b in range(4):
            paths.append(f"{side}_blocks.{b}.{sampler}.0.conv")
            for j in range(4):
                paths += [f"{side}_blocks.{b}.resnets.{j}.{leaf}" for leaf in _RESNET_LEAVES]
                paths += [f"{side}_blocks.{b}.attentions.{j}.{leaf}" for leaf in _ATTENTION_LEAVES]
    paths += [f"mid_block.resnets.{j}.{leaf}" for j in range(2) for leaf in _RESNET_LEAVES]
    paths += [f"mid_block.attentions.0.{leaf}" for leaf in _ATTENTION_LEAVES]
    return paths


def _generic_lookup() -> dict[str, str]:
    """Diffusers-style Kohya spellings of the generic layout (no LDM names: those depend on the structure)."""
    lookup = {}
    for path in _generic_unet_paths():
        for spelling in _spellings("unet." + path, {}, False):
            lookup[spelling] = "unet." + path
    for layer in range(32):
        for leaf in _TEXT_LEAVES:
            path = f"text_model.encoder.layers.{layer}.{leaf}"
            lookup[f"lora_te_{path.replace('.', '_')}"] = f"text_encoder.{path}"
            lookup[f"lora_te1_{path.replace('.', '_')}"] = f"text_encoder.{path}"
            lookup[f"lora_te2_{path.replace('.', '_')}"] = f"text_encoder_2.{path}"
    lookup["lora_te2_text_projection"] = "text_encoder_2.text_projection"
    return lookup


@lru_cache(maxsize=1)
def _union_lookup() -> dict[str, str]:
    """All families' spellings (a spelling that means different modules in different families is left out),
    plus the diffusers-style spellings of a generic SD layout."""
    union: dict[str, str] = {}
    clashes = set()
    for family in FAMILIES:
        for spelling, canonical in _family_lookup(family).items():
            if union.setdefault(spelling, canonical) != canonical:
                clashes.add(spelling)
    for spelling in clashes:
        del union[spelling]
    for spelling, canonical in _generic_lookup().items():
        union.setdefault(spelling, canonical)
    return union


def kohya_lookup(family: str | None, table: Mapping[str, ModuleInfo] | None = None) -> dict[str, str]:
    """{every accepted Kohya LoRA name: canonical module name}.

    Accepted: `lora_unet_` + diffusers path, `lora_unet_` + LDM/SGM path, `lycoris_` + diffusers path,
    `lora_te_` (one text encoder) or `lora_te1_`/`lora_te2_` (two) + HF path, all with `.` -> `_`.

    Args:
        family: "sd1", "sd2", "sdxl", or None for a custom model.
        table: the module table to use (e.g. `tables.table_for_model(model)`); default: the family's shipped
            table, or for family None the union of all shipped tables (spellings that clash between families
            are left out) plus the diffusers-style names of a generic SD layout (UNet blocks 0-3 with up to
            4 resnets/attentions and 10 transformer blocks each; CLIP text encoders up to 32 layers).

    Returns:
        A dict to look raw Kohya names up in (do not modify it; it may be cached).
    """
    if table is not None:
        return lookup_for_table(table)
    if family is None:
        return _union_lookup()
    if family not in ALL_FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; use one of {', '.join(ALL_FAMILIES)}")
    return _family_lookup(family)
