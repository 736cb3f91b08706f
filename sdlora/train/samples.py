"""Sample images during training: render prompts with the LoRA active and save a labelled grid.

Uses a diffusers pipeline built from the training components (the LoRA hooks are on the live modules, so
the samples show the LoRA as trained so far). Seeds are fixed so grids from different steps compare.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont


def build_pipeline(components):
    """A pipeline sharing the training modules (no copies); DDIM sampler for few-step previews."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = DDIMScheduler.from_config(components.scheduler.config)
    if components.is_sdxl:
        return StableDiffusionXLPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                         text_encoder_2=components.text_encoder_2, tokenizer=components.tokenizer,
                                         tokenizer_2=components.tokenizer_2, unet=components.unet,
                                         scheduler=scheduler)
    return StableDiffusionPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                   tokenizer=components.tokenizer, unet=components.unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def labelled_grid(images: list[Image.Image], labels: list[str], columns: int = 4) -> Image.Image:
    """Images in a grid, each with its (wrapped) label underneath. Small images (the 32 px embedded model)
    are enlarged (nearest neighbour) to at least 128 px so that labels stay readable."""
    factor = max(1, 128 // images[0].width)
    images = [img.resize((img.width * factor, img.height * factor), Image.NEAREST) for img in images]
    width, height = images[0].size
    font = ImageFont.load_default()
    label_h = 12 * 3
    columns = min(columns, len(images))
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * (height + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % columns) * width, (i // columns) * (height + label_h)
        grid.paste(image.convert("RGB"), (x, y))
        text = "\n".join(textwrap.wrap(label, max(8, width // 7))[:3])
        draw.multiline_text((x + 2, y + height + 1), text, fill="black", font=font, spacing=0)
    return grid


@torch.no_grad()
def render_samples(  # noqa: PLR0913 - keyword-only sampling settings
        components, prompts: list[str], step: int, folder: Path, *, size: int, steps: int,
                   seed: int, on_image=None) -> list[Path]:
    """Render `prompts`, save each image and a labelled grid; returns [grid, image, image, ...].
    `on_image(done)` is called after each image (the trainer's "sampling i/N" stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    device = components.unet.device
    images = []
    for i, prompt in enumerate(prompts):
        generator = torch.Generator(device).manual_seed(seed + i)
        images.append(pipe(prompt, height=size, width=size, num_inference_steps=steps,
                           generator=generator).images[0])
        if on_image is not None:
            on_image(i + 1)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"step-{step:06d}-{i:02d}.png"
        image.save(path)
        paths.append(path)
    grid = labelled_grid(images, [f"{p} (step {step})" for p in prompts])
    grid_path = folder / f"step-{step:06d}-grid.png"
    grid.save(grid_path)
    return [grid_path, *paths]
