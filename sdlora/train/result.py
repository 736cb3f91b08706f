"""What a training run returns (`TrainResult`) and the facts about it that go into the metadata (`TrainRun`).

Kept apart from `sdlora.train` (which re-exports TrainResult) so that the session that fills them in does not
import the package entry point that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    files: list[Path]                 # exported LoRA file(s), config.yaml beside the first
    steps: int                        # optimizer steps done
    loss: float | None                # loss of the last step
    history: list[tuple[int, float, float]]  # (step, loss, lr)
    summary: object                   # data.DatasetSummary
    cancelled: bool = False
    checkpoint: Path | None = None    # last checkpoint folder
    loss_csv: Path | None = None
    loss_plot: Path | None = None
    samples: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # where base-dependent settings came from, warnings
    stages: list[str] = field(default_factory=list)  # stages entered, in order (sdlora.train.monitor.STAGES)
    config: object = None             # the resolved TrainConfig the run used
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)


@dataclass
class TrainRun:
    """Facts about the run that go into the metadata."""

    family: str | None
    prediction_type: str
    base_name: str
    num_processes: int
    batches_per_epoch: int
    session_id: str
    started_at: float
    finished_at: float = 0.0
    step: int = 0
    epoch: int = 0
    epochs: int = 0
    version: str = ""
