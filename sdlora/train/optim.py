"""Optimizer and learning-rate schedule. Depends on torch (optional optimizers: see `sdlora.train.optimizers`).

Schedules (`optim.scheduler`) take kohya's / diffusers' names: constant, constant_with_warmup (the same
here: `optim.warmup_steps` applies to every schedule), cosine, linear, cosine_with_restarts
(`optim.lr_cycles` hard restarts) and polynomial (`optim.lr_power`).
"""

from __future__ import annotations

import logging
import math

import torch

from sdlora.arch.blocks import block_of
from sdlora.errors import ConfigError
from sdlora.train import optimizers

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "constant_with_warmup", "cosine", "linear", "cosine_with_restarts", "polynomial")


def param_groups(network, cfg, lr_weights: dict[str, float] | None = None) -> list[dict]:
    """UNet and text-encoder LoRA parameters as separate groups with their own learning rates; with LoRA+
    (`optim.loraplus_ratio`, Hayou et al. 2024, https://arxiv.org/abs/2402.12354) the up matrices of each
    part form a group of their own at lr x ratio. `lr_weights` ({UNet block: factor}, sdlora.train.
    block_options) puts each weighted block in a group of its own at the UNet lr x factor, named
    ``unet.<block>``. The UNet's base group stays first (the lr that is logged)."""
    o, ratio = cfg.optim, cfg.optim.loraplus_ratio
    lrs = {"unet": o.unet_lr or o.lr, "text_encoder": o.text_encoder_lr or o.lr}
    groups: dict[str, dict] = {}
    for name in network.names:
        part = "unet" if name.startswith("unet.") else "text_encoder"
        block, weight = _block_weight(name, part, lr_weights)
        for param_name, param in network.layer(name).named_parameters():
            plus = bool(ratio) and param_name.startswith("up.")
            key = (f"{part}_up" if plus else part) + (f".{block}" if block else "")
            lr = lrs[part] * (ratio if plus else 1) * weight
            groups.setdefault(key, {"params": [], "lr": lr, "name": key})["params"].append(param)
    order = {"unet": 0, "unet_up": 1, "text_encoder": 2, "text_encoder_up": 3}
    return [groups[k] for k in sorted(groups, key=lambda k: (order[k.split(".")[0]], "." in k))]


def _block_weight(name: str, part: str, lr_weights: dict[str, float] | None) -> tuple[str | None, float]:
    if part != "unet" or not lr_weights:
        return None, 1.0
    block = block_of(name)
    return (block, lr_weights[block]) if block in lr_weights else (None, 1.0)


def make_optimizer(groups: list[dict], cfg, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `optim.optimizer` names (see `sdlora.train.optimizers.REGISTRY`)."""
    return optimizers.build(groups, cfg, device)


def _restarts(progress: float, cycles: int, power: float) -> float:
    return 0.0 if progress >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))


# schedule -> factor at `progress` (0 at the end of warmup, 1 at the last step), cycles, power
_DECAYS = {
    "constant": lambda progress, cycles, power: 1.0,
    "constant_with_warmup": lambda progress, cycles, power: 1.0,
    "cosine": lambda progress, cycles, power: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "linear": lambda progress, cycles, power: max(0.0, 1.0 - progress),
    "cosine_with_restarts": _restarts,
    "polynomial": lambda progress, cycles, power: max(0.0, 1.0 - progress) ** power,
}


def lr_factor(step: int, total: int, warmup: int, kind: str, cycles: int = 1, power: float = 1.0) -> float:
    """Multiplier of the base learning rate at `step` (0-based): linear warmup, then constant, cosine
    (half period down to 0), linear decay to 0, cosine with `cycles` hard restarts, or polynomial decay
    (1 - progress) ** power to 0, as diffusers' `get_scheduler` defines them (its polynomial ends at 1e-7
    instead of 0; the difference is below any lr that still trains)."""
    if kind not in _DECAYS:
        raise ConfigError(f"optim.scheduler: unknown schedule {kind!r} (one of {', '.join(SCHEDULES)})")
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return _DECAYS[kind](progress, cycles, power)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    o = cfg.optim
    if optimizers.is_schedule_free(cfg):  # the warmup runs inside the optimizer; the lr stays as set
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    total, warmup, kind, cycles, power = o.steps, o.warmup_steps, o.scheduler, o.lr_cycles, o.lr_power
    return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                             lambda step: lr_factor(step, total, warmup, kind, cycles, power))
