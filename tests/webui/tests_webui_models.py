"""Base model and data set for the web UI's end-to-end tests.

The shipped embedded model is used when its weights are present; otherwise an UNTRAINED model with
the embedded architecture is written to a temporary diffusers folder (same module names, same sizes),
so the browser test still exercises training, stacking and generation end to end.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def embedded_available() -> bool:
    from sdlora.embedded import weights_dir

    return (weights_dir() / "model_index.json").is_file()


def write_untrained_embedded(folder: Path) -> Path:
    """A diffusers StableDiffusionPipeline folder with the embedded architecture and random weights."""
    embedded_pipeline(folder).save_pretrained(folder, safe_serialization=True)
    return folder


def sample_dataset(folder: Path, n: int = 6) -> Path:
    """`sample_data/` when it holds images, else a few 32 px striped images with captions."""
    sample = REPO_ROOT / "sample_data"
    if sample.is_dir() and any(sample.rglob("*.png")):
        return sample
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = Image.new("RGB", (32, 32), (240, 200, 40))
        draw = ImageDraw.Draw(image)
        for x in range(0, 32, 4):
            draw.line([(x, 0), (x, 31)], fill=(120, 20, 160), width=1)
        draw.ellipse([8 + i, 8, 22 + i, 22], fill=(20, 120, 220))
        image.save(folder / f"style{i}.png")
        (folder / f"style{i}.txt").write_text("zqx style, a blue circle on a yellow background\n")
    return folder


def embedded_pipeline(folder: Path):
    """An in-memory StableDiffusionPipeline with the embedded architecture and random weights."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from sdlora.embedded import configs
    from sdlora.embedded.tokenizer import BOS, EOS, write_tokenizer_files

    torch.manual_seed(0)
    vocab = write_tokenizer_files(folder / "tokenizer", configs.MAX_TOKENS)
    return StableDiffusionPipeline(
        vae=configs.make_vae(), text_encoder=configs.make_text_encoder(len(vocab), vocab[BOS], vocab[EOS]),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"), unet=configs.make_unet(),
        scheduler=DDPMScheduler.from_config(configs.SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def random_lora(path: Path, unet, seed: int = 1, rank: int = 4, scale: float = 1.0) -> Path:
    """A Kohya LoRA over every UNet attention q/v projection of `unet`, with random factors (visible effect)."""
    import torch

    import sdlora
    from sdlora.arch.components import canonical_name
    from sdlora.weights import LoraModule, LoraState

    gen = torch.Generator().manual_seed(seed)
    modules = {}
    for live, module in unet.named_modules():
        if live.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_q", "attn2.to_v")):
            out_f, in_f = module.weight.shape
            down = torch.randn(rank, in_f, generator=gen) * scale / in_f**0.5
            up = torch.randn(out_f, rank, generator=gen) * scale
            modules[canonical_name("unet", live)] = LoraModule("lora", {"down": down, "up": up}, alpha=float(rank))
    sdlora.save_lora(LoraState(modules=modules, metadata={"modelspec.title": "random test LoRA",
                                                          "ss_tag_frequency": json.dumps({"x": {"zqx": 1}})}),
                     path)
    return path


def write_wide_base(folder: Path) -> Path:
    """A second tiny base: the embedded architecture with wider UNet blocks (48/96 channels instead of 32/64),
    random weights, as a diffusers folder. LoRAs made for the embedded model do not fit it."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from sdlora.embedded import configs
    from sdlora.embedded.tokenizer import BOS, EOS, write_tokenizer_files

    torch.manual_seed(1)
    vocab = write_tokenizer_files(folder / "tokenizer", configs.MAX_TOKENS)
    unet = UNet2DConditionModel(**{**configs.UNET, "block_out_channels": [48, 96, 96]})
    StableDiffusionPipeline(
        vae=configs.make_vae(), text_encoder=configs.make_text_encoder(len(vocab), vocab[BOS], vocab[EOS]),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"), unet=unet,
        scheduler=DDPMScheduler.from_config(configs.SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False).save_pretrained(folder, safe_serialization=True)
    return folder
