"""`sdlora library ...` and `sdlora generate --recipe` from the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sdlora.cli import main
from sdlora.library import read_notes

from .conftest import embedded_lora


def test_library_list_filters_and_json(library_root, tmp_path, tiny_lora, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    other = tiny_lora(tmp_path / "more" / "d.safetensors", seed=4)
    assert main(["library", "list", "--lora-dir", str(library_root), "--lora-dir", str(other.parent)]) == 0
    assert "4 of 4 LoRA(s)" in capsys.readouterr().out
    assert main(["library", "list", "--lora-dir", str(library_root), "--tag", "ink", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == ["a"]
    assert main(["library", "list", "--lora-dir", str(library_root), "--base-model", "sd1", "--folder", "copies"]) == 0
    assert "1 of 3 LoRA(s)" in capsys.readouterr().out


def test_library_tag_favourite_move_and_dupes(library_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    a, b = library_root / "a.safetensors", library_root / "copies" / "b.safetensors"
    root = ["--lora-dir", str(library_root)]
    assert main(["library", "tag", str(a), str(b), "--add", "cats, ink", "--remove", "mine", *root]) == 0
    assert read_notes(a)["tags"] == ["cats", "ink"] and read_notes(b)["tags"] == ["cats", "ink"]
    assert main(["library", "favourite", str(b), *root]) == 0 and read_notes(b)["favourite"] is True
    assert main(["library", "move", str(b), "--to", str(tmp_path), *root]) == 2  # outside the library
    assert "inside a library folder" in capsys.readouterr().err
    assert main(["library", "dupes", *root]) == 0
    out = capsys.readouterr().out
    assert "1 group(s) of duplicates" in out and "a.safetensors" in out and "b.safetensors" in out
    assert main(["library", "dupes", *root, "--keep", str(b)]) == 0
    assert "moved 1 LoRA(s)" in capsys.readouterr().out
    assert (library_root / ".trash" / "a.safetensors").is_file() and (library_root / ".trash" / "a.json").is_file()
    assert main(["library", "move", str(b), "--to", str(library_root), *root]) == 0
    assert (library_root / "b.safetensors").is_file() and (library_root / "b.txt").is_file()


@pytest.mark.slow
def test_a_recipe_rebuilt_from_a_png_draws_the_same_image(tmp_path, capsys, monkeypatch):
    """Generate with the embedded model and two LoRAs, rebuild everything from the PNG alone (one LoRA renamed
    since: found by its hash), draw again: the same pixels. A LoRA the library lacks is named with its hash."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    loras = tmp_path / "loras"
    a, b = embedded_lora(loras / "a.safetensors", seed=1), embedded_lora(loras / "b.safetensors", seed=2)
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    assert main(["generate", "--prompt", "a red circle", "--negative-prompt", "blue", "--lora", f"{a}:0.8",
                 "--lora", f"{b}:te=0.5:unet=-0.7", "--steps", "3", "--seed", "11", "--cfg", "5",
                 "--sampler", "Euler a", "--out", str(first)]) == 0
    b.rename(loras / "renamed.safetensors")
    assert main(["generate", "--recipe", str(first), "--lora-dir", str(loras), "--out", str(second)]) == 0
    with Image.open(first) as one, Image.open(second) as two:
        assert np.array_equal(np.asarray(one), np.asarray(two))
        assert two.text["parameters"].replace("renamed", "b") == one.text["parameters"]
    with Image.open(first) as one:
        plain = np.asarray(one).copy()
    (loras / "renamed.safetensors").unlink()
    capsys.readouterr()
    assert main(["generate", "--recipe", str(first), "--lora-dir", str(loras), "--out", str(second)]) == 2
    assert "not in the library: b (hash " in capsys.readouterr().err
    assert plain.std() > 0
