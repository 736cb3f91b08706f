"""Pure diffusion-loss pieces: noise, timesteps, targets and min-SNR weights. Depends on torch only.

Stages follow diffusers' `train_text_to_image_lora.py` (encode -> noise -> timesteps -> predict -> loss);
each is a function here so it can be tested alone.
"""

from __future__ import annotations

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
                     device: torch.device) -> torch.Tensor:
    """Uniform integer timesteps in [0, num_train_timesteps), shape (B,)."""
    return torch.randint(0, num_train_timesteps, (batch,), generator=generator, device=device).long()


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


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in float32, optionally weighted per sample (weights: (B,))."""
    if weights is None:  # every sample of a batch has the same shape (one bucket), so this is the same mean
        return torch.nn.functional.mse_loss(pred.float(), target.float())
    per_sample = (pred.float() - target.float()).pow(2).mean(dim=tuple(range(1, pred.dim())))
    if weights is not None:
        per_sample = per_sample * weights
    return per_sample.mean()
