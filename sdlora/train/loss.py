"""Pure diffusion-loss pieces: noise, timesteps, targets and min-SNR weights. Depends on torch only.

Stages follow diffusers' `train_text_to_image_lora.py` (encode -> noise -> timesteps -> predict -> loss);
each is a function here so it can be tested alone.
"""

from __future__ import annotations

import math

import torch


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise like `latents`; with `noise_offset`, plus offset * randn(B, C, 1, 1).

    Noise offset: https://www.crosslabs.org/blog/diffusion-with-offset-noise (as sd-scripts and diffusers
    apply it).
    """
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        shape = (latents.shape[0], latents.shape[1], 1, 1)
        noise = noise + noise_offset * torch.randn(shape, generator=generator, device=latents.device,
                                                   dtype=latents.dtype)
    return noise


def sample_timesteps(batch: int, num_train_timesteps: int, generator: torch.Generator,
                     device: torch.device, low: int = 0, high: int | None = None) -> torch.Tensor:
    """Uniform integer timesteps in [low, high) (default [0, num_train_timesteps)), shape (B,)."""
    high = num_train_timesteps if high is None else min(high, num_train_timesteps)
    return torch.randint(low, high, (batch,), generator=generator, device=device).long()


def multires_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int,
                    discount: float) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise (Whitaker 2023, as sd-scripts applies it): Gaussian noise at
    coarser and coarser scales (each a random factor 2-4 smaller), upsampled bilinearly and added with
    weight discount^i, then rescaled to unit standard deviation. No draw when iterations is 0."""
    if not iterations:
        return noise
    batch, channels, height, width = noise.shape
    total = noise.clone()
    for i in range(1, iterations + 1):
        r = 2.0 + 2.0 * torch.rand((), generator=generator, device=noise.device).item()
        h, w = max(1, int(height / r**i)), max(1, int(width / r**i))
        coarse = torch.randn((batch, channels, h, w), generator=generator, device=noise.device, dtype=noise.dtype)
        total = total + torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear") * discount**i
        if h == 1 or w == 1:
            break
    return total / total.std()


def perturb_noise(noise: torch.Tensor, generator: torch.Generator, gamma: float) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023, https://arxiv.org/abs/2301.11706): the noise that is *added* to
    the latents gets gamma * randn extra, while the target keeps the plain noise. No draw when gamma is 0."""
    if not gamma:
        return noise
    return noise + gamma * torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)


def noise_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                 prediction_type: str) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v-prediction,
    Salimans & Ho 2022, https://arxiv.org/abs/2202.00512 §4)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def compute_snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Hang et al. 2023, https://arxiv.org/abs/2303.09556 eq. 1)."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights min(SNR, gamma) / SNR, or / (SNR + 1) for v-prediction
    (Hang et al. 2023 §3.4; the v-prediction form is diffusers' and sd-scripts')."""
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


def debiased_weights(snr: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Debiased estimation (Yu et al. 2024, https://arxiv.org/abs/2310.08442): weight 1 / sqrt(SNR), or
    1 / (SNR + 1) for v-prediction, with SNR capped at 1000 (the t ~ 0 end would otherwise vanish)."""
    snr = torch.clamp(snr, max=1000.0)
    return 1.0 / (snr + 1.0) if prediction_type == "v_prediction" else 1.0 / torch.sqrt(snr)


def huber_c(schedule: str, c: float, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
            num_train_timesteps: int) -> torch.Tensor:
    """The Huber threshold per sample (B,), by kohya's schedules: constant c; exponential, from 1 at t=0 down
    to c at the last timestep; snr, (1 - c) / (1 + sigma_t)^2 + c with sigma_t = sqrt((1 - a_t) / a_t)
    (large where the noise is small, c where it dominates)."""
    t = timesteps.float()
    if schedule == "constant":
        return torch.full_like(t, c)
    if schedule == "exponential":
        return torch.exp(math.log(c) * t / num_train_timesteps)
    if schedule == "snr":
        alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigma = torch.sqrt((1.0 - alpha_bar) / alpha_bar)
        return (1.0 - c) / (1.0 + sigma) ** 2 + c
    raise ValueError(f"unknown Huber schedule {schedule!r}")


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                     c: torch.Tensor | None = None) -> torch.Tensor:
    """Per-element loss in float32: squared error (l2), or the pseudo-Huber forms with threshold c (B,):
    huber 2c(sqrt(d^2 + c^2) - c) (~ d^2 for small d, 2c|d| for large), smooth_l1 2(sqrt(d^2 + c^2) - c)."""
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff.pow(2)
    c = c.float().view(-1, *([1] * (diff.dim() - 1)))
    smooth = torch.sqrt(diff.pow(2) + c.pow(2)) - c
    if loss_type == "huber":
        return 2.0 * c * smooth
    if loss_type == "smooth_l1":
        return 2.0 * smooth
    raise ValueError(f"unknown loss type {loss_type!r}")


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                   loss_type: str = "l2", c: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss in float32 (squared error, or pseudo-Huber with `c`), optionally weighted per sample
    (weights: (B,))."""
    if weights is None and loss_type == "l2":  # one bucket per batch: the plain mean is the same mean
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    per_sample = elementwise_loss(pred, target, loss_type, c).mean(dim=tuple(range(1, pred.dim())))
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None,
                loss_type: str = "l2", c: torch.Tensor | None = None) -> torch.Tensor:
    """`diffusion_loss` where each sample's loss is averaged over its mask (B, 1, h, w) instead of every
    latent: sum(mask x loss) / (channels x sum(mask)). A sample masked out entirely adds 0 (no gradient)."""
    elementwise = elementwise_loss(pred, target, loss_type, c) * mask
    dims = tuple(range(1, pred.dim()))
    area = mask.sum(dim=dims) * pred.shape[1]
    per_sample = elementwise.sum(dim=dims) / area.clamp_min(1e-8)
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()
