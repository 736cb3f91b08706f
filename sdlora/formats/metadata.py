"""File metadata (sd-scripts `ss_*`, `modelspec.*`), `sshs_*` hashes and the atomic safetensors writer.

Follows docs/formats.md §2.11: all values are strings; `sshs_model_hash` is the SHA-256
of the tensor-data bytes after the header (so metadata edits do not change it), `sshs_legacy_hash`
the first 8 hex of the SHA-256 of bytes 0x100000..0x110000 of the file serialised with only `ss_*`
metadata, exactly as sd-scripts computes them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import datetime, timezone
from pathlib import Path

from sdlora.atomic import write_bytes_atomic
from sdlora.errors import FormatError
from sdlora.header import LEGACY_HASH_RANGE

# family -> (ss_base_model_version, modelspec.architecture, implementation, resolution)
FAMILY_SPECS = {
    "sd1": ("sd_v1", "stable-diffusion-v1/lora", "diffusers", "512x512"),
    "sd2": ("sd_v2", "stable-diffusion-v2-512/lora", "diffusers", "512x512"),
    "sdxl": ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora",
             "https://github.com/Stability-AI/generative-models", "1024x1024"),
}  # fmt: skip
SD2_V_SPEC = ("sd_v2_v", "stable-diffusion-v2-768-v/lora", "diffusers", "768x768")
MODELSPEC_VERSION = "1.0.1"

# metadata that describes the source dialect's layout, meaningless after conversion
_DIALECT_KEYS = ("lora_adapter_metadata", "sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")


def carried_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Input metadata kept on conversion: everything except layout/hash keys of the source dialect."""
    kept = {}
    for key, value in metadata.items():
        if key in _DIALECT_KEYS or _is_cloneofsimo_layout(key, value):
            continue
        kept[key] = value
    return kept


def _is_cloneofsimo_layout(key: str, value: str) -> bool:
    """cloneofsimo's `unet:N:rank`, `unet`/`text_encoder` class lists and `<s1>=<embed>` markers."""
    parts = key.split(":")
    if len(parts) == 3 and parts[1].isdigit():
        return True
    return (key in ("unet", "text_encoder") and value.startswith("[")) or value == "<embed>"


def _common(values: list, fmt) -> str:
    distinct = set(values)
    if len(distinct) == 1:
        return fmt(distinct.pop())
    return "Dynamic"


def _number(value) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def kohya_metadata(lora, written_alphas: dict[str, float], network_args: dict) -> dict[str, str]:
    """sd-scripts' minimum `ss_*` set plus `modelspec.*`, on top of the carried-over input metadata."""
    meta = carried_metadata(lora.metadata)
    ranks = [m.rank for m in lora.modules.values() if m.rank is not None]
    plain = all(m.kind == "lora" and "mid" not in m.tensors and "dora_scale" not in m.tensors
                for m in lora.modules.values())  # fmt: skip
    meta["ss_network_module"] = "networks.lora" if plain else "lycoris.kohya"
    meta["ss_network_dim"] = _common(ranks, _number) if ranks else "1"
    meta["ss_network_alpha"] = _common(list(written_alphas.values()), _number) if written_alphas else "1"
    meta["ss_network_args"] = json.dumps({**_json_dict(meta.get("ss_network_args")), **network_args})
    spec = _family_spec(lora.family, meta)
    if spec is not None:
        v_suffix = "_v" if _is_v_prediction(meta) and lora.family == "sd1" else ""
        meta["ss_base_model_version"] = spec[0] + v_suffix
        meta["ss_v2"] = str(lora.family == "sd2")
        meta.update(_modelspec(lora, meta, spec))
    else:
        meta.setdefault("ss_v2", "False")
    return meta


def _json_dict(text: str | None) -> dict:
    """A JSON object stored as a metadata string, or {} when absent or not an object."""
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _is_v_prediction(meta: dict[str, str]) -> bool:
    """Whether metadata says v-prediction (sd-scripts' `_v` suffix or modelspec; docs/formats.md §2.11)."""
    return meta.get("ss_base_model_version", "").endswith("_v") or meta.get("modelspec.prediction_type") == "v"


def _family_spec(family: str | None, meta: dict[str, str]):
    if family == "sd2" and _is_v_prediction(meta):
        return SD2_V_SPEC
    return FAMILY_SPECS.get(family)


def _modelspec(lora, meta: dict[str, str], spec) -> dict[str, str]:
    title = meta.get("modelspec.title") or meta.get("ss_output_name")
    if not title:
        title = Path(lora.path).name.removesuffix(".safetensors") if lora.path else "sdlora LoRA"
    date = meta.get("modelspec.date") or datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": spec[1],
        "modelspec.implementation": spec[2],
        "modelspec.title": title,
        "modelspec.date": date,
        "modelspec.resolution": meta.get("modelspec.resolution") or spec[3],
        "modelspec.prediction_type": "v" if spec is SD2_V_SPEC or _is_v_prediction(meta) else "epsilon",
    }


def serialise(tensors: dict, metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of `tensors` with `metadata` (all values must be strings)."""
    from safetensors.torch import save

    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise FormatError(f"metadata values must be strings; {bad[0]!r} is {type(metadata[bad[0]]).__name__}")
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def data_sha256(blob: bytes) -> str:
    """SHA-256 of the tensor data after the 8-byte length and the JSON header (docs/formats.md §2.11)."""
    (header_size,) = struct.unpack("<Q", blob[:8])
    return hashlib.sha256(memoryview(blob)[8 + header_size :]).hexdigest()


def legacy_hash_of(blob: bytes) -> str:
    start, end = LEGACY_HASH_RANGE
    return hashlib.sha256(blob[start:end]).hexdigest()[:8]


def with_hashes(tensors: dict, metadata: dict[str, str]) -> dict[str, str]:
    """`metadata` plus sshs_model_hash / sshs_legacy_hash, computed as sd-scripts does (ss_* only)."""
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = serialise(tensors, ss_only)
    return {**metadata, "sshs_model_hash": data_sha256(blob), "sshs_legacy_hash": legacy_hash_of(blob)}


def write_safetensors(tensors: dict, metadata: dict[str, str], path: Path, add_hashes: bool = False) -> None:
    """Serialise, then write atomically: a temp file in the same folder, fsync, os.replace.

    Nothing is left behind on failure (the temp file is removed; an existing `path` is untouched).
    """
    if add_hashes:
        metadata = with_hashes(tensors, metadata)
    blob = serialise(tensors, metadata)
    write_atomic(path, blob)


def write_atomic(path: Path, blob: bytes) -> None:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FormatError(f"{path}: the folder {folder} does not exist; create it first")
    write_bytes_atomic(path, blob)
