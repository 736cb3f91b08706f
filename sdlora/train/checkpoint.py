"""Checkpoints for exact resume: LoRA, optimizer, schedule, RNG state and the step. Depends on torch.

Layout: ``<output>/checkpoints/step-000100/`` with ``lora.safetensors`` (the LoraNetwork's float32
state dict), ``state.pt`` (optimizer, schedule, step, CPU/CUDA RNG), ``rng-<rank>.pt`` (each process's
noise generator) and ``config.yaml``; under DeepSpeed, ``deepspeed/`` holds the engine's own checkpoint
(each process's part of the optimizer state) and ``state.pt`` no optimizer. A checkpoint is written into
a hidden temporary folder and renamed into place, so a crash while saving leaves the previous checkpoints
intact and never a half-written one. The data order needs no state: it is a pure function of (seed, step)
(see `data.epoch_batches`).

`state.pt` is written by sdlora and read back with ``torch.load(weights_only=True)``. A copy of
``loss.csv`` as it was at the step rides along, so a resume can repair a loss.csv that a kill left short.

A failed write (disk full, permissions) raises `TrainingError` and leaves no half-written checkpoint;
`prepare_output` checks the output folder is writable before the model loads and removes the temporary
files an interrupted run left behind.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from sdlora.atomic import atomic_path
from sdlora.errors import ConfigError, TrainingError
from sdlora.settings.config import dump_config
from sdlora.train import deepspeed_run, ema

_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_CHECKPOINT = ".tmp-step-*"  # save_checkpoint's folder before its rename
_TMP_FILE = ".*.tmp"             # sdlora.atomic's temporary files (exports, loss.csv, the writability probe)
LOSS_COPY = "loss.csv"


def prepare_output(output: Path, clean: bool = True) -> None:
    """Create `output`, check a file can be written there, and (with `clean`) delete the temporary files and
    folders an interrupted run left (`.*.tmp`, `checkpoints/.tmp-step-*`). Called before the model loads, so
    a wrong folder fails in a second, not after minutes of loading.

    Raises:
        ConfigError: the folder cannot be created or written.
    """
    try:
        output.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sdlora-write-test.", suffix=".tmp", dir=output)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"output.dir: cannot write to {output} ({err.strerror or err}); choose a folder you "
                          "can write to (--output DIR)") from err
    if clean:
        for folder in (output, output / "samples"):
            for leftover in folder.glob(_TMP_FILE) if folder.is_dir() else ():
                if leftover.is_file() and not leftover.is_symlink():
                    leftover.unlink(missing_ok=True)
        for leftover in checkpoints_dir(output).glob(_TMP_CHECKPOINT):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def writing(what: Path):
    """Turn a failed write into a TrainingError naming `what`. torch.save reports a full disk as a
    RuntimeError ("unexpected pos ..."), safetensors as its own error type; inside a write block every one
    of them means the write failed."""
    try:
        yield
    except TrainingError:
        raise
    except Exception as err:  # OSError, RuntimeError (torch.save), SafetensorError: all a failed write here
        raise TrainingError(f"could not write {what} ({type(err).__name__}: {err}); free disk space or fix the "
                            "folder's permissions, then resume (--resume)") from err


def checkpoints_dir(output: Path) -> Path:
    return output / "checkpoints"


def list_checkpoints(output: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = checkpoints_dir(output)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and
             (p / "state.pt").is_file()]
    return [p for _, p in sorted(found)]


def _rng_state(generator: torch.Generator) -> dict:
    state = {"noise": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(state, step: int) -> Path:
    """Write the checkpoint for `step` (all processes call this; the main process renames) and return it.

    Raises:
        TrainingError: a write failed (disk full, permissions); no half-written checkpoint is left.
    """
    acc = state.accelerator
    final = checkpoints_dir(state.output) / f"step-{step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    try:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            with writing(tmp):
                tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        with writing(tmp / f"rng-{acc.process_index}.pt"):
            torch.save(_rng_state(state.generator), tmp / f"rng-{acc.process_index}.pt")
        if state.engine is not None:  # each process's part of the optimizer state (ZeRO)
            deepspeed_run.save(state.engine, tmp)
        with deepspeed_run.full_precision(state.engine, state.network):  # every process: collective under ZeRO
            tensors = {k: v.detach().cpu().contiguous() for k, v in state.network.state_dict().items()}
        acc.wait_for_everyone()
        if acc.is_main_process:
            with writing(final):
                _write_main_files(state, step, tensors, tmp, final)
    except BaseException:
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)  # never a half-written checkpoint left behind
        raise
    acc.wait_for_everyone()
    return final


def _write_main_files(state, step: int, tensors: dict, tmp: Path, final: Path) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(tmp / "lora.safetensors"))
    optimizer = None if state.engine is not None else state.optimizer.state_dict()
    torch.save({"step": step, "optimizer": optimizer,
                "scheduler": state.lr_scheduler.state_dict()}, tmp / "state.pt")
    dump_config(state.cfg, tmp / "config.yaml")
    ema.save(state, tmp)
    loss_csv = state.output / "loss.csv"
    if loss_csv.is_file():
        shutil.copyfile(loss_csv, tmp / LOSS_COPY)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def prune_checkpoints(output: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns the deleted folders."""
    found = list_checkpoints(output)
    doomed = found[:-keep_last] if keep_last > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def resolve_resume(output: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint folder to resume from: the newest one when `resume` is True, else the given path."""
    if resume is True:
        found = list_checkpoints(output)
        if not found:
            raise TrainingError(f"--resume: no checkpoint in {checkpoints_dir(output)}; start without --resume")
        return found[-1]
    if resume:
        path = Path(resume)
        if not (path / "state.pt").is_file():
            raise TrainingError(f"--resume: {path} is not a checkpoint folder (no state.pt)")
        return path
    return None


def _loss_rows(path: Path) -> dict[int, list[str]]:
    """{step: [step, loss, lr]} of a loss.csv; rows a kill cut short or garbled are left out."""
    rows: dict[int, list[str]] = {}
    if not path.is_file():
        return rows
    with path.open(newline="", errors="replace") as handle:
        for row in csv.reader(handle):
            if len(row) != 3:
                continue  # a torn last line
            try:
                step, _, _ = int(row[0]), float(row[1]), float(row[2])
            except ValueError:
                continue  # the header, or a garbled line
            if step > 0:
                rows[step] = row
    return rows


def repair_loss_log(output: Path, checkpoint: Path, step: int) -> None:
    """Make `output`/loss.csv hold exactly one row per step 1..`step`, before a resume from `checkpoint`:
    rows a kill cut short are dropped, rows after the checkpoint are dropped (they are trained again), and
    rows missing from loss.csv are taken from the copy saved in the checkpoint."""
    path = output / "loss.csv"
    rows = {**_loss_rows(checkpoint / LOSS_COPY), **_loss_rows(path)}
    kept = [rows[s] for s in sorted(rows) if s <= step]
    with writing(path), atomic_path(path, fsync=False) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss", "lr"])
        writer.writerows(kept)


def _check_shapes(saved: dict, own: dict, path: Path) -> None:
    """A tensor of another shape than this run's is a setting that changed since the checkpoint (a rank, or
    the DoRA layout: checkpoints from before per-input-column DoRA became the default are per output row)."""
    for key, tensor in saved.items():
        if key in own and tuple(own[key].shape) != tuple(tensor.shape):
            hint = "set lora.dora_axis as the checkpoint was trained (in or out)" if key.endswith(".magnitude") \
                else "check lora.rank / lora.conv_rank / block dims"
            raise TrainingError(f"{path}: checkpoint tensor {key} has shape {list(tensor.shape)}, this run's "
                                f"{list(own[key].shape)}; {hint}")


def load_checkpoint(state, path: Path) -> int:
    """Restore LoRA, optimizer, schedule and RNG from `path` into `state`; returns the step to continue from."""
    from safetensors.torch import load_file

    tensors = load_file(str(path / "lora.safetensors"))
    _check_shapes(tensors, state.network.state_dict(), path)
    missing, unexpected = state.network.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise TrainingError(f"{path}: checkpoint does not match this run's LoRA targets "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); check lora.* settings")
    saved = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    if state.engine is not None:
        deepspeed_run.load(state.engine, path)
    elif saved["optimizer"] is None:
        raise TrainingError(f"--resume: {path} was written under DeepSpeed (its optimizer state is in "
                            f"{deepspeed_run.CHECKPOINT_FOLDER}/); resume it under DeepSpeed with the same "
                            "number of processes")
    else:
        state.optimizer.load_state_dict(saved["optimizer"])
    state.lr_scheduler.load_state_dict(saved["scheduler"])
    ema.load(state, path)
    rng_file = path / f"rng-{state.accelerator.process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        state.generator.set_state(rng["noise"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return int(saved["step"])
