"""The validation loss: the diffusion loss of held-out images (`summary.validation`) with fixed inputs.

Every validation image gets one latent sample, one noise tensor and one timestep, drawn once from a
generator of its own (seeded from optim.seed, never from the training generator), so that the loss at
step 100 and at step 200 differ only by the LoRA, two runs with one seed log the same numbers, and
measuring it leaves the training RNG stream, and so the trained LoRA, exactly as it was. It is computed
under `torch.no_grad()` with the LoRA in eval mode (no LoRA dropout) and schedule-free optimizers' eval
weights, as samples are, with the plain squared error whatever `optim.loss_type` trains with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sdlora.train import data as data_mod
from sdlora.train.captions import chunk_count
from sdlora.train.conditioning import encode_text, posterior, unet_kwargs
from sdlora.train.loss import diffusion_loss, noise_target
from sdlora.train.optimizers import eval_weights

_SEED_SALT = 0x5A11D  # keeps the validation draws apart from the training generator's (seed + process)


@dataclass
class ValidationInput:
    latents: torch.Tensor     # (1, 4, h, w): one posterior sample
    noise: torch.Tensor       # (1, 4, h, w)
    timesteps: torch.Tensor   # (1,)
    caption: str
    size_ids: tuple[int, ...]


def enabled(state) -> bool:
    return bool(state.cfg.output.validate_every and state.summary is not None
                and getattr(state.summary, "validation", None))


def due(state) -> bool:
    return enabled(state) and state.step % state.cfg.output.validate_every == 0


def prepare(state) -> None:
    """Encode the validation images once (before the encoders are parked) into `state.validation`."""
    if not enabled(state) or state.validation:
        return
    generator = torch.Generator("cpu").manual_seed(state.cfg.optim.seed + _SEED_SALT)
    num = state.components.scheduler.config.num_train_timesteps
    for item in state.summary.validation:
        box = data_mod.sample_crop(item, state.cfg.data, None)  # center crop, no flip: the same every time
        pixels = data_mod.load_pixels(item, state.cfg.data, box, False).unsqueeze(0)
        with torch.no_grad():
            mean, std = posterior(state.components.vae, pixels)
        mean, std = mean.cpu(), std.cpu()
        latents = mean + std * torch.randn(mean.shape, generator=generator)
        noise = torch.randn(mean.shape, generator=generator)
        timesteps = torch.randint(0, num, (1,), generator=generator)
        size_ids = (item.size[1], item.size[0], box[1], box[0], item.bucket[1], item.bucket[0])
        state.validation.append(ValidationInput(latents, noise, timesteps, item.caption, size_ids))
    if state.text_cache is not None:  # embed the captions now, while the text encoder is still on the device
        state.text_cache.encode(state.components, [v.caption for v in state.validation], state.device)


def _text(state, caption: str):
    if state.text_cache is not None:
        return state.text_cache.encode(state.components, [caption], state.device)
    chunks = chunk_count(state.cfg.data.max_token_length)
    return encode_text(state.components, [caption], state.device, chunks)


def _one(state, entry: ValidationInput) -> float:
    scheduler, device, dtype = state.noise, state.device, state.weight_dtype
    latents, noise = entry.latents.to(device), entry.noise.to(device)
    timesteps = entry.timesteps.to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with state.accelerator.autocast():
        hidden, pooled = _text(state, entry.caption)
        extra = unet_kwargs(state.components, pooled, [entry.size_ids], dtype)
        pred = state.components.unet(noisy.to(dtype), timesteps, hidden.to(dtype), **extra).sample
    target = noise_target(scheduler, latents, noise, timesteps, state.prediction_type)
    return float(diffusion_loss(pred, target))


def validation_loss(state) -> float:
    """Mean loss over the validation images under the current LoRA."""
    state.network.eval()
    try:
        with torch.no_grad(), eval_weights(state.optimizer, state.params):
            losses = [_one(state, entry) for entry in state.validation]
    finally:
        state.network.train()
    return sum(losses) / len(losses)
