"""Readers and writers for every LoRA dialect: `load_lora`, `save_lora`, `detect_format`.

`load_lora` validates the container first (sdlora.header: pickles are refused without unpickling,
damaged files and full checkpoints get a one-line FormatError), then detects the dialect from the
keys, reads it into the canonical `LoraState` (sdlora.weights) and detects the base family from the
tensor shapes (sdlora.arch.family). `save_lora` writes canonical Kohya or diffusers files atomically.
torch is imported only when tensors are read or written.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from math import prod
from pathlib import Path

from sdlora import validate
from sdlora.arch.family import detect_family
from sdlora.arch.tables import family_table
from sdlora.errors import FormatError
from sdlora.formats import cloneofsimo, diffusers, kohya
from sdlora.formats.metadata import write_safetensors
from sdlora.header import SafetensorsHeader, check_is_lora, read_header

# dialect names, as LoraState.format reports them
FORMATS = ("kohya", "lycoris", "diffusers", "diffusers-attnproc", "diffusers-legacy", "peft", "cloneofsimo")
WRITE_FORMATS = ("kohya", "diffusers")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# a PEFT weights file keeps its alpha only in adapter_config.json (docs/formats.md): say so wherever it is shown
PEFT_NO_CONFIG = "alpha unknown: adapter_config.json not found; scale 1 assumed"


# (key pattern, dialect), first match wins; bundled embeddings (`bundle_emb.`) are neutral
_KEY_RULES = (
    (re.compile(r"^[A-Za-z_0-9]+:\d+:(up|down)$"), "cloneofsimo"),
    (re.compile(r"^bundle_emb\."), None),
    (re.compile(r"^base_model\.model\."), "peft"),
    (re.compile(r"^(lora_|lycoris_)[^.]+\.(hada_|lokr_|diff$|diff_b$|lora_mid\.|dora_scale$)"), "lycoris"),
    (re.compile(r"^(lora_|lycoris_)[^.]+\."), "kohya"),
    (re.compile(r"_lora\.(down|up)\."), "diffusers-attnproc"),
    (re.compile(r"\.lora\.(down|up)\.|lora_linear_layer\."), "diffusers-legacy"),
    (re.compile(r"\.lora_[AB]\b|lora_magnitude_vector"), "diffusers"),
)


def _key_dialect(key: str) -> str | None:
    """The dialect a single key belongs to, or None for a neutral / unknown key."""
    for pattern, dialect in _KEY_RULES:
        if pattern.search(key):
            return dialect
    return None


def detect_format(keys: Iterable[str], metadata: dict[str, str] | None = None) -> str:
    """The dialect of a LoRA file from its tensor keys (most keys decide; metadata breaks no ties).

    Kohya-named files that use any LyCORIS tensor (LoHa, LoKr, Tucker, full diff, DoRA) are "lycoris".
    Raises FormatError when no key belongs to a known dialect.
    """
    keys = list(keys)
    votes = Counter(d for d in map(_key_dialect, keys) if d is not None)
    if not votes:
        example = keys[0] if keys else "(no keys)"
        raise FormatError(f"unrecognised LoRA key layout (e.g. {example!r}); sdlora cannot read this file")
    if "lycoris" in votes and "kohya" in votes:
        return "lycoris"
    if "peft" in votes:
        return "peft"
    return votes.most_common(1)[0][0]


def load_lora(path: str | os.PathLike, table=None):
    """Read a LoRA file (or a PEFT adapter folder) into a canonical `LoraState`.

    Args:
        path: a `.safetensors` file, a PEFT folder (`adapter_model.safetensors` + `adapter_config.json`),
            or `<stem>.safetensors` beside `<stem>.adapter_config.json`.
        table: optional module table (`tables.table_for_model(model)`) for LoRAs of a custom model, whose
            Kohya names the shipped SD1/SD2/SDXL tables do not know.

    Raises:
        FormatError: the file is not a readable LoRA (with the file name, the reason and what to do).
    """
    file_path, config_path = resolve_paths(Path(path))
    header = read_header(file_path)
    check_is_lora(header)
    config = read_adapter_config(config_path) if config_path else None
    validate.check_metadata(header.metadata, config, file_path.name)
    dialect = "peft" if config is not None else detect_format(header.tensors, header.metadata)
    family = _detect_family(header)
    tensors = _read_tensors(header)
    validate.check_tensors(tensors, file_path.name)
    state = _read_dialect(dialect, tensors, header, family, config, table)
    state.path = str(path)
    state.family = family  # the LoRA's own family (from its shapes), even when resolved against a table
    _fill_shapes(state, table)
    validate.check_state(state, file_path.name)
    validate.check_usable(state, list(header.tensors), file_path.name, dialect)
    if dialect == "peft" and config is None:
        state.notes.append(PEFT_NO_CONFIG)
    state.modules = dict(sorted(state.modules.items()))
    return state


def _read_dialect(dialect, tensors, header: SafetensorsHeader, family, config, table):
    name = os.path.basename(header.path)
    if dialect in ("kohya", "lycoris"):
        return kohya.read(tensors, header.metadata, family, table=table, name=name, dialect=dialect)
    if dialect == "cloneofsimo":
        return cloneofsimo.read(tensors, header.metadata, name=name)
    return diffusers.read(tensors, header.metadata, dialect=dialect, config=config, name=name, table=table)


def resolve_paths(path: Path) -> tuple[Path, Path | None]:
    """(weights file, adapter config or None) for a file or a PEFT adapter folder."""
    if path.is_dir():
        weights, config = path / "adapter_model.safetensors", path / "adapter_config.json"
        if not weights.is_file():
            raise FormatError(
                f"{path}: folder has no adapter_model.safetensors; pass a .safetensors LoRA file or a PEFT "
                "adapter folder (adapter_model.safetensors + adapter_config.json)"
            )
        return weights, config if config.is_file() else None
    stem_config = path.with_name(path.name.removesuffix(".safetensors") + ".adapter_config.json")
    if stem_config.is_file():
        return path, stem_config
    folder_config = path.with_name("adapter_config.json")
    if path.name == "adapter_model.safetensors" and folder_config.is_file():
        return path, folder_config
    return path, None


def read_adapter_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(
            f"{path.name}: cannot read the PEFT adapter config ({err}); fix or remove it"
        ) from None
    if not isinstance(config, dict):
        raise FormatError(f"{path.name}: the PEFT adapter config is not a JSON object")
    return config


def _detect_family(header: SafetensorsHeader) -> str | None:
    try:
        return detect_family({k: v.shape for k, v in header.tensors.items()}, header.metadata)
    except FormatError as err:
        raise FormatError(f"{os.path.basename(header.path)}: {err}") from None


def _read_tensors(header: SafetensorsHeader) -> dict:
    """All tensors of a validated file; NaN/Inf in any float tensor is a FormatError naming the key."""
    from sdlora.tensorfile import read_tensors  # tensorfile imports torch; `inspect` needs only the header

    return read_tensors(header)


def _fill_shapes(state, table) -> None:
    """Set each module's base `shape` from the module table when it fits (flattened convs need it)."""
    if table is None and state.family is not None:
        table = family_table(state.family)
    if table is None:
        return
    for name, module in state.modules.items():
        info = table.get(name)
        if info is None or module.shape is not None:
            continue
        raw = module.raw_delta_shape()
        if prod(raw) == prod(info.shape) and raw[0] == info.shape[0]:
            module.shape = tuple(info.shape)


def save_lora(lora, path: str | os.PathLike, format: str = "kohya", dtype: str | None = None) -> None:
    """Write `lora` (a LoraState) as a canonical Kohya or diffusers `.safetensors` file, atomically.

    Args:
        format: "kohya" (A1111 / ComfyUI / sd-scripts) or "diffusers" (`pipeline.load_lora_weights`).
        dtype: "fp32", "fp16", "bf16" (or torch dtype names); None keeps each tensor's dtype.

    Raises:
        FormatError: unknown format/dtype, or the LoRA cannot be expressed in the format
            (e.g. LoHa/LoKr as diffusers). Nothing is written then.
    """
    if format not in WRITE_FORMATS:
        raise FormatError(f"unknown output format {format!r}; use one of {', '.join(WRITE_FORMATS)}")
    torch_dtype = _torch_dtype(dtype)
    writer = kohya.write if format == "kohya" else diffusers.write
    tensors, metadata = writer(lora, torch_dtype)
    write_safetensors(tensors, metadata, Path(path), add_hashes=format == "kohya")


def _torch_dtype(dtype):
    if dtype is None:
        return None
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPES.get(str(dtype), str(dtype))
    if name not in DTYPES.values():
        raise FormatError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)
