"""The pretraining script runs end to end for a few steps and writes a loadable pipeline folder."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdlora.embedded import configs, load_pipeline, pretrain
from sdlora.errors import SdloraError

FEW_STEPS = [
    "--vae-steps", "3", "--vae-images", "32", "--vae-batch", "4",
    "--images", "48", "--steps", "3", "--batch", "4", "--eval-every", "0", "--eval-steps", "2",
    "--widen-steps", "2", "--widen-detail-steps", "1", "--widen-batch", "4", "--widen-images", "8",
    "--widen-eval-images", "8",
]  # fmt: skip


@pytest.mark.slow
def test_pretrain_command_runs_a_few_steps_and_saves_a_pipeline(tmp_path):
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-m", "sdlora.embedded.pretrain", "--out", str(out), *FEW_STEPS],
        check=False, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unet step 0/3" in done.stderr and "eval step 3" in done.stderr and "widen step 0/1" in done.stderr
    record = json.loads((out / "pretrain.json").read_text())
    assert record["steps"] == 3 and record["scores"]["steps_done"] == 3
    assert [stage["steps"] for stage in record["widen"]["stages"]] == [2, 1]  # phase 4 ran after phase 3
    assert 0.0 <= record["scores"]["colour"] <= 1.0
    assert not (tmp_path / "model.partial").exists()

    pipe = load_pipeline(folder=out)
    assert pipe.unet.config.cross_attention_dim == configs.TEXT_WIDTH
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the data, not SD's constant
    image = pipe("a red circle on a blue background", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]  # fmt: skip
    assert image.shape == (configs.IMAGE_SIZE, configs.IMAGE_SIZE, 3) and np.isfinite(image).all()


def test_constant_lr_makes_a_cut_short_run_equal_a_shorter_run():
    # a run stopped at step N must equal `--steps N`: the schedule must not depend on the total
    assert [pretrain.constant_lr(s, 10) for s in (0, 9, 10, 500)] == [0.1, 1.0, 1.0, 1.0]


def test_load_pipeline_reports_missing_weights(tmp_path):
    with pytest.raises(SdloraError, match="pretrain"):
        load_pipeline(folder=tmp_path)
