"""Training under DeepSpeed (accelerate's DeepSpeed plugin, ZeRO stages 0-2). Depends on torch.

`accelerate launch --use_deepspeed ...` (or an accelerate config with a DeepSpeed section) makes the
Accelerator's distributed type DEEPSPEED. sdlora then hands DeepSpeed the LoraNetwork (the only trained
module) and its AdamW: `deepspeed.initialize` wraps them in an engine that averages the LoRA gradients
over processes, clips them, and, with ZeRO 1 or 2, splits the optimizer state (and gradients) between
processes. The base model is never wrapped: the LoRA runs inside the frozen UNet's forward through hooks.

What sdlora sets, and what it refuses (before any training):
- `train_micro_batch_size_per_gpu`, `gradient_accumulation_steps` and `gradient_clipping` come from
  `data.batch_size`, `optim.grad_accum` and `optim.max_grad_norm` ("auto" or absent in the DeepSpeed
  config); a DeepSpeed value that disagrees is an error naming both, so that no run trains with settings
  its config file does not show.
- ZeRO stage 3 is refused: it splits the parameters themselves and gathers them in the wrapped module's
  forward, and sdlora's LoRA layers are called from the base model's forward, never through the engine.
- An `optimizer` or `scheduler` section is refused: sdlora builds AdamW and its schedule from `optim.*`.
- A DeepSpeed world whose size differs from accelerate's process count is refused (accelerate 1.x runs
  DeepSpeed on CPUs as one process per launch even when torch.distributed has several: each process
  would train the same batches and write the same files).

Mixed precision: DeepSpeed keeps the LoRA module in the run's precision (bf16/fp16) and the float32
master weights in its optimizer; exports are written from the float32 master weights (`full_precision`).

Checkpoints: the engine's own `save_checkpoint` writes each process's part of the optimizer state into the
checkpoint folder (`deepspeed/`), and `load_checkpoint` reads it back, so `--resume` continues exactly
with the same number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sdlora.errors import ConfigError, TrainingError

CHECKPOINT_FOLDER = "deepspeed"  # inside a sdlora checkpoint folder
_TAG = "state"


def uses_deepspeed(accelerator) -> bool:
    return accelerator.distributed_type.name == "DEEPSPEED"


def fill_config(ds_config: dict, cfg) -> None:
    """Check `ds_config` (DeepSpeed's config dict, edited in place) against sdlora's settings and fill
    its "auto" entries from them. Raises ConfigError for what cannot work."""
    stage = ds_config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(f"DeepSpeed zero_optimization.stage={stage}: sdlora supports ZeRO stages 0, 1 and 2. "
                          "Stage 3 splits parameters and gathers them in the wrapped model's forward, but the "
                          "LoRA layers run inside the base model's forward; use --zero_stage 2")
    for section in ("optimizer", "scheduler"):
        if section in ds_config:
            raise ConfigError(f"DeepSpeed config has a '{section}' section: remove it; sdlora builds AdamW and "
                              "its learning-rate schedule from optim.* (lr, scheduler, warmup_steps, ...)")
    _fill(ds_config, "train_micro_batch_size_per_gpu", cfg.data.batch_size, "data.batch_size")
    _fill(ds_config, "gradient_accumulation_steps", cfg.optim.grad_accum, "optim.grad_accum")
    _fill(ds_config, "gradient_clipping", float(cfg.optim.max_grad_norm), "optim.max_grad_norm")
    ds_config.pop("train_batch_size", None)  # DeepSpeed derives it: micro batch x accumulation x processes


def _fill(ds_config: dict, key: str, value, setting: str) -> None:
    current = ds_config.get(key, "auto")
    if current == "auto":
        ds_config[key] = value
    elif float(current) != float(value):
        raise ConfigError(f"DeepSpeed config has {key}={current} but {setting}={value}: make them equal, or set "
                          f"{key} to \"auto\" in the DeepSpeed config (sdlora then fills it from {setting})")


def check_world(accelerator) -> None:
    """Refuse a DeepSpeed run whose processes accelerate does not count (see the module docstring)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world != accelerator.num_processes:
            raise ConfigError(
                f"DeepSpeed started {world} processes but accelerate counts {accelerator.num_processes} "
                f"(device {accelerator.device}): accelerate runs DeepSpeed on CPUs as one process per launch, "
                "so each would train the same batches. On CPUs, launch without DeepSpeed: "
                "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N -m sdlora train ...")


def check_optimizer(cfg) -> None:
    """Refuse optimizers other than AdamW: ZeRO keeps its own float32 copies of the weights, which the other
    optimizers (and schedule-free's weight switching) are not tested with."""
    if cfg.optim.optimizer != "adamw":
        raise ConfigError(f"optim.optimizer={cfg.optim.optimizer} under DeepSpeed: sdlora runs DeepSpeed with AdamW "
                          "only; use optim.optimizer=adamw or launch without DeepSpeed")


def prepare(accelerator, network, optimizer, cfg):
    """(engine, wrapped optimizer): DeepSpeed's engine over the LoRA network and its optimizer."""
    check_optimizer(cfg)
    fill_config(accelerator.state.deepspeed_plugin.deepspeed_config, cfg)
    check_world(accelerator)
    _, wrapped = accelerator.prepare(network, optimizer)
    return accelerator.deepspeed_engine_wrapped.engine, wrapped


def save(engine, folder: Path) -> None:
    """Every process writes its part of the engine's state (LoRA and optimizer) into `folder`."""
    engine.save_checkpoint(str(folder / CHECKPOINT_FOLDER), tag=_TAG)


def load(engine, folder: Path) -> None:
    """Restore the engine's state (LoRA, fp32 master weights, optimizer) saved by `save`."""
    path = folder / CHECKPOINT_FOLDER
    if not path.is_dir():
        raise TrainingError(f"--resume: {folder} was written without DeepSpeed (no {CHECKPOINT_FOLDER}/ folder); "
                            "resume it without DeepSpeed, or start a new run")
    loaded, _ = engine.load_checkpoint(str(path), tag=_TAG, load_optimizer_states=True,
                                       load_lr_scheduler_states=False)
    if loaded is None:
        raise TrainingError(f"--resume: DeepSpeed could not read {path} (was it written with the same number "
                            "of processes and ZeRO stage?)")


@contextmanager
def full_precision(engine, network) -> Iterator[None]:
    """Within the block, `network` holds DeepSpeed's float32 master weights instead of its bf16/fp16
    working copy (nothing changes without an engine or in a float32 run). Every process must enter it:
    assembling a weight that ZeRO split between processes is a collective operation."""
    if engine is None:
        yield
        return
    from deepspeed.utils import safe_get_full_fp32_param

    swapped = []
    for param in network.parameters():
        full = safe_get_full_fp32_param(param)
        if full is not None and full.dtype != param.dtype:
            swapped.append((param, param.data))
            param.data = full.to(param.device)
    try:
        yield
    finally:
        for param, data in swapped:
            param.data = data
