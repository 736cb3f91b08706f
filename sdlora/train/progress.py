"""Progress reporting: `StepInfo` for the `on_step` callback, and the loss history (CSV + PNG plot).

The library never prints; the CLI draws a tqdm bar from `StepInfo` and the web UI maps it to its own
progress widget. Matplotlib is imported inside `plot_history` with the Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path


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

    @property
    def eta(self) -> float:
        """Estimated seconds left."""
        return self.elapsed / max(1, self.step) * (self.total - self.step)


class LossLog:
    """Appends (step, loss, lr) to `loss.csv`; `plot()` writes `loss.png`."""

    def __init__(self, folder: Path, start_step: int = 0):
        self.csv_path, self.png_path = folder / "loss.csv", folder / "loss.png"
        self.rows: list[tuple[int, float, float]] = []
        if start_step and self.csv_path.is_file():
            self.rows = [r for r in self._read() if r[0] <= start_step]
        self._rewrite()

    def _read(self) -> list[tuple[int, float, float]]:
        with self.csv_path.open(newline="") as handle:
            return [(int(r["step"]), float(r["loss"]), float(r["lr"])) for r in csv.DictReader(handle)]

    def _rewrite(self) -> None:
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["step", "loss", "lr"])
            writer.writerows(self.rows)
        os.replace(tmp, self.csv_path)

    def add(self, step: int, loss: float, lr: float) -> None:
        self.rows.append((step, loss, lr))
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([step, f"{loss:.6g}", f"{lr:.6g}"])

    def plot(self) -> Path | None:
        """Loss per step and its moving average, as a PNG; None when there is nothing to plot."""
        if not self.rows:
            return None
        return plot_history(self.rows, self.png_path)


def plot_history(rows: list[tuple[int, float, float]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    steps, losses = [r[0] for r in rows], [r[1] for r in rows]
    window = max(1, len(losses) // 10)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.plot(steps, losses, alpha=0.35 if window > 1 else 1.0, label="loss")
    if window > 1:
        ax.plot(steps, smooth, label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)
    return path
