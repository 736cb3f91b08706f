"""Library organising: multi-root scans, tags, favourites, base-model and folder filters, moves with side files."""

from __future__ import annotations

import json

import pytest

from sdlora.errors import ConfigError
from sdlora.library import read_notes, scan, search
from sdlora.library.organise import (
    facets,
    filter_entries,
    move_loras,
    set_favourite,
    side_files,
    tag_files,
)


def _names(entries):
    return [e.name for e in entries]


def test_scan_reads_folders_tags_base_model_and_several_roots(library_root, tmp_path, tiny_lora):
    other = tmp_path / "more"
    tiny_lora(other / "d.safetensors", seed=3)
    result = scan([library_root, other], cache_path=False)
    by_name = {e.name: e for e in result.entries}
    assert sorted(by_name) == ["a", "b", "c", "d"]
    assert by_name["a"].tags == ["mine", "style", "ink"]  # the user's, then Civitai's
    assert by_name["a"].base_model == "SD 1.5" and by_name["c"].base_model == "sd1"  # Civitai's, else the family
    assert by_name["c"].folder == "styles/ink" and by_name["a"].folder == ""
    assert by_name["d"].root == str(other) and by_name["a"].root == str(library_root)
    assert _names(search(result.entries, "ink")) == ["a", "c"]  # a Civitai tag, a folder name
    assert facets(result.entries)["folders"] == ["", "copies", "styles", "styles/ink"]


def test_filters_by_folder_tag_base_model_and_favourite(library_root):
    set_favourite(library_root / "copies" / "b.safetensors", True)
    entries = scan(library_root, cache_path=False).entries
    assert _names(filter_entries(entries, folder="styles")) == ["c"]  # subfolders included
    assert _names(filter_entries(entries, folder="style")) == []  # a folder, not a prefix of a name
    assert _names(filter_entries(entries, tag="STYLE")) == ["a"]
    assert _names(filter_entries(entries, base_model="sd1")) == ["b", "c"]
    assert _names(filter_entries(entries, favourites=True)) == ["b"]
    set_favourite(library_root / "copies" / "b.safetensors", False)
    assert "favourite" not in read_notes(library_root / "copies" / "b.safetensors")


def test_bulk_tag_keeps_other_notes_and_never_touches_civitai_tags(library_root):
    files = [library_root / "a.safetensors", library_root / "styles" / "ink" / "c.safetensors"]
    assert tag_files(files, add=["Portrait", "mine"]) == 2
    assert read_notes(files[0]) == {"activation text": "aaa", "tags": ["mine", "Portrait"]}
    assert tag_files(files, add=["portrait"]) == 0  # already there, any case
    assert tag_files(files, remove=["MINE", "style"]) == 2
    assert read_notes(files[1])["tags"] == ["Portrait"]
    assert json.loads((library_root / "a.civitai.info").read_text())["model"]["tags"] == ["style", "ink"]
    with pytest.raises(ConfigError, match="comma"):
        tag_files(files, add=["a,b"])


def test_move_carries_side_files_and_never_overwrites(library_root, tiny_lora):
    a = library_root / "a.safetensors"
    assert [p.name for p in side_files(a)] == ["a.json", "a.civitai.info", "a.preview.png"]
    result = move_loras([a], library_root / "styles", [library_root])
    assert result.skipped == [] and len(result.moved) == 1
    moved = sorted(p.name for p in (library_root / "styles").iterdir() if p.is_file())
    assert moved == ["a.civitai.info", "a.json", "a.preview.png", "a.safetensors"]
    assert not a.exists() and not (library_root / "a.json").exists()
    # a name taken at the destination: that LoRA stays where it is, with its side files, and nothing is replaced
    tiny_lora(library_root / "a.safetensors", seed=9)
    (library_root / "a.json").write_text("{}")
    before = (library_root / "styles" / "a.json").read_text()
    result = move_loras([library_root / "a.safetensors"], library_root / "styles", [library_root])
    assert result.moved == [] and "already exist" in result.skipped[0][1]
    assert (library_root / "a.json").read_text() == "{}" and (library_root / "styles" / "a.json").read_text() == before


def test_move_never_leaves_the_library(library_root, tmp_path):
    with pytest.raises(ConfigError, match="inside a library folder"):
        move_loras([library_root / "a.safetensors"], tmp_path / "elsewhere", [library_root])
    with pytest.raises(ConfigError, match="inside a library folder"):
        move_loras([library_root / "a.safetensors"], library_root / ".." / "x", [library_root])
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"x")
    result = move_loras([outside], library_root / "styles", [library_root])
    assert result.moved == [] and "inside a library folder" in result.skipped[0][1] and outside.exists()
