"""Duplicates: grouped by tensor hash; keeping one moves the others (with side files) to .trash/."""

from __future__ import annotations

import pytest

from sdlora.errors import ConfigError
from sdlora.library import scan
from sdlora.library.dupes import find_duplicates, keep_one


def test_groups_equal_tensors_whatever_the_metadata(library_root, tmp_path):
    entries = scan(library_root, cache_path=tmp_path / "cache.json").entries
    groups = find_duplicates(entries, cache_path=tmp_path / "cache.json")
    assert len(groups) == 1
    assert [e.name for e in groups[0].entries] == ["a", "b"]  # b has other metadata, same weights
    assert len(groups[0].short_hash) == 12


def test_keep_one_moves_the_others_with_side_files_to_the_trash(library_root, tmp_path, tiny_lora):
    entries = scan(library_root, cache_path=False).entries
    group = find_duplicates(entries, cache_path=False)[0]
    result = keep_one(group, str(library_root / "a.safetensors"), [library_root])
    assert result.skipped == [] and len(result.moved) == 1
    trash = library_root / ".trash" / "copies"
    assert sorted(p.name for p in trash.iterdir()) == ["b.safetensors", "b.txt"]
    assert (library_root / "a.safetensors").is_file()
    assert [e.name for e in scan(library_root, cache_path=False).entries] == ["a", "c"]  # the trash is not listed
    # the same name in the trash again: kept apart as b-2, side files included, nothing overwritten
    tiny_lora(library_root / "copies" / "b.safetensors", seed=1)
    (library_root / "copies" / "b.txt").write_text("second")
    group = find_duplicates(scan(library_root, cache_path=False).entries, cache_path=False)[0]
    keep_one(group, str(library_root / "a.safetensors"), [library_root])
    assert sorted(p.name for p in trash.iterdir()) == ["b-2.safetensors", "b-2.txt", "b.safetensors", "b.txt"]
    assert (trash / "b-2.txt").read_text() == "second"


def test_keep_must_be_one_of_the_group(library_root):
    group = find_duplicates(scan(library_root, cache_path=False).entries, cache_path=False)[0]
    with pytest.raises(ConfigError, match="not one of the duplicates"):
        keep_one(group, str(library_root / "styles" / "ink" / "c.safetensors"), [library_root])
