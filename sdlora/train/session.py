"""One training run from setup to export: resume, the step loop, logging, checkpoints, samples, cancel."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import sdlora
from sdlora.errors import TrainingError
from sdlora.train import ema, fp8, validation
from sdlora.train.checkpoint import (
    checkpoints_dir,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    repair_loss_log,
    resolve_resume,
    save_checkpoint,
)
from sdlora.train.deepspeed_run import full_precision
from sdlora.train.export import build_metadata, export_lora, new_session_id, output_paths
from sdlora.train.loop import now, optimizer_step, precompute_latents, setup_training
from sdlora.train.optimizers import eval_weights
from sdlora.train.parking import encoders_on_device, park, precompute_text, unpark
from sdlora.train.progress import LossLog, Stages, StepInfo
from sdlora.train.result import TrainResult, TrainRun
from sdlora.train.samples import render_samples

log = logging.getLogger(__name__)


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
    if not (out.sample_prompts and out.sample_every and step % out.sample_every == 0):
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


def _step_loop(state, run, log_file, on_step, should_stop, started_loop) -> tuple[bool, Path | None, list]:
    cfg, acc = state.cfg, state.accelerator
    last_ckpt, samples, loss, first = None, [], None, state.step + 1
    while state.step < cfg.optim.steps:
        if _any_process(acc, should_stop()):
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


def run_training(  # noqa: PLR0913 - called once, by train(); keyword-only hooks
        cfg, components, accelerator, items, summary, *, on_step, should_stop, resume,
                 started: float, stages: Stages | None = None) -> TrainResult:
    """Set up, optionally resume, loop, export. Returns the TrainResult (see `sdlora.train.train`).

    Raises StageCancelled when cancel is set before the first step (while caching)."""
    state = setup_training(cfg, components, accelerator, items, summary)
    ema.attach(state)
    state.stages = stages or Stages(should_stop=should_stop)
    try:
        return _run(state, on_step, should_stop, resume, started)
    finally:
        unpark(state)
        if state.fused is not None:
            state.fused.remove()
        fp8.restore(state.fp8_layers)
        state.network.remove()  # the caller's models are left exactly as they came in


def _run(state, on_step, should_stop, resume, started: float) -> TrainResult:
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
        cancelled, last_ckpt, samples = _step_loop(state, run, log_file, on_step, should_stop, now())
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
