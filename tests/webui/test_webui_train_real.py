"""The Train tab's handlers over the real trainer: a short run finishes, Cancel stops within a step.

The base is the embedded architecture with random weights written to a temporary diffusers folder,
so the test does not depend on the shipped weights; the data set is 6 tiny images.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sdlora_webui.state import AppConfig, AppState
from sdlora_webui.tabs import train_tab


@pytest.fixture(scope="module")
def real_app(tmp_path_factory):
    from tests_webui_models import sample_dataset, write_untrained_embedded

    tmp = tmp_path_factory.mktemp("train-real")
    base = write_untrained_embedded(tmp / "models" / "untrained")
    data = sample_dataset(tmp / "data" / "style")
    state = AppState(AppConfig(lora_dir=tmp / "loras", output_dir=tmp / "out", base=str(base),
                               data_dirs=(data.parent,), model_dirs=(base,)))
    yield state, data
    state.close()


def form(state, data, steps: int, name: str) -> dict:
    values = train_tab.preset_values(train_tab.DEFAULT_PRESET)
    values.update({"model.base": state.config.base, "data.path": str(data), "optim.steps": steps,
                   "data.resolution": 32, "output.name": name, "lora.rank": 2})
    return values


@pytest.mark.slow
def test_real_training_run_and_cancel(real_app):
    import sdlora

    state, data = real_app
    done_id, _ = train_tab.start_training(state, form(state, data, 3, "short"))
    cancel_id, status = train_tab.start_training(state, form(state, data, 10_000, "long"))
    assert "queued behind 1" in status  # one job at a time
    state.jobs.wait(done_id, 600)
    view = train_tab.poll(state, done_id)
    assert view["finished"] and [s for s, _ in view["losses"]] == [1, 2, 3], view["status"]
    lora = sdlora.load_lora(view["result"])
    assert lora.modules and Path(view["result"]).is_relative_to(state.config.output_dir)

    deadline = time.monotonic() + 300
    while state.jobs.get(cancel_id).step < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    train_tab.cancel_training(state, cancel_id)
    asked_at = state.jobs.get(cancel_id).step
    job = state.jobs.wait(cancel_id, 120)
    assert job.status == "cancelled"
    assert job.step <= asked_at + 1, "cancel must stop within a step"
    checkpoints = list((Path(state.config.output_dir) / "runs").glob("long-*/checkpoints/step-*"))
    assert checkpoints, "the last checkpoint must be kept after a cancel"
    assert "checkpoint" in train_tab.poll(state, cancel_id)["status"]
