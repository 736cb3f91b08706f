"""Training entry point: `train(cfg, components=None, *, on_step=None, cancel=None, resume=False)`.

Modules: data (scan, buckets, order), images (safe decoding), captions, conditioning (text/VAE + caches),
loss (pure math), optim, loop (setup + step), checkpoint (resume), export (metadata + files),
result (TrainResult, TrainRun), session (one run: setup, resume, loop, export),
progress (StepInfo, loss CSV/plot), samples (preview grids).

>>> from sdlora.config import load_config
>>> from sdlora.train import train
>>> cfg = load_config("quick", ["data.path=sample_data"])  # doctest: +SKIP
>>> result = train(cfg, on_step=lambda info: print(info.step, info.loss))   # doctest: +SKIP
>>> result.files                                                             # doctest: +SKIP
[PosixPath('output/lora.safetensors')]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sdlora.errors import ConfigError
from sdlora.models import load_components
from sdlora.train.progress import StepInfo
from sdlora.train.result import TrainResult

log = logging.getLogger(__name__)

__all__ = ["StepInfo", "TrainResult", "train"]


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def make_accelerator(cfg):
    """An Accelerator for this run. In a single process, a previous run's precision setting is reset
    (accelerate keeps it in a process-wide singleton; the web UI trains several times per process)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from sdlora.train import tracking

    kwargs = tracking.accelerator_kwargs(cfg)  # output.log_with
    try:
        return Accelerator(mixed_precision=cfg.optim.mixed_precision, **kwargs)
    except ValueError as err:
        if "already been initialized" in str(err) and PartialState().num_processes == 1:
            AcceleratorState._reset_state()
            return Accelerator(mixed_precision=cfg.optim.mixed_precision, **kwargs)
        raise ConfigError(f"optim.mixed_precision={cfg.optim.mixed_precision}: {err}") from err


def _load_base(cfg):
    return load_components(cfg.model.base, family=cfg.model.family, allow_pickle=cfg.model.allow_pickle)


def train(cfg, components=None, *, on_step: Callable[[StepInfo], None] | None = None,
          cancel: threading.Event | Callable[[], bool] | None = None, resume: bool | str | Path = False
          ) -> TrainResult:
    """Train a LoRA as `cfg` says and export it.

    Args:
        cfg: a `sdlora.config.TrainConfig` (see `load_config`).
        components: a `sdlora.models.Components`; loaded from `cfg.model.base` when None.
        on_step: called after every optimizer step with a `StepInfo` (main process only).
        cancel: a threading.Event or a callable; checked before every step. When set, the run saves a
            checkpoint and returns with `cancelled=True` (resume it later with `resume=True`).
        resume: True = continue from the newest checkpoint in `cfg.output.dir`; or a checkpoint folder.

    Returns:
        TrainResult with the exported files, history and data set summary.

    Raises:
        DatasetError, ConfigError: bad data or settings (before any training).
        TrainingError: a non-finite loss (the last good checkpoint is kept) or a bad checkpoint.
    """
    # both import torch; `from sdlora.train import StepInfo, TrainResult` (the web UI, the CLI parser) needs none
    from sdlora.train import ema, loss_options, optimizers, tracking
    from sdlora.train.checkpoint import prepare_output
    from sdlora.train.data import scan_dataset
    from sdlora.train.samples import check_sample_prompts
    from sdlora.train.session import run_training

    optimizers.check(cfg)  # a missing package or a bad optimizer_args fails before the data and model load
    check_sample_prompts(cfg.output.sample_prompts)  # so does a bad --w/--s/... in a sample prompt
    tracking.resolve(cfg)  # and a tracker whose package is missing
    loss_options.check(cfg)
    ema.check(cfg)
    items, summary = scan_dataset(cfg.data)
    for line in summary.lines():
        log.info("%s", line)
    accelerator = make_accelerator(cfg)
    # before the model loads (minutes for a big base): a wrong output folder fails at once
    prepare_output(Path(cfg.output.dir), clean=accelerator.is_main_process)
    components = components if components is not None else _load_base(cfg)
    tracking.start(accelerator, cfg)
    try:
        return run_training(cfg, components, accelerator, items, summary,
                            on_step=tracking.wrap(on_step, accelerator), should_stop=lambda: _cancelled(cancel),
                            resume=resume, started=time.time())
    finally:
        tracking.end(accelerator)
