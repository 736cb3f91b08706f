"""The training loop: `setup_training` (freeze, inject, optimizer, caches), `training_step` (one micro-batch:
encode -> noise -> timesteps -> predict -> loss) and `optimizer_step` (reduce, clip, step). The loop over
steps (logging, samples, checkpoints, export) is `sdlora.train.session`.

Reads top to bottom like diffusers' `train_text_to_image_lora.py`, but each stage is a function.
Multi-process (``accelerate launch``): every process computes its own micro-batches of the same global
order; LoRA gradients are averaged with one all-reduce per optimizer step (the LoRA lives outside the
base model, so no DDP wrapper is needed and the base model is never wrapped or copied). Under DeepSpeed the
LoRA network alone is wrapped in DeepSpeed's engine, which reduces, clips and updates (`deepspeed_run`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdlora.errors import TrainingError
from sdlora.lora import inject_lora
from sdlora.train import block_options, deepspeed_run, export, fp8, fused, loss_options, memory
from sdlora.train import data as data_mod
from sdlora.train import masks as masks_mod
from sdlora.train.captions import chunk_count
from sdlora.train.compiling import compile_unet
from sdlora.train.conditioning import (
    LatentCache,
    TextCache,
    encode_text,
    posterior,
    unet_kwargs,
    vae_identity,
)
from sdlora.train.loss import (
    diffusion_loss,
    masked_loss,
    noise_target,
    perturb_noise,
    sample_noise,
    sample_timesteps,
)
from sdlora.train.optim import make_optimizer, make_scheduler, param_groups

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    cfg: Any
    components: Any
    accelerator: Any
    network: Any
    optimizer: Any
    lr_scheduler: Any
    items: list
    summary: Any
    generator: torch.Generator
    output: Path
    prediction_type: str
    train_text: bool
    weight_dtype: torch.dtype
    latent_cache: LatentCache | None = None
    text_cache: TextCache | None = None
    step: int = 0
    batches_per_epoch: int = 1
    params: list = field(default_factory=list)  # the LoRA parameters, listed once (clipped every step)
    unet: Any = None  # what the training steps call: the UNet, or its compiled wrapper (optim.compile)
    parked: bool = False  # VAE and text encoder(s) moved off the accelerator (sdlora.train.parking)
    engine: Any = None  # DeepSpeed's engine over the LoRA network, when launched with DeepSpeed
    ema: Any = None  # sdlora.train.ema.LoraEma when optim.ema_decay is set
    stages: Any = None  # sdlora.train.monitor.Stages: stage reports and cancel between cached items
    validation: list = field(default_factory=list)  # sdlora.train.validation.ValidationInput per held-out image
    fused: Any = None  # sdlora.train.fused.FusedSteps when optim.fused_backward is on
    fp8_layers: list = field(default_factory=list)  # layers whose weights are float8 (optim.fp8_base)
    noise: Any = None  # the forward-process schedule (loss_options.forward_process), DDPM whatever samples use
    masks: dict = field(default_factory=dict)  # (image, bucket, crop, flip) -> latent-grid loss mask or None
    _epochs: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def batch(self, micro: int) -> tuple[int, int, list[int]]:
        """(epoch, batch position, item indices) of global micro-batch number `micro`."""
        epoch, position = divmod(micro, self.batches_per_epoch)
        if epoch not in self._epochs:
            self._epochs = {epoch: data_mod.epoch_batches(self.items, self.cfg.data.batch_size,
                                                          self.cfg.optim.seed, epoch)}
        return epoch, position, self._epochs[epoch][position]


def _freeze_and_place(components, accelerator, weight_dtype) -> None:
    for model in (components.unet, components.vae, *components.text_encoders.values()):
        model.requires_grad_(False)
        model.eval()
        if model.dtype != weight_dtype and model is not components.vae:
            model.to(dtype=weight_dtype)
        model.to(accelerator.device)
    if components.vae.dtype != torch.float32:
        components.vae.to(dtype=torch.float32)  # fp16 VAE encodes overflow (diffusers keeps it fp32 too)


def inject_network(cfg, components):
    """The LoRA network `cfg.lora` describes, hooked into the UNet (and the text encoders when trained)."""
    targets = {"unet": components.unet}
    if cfg.lora.train_text_encoder:
        targets.update(components.text_encoders)
    lc = cfg.lora
    block_ranks, conv_block_ranks = block_options.rank_tables(cfg, block_options.unet_blocks(components.unet))
    with memory.allocation_errors(cfg, "adding the LoRA layers", memory.LAYERS):
        return inject_lora(targets, lc.targets, rank=lc.rank, alpha=lc.alpha, conv_rank=lc.conv_rank,
                           conv_alpha=lc.conv_alpha, dropout=lc.dropout, dora=lc.dora,
                           dora_axis=export.dora_axis(cfg),
                           rank_dropout=lc.rank_dropout, module_dropout=lc.module_dropout,
                           block_ranks=block_ranks, conv_block_ranks=conv_block_ranks,
                           rank_stabilized=lc.rank_stabilized)


def _caches(cfg, components, output: Path, train_text: bool):
    latent_cache = None
    if cfg.data.cache_latents != "off":
        if cfg.data.crop == "random":
            log.warning("data.cache_latents is ignored with data.crop=random (every step crops differently)")
        else:
            folder = output / "cache" / "latents" if cfg.data.cache_latents == "disk" else None
            latent_cache = LatentCache(folder, f"{vae_identity(components.vae)}|{cfg.data.background}")
    cached = cfg.data.cache_text and not train_text and data_mod.captions_fixed(cfg.data)
    text_cache = TextCache(chunk_count(cfg.data.max_token_length)) if cached else None
    return latent_cache, text_cache


def setup_training(cfg, components, accelerator, items, summary) -> TrainState:
    """Freeze the base, inject LoRA, build optimizer, schedule, caches and the noise generator."""
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.optim.mixed_precision, torch.float32)
    if cfg.optim.fused_backward:  # before anything changes the caller's models
        fused.check_launch(accelerator, deepspeed_run.uses_deepspeed(accelerator))
    _freeze_and_place(components, accelerator, weight_dtype)
    fp8_layers = fp8.apply(cfg, components, weight_dtype, accelerator.device)  # before inject: DoRA reads W
    torch.manual_seed(cfg.optim.seed)  # LoRA init (down) is the same on every process
    network = inject_network(cfg, components)
    if cfg.optim.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
        if cfg.lora.train_text_encoder:
            for encoder in components.text_encoders.values():
                encoder.gradient_checkpointing_enable()
    lr_weights = block_options.lr_weights(cfg, block_options.unet_blocks(components.unet))
    optimizer = make_optimizer(param_groups(network, cfg, lr_weights), cfg, accelerator.device)
    lr_scheduler = make_scheduler(optimizer, cfg)
    engine = None
    if deepspeed_run.uses_deepspeed(accelerator):
        engine, optimizer = deepspeed_run.prepare(accelerator, network, optimizer, cfg)
    else:
        optimizer = accelerator.prepare(optimizer)
    generator = torch.Generator(accelerator.device).manual_seed(cfg.optim.seed + accelerator.process_index)
    output = Path(cfg.output.dir)
    prediction = cfg.model.prediction_type or components.scheduler.config.prediction_type
    # validation and samples read the schedule from components too, so they see the rescaled one
    components.scheduler = loss_options.noise_schedule(cfg, components.scheduler, prediction)
    train_text = cfg.lora.train_text_encoder and any(n.startswith("text_encoder") for n in network.names)
    latent_cache, text_cache = _caches(cfg, components, output, train_text)
    state = TrainState(cfg, components, accelerator, network, optimizer, lr_scheduler, items, summary,
                       generator, output, prediction, train_text, weight_dtype, latent_cache, text_cache)
    state.params = list(network.parameters())
    state.noise = loss_options.forward_process(components.scheduler)
    state.engine, state.fp8_layers = engine, fp8_layers
    if cfg.optim.fused_backward:  # hooks on the optimizer accelerate wraps: its state is what checkpoints hold
        state.fused = fused.FusedSteps(getattr(optimizer, "optimizer", optimizer), cfg.optim.max_grad_norm)
    state.unet = components.unet
    if cfg.optim.compile:  # after inject_lora: the hooks are traced into the graph
        state.unet = compile_unet(components.unet, accelerator.device)
    state.batches_per_epoch = len(data_mod.epoch_batches(items, cfg.data.batch_size, cfg.optim.seed, 0))
    return state


def _latent_stats(state: TrainState, item, box, flip: bool):
    cache = state.latent_cache
    key = cache.key(item.path, item.bucket, flip) if cache is not None else None
    cached = cache.get(key) if cache is not None else None
    if cached is not None:
        return cached
    pixels = data_mod.load_pixels(item, state.cfg.data, box, flip).unsqueeze(0)
    with torch.no_grad():
        mean, std = posterior(state.components.vae, pixels)
    if cache is not None:
        cache.put(key, mean[0], std[0])
        return mean[0].cpu(), std[0].cpu()
    return mean[0], std[0]


def _mask(state: TrainState, item, box, flip: bool, latent_size) -> torch.Tensor | None:
    """The sample's loss mask on the latent grid (computed once per image, crop and flip; masks are small)."""
    key = (item.path, item.bucket, box, flip)
    if key not in state.masks:
        state.masks[key] = masks_mod.load_mask(item, state.cfg.data, box, flip, tuple(latent_size))
    return state.masks[key]


def _batch_mask(state: TrainState, found: list, shape) -> torch.Tensor | None:
    """(B, 1, h, w) masks, white where a sample has none; None when no sample of the batch is masked, so an
    unmasked batch computes exactly the unmasked loss."""
    if all(mask is None for mask in found):
        return None
    white = torch.ones(1, *shape[-2:])
    return torch.stack([white if mask is None else mask for mask in found]).to(state.device)


def prepare_batch(state: TrainState, micro: int) -> tuple[torch.Tensor, list[str], list, torch.Tensor | None]:
    """(latents (B, 4, h, w), captions, size ids, loss mask (B, 1, h, w) or None) of a micro-batch; latents
    sampled from the VAE posterior.

    Size ids are SDXL's micro-conditioning per sample: (original h, w, crop top, left, target h, w).
    """
    epoch, position, indices = state.batch(micro)
    means, stds, captions, size_ids, found = [], [], [], [], []
    for offset, index in enumerate(indices):
        item = state.items[index]
        rng = data_mod.sample_rng(state.cfg.optim.seed, epoch, position * state.cfg.data.batch_size + offset)
        flip = state.cfg.data.flip and rng.random() < 0.5
        box = data_mod.sample_crop(item, state.cfg.data, rng)
        mean, std = _latent_stats(state, item, box, flip)
        means.append(mean)
        stds.append(std)
        if masks_mod.masking(state.cfg.data):
            found.append(_mask(state, item, box, flip, mean.shape[-2:]))
        captions.append(data_mod.caption_for_step(item, state.cfg.data, rng))
        size_ids.append((item.size[1], item.size[0], box[1], box[0], item.bucket[1], item.bucket[0]))
    mean, std = torch.stack(means).to(state.device), torch.stack(stds).to(state.device)
    noise = torch.randn(mean.shape, generator=state.generator, device=state.device)
    return mean + std * noise, captions, size_ids, _batch_mask(state, found, mean.shape)


def _text(state: TrainState, captions: list[str]):
    if state.text_cache is not None:
        return state.text_cache.encode(state.components, captions, state.device)
    with torch.set_grad_enabled(state.train_text):
        chunks = chunk_count(state.cfg.data.max_token_length)
        return encode_text(state.components, captions, state.device, chunks)


def training_step(state: TrainState, micro: int) -> torch.Tensor:
    """Loss of one micro-batch (not yet divided by grad_accum)."""
    cfg, scheduler = state.cfg, state.noise
    latents, captions, size_ids, mask = prepare_batch(state, micro)
    # forward diffusion: x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise (DDPM, Ho et al. 2020 eq. 4)
    noise = sample_noise(latents, state.generator, cfg.optim.noise_offset)
    noise = loss_options.training_noise(cfg, noise, state.generator)
    num = scheduler.config.num_train_timesteps
    timesteps = sample_timesteps(latents.shape[0], num, state.generator, state.device,
                                 *loss_options.timestep_range(cfg, num))
    # input perturbation: the extra noise goes into the input only, the target keeps `noise`
    noisy = scheduler.add_noise(latents, perturb_noise(noise, state.generator, cfg.optim.ip_noise_gamma), timesteps)
    with state.accelerator.autocast():
        hidden, pooled = _text(state, captions)
        extra = unet_kwargs(state.components, pooled, size_ids, state.weight_dtype)
        pred = state.unet(noisy.to(state.weight_dtype), timesteps, hidden.to(state.weight_dtype),
                          **extra).sample
    target = noise_target(scheduler, latents, noise, timesteps, state.prediction_type)
    weights = _prior_weights(state, micro, loss_options.loss_weights(cfg, scheduler, timesteps, state.prediction_type))
    threshold = loss_options.threshold(cfg, scheduler, timesteps)
    if mask is not None:
        return masked_loss(pred, target, mask, weights, cfg.optim.loss_type, threshold)
    return diffusion_loss(pred, target, weights, cfg.optim.loss_type, threshold)


def _prior_weights(state: TrainState, micro: int, weights: torch.Tensor | None) -> torch.Tensor | None:
    """`weights` times optim.prior_loss_weight for the regularization samples of the micro-batch (kohya's
    prior preservation). A batch without reg samples keeps `weights` as is, so runs without reg images do
    exactly the arithmetic they did before."""
    indices = state.batch(micro)[2]
    if not any(state.items[i].is_reg for i in indices):
        return weights
    prior = torch.tensor([state.cfg.optim.prior_loss_weight if state.items[i].is_reg else 1.0 for i in indices],
                         device=state.device)
    return prior if weights is None else weights * prior


def sync_gradients(state: TrainState) -> None:
    """Average LoRA gradients over processes with one all-reduce (no-op for one process)."""
    acc = state.accelerator
    if acc.num_processes == 1:
        return
    params = list(state.network.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    flat = acc.reduce(flat, reduction="mean")
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def optimizer_step(state: TrainState) -> float:
    """One optimizer step over grad_accum micro-batches; returns the mean loss (over processes)."""
    if state.fused is not None:
        return _fused_step(state)
    cfg, acc = state.cfg, state.accelerator
    accum, total = cfg.optim.grad_accum, torch.zeros((), device=state.device)
    for k in range(accum):
        micro = (state.step * accum + k) * acc.num_processes + acc.process_index
        loss = training_step(state, micro)
        _backward(state, loss, last=k == accum - 1)
        total += loss.detach() / accum
    if state.engine is None:
        sync_gradients(state)
    mean_loss = float(acc.reduce(total, reduction="mean")) if acc.num_processes > 1 else float(total)
    _check_finite(state, mean_loss)
    if state.engine is not None:
        state.engine.step()  # DeepSpeed's accumulation boundary: reduce, clip, AdamW, zero the gradients
        state.lr_scheduler.step()
    else:
        _apply_update(state)
    state.step += 1
    return mean_loss


def _check_finite(state: TrainState, mean_loss: float) -> None:
    if not torch.isfinite(torch.tensor(mean_loss)):
        state.optimizer.zero_grad(set_to_none=True)
        raise TrainingError(f"loss became {mean_loss} at step {state.step + 1}; training stopped and nothing "
                            "from this step was saved. Lower optim.lr, or use bf16 instead of fp16")


def _fused_step(state: TrainState) -> float:
    """optim.fused_backward (one process, grad_accum 1): the loss is checked first, then backward runs the
    hooks that update each LoRA tensor (sdlora.train.fused); the schedule steps after all of them."""
    loss = training_step(state, state.step)
    mean_loss = float(loss.detach())
    _check_finite(state, mean_loss)
    state.accelerator.backward(loss)
    state.lr_scheduler.step()
    state.step += 1
    return mean_loss


def _backward(state: TrainState, loss: torch.Tensor, last: bool) -> None:
    """Gradients of one micro-batch's loss. DeepSpeed divides by its gradient_accumulation_steps itself and
    counts micro-steps in `engine.step()`, which updates only at the boundary (called by the caller for the
    last micro-batch, after the loss was checked)."""
    if state.engine is None:
        state.accelerator.backward(loss / state.cfg.optim.grad_accum)
        return
    state.engine.backward(loss)
    if not last:
        state.engine.step()


_PLAIN = {"NO", "MULTI_CPU", "MULTI_GPU", "MULTI_NPU", "MULTI_XPU", "MULTI_MLU", "MULTI_MUSA", "MULTI_HPU"}


def _apply_update(state: TrainState) -> None:
    """Clip, AdamW step, schedule step, zero the gradients.

    Where accelerate's wrappers would only add per-step lookups (package checks, signature inspection:
    about as long as the fused AdamW kernel itself on small models), they are bypassed: the LoRA is never
    wrapped (no DDP/FSDP, no DTensor gradients), so `accelerator.clip_grad_norm_` is `unscale_gradients`
    + torch's `clip_grad_norm_`, and without a GradScaler `AcceleratedOptimizer.step` is the torch step.
    Other setups (XLA, fp16 loss scaling) go through accelerate; DeepSpeed's engine updates in `optimizer_step`."""
    cfg, acc = state.cfg, state.accelerator
    plain = acc.distributed_type.name in _PLAIN
    if cfg.optim.max_grad_norm > 0:
        if plain:
            acc.unscale_gradients()
            torch.nn.utils.clip_grad_norm_(state.params, cfg.optim.max_grad_norm)
        else:
            acc.clip_grad_norm_(state.params, cfg.optim.max_grad_norm)
    direct = plain and getattr(acc, "scaler", None) is None
    optimizer = state.optimizer.optimizer if direct else state.optimizer
    optimizer.step()
    state.lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def precompute_latents(state: TrainState, stages=None) -> None:
    """Fill the latent cache for every image this run can draw (both flips when flipping).

    `stages` (a `sdlora.train.monitor.Stages`) reports i/N and stops between images on cancel."""
    if state.latent_cache is None:
        return
    flips = (False, True) if state.cfg.data.flip else (False,)
    if stages is not None:
        stages.start("caching latents", len(state.items))
    for done, item in enumerate(state.items, 1):
        for flip in flips:
            _latent_stats(state, item, data_mod.sample_crop(item, state.cfg.data, None), flip)
        if stages is not None:
            stages.advance(done)


def now() -> float:
    return time.perf_counter()
