"""EMA of the LoRA weights (`optim.ema_decay`, updated every `optim.ema_every` steps). Depends on torch.

The average is exported *beside* the LoRA, as `<name>-ema.safetensors` (and `<name>-stepN-ema...` with each
step export); the main file stays the trained weights, so a run with EMA still produces what a run without
it does. Each update is shadow = d * shadow + (1 - d) * weight with d = min(ema_decay, (1 + n) / (10 + n))
after n updates: the usual warm-up (as diffusers' EMAModel), so that the first steps, where the LoRA up
matrices are still near their zero init, do not dominate a long average.

Checkpoints hold the average and its update count (`ema.safetensors`), so `--resume` continues it exactly.
Refused with adamw_schedulefree (whose exported weights already are an average) and under DeepSpeed (its
working copy is bf16/fp16; the float32 masters live in its optimizer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sdlora.errors import ConfigError, TrainingError

FILE = "ema.safetensors"  # inside a checkpoint folder
_COUNT = "ema.updates"


class LoraEma:
    """The running average of a LoraNetwork's parameters (float32, on their device)."""

    def __init__(self, network, decay: float, every: int):
        self.network, self.decay, self.every = network, decay, every
        self.shadow = {name: p.detach().float().clone() for name, p in network.named_parameters()}
        self.updates = 0

    def decay_now(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in when `step` (1-based, after the optimizer step) is an update step."""
        if step % self.every:
            return
        d = self.decay_now()
        for name, p in self.network.named_parameters():
            self.shadow[name].mul_(d).add_(p.detach().float(), alpha=1.0 - d)
        self.updates += 1

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside: the network holds the average; afterwards its own weights, bit for bit."""
        params = dict(self.network.named_parameters())
        saved = {name: p.detach().clone() for name, p in params.items()}
        try:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self.shadow[name])
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.shadow.items()}
        tensors[_COUNT] = torch.tensor([self.updates], dtype=torch.int64)
        return tensors

    def load_state_dict(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        if set(tensors) != set(self.shadow) | {_COUNT}:
            raise TrainingError(f"{where}: its EMA does not match this run's LoRA; check lora.* settings")
        for name, t in self.shadow.items():
            t.copy_(tensors[name])
        self.updates = int(tensors[_COUNT].item())


def check(cfg) -> None:
    o = cfg.optim
    if not 0.0 <= o.ema_decay < 1.0:
        raise ConfigError(f"optim.ema_decay: must be in [0, 1) (0 = off; 0.999 is common), got {o.ema_decay}")
    if o.ema_every < 1:
        raise ConfigError(f"optim.ema_every: must be >= 1, got {o.ema_every}")
    if o.ema_decay and o.optimizer == "adamw_schedulefree":
        raise ConfigError("optim.ema_decay: adamw_schedulefree already exports an average of the weights; set "
                          "optim.ema_decay=0 or use another optimizer")


def attach(state) -> None:
    """Give the training state its EMA (`state.ema`; None when off)."""
    o = state.cfg.optim
    if o.ema_decay and state.engine is not None:
        raise ConfigError("optim.ema_decay under DeepSpeed: not supported (its working weights are bf16/fp16); "
                          "launch without DeepSpeed or set optim.ema_decay=0")
    state.ema = LoraEma(state.network, o.ema_decay, o.ema_every) if o.ema_decay else None


def update(state) -> None:
    if state.ema is not None:
        state.ema.update(state.step)


def save(state, folder: Path) -> None:
    """Write the EMA into a checkpoint folder (main process)."""
    if state.ema is not None:
        from safetensors.torch import save_file

        save_file(state.ema.state_dict(), str(folder / FILE))


def load(state, folder: Path) -> None:
    """Restore the EMA from a checkpoint folder; a checkpoint without one starts the average afresh there."""
    if state.ema is None or not (folder / FILE).is_file():
        return
    from safetensors.torch import load_file

    state.ema.load_state_dict(load_file(str(folder / FILE)), folder / FILE)


def export(state, metadata: dict[str, str], stem: str | None, export_lora) -> list[Path]:
    """Export the average beside the LoRA as `<stem>-ema` with `export_lora` (sdlora.train.export's, passed in:
    export imports checkpoint, which imports this module); main process; [] when EMA is off."""
    if state.ema is None:
        return []
    meta = {**metadata, "sdlora_ema": f"decay={state.ema.decay} every={state.ema.every} "
                                      f"updates={state.ema.updates}"}
    with state.ema.swapped():
        return export_lora(state.network, meta, state.cfg, stem=f"{stem or state.cfg.output.name}-ema",
                           family=state.components.family)
