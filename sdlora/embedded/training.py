"""Tensor helpers shared by the embedded model's pretraining phases (pretrain.py and widen.py).

Depends on numpy and torch only.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def cosine_lr(step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 5%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """The same random `size` x `size` window of every image in the batch."""
    top, left = (int(v) for v in torch.randint(0, x.shape[-1] - size + 1, (2,), generator=gen))
    return x[..., top : top + size, left : left + size]
