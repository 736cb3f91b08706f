"""What a training run reports as it goes: `StepInfo` after every optimizer step (`on_step`), `StageInfo` in
the stages around the steps (`on_progress`; a `sdlora.progress.Progress`), `Stages` that sends them and checks
for cancel, and the loss history (`LossLog`: loss.csv, val_loss.csv, the loss.png plot).

The library never prints; the CLI draws a tqdm bar from `StepInfo` and stage lines from `StageInfo`, and the
web UI maps both to its own progress widget. `plot_history` draws the loss chart with Pillow (no display, no
matplotlib).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.atomic import atomic_path
from sdlora.progress import Progress, ProgressCallback


@dataclass
class StepInfo:
    """What the trainer reports after every optimizer step."""

    step: int                  # optimizer steps done (1-based)
    total: int                 # optimizer steps planned
    loss: float                # mean loss of this step
    lr: float                  # learning rate of the first parameter group (UNet)
    elapsed: float             # seconds since the loop started (this process)
    samples: list[str] = field(default_factory=list)  # sample images rendered at this step (grid first)
    checkpoint: str | None = None  # checkpoint folder written at this step
    first_step: int = 1        # the first step this process ran (a resumed run starts mid-way)
    val_loss: float | None = None  # validation loss measured after this step (output.validate_every)

    @property
    def eta(self) -> float:
        """Estimated seconds left."""
        return self.elapsed / max(1, self.step - self.first_step + 1) * (self.total - self.step)


# the stages a run goes through before, between and after its steps, in order (names as shown to users)
STAGES = ("loading the base", "scanning images", "caching latents", "caching text", "compiling", "sampling",
          "saving")


@dataclass
class StageInfo(Progress):
    """What the trainer reports to `on_progress` while it is in a stage that is not an optimizer step: `done`
    of `total` items (images, captions, prompts; total 0 when the stage has no count: loading, compiling),
    `message` the stage, one of STAGES."""

    elapsed: float = 0.0       # seconds since the stage began

    @property
    def eta(self) -> float | None:
        """Estimated seconds left in the stage; None before the first item or without a count."""
        if not self.total or not self.done:
            return None
        return self.elapsed / self.done * (self.total - self.done)

    def line(self) -> str:
        """One status line: `caching latents 12/50 · 3 s elapsed · ETA 9 s`."""
        count = f" {self.done}/{self.total}" if self.total else ""
        eta = f" · ETA {format_seconds(self.eta)}" if self.eta is not None else ""
        return f"{self.message}{count} · {format_seconds(self.elapsed)} elapsed{eta}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class StageCancelled(Exception):  # a signal between trainer functions, never shown to users
    """Raised inside a stage when cancel was requested; `train` turns it into a cancelled TrainResult."""

    def __init__(self, stage: str):
        super().__init__(f"cancelled during {stage}")
        self.stage = stage


class Stages:
    """Reports stage progress to `on_progress` and checks `should_stop` between items, so that Cancel and
    Ctrl-C stop any stage within one item (one image, one caption batch) rather than at the next step.

    `reached` lists every stage entered, in order (what tests and the result read)."""

    def __init__(self, on_progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None):
        self.on_progress, self.should_stop = on_progress, should_stop or (lambda: False)
        self.reached: list[str] = []
        self._name, self._total, self._started = "", 0, 0.0

    def start(self, name: str, total: int = 0, *, check: bool = True) -> None:
        """Enter stage `name` with `total` items (0: no count); stops first when cancel is set.

        `check=False` for stages inside the step loop (sampling, saving): the loop itself stops before the
        next step and saves a checkpoint, which stopping here would skip."""
        self._name, self._total, self._started = name, total, time.perf_counter()
        self.reached.append(name)
        if check:
            self.check()
        self._report(0)

    def advance(self, done: int, total: int | None = None, *, check: bool = True) -> None:
        """`done` items of the current stage finished (of `total`, when only known now); stops when cancel
        is set (unless `check=False`)."""
        if total is not None:
            self._total = total
        self._report(done)
        if check:
            self.check()

    def check(self) -> None:
        if self.should_stop():
            raise StageCancelled(self._name or "setup")

    def _report(self, done: int) -> None:
        if self.on_progress is not None:
            self.on_progress(StageInfo(done, self._total, self._name, time.perf_counter() - self._started))


class LossLog:
    """Appends (step, loss, lr) to `loss.csv` and (step, val_loss) to `val_loss.csv`; `plot()` writes
    `loss.png`. The validation loss has a file of its own so that loss.csv keeps its three columns for
    whatever already reads it."""

    def __init__(self, folder: Path, start_step: int = 0):
        self.csv_path, self.png_path = folder / "loss.csv", folder / "loss.png"
        self.val_path = folder / "val_loss.csv"
        self.rows: list[tuple[int, float, float]] = []
        self.validation: list[tuple[int, float]] = []
        if start_step and self.csv_path.is_file():
            self.rows = [r for r in self._read() if r[0] <= start_step]
        if start_step and self.val_path.is_file():
            self.validation = [r for r in self._read_validation() if r[0] <= start_step]
        self._rewrite()
        if self.validation or self.val_path.exists():
            self._rewrite_validation()

    def _read_validation(self) -> list[tuple[int, float]]:
        with self.val_path.open(newline="") as handle:
            return [(int(r["step"]), float(r["val_loss"])) for r in csv.DictReader(handle)]

    def _rewrite_validation(self) -> None:
        with atomic_path(self.val_path, fsync=False) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "val_loss"])
            writer.writerows(self.validation)

    def add_validation(self, step: int, loss: float) -> None:
        if not self.validation and not self.val_path.exists():
            self._rewrite_validation()  # the header
        self.validation.append((step, loss))
        with self.val_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([step, f"{loss:.6g}"])

    def _read(self) -> list[tuple[int, float, float]]:
        with self.csv_path.open(newline="") as handle:
            return [(int(r["step"]), float(r["loss"]), float(r["lr"])) for r in csv.DictReader(handle)]

    def _rewrite(self) -> None:
        with atomic_path(self.csv_path, fsync=False) as tmp, tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss", "lr"])
            writer.writerows(self.rows)

    def add(self, step: int, loss: float, lr: float) -> None:
        self.rows.append((step, loss, lr))
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([step, f"{loss:.6g}", f"{lr:.6g}"])

    def plot(self) -> Path | None:
        """Loss per step and its moving average, as a PNG; None when there is nothing to plot."""
        if not self.rows:
            return None
        return plot_history(self.rows, self.png_path, self.validation)


_SIZE, _BOX = (600, 350), (64, 16, 584, 300)  # image (w, h); plot area (left, top, right, bottom)
_RAW, _SMOOTH, _INK, _GRID = (150, 190, 230), (230, 110, 20), (40, 40, 40), (225, 225, 225)
_VALIDATION = (40, 150, 60)


def plot_history(rows: list[tuple[int, float, float]], path: Path,
                 validation: list[tuple[int, float]] | None = None) -> Path:
    """Loss per step (thin) and its moving average over a tenth of the run (thick), as a 600x350 PNG.

    Drawn with Pillow, which the trainer has loaded anyway to decode images: matplotlib would add about
    35 MB to the training process's peak memory and a second to every run for one small chart."""
    from PIL import Image, ImageDraw, ImageFont

    points = [(r[0], r[1]) for r in rows if math.isfinite(r[1])]
    window = max(1, len(points) // 10)
    smooth = [(s, sum(v for _, v in points[max(0, i - window + 1):i + 1]) / min(window, i + 1))
              for i, (s, _) in enumerate(points)]
    img = Image.new("RGB", _SIZE, "white")
    draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=12)
    val_points = [(s, v) for s, v in validation or [] if math.isfinite(v)]
    x_range = _padded([s for s, _ in points + val_points], 0.0)
    y_range = _padded([v for _, v in points + val_points], 0.05)
    _axes(draw, font, x_range, y_range)
    _line(draw, points, x_range, y_range, _RAW if window > 1 else _SMOOTH, 1)
    legend = [("loss", _RAW if window > 1 else _SMOOTH)]
    if window > 1:
        _line(draw, smooth, x_range, y_range, _SMOOTH, 2)
        legend.append((f"moving average ({window} steps)", _SMOOTH))
    if val_points:
        _line(draw, val_points, x_range, y_range, _VALIDATION, 2)
        legend.append(("validation loss", _VALIDATION))
    for i, (label, colour) in enumerate(legend):
        y = _BOX[1] + 8 + 16 * i
        draw.line([(_BOX[2] - 230, y + 7), (_BOX[2] - 206, y + 7)], fill=colour, width=2)
        draw.text((_BOX[2] - 200, y), label, fill=_INK, font=font)
    with atomic_path(path, suffix=".png", fsync=False) as tmp:
        img.save(tmp, format="PNG")
    return path


def _padded(values: list[float], pad: float) -> tuple[float, float]:
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high == low:  # one value: centre it
        return low - (abs(low) or 1.0) / 2, high + (abs(high) or 1.0) / 2
    return low - pad * (high - low), high + pad * (high - low)


def _to_px(x: float, y: float, x_range, y_range) -> tuple[float, float]:
    left, top, right, bottom = _BOX
    return (left + (x - x_range[0]) / (x_range[1] - x_range[0]) * (right - left),
            bottom - (y - y_range[0]) / (y_range[1] - y_range[0]) * (bottom - top))


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) inside [low, high]."""
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [k * step for k in range(math.ceil(low / step), math.floor(high / step) + 1)]


def _axes(draw, font, x_range, y_range) -> None:
    left, top, right, bottom = _BOX
    for value in _ticks(*y_range):
        y = _to_px(x_range[0], value, x_range, y_range)[1]
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.text((left - 6, y), f"{value:.4g}", fill=_INK, font=font, anchor="rm")
    for value in _ticks(*x_range):
        x = _to_px(value, y_range[0], x_range, y_range)[0]
        draw.line([(x, bottom), (x, bottom + 4)], fill=_INK)
        draw.text((x, bottom + 6), f"{value:g}", fill=_INK, font=font, anchor="mt")
    draw.rectangle(_BOX, outline=_INK)
    draw.text(((left + right) / 2, _SIZE[1] - 6), "step", fill=_INK, font=font, anchor="md")
    draw.text((left, top - 2), "loss", fill=_INK, font=font, anchor="ld")


def _line(draw, points, x_range, y_range, colour, width: int) -> None:
    pixels = [_to_px(x, y, x_range, y_range) for x, y in points]
    if len(pixels) == 1:
        x, y = pixels[0]
        draw.ellipse([(x - 2, y - 2), (x + 2, y + 2)], fill=colour)
    else:
        draw.line(pixels, fill=colour, width=width, joint="curve")
