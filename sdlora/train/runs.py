"""Runs you can come back to: each run's output folder says what became of it, and `list_runs` reads them.

`train` writes two files into the output folder when it starts, before anything slow:
* `run.yaml`: the resolved config (base-dependent sizes filled in). `sdlora train --config run.yaml --resume`
  continues the run; the web UI's Resume button does exactly that (`resume_config`);
* `run.json`: status (running, done, cancelled, failed), the planned steps, start time, the process id,
  updated when the run ends. A run still marked running whose process is gone crashed (killed, out of
  memory, power cut): its checkpoints and step files are still there to resume from or to use.

Standard library only (the loss plot is drawn by `progress.plot_history`, Pillow, when asked for).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.atomic import atomic_path
from sdlora.errors import ConfigError

STATUS_FILE, CONFIG_FILE = "run.json", "run.yaml"
RUNNING, DONE, CANCELLED, FAILED, CRASHED = "running", "done", "cancelled", "failed", "crashed"


@dataclass
class RunInfo:
    """One past (or current) run, as `list_runs` finds it."""

    folder: Path
    name: str                  # the folder's name
    status: str                # running, done, cancelled, failed, crashed
    steps: int                 # steps recorded in loss.csv
    total: int                 # steps planned
    started: float             # time.time() when the run began (0 when unknown)
    error: str = ""
    files: list[Path] = field(default_factory=list)        # LoRA files: step files, then the final one
    checkpoints: list[Path] = field(default_factory=list)  # resumable checkpoint folders, oldest first
    samples: list[Path] = field(default_factory=list)      # sample grids and images
    config: Path | None = None                             # run.yaml

    @property
    def resumable(self) -> bool:
        return self.status in (CANCELLED, CRASHED, FAILED) and bool(self.checkpoints)

    @property
    def last_file(self) -> Path | None:
        return self.files[-1] if self.files else None

    @property
    def date(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(self.started)) if self.started else "?"


def _main_process() -> bool:
    """False in the other processes of `accelerate launch` (RANK > 0): one process writes the run's files."""
    return os.environ.get("RANK", "0") in ("", "0")


def write_status(folder: Path, status: str, **fields) -> None:
    """Create or update `run.json` in `folder` (atomically; a reader never sees half a file)."""
    if not _main_process():
        return
    path = Path(folder) / STATUS_FILE
    data = _read_json(path)
    data.update(fields, status=status, updated=time.time())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")


def start_run(cfg) -> None:
    """Mark `cfg.output.dir` as a running run and save its resolved config (`run.yaml`)."""
    from sdlora.settings.config import dump_config

    if not _main_process():
        return
    folder = Path(cfg.output.dir)
    folder.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, folder / CONFIG_FILE)
    # a resumed run keeps the date it began on (the runs list sorts and shows it)
    started = _read_json(folder / STATUS_FILE).get("started") or time.time()
    write_status(folder, RUNNING, total=cfg.optim.steps, started=started, pid=os.getpid(), error="")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _steps_done(folder: Path) -> int:
    try:
        with (folder / "loss.csv").open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r.get("step", "").isdigit()]
    except OSError:
        return 0
    return max((int(r["step"]) for r in rows), default=0)


def read_run(folder: Path) -> RunInfo | None:
    """The run in `folder`, or None when the folder holds no run (no run.json)."""
    folder = Path(folder)
    data = _read_json(folder / STATUS_FILE)
    if not data:
        return None
    status = data.get("status", FAILED)
    if status == RUNNING and not _alive(data.get("pid")):
        status = CRASHED
    files = sorted(folder.glob("*.safetensors"), key=lambda p: (p.stem.rpartition("-step")[1] == "", p.name))
    # complete checkpoint folders (as sdlora.train.checkpoint.list_checkpoints, without importing torch)
    checkpoints = sorted(p for p in (folder / "checkpoints").glob("step-*") if (p / "state.pt").is_file())
    return RunInfo(folder=folder, name=folder.name, status=status, steps=_steps_done(folder),
                   total=int(data.get("total", 0)), started=float(data.get("started", 0.0)),
                   error=str(data.get("error", "")), files=files, checkpoints=checkpoints,
                   samples=sorted((folder / "samples").glob("*.png")),
                   config=folder / CONFIG_FILE if (folder / CONFIG_FILE).is_file() else None)


def list_runs(root: Path) -> list[RunInfo]:
    """Every run in the folders directly under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [run for sub in root.iterdir() if sub.is_dir() and (run := read_run(sub)) is not None]
    return sorted(runs, key=lambda r: (r.started, r.name), reverse=True)


def loss_plot(run: RunInfo) -> Path | None:
    """The run's loss.png, drawn from loss.csv when missing or older (a cancelled or crashed run)."""
    from sdlora.train.monitor import plot_history

    csv_path, png = run.folder / "loss.csv", run.folder / "loss.png"
    if not csv_path.is_file():
        return png if png.is_file() else None
    if png.is_file() and png.stat().st_mtime >= csv_path.stat().st_mtime:
        return png
    with csv_path.open(newline="") as handle:
        rows = [(int(r["step"]), float(r["loss"]), float(r["lr"])) for r in csv.DictReader(handle)
                if r.get("step", "").isdigit()]
    return plot_history(rows, png) if rows else None


def resume_config(run: RunInfo):
    """The config `sdlora train --config <run>/run.yaml --resume` would use (output.dir is the run's folder).

    Raises:
        ConfigError: the run has no run.yaml or no checkpoint to resume from.
    """
    from sdlora.settings.config import load_config

    if run.config is None:
        raise ConfigError(f"{run.folder}: no {CONFIG_FILE}; this run cannot be resumed from here")
    if not run.checkpoints:
        raise ConfigError(f"{run.folder}: no checkpoint yet (it stopped before its first one); start it again")
    cfg = load_config(run.config)
    cfg.output.dir = str(run.folder)  # the folder may have moved since
    return cfg
