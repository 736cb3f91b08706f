"""Editing a LoRA file's metadata (title, trigger words, description, any key) without touching its tensors.

Only the JSON header is rewritten; the tensor bytes are copied unchanged, so `sshs_model_hash` (the
SHA-256 of the tensor data, what A1111 and Civitai show) stays the same by construction: it is
recomputed from the source's data and stored. `sshs_legacy_hash` covers bytes 0x100000..0x110000 of the
file, which move with the header size, so it is computed on the file as written (what A1111 computes
when it reads that file). The result is written atomically (`sdlora.atomic`): a failed edit leaves the
original file, or the existing output, untouched.

Torch-free (like `sdlora.header`), so it is fast even on big files. Used by `sdlora meta` and the web
UI's metadata editor.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.atomic import atomic_path
from sdlora.errors import ConfigError, FormatError
from sdlora.header import SafetensorsHeader, legacy_hash, read_header, tensor_data_sha256

# sd-scripts' SS_METADATA_MINIMUM_KEYS plus what loaders need to place the file
MINIMUM_KEYS = (
    "ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
    "ss_network_args", "modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation",
    "modelspec.prediction_type", "lora_adapter_metadata", "sdlora_dora_axis",
)
TITLE, TRIGGER, DESCRIPTION = "modelspec.title", "modelspec.trigger_phrase", "modelspec.description"
# computed from the file on every write; a value given by hand would be wrong after the rewrite
HASH_KEYS = ("sshs_model_hash", "sshs_legacy_hash")


@dataclass
class Edits:
    """Changes to a file's metadata, applied in this order (see `edited_metadata`)."""

    strip: bool = False  # keep only MINIMUM_KEYS
    unset: list[str] = field(default_factory=list)  # keys to remove; each must be in the file
    set_keys: dict[str, str] = field(default_factory=dict)  # keys set exactly as given ("" included)
    # the web UI's fields: None leaves the modelspec key, a blank value removes it
    title: str | None = None
    trigger_words: str | None = None
    description: str | None = None


@dataclass
class MetadataEdit:
    """What `edit_metadata` did: the file written, and the metadata before and after."""

    path: Path
    before: dict[str, str]
    after: dict[str, str]

    @property
    def hash_kept(self) -> bool:
        """Whether the stored `sshs_model_hash` is unchanged (True when the source stored none)."""
        return self.before.get("sshs_model_hash", self.after["sshs_model_hash"]) == self.after["sshs_model_hash"]

    def changes(self) -> tuple[list[str], list[str], list[str]]:
        """(added, removed, changed) keys, sorted; hash keys left out (they are always recomputed)."""
        old = {k: v for k, v in self.before.items() if k not in HASH_KEYS}
        new = {k: v for k, v in self.after.items() if k not in HASH_KEYS}
        return (sorted(new.keys() - old.keys()), sorted(old.keys() - new.keys()),
                sorted(k for k in new.keys() & old.keys() if new[k] != old[k]))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a .safetensors file (header only; the file is validated, tensors are not read).

    Raises:
        FormatError: missing, pickled or damaged file.
    """
    return dict(read_header(path).metadata)


def edited_metadata(metadata: Mapping[str, str], edits: Edits) -> dict[str, str]:
    """The new metadata (hash keys removed; the writer computes them).

    Applied in order: `strip` keeps only MINIMUM_KEYS; `unset` removes keys; `set_keys` sets values
    exactly as given; `title`, `trigger_words` and `description` set their modelspec key (None leaves it,
    a blank value removes it, as the web UI's empty fields do).

    Raises:
        ConfigError: a key to unset is not in `metadata`, a key is both set and unset, a hash key is set
            or unset, or a key is empty.
    """
    _check_keys(metadata, edits.set_keys, edits.unset)
    out = {k: v for k, v in metadata.items() if k in MINIMUM_KEYS} if edits.strip else dict(metadata)
    for key in edits.unset:
        out.pop(key, None)
    out.update({str(k): str(v) for k, v in edits.set_keys.items()})
    for key, value in ((TITLE, edits.title), (TRIGGER, edits.trigger_words), (DESCRIPTION, edits.description)):
        if value is None:
            continue
        if str(value).strip():
            out[key] = str(value).strip()
        else:
            out.pop(key, None)
    for key in HASH_KEYS:
        out.pop(key, None)
    return out


def _check_keys(metadata: Mapping[str, str], set_keys: Mapping[str, str], unset: Iterable[str]) -> None:
    for key in [*set_keys, *unset]:
        if not str(key).strip():
            raise ConfigError("metadata key: empty; give KEY=VALUE with a key, e.g. modelspec.title=My style")
        if key in HASH_KEYS:
            raise ConfigError(f"metadata key {key!r}: computed from the file on every write; it cannot be set or "
                              "removed by hand")
    both = sorted(set(set_keys) & set(unset))
    if both:
        raise ConfigError(f"metadata key {both[0]!r}: both set and unset; choose one")
    missing = [key for key in unset if key not in metadata]
    if missing:
        raise ConfigError(f"metadata key {missing[0]!r}: not in the file, so it cannot be unset; the file has "
                          f"{_key_list(metadata)}")


def _key_list(metadata: Mapping[str, str], limit: int = 12) -> str:
    keys = sorted(metadata)
    if not keys:
        return "no metadata"
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} keys)" if len(keys) > limit else "")


def edit_metadata(src: str | os.PathLike, edits: Edits, dst: str | os.PathLike | None = None) -> MetadataEdit:
    """Write `src` with its metadata changed by `edits` to `dst` (None: rewrite `src` in place); returns
    what was done. The tensor data is copied byte for byte.

    Raises:
        FormatError: `src` is not a readable .safetensors file, or `dst`'s folder does not exist.
        ConfigError: an invalid edit (see `edited_metadata`).
    """
    before = read_metadata(src)
    metadata = edited_metadata(before, edits)
    # in place through a symlink: replace the file it points to, not the link
    target = Path(src).resolve() if dst is None else Path(dst)
    after = write_with_metadata(src, target, metadata)
    return MetadataEdit(target, before, after)


def write_with_metadata(src: str | os.PathLike, dst: str | os.PathLike, metadata: Mapping[str, str]) -> dict[str, str]:
    """Copy safetensors file `src` to `dst` (which may be `src`) with a new metadata block; returns the
    metadata written.

    `sshs_model_hash` is the tensor-data hash of `src` (identical in `dst`); `sshs_legacy_hash` is
    computed on the written file, then stored (a header rewrite of the same size: the hash range is after
    the header, so storing it does not change it unless the header reaches 1 MiB).

    Raises:
        FormatError: `src` is unreadable, `dst`'s folder is missing, or the copy came out the wrong size.
    """
    src, dst = Path(src), Path(dst)
    header = read_header(src)
    folder = dst.parent if str(dst.parent) else Path(".")
    if not folder.is_dir():
        raise FormatError(f"{dst}: the folder {folder} does not exist; create it first")
    if dst.is_dir():
        raise FormatError(f"{dst}: is a folder; give the path of the .safetensors file to write")
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta["sshs_model_hash"] = tensor_data_sha256(src, header.data_offset)
    meta["sshs_legacy_hash"] = "0" * 8  # placeholder of the final length, replaced below
    mode = src.stat().st_mode & 0o777 if src.resolve() == dst.resolve() else None
    with atomic_path(dst) as tmp:
        _write(src, tmp, header, meta)
        meta["sshs_legacy_hash"] = legacy_hash(tmp)
        _write(src, tmp, header, meta)
        if legacy_hash(tmp) != meta["sshs_legacy_hash"]:  # the header spans the hash range: store none
            meta.pop("sshs_legacy_hash")
            _write(src, tmp, header, meta)
    if mode is not None:  # an edit in place keeps the file's permissions (a private LoRA stays private)
        os.chmod(dst, mode)
    return meta


def _write(src: Path, dst: Path, header: SafetensorsHeader, metadata: dict[str, str]) -> None:
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
        raise FormatError(f"{src}: the file changed while its header was rewritten (size check failed); "
                          "nothing was replaced; try again")
