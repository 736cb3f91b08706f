"""Optimizer and learning-rate schedule. Depends on torch (bitsandbytes optional, CUDA only)."""

from __future__ import annotations

import logging
import math

import torch

from sdlora.errors import ConfigError

log = logging.getLogger(__name__)


def param_groups(network, cfg) -> list[dict]:
    """UNet and text-encoder LoRA parameters as separate groups with their own learning rates."""
    unet, text = [], []
    for name in network.names:
        params = list(network.layer(name).parameters())
        (unet if name.startswith("unet.") else text).extend(params)
    groups = [{"params": unet, "lr": cfg.optim.unet_lr or cfg.optim.lr, "name": "unet"}]
    if text:
        groups.append({"params": text, "lr": cfg.optim.text_encoder_lr or cfg.optim.lr, "name": "text_encoder"})
    return [g for g in groups if g["params"]]


def make_optimizer(groups: list[dict], cfg, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW when asked for and CUDA has it."""
    kwargs = {"weight_decay": cfg.optim.weight_decay, "betas": (0.9, 0.999), "eps": 1e-8}
    if cfg.optim.optimizer == "adamw8bit":
        if device.type != "cuda":
            raise ConfigError("optim.optimizer: adamw8bit needs a CUDA GPU; use adamw on this machine")
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ConfigError("optim.optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes); "
                              "or use adamw") from err
        return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, fused=_can_fuse(groups, device) or None, **kwargs)


def _can_fuse(groups: list[dict], device: torch.device) -> bool:
    """Whether torch's fused AdamW kernel applies: one kernel over all LoRA tensors instead of about ten
    small ops per tensor (the same update, https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html).
    LoRA parameters are always floating point; the kernel exists for CPU and CUDA."""
    params = [p for group in groups for p in group["params"]]
    return device.type in ("cpu", "cuda") and all(p.is_floating_point() and p.device.type == device.type
                                                  for p in params)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the base learning rate at `step` (0-based): linear warmup, then constant, cosine
    (half period down to 0) or linear decay to 0, as diffusers' `get_scheduler` defines them."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    raise ConfigError(f"optim.scheduler: unknown schedule {kind!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    total, warmup, kind = cfg.optim.steps, cfg.optim.warmup_steps, cfg.optim.scheduler
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, kind))
