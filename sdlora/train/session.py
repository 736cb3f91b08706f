"""One training run, from the settings to the exported LoRA: `train(cfg, ...)`, the entry that the CLI, the web
UI and the Python API call (re-exported by `sdlora.train`).

`train` checks what needs no data, fills in the base's sizes, keeps the run's status file (run.json) and turns
a cancel into a result; `_run` scans the data, loads the base, sets the network up and resumes; `_fit` caches,
loops (`_step_loop`: a step, the logs, checkpoints, samples, cancel) and exports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sdlora
from sdlora.base.load import load_components
from sdlora.errors import ConfigError, TrainingError
from sdlora.progress import Cancel, ProgressCallback, cancelled
from sdlora.settings.resolution import resolve_base_settings
from sdlora.threads import apply_threads
from sdlora.train import (
    ema,
    export,
    fp8,
    fused,
    loss_options,
    memory,
    optimizers,
    preflight,
    runs,
    tracking,
    validation,
)
from sdlora.train.auto_settings import fill_from_captions, samples_due
from sdlora.train.checkpoint import (
    checkpoints_dir,
    list_checkpoints,
    load_checkpoint,
    prepare_output,
    prune_checkpoints,
    repair_loss_log,
    resolve_resume,
    save_checkpoint,
)
from sdlora.train.data import scan_dataset
from sdlora.train.deepspeed_run import full_precision
from sdlora.train.export import build_metadata, export_lora, new_session_id, output_paths
from sdlora.train.loop import now, optimizer_step, precompute_latents, setup_training
from sdlora.train.monitor import LossLog, StageCancelled, Stages, StepInfo
from sdlora.train.optimizers import eval_weights
from sdlora.train.parking import encoders_on_device, park, precompute_text, unpark
from sdlora.train.result import TrainResult, TrainRun
from sdlora.train.samples import check_sample_prompts, render_samples

log = logging.getLogger(__name__)
LOAD_POLL_S = 0.2  # how often a base load in progress reports and checks for cancel


def train(cfg, components=None, *, on_step: Callable[[StepInfo], None] | None = None,
          on_progress: ProgressCallback | None = None,
          cancel: Cancel = None, resume: bool | str | Path = False
          ) -> TrainResult:
    """Train a LoRA as `cfg` says and export it.

    Args:
        cfg: a `sdlora.settings.TrainConfig` (see `load_config`); unset sizes are taken from the base.
        components: a `sdlora.base.load.Components`; loaded from `cfg.model.base` when None.
        on_step: called after every optimizer step with a `StepInfo` (loss, lr, samples, checkpoint; main
            process only).
        on_progress: called in every other stage (loading the base, scanning images, caching latents i/N,
            caching text i/N, compiling, sampling, saving) with a `StageInfo`, a `sdlora.progress.Progress`
            whose message is the stage (plus elapsed, ETA).
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
    _check_settings(cfg)  # before the data and the model load
    stages = Stages(on_progress, lambda: cancelled(cancel))
    apply_threads(cfg.optim.threads)
    resolved, notes, native = resolve_base_settings(cfg, components)
    if native is None and components is None:  # a hub id: its size is known once it is loaded
        try:
            components = _load_base(cfg, stages)
        except StageCancelled:
            return _cancelled_result(resolved, stages, None, notes)
        resolved, notes, _ = resolve_base_settings(cfg, components)
    cfg = resolved
    preflight.check_base_settings(cfg, components)  # from the config files: before the base loads
    prepare_output(Path(cfg.output.dir), clean=False)  # a folder that cannot be written fails before anything
    runs.start_run(cfg)  # run.yaml + run.json: the run can be listed, and resumed, whatever happens next
    try:
        with memory.allocation_errors(cfg, lambda: stages.reached[-1] if stages.reached else "setting up"):
            result = _run(cfg, components, stages, notes, on_step, resume)
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
    a bad --w/--s/... in a sample prompt, a tracker whose package is missing, loss and EMA options, a DoRA
    layout the output format cannot hold, fused backward and fp8 combinations that cannot run."""
    optimizers.check(cfg)
    check_sample_prompts(cfg.output.sample_prompts)
    tracking.resolve(cfg)
    loss_options.check(cfg)
    ema.check(cfg)
    export.check(cfg)
    fused.check(cfg)
    fp8.check(cfg)


def _cancelled_result(cfg, stages: Stages, summary, notes: list[str]) -> TrainResult:
    """A run cancelled before its first step: nothing new was saved; name the newest checkpoint kept."""
    kept = list_checkpoints(Path(cfg.output.dir))
    step = int(kept[-1].name.rpartition("-")[2]) if kept else 0
    return TrainResult(files=[], steps=step, loss=None, history=[], summary=summary, cancelled=True,
                       checkpoint=kept[-1] if kept else None, notes=notes, stages=list(stages.reached), config=cfg)


def _run(cfg, components, stages: Stages, notes: list[str], on_step, resume) -> TrainResult:
    """Scan the data, load the base, set the LoRA up on it, then `_fit`; the caller's models are left
    exactly as they came in. A cancel raises StageCancelled carrying the data set summary when there is one."""
    summary = None
    try:
        for note in notes:
            (log.warning if note.startswith("warning") else log.info)("%s", note)
        stages.start("scanning images")
        items, summary = scan_dataset(cfg.data, on_progress=lambda p: stages.advance(p.done, p.total),
                                      seed=cfg.optim.seed, base=str(cfg.model.base))
        cfg, filled = fill_from_captions(cfg, [item.caption for item in items if not item.is_reg])
        notes = [*notes, *filled]
        for line in [*summary.lines(), *filled]:
            log.info("%s", line)
        accelerator = make_accelerator(cfg)
        # before the model loads (minutes for a big base): a wrong output folder fails at once
        prepare_output(Path(cfg.output.dir), clean=accelerator.is_main_process)
        components = components if components is not None else _load_base(cfg, stages)
        started = time.time()
        tracking.start(accelerator, cfg)
        try:
            state = setup_training(cfg, components, accelerator, items, summary)
            ema.attach(state)
            state.stages = stages
            try:
                result = _fit(state, tracking.wrap(on_step, accelerator), resume, started)
            finally:
                unpark(state)
                if state.fused is not None:
                    state.fused.remove()
                fp8.restore(state.fp8_layers)
                state.network.remove()
        finally:
            tracking.end(accelerator)
    except StageCancelled as err:
        err.summary = summary  # the scan's summary, when it got that far
        raise
    result.notes, result.stages, result.config = notes, list(stages.reached), cfg
    return result


def make_accelerator(cfg):
    """An Accelerator for this run. In a single process, a previous run's precision setting is reset
    (accelerate keeps it in a process-wide singleton; the web UI trains several times per process)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

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


def _run_facts(state, started: float) -> TrainRun:
    return TrainRun(family=state.components.family, prediction_type=state.prediction_type,
                    base_name=state.components.name or state.cfg.model.base,
                    num_processes=state.accelerator.num_processes, batches_per_epoch=state.batches_per_epoch,
                    session_id=new_session_id(), started_at=started, version=sdlora.__version__)


def _finish_facts(run: TrainRun, state) -> TrainRun:
    micro = state.step * state.cfg.optim.grad_accum * state.accelerator.num_processes
    run.step, run.finished_at = state.step, time.time()
    run.epoch = -(-micro // state.batches_per_epoch)
    run.epochs = -(-state.cfg.optim.steps * state.cfg.optim.grad_accum * state.accelerator.num_processes
                   // state.batches_per_epoch)
    return run


def _export(state, run: TrainRun, stem: str | None = None) -> list[Path]:
    """Export the LoRA from the main process. Every process calls this: under DeepSpeed the float32 master
    weights are assembled first, a collective operation."""
    with eval_weights(state.optimizer, state.params), full_precision(state.engine, state.network):
        if not state.accelerator.is_main_process:
            return []
        meta = build_metadata(_finish_facts(run, state), state.cfg, state.summary)
        files = export_lora(state.network, meta, state.cfg, stem=stem, family=state.components.family)
        return files + ema.export(state, meta, stem, export_lora)  # the average beside it (optim.ema_decay)


def _step_stem(state) -> str:
    return f"{state.cfg.output.name}-step{state.step:06d}"


def _checkpoint(state, run: TrainRun) -> Path:
    """Checkpoint folder + a step-numbered export of the LoRA, then prune old ones."""
    state.stages.start("saving", check=False)
    folder = save_checkpoint(state, state.step)
    _export(state, run, stem=_step_stem(state))
    if state.accelerator.is_main_process:
        for doomed in prune_checkpoints(state.output, state.cfg.output.keep_last):
            for old in state.output.glob(f"{state.cfg.output.name}-{doomed.name.replace('-', '')}*"):
                old.unlink(missing_ok=True)
    state.accelerator.wait_for_everyone()
    return folder


def _samples(state, step: int) -> list[Path]:
    out = state.cfg.output
    if not (out.sample_prompts and samples_due(out, step, state.cfg.optim.steps)):
        return []
    if not state.accelerator.is_main_process:
        return []
    state.network.eval()
    state.stages.start("sampling", len(out.sample_prompts), check=False)
    try:
        with encoders_on_device(state), eval_weights(state.optimizer, state.params):
            return render_samples(state.components, out.sample_prompts, step, state.output / "samples",
                                  size=out.sample_size or state.cfg.data.resolution, steps=out.sample_steps,
                                  seed=state.cfg.optim.seed,
                                  on_image=lambda done: state.stages.advance(done, check=False))
    finally:
        state.network.train()


def _any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is set on any process, so that all stop at the same step (no one waits forever)."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum") > 0)


def _step_loop(state, run, log_file, on_step, started_loop) -> tuple[bool, Path | None, list]:
    cfg, acc = state.cfg, state.accelerator
    last_ckpt, samples, loss, first = None, [], None, state.step + 1
    while state.step < cfg.optim.steps:
        if _any_process(acc, state.stages.should_stop()):
            return True, _checkpoint(state, run), samples
        if cfg.optim.compile and loss is None:  # torch.compile traces and compiles on the first call
            state.stages.start("compiling", check=False)
        loss = optimizer_step(state)
        ema.update(state)
        lr = state.lr_scheduler.get_last_lr()[0]
        val_loss = validation.validation_loss(state) if validation.due(state) else None
        if acc.is_main_process:  # before the checkpoint: a checkpoint at this step implies its loss row
            log_file.add(state.step, loss, lr)
            if val_loss is not None:
                log_file.add_validation(state.step, val_loss)
        ckpt = None
        if cfg.output.save_every and state.step % cfg.output.save_every == 0 and state.step < cfg.optim.steps:
            ckpt = last_ckpt = _checkpoint(state, run)
        new_samples = [str(p) for p in _samples(state, state.step)]
        samples += new_samples
        if acc.is_main_process and on_step is not None:
            on_step(StepInfo(state.step, cfg.optim.steps, loss, lr, now() - started_loop, new_samples,
                             str(ckpt) if ckpt else None, first, val_loss))
    return False, last_ckpt, samples


def _fit(state, on_step, resume, started: float) -> TrainResult:
    """Resume, cache, run the steps and export; the TrainResult of the run."""
    accelerator, summary = state.accelerator, state.summary
    state.output.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_resume(state.output, resume)
    run = _run_facts(state, started)
    if checkpoint is not None:
        state.step = load_checkpoint(state, checkpoint)
        log.info("resumed from %s at step %d", checkpoint, state.step)
        if checkpoint.resolve().parent == checkpoints_dir(state.output).resolve():
            # this run's own checkpoint (not one taken from another run's folder): finish what a kill cut off
            _repair_after_kill(state, run, checkpoint)
    precompute_latents(state, state.stages)
    precompute_text(state, state.stages)
    _prepare_validation(state)
    park(state)
    log_file = LossLog(state.output, state.step) if accelerator.is_main_process else None
    try:
        with memory.allocation_errors(state.cfg, "training"):
            cancelled, last_ckpt, samples = _step_loop(state, run, log_file, on_step, now())
        if not cancelled:
            state.stages.start("saving", check=False)
        files = [] if cancelled else _export(state, run)
    except TrainingError as err:
        kept = ", ".join(str(p) for p in _existing_checkpoints(state)) or "none"
        raise TrainingError(f"{err} (last good checkpoint: {kept})") from err
    if cancelled:
        last_ckpt = state.output / "checkpoints" / f"step-{state.step:06d}"
    accelerator.wait_for_everyone()
    plot = log_file.plot() if log_file is not None else None
    history = log_file.rows if log_file is not None else []
    return TrainResult(files=files, steps=state.step, loss=history[-1][1] if history else None, history=history,
                       summary=summary, cancelled=cancelled, checkpoint=last_ckpt,
                       loss_csv=log_file.csv_path if log_file else None, loss_plot=plot,
                       samples=[Path(p) for p in samples],
                       validation=log_file.validation if log_file is not None else [])


def _prepare_validation(state) -> None:
    """Encode the validation images once, or say why no validation loss will be logged."""
    every, held = state.cfg.output.validate_every, state.summary is not None and state.summary.validation
    if every and not held:
        log.warning("output.validate_every is set but there are no validation images (set "
                    "data.validation_path or data.validation_split); no validation loss is logged")
    elif held and not every:
        log.info("validation images are set but output.validate_every is 0; no validation loss is logged")
    validation.prepare(state)


def _repair_after_kill(state, run: TrainRun, checkpoint: Path) -> None:
    """What a kill right after `checkpoint` was written can leave undone: its step-numbered export (written
    just after the checkpoint folder) and loss.csv rows. Every process takes part: the export is collective
    under DeepSpeed, so the main process decides and the others follow."""
    acc = state.accelerator
    if acc.is_main_process:
        repair_loss_log(state.output, checkpoint, state.step)
    missing = acc.is_main_process and not all(p.is_file() for p in output_paths(state.cfg, _step_stem(state)).values())
    if _any_process(acc, missing):
        log.info("re-exporting %s (interrupted before it was written)", _step_stem(state))
        _export(state, run, stem=_step_stem(state))
    acc.wait_for_everyone()


def _existing_checkpoints(state) -> list[Path]:
    return list_checkpoints(state.output)[-1:]
