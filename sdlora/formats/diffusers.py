"""diffusers and PEFT LoRA files (docs/formats.md §2.10).

Readers for: PEFT-era diffusers files (`unet.<path>.lora_A.weight` / `lora_B`, DoRA
`lora_magnitude_vector`, `lora_adapter_metadata` with rank/alpha patterns), no-prefix files,
diffusers 0.2x `unet.<path>.lora.down.weight`, legacy attention-processor keys
(`...attn1.processor.to_q_lora.down.weight`), legacy text-encoder `lora_linear_layer` keys, and PEFT
`save_pretrained` adapters (`base_model.model.<path>` + adapter_config.json). The writer produces the
PEFT-era layout that `pipeline.load_lora_weights` reads, with per-module rank/alpha in metadata.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

from sdlora.arch.components import COMPONENTS
from sdlora.arch.naming import original_lookup
from sdlora.arch.tables import family_table
from sdlora.errors import FormatError
from sdlora.formats import fused
from sdlora.formats.metadata import carried_metadata
from sdlora.weights import KeyIssue, LoraModule, LoraState

# key ending -> role of the tensor in its module (checked in order; the first match wins)
_ROLES = (
    (re.compile(r"\.lora_A(\.default)?\.weight$"), "down"),
    (re.compile(r"\.lora_B(\.default)?\.weight$"), "up"),
    (re.compile(r"\.lora\.down\.weight$"), "down"),
    (re.compile(r"\.lora\.up\.weight$"), "up"),
    (re.compile(r"\.lora_linear_layer\.down\.weight$"), "down"),
    (re.compile(r"\.lora_linear_layer\.up\.weight$"), "up"),
    (re.compile(r"\.lora_magnitude_vector(\.default)?(\.weight)?$"), "magnitude"),
    (re.compile(r"\.alpha$"), "alpha"),
)
# legacy attention processors: `<attn>.processor.to_q_lora.down.weight` -> `<attn>.to_q`
_ATTNPROC = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")
_UNET_ROOTS = ("down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out", "time_embedding.",
               "add_embedding.", "conv_norm_out", "encoder_hid_proj")  # fmt: skip
_PEFT_CLASSES = {"CLIPTextModel": "text_encoder", "CLIPTextModelWithProjection": "text_encoder_2",
                 "UNet2DConditionModel": "unet"}  # fmt: skip


def read(tensors: dict, metadata: dict[str, str], *, dialect: str, config: dict | None = None,
         name: str = "", table=None) -> LoraState:  # fmt: skip
    """A diffusers / PEFT state dict -> LoraState (alpha from `.alpha` keys, the config or metadata).

    FLUX files in the original layout (`diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight`) are mapped
    onto diffusers names, fused layers split by rows (docs/formats.md §2.14); `table` (a model's module table)
    names a reduced FLUX model's layers, else the shipped FLUX table does.
    """
    state = LoraState(metadata=dict(metadata), format=dialect)
    configs = _configs(metadata, config)
    groups = _group(tensors, state, config)
    originals = _originals(groups, table)
    for canonical, parts in groups.items():
        module = _module(canonical, parts, configs, state)
        if module is None:
            continue
        keys = [key for key, _ in parts.values()]
        layer = originals.get(_original_path(canonical))
        if layer is None:
            state.modules[canonical] = module
            state.source_keys[canonical] = keys
        elif fused.splittable(module):
            for part_name, part in fused.split(module, *layer, where=f"{name}: {canonical}").items():
                state.modules[part_name] = part
                state.source_keys[part_name] = keys
        else:
            state.issues.extend(KeyIssue(key, "unsupported_kind", "DoRA on a fused FLUX layer cannot be split yet")
                                for key in keys)  # fmt: skip
    return state


_ORIGINAL_ROOTS = ("double_blocks.", "single_blocks.", "final_layer.", "img_in", "txt_in", "time_in.",
                   "vector_in.", "guidance_in.")  # fmt: skip


def _original_path(canonical: str) -> str:
    """The FLUX original-layout path a grouped key names (`unet.diffusion_model.double_blocks...` or
    `transformer.double_blocks...` -> `double_blocks...`), or "" for any other key."""
    path = canonical.split(".", 1)[1] if "." in canonical else canonical
    path = path.removeprefix("diffusion_model.")
    return path if path.startswith(_ORIGINAL_ROOTS) else ""


def _originals(groups: dict, table) -> dict:
    """{original FLUX layer path: (parts, rule)} when some key uses the original layout, else {}."""
    if not any(_original_path(canonical) for canonical in groups):
        return {}
    if table is None or not any(n.startswith("transformer.") for n in table):
        table = family_table("flux")
    return original_lookup(table)


def _group(tensors: dict, state: LoraState, config: dict | None) -> dict[str, dict]:
    """{canonical module: {role: (file key, tensor)}}; keys no rule explains go to issues."""
    peft_component = _peft_component(tensors, config)
    groups: dict[str, dict] = {}
    for key, tensor in tensors.items():
        parsed = _parse_key(key, peft_component)
        if parsed is None:
            state.issues.append(KeyIssue(key, "unsupported_kind", "not a LoRA weight sdlora knows"))
            continue
        module_path, role = parsed
        groups.setdefault(module_path, {})[role] = (key, tensor)
    return groups


def _parse_key(key: str, peft_component: str | None) -> tuple[str, str] | None:
    """(canonical module, role) for a file key, or None."""
    match = _ATTNPROC.match(key)
    if match:
        path, proj, side = match.groups()
        path = f"{path}.{'to_out.0' if proj == 'to_out' else proj}"
        return _canonical(path, None), side
    for pattern, role in _ROLES:
        found = pattern.search(key)
        if found:
            return _canonical(key[: found.start()], peft_component), role
    return None


def _canonical(path: str, peft_component: str | None) -> str:
    """Component-qualified canonical module name for a key's module path."""
    if path.startswith("base_model.model."):
        path = path[len("base_model.model.") :]
        component = peft_component or ("text_encoder" if _is_text_path(path) else "unet")
        return _with_text_model(component, path)
    head, _, rest = path.partition(".")
    if head in COMPONENTS:
        return _with_text_model(head, rest)
    if _is_text_path(path):
        return _with_text_model("text_encoder", path)
    return f"unet.{path}"


def _is_text_path(path: str) -> bool:
    return path.startswith(("text_model.", "encoder.layers.")) and not path.startswith(_UNET_ROOTS)


def _with_text_model(component: str, path: str) -> str:
    """Text-encoder canonical paths always include `text_model.` (transformers 5 dropped it from live models)."""
    if component.startswith("text_encoder") and not path.startswith("text_model."):
        path = f"text_model.{path}"
    return f"{component}.{path}"


def _peft_component(tensors: dict, config: dict | None) -> str | None:
    """The component a PEFT adapter (no component prefix) belongs to: from the config, else the keys."""
    base_class = ((config or {}).get("auto_mapping") or {}).get("base_model_class")
    if base_class in _PEFT_CLASSES:
        return _PEFT_CLASSES[base_class]
    if any(k.startswith("base_model.model.") for k in tensors):
        text = any(_is_text_path(k[len("base_model.model.") :]) for k in tensors)
        return "text_encoder" if text else "unet"
    return None


def _configs(metadata: dict[str, str], config: dict | None) -> dict[str, dict]:
    """{component or "": LoraConfig-like dict} from an adapter_config.json or `lora_adapter_metadata`."""
    if config is not None:
        return {"": config}
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        raise FormatError("lora_adapter_metadata is not valid JSON; remove it or fix the file") from None
    configs: dict[str, dict] = {}
    for key, value in packed.items():
        head, _, rest = key.partition(".")
        component, field = (head, rest) if head in COMPONENTS and rest else ("", key)
        configs.setdefault(component, {})[field] = value
    return configs


def _module(canonical: str, parts: dict, configs: dict[str, dict], state: LoraState) -> LoraModule | None:
    if "down" not in parts or "up" not in parts:
        for key, _ in parts.values():
            state.issues.append(KeyIssue(key, "unsupported_kind", "incomplete LoRA pair (needs down and up)"))
        return None
    down, up = parts["down"][1], parts["up"][1]
    module = LoraModule("lora", {"down": down, "up": up})
    component = canonical.split(".", 1)[0]
    config = configs.get(component) or configs.get("")
    if "alpha" in parts:
        module.alpha = float(parts["alpha"][1].float().item()) or None
    elif config is not None:
        module.alpha = _config_alpha(config, canonical.split(".", 1)[1], int(down.shape[0]))
    if "magnitude" in parts:
        # PEFT/diffusers DoRA is always per output channel (docs/formats.md §2.9); keep a flat (out,) vector
        module.tensors["dora_scale"] = parts["magnitude"][1].reshape(-1)
        module.dora_axis = "out"
    return module


def _config_alpha(config: dict, path: str, rank: int) -> float | None:
    """Alpha from a LoraConfig: alpha_pattern, else lora_alpha, rsLoRA folded in (docs/formats.md §2.4)."""
    alpha = _pattern_value(config.get("alpha_pattern") or {}, path)
    if alpha is None:
        alpha = config.get("lora_alpha")
    if alpha is None:
        return None
    alpha = float(alpha)
    if config.get("use_rslora"):
        alpha = alpha * rank / math.sqrt(rank)  # so that alpha / rank == lora_alpha / sqrt(rank)
    return alpha


def _pattern_value(patterns: dict, path: str):
    """PEFT's pattern rule: a key matches when the module path ends with it (`(.*\\.)?(key)$`)."""
    candidates = {path, path.removeprefix("text_model.")}
    for key, value in patterns.items():
        if any(re.match(rf"(.*\.)?({key})$", candidate) for candidate in candidates):
            return value
    return None


# ------------------------------------------------------------------------------------------------ writing


def write(lora: LoraState, dtype=None) -> tuple[dict, dict[str, str]]:
    """LoraState -> (PEFT-era diffusers state dict, metadata with `lora_adapter_metadata`)."""
    tensors = {}
    per_component: dict[str, dict[str, LoraModule]] = {}
    for canonical, module in lora.modules.items():
        _check_writable(canonical, module, lora)
        tensors.update(_module_tensors(canonical, module, dtype))
        component, path = canonical.split(".", 1)
        per_component.setdefault(component, {})[path] = module
    packed = {}
    for component, modules in per_component.items():
        for field, value in _lora_config(component, modules).items():
            packed[f"{component}.{field}"] = value
    metadata = carried_metadata(lora.metadata)
    metadata["format"] = "pt"
    metadata["lora_adapter_metadata"] = json.dumps(packed, sort_keys=True)
    return tensors, metadata


def _check_writable(canonical: str, module: LoraModule, lora: LoraState) -> None:
    hint = '; write it as Kohya instead (--to kohya / format="kohya")'
    if module.kind != "lora":
        raise FormatError(f"{canonical}: {module.kind} modules cannot be written in diffusers format{hint}")
    if "mid" in module.tensors:
        raise FormatError(f"{canonical}: Tucker (lora_mid) LoCon cannot be written in diffusers format{hint}")
    if module.dora_axis == "in":
        raise FormatError(f"{canonical}: per-input DoRA cannot be written in diffusers (PEFT) format{hint}")
    if lora.extras.get("embeddings"):
        raise FormatError(
            f"the LoRA bundles textual-inversion embeddings, which diffusers files cannot hold{hint}"
        )


def _module_tensors(canonical: str, module: LoraModule, dtype) -> dict:
    out = {}
    for tensor_name, suffix in (("down", "lora_A.weight"), ("up", "lora_B.weight")):
        out[f"{canonical}.{suffix}"] = _cast(module.tensors[tensor_name], dtype)
    if "dora_scale" in module.tensors:
        out[f"{canonical}.lora_magnitude_vector"] = _cast(module.tensors["dora_scale"].reshape(-1), dtype)
    return out


def _cast(tensor, dtype):
    tensor = tensor.detach().cpu()
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor.contiguous()


def _pattern_key(component: str, path: str) -> str:
    """A PEFT pattern / target name for one module; text encoders drop `text_model.` so that the name
    matches live CLIP models both with (transformers 4) and without (transformers 5) that level."""
    if component.startswith("text_encoder"):
        path = path.removeprefix("text_model.")
    return re.escape(path)


def _lora_config(component: str, modules: dict[str, LoraModule]) -> dict:
    """LoraConfig kwargs for one component: most common rank/alpha plus per-module patterns."""
    ranks = {path: m.rank for path, m in modules.items()}
    alphas = {path: (m.alpha if m.alpha else float(m.rank)) for path, m in modules.items()}
    rank = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {_pattern_key(component, p): r for p, r in ranks.items() if r != rank},
        "alpha_pattern": {_pattern_key(component, p): a for p, a in alphas.items() if a != alpha},
        "target_modules": sorted(_pattern_key(component, p).replace("\\", "") for p in modules),
        "use_dora": any("dora_scale" in m.tensors for m in modules.values()),
        "use_rslora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
    }
