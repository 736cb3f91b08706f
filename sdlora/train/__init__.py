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

from sdlora.base.load import load_components
from sdlora.errors import ConfigError
from sdlora.train.progress import StageCancelled, StageInfo, Stages, StepInfo
from sdlora.train.result import TrainResult

log = logging.getLogger(__name__)
LOAD_POLL_S = 0.2  # how often a base load in progress reports and checks for cancel

__all__ = ["StageInfo", "StepInfo", "TrainResult", "train"]


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


def _load_base(cfg, stages: Stages):
    """Load the base in a helper thread while this one reports the elapsed time and watches for cancel.

    diffusers loads every component in one call that cannot be interrupted (an SDXL base: a minute on a
    slow disk); waiting here instead lets Cancel and Ctrl-C return within LOAD_POLL_S. A cancelled load's
    thread finishes in the background and its result is dropped (a daemon thread: it never holds the
    process open)."""
    stages.start("loading the base")
    box: dict = {}

    def work():
        try:
            box["components"] = load_components(cfg.model.base, family=cfg.model.family,
                                                allow_pickle=cfg.model.allow_pickle)
        except BaseException as err:  # noqa: BLE001 - re-raised as it is in the caller's thread
            box["error"] = err

    thread = threading.Thread(target=work, name="sdlora-load-base", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(LOAD_POLL_S)
        stages.advance(0)  # the elapsed time goes on showing; raises StageCancelled on cancel
    if "error" in box:
        raise box["error"]
    return box["components"]


def resolve_base_settings(cfg, components=None):
    """`cfg` with the base-dependent defaults filled in (data.resolution, buckets) and notes about them.

    The base's native size comes from `components` when given, else from the base's config files (no
    weights are read, so `--dry-run` can show it); None only for a hub id, which must load first.

    Returns:
        (resolved TrainConfig, notes for the summary, native size or None).
    """
    from sdlora.base.native import native_resolution, native_resolution_of
    from sdlora.config import resolve_for_base

    if components is not None:
        native = native_resolution_of(components)
    else:
        native = native_resolution(cfg.model.base, cfg.model.family)
    resolved, notes = resolve_for_base(cfg, native)
    return resolved, notes, native


def _cancelled_result(cfg, stages: Stages, summary, notes: list[str]) -> TrainResult:
    """A run cancelled before its first step: nothing new was saved; name the newest checkpoint kept."""
    from sdlora.train.checkpoint import list_checkpoints

    kept = list_checkpoints(Path(cfg.output.dir))
    step = int(kept[-1].name.rpartition("-")[2]) if kept else 0
    return TrainResult(files=[], steps=step, loss=None, history=[], summary=summary, cancelled=True,
                       checkpoint=kept[-1] if kept else None, notes=notes, stages=list(stages.reached), config=cfg)


def train(cfg, components=None, *, on_step: Callable[[StepInfo], None] | None = None,
          on_stage: Callable[[StageInfo], None] | None = None,
          cancel: threading.Event | Callable[[], bool] | None = None, resume: bool | str | Path = False
          ) -> TrainResult:
    """Train a LoRA as `cfg` says and export it.

    Args:
        cfg: a `sdlora.config.TrainConfig` (see `load_config`); unset sizes are taken from the base.
        components: a `sdlora.base.load.Components`; loaded from `cfg.model.base` when None.
        on_step: called after every optimizer step with a `StepInfo` (main process only).
        on_stage: called in every other stage (loading the base, scanning images, caching latents i/N,
            caching text i/N, compiling, sampling, saving) with a `StageInfo` (counts, elapsed, ETA).
        cancel: a threading.Event or a callable; checked before every step and between the items of every
            stage before the steps. When set, the run saves a checkpoint (or keeps the newest one when it
            stopped before the first step) and returns with `cancelled=True` (resume with `resume=True`).
        resume: True = continue from the newest checkpoint in `cfg.output.dir`; or a checkpoint folder.

    Returns:
        TrainResult with the exported files, history, data set summary and notes on the settings.

    Raises:
        DatasetError, ConfigError: bad data or settings (before any training).
        TrainingError: a non-finite loss (the last good checkpoint is kept) or a bad checkpoint.
    """
    # both import torch; `from sdlora.train import StepInfo, TrainResult` (the web UI, the CLI parser) needs none
    from sdlora.threads import apply_threads
    from sdlora.train import runs
    from sdlora.train.checkpoint import prepare_output

    _check_settings(cfg)  # before the data and the model load
    stages = Stages(on_stage, lambda: _cancelled(cancel))
    apply_threads(cfg.optim.threads)
    resolved, notes, native = resolve_base_settings(cfg, components)
    if native is None and components is None:  # a hub id: its size is known once it is loaded
        try:
            components = _load_base(cfg, stages)
        except StageCancelled:
            return _cancelled_result(resolved, stages, None, notes)
        resolved, notes, _ = resolve_base_settings(cfg, components)
    cfg = resolved
    prepare_output(Path(cfg.output.dir), clean=False)  # a folder that cannot be written fails before anything
    runs.start_run(cfg)  # run.yaml + run.json: the run can be listed, and resumed, whatever happens next
    try:
        result = _train(cfg, components, stages, notes, on_step, resume)
    except StageCancelled as err:
        log.info("cancelled during %s", stages.reached[-1] if stages.reached else "setup")
        result = _cancelled_result(cfg, stages, getattr(err, "summary", None), notes)
    except BaseException as err:  # also KeyboardInterrupt (second Ctrl-C): the status says it did not finish
        runs.write_status(Path(cfg.output.dir), runs.FAILED, error=f"{type(err).__name__}: {err}")
        raise
    runs.write_status(Path(cfg.output.dir), runs.CANCELLED if result.cancelled else runs.DONE, steps=result.steps)
    return result


def _check_settings(cfg) -> None:
    """What can fail without data or a model fails first: a missing optimizer package, bad optimizer_args,
    a bad --w/--s/... in a sample prompt, a tracker whose package is missing, loss and EMA options."""
    from sdlora.train import ema, fp8, fused, loss_options, optimizers, tracking
    from sdlora.train.samples import check_sample_prompts

    optimizers.check(cfg)
    check_sample_prompts(cfg.output.sample_prompts)
    tracking.resolve(cfg)
    loss_options.check(cfg)
    ema.check(cfg)
    fused.check(cfg)
    fp8.check(cfg)


def _train(cfg, components, stages: Stages, notes: list[str], on_step, resume) -> TrainResult:
    from sdlora.train import tracking
    from sdlora.train.checkpoint import prepare_output
    from sdlora.train.data import scan_dataset
    from sdlora.train.session import run_training

    summary = None
    try:
        for note in notes:
            (log.warning if note.startswith("warning") else log.info)("%s", note)
        stages.start("scanning images")
        items, summary = scan_dataset(cfg.data, on_progress=lambda p: stages.advance(p.done, p.total),
                                      seed=cfg.optim.seed, base=str(cfg.model.base))
        for line in summary.lines():
            log.info("%s", line)
        accelerator = make_accelerator(cfg)
        # before the model loads (minutes for a big base): a wrong output folder fails at once
        prepare_output(Path(cfg.output.dir), clean=accelerator.is_main_process)
        components = components if components is not None else _load_base(cfg, stages)
        tracking.start(accelerator, cfg)
        try:
            result = run_training(cfg, components, accelerator, items, summary,
                                  on_step=tracking.wrap(on_step, accelerator), should_stop=stages.should_stop,
                                  resume=resume, started=time.time(), stages=stages)
        finally:
            tracking.end(accelerator)
    except StageCancelled as err:
        err.summary = summary  # the scan's summary, when it got that far
        raise
    result.notes, result.stages, result.config = notes, list(stages.reached), cfg
    return result
