"""Issue 22 item 13 (bake and meta): `bake --force` overwrites an existing output (file with its .config
folder, or a diffusers folder) once the new one is written; without it the refusal names --force; `meta`
lists cloneofsimo's per-module ranks in numeric order."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from sdlora.cli import main
from sdlora.errors import ConfigError
from sdlora.extract import bake


def test_bake_refuses_then_force_overwrites_a_single_file(pipe, lora_file, tmp_path, capsys):
    base = tmp_path / "base"
    pipe.save_pretrained(base)
    out = tmp_path / "baked.safetensors"
    assert main(["bake", str(out), "--base", str(base), "--lora", f"{lora_file}:0.5"]) == 0
    assert main(["bake", str(out), "--base", str(base), "--lora", f"{lora_file}:0.25"]) == 2
    assert "already exists; give a new file name for the baked model (or pass --force" in capsys.readouterr().err
    assert main(["bake", str(out), "--base", str(base), "--lora", f"{lora_file}:0.25", "--force"]) == 0
    with safe_open(str(out), "pt") as handle:
        assert json.loads(handle.metadata()["sdlora_bake"])["loras"][0]["strength"] == 0.25
    assert (tmp_path / "baked.config" / "unet" / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no old copy or temp file left


def test_force_overwrites_a_diffusers_folder_and_keeps_kinds_apart(pipe, lora_file, tmp_path):
    out = tmp_path / "baked"
    bake(pipe, [(str(lora_file), 0.5)], out)
    bake(pipe, [(str(lora_file), 0.75)], out, force=True)
    assert json.loads((out / "sdlora_bake.json").read_text())["loras"][0]["strength"] == 0.75
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no old copy or temp folder left
    (tmp_path / "file.safetensors").mkdir()
    with pytest.raises(ConfigError, match="already exists"):  # a folder where a file is asked: never removed
        bake(pipe, [(str(lora_file), 0.5)], tmp_path / "file.safetensors", force=True)


def test_bake_help_names_the_base(capsys):
    with pytest.raises(SystemExit):
        main(["bake", "--help"])
    out = capsys.readouterr().out
    assert "BASE is \"embedded\"" in out and "MODEL" not in out and "--force" in out


def test_meta_lists_cloneofsimo_ranks_in_numeric_order(wild_loras, capsys):
    assert main(["meta", str(wild_loras / "cloneofsimo_sd15_r4_f16.safetensors")]) == 0
    keys = [line.split(":  ")[0].split(": ")[0] for line in capsys.readouterr().out.splitlines()]
    ranks = [int(key.split(":")[1]) for key in keys if key.startswith("text_encoder:") and key.endswith(":rank")]
    assert len(ranks) > 11 and ranks == sorted(ranks)
