"""Metadata editor for LoRA files: strip to the minimum, set title / trigger words / description.

Only the JSON header is rewritten; the tensor bytes are copied unchanged, so `sshs_model_hash`
(SHA-256 of the tensor data, docs/formats.md §2.11; what A1111 and Civitai show) stays the same by
construction. `sshs_legacy_hash` depends on the header size, so it is recomputed on the written file.
The new file is written to a temporary name and renamed (nothing half-written on failure).

Torch-free (like `sdlora.header`), so it is fast even on big files.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

from sdlora.errors import FormatError
from sdlora.header import legacy_hash, read_header, tensor_data_sha256

# sd-scripts' SS_METADATA_MINIMUM_KEYS plus what loaders need to place the file (docs/formats.md §2.11)
MINIMUM_KEYS = (
    "ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
    "ss_network_args", "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation",
    "modelspec.prediction_type", "lora_adapter_metadata", "sdlora_dora_axis",
)
TITLE, TRIGGER, DESCRIPTION = "modelspec.title", "modelspec.trigger_phrase", "modelspec.description"


def edited_metadata(metadata: dict[str, str], *, strip: bool = False, title: str | None = None,
                    trigger_words: str | None = None, description: str | None = None) -> dict[str, str]:
    """The new metadata: optionally stripped to MINIMUM_KEYS, then the given fields set (empty = removed)."""
    out = {k: v for k, v in metadata.items() if k in MINIMUM_KEYS} if strip else dict(metadata)
    for key, value in ((TITLE, title), (TRIGGER, trigger_words), (DESCRIPTION, description)):
        if value is None:
            continue
        if str(value).strip():
            out[key] = str(value).strip()
        else:
            out.pop(key, None)
    for key in ("sshs_model_hash", "sshs_legacy_hash"):
        out.pop(key, None)
    return out


def write_with_metadata(src: str | os.PathLike, dst: str | os.PathLike, metadata: dict[str, str]) -> dict[str, str]:
    """Copy safetensors file `src` to `dst` with a new metadata block; returns the metadata written.

    `sshs_model_hash` is the tensor-data hash of `src` (identical in `dst`); `sshs_legacy_hash` is
    computed on `dst`, then stored (one header rewrite of the same size: the hash range is after the
    header, so storing it does not change it unless the header reaches 1 MiB).
    """
    src, dst = Path(src), Path(dst)
    header = read_header(src)
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta["sshs_model_hash"] = tensor_data_sha256(src, header.data_offset)
    meta["sshs_legacy_hash"] = "0" * 8  # placeholder of the final length, replaced below
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        _write(src, tmp, header, meta)
        meta["sshs_legacy_hash"] = legacy_hash(tmp)
        _write(src, tmp, header, meta)
        if legacy_hash(tmp) != meta["sshs_legacy_hash"]:  # header spans the hash range: store it honestly
            meta.pop("sshs_legacy_hash")
            _write(src, tmp, header, meta)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def _write(src: Path, dst: Path, header, metadata: dict[str, str]) -> None:
    with src.open("rb") as fh:
        fh.seek(8)
        raw = json.loads(fh.read(header.header_size))
        raw.pop("__metadata__", None)
        body = {"__metadata__": metadata, **raw} if metadata else raw
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned, as safetensors writes it
        with dst.open("wb") as out:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            fh.seek(header.data_offset)
            shutil.copyfileobj(fh, out, 1 << 20)
    if dst.stat().st_size != 8 + len(text) + header.file_size - header.data_offset:
        raise FormatError(f"{dst}: size check failed while rewriting the header; the file was not replaced")
