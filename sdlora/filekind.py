"""What a file that is not a safetensors file is, from its first bytes and its name (so that `inspect` says "a
PNG image, not a LoRA" instead of "broken header"), and the A1111 generation parameters a PNG carries in its
`parameters` text chunk (what sdlora generate and A1111 write). Standard library only."""

from __future__ import annotations

import os
import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PARAMETERS_KEY = "parameters"  # A1111's PNG text chunk (sdlora.generate.save_png writes the same)
_MAGIC = ((PNG_SIGNATURE, "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"%PDF", "a PDF document"), (b"GGUF", "a GGUF model file"))
_TEXT_SUFFIXES = {".yaml": "a YAML file", ".yml": "a YAML file", ".json": "a JSON file", ".toml": "a TOML file",
                  ".txt": "a text file", ".md": "a text file", ".csv": "a text file"}


def describe_kind(name: str, head: bytes) -> str | None:
    """"a PNG image", "a YAML file", ... for a file named `name` starting with `head` (16 bytes or more),
    else None (not a kind this knows: a damaged safetensors file, maybe)."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "a WebP image"
    suffix = os.path.splitext(name)[1].lower()
    if _is_text(head):
        stripped = head.lstrip()
        if suffix in _TEXT_SUFFIXES:
            return _TEXT_SUFFIXES[suffix]
        return "a JSON file" if stripped[:1] in (b"{", b"[") else "a text file"
    return None


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text)


def png_parameters(path: str | os.PathLike) -> str | None:
    """The `parameters` text chunk of a PNG (A1111's generation parameters), or None when it has none.

    Reads chunk headers only up to the image data; tEXt, zTXt and uncompressed or compressed iTXt."""
    with open(path, "rb") as fh:
        if fh.read(8) != PNG_SIGNATURE:
            return None
        while True:
            top = fh.read(8)
            if len(top) < 8:
                return None
            length, kind = struct.unpack(">I4s", top)
            if kind in (b"IDAT", b"IEND"):  # A1111 and PIL write text chunks before the image data
                return None
            data = fh.read(length)
            fh.seek(4, os.SEEK_CUR)  # the CRC
            text = _chunk_text(kind, data)
            if text is not None:
                return text


def _chunk_text(kind: bytes, data: bytes) -> str | None:
    key, _, rest = data.partition(b"\0")
    if key.decode("latin-1") != PARAMETERS_KEY:
        return None
    if kind == b"tEXt":
        return rest.decode("latin-1")
    if kind == b"zTXt":
        return zlib.decompress(rest[1:]).decode("latin-1")
    if kind == b"iTXt":
        compressed, rest = rest[0], rest[2:]
        _, _, rest = rest.partition(b"\0")  # language tag
        _, _, rest = rest.partition(b"\0")  # translated keyword
        return (zlib.decompress(rest) if compressed else rest).decode("utf-8")
    return None
