"""Lookup by hash: .civitai.info, A1111 notes merged without touching the user's fields, preview by NSFW level,
misses remembered for a week, folder scans."""

from __future__ import annotations

import datetime
import hashlib
import json

import pytest

from sdlora.civitai.errors import Offline
from sdlora.civitai.info import info_path
from sdlora.civitai.lookup import FOUND, MISS, REMEMBERED, SKIPPED, first_allowed_image, lookup_file, scan
from sdlora.civitai.misses import MissMemory
from sdlora.filehash import FileHashCache
from sdlora.library import read_notes, write_notes
from tests.civitai.fake_civitai import safetensors_bytes


@pytest.fixture
def library(tmp_path, lora_bytes):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "style.safetensors").write_bytes(lora_bytes)
    return folder


def test_a_hit_writes_info_notes_and_the_allowed_preview(fake, make_client, library, lora_bytes):
    from PIL import Image

    fake.add_version(21, 7, lora_bytes, words=("fancystyle", "shiny"))
    path = library / "style.safetensors"
    write_notes(path, {"preferred weight": 0.7, "notes": "mine", "activation text": ""})
    result = lookup_file(path, make_client(), FileHashCache(None), MissMemory(None))
    assert result.status == FOUND and "Fancy Style" in result.message
    info = json.loads(info_path(path).read_text())
    assert info["id"] == 21 and info["model"]["tags"] == ["style", "fancy"]
    notes = read_notes(path)
    assert notes["activation text"] == "fancystyle, shiny" and notes["sd version"] == "SD1"
    assert notes["description"] == "Version one"
    assert notes["preferred weight"] == 0.7 and notes["notes"] == "mine"
    assert Image.open(library / "style.preview.png").size == (1, 1)
    assert f"{fake.url[len('http://'):]}" and "/images/preview.png" in fake.paths()
    assert "/images/nsfw.png" not in fake.paths()  # level 8 is above the default "pg"


def test_the_users_own_text_is_never_overwritten(fake, make_client, library, lora_bytes):
    fake.add_version(22, 8, lora_bytes)
    path = library / "style.safetensors"
    write_notes(path, {"activation text": "my words", "description": "my text"})
    (library / "style.png").write_bytes(b"not replaced")
    lookup_file(path, make_client(), FileHashCache(None), MissMemory(None))
    notes = read_notes(path)
    assert notes["activation text"] == "my words" and notes["description"] == "my text"
    assert not (library / "style.preview.png").exists()  # a preview existed


def test_a_miss_is_remembered_for_a_week(fake, make_client, library, tmp_path):
    path = library / "style.safetensors"
    misses = MissMemory(tmp_path / "misses.json", today=datetime.date(2026, 1, 1))
    client = make_client()
    assert lookup_file(path, client, FileHashCache(None), misses).status == MISS
    misses.save()
    asked = len(fake.requests)
    again = MissMemory(tmp_path / "misses.json", today=datetime.date(2026, 1, 7))
    result = lookup_file(path, client, FileHashCache(None), again)
    assert result.status == REMEMBERED and "2026-01-01" in result.message and len(fake.requests) == asked
    assert lookup_file(path, client, FileHashCache(None), again, refresh=True).status == MISS
    later = MissMemory(tmp_path / "misses.json", today=datetime.date(2026, 1, 9))
    lookup_file(path, client, FileHashCache(None), later)
    assert len(fake.requests) > asked + 1


def test_the_header_tensor_hash_is_asked_when_the_file_hash_misses(fake, make_client, tmp_path, lora_bytes):
    tensor_hash = "ab" * 32
    data = safetensors_bytes({"lora_unet_x.lora_down.weight": ("F16", [4, 8])}, {"sshs_model_hash": tensor_hash})
    path = tmp_path / "other.safetensors"
    path.write_bytes(data)
    version = fake.add_version(23, 9, lora_bytes)
    fake.by_hash[tensor_hash] = 23
    result = lookup_file(path, make_client(), FileHashCache(None), MissMemory(None))
    assert result.status == FOUND and result.version["id"] == version["id"]
    asked = [p for p in fake.paths() if "by-hash" in p]
    assert asked == [f"/api/v1/model-versions/by-hash/{hashlib.sha256(data).hexdigest()}",
                     f"/api/v1/model-versions/by-hash/{tensor_hash}"]


def test_a_scan_resumes_and_skips_scanned_files(fake, make_client, library, lora_bytes, tmp_path):
    fake.add_version(24, 10, lora_bytes)
    for i in range(5):
        (library / f"own{i}.safetensors").write_bytes(lora_bytes + bytes([i]))
    seen = []
    hashes = FileHashCache(tmp_path / "h.json")
    results = scan(library, make_client(), hashes, MissMemory(None), on_progress=lambda p: seen.append(p.done))
    assert [r.status for r in results].count(FOUND) == 1 and [r.status for r in results].count(MISS) == 5
    assert seen[-1] == 6
    again = scan(library, make_client(), FileHashCache(tmp_path / "h.json"), MissMemory(None))
    assert [r.status for r in again if r.path.endswith("style.safetensors")] == [SKIPPED]
    assert FileHashCache(tmp_path / "h.json").files  # the hashes were saved


def test_a_scan_stops_with_one_line_when_offline(make_client, library):
    with pytest.raises(Offline):
        scan(library, make_client(offline=True), FileHashCache(None), MissMemory(None))


def test_nsfw_levels_choose_the_preview():
    images = [{"url": "v", "type": "video", "nsfwLevel": 1}, {"url": "x", "nsfwLevel": 8},
              {"url": "old", "nsfw": "Soft"}, {"url": "pg", "nsfwLevel": 1}]
    assert first_allowed_image(images, "pg") == "pg"
    assert first_allowed_image(images, "pg13") == "old"
    assert first_allowed_image(images, "xxx") == "x"
    assert first_allowed_image([{"url": "unknown"}], "xxx") is None


def test_a_scan_sends_at_most_4_requests_at_a_time(fake, make_client, library, lora_bytes):
    for i in range(12):
        (library / f"own{i}.safetensors").write_bytes(lora_bytes + bytes([i]))
    fake.delay = 0.15
    results = scan(library, make_client(), FileHashCache(None), MissMemory(None))
    assert len(results) == 13 and {r.status for r in results} == {MISS}
    assert 2 <= fake.max_in_flight <= 4


def test_a_second_scan_of_1000_files_opens_none_of_them(fake, make_client, tmp_path, monkeypatch):
    import builtins
    import io
    import os

    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(1000):
        (folder / f"lora{i:04d}.safetensors").write_bytes(b"not on civitai %d" % i)
    hashes, misses = tmp_path / "h.json", tmp_path / "m.json"
    first = scan(folder, make_client(), FileHashCache(hashes), MissMemory(misses))
    assert {r.status for r in first} == {MISS}
    opened: list[str] = []
    real_open = builtins.open

    def spy(file, *args, **kwargs):
        opened.append(os.fspath(file) if not isinstance(file, int) else "")
        return real_open(file, *args, **kwargs)

    asked = len(fake.requests)
    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", spy)
        patch.setattr(io, "open", spy)
        second = scan(folder, make_client(), FileHashCache(hashes), MissMemory(misses))
    assert {r.status for r in second} == {REMEMBERED} and len(fake.requests) == asked
    assert not [p for p in opened if p.startswith(str(folder))]
