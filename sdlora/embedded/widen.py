"""Phase 4 of pretraining: widen the VAE's gamut without touching the UNet.

The phase-1 VAE learned from the pretraining palette (8 named colours) and its encoder maps any other
colour onto the nearest one it knows (teal comes back green, coral yellow), so no LoRA on the UNet
could ever draw a new palette. This phase fine-tunes encoder and decoder together on two streams:

* palette images: the flat shape images the UNet was trained on (`shapes.make_dataset`). Here the
  new encoder's latent mean is anchored to the old (frozen) encoder's, and the decoder learns to
  render the OLD encoder's latent samples, so the shipped UNet, trained on old latents with the old
  `scaling_factor`, keeps working unchanged;
* wide-gamut images (`wide_gamut_image`): shapes, gradients, stripes, checks, grain and outlines in
  uniformly random RGB colours, reconstructed through the new encoder. These are generic: the VAE
  never sees the quickstart's style set.

The `scaling_factor` is kept (the UNet's latents are the old ones); `evaluate` reports the anchor
error in those scaled units, so "close" means close relative to the unit-variance latents the UNet sees.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdlora.embedded import shapes
from sdlora.embedded.training import cosine_lr, random_crop, to_tensor

log = logging.getLogger(__name__)


@dataclass
class WidenSettings:
    """What phase 4 needs; `pretrain.PretrainConfig` carries the same values as `widen_*` fields."""

    seed: int = 0
    steps: int = 600
    batch: int = 32  # half palette, half wide-gamut
    lr: float = 5e-4
    images: int = 4000  # per stream
    anchor: float = 1.0  # weight of the latent anchor (scaled latent MSE) beside pixel MSE + L1
    crop: int = 16
    crop_fraction: float = 0.5  # first half on random crops (4x cheaper), then full images
    detail: float = 0.0  # weight of the local detail-energy loss (see detail_loss); 0 = MSE + L1 only


def _gradient(rng: np.random.Generator) -> np.ndarray:
    """A linear blend between two random colours at a random angle, (SIZE, SIZE, 3) float."""
    yy, xx = np.mgrid[0 : shapes.SIZE, 0 : shapes.SIZE].astype(np.float32) / (shapes.SIZE - 1)
    angle = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (a * (1 - t[..., None]) + b * t[..., None]).astype(np.float32)


def _fill(rng: np.random.Generator) -> np.ndarray:
    """A flat random colour (2/3) or a gradient (1/3), then maybe a random texture."""
    if rng.random() < 2 / 3:
        base = np.broadcast_to(rng.uniform(0, 255, 3).astype(np.float32), (shapes.SIZE, shapes.SIZE, 3))
    else:
        base = _gradient(rng)
    return shapes.random_texture(rng, base)


def _ring(mask: np.ndarray) -> np.ndarray:
    """Pixels inside the shape with a neighbour outside it (a one-pixel outline)."""
    solid = mask > 0.5
    padded = np.pad(solid, 1, constant_values=False)
    inner = solid & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return (solid & ~inner).astype(np.float32)


def wide_gamut_image(rng: np.random.Generator) -> np.ndarray:
    """One (SIZE, SIZE, 3) uint8 image: a random shape over a background, any RGB colours.

    Fills are flat colours or gradients, with the pretraining textures (stripes, checks, grain) in
    random colours; sometimes a one-pixel outline in another random colour and fine pixel noise.
    """
    shape = shapes.SHAPES[rng.integers(len(shapes.SHAPES))]
    mask = shapes.shape_mask(shape, tuple(rng.uniform(0.25, 0.75, 2)), rng.uniform(0.12, 0.4))
    image = _fill(rng) * (1 - mask[..., None]) + _fill(rng) * mask[..., None]
    if rng.random() < 0.3:
        ring = _ring(mask)[..., None]
        image = image * (1 - ring) + rng.uniform(0, 255, 3) * ring
    if rng.random() < 0.3:
        image = image + rng.normal(0, rng.uniform(1, 10), (shapes.SIZE, shapes.SIZE, 1))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_wide_dataset(n: int, seed: int) -> np.ndarray:
    """`n` wide-gamut images, uint8 (n, SIZE, SIZE, 3), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    return np.stack([wide_gamut_image(rng) for _ in range(n)])


def make_streams(settings: WidenSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(palette, wide) training images as tensors; the palette ones are flat, as the UNet saw them."""
    palette, _ = shapes.make_dataset(settings.images, seed=settings.seed * 1000 + 8)
    wide = make_wide_dataset(settings.images, seed=settings.seed * 1000 + 9)
    return to_tensor(palette), to_tensor(wide)


def pixel_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(recon, target) + 0.5 * F.l1_loss(recon, target)


_LUMA = (0.299, 0.587, 0.114)


def detail_energy(x: torch.Tensor, window: int = 4) -> torch.Tensor:
    """Mean |luminance difference| to the right and below neighbours, per `window` x `window` patch."""
    luma = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    dx = (luma[..., :, 1:] - luma[..., :, :-1]).abs()[..., :-1, :]
    dy = (luma[..., 1:, :] - luma[..., :-1, :]).abs()[..., :, :-1]
    return F.avg_pool2d(dx + dy, window, ceil_mode=True)


def detail_loss(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between the local detail energies of reconstruction and target.

    MSE alone makes the decoder paint the mean of anything it cannot place exactly (fine grain comes
    back flat); this term asks for detail of the right strength in the right region instead.
    """
    return F.l1_loss(detail_energy(recon), detail_energy(target))


def widen_loss(new_vae, old_vae, palette: torch.Tensor, wide: torch.Tensor, settings: WidenSettings,
               gen: torch.Generator) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """Anchor + palette decoding of old latents + wide-gamut reconstruction, and their parts."""
    scale = old_vae.config.scaling_factor
    with torch.no_grad():
        old = old_vae.encode(palette).latent_dist
        old_sample = old.sample(generator=gen)
    new_palette = new_vae.encode(palette).latent_dist
    anchor = F.mse_loss(new_palette.mean * scale, old.mean * scale)
    palette_px = pixel_loss(new_vae.decode(old_sample).sample, palette)
    new_wide = new_vae.encode(wide).latent_dist
    wide_recon = new_vae.decode(new_wide.sample(generator=gen)).sample
    wide_px = pixel_loss(wide_recon, wide)
    detail = detail_loss(wide_recon, wide)
    kl = 1e-6 * (new_palette.kl().mean() + new_wide.kl().mean())
    loss = settings.anchor * anchor + palette_px + wide_px + settings.detail * detail + kl
    parts = {"anchor": anchor.item(), "palette_px": palette_px.item(), "wide_px": wide_px.item()}
    return loss, parts | {"detail": detail.item()}


def widen_vae(vae, settings: WidenSettings, on_step=None):
    """Return a widened copy of `vae` (the argument is left unchanged).

    `on_step(step, parts, vae)` is called after every step (logging, evaluation, checkpoints).
    """
    old_vae = copy.deepcopy(vae).eval().requires_grad_(False)
    new_vae = copy.deepcopy(vae).train().requires_grad_(True)
    palette, wide = make_streams(settings)
    opt = torch.optim.AdamW(new_vae.parameters(), lr=settings.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed * 1000 + 10)
    half = settings.batch // 2
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = settings.lr * cosine_lr(step, settings.steps, 20)
        p = palette[torch.randint(len(palette), (half,), generator=gen)]
        w = wide[torch.randint(len(wide), (settings.batch - half,), generator=gen)]
        if step < settings.crop_fraction * settings.steps:
            both = random_crop(torch.cat([p, w]), settings.crop, gen)  # one window for both streams
            p, w = both[:half], both[half:]
        loss, parts = widen_loss(new_vae, old_vae, p, w, settings, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, parts, new_vae)
    return new_vae.eval().requires_grad_(False)


@torch.no_grad()
def evaluate(new_vae, old_vae, seed: int = 0, n: int = 256) -> dict:
    """Held-out scores: anchor error (scaled latent MSE, palette images) and round-trip pixel MSE.

    `palette_old_latents_mse` decodes the OLD encoder's latent means: what the UNet's images look like.
    """
    palette = to_tensor(shapes.make_dataset(n, seed=seed * 1000 + 11)[0])
    wide = to_tensor(make_wide_dataset(n, seed=seed * 1000 + 12))
    scale = old_vae.config.scaling_factor
    old_mean = old_vae.encode(palette).latent_dist.mean
    new_mean = new_vae.encode(palette).latent_dist.mean
    wide_mean = new_vae.encode(wide).latent_dist.mean
    return {
        "anchor_mse": F.mse_loss(new_mean * scale, old_mean * scale).item(),
        "palette_old_latents_mse": F.mse_loss(new_vae.decode(old_mean).sample, palette).item(),
        "palette_mse": F.mse_loss(new_vae.decode(new_mean).sample, palette).item(),
        "wide_mse": F.mse_loss(new_vae.decode(wide_mean).sample, wide).item(),
    }
