"""The web UI's training job: the body that `AppState.jobs` runs for a Start (Train tab) or a Resume (past
runs), calling `sdlora.train.train` with its progress and cancel wired to the job.

Kept out of the tabs so that both tabs use it without importing each other.
"""

from __future__ import annotations

import math
from pathlib import Path

from sdlora.train.monitor import format_seconds
from sdlora_webui.jobs import JobContext


def training_job(cfg, ctx: JobContext, resume: bool = False) -> str | None:
    """The job body: call the trainer with progress and cancel wired to the job; return the LoRA path.
    `resume=True` continues from the newest checkpoint in cfg.output.dir (the CLI's `--resume`)."""
    import time

    from sdlora.train.session import train  # imports torch: loaded when a job runs, not with the app

    started = time.monotonic()
    ctx.progress(0, cfg.optim.steps, "starting")
    result = train(cfg, on_step=lambda info: record_step(ctx, info, cfg.optim.steps),
                   on_progress=lambda info: ctx.message(info.line(), info.message), cancel=ctx.cancel_event,
                   resume=resume)
    path = _result_path(result, cfg)
    if getattr(result, "cancelled", False):
        ctx.progress(result.steps, cfg.optim.steps, cancel_line(result))
    else:
        ctx.progress(result.steps, cfg.optim.steps,
                     f"finished in {format_seconds(time.monotonic() - started)}; saved {path}")
    return path


def cancel_line(result) -> str:
    """What a cancelled run kept: the checkpoint Resume continues from, or nothing before the first step."""
    stage = f" during {result.stages[-1]}" if result.stages and not result.history else ""
    checkpoint = getattr(result, "checkpoint", None)
    if checkpoint is None:
        return f"cancelled{stage} before any checkpoint was saved; nothing was kept"
    return f"cancelled at step {result.steps}{stage}; checkpoint {Path(checkpoint).name} kept (Resume continues from it)"


def record_step(ctx: JobContext, info, total: int) -> None:
    """Map the trainer's StepInfo onto the job (progress, loss history, new sample images)."""
    step = int(getattr(info, "step", 0))
    total = int(getattr(info, "total", None) or getattr(info, "total_steps", None) or total)
    loss = getattr(info, "loss", None)
    # Progress first: a poller that sees the step's loss must also see the step's progress bar.
    ctx.progress(step, total, step_line(info, step, total))
    if loss is not None and math.isfinite(float(loss)):
        ctx.add_loss(step, float(loss))
    val_loss = getattr(info, "val_loss", None)
    if val_loss is not None and math.isfinite(float(val_loss)):
        ctx.add_val_loss(step, float(val_loss))
    samples = getattr(info, "samples", None) or getattr(info, "sample_paths", None) or []
    if samples:
        ctx.add_samples([str(s) for s in samples])


def step_line(info, step: int, total: int) -> str:
    """`loss 0.1234 · 2.10 steps/s · 12 s elapsed · ETA 40 s` (what the status shows during steps)."""
    loss, elapsed = getattr(info, "loss", None), getattr(info, "elapsed", None)
    parts = [f"loss {float(loss):.4f}"] if loss is not None else []
    if elapsed:
        done = step - int(getattr(info, "first_step", 1)) + 1  # a resumed run's clock starts at its first step
        parts.append(f"{max(done, 1) / elapsed:.2f} steps/s")
        parts.append(f"{format_seconds(elapsed)} elapsed")
        parts.append(f"ETA {format_seconds(elapsed / max(done, 1) * (total - step))}")
    return " · ".join(parts)


def _result_path(result, cfg) -> str | None:
    """The exported LoRA file (the trainer's TrainResult lists it first), or None after a cancel."""
    files = [Path(f) for f in getattr(result, "files", None) or []]
    lora_files = [f for f in files if f.suffix == ".safetensors"]
    return str(lora_files[0]) if lora_files else None
