"""LoRA library scan: metadata, previews, notes, cache, damaged files."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from sdlora import library as lib
from sdlora.errors import ConfigError
from sdlora.library import read_notes, scan, write_notes


def _write_lora(path, rank=4, metadata=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "lora_unet_mid_block_attentions_0_proj_in"):
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, 768, generator=gen)
        tensors[f"{name}.lora_up.weight"] = torch.randn(768, rank, generator=gen)
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path), metadata=metadata or {})
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_len:]).hexdigest()


@pytest.fixture
def library(tmp_path):
    root = tmp_path / "loras"
    (root / "styles").mkdir(parents=True)
    tags = {"10_cat": {"cat": 30, "orange fur": 12, "grass": 3}, "5_dog": {"cat": 2, "whiskers": 20}}
    sha = _write_lora(root / "catstyle.safetensors", metadata={
        "ss_tag_frequency": json.dumps(tags), "modelspec.trigger_phrase": "ctsty, cat style",
        "ss_output_name": "catstyle_v1"})
    (root / "catstyle.png").write_bytes(b"\x89PNG fake")
    (root / "catstyle.json").write_text(json.dumps({"activation text": "ctsty", "preferred weight": 0.7}))
    _write_lora(root / "styles" / "ink.safetensors", rank=8, seed=1)
    (root / "styles" / "ink.preview.png").write_bytes(b"\x89PNG fake")
    (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    full = (root / "styles" / "ink.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(full[: len(full) // 2])
    (root / "readme.txt").write_text("not a LoRA")
    return root, sha


def test_scan_reads_entries_and_reports_damaged_files(library, tmp_path):
    root, _ = library
    result = scan(root, cache_path=tmp_path / "cache.json")
    assert [e.name for e in result.entries] == ["catstyle", "ink"]
    cat, ink = result.entries
    assert cat.rank == 4 and ink.rank == 8
    assert cat.trigger_words == ["ctsty", "cat style"]  # modelspec.trigger_phrase only
    assert cat.top_tags[:3] == ["cat", "whiskers", "orange fur"]  # caption tags, counts summed over folders
    assert cat.preview.endswith("catstyle.png") and ink.preview.endswith("ink.preview.png")
    assert cat.notes == {"activation text": "ctsty", "preferred weight": 0.7}
    assert cat.sha256 == "" and cat.short_hash == ""  # not in the header: not read during the scan
    assert cat.title == "catstyle_v1"
    assert sorted(e.name for e in result.errors) == ["broken", "truncated"]
    assert all(e.error for e in result.errors)
    assert "truncated" in next(e.error for e in result.errors if e.name == "truncated")
    assert result.names() == {"catstyle": cat.path, "ink": ink.path}


def test_rescan_uses_cache_and_notices_changes(library, tmp_path):
    root, _ = library
    cache = tmp_path / "cache.json"
    first = scan(root, cache_path=cache)
    assert first.files_read == 4 and cache.is_file()
    second = scan(root, cache_path=cache)
    assert second.files_read == 2  # only the two damaged files (never cached) are read again
    assert [e.sha256 for e in second.entries] == [e.sha256 for e in first.entries]
    ink = root / "styles" / "ink.safetensors"
    _write_lora(ink, rank=2, seed=5)
    os.utime(ink, ns=(1, 1))
    third = scan(root, cache_path=cache)
    assert third.files_read == 3
    assert next(e for e in third.entries if e.name == "ink").rank == 2


def test_hash_from_the_header_or_computed_once_and_cached(library, tmp_path):
    """The short hash is the first 12 hex of `sshs_model_hash` when the header holds it (no data read),
    else of the tensor-data SHA-256, computed on demand and kept in the cache by (path, size, mtime)."""
    root, sha = library
    stored = "ab" * 32
    _write_lora(root / "hashed.safetensors", metadata={"sshs_model_hash": stored.upper()})
    _write_lora(root / "odd.safetensors", metadata={"sshs_model_hash": "not-a-sha"})
    cache = tmp_path / "cache.json"
    entries = {e.name: e for e in scan(root, cache_path=cache).entries}
    assert entries["hashed"].sha256 == stored and entries["hashed"].short_hash == stored[:12]
    assert entries["odd"].sha256 == "" and entries["catstyle"].sha256 == ""
    assert lib.file_hash(entries["catstyle"], cache_path=cache) == sha
    assert entries["catstyle"].short_hash == sha[:12]
    again = {e.name: e for e in scan(root, cache_path=cache).entries}
    assert again["catstyle"].sha256 == sha  # from the cache: no file read
    cat = root / "catstyle.safetensors"
    _write_lora(cat, seed=3)
    os.utime(cat, ns=(5, 5))
    assert next(e for e in scan(root, cache_path=cache).entries if e.name == "catstyle").sha256 == ""


def _entry(name, size=0, mtime=0.0, **fields):
    return lib.LibraryEntry(name=name, path=f"/x/{name}.safetensors", size=size, mtime=mtime, **fields)


def test_search_and_sort():
    entries = [
        _entry("b-ink", size=30, mtime=3.0, trigger_words=["inkwash"], notes={"notes": "Great at 0.6"}),
        _entry("a-cat", size=10, mtime=2.0, title="Orange Cat v1"),
        _entry("C-dog", size=20, mtime=1.0, notes={"activation text": "dgsty"}),
    ]

    def names(query="", sort="name"):
        return [e.name for e in lib.search(entries, query, sort)]

    assert names() == ["a-cat", "b-ink", "C-dog"]  # A-Z whatever the case
    assert names(sort="date") == ["b-ink", "a-cat", "C-dog"]  # newest first
    assert names(sort="size") == ["b-ink", "C-dog", "a-cat"]  # largest first
    assert names("INKWASH") == ["b-ink"]  # trigger words
    assert names("great 0.6") == ["b-ink"]  # notes, every word must match
    assert names("orange") == ["a-cat"] and names("dgsty") == ["C-dog"]  # title, activation text
    assert names("cat dog") == []
    with pytest.raises(ConfigError, match="name, date, size"):
        lib.search(entries, sort="rank")


def test_set_preview_writes_a_downscaled_a1111_preview_atomically(library, tmp_path):
    from PIL import Image

    root, _ = library
    image = tmp_path / "big.png"
    Image.new("RGB", (1200, 600), (10, 200, 30)).save(image)
    lora = root / "catstyle.safetensors"
    target = lib.set_preview(lora, image)
    assert target == root / "catstyle.preview.png"
    with Image.open(target) as written:
        assert written.size == (512, 256) and written.getpixel((5, 5)) == (10, 200, 30)
    assert lib.find_preview(lora) == str(target)  # it wins over the older catstyle.png
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []  # no temp file left
    small = Image.new("RGB", (40, 20), (1, 2, 3))
    lib.set_preview(lora, small)
    with Image.open(target) as written:
        assert written.size == (40, 20)  # never enlarged
    (tmp_path / "bad.png").write_bytes(b"not an image")
    from sdlora.errors import FormatError

    with pytest.raises(FormatError, match="not an image"):
        lib.set_preview(lora, tmp_path / "bad.png")
    with pytest.raises(ConfigError, match="no such LoRA"):
        lib.set_preview(root / "missing.safetensors", image)
    with Image.open(target) as kept:
        assert kept.size == (40, 20)  # a refused image leaves the old preview


def test_notes_round_trip_and_validation(library):
    root, _ = library
    path = root / "catstyle.safetensors"
    written = write_notes(path, {"notes": "works best at 0.6", "preferred weight": "0.6", "activation text": None})
    assert written == {"preferred weight": 0.6, "notes": "works best at 0.6"}
    assert read_notes(path) == written
    with pytest.raises(ConfigError, match="preferred weight"):
        write_notes(path, {"preferred weight": "heavy"})
    assert read_notes(path) == written  # nothing lost on a refused update


def test_scan_of_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        scan(tmp_path / "nope", cache_path=False)


def test_scan_never_imports_torch(library, tmp_path):
    """The library reads headers only: a scan in a fresh interpreter leaves torch unimported."""
    import subprocess
    import sys

    root, _ = library
    code = ("import sys, sdlora.library as lib; r = lib.scan(sys.argv[1], cache_path=False); "
            "assert len(r.entries) == 2, r; assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code, str(root)], check=False, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
