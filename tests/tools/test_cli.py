"""The stack-manager commands, in-process: resize, merge, extract, bake, generate."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from stack_helpers import live_modules, pick, random_lora, tiny_pipeline

from sdlora import load_lora, save_lora
from sdlora.cli import main
from sdlora.cli.loraargs import lora_with_strength
from sdlora.strength import Strength


def _attention_names(components):
    return [n for n in pick(components, "unet", 0) if ".attentions." in n][:6] + pick(components, "text_encoder", 2)


@pytest.fixture
def lora_path(components, tmp_path):
    path = tmp_path / "a.safetensors"
    save_lora(random_lora(components, _attention_names(components), rank=4, alpha=2.0, scale=0.2), path)
    return path


def _close(a, b, rel=1e-5):
    return (a - b).abs().max() <= rel * float(b.abs().max())


def test_lora_with_strength_parsing():
    assert lora_with_strength("a.safetensors:0.7") == ("a.safetensors", Strength(0.7))
    assert lora_with_strength("a.safetensors") == ("a.safetensors", Strength(1.0))
    assert lora_with_strength("C:/x/a.safetensors") == ("C:/x/a.safetensors", Strength(1.0))
    assert lora_with_strength("a.safetensors:-1") == ("a.safetensors", Strength(-1.0))
    assert lora_with_strength("C:/x/a.safetensors:0.5:1") == ("C:/x/a.safetensors", Strength(0.5, unet=1.0))
    assert lora_with_strength("a.safetensors:te=0.2:unet=1") == ("a.safetensors", Strength(0.2, unet=1.0))


def test_resize_command(lora_path, tmp_path, components, capsys):
    out = tmp_path / "small.safetensors"
    assert main(["resize", str(lora_path), str(out), "--rank", "4"]) == 0
    text = capsys.readouterr().out
    assert "lowest energy kept 100.0000%" in text and "rank 4 -> 4" in text
    table = _table(components)
    before, after = load_lora(lora_path, table=table), load_lora(out, table=table)
    for name in before.modules:
        assert _close(after.delta(name), before.delta(name)), name
    assert main(["resize", str(lora_path), str(out), "--rank", "2"]) == 2  # exists, no --force
    assert "already exists" in capsys.readouterr().err


def _table(components):
    from types import SimpleNamespace

    from sdlora.arch.tables import table_for_model

    return table_for_model(SimpleNamespace(**components))


def test_merge_command(lora_path, tmp_path, components, capsys):
    other = tmp_path / "b.safetensors"
    save_lora(random_lora(components, _attention_names(components), rank=2, seed=9), other)
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(out), f"{lora_path}:0.7", f"{other}:0.3", "--mode", "concat"]) == 0
    table = _table(components)
    a, b, m = (load_lora(p, table=table) for p in (lora_path, other, out))
    for name in a.modules:
        assert _close(m.delta(name), 0.7 * a.delta(name) + 0.3 * b.delta(name)), name
    assert "a:0.7, b:0.3" in m.metadata["modelspec.merged_from"]
    assert main(["merge", str(out), f"{lora_path}:x", "--force"]) == 2
    assert "x" in capsys.readouterr().err


def test_extract_command(components, tmp_path, capsys):
    tuned = copy.deepcopy(components)
    name = _attention_names(tuned)[0]
    weight = live_modules(tuned)[name].weight
    with torch.no_grad():
        weight += torch.outer(torch.randn(weight.shape[0]), torch.randn(weight.shape[1])) * 0.01
    save_file(components["unet"].state_dict(), str(tmp_path / "base.safetensors"))
    save_file(tuned["unet"].state_dict(), str(tmp_path / "tuned.safetensors"))
    out = tmp_path / "extracted.safetensors"
    assert main(["extract", str(out), "--base", str(tmp_path / "base.safetensors"),
                 "--tuned", str(tmp_path / "tuned.safetensors"), "--rank", "2"]) == 0
    assert "1 changed modules" in capsys.readouterr().out
    lora = load_lora(out, table=_table(components))
    assert list(lora.modules) == [name]
    diff = weight.detach() - live_modules(components)[name].weight.detach()
    assert _close(lora.delta(name), diff, 1e-4)


def test_generate_and_bake_commands(components, tiny_vae, lora_path, tmp_path, capsys):
    base = tmp_path / "base"
    tiny_pipeline(components, tiny_vae, tmp_path).save_pretrained(base)
    png = tmp_path / "img.png"
    args = ["generate", "--base", str(base), "--prompt", "a cat <lora:a:0.5>", "--lora-dir", str(tmp_path),
            "--steps", "2", "--width", "16", "--height", "16", "--seed", "4", "--sampler", "euler a", "--out", str(png)]
    assert main(args) == 0
    with Image.open(png) as image:
        text = image.text["parameters"]
    assert text.startswith("a cat <lora:a:0.5>\nSteps: 2, Sampler: Euler a, ") and 'Lora hashes: "a: ' in text
    baked = tmp_path / "baked"
    assert main(["bake", str(baked), "--base", str(base), "--lora", f"{lora_path}:0.5"]) == 0
    assert (baked / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    bad = ["generate", "--base", str(base), "--prompt", "<lora:nope:1>", "--lora-dir", str(tmp_path),
           "--steps", "1", "--width", "16", "--height", "16", "--out", str(png)]
    capsys.readouterr()
    assert main(bad) == 2
    assert "no LoRA named 'nope'" in capsys.readouterr().err


def test_generate_refuses_an_unknown_sampler_before_loading_the_model(tmp_path, capsys):
    missing_base = tmp_path / "no-such-model"  # loading it would fail with another message
    args = ["generate", "--base", str(missing_base), "--prompt", "a cat", "--sampler", "DPM++ 3M",
            "--out", str(tmp_path / "img.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown sampler 'DPM++ 3M'" in err and "DPM++ 2M SDE" in err
    assert not (tmp_path / "img.png").exists()


def test_resize_and_merge_commands_keep_the_input_dtype(components, tmp_path):
    """An fp16 8 -> 4 resize is smaller than its input (it was written as float32 and came out bigger)."""
    from sdlora.header import read_header

    source = tmp_path / "fp16.safetensors"
    save_lora(random_lora(components, _attention_names(components), rank=8, alpha=8.0), source, dtype="fp16")
    small, merged, wide = tmp_path / "small.safetensors", tmp_path / "merged.safetensors", tmp_path / "wide.safetensors"
    assert main(["resize", str(source), str(small), "--rank", "4"]) == 0
    assert main(["merge", str(merged), f"{source}:0.5", f"{small}:0.5", "--rank", "4"]) == 0
    assert main(["resize", str(source), str(wide), "--rank", "4", "--dtype", "fp32"]) == 0

    def weight_dtypes(path):  # alphas are always written as F32 scalars
        return {info.dtype for key, info in read_header(path).tensors.items() if not key.endswith(".alpha")}

    assert weight_dtypes(small) == weight_dtypes(merged) == {"F16"}
    assert small.stat().st_size < source.stat().st_size
    assert weight_dtypes(wide) == {"F32"}


def test_generate_grid_command(components, tiny_vae, lora_path, tmp_path):
    base = tmp_path / "base"
    tiny_pipeline(components, tiny_vae, tmp_path).save_pretrained(base)
    png = tmp_path / "grid.png"
    stem = Path(lora_path).stem
    args = ["generate", "--base", str(base), "--prompt", "a cat", "--lora", f"{lora_path}:0.7", "--steps", "2",
            "--width", "16", "--height", "16", "--seed", "4", "--grid-x", f"{stem}:0,1", "--out", str(png)]
    assert main(args) == 0
    with Image.open(png) as image:
        assert image.width > 2 * 16 and image.height > 2 * 16
        assert image.text["parameters"].endswith(f"Grid: columns {stem} [0, 1]; rows seed [4, 5]")
    bad = [*args[:-4], "--grid-x", "nope:0,1", "--out", str(png)]
    assert main(bad) == 2
