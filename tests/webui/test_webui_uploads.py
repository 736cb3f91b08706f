"""Upload checks: oversized files, wrong types and disguised files are refused."""

from __future__ import annotations

import json
import struct

import pytest

from sdlora_webui.uploads import (
    UploadError,
    UploadLimits,
    check_image_upload,
    check_lora_upload,
    store_upload,
)


def write_safetensors(path, metadata=None):
    header = {"__metadata__": metadata or {}, "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    return path


def write_png(path, size=(8, 8)):
    from PIL import Image

    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def test_valid_lora_is_accepted(tmp_path):
    path = write_safetensors(tmp_path / "ok.safetensors")
    assert check_lora_upload(path, UploadLimits()) == path


def test_oversized_lora_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "big.safetensors")
    limits = UploadLimits(lora_bytes=path.stat().st_size - 1)
    with pytest.raises(UploadError, match="limit"):
        check_lora_upload(path, limits)


def test_oversized_image_is_refused(tmp_path):
    path = write_png(tmp_path / "big.png", size=(64, 64))
    with pytest.raises(UploadError, match="limit"):
        check_image_upload(path, UploadLimits(image_bytes=10))


@pytest.mark.parametrize("name", ["model.ckpt", "model.pt", "model.bin", "page.html", "x.safetensors.exe"])
def test_other_types_are_refused_as_lora(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04data")
    with pytest.raises(UploadError, match="only .safetensors"):
        check_lora_upload(path, UploadLimits())


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    path = tmp_path / "evil.safetensors"
    path.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    with pytest.raises(UploadError, match="not a safetensors"):
        check_lora_upload(path, UploadLimits())


def test_html_renamed_to_png_is_refused(tmp_path):
    path = tmp_path / "x.png"
    path.write_text("<html><script>alert(1)</script></html>")
    with pytest.raises(UploadError, match="not a readable image"):
        check_image_upload(path, UploadLimits())


def test_caption_size_is_limited(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x" * 100)
    assert check_image_upload(path, UploadLimits(caption_bytes=100)) == path
    with pytest.raises(UploadError, match="limit"):
        check_image_upload(path, UploadLimits(caption_bytes=99))


def test_store_upload_uses_a_safe_unique_name(tmp_path):
    src = write_png(tmp_path / "tmpupload.png")
    dest = tmp_path / "dest"
    first = store_upload(src, dest, "../../escape.png")
    second = store_upload(src, dest, "../../escape.png")
    assert first == dest / "escape.png"
    assert second == dest / "escape-2.png"
    assert first.read_bytes() == src.read_bytes()
