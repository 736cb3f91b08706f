"""Experiment tracking through accelerate's trackers: `output.log_with` = auto | tensorboard | wandb | none.

`auto` (the default) is TensorBoard when the tensorboard package is installed (`pip install
"sdlora[tensorboard]"`), else nothing. What is logged, once per optimizer step from the main process:
`loss` and `lr` (the first parameter group's, as loss.csv has it), `val_loss` at the steps that measure it
(output.validate_every), and the sample grid (`samples`) at the
steps that render one; the resolved config goes in as hyperparameters. Runs are written under
`<output.dir>/logs/<output.name>/` (TensorBoard: `tensorboard --logdir <output.dir>/logs`); a resumed run
appends to the same folder, continuing the step numbers. W&B reads its key from `WANDB_API_KEY` or
`wandb login`; the project is `output.name`.

The tracker hooks onto the `on_step` callback (`wrap`), so the training loop itself knows nothing of it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdlora.errors import ConfigError

# tracker -> (module to look for, sdlora extra)
_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def _installed(tracker: str) -> bool:
    return importlib.util.find_spec(_PACKAGES[tracker][0]) is not None


def resolve(cfg) -> str | None:
    """The tracker this run logs to (None: none). Raises ConfigError when the one asked for is missing."""
    name = cfg.output.log_with
    if name == "none":
        return None
    if name == "auto":
        return "tensorboard" if _installed("tensorboard") else None
    if name not in _PACKAGES:
        raise ConfigError(f"output.log_with: {name!r} is not one of auto, tensorboard, wandb, none")
    if not _installed(name):
        module, extra = _PACKAGES[name]
        raise ConfigError(f"output.log_with={name} needs the {module} package: pip install \"sdlora[{extra}]\" "
                          "(or set output.log_with=none)")
    return name


def logs_dir(cfg) -> Path:
    return Path(cfg.output.dir) / "logs"


def accelerator_kwargs(cfg) -> dict[str, Any]:
    """Keyword arguments for `Accelerator(...)`: the tracker and where it writes."""
    tracker = resolve(cfg)
    if tracker is None:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {"log_with": tracker, "project_config": ProjectConfiguration(project_dir=cfg.output.dir,
                                                                        logging_dir=str(logs_dir(cfg)))}


def _hyperparameters(cfg) -> dict[str, Any]:
    """The config as flat `section.key` -> bool/int/float/str (what TensorBoard's hparams accept)."""
    from sdlora.settings.config import config_to_dict

    flat = {}
    for section, values in config_to_dict(cfg).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def start(accelerator, cfg) -> None:
    if accelerator.log_with:
        accelerator.init_trackers(cfg.output.name, config=_hyperparameters(cfg))


def end(accelerator) -> None:
    if accelerator.trackers:
        accelerator.end_training()


def wrap(on_step: Callable | None, accelerator) -> Callable | None:
    """`on_step` that also logs each step's loss, lr and sample grid to the trackers."""
    if not accelerator.log_with:
        return on_step

    def logged(info) -> None:
        values = {"loss": info.loss, "lr": info.lr}
        if info.val_loss is not None:
            values["val_loss"] = info.val_loss
        accelerator.log(values, step=info.step)
        if info.samples:
            _log_grid(accelerator, info.samples[0], info.step)
        if on_step is not None:
            on_step(info)

    return logged


def _log_grid(accelerator, path: str, step: int) -> None:
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        grid = image.convert("RGB")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": np.asarray(grid)[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": [grid]}, step=step)
