"""Before/after pictures and the style statistic for a LoRA on the embedded model.

`strength_sweep` draws the same prompts with the same seeds at several LoRA strengths (through
`sdlora.stack.LoraStack`, which patches the weights exactly and restores them bit for bit);
`save_grid` writes them as one labelled PNG (rows = strengths, columns = prompts).

`style_distance(images, reference)` says how far a set of images is from a reference set in style,
as the mean of two total-variation distances (each 0 = same distribution, 1 = disjoint):
* colour: joint RGB histograms, 4 bins per channel (64 colour cells), pooled over all pixels; this is
  the palette;
* texture: histograms of local contrast, |luminance difference| to the right and below neighbours,
  in the bins 0-4-8-16-32-64-128-256; flat fills put almost everything in the first bin, hatching
  and grain fill the middle ones.
Both ignore where things are, so drawing the same content in the reference's palette and texture is
what brings the distance down.

`autoencoder_roundtrip(vae, images)` passes images through the model's own VAE (encode, posterior mean,
decode). A LoRA on the UNet and text encoder is trained to reproduce the *latents* of the style images
and every image it draws goes through the same frozen decoder as the base's, so the round trip of the
style set is what a perfect LoRA would draw: its distance to the style set is the autoencoder's own
error, in effect a floor for any LoRA (0.178 for sample_data/ on the shipped VAE, against the base's 0.61),
and the quickstart test measures the LoRA's share against the round-tripped style set as well as against
the raw images.

The distance ignores content: an empty sheet of the style's paper scores well. So the quickstart test
also checks that the LoRA's images still show the prompted shape (judge.py), which caught a sampler that
lowered the distance by drawing grain instead of shapes (README "Embedded model").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdlora.suffixes import IMAGE_SUFFIXES

COLOUR_BINS = 4
TEXTURE_EDGES = np.array([0, 4, 8, 16, 32, 64, 128, 256.1])
GUIDANCE = 5.0  # classifier-free guidance scale for the sweep


def colour_histogram(images: np.ndarray) -> np.ndarray:
    """Normalised joint RGB histogram (COLOUR_BINS**3 cells) of uint8 images (N, H, W, 3)."""
    cells = (images.astype(np.int64) * COLOUR_BINS) // 256
    index = (cells[..., 0] * COLOUR_BINS + cells[..., 1]) * COLOUR_BINS + cells[..., 2]
    counts = np.bincount(index.ravel(), minlength=COLOUR_BINS**3).astype(np.float64)
    return counts / counts.sum()


def texture_histogram(images: np.ndarray) -> np.ndarray:
    """Normalised histogram of neighbour luminance differences of uint8 images (N, H, W, 3)."""
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    diffs = np.concatenate([np.abs(np.diff(luma, axis=2)).ravel(), np.abs(np.diff(luma, axis=1)).ravel()])
    counts, _ = np.histogram(diffs, bins=TEXTURE_EDGES)
    return counts / counts.sum()


def style_distance(images: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """{"colour", "texture", "total"} distances (0..1) between two uint8 image sets."""
    colour = 0.5 * np.abs(colour_histogram(images) - colour_histogram(reference)).sum()
    texture = 0.5 * np.abs(texture_histogram(images) - texture_histogram(reference)).sum()
    return {"colour": float(colour), "texture": float(texture), "total": float((colour + texture) / 2)}


def autoencoder_roundtrip(vae, images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, 3) encoded by `vae` (posterior mean) and decoded again, as uint8."""
    import torch

    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    decoded = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return decoded.permute(0, 2, 3, 1).cpu().numpy()


def load_images(folder: Path) -> np.ndarray:
    """Every image in `folder` as uint8 RGB (N, H, W, 3), sorted by name."""
    from PIL import Image

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


def draw(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float) -> np.ndarray:
    """uint8 images (N, H, W, 3), one per (prompt, seed), in one batch."""
    import torch

    generators = [torch.Generator().manual_seed(s) for s in seeds]
    out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
               output_type="np").images  # fmt: skip
    return (np.asarray(out) * 255).round().astype(np.uint8)


def strength_sweep(
    pipe, lora, prompts: list[str], seeds: list[int], strengths: list[float], steps: int = 20
) -> dict[float, np.ndarray]:
    """{strength: images} for the same prompts and seeds (guidance GUIDANCE); weights restored after."""
    from sdlora.stack import LoraStack  # stack imports torch at the top; this module imports it lazily

    stack = LoraStack(pipe)
    name = stack.add(lora, strength=strengths[0])
    try:
        result = {}
        for strength in strengths:
            stack.set_strength(name, strength)
            result[strength] = draw(pipe, prompts, seeds, steps, GUIDANCE)
        return result
    finally:
        stack.clear()


def save_grid(rows: dict[str, np.ndarray], path: Path, zoom: int = 4, column_labels: list[str] | None = None) -> Path:
    """Write rows of images (label -> (N, H, W, 3)) as one PNG, each row labelled on its left and each column
    on top by `column_labels` (the prompts), as A1111's X/Y plot (`sdlora.grid.assemble`)."""
    from PIL import Image

    from sdlora.atomic import atomic_path
    from sdlora.grid import assemble

    cells = [[Image.fromarray(image).resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.Resampling.NEAREST)
              for image in images] for images in rows.values()]
    labels = list(column_labels) if column_labels is not None else [""] * len(cells[0])
    if len(labels) != len(cells[0]):
        raise ValueError(f"{len(labels)} column labels for {len(cells[0])} columns")
    sheet, _ = assemble(cells, labels, list(rows))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".png", fsync=False) as tmp:
        sheet.save(tmp, format="PNG")
    return path
