"""The stdlib header reader is at least as strict as the safetensors library (issue 15, item 1): every
inconsistency is a FormatError naming the file and the key, never an accept or an untyped exception."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from sdlora.errors import FormatError
from sdlora.header import read_header
from sdlora.tensorfile import read_tensors


def _write(tmp_path, header: dict | str, data: bytes, name="bad.safetensors"):
    """A safetensors file from a header (dict or raw JSON text) and a data section."""
    text = header if isinstance(header, str) else json.dumps(header)
    raw = text.encode("utf-8", "surrogatepass")
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _entry(start, end, shape=None, dtype="F32"):
    return {
        "dtype": dtype,
        "shape": shape if shape is not None else [(end - start) // 4],
        "data_offsets": [start, end],
    }


def _refused(path, *words):
    with pytest.raises(FormatError) as info:
        read_header(path)
    message = str(info.value)
    assert path.name in message
    for word in words:
        assert word in message, message
    return message


def test_offsets_must_tile_the_data_section(tmp_path):
    data = bytes(16)
    cases = {
        "overlap": ({"a": _entry(0, 8), "b": _entry(4, 12), "c": _entry(12, 16)}, "'b'", "overlaps"),
        "alias": ({"a": _entry(0, 8), "b": _entry(0, 8), "c": _entry(8, 16)}, "overlaps"),
        "gap": ({"a": _entry(0, 4), "b": _entry(8, 16)}, "'b'", "gap"),
        "gap at start": ({"a": _entry(4, 16)}, "'a'", "gap"),
        "trailing": ({"a": _entry(0, 8)}, "8 bytes after the last tensor"),
        "out of range": ({"a": _entry(0, 8), "b": _entry(8, 24)}, "truncated"),
    }
    for case, (header, *words) in cases.items():
        _refused(_write(tmp_path, header, data, f"{case.replace(' ', '_')}.safetensors"), *words)


def test_duplicate_keys_are_refused_while_parsing(tmp_path):
    text = '{"a": ' + json.dumps(_entry(0, 8)) + ', "a": ' + json.dumps(_entry(8, 16)) + "}"
    _refused(_write(tmp_path, text, bytes(16)), "'a'", "twice")
    meta = '{"__metadata__": {"k": "1", "k": "2"}, "a": ' + json.dumps(_entry(0, 8)) + "}"
    _refused(_write(tmp_path, meta, bytes(8), "meta.safetensors"), "'k'", "twice")


@pytest.mark.parametrize(
    "shape",
    [[True, 2], [2, -1], [2.0, 1], "ab", [[2]], None],
    ids=["bool", "negative", "float", "str", "nested", "null"],
)
def test_shapes_are_lists_of_non_negative_ints(tmp_path, shape):
    entry = {"dtype": "F32", "shape": shape, "data_offsets": [0, 8]}
    _refused(_write(tmp_path, {"a": entry}, bytes(8)), "'a'")


def test_bool_offsets_and_wrong_sizes_are_refused(tmp_path):
    _refused(
        _write(tmp_path, {"a": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}, bytes(1)), "'a'"
    )
    _refused(
        _write(tmp_path, {"a": _entry(0, 8, shape=[3])}, bytes(8), "size.safetensors"), "'a'", "12 bytes"
    )
    _refused(_write(tmp_path, {"a": _entry(0, 8, dtype="F7")}, bytes(8), "dtype.safetensors"), "'a'")


def test_deep_nesting_is_a_format_error(tmp_path):
    deep = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _refused(_write(tmp_path, deep, b""), "nested too deeply")


def test_lone_surrogates_are_refused(tmp_path):
    text = '{"__metadata__": {"name": "x\\ud800"}, "a": ' + json.dumps(_entry(0, 8)) + "}"
    _refused(_write(tmp_path, text, bytes(8)), "surrogate")
    key = '{"a\\udfff": ' + json.dumps(_entry(0, 8)) + "}"
    _refused(_write(tmp_path, key, bytes(8), "key.safetensors"), "surrogate")


def test_header_size_is_bounded(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", 200 * 1024 * 1024) + b"{}" + bytes(16))
    _refused(path, "header")


@pytest.mark.parametrize(
    ("dtype", "byte"),
    [
        (torch.float8_e4m3fn, 0x7F),
        (torch.float8_e4m3fn, 0xFF),
        (torch.float8_e5m2, 0x7C),
        (torch.float8_e5m2, 0xFE),
    ],
)
def test_float8_nan_and_inf_are_refused(tmp_path, dtype, byte):
    raw = torch.ones(6).to(dtype).view(torch.uint8).clone()
    raw[4] = byte
    path = tmp_path / "f8.safetensors"
    save_file({"finite": torch.ones(3), "w": raw.view(dtype)}, str(path))
    with pytest.raises(FormatError, match="'w' contains NaN or Inf"):
        read_tensors(read_header(path))


def test_float8_finite_extremes_are_read(tmp_path):
    raw = torch.tensor(
        [0x7E, 0xFE, 0x7B, 0x00], dtype=torch.uint8
    )  # E4M3 ±448, E5M2-max pattern read as E4M3
    path = tmp_path / "f8ok.safetensors"
    save_file({"w": raw.view(torch.float8_e4m3fn)}, str(path))
    assert read_tensors(read_header(path))["w"].float().tolist()[:2] == [448.0, -448.0]
