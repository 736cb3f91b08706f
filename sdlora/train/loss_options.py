"""The loss and noise options of `optim.*` put together for one training step: timestep range, loss type
(squared error or pseudo-Huber with kohya's threshold schedules), per-sample weights (min-SNR, debiased
estimation) and input-perturbation noise. Depends on torch (through sdlora.train.loss).

Every option's default leaves the step exactly as before (same random draws, same loss): tests rely on it.
"""

from __future__ import annotations

import torch

from sdlora.errors import ConfigError
from sdlora.train.loss import compute_snr, debiased_weights, huber_c, min_snr_weights, multires_noise


def check(cfg) -> None:
    """Ranges that can be checked before the model loads; raises ConfigError."""
    o = cfg.optim
    if o.min_timestep < 0:
        raise ConfigError(f"optim.min_timestep: must be >= 0, got {o.min_timestep}")
    if o.max_timestep is not None and o.max_timestep <= o.min_timestep:
        raise ConfigError(f"optim.max_timestep ({o.max_timestep}) must be larger than optim.min_timestep "
                          f"({o.min_timestep}): timesteps are drawn from [min, max)")
    if o.loss_type != "l2" and not 0.0 < o.huber_c <= 1.0:
        raise ConfigError(f"optim.huber_c: must be in (0, 1] for loss_type={o.loss_type}, got {o.huber_c}")
    if o.multires_noise_iterations < 0 or not 0.0 <= o.multires_noise_discount <= 1.0:
        raise ConfigError("optim.multires_noise_iterations must be >= 0 and optim.multires_noise_discount in "
                          f"[0, 1], got {o.multires_noise_iterations} and {o.multires_noise_discount}")
    if o.ip_noise_gamma < 0:
        raise ConfigError(f"optim.ip_noise_gamma: must be >= 0 (0 = off), got {o.ip_noise_gamma}")
    if o.zero_terminal_snr and cfg.model.prediction_type == "epsilon":
        _refuse_epsilon_zero_snr("model.prediction_type=epsilon")


def _refuse_epsilon_zero_snr(where: str) -> None:
    # At zero SNR the noised input is the noise itself, so predicting epsilon is the identity there and the
    # SNR weights divide by zero; the paper switches to v-prediction and kohya warns that training goes wrong.
    raise ConfigError(f"optim.zero_terminal_snr needs v-prediction, but {where}: set "
                      "model.prediction_type=v_prediction (the LoRA then trains the base as a v-prediction "
                      "model) or turn optim.zero_terminal_snr off")


def noise_schedule(cfg, scheduler, prediction_type: str):
    """The training noise schedule: `scheduler` itself, or with optim.zero_terminal_snr a DDPM schedule of the
    same config whose betas are rescaled so that alphas_cumprod[-1] == 0 (diffusers' rescale_zero_terminal_snr,
    Lin et al. 2023, https://arxiv.org/abs/2305.08891 Algorithm 1). DDPM rather than the base's own class
    because its add_noise and get_velocity use alphas_cumprod directly, which stays finite at zero SNR.
    Its timestep spacing is "trailing" (the paper's §3.3: sampling starts at the last, pure-noise step); the
    training step never reads it, the samples' DDIM schedule, built from this config, does."""
    if not cfg.optim.zero_terminal_snr:
        return scheduler
    if prediction_type != "v_prediction":
        _refuse_epsilon_zero_snr(f"the base predicts {prediction_type}")
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")


def forward_process(scheduler):
    """The schedule the training step noises with: `scheduler` when it is a DDPM schedule, else a DDPM schedule
    of the same config. A pipeline ships an inference scheduler, and some of them (DPM-Solver++, Euler) index
    `add_noise` by their inference timesteps or add sigma-scaled noise: with them x_t would not be the
    forward process q(x_t | x_0) at the timestep the UNet is told (measured: DPM-Solver++ gave t=0 the noise
    of t=999). diffusers' training scripts do the same (`DDPMScheduler.from_pretrained(subfolder=...)`)."""
    from diffusers import DDPMScheduler

    return scheduler if isinstance(scheduler, DDPMScheduler) else DDPMScheduler.from_config(scheduler.config)


def timestep_range(cfg, num_train_timesteps: int) -> tuple[int, int]:
    """[low, high) of the training timesteps; raises ConfigError when it is empty for this model."""
    low, high = cfg.optim.min_timestep, cfg.optim.max_timestep or num_train_timesteps
    high = min(high, num_train_timesteps)
    if low >= high:
        raise ConfigError(f"optim.min_timestep={low}: the model has {num_train_timesteps} timesteps; choose a "
                          "smaller value")
    return low, high


def training_noise(cfg, noise: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The noise of a step with multi-resolution noise applied (unchanged when it is off)."""
    return multires_noise(noise, generator, cfg.optim.multires_noise_iterations, cfg.optim.multires_noise_discount)


def loss_weights(cfg, scheduler, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor | None:
    """Per-sample weights (B,) from min-SNR-gamma and debiased estimation (multiplied), or None."""
    o = cfg.optim
    if not (o.min_snr_gamma or o.debiased_estimation):
        return None
    snr = compute_snr(scheduler.alphas_cumprod, timesteps)
    weights = torch.ones_like(snr)
    if o.min_snr_gamma:
        weights = weights * min_snr_weights(snr, o.min_snr_gamma, prediction_type)
    if o.debiased_estimation:
        weights = weights * debiased_weights(snr, prediction_type)
    return weights


def threshold(cfg, scheduler, timesteps: torch.Tensor) -> torch.Tensor | None:
    """The pseudo-Huber threshold per sample, or None for the squared error."""
    o = cfg.optim
    if o.loss_type == "l2":
        return None
    return huber_c(o.huber_schedule, o.huber_c, timesteps, scheduler.alphas_cumprod,
                   scheduler.config.num_train_timesteps)
