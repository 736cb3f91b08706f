"""Sample images during training: render prompts with the LoRA active and save a labelled grid.

Uses a diffusers pipeline built from the training components (the LoRA hooks are on the live modules, so
the samples show the LoRA as trained so far). Seeds are fixed so grids from different steps compare.

A prompt may carry kohya's per-prompt options after the text (sd-scripts' sample prompt syntax):
`a cat --n blurry, lowres --w 512 --h 768 --d 42 --s 30 --l 6.5` = negative prompt, width, height, seed,
denoising steps and CFG scale. Unset options fall back to output.sample_size / sample_steps, seed
optim.seed + the prompt's index, and the pipeline's CFG scale (7.5).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from sdlora.errors import ConfigError
from sdlora.long_prompt import prompt_embedding_kwargs


@dataclass
class SamplePrompt:
    """One sample prompt with kohya's options (None: use the run's default)."""

    prompt: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None


# option letter -> (SamplePrompt field, converter)
_OPTIONS = {"n": ("negative", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int),
            "s": ("steps", int), "l": ("cfg_scale", float)}
_OPTION = re.compile(r"(?:^|\s)--([a-zA-Z]+)(?=\s|$)")


def parse_sample_prompt(text: str) -> SamplePrompt:
    """`a cat --n blurry --w 512 --s 30` -> SamplePrompt("a cat", negative="blurry", width=512, steps=30).

    An option's value runs to the next ` --x`; option letters are case-insensitive, as in sd-scripts.
    Raises ConfigError for an unknown option or a value of the wrong kind, naming the prompt."""
    marks = list(_OPTION.finditer(text))
    sample = SamplePrompt(prompt=text[:marks[0].start()].strip() if marks else text.strip())
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        _set_option(sample, mark.group(1).lower(), text[mark.end():end].strip(), text)
    return sample


def _set_option(sample: SamplePrompt, letter: str, raw: str, text: str) -> None:
    if letter not in _OPTIONS:
        raise ConfigError(f"output.sample_prompts: {text!r}: unknown option --{letter}; use --n (negative), "
                          "--w/--h (size), --d (seed), --s (steps), --l (CFG scale)")
    name, convert = _OPTIONS[letter]
    try:
        value = convert(raw)
    except ValueError as err:
        raise ConfigError(f"output.sample_prompts: {text!r}: --{letter} expects "
                          f"{'a whole number' if convert is int else 'a number'}, got {raw!r}") from err
    if name in ("width", "height") and (value <= 0 or value % 8):
        raise ConfigError(f"output.sample_prompts: {text!r}: --{letter} {value} must be a positive multiple "
                          "of 8 (the VAE works on 8x8 pixel blocks)")
    if name == "steps" and value <= 0:
        raise ConfigError(f"output.sample_prompts: {text!r}: --s must be at least 1")
    setattr(sample, name, value)


def check_sample_prompts(prompts: list[str]) -> list[SamplePrompt]:
    """Parse every prompt now, so that a typo fails before training rather than at the first sample step."""
    return [parse_sample_prompt(p) for p in prompts]


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
    are enlarged (nearest neighbour) to at least 128 px so that labels stay readable. Cells are as large
    as the largest image (prompts may set their own --w/--h)."""
    factor = max(1, 128 // min(img.width for img in images))
    images = [img.resize((img.width * factor, img.height * factor), Image.NEAREST) for img in images]
    width, height = max(img.width for img in images), max(img.height for img in images)
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
    """Render `prompts` (with kohya's per-prompt options, see the module docstring), save each image and a
    labelled grid; returns [grid, image, image, ...]. `on_image(done)` is called after each image (the
    trainer's "sampling i/N" stage)."""
    folder.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    device = components.unet.device
    samples = check_sample_prompts(prompts)
    images = []
    for i, sample in enumerate(samples):
        kwargs = _pipeline_kwargs(sample, i, size=size, steps=steps, seed=seed, device=device)
        with torch.no_grad():
            embeds = prompt_embedding_kwargs(pipe, sample.prompt, sample.negative, device)
        if embeds:
            kwargs = {key: value for key, value in kwargs.items() if key not in ("prompt", "negative_prompt")}
        images.append(pipe(**kwargs, **embeds).images[0])
        if on_image is not None:
            on_image(i + 1)
    paths = []
    for i, image in enumerate(images):
        path = folder / f"step-{step:06d}-{i:02d}.png"
        image.save(path)
        paths.append(path)
    grid = labelled_grid(images, [f"{s.prompt} (step {step})" for s in samples])
    grid_path = folder / f"step-{step:06d}-grid.png"
    grid.save(grid_path)
    return [grid_path, *paths]


def _pipeline_kwargs(sample: SamplePrompt, index: int, *, size: int, steps: int, seed: int, device) -> dict:
    """The pipeline call for one prompt: its own options, else the run's defaults."""
    seed = sample.seed if sample.seed is not None else seed + index
    kwargs = {"prompt": sample.prompt, "height": sample.height or size, "width": sample.width or size,
              "num_inference_steps": sample.steps or steps,
              "generator": torch.Generator(device).manual_seed(seed)}
    if sample.negative:
        kwargs["negative_prompt"] = sample.negative
    if sample.cfg_scale is not None:
        kwargs["guidance_scale"] = sample.cfg_scale
    return kwargs
