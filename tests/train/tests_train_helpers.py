"""Helpers for trainer tests: tiny components (tests/conftest.py models + a tiny CLIP tokenizer), image folders
and a tiny training config. Imported by conftest.py and by test modules."""

from __future__ import annotations

import importlib.util
import json
import string
from pathlib import Path


def _root_conftest():
    """tests/conftest.py under its own name (both files are called conftest)."""
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("sdlora_tests_root_conftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_ROOT = _root_conftest()
make_tiny_unet, make_tiny_vae, make_tiny_text_encoder = _ROOT.make_tiny_unet, _ROOT.make_tiny_vae, \
    _ROOT.make_tiny_text_encoder


def write_tiny_tokenizer(folder: Path) -> Path:
    """A character-level CLIP BPE tokenizer (no merges) whose ids fit the tiny text encoder (vocab 1000)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.!-'"
    tokens = ["<|startoftext|>", "!!", "<|endoftext|>"] + list(chars) + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(dict.fromkeys(tokens))}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    return folder


def make_tiny_components(tmp_path: Path, prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    from sdlora.base.load import Components

    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(tmp_path / "tokenizer"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, prediction_type=prediction_type)
    return Components(unet=make_tiny_unet(), vae=make_tiny_vae(), text_encoder=make_tiny_text_encoder(),
                      tokenizer=tokenizer, scheduler=scheduler, family="sd1", name="tiny")


def write_images(folder: Path, count: int = 4, size=(64, 64), captions: bool = True) -> Path:
    """`count` small RGB images with distinct colours (and .txt captions)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour = (40 * i % 256, 255 - 50 * i % 256, 90)
        img = Image.new("RGB", size, colour)
        for x in range(0, size[0], 8):
            img.putpixel((x, x % size[1]), (255, 255, 255))
        img.save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"shape {i}, red, small", encoding="utf-8")
    return folder


def tiny_config(data: Path, output: Path, *extra: str):
    from sdlora.settings.config import load_config

    return load_config(None, [f"data.path={data}", f"output.dir={output}", "data.resolution=32",
                              "data.min_bucket=32", "data.max_bucket=64", "data.bucket_step=32", "optim.steps=3",
                              "lora.rank=4", "lora.alpha=4", "output.save_dtype=fp32", *extra])


def save_tiny_pipeline(folder: Path, tmp: Path) -> Path:
    """The tiny components as a diffusers pipeline folder (what `--base DIR` loads)."""
    from diffusers import StableDiffusionPipeline

    c = make_tiny_components(tmp)
    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder
