"""Read and validate a safetensors header with the standard library only (no torch).

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then raw tensor
bytes (docs/formats.md §2.1). `sdlora inspect` answers from this header alone, so this module must never
import torch. It also refuses pickled checkpoints without unpickling them, and recognises a full
model checkpoint passed where a LoRA is expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from functools import partial
from math import prod

from sdlora.errors import FormatError
from sdlora.filekind import describe_kind, png_parameters
from sdlora.suffixes import PICKLE_SUFFIXES

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
LEGACY_HASH_RANGE = (0x100000, 0x110000)  # docs/formats.md §2.11 sshs_legacy_hash

# key fragments that only adapter files carry (LoRA, LyCORIS, diffusers, PEFT, cloneofsimo)
LORA_MARKERS = (
    "lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up", "_lora.", "lora_linear_layer",
    "hada_", "lokr_", "dora_scale", "lora_magnitude_vector", ":down", ":up", "oft_", "on_input",
    "bundle_emb.", "lora_mid",
)  # fmt: skip
# adapter tensor names that are whole key endings (".diff" alone would also match ".diffusion_model")
LORA_ENDINGS = (".alpha", ".diff", ".diff_b")
CHECKPOINT_PREFIXES = (
    "model.diffusion_model.",
    "first_stage_model.",
    "cond_stage_model.",
    "conditioner.embedders.",
)


@dataclass
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int  # offsets relative to the start of the tensor data
    end: int


@dataclass
class SafetensorsHeader:
    """A validated header: tensor infos (name -> TensorInfo), metadata (str -> str) and sizes."""

    path: str
    header_size: int
    file_size: int
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_offset(self) -> int:
        return 8 + self.header_size

    def dtypes(self) -> dict[str, int]:
        """dtype -> number of tensors."""
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.dtype] = counts.get(info.dtype, 0) + 1
        return counts


def _looks_pickled(first_bytes: bytes, file_size: int) -> bool:
    """Zip (torch.save) or pickle-protocol magic where a safetensors length field cannot make sense."""
    if len(first_bytes) < 9:
        return False
    magic = first_bytes.startswith(b"PK\x03\x04") or (
        first_bytes[:1] == b"\x80" and first_bytes[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
    )
    (header_size,) = struct.unpack("<Q", first_bytes[:8])
    plausible = 8 + header_size <= file_size and first_bytes[8:9] == b"{"
    return magic and not plausible


def refuse_pickle(path: str, first_bytes: bytes = b"", file_size: int = 0) -> None:
    """Raise FormatError for a pickled checkpoint (by suffix or magic bytes), never unpickling it."""
    name = os.path.basename(path)
    if path.lower().endswith(PICKLE_SUFFIXES) or _looks_pickled(first_bytes, file_size):
        raise FormatError(
            f"{name}: this is a pickled PyTorch file, which can run arbitrary code when loaded; sdlora "
            "only reads .safetensors. Convert it in a trusted environment first, or download the "
            ".safetensors version"
        )


def _refuse_other_kind(path: str, head: bytes, file_size: int) -> None:
    """Raise FormatError naming what the file is (an image, a YAML config, ...) when it is plainly no
    safetensors file: its length field cannot fit the file and its first bytes are those of another kind."""
    if not head or (len(head) >= 8 and 8 + struct.unpack("<Q", head[:8])[0] <= file_size):
        return
    name = os.path.basename(path)
    kind = describe_kind(name, head)
    if kind is None:
        return
    message = f"{name}: this is {kind}, not a LoRA (a LoRA is a .safetensors file)"
    if kind == "a PNG image" and png_parameters(path) is not None:
        message += f"; it holds generation parameters (A1111's): sdlora inspect --parameters {name} shows them"
    raise FormatError(message)


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate the header of a .safetensors file (checks sizes, JSON and every offset)."""
    path = os.fspath(path)
    name = os.path.basename(path)
    if os.path.isdir(path):
        raise FormatError(f"{name}: is a folder, not a .safetensors file")
    if not os.path.exists(path):
        raise FormatError(f"{path}: file not found")
    file_size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(64)
        refuse_pickle(path, head, file_size)
        _refuse_other_kind(path, head, file_size)
        header_size = _check_length(name, head[:8], file_size)
        fh.seek(8)
        raw = fh.read(header_size)
    header = SafetensorsHeader(path, header_size, file_size)
    parsed = _parse_json(name, raw)
    header.metadata = _parse_metadata(name, parsed.pop("__metadata__", None))
    header.tensors = {_check_text(name, key, "tensor name"): _parse_tensor(name, key, value)
                      for key, value in parsed.items()}  # fmt: skip
    _check_offsets(header)
    return header


def _check_length(name: str, head: bytes, file_size: int) -> int:
    if file_size == 0:
        raise FormatError(
            f"{name}: the file is empty (0 bytes); the download or save did not finish, get it again"
        )
    if len(head) < 8:
        raise FormatError(
            f"{name}: too short to be a safetensors file ({file_size} bytes, the length field alone needs 8); "
            "get the file again"
        )
    (header_size,) = struct.unpack("<Q", head)
    if header_size == 0 or header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
        raise FormatError(
            f"{name}: broken safetensors header: it claims {header_size} header bytes but the file has "
            f"{file_size} bytes; the file is damaged or not a safetensors file, get it again"
        )
    return header_size


def _parse_json(name: str, raw: bytes) -> dict:
    try:
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=partial(_unique_keys, name))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FormatError(
            f"{name}: broken safetensors header (invalid JSON: {err}); the file is damaged, get it again"
        ) from None
    except RecursionError:
        # a valid header nests 3 deep (object, tensor entry, shape list); the parser recursed far deeper
        raise FormatError(
            f"{name}: broken safetensors header (JSON nested too deeply); the file is damaged or crafted"
        ) from None
    if not isinstance(parsed, dict):
        raise FormatError(f"{name}: broken safetensors header (JSON is not an object); the file is damaged")
    return parsed


def _unique_keys(name: str, pairs: list[tuple[str, object]]) -> dict:
    """object_pairs_hook: a JSON object with a repeated key is refused (json.loads would keep the last)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise FormatError(
            f"{name}: broken safetensors header: key {key!r} appears twice; the file is damaged or crafted, "
            "get it again"
        )
    return result


def _check_text(name: str, text: str, what: str) -> str:
    """JSON escapes can spell lone surrogates, which are not text (printing or re-saving them fails)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(
            f"{name}: broken safetensors header: {what} {text!r} is not valid Unicode (lone surrogate); "
            "the file is damaged or crafted"
        ) from None
    return text


def _parse_metadata(name: str, value) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise FormatError(
            f"{name}: broken safetensors header: __metadata__ must map strings to strings; "
            "re-save the file with a safetensors writer"
        )
    for key, text in value.items():
        _check_text(name, key, "metadata key")
        _check_text(name, text, f"metadata value of {key!r}")
    return dict(value)


def _are_counts(values: list) -> bool:
    """JSON non-negative integers; bool is refused although Python's True is an int (set/min: C speed)."""
    return set(map(type, values)) <= {int} and min(values, default=0) >= 0


def _parse_tensor(name: str, key: str, value) -> TensorInfo:
    ok = isinstance(value, dict) and isinstance(value.get("shape"), list)
    ok = ok and isinstance(value.get("data_offsets"), list) and len(value["data_offsets"]) == 2
    ok = ok and isinstance(value.get("dtype"), str) and value["dtype"] in DTYPE_BYTES
    ok = ok and _are_counts(value["shape"]) and _are_counts(value["data_offsets"])
    if not ok:
        raise FormatError(
            f"{name}: broken safetensors header entry for tensor {key!r}: {_short(value)} (needs dtype, "
            "shape as a list of non-negative integers and data_offsets [begin, end])"
        )
    dtype, shape, (start, end) = value["dtype"], tuple(value["shape"]), value["data_offsets"]
    if start > end or end - start != prod(shape) * DTYPE_BYTES[dtype]:
        raise FormatError(
            f"{name}: broken safetensors header: tensor {key!r} ({dtype} {list(shape)}) needs "
            f"{prod(shape) * DTYPE_BYTES[dtype]} bytes but its offsets are [{start}, {end}]"
        )
    return TensorInfo(dtype, shape, start, end)


def _short(value, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_offsets(header: SafetensorsHeader) -> None:
    """Tensors tile the data section exactly, like the safetensors library requires: sorted by begin,
    each begins where the previous ended (no overlap, alias or gap) and the last ends at the file end."""
    name = os.path.basename(header.path)
    data_size = header.file_size - header.data_offset
    needed = max((info.end for info in header.tensors.values()), default=0)
    if needed > data_size:
        raise FormatError(
            f"{name}: the file is truncated: its header needs {needed} bytes of "
            f"tensor data but only {data_size} are present; the download did not finish, get it again"
        )
    position, previous = 0, None
    for key, info in sorted(header.tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if info.start != position:
            where = f"after tensor {previous!r}" if previous else "at the start of the data"
            what = "overlaps the previous tensor" if info.start < position else "leaves a gap"
            raise FormatError(
                f"{name}: broken safetensors header: tensor {key!r} (bytes {info.start}-{info.end}) {what} "
                f"{where} (which ends at {position}); the file is damaged or crafted, get it again"
            )
        position, previous = info.end, key
    if position != data_size:
        raise FormatError(
            f"{name}: broken safetensors header: {data_size - position} bytes after the last tensor belong to "
            "no tensor; the file is damaged or was appended to, get it again"
        )


def check_is_lora(header: SafetensorsHeader) -> None:
    """Raise FormatError when the file is a full model checkpoint (or has no adapter keys at all)."""
    name = os.path.basename(header.path)
    keys = list(header.tensors)
    if not keys:
        raise FormatError(f"{name}: the file holds no tensors, so it is not a LoRA")
    checkpoint_keys = [k for k in keys if k.startswith(CHECKPOINT_PREFIXES)]
    has_markers = any(key.endswith(LORA_ENDINGS) or any(m in key for m in LORA_MARKERS) for key in keys)
    if checkpoint_keys or not has_markers:
        example = (checkpoint_keys or keys)[0]
        raise FormatError(
            f"{name}: this looks like a full model checkpoint, not a LoRA ({len(keys)} tensors, no LoRA keys; "
            f"e.g. {example!r}); use it as the base model instead"
        )


def tensor_data_sha256(path: str | os.PathLike, data_offset: int | None = None) -> str:
    """SHA-256 of the bytes after the header (sshs_model_hash, A1111 'addnet' hash; docs/formats.md §2.11)."""
    if data_offset is None:
        data_offset = read_header(path).data_offset
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(data_offset)
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def legacy_hash(path: str | os.PathLike) -> str:
    """sshs_legacy_hash: 8 hex of SHA-256 of the file's bytes 0x100000..0x110000 (docs/formats.md §2.11)."""
    start, end = LEGACY_HASH_RANGE
    with open(path, "rb") as fh:
        fh.seek(start)
        return hashlib.sha256(fh.read(end - start)).hexdigest()[:8]
