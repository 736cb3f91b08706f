"""A LoRA file summary from its header alone (standard library only: no torch, no diffusers).

`sdlora inspect` uses this to answer in well under a second. Modules are grouped by stripping the
known tensor suffixes of every dialect (Kohya, LyCORIS, diffusers, PEFT, attention processors,
cloneofsimo); ranks come from the down-side tensor shapes, alphas from the 0-dim `.alpha` tensors
(decoded from the raw bytes), a PEFT adapter config or `lora_adapter_metadata`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from pathlib import Path

from sdlora.arch.family import describe_family
from sdlora.errors import FormatError
from sdlora.formats import PEFT_NO_CONFIG, detect_format, read_adapter_config, resolve_paths
from sdlora.header import SafetensorsHeader, check_is_lora, legacy_hash, read_header, tensor_data_sha256
from sdlora.validate import check_metadata

# tensor-key suffix of every dialect -> role ("down" tensors give the rank; "hada"/"lokr"/"diff" the kind)
_SUFFIX = re.compile(
    r"(?P<suffix>\.(lora_down\.weight|lora_up\.weight|lora_mid\.weight|alpha|dora_scale|scale|"
    r"hada_\w+|lokr_\w+|diff|diff_b|lora_[AB](\.default)?\.weight|lora\.(down|up)\.weight|"
    r"lora_linear_layer\.(down|up)\.weight|lora_magnitude_vector(\.default)?(\.weight)?|"
    r"processor\.to_(q|k|v|out)_lora\.(down|up)\.weight|oft_\w+|on_input|w_norm|b_norm)|:(down|up))$"
)
_RANK_SUFFIXES = ("lora_down.weight", "lora_A.weight", "lora_A.default.weight", "lora.down.weight",
                  "lora_linear_layer.down.weight", ":down", "hada_w1_b", "lokr_w1_b", "lokr_w2_b")  # fmt: skip
_STRUCT = {"F32": ("<f", 4), "F64": ("<d", 8), "F16": ("<e", 2)}
_COMPONENT_RULES = (
    (re.compile(r"^(lora_te2_|text_encoder_2[.:])"), "text_encoder_2"),
    (
        re.compile(r"^(lora_te1?_|text_encoder[.:]|base_model\.model\.text_model\.|text_model\.)"),
        "text_encoder",
    ),
    (
        re.compile(r"^(lora_unet_|lycoris_|unet[.:]|base_model\.model\.|down_blocks|up_blocks|mid_block)"),
        "unet",
    ),
)


def summarise(path: str | os.PathLike, with_hash: bool = True) -> dict:
    """Everything `sdlora inspect` shows, as a JSON-ready dict. Raises FormatError for bad files."""
    file_path, config_path = resolve_paths(Path(path))
    header = read_header(file_path)
    check_is_lora(header)
    config = read_adapter_config(config_path) if config_path else None
    check_metadata(header.metadata, config, file_path.name)
    modules, stray = _group(header)
    try:
        family = describe_family({k: v.shape for k, v in header.tensors.items()}, header.metadata)
    except FormatError as err:
        raise FormatError(f"{file_path.name}: {err}") from None
    alphas = _alphas(header, modules, config)
    dialect = "peft" if config is not None else detect_format(header.tensors, header.metadata)
    info = {
        "file": str(path),
        "format": dialect,
        "family": family,
        "components": sorted({_component(m, config) for m in modules} - {None}),
        "modules": len(modules),
        "kinds": dict(Counter(_kind(parts) for parts in modules.values())),
        "ranks": _counts(_rank(parts, header) for parts in modules.values()),
        "alphas": _counts(alphas.values()),
        "dtypes": header.dtypes(),
        "tensors": len(header.tensors),
        "unrecognised_keys": stray,
        "trigger_words": trigger_words(header.metadata),
        "top_tags": top_tags(header.metadata),
        "hashes": _hashes(header, with_hash),
        "metadata": header.metadata,
        "file_size": header.file_size,
    }
    if config_path:
        info["adapter_config"] = str(config_path)
    info["warnings"] = [PEFT_NO_CONFIG] if dialect == "peft" and config is None else []
    return info


def _group(header: SafetensorsHeader) -> tuple[dict[str, dict[str, str]], list[str]]:
    """({module id: {suffix: key}}, keys that are neither module tensors nor embeddings)."""
    modules: dict[str, dict[str, str]] = {}
    stray = []
    for key in header.tensors:
        match = _SUFFIX.search(key)
        if match is None:
            if not (key.startswith("bundle_emb.") or header.metadata.get(key) == "<embed>"):
                stray.append(key)
            continue
        suffix = match.group("suffix").lstrip(".")
        if suffix.startswith("processor."):
            suffix = suffix.rsplit(".", 2)[-2] + ".weight"  # to_q_lora.down.weight -> down.weight
            module = key[: match.start()] + "." + match.group("suffix").split(".")[2]
        else:
            module = key[: match.start()]
        modules.setdefault(module, {})[suffix] = key
    return modules, stray


def _rank(parts: dict[str, str], header: SafetensorsHeader) -> int | None:
    """The rank: first dimension of the down-side tensor (LoKr: lokr_w1_b, else lokr_w2_b)."""
    for suffix in _RANK_SUFFIXES:
        if suffix in parts:
            return header.tensors[parts[suffix]].shape[0]
    for suffix, key in parts.items():
        if suffix.endswith("down.weight"):
            return header.tensors[key].shape[0]
    return None


def _kind(parts: dict[str, str]) -> str:
    suffixes = " ".join(parts)
    for marker, kind in (("hada_", "loha"), ("lokr_", "lokr"), ("diff", "full"), ("oft_", "oft"),
                         ("on_input", "ia3"), ("_norm", "norm"), ("lora_mid", "locon-tucker")):  # fmt: skip
        if marker in suffixes:
            return kind
    return "lora+dora" if ("dora_scale" in parts or any("magnitude" in s for s in parts)) else "lora"


def _component(module: str, config: dict | None) -> str | None:
    if module.startswith("base_model.model.") and config is not None:
        base_class = (config.get("auto_mapping") or {}).get("base_model_class", "")
        return {"CLIPTextModelWithProjection": "text_encoder_2", "UNet2DConditionModel": "unet"}.get(
            base_class, "text_encoder" if "text_model" in module or base_class.startswith("CLIP") else "unet"
        )
    for pattern, component in _COMPONENT_RULES:
        if pattern.search(module):
            return component
    return None


def _alphas(header: SafetensorsHeader, modules: dict, config: dict | None) -> dict[str, float | None]:
    """{module id: alpha or None}: `.alpha` tensors, else the PEFT config / lora_adapter_metadata."""
    packed = _adapter_metadata(header.metadata)
    alphas = {}
    with open(header.path, "rb") as fh:
        for module, parts in modules.items():
            key = parts.get("alpha")
            if key is not None:
                alphas[module] = _scalar(fh, header, key)
            else:
                cfg = config or packed.get(_component(module, None) or "") or packed.get("")
                alphas[module] = (
                    float(cfg["lora_alpha"]) if cfg and cfg.get("lora_alpha") is not None else None
                )
    return alphas


def _adapter_metadata(metadata: dict[str, str]) -> dict[str, dict]:
    try:
        packed = json.loads(metadata.get("lora_adapter_metadata") or "{}")
    except json.JSONDecodeError:
        return {}
    configs: dict[str, dict] = {}
    for key, value in packed.items() if isinstance(packed, dict) else ():
        head, _, rest = key.partition(".")
        component, field = (head, rest) if rest and head.startswith(("unet", "text_encoder")) else ("", key)
        configs.setdefault(component, {})[field] = value
    return configs


def _scalar(fh, header: SafetensorsHeader, key: str) -> float | None:
    """Decode a 0-dim (or 1-element) float tensor straight from the file bytes."""
    info = header.tensors[key]
    fh.seek(header.data_offset + info.start)
    raw = fh.read(info.end - info.start)
    if info.dtype == "BF16" and len(raw) == 2:
        return struct.unpack("<f", b"\x00\x00" + raw)[0]
    fmt = _STRUCT.get(info.dtype)
    if fmt is None or len(raw) != fmt[1]:
        return None
    return struct.unpack(fmt[0], raw)[0]


def _counts(values) -> dict[str, int]:
    """{value as text: how many modules}; None is shown as "none (scale 1)"."""
    counts = Counter("none (scale 1)" if v is None else _text(v) for v in values)
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def _text(value) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def trigger_words(metadata: dict[str, str]) -> list[str]:
    """The trigger words the LoRA was trained with (`modelspec.trigger_phrase`, split at commas)."""
    from sdlora.library import trigger_words as from_metadata

    return from_metadata(metadata)


def top_tags(metadata: dict[str, str], limit: int = 10) -> list[str]:
    """Most frequent training caption tags (sd-scripts `ss_tag_frequency`), trigger words left out."""
    from sdlora.library import top_tags as from_metadata

    return from_metadata(metadata, limit)


def _hashes(header: SafetensorsHeader, with_hash: bool) -> dict[str, str | bool | None]:
    """Stored sshs_* hashes, the tensor-data SHA-256 computed now, and A1111's 12-char short hash."""
    hashes: dict[str, str | bool | None] = {
        "sshs_model_hash": header.metadata.get("sshs_model_hash"),
        "sshs_legacy_hash": header.metadata.get("sshs_legacy_hash"),
    }
    if with_hash:
        computed = tensor_data_sha256(header.path, header.data_offset)
        hashes["tensor_sha256"] = computed
        hashes["a1111_short_hash"] = computed[:12]
        hashes["legacy_hash"] = legacy_hash(header.path)
        if hashes["sshs_model_hash"]:
            hashes["sshs_model_hash_matches"] = hashes["sshs_model_hash"] == computed
    return hashes
