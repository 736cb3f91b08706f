"""Whole-file SHA-256 cache: a second scan of an unchanged library reads no file."""

from __future__ import annotations

import builtins
import hashlib
import io
import os

from sdlora.filehash import FileHashCache, autov2


def test_a_second_scan_of_1000_files_opens_none(tmp_path, monkeypatch):
    folder = tmp_path / "loras"
    folder.mkdir()
    files = []
    for i in range(1000):
        path = folder / f"lora{i:04d}.safetensors"
        path.write_bytes(f"file {i}".encode())
        files.append(path)
    cache_file = tmp_path / "hashes.json"
    first = FileHashCache(cache_file)
    digests = [first.sha256(p) for p in files]
    first.save()
    assert digests[7] == hashlib.sha256(b"file 7").hexdigest() and first.files_read == 1000

    opened: list[str] = []
    real_open, real_io_open = builtins.open, io.open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file) if not isinstance(file, int) else "")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    second = FileHashCache(cache_file)
    assert [second.sha256(p) for p in files] == digests
    assert second.files_read == 0
    assert not [p for p in opened if p.startswith(str(folder))]
    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(io, "open", real_io_open)


def test_a_changed_file_is_hashed_again(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"one")
    cache = FileHashCache(None)
    assert cache.sha256(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two!")
    assert cache.sha256(path) == hashlib.sha256(b"two!").hexdigest() and cache.files_read == 2
    assert autov2(hashlib.sha256(b"two!").hexdigest()) == hashlib.sha256(b"two!").hexdigest()[:10].upper()
